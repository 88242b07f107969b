"""What an operator watches, end to end: JSON logs of a hub and an agent, their /metrics (process,
build info, the agent's gate sync), and the agent's /readyz saying what it waits for."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from concurrent import futures
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from fleetsync import __version__
from tests.harness import Proc, Sim, create_token, fleetsync, free_port, http, hub_stream, metric, start_agent, start_hub, wait_converged, wait_until

pytestmark = pytest.mark.e2e

JSON_LOGS = {"FLEETSYNC_LOG_FORMAT": "json"}


def json_lines(proc: Proc) -> list[dict[str, Any]]:
    """Every line of the process's log, each of which must be one JSON object."""
    parsed = []
    for number, line in enumerate(proc.output().splitlines(), 1):
        try:
            parsed.append(json.loads(line))
        except ValueError:
            raise AssertionError(f"{proc.log} line {number} is not JSON: {line!r}") from None
        assert isinstance(parsed[-1], dict) and {"time", "level", "logger", "message"} <= parsed[-1].keys(), line
    return parsed


def readiness(url: str) -> tuple[int, dict[str, Any]]:
    status, body = http("GET", f"{url}/readyz")
    assert isinstance(body, dict), body
    return status, body


def test_json_logs_process_metrics_gate_sync_metrics_and_a_readyz_that_says_what_is_missing(quiet_sim: Sim, tmp_path: Path) -> None:
    hub = start_hub(tmp_path, f"sqlite:///{tmp_path / 'hub.db'}", env=JSON_LOGS)
    token = create_token(tmp_path, hub.db, "c1", grants=("gates",))
    config_dir = tmp_path / "config"  # not there yet: the local config cannot be written
    local = config_dir / "local.json"
    port = free_port()
    agent_url = f"http://127.0.0.1:{port}"
    agent = start_agent(
        tmp_path, quiet_sim, "c1", hub.agent_url, token, "--types", "v1/Service", "--local-config", str(local), "--metrics", f"127.0.0.1:{port}", env=JSON_LOGS
    )

    # connected and synced, and yet not ready: its local config's directory is missing
    def connected_and_synced() -> dict[str, Any] | None:
        try:
            body = readiness(agent_url)[1]
        except OSError:
            return None
        checks = body["checks"]
        return body if checks["connected"]["ok"] and checks["synced"]["ok"] and "local_config" in checks else None

    body = wait_until(connected_and_synced, timeout=30, what="the agent connected and synced")
    assert body["ready"] is False and not body["checks"]["local_config"]["ok"], body
    assert "does not exist" in body["checks"]["local_config"]["reason"], body
    assert readiness(agent_url)[0] == 503
    agent_metrics = f"{agent_url}/metrics"
    assert metric(agent_metrics, "fleetsync_agent_gate_sync_errors_total", reason="write") >= 1

    config_dir.mkdir()
    wait_until(lambda: readiness(agent_url)[0] == 200, timeout=30, what="the agent ready once its local config can be written")
    assert readiness(agent_url)[1] == {"ready": True, "checks": {name: {"ok": True, "reason": ""} for name in ("connected", "synced", "local_config")}}

    # gate propagation both ways is measured: down (the hub's write to the local config) and up (a local change to the hub's confirmation)
    assert http("POST", f"{hub.url}/1.0/feature-gates", {"gate-key": "feature.multi-region", "enabled": True})[0] == 201
    wait_until(lambda: metric(agent_metrics, "fleetsync_agent_gate_sync_seconds_count", direction="down") >= 1, timeout=15, what="a down latency")
    assert json.loads(local.read_text())["feature.multi-region"] is True
    result = fleetsync("agent", "config", "set", "feature.storage.ceph=true", "--local-config", str(local))
    assert result.returncode == 0, result.stderr
    wait_until(lambda: metric(agent_metrics, "fleetsync_agent_gate_sync_seconds_count", direction="up") >= 1, timeout=15, what="an up latency")
    assert metric(agent_metrics, "fleetsync_agent_gate_sync_seconds_sum", direction="up") < 15

    # both processes export their own process figures and the build they run
    for url in (f"{hub.url}/metrics", agent_metrics):
        assert metric(url, "fleetsync_build_info", version=__version__) == 1
        assert metric(url, "process_resident_memory_bytes") > 0
        assert metric(url, "python_gc_collections_total") > 0

    # the hub goes away: the agent says it is no longer connected
    hub.proc.stop()
    wait_until(lambda: not readiness(agent_url)[1]["checks"]["connected"]["ok"], timeout=30, what="the agent not ready without its hub")
    assert readiness(agent_url)[0] == 503
    agent.stop()

    # every line of both logs is one JSON object; lines about the cluster carry it, and the agent run as the session, on both sides
    agent_lines, hub_lines = json_lines(agent), json_lines(hub.proc)
    connected = [line for line in agent_lines if line["message"].startswith("connected to hub")]
    assert connected and connected[0]["cluster"] == "c1" and connected[0]["session"], connected
    session = connected[0]["session"]
    assert all(line.get("cluster") == "c1" and line.get("session") == session for line in agent_lines if line["logger"].startswith("fleetsync.agent.runner")), [
        line for line in agent_lines if line.get("session") != session
    ]
    about_c1 = [line for line in hub_lines if line.get("cluster") == "c1"]
    assert about_c1 and all(line["session"] == session for line in about_c1), hub_lines


