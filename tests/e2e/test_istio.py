"""Istio awareness: the agent finds istiod (namespace, revision, version, mesh config) and the
Istio CRDs; a cluster without them syncs the rest without errors; Istio objects obey the
namespace filters and the message-size bound like any other."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.harness import Sim, create_token, fleetsync, http, hub_kubectl, run_sim, start_agent, start_hub, wait_until

ISTIO_TYPES = "networking.istio.io/v1/VirtualService,networking.istio.io/v1/DestinationRule,security.istio.io/v1/PeerAuthentication"


def cluster(hub_url: str, name: str) -> dict[str, Any]:
    (found,) = [c for c in http("GET", f"{hub_url}/api/v1/clusters")[1]["items"] if c["name"] == name]
    return dict(found)


def test_the_agent_reports_istiod_and_its_mesh_config_as_cluster_metadata(quiet_sim: Sim, tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'hub.db'}"
    hub = start_hub(tmp_path, db, tls=True)
    agent = start_agent(tmp_path, quiet_sim, "c1", hub.agent_url, create_token(tmp_path, db, "c1"), "--types", f"v1/Service,{ISTIO_TYPES}")
    try:
        wait_until(lambda: (cluster(hub.url, "c1").get("istio") or {}).get("controlPlanes"), timeout=30, what="c1's Istio control plane on the hub")
        summary = cluster(hub.url, "c1")
        (plane,) = summary["istio"]["controlPlanes"]
        assert plane["namespace"] == "istio-system" and plane["revision"] == "default" and plane["version"], plane
        assert summary["istio"]["absentCrds"] == 0 and summary["errors"] == {}
        listed = fleetsync("clusters", "--hub", hub.url).stdout.splitlines()
        assert listed[0].split()[-2:] == ["ISTIO", "METRICS"] and listed[1].split()[-2:] == [plane["version"], "-"], listed

        # the whole object, through kubectl against the hub: the mesh config parsed, every CRD installed
        got = quiet_sim_kubectl_hub(hub.url, "c1", "get", "istiomeshes", "istio", "-o", "json")
        spec = json.loads(got)["spec"]
        assert spec["controlPlanes"][0]["meshConfig"]["trustDomain"] == "cluster.local"
        assert spec["controlPlanes"][0]["image"].endswith(f":{plane['version']}")
        assert not spec["crds"]["absent"] and "networking.istio.io/v1/VirtualService" in spec["crds"]["installed"]
    finally:
        agent.stop()
        hub.proc.stop()


def quiet_sim_kubectl_hub(hub_url: str, cluster_name: str, *args: str) -> str:
    import subprocess

    result = subprocess.run([*hub_kubectl(f"{hub_url}/clusters/{cluster_name}"), *args], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_a_cluster_without_istio_reports_its_crds_absent_and_no_error(tmp_path: Path) -> None:
    with run_sim(tmp_path, "--clusters", "1", "--pods", "30", "--no-istio") as sim:
        db = f"sqlite:///{tmp_path / 'hub.db'}"
        hub = start_hub(tmp_path, db)
        agent = start_agent(tmp_path, sim, "c1", hub.agent_url, create_token(tmp_path, db, "c1"), "--types", f"v1/Pod,{ISTIO_TYPES}")
        try:
            wait_until(lambda: cluster(hub.url, "c1").get("istio") is not None, timeout=30, what="c1's IstioMesh on the hub")
            wait_until(lambda: cluster(hub.url, "c1")["objects"].get("v1/Pod") == len(sim.truth("c1", "v1/Pod")), timeout=30, what="pods synced")
            summary = cluster(hub.url, "c1")
            assert summary["errors"] == {}, "CRDs that are not installed are absent, not errors"
            assert summary["istio"] == {"controlPlanes": [], "absentCrds": 10}
            assert all(summary["objects"].get(t, 0) == 0 for t in ISTIO_TYPES.split(","))
            assert set(ISTIO_TYPES.split(",")) <= set(summary["types"]), "the absent types are synced, empty"
            assert "not served by this cluster" in agent.output()
            assert fleetsync("clusters", "--hub", hub.url).stdout.splitlines()[1].split()[-2] == "none"
        finally:
            agent.stop()
            hub.proc.stop()


def test_istio_objects_obey_the_namespace_filters_and_the_message_size_bound(tmp_path: Path) -> None:
    import random
    import string

    import yaml

    vs_type = "networking.istio.io/v1/VirtualService"
    excluded = "ns-1"

    def virtual_service(namespace: str, name: str, token_chars: int = 16) -> dict[str, Any]:
        """A VirtualService whose route matches a header on a random token (``token_chars`` long: barely compresses)."""
        token = "".join(random.Random(f"{namespace}/{name}/{token_chars}").choices(string.ascii_letters + string.digits, k=token_chars))
        host = f"{name}.{namespace}.svc.cluster.local"
        return {
            "apiVersion": "networking.istio.io/v1",
            "kind": "VirtualService",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"hosts": [host], "http": [{"match": [{"headers": {"x-api-key": {"exact": token}}}], "route": [{"destination": {"host": host}}]}]},
        }

    def kubectl_file(verb: str, *objects: dict[str, Any]) -> None:
        path = tmp_path / f"{verb}-{len(list(tmp_path.glob(f'{verb}-*.yaml')))}.yaml"
        path.write_text(yaml.safe_dump_all(objects))
        sim.kubectl("c1", verb, "-f", str(path))

    def on_hub(gvk: str) -> set[str]:
        group_version, _, _ = gvk.rpartition("/")
        plural = {"VirtualService": "virtualservices", "DestinationRule": "destinationrules", "PeerAuthentication": "peerauthentications"}[
            gvk.rsplit("/", 1)[1]
        ]
        status, body = http("GET", f"{hub.url}/clusters/c1/apis/{group_version}/{plural}")
        assert status == 200, body
        return {f"{o['metadata']['namespace']}/{o['metadata']['name']}" for o in body["items"]}

    def expected(gvk: str, *left_out: str) -> set[str]:
        """The sim's truth of ``gvk`` outside the excluded namespace, less ``left_out``."""
        keys = {f"{o['metadata']['namespace']}/{o['metadata']['name']}" for o in sim.truth("c1", gvk)}
        return {k for k in keys if not k.startswith(f"{excluded}/")} - set(left_out)

    def synced(*left_out: str) -> bool:
        return all(on_hub(gvk) == expected(gvk, *(left_out if gvk == vs_type else ())) for gvk in ISTIO_TYPES.split(","))

    def vs_error() -> str:
        return str(cluster(hub.url, "c1")["errors"].get(vs_type, ""))

    with run_sim(tmp_path, "--clusters", "1", "--pods", "30", "--namespaces", "3") as sim:
        # Before the agent starts (its list): VirtualServices in every namespace, and one too large for a
        # 64 KiB message (~100 KB of random token) in a synced namespace and one in the excluded one.
        kubectl_file(
            "create",
            *(virtual_service(ns, f"extra-{i}") for ns in ("ns-0", excluded, "ns-2") for i in range(3)),
            virtual_service("ns-0", "too-big", token_chars=100_000),
            virtual_service(excluded, "too-big-excluded", token_chars=100_000),
        )
        assert any(o["metadata"]["namespace"] == excluded for o in sim.truth("c1", vs_type))
        db = f"sqlite:///{tmp_path / 'hub.db'}"
        hub = start_hub(tmp_path, db)
        agent = start_agent(
            tmp_path,
            sim,
            "c1",
            hub.agent_url,
            create_token(tmp_path, db, "c1"),
            "--types",
            ISTIO_TYPES,
            "--exclude-namespaces",
            excluded,
            "--max-message-bytes",
            "65536",
        )
        try:
            wait_until(lambda: synced("ns-0/too-big") and "ns-0/too-big" in vs_error(), timeout=30, what="the Istio types synced but ns-1 and the big one")
            assert not any(k.startswith(f"{excluded}/") for gvk in ISTIO_TYPES.split(",") for k in on_hub(gvk))
            error = vs_error()
            assert "larger than the max message size (65536 bytes)" in error and "too-big-excluded" not in error, error
            assert set(cluster(hub.url, "c1")["errors"]) == {vs_type}

            # While it runs (watch events): new VirtualServices in and out of the filter, and one that grows too large.
            kubectl_file("create", virtual_service("ns-2", "later"), virtual_service(excluded, "later"), virtual_service("ns-2", "grows"))
            wait_until(lambda: synced("ns-0/too-big") and "ns-2/grows" in on_hub(vs_type), timeout=30, what="the new VirtualServices synced but ns-1's")
            kubectl_file("replace", virtual_service("ns-2", "grows", token_chars=100_000))
            wait_until(lambda: synced("ns-0/too-big", "ns-2/grows") and "ns-2/grows" in vs_error(), timeout=30, what="the grown VirtualService left out")
            assert "ns-0/too-big" in vs_error(), "both are named"

            # Deleting what is too large clears the type's error; the rest stays synced.
            sim.kubectl("c1", "delete", "virtualservice", "too-big", "-n", "ns-0")
            sim.kubectl("c1", "delete", "virtualservice", "grows", "-n", "ns-2")
            wait_until(lambda: cluster(hub.url, "c1")["errors"] == {} and synced(), timeout=30, what="the type's error cleared")
            assert "ns-2/later" in on_hub(vs_type) and f"{excluded}/later" not in on_hub(vs_type)
        finally:
            agent.stop()
            hub.proc.stop()
