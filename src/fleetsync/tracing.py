"""OpenTelemetry traces of one change's way: the agent sends it, the hub applies it, a watch delivers it.

Optional: it needs the ``otel`` extra (``opentelemetry-api``, ``-sdk`` and the OTLP gRPC
exporter) and is on only when :func:`configure` was called (``--otlp-endpoint``, or the
standard ``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``; see
docs/observability.md). Off, each hook costs one call that finds :data:`_tracer` unset.

Three spans, one trace per bundle:

- ``fleetsync.agent.send`` (agent): from when the bundle's newest change was seen in the
  cluster to when the bundle went to the hub. Its W3C ``traceparent`` travels in the bundle
  (``Bundle.traceparent``, a field older hubs ignore).
- ``fleetsync.hub.apply`` (hub), the child of that: from the bundle's receipt to its commit
  (the wait in the cluster's inbox, then the group commit), with an ``apply started`` event.
  DELTAs merged while the hub was behind commit once: the apply's parent is the oldest of
  them, the others are links.
- ``fleetsync.watch.deliver`` (hub), the child of the apply: a change the apply committed is
  handed to a watch (one span per watch and object; an object's last apply is remembered
  for a bounded number of objects, :data:`REMEMBERED_OBJECTS`).

What the hub remembers between those steps is bounded (:data:`REMEMBERED_BUNDLES`,
:data:`REMEMBERED_OBJECTS`, oldest forgotten first): tracing never grows with the fleet.
"""

from __future__ import annotations

import importlib
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fleetsync.errors import FleetsyncError
from fleetsync.protocol import fleetsync_pb2 as pb

if TYPE_CHECKING:
    from opentelemetry.trace import Span, SpanContext, Tracer

    from fleetsync.protocol.rules import BundleHeader
    from fleetsync.store.contract import Change

log = logging.getLogger(__name__)

#: DELTAs received with a trace context and not applied yet, remembered at most (per hub process).
REMEMBERED_BUNDLES = 10_000
#: Objects whose last apply is remembered for the watch delivery spans (per hub process).
REMEMBERED_OBJECTS = 10_000
#: Objects of one apply remembered (a FULL of thousands does not push every other out).
OBJECTS_PER_APPLY = 256
#: Delivery spans made per batch a watch is handed.
DELIVERIES_PER_BATCH = 100
#: The environment variables of the OpenTelemetry SDK that name a collector (either turns tracing on).
OTEL_ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")

_tracer: Tracer | None = None
_provider: Any = None
_received: OrderedDict[tuple[str, str, str, int], tuple[str, int]] = OrderedDict()
_applied: OrderedDict[tuple[str, str, str, str], SpanContext] = OrderedDict()


class TracingUnavailable(FleetsyncError, RuntimeError):
    """Tracing was asked for and the OpenTelemetry packages are not installed."""


def enabled() -> bool:
    return _tracer is not None


def wanted(endpoint: str) -> str:
    """The collector to send traces to: ``endpoint`` (the flag), else the SDK's own variables ("" : tracing off)."""
    if os.environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return ""
    return endpoint or next((os.environ[v] for v in OTEL_ENDPOINT_VARIABLES if os.environ.get(v)), "")


def configure(*, service: str, endpoint: str = "", exporter: Any = None) -> None:
    """Trace from now on: spans go to the OTLP collector at ``endpoint`` (batched), or to
    ``exporter`` (a SpanExporter, exported at once: tests use the SDK's InMemorySpanExporter).
    ``OTEL_SERVICE_NAME`` and ``OTEL_RESOURCE_ATTRIBUTES`` override or add to ``service``."""
    global _tracer, _provider
    try:
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
    except ImportError as exc:
        raise TracingUnavailable(f"tracing needs the OpenTelemetry SDK: pip install 'fleetsync[otel]' ({exc})") from None
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: service}))
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    else:
        try:  # (imported by name: the exporter is optional, and so are its type hints)
            otlp = importlib.import_module("opentelemetry.exporter.otlp.proto.grpc.trace_exporter")
        except ImportError as exc:
            raise TracingUnavailable(f"sending traces to {endpoint} needs the OTLP exporter: pip install 'fleetsync[otel]' ({exc})") from None
        provider.add_span_processor(BatchSpanProcessor(otlp.OTLPSpanExporter(endpoint=endpoint)))
    _provider = provider
    _tracer = provider.get_tracer("fleetsync")
    log.info("tracing on: spans of %s go to %s", service, endpoint or type(exporter).__name__)


def shutdown() -> None:
    """Export what is buffered and stop tracing (and forget what the hub remembered)."""
    global _tracer, _provider
    if _provider is not None:
        _provider.shutdown()
    _tracer = _provider = None
    _received.clear()
    _applied.clear()


def _traceparent(span: Span) -> str:
    ctx = span.get_span_context()
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"


def _span_context(traceparent: str) -> SpanContext | None:
    """The span a W3C ``traceparent`` names (None if it is not a valid one: it came from outside)."""
    from opentelemetry.trace import SpanContext, TraceFlags

    parts = traceparent.split("-")
    if len(parts) != 4 or len(parts[1]) != 32 or len(parts[2]) != 16 or len(parts[3]) != 2:
        return None
    try:
        trace_id, span_id, flags = int(parts[1], 16), int(parts[2], 16), int(parts[3], 16)
    except ValueError:
        return None
    if not trace_id or not span_id:
        return None
    return SpanContext(trace_id, span_id, is_remote=True, trace_flags=TraceFlags(flags & 1))