class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC trace receiver on a free port (what an OpenTelemetry collector is to the processes):
    keeps every span it is sent, by span id, with its service's name."""

    def __init__(self) -> None:
        self.spans: dict[bytes, tuple[str, Any]] = {}
        self.lock = threading.Lock()

    def Export(self, request: Any, context: Any) -> Any:  # (the gRPC service's method name)
        with self.lock:
            for resource_spans in request.resource_spans:
                service = next(a.value.string_value for a in resource_spans.resource.attributes if a.key == "service.name")
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        self.spans[span.span_id] = (service, span)
        return trace_service_pb2.ExportTraceServiceResponse()

    def chain(self, obj: str) -> list[tuple[str, str]] | None:
        """(service, span name) from a delivery of ``obj`` (namespace/name) up to its trace's root, once all of them arrived."""
        with self.lock:
            for service, span in list(self.spans.values()):
                attributes = {a.key: a.value.string_value for a in span.attributes}
                if span.name == "fleetsync.watch.deliver" and attributes.get("fleetsync.object") == obj:
                    chain = [(service, span.name)]
                    while span.parent_span_id:
                        if span.parent_span_id not in self.spans:
                            return None  # (not sent yet: each process sends its own)
                        (service, parent) = self.spans[span.parent_span_id]
                        assert parent.trace_id == span.trace_id, "one trace"
                        chain.append((service, parent.name))
                        span = parent
                    return chain
        return None


@contextmanager
def otlp_collector() -> Iterator[tuple[str, Collector]]:
    collector = Collector()
    server = grpc.server(futures.ThreadPoolExecutor(2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"http://127.0.0.1:{port}", collector
    finally:
        server.stop(grace=None)


def test_a_change_is_traced_from_the_agent_through_the_hubs_apply_to_a_watch_across_processes(quiet_sim: Sim, tmp_path: Path) -> None:
    with otlp_collector() as (endpoint, collector):
        env = {"FLEETSYNC_OTLP_ENDPOINT": endpoint, "OTEL_BSP_SCHEDULE_DELAY": "100"}  # (spans are sent every 0.1 s, not 5 s)
        hub = start_hub(tmp_path, f"sqlite:///{tmp_path / 'hub.db'}", env=env)
        token = create_token(tmp_path, hub.db, "c1")
        agent = start_agent(tmp_path, quiet_sim, "c1", hub.agent_url, token, "--types", "v1/ConfigMap", "--istio-interval", "0", env=env)
        wait_converged(quiet_sim, hub, "c1", types="v1/ConfigMap", timeout=60, what="the agent's first sync")  # a watch from now sees only the change
        status, listed = http("GET", f"{hub.url}/api/v1/configmaps")
        assert status == 200, listed
        with hub_stream(f"{hub.url}/api/v1/configmaps?watch=1&resourceVersion={listed['metadata']['resourceVersion']}&timeoutSeconds=30", timeout=40) as watch:
            manifest = tmp_path / "traced.json"
            manifest.write_text(
                json.dumps({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "traced", "namespace": "default"}, "data": {"k": "v"}})
            )
            quiet_sim.kubectl("c1", "apply", "-f", str(manifest))
            event = json.loads(watch.readline())
        assert event["object"]["metadata"]["name"] == "traced", event
        chain = wait_until(lambda: collector.chain("default/traced"), timeout=30, what="the delivery's spans at the collector")
        assert chain == [("fleetsync-hub", "fleetsync.watch.deliver"), ("fleetsync-hub", "fleetsync.hub.apply"), ("fleetsync-agent", "fleetsync.agent.send")]
        agent.stop()  # (before the collector goes: their last spans are sent as they stop)
        hub.proc.stop()
