"""The async Kubernetes client the agent uses (kubernetes_asyncio) against ``fleetsync sim``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from kubernetes_asyncio import client, config, watch
from kubernetes_asyncio.client.exceptions import ApiException

from tests.harness import Sim, run_sim, wait_until


@pytest.fixture
async def api(sim: Sim) -> AsyncIterator[client.ApiClient]:
    configuration = client.Configuration()
    await config.load_kube_config(config_file=str(sim.kubeconfig("c1")), client_configuration=configuration)
    async with client.ApiClient(configuration) as api_client:
        yield api_client


async def test_list_pods_and_custom_resources(api: client.ApiClient, sim: Sim) -> None:
    pods = await client.CoreV1Api(api).list_pod_for_all_namespaces()
    assert len(pods.items) == len(sim.truth("c1", "v1/Pod"))
    assert all(p.status.phase == "Running" for p in pods.items)
    page = await client.CoreV1Api(api).list_pod_for_all_namespaces(limit=10)
    assert len(page.items) == 10 and page.metadata._continue and page.metadata.remaining_item_count == len(pods.items) - 10
    routes = await client.CustomObjectsApi(api).list_cluster_custom_object("networking.istio.io", "v1", "virtualservices")
    assert len(routes["items"]) == len(sim.truth("c1", "networking.istio.io/v1/VirtualService"))
    slices = await client.DiscoveryV1Api(api).list_endpoint_slice_for_all_namespaces(label_selector="kubernetes.io/service-name")
    assert len(slices.items) == len(sim.truth("c1", "discovery.k8s.io/v1/EndpointSlice"))


async def test_watch_delivers_changes_and_bookmarks_in_order(api: client.ApiClient, quiet_sim: Sim) -> None:
    core = client.CoreV1Api(api)
    listed = await core.list_pod_for_all_namespaces()
    start = int(listed.metadata.resource_version)
    quiet_sim.set_churn(20)
    seen: list[tuple[str, int]] = []
    stream = watch.Watch().stream(core.list_pod_for_all_namespaces, allow_watch_bookmarks=True, resource_version=str(start), timeout_seconds=30)
    async with stream:
        async for event in stream:
            rv = int(event["raw_object"]["metadata"]["resourceVersion"])
            seen.append((event["type"], rv))
            if event["type"] == "BOOKMARK" and any(kind != "BOOKMARK" for kind, _ in seen):
                break
    kinds = {kind for kind, _ in seen}
    assert "BOOKMARK" in kinds and kinds & {"ADDED", "MODIFIED", "DELETED"}
    versions = [rv for _, rv in seen]
    assert versions == sorted(versions) and versions[0] > start  # nothing older than where we started


async def test_expired_watch_raises_410_and_a_relist_recovers(tmp_path: Path) -> None:
    with run_sim(tmp_path, "--clusters", "1", "--pods", "20", "--watch-history", "30", "--churn", "50") as sim:
        configuration = client.Configuration()
        await config.load_kube_config(config_file=str(sim.kubeconfig("c1")), client_configuration=configuration)
        async with client.ApiClient(configuration) as api:
            core = client.CoreV1Api(api)
            stale = (await core.list_pod_for_all_namespaces()).metadata.resource_version
            await asyncio.to_thread(wait_until, lambda: sim.churn_operations() > 60, timeout=20, what="churn to roll the history over")
            with pytest.raises(ApiException) as gone:
                stream = watch.Watch().stream(core.list_pod_for_all_namespaces, resource_version=stale, timeout_seconds=5)
                async with stream:
                    async for _ in stream:
                        pass
            assert gone.value.status == 410
            # the informer's answer to 410: list again and watch from the new version
            sim.set_churn(1)  # slow enough that the fresh version stays in the 30-change history
            fresh = (await core.list_pod_for_all_namespaces()).metadata.resource_version
            stream = watch.Watch().stream(core.list_pod_for_all_namespaces, resource_version=fresh, timeout_seconds=10)
            async with stream:
                async for event in stream:
                    assert event["type"] in ("ADDED", "MODIFIED", "DELETED")
                    assert int(event["raw_object"]["metadata"]["resourceVersion"]) > int(fresh)
                    break
