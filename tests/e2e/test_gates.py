"""Feature gates on the hub (seed 004's REST shapes): the API on both store engines, and ``fleetsync gates``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fleetsync.client import check_gated
from tests.harness import API_TOKEN, create_token, fleetsync, http, start_hub

GATES = "/1.0/feature-gates"


@pytest.fixture(params=["sqlite", "postgres"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'hub.db'}" if request.param == "sqlite" else str(request.getfixturevalue("pg_url"))


def test_the_gates_api_keeps_seed_004s_shapes_and_refuses_bad_input_clearly(tmp_path: Path, db: str) -> None:
    hub = start_hub(tmp_path, db)
    reader = f"Bearer {create_token(tmp_path, db, 'dashboards', 'read').read_text().strip()}"
    try:
        url = f"{hub.url}{GATES}"
        status, body = http("GET", url)
        assert status == 200 and body["type"] == "sync" and body["status_code"] == 200 and body["metadata"] == []

        status, body = http("POST", url, {"gate-key": "feature.storage.ceph", "enabled": True})
        assert status == 201, body
        created = body["metadata"]
        assert created["gate-key"] == "feature.storage.ceph" and created["enabled"] is True
        assert created["updated-by"] == "admin (--admin-token-file)" and created["revision"] == 1

        status, body = http("POST", url, {"gate-key": "feature.storage.ceph", "enabled": False})
        assert status == 409 and body["type"] == "error" and body["error_code"] == 409 and "is set already" in body["error"], body
        status, body = http("PUT", f"{url}/feature.storage.ceph", {"enabled": False})
        assert status == 200 and body["metadata"]["enabled"] is False and body["metadata"]["revision"] == 2
        status, body = http("PUT", f"{url}/feature.multi-region", {"gate-key": "feature.multi-region", "enabled": True})  # PUT creates, as the hook does
        assert status == 200 and body["metadata"]["revision"] == 3
        assert [g["gate-key"] for g in http("GET", url)[1]["metadata"]] == ["feature.multi-region", "feature.storage.ceph"]
        assert http("GET", f"{url}/feature.storage.ceph")[1]["metadata"]["enabled"] is False

        # bad input: 400 for what is not JSON, 422 for JSON that is not a gate; each says what is wrong
        for sent, code, message in (
            (b"{not json", 400, "not JSON"),
            ([True], 422, "must be a JSON object"),
            ({"gate-key": "feature.x", "enabled": "yes"}, 422, "enabled must be true or false"),
            ({"gate-key": "multi-region", "enabled": True}, 422, "feature.* namespace"),
            ({"gate-key": "feature.Bad_Key", "enabled": True}, 422, "feature.* namespace"),
            ({"gate-key": "feature.x"}, 422, "missing enabled"),
            ({"gate-key": "feature.x", "enabled": True, "colour": "red"}, 422, "unknown field colour"),
        ):
            status, body = http("POST", url, sent)
            assert status == code and body["error_code"] == code and message in body["error"], (sent, body)
        status, body = http("PUT", f"{url}/feature.x", {"gate-key": "feature.y", "enabled": True})
        assert status == 422 and "not the gate of the path" in body["error"], body
        status, body = http("GET", f"{url}/feature.never-set")
        assert status == 404 and "is not set" in body["error"], body

        # a read token reads, and may not write; no token at all: 401, in the same shape
        status, body = http("GET", url, headers={"Authorization": reader})
        assert status == 200 and len(body["metadata"]) == 2
        status, body = http("PUT", f"{url}/feature.x", {"enabled": True}, headers={"Authorization": reader})
        assert status == 403 and body["type"] == "error" and "needs role admin" in body["error"], body
        status, body = http("GET", url, headers={"Authorization": ""})
        assert status == 401 and body["type"] == "error" and "needs an API token" in body["error"], body

        # unset: gone from the list; a second unset is a 404; a later set is a new revision
        status, body = http("DELETE", f"{url}/feature.storage.ceph")
        assert status == 200 and body["metadata"]["revision"] == 4
        assert http("DELETE", f"{url}/feature.storage.ceph")[0] == 404
        assert [g["gate-key"] for g in http("GET", url)[1]["metadata"]] == ["feature.multi-region"]
        assert http("POST", url, {"gate-key": "feature.storage.ceph", "enabled": True})[1]["metadata"]["revision"] == 5
    finally:
        hub.proc.stop()


def test_fleetsync_gates_lists_gets_sets_and_unsets(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'hub.db'}"
    hub = start_hub(tmp_path, db)
    try:
        assert "No feature gates are set" in fleetsync("gates", "list", "--hub", hub.url).stderr
        assert fleetsync("gates", "set", "feature.storage.ceph=true", "--hub", hub.url).stdout.strip() == "feature.storage.ceph=true (revision 1)"
        assert fleetsync("gates", "set", "feature.multi-region=FALSE", "--hub", hub.url).returncode == 0
        listed = fleetsync("gates", "list", "--hub", hub.url).stdout.splitlines()
        assert listed[0].split()[:3] == ["GATE", "ENABLED", "REVISION"]
        assert [line.split()[:2] for line in listed[1:]] == [["feature.multi-region", "false"], ["feature.storage.ceph", "true"]]
        assert '"enabled": true' in fleetsync("gates", "get", "feature.storage.ceph", "-o", "json", "--hub", hub.url).stdout
        assert fleetsync("gates", "unset", "feature.storage.ceph", "--hub", hub.url).stdout.strip() == "feature.storage.ceph unset (revision 3)"
        missing = fleetsync("gates", "get", "feature.storage.ceph", "--hub", hub.url)
        assert missing.returncode == 1 and "404" in missing.stderr and "is not set" in missing.stderr, missing.stderr
        bad = fleetsync("gates", "set", "feature.x=maybe", "--hub", hub.url)
        assert bad.returncode == 2 and "expected KEY=true or KEY=false" in bad.stderr, bad.stderr
        outside = fleetsync("gates", "set", "storage=true", "--hub", hub.url)
        assert outside.returncode == 2 and "feature.* namespace" in outside.stderr, outside.stderr
    finally:
        hub.proc.stop()


async def test_check_gated_asks_the_hub_first_and_the_local_config_only_when_the_hub_cannot_say(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'hub.db'}"
    hub = start_hub(tmp_path, db)
    local = tmp_path / "local.json"
    local.write_text(json.dumps({"feature.on-here": True, "feature.off-fleet": True}))
    try:
        assert http("PUT", f"{hub.url}{GATES}/feature.on-fleet", {"enabled": True})[0] == 200
        assert http("PUT", f"{hub.url}{GATES}/feature.off-fleet", {"enabled": False})[0] == 200

        async def gated(key: str, **kw: object) -> bool:
            return await check_gated(key, hub=hub.url, token=API_TOKEN, local_config=local, **kw)  # type: ignore[arg-type]

        assert await gated("feature.on-fleet") is False
        assert await gated("feature.off-fleet") is True, "the hub's disabled gate is final: a stale local true does not override it"
        assert await gated("feature.on-here") is False, "a gate the hub does not have: the local config decides"
        assert await gated("feature.nowhere") is True
        assert await gated("feature.nowhere", generally_available=True) is False
        # the hub cannot say: the local config decides
        assert await check_gated("feature.off-fleet", hub=hub.url, token="wrong", local_config=local) is False
        assert await check_gated("feature.on-fleet", hub="http://127.0.0.1:1", local_config=local) is True
        assert await check_gated("feature.on-here", hub="http://127.0.0.1:1", local_config=local) is False
    finally:
        hub.proc.stop()
