"""The hub serves any resource type its agents report: a CRD nobody here knew is listed by
kubectl (per cluster and fleet-wide, with the CRD's printer columns), watched, and still
served after a restart of the hub; a malformed report is refused by name, the rest kept.

The agent side is a peer speaking the protocol itself (a real hub, kubectl and store):
what the hub must do does not depend on how an agent found its types."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from fleetsync.model.types import PrinterColumn, ResourceType
from fleetsync.protocol import codec
from fleetsync.protocol import fleetsync_pb2 as pb
from fleetsync.protocol.typeinfo import to_pb
from fleetsync.transport.base import ClientTls, HubAddress
from fleetsync.transport.grpc import GrpcAgentConnection
from tests.harness import PKI, SPAWNED, Hub, create_token, http, hub_kubectl, start_hub, stop_process, wait_until


@pytest.fixture(autouse=True)
def _stop_the_hubs() -> Iterator[None]:
    """Each test here starts its own hub (one twice, across a restart): stopped whatever the
    test's outcome, not left running after the suite."""
    yield
    for proc in SPAWNED:
        if proc.alive():
            proc.stop()


WIDGET = ResourceType(
    "example.com",
    "v1",
    "Widget",
    "widgets",
    True,
    short_names=("wd",),
    categories=("toys",),
    printer_columns=(
        PrinterColumn("Size", "integer", ".spec.size"),
        PrinterColumn("Ready", "string", '.status.conditions[?(@.type=="Ready")].status'),
        PrinterColumn("Age", "date", ".metadata.creationTimestamp"),
    ),
)


