"""Access control end to end: API tokens and their roles, agent tokens that read nothing,
TLS for the API and gRPC, and mutual TLS binding an agent's certificate to its cluster."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
import urllib.error
from pathlib import Path

import pytest

from fleetsync.client import Informer, Refused
from tests.harness import (
    PKI,
    Sim,
    create_token,
    fleetsync,
    http,
    hub_events,
    hub_kubectl,
    start_agent,
    start_hub,
    wait_converged,
    wait_until,
)

FAST = ("--types", "v1/Service,v1/Pod")


def bearer(token_file: Path | str) -> dict[str, str]:
    token = token_file.read_text().strip() if isinstance(token_file, Path) else token_file
    return {"Authorization": f"Bearer {token}"}


def test_api_tokens_by_role_and_clear_401_and_403(tmp_path: Path, quiet_sim: Sim) -> None:
    db = f"sqlite:///{tmp_path / 'hub.db'}"
    hub = start_hub(tmp_path, db, tls=True)  # kubectl sends tokens over HTTPS only
    agent_token = create_token(tmp_path, db, "c1")
    agent = start_agent(tmp_path, quiet_sim, "c1", hub.agent_url, agent_token, *FAST)
    reader = create_token(tmp_path, db, "dashboards", "read")
    try:
        wait_converged(quiet_sim, hub, "c1", types="v1/Service,v1/Pod", timeout=60, what="c1 synced over TLS")
        pods = f"{hub.url}/clusters/c1/api/v1/pods"

        # no token, another scheme, a token the hub does not know: 401 saying what to do
        status, body = http("GET", pods, headers={"Authorization": ""})
        assert status == 401 and body["reason"] == "Unauthorized" and "needs an API token" in body["message"] and "--role read" in body["message"], body
        status, body = http("GET", pods, headers={"Authorization": "Basic dXNlcjpwYXNz"})
        assert status == 401 and "must be `Bearer TOKEN`" in body["message"], body
        status, body = http("GET", pods, headers=bearer("not-a-token-of-this-hub"))
        assert status == 401 and "not valid on this hub" in body["message"], body
        # probes and the API description need none
        assert http("GET", f"{hub.url}/healthz", headers={"Authorization": ""})[0] == 200
        assert http("GET", f"{hub.url}/readyz", headers={"Authorization": ""})[0] == 200

        # read: every read, nothing else
        status, body = http("GET", pods, headers=bearer(reader))
        assert status == 200 and len(body["items"]) == len(quiet_sim.truth("c1", "v1/Pod")), body
        assert http("GET", f"{hub.url}/api/v1/clusters", headers=bearer(reader))[0] == 200
        assert http("GET", f"{hub.url}/metrics", headers=bearer(reader))[0] == 200
        status, body = http("POST", f"{hub.url}/api/v1/clusters/c1/resync", headers=bearer(reader))
        assert (
            status == 403 and body["reason"] == "Forbidden" and 'token "dashboards" has role read' in body["message"] and "needs role admin" in body["message"]
        )

        # an agent token writes its own cluster through the protocol and reads nothing at all
        for path in ("/clusters/c1/api/v1/pods", "/api/v1/pods", "/api/v1/clusters", "/apis/fleetsync.io/v1/fleetsyncevents"):
            status, body = http("GET", f"{hub.url}{path}", headers=bearer(agent_token))
            assert status == 403 and "is an agent token" in body["message"] and "not use the API" in body["message"], (path, body)

        # admin: everything
        status, body = http("POST", f"{hub.url}/api/v1/clusters/c1/resync")
        assert status == 202, body

        # kubectl with a read token
        listed = subprocess.run(
            [*hub_kubectl(f"{hub.url}/clusters/c1", reader.read_text().strip()), "get", "pods", "-A", "-o", "name"], capture_output=True, text=True
        )
        assert listed.returncode == 0 and listed.stdout.count("pod/") == len(quiet_sim.truth("c1", "v1/Pod")), listed.stderr

        # the CLI: --token (FLEETSYNC_TOKEN) and its errors
        assert "c1" in fleetsync("clusters", "--hub", hub.url, "--token", reader.read_text().strip()).stdout
        refused = fleetsync("resync", "c1", "--hub", hub.url, "--token", reader.read_text().strip())
        assert refused.returncode == 1 and "403" in refused.stderr and "needs role admin" in refused.stderr, refused.stderr

        # tokens are listed by name and role (never their secrets), and deleting one revokes it within seconds
        listing = fleetsync("token", "list", "--db", db).stdout
        assert "dashboards" in listing and "read" in listing and "c1" in listing and reader.read_text().strip() not in listing, listing
        assert fleetsync("token", "delete", "dashboards", "--role", "read", "--db", db).returncode == 0
        wait_until(lambda: http("GET", pods, headers=bearer(reader))[0] == 401, timeout=15, what="the deleted token refused")
        missing = fleetsync("token", "delete", "dashboards", "--db", db)
        assert missing.returncode != 0 and "no token named 'dashboards'" in missing.stderr, missing.stderr

        # a cluster's agent tokens get (and lose) a grant in place: no new secret to hand out after an upgrade
        def grants_of_c1() -> str:
            return next(line for line in fleetsync("token", "list", "--db", db).stdout.splitlines() if line.startswith("c1 ")).split()[
                -2
            ]  # NAME ROLE MAY-WRITE GRANTS MAY-READ

        assert grants_of_c1() == "-", "least authority: no grant unless given"
        granted = fleetsync("token", "grant", "c1", "gates", "--db", db)
        assert granted.returncode == 0 and "may now do: gates" in granted.stdout, granted.stderr
        assert grants_of_c1() == "gates"
        assert fleetsync("token", "grant", "c1", "--db", db).returncode == 0 and grants_of_c1() == "-", "taken back"
        unknown = fleetsync("token", "grant", "c1", "everything", "--db", db)
        assert unknown.returncode != 0 and "unknown grant 'everything'" in unknown.stderr, unknown.stderr
        nobody = fleetsync("token", "grant", "no-such-cluster", "gates", "--db", db)
        assert nobody.returncode != 0 and "has no agent token" in nobody.stderr, nobody.stderr
    finally:
        agent.stop()
        hub.proc.stop()


async def test_an_informer_with_a_refused_token_stops_with_the_hubs_message(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'hub.db'}"
    hub = start_hub(tmp_path, db)
    agent_token = create_token(tmp_path, db, "c1").read_text().strip()
    try:
        for token, message in (("", "needs an API token"), (agent_token, "is an agent token")):
            informer = Informer(hub.url, "/api/v1/pods", token=token)
            with pytest.raises(Refused, match=message):
                async with asyncio.timeout(10):
                    await informer.run()
    finally:
        hub.proc.stop()


def test_grpc_over_tls_with_client_certificates_bound_to_clusters(tmp_path: Path, quiet_sim: Sim) -> None:
    db = f"sqlite:///{tmp_path / 'hub.db'}"
    hub = start_hub(tmp_path, db, "--tls-client-ca", str(PKI.ca_file), tls=True)
    tokens = {c: create_token(tmp_path, db, c) for c in ("c1", "c2", "c3")}
    c1_cert, c1_key = PKI.client_certificate("c1")
    certified = start_agent(tmp_path, quiet_sim, "c1", hub.agent_url, tokens["c1"], "--tls-cert", str(c1_cert), "--tls-key", str(c1_key), *FAST)
    # c2's own token, but c1's certificate: the certificate decides which cluster may be written
    borrowed = start_agent(tmp_path, quiet_sim, "c2", hub.agent_url, tokens["c2"], "--tls-cert", str(c1_cert), "--tls-key", str(c1_key), *FAST)
    # no client certificate at all: the TLS handshake fails, the hub never sees a Hello
    uncertified = start_agent(tmp_path, quiet_sim, "c3", hub.agent_url, tokens["c3"], *FAST)
    # plain gRPC to a TLS port
    plaintext = start_agent(tmp_path, quiet_sim, "c3", f"grpc://127.0.0.1:{hub.grpc_port}", tokens["c3"], *FAST)
    try:
        assert hub.agent_url.startswith("grpcs://")
        wait_converged(quiet_sim, hub, "c1", types="v1/Service,v1/Pod", timeout=60, what="c1 synced with its client certificate")
        wait_until(
            lambda: "PERMISSION_DENIED" in borrowed.output() and "client certificate is for cluster 'c1'" in borrowed.output(),
            timeout=30,
            what="c1's certificate refused for c2",
        )
        wait_until(lambda: "did not answer" in uncertified.output() and "--tls-cert" in uncertified.output(), timeout=40, what="no certificate: refused")
        wait_until(lambda: "did not answer" in plaintext.output(), timeout=40, what="plaintext to a TLS port: refused")
        assert not hub_events(hub, cluster="c3")
        c2_events = {e["reason"] for e in hub_events(hub, cluster="c2")}
        assert c2_events == {"Rejected"}, c2_events
        # the API is HTTPS: verified against the CA, refused without it
        assert http("GET", f"{hub.url}/api/v1/clusters")[0] == 200
        with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
            http("GET", f"{hub.url}/api/v1/clusters", context=ssl.create_default_context())
        assert fleetsync("clusters", "--hub", hub.url, "--certificate-authority", str(tmp_path / "missing.crt")).stderr.startswith(
            "error: --certificate-authority"
        )
    finally:
        for agent in (certified, borrowed, uncertified, plaintext):
            agent.stop()
        hub.proc.stop()


def test_bad_tls_settings_are_refused_at_start_with_the_reason(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'hub.db'}"
    other_cert, _ = PKI.client_certificate("someone")
    not_pem = tmp_path / "token.txt"
    not_pem.write_text("an-agent-token-is-not-a-certificate")
    cases = [
        (("--tls-cert", str(PKI.server_cert)), "TLS needs both --tls-cert and --tls-key"),
        (("--tls-cert", str(PKI.server_cert), "--tls-key", str(tmp_path / "nope.key")), "--tls-key"),
        (("--tls-cert", str(other_cert), "--tls-key", str(PKI.server_key)), "is the key the certificate's"),
        (("--tls-cert", str(PKI.server_cert), "--tls-key", str(PKI.server_key), "--tls-client-ca", str(not_pem)), "--tls-client-ca"),
        (("--admin-token-file", str(tmp_path / "absent")), "--admin-token-file"),
    ]
    for flags, message in cases:
        result = fleetsync("hub", "--db", db, "--grpc", "127.0.0.1:0", "--http", "127.0.0.1:0", *flags, timeout=30)
        assert result.returncode != 0 and message in result.stderr, (flags, result.stderr)
    agent = fleetsync("agent", "--cluster-id", "c1", "--hub", "grpc://127.0.0.1:1", "--token-file", str(not_pem), "--tls-ca", str(PKI.ca_file))
    assert agent.returncode != 0 and "apply to grpcs:// and mqtts:// hub URLs only" in agent.stderr, agent.stderr