def _remember(store: OrderedDict[Any, Any], key: Any, value: Any, limit: int) -> None:
    store[key] = value
    store.move_to_end(key)
    while len(store) > limit:
        store.popitem(last=False)


# ---- agent ------------------------------------------------------------------------------


def bundle_sent(cluster: str, kind: str, bundle: pb.Bundle) -> None:
    """The agent sends ``bundle`` (``kind``: full, delta, repair, resume, resend): a span ending
    now, its context put in the bundle (the message about to be sent: the uplink builds a new
    one for a resend, which gets a span of its own; one already stamped is left as it is)."""
    if _tracer is None or bundle.traceparent:
        return
    now = time.time_ns()
    seen = bundle.collected_at_ms * 1_000_000
    span = _tracer.start_span(
        "fleetsync.agent.send",
        start_time=seen if 0 < seen <= now else now,
        attributes={
            "fleetsync.cluster": cluster,
            "fleetsync.type": bundle.type,
            "fleetsync.incarnation": bundle.incarnation,
            "fleetsync.seq": bundle.seq,
            "fleetsync.base_seq": bundle.base_seq,
            "fleetsync.chunk": bundle.chunk,
            "fleetsync.send_kind": kind,
            "fleetsync.objects": len(bundle.upserts) + len(bundle.deletes),
        },
    )
    bundle.traceparent = _traceparent(span)
    span.end(end_time=now)


# ---- hub --------------------------------------------------------------------------------


def bundle_received(cluster: str, bundle: pb.Bundle) -> None:
    """Remember when a traced DELTA came (DELTAs may be merged before they are applied; a FULL
    chunk is applied as it came, with its own trace context)."""
    if _tracer is not None and bundle.traceparent and bundle.kind == pb.DELTA:
        key = (cluster, bundle.type, bundle.incarnation, bundle.seq)
        _remember(_received, key, (bundle.traceparent, time.time_ns()), REMEMBERED_BUNDLES)


@dataclass
class ApplySpan:
    """The hub's apply of one bundle (or of merged DELTAs), open until :meth:`committed`."""

    span: Span
    cluster: str
    type: str
    keys: list[tuple[str, str]]

    def committed(self) -> None:
        """The bundle is committed: the span ends, and its objects' watch deliveries will be its children."""
        ctx = self.span.get_span_context()
        for namespace, name in self.keys:
            _remember(_applied, (self.cluster, self.type, namespace, name), ctx, REMEMBERED_OBJECTS)
        self.span.end()


def apply_started(
    cluster: str, type_: str, header: BundleHeader, *, traceparent: str, upserts: Sequence[pb.Object], deletes: Sequence[str], bundles: int = 1
) -> ApplySpan | None:
    """The hub starts applying a bundle of ``header`` (``traceparent``: the one it carried, "" for
    merged DELTAs, found by their seqs); None when no bundle of it was traced."""
    if _tracer is None:
        return None
    from opentelemetry import trace
    from opentelemetry.trace import Link

    received_at = time.time_ns()
    parents: list[SpanContext] = []
    if traceparent:
        ctx = _span_context(traceparent)
        parents = [ctx] if ctx else []
    else:  # the DELTAs (base_seq, seq] this stands for, oldest first (a bounded look)
        for seq in range(max(header.base_seq + 1, header.seq - 63), header.seq + 1):
            found = _received.pop((cluster, type_, header.incarnation, seq), None)
            if found and (ctx := _span_context(found[0])):
                parents.append(ctx)
                received_at = min(received_at, found[1])
    if not parents:
        return None
    span = _tracer.start_span(
        "fleetsync.hub.apply",
        context=trace.set_span_in_context(trace.NonRecordingSpan(parents[0])),
        links=[Link(p) for p in parents[1:]],
        start_time=received_at,
        attributes={
            "fleetsync.cluster": cluster,
            "fleetsync.type": type_,
            "fleetsync.incarnation": header.incarnation,
            "fleetsync.seq": header.seq,
            "fleetsync.base_seq": header.base_seq,
            "fleetsync.full": header.full,
            "fleetsync.bundles": max(bundles, len(parents)),
            "fleetsync.objects": len(upserts) + len(deletes),
        },
    )
    span.add_event("apply started")
    keys = [(o.namespace, o.name) for o in upserts[:OBJECTS_PER_APPLY]]
    keys += [tuple(k.split("/", 1)) for k in deletes[: OBJECTS_PER_APPLY - len(keys)]]  # type: ignore[misc]
    return ApplySpan(span, cluster, type_, keys)


def delivered(changes: Iterable[Change]) -> None:
    """A watch is handed ``changes``: a span for each one whose apply was traced."""
    if _tracer is None or not _applied:
        return
    from opentelemetry import trace

    made = 0
    for change in changes:
        obj = change.obj
        ctx = _applied.get((obj.cluster, obj.type, obj.namespace, obj.name))
        if ctx is None:
            continue
        now = time.time_ns()
        span = _tracer.start_span(
            "fleetsync.watch.deliver",
            context=trace.set_span_in_context(trace.NonRecordingSpan(ctx)),
            start_time=now,
            attributes={
                "fleetsync.cluster": obj.cluster,
                "fleetsync.type": obj.type,
                "fleetsync.object": f"{obj.namespace}/{obj.name}",
                "fleetsync.rev": change.rev,
                "fleetsync.event": str(change.type),
            },
        )
        span.end(end_time=now)
        made += 1
        if made >= DELIVERIES_PER_BATCH:
            return