def _widget(name: str, size: int) -> dict[str, Any]:
    return {
        "apiVersion": "example.com/v1",
        "kind": "Widget",
        "metadata": {"name": name, "namespace": "shop", "uid": f"uid-{name}", "resourceVersion": "1", "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {"size": size},
        "status": {"conditions": [{"type": "Ready", "status": "True"}]},
    }


@asynccontextmanager
async def _agent(hub: Hub, token: str, types: list[pb.TypeInfo]) -> AsyncIterator[GrpcAgentConnection]:
    connection = await GrpcAgentConnection.open(HubAddress("grpcs", "127.0.0.1", hub.grpc_port), tls=ClientTls(ca=PKI.ca_file.read_bytes()))
    try:
        await connection.send(pb.AgentMessage(hello=pb.Hello(cluster_id="c1", agent_id="peer/c1", incarnation="i1", token=token, types=types)))
        yield connection
    finally:
        await connection.close()


async def _answers(connection: GrpcAgentConnection, until: Any, *, timeout: float = 10) -> list[pb.HubMessage]:
    """Hub messages until one satisfies ``until``."""
    seen: list[pb.HubMessage] = []
    async with asyncio.timeout(timeout):
        while not seen or not until(seen[-1]):
            message = await connection.receive()
            assert message is not None, f"the hub closed the session: {seen}"
            seen.append(message)
    return seen


def _kubectl(hub: Hub, server: str, *args: str) -> str:
    result = subprocess.run([*hub_kubectl(server), *args], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_a_reported_crd_is_served_to_kubectl_with_its_printer_columns_and_survives_a_hub_restart(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'hub.db'}"
    hub = start_hub(tmp_path, db, tls=True)
    token = create_token(tmp_path, db, "c1").read_text()
    bad = pb.TypeInfo(group="example.com", version="v1", kind="Broken", plural="Not A Label", namespaced=True)

    async def sync() -> list[pb.HubMessage]:
        async with _agent(hub, token, [to_pb(WIDGET), bad]) as agent:
            answers = await _answers(agent, lambda m: m.WhichOneof("message") == "welcome")
            assert answers[0].WhichOneof("message") == "welcome", "the Welcome comes first: an agent reads its first answer as the session's"
            answers += await _answers(agent, lambda m: m.WhichOneof("message") == "reject")
            bundle = pb.Bundle(
                type=WIDGET.gvk,
                incarnation="i1",
                seq=1,
                base_seq=0,
                kind=pb.FULL,
                compression=pb.COMPRESSION_LZ4,
                last=True,
                upserts=[codec.make_object(_widget("small", 1)), codec.make_object(_widget("big", 9))],
            )
            await agent.send(pb.AgentMessage(bundle=bundle))
            answers += await _answers(agent, lambda m: m.WhichOneof("message") == "ack")
            return answers

    answers = asyncio.run(sync())
    refused = [m.reject for m in answers if m.WhichOneof("message") == "reject"]
    assert [(r.type, r.reason) for r in refused] == [("example.com/v1/Broken", pb.PROTOCOL)], refused
    assert "plural 'Not A Label' is not a DNS label" in refused[0].message
    ack = next(m.ack for m in answers if m.WhichOneof("message") == "ack")
    assert (ack.type, ack.seq) == (WIDGET.gvk, 1), "the widgets were taken, not refused as an unknown type"

    for round_ in ("served", "after a restart"):
        per_cluster = _kubectl(hub, f"{hub.url}/clusters/c1", "get", "widgets", "-n", "shop")
        lines = per_cluster.split()
        assert per_cluster.splitlines()[0].split() == ["NAME", "SIZE", "READY", "AGE"], (round_, per_cluster)
        assert lines[lines.index("big") : lines.index("big") + 3] == ["big", "9", "True"], (round_, per_cluster)
        fleet = _kubectl(hub, hub.url, "get", "wd", "-A")  # its short name, across the fleet
        assert "small" in fleet and "big" in fleet and "shop" in fleet, (round_, fleet)
        toys = _kubectl(hub, f"{hub.url}/clusters/c1", "get", "toys", "-A", "-o", "name")  # its category
        assert sorted(toys.split()) == ["widget.example.com/big", "widget.example.com/small"], (round_, toys)
        status, resources = http("GET", f"{hub.url}/apis/example.com/v1")
        assert status == 200 and [r["name"] for r in resources["resources"]] == ["widgets"], resources
        status, groups = http("GET", f"{hub.url}/apis")
        assert "example.com" in [g["name"] for g in groups["groups"]]
        assert http("GET", f"{hub.url}/apis/example.com/v1/brokens")[0] == 404, "the refused type is not served"
        if round_ == "served":  # the agent is gone and the hub restarts: the type is still served from the store
            stop_process(hub.proc.process)
            hub = start_hub(tmp_path, db, grpc_port=hub.grpc_port, http_port=hub.http_port, tls=True)


def test_a_types_message_adds_a_type_and_a_watch_of_it_sees_changes(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'hub.db'}"
    hub = start_hub(tmp_path, db, tls=True)
    token = create_token(tmp_path, db, "c1").read_text()
    gadget = ResourceType("toys.example.org", "v1beta1", "Gadget", "gadgets", False)

    async def sync() -> None:
        async with _agent(hub, token, []) as agent:  # an agent from before TypeInfo: no types in its Hello
            await _answers(agent, lambda m: m.WhichOneof("message") == "welcome")
            assert http("GET", f"{hub.url}/apis/toys.example.org/v1beta1/gadgets")[0] == 404
            await agent.send(pb.AgentMessage(types=pb.Types(types=[to_pb(gadget)])))  # a CRD was created in its cluster
            first = {"apiVersion": "toys.example.org/v1beta1", "kind": "Gadget", "metadata": {"name": "g1", "uid": "u1"}, "spec": {"v": 1}}
            await agent.send(
                pb.AgentMessage(
                    bundle=pb.Bundle(
                        type=gadget.gvk, incarnation="i1", seq=1, kind=pb.FULL, last=True, compression=pb.COMPRESSION_LZ4, upserts=[codec.make_object(first)]
                    )
                )
            )
            await _answers(agent, lambda m: m.WhichOneof("message") == "ack")
            status, listed = http("GET", f"{hub.url}/apis/toys.example.org/v1beta1/gadgets")
            assert status == 200 and [i["metadata"]["name"] for i in listed["items"]] == ["g1"], listed
            watch = await asyncio.to_thread(
                subprocess.Popen, [*hub_kubectl(hub.url), "get", "gadgets", "--watch", "-o", "name"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
            try:
                assert watch.stdout is not None
                # kubectl lists, then watches from the list's resourceVersion: what changes after the list reaches it
                listed_line = await asyncio.wait_for(asyncio.to_thread(watch.stdout.readline), 20)
                assert listed_line.strip() == "gadget.toys.example.org/g1", listed_line
                second = {**first, "metadata": {"name": "g2", "uid": "u2"}}
                delta = pb.Bundle(
                    type=gadget.gvk, incarnation="i1", seq=2, base_seq=1, kind=pb.DELTA, compression=pb.COMPRESSION_LZ4, upserts=[codec.make_object(second)]
                )
                await agent.send(pb.AgentMessage(bundle=delta))
                await _answers(agent, lambda m: m.WhichOneof("message") == "ack")
                line = await asyncio.wait_for(asyncio.to_thread(watch.stdout.readline), 20)
                assert line.strip() == "gadget.toys.example.org/g2", line
            finally:
                watch.kill()
                watch.wait()

    asyncio.run(sync())
    wait_until(lambda: http("GET", f"{hub.url}/apis/toys.example.org/v1beta1")[0] == 200, timeout=5, what="the type in discovery")
