"""What every fleetsync process exports about itself on ``/metrics``, beside its own figures.

The hub and the agent keep their metrics in registries of their own (several can then run in
one process, as tests do), so prometheus_client's default collectors, which live in its
global registry, would not reach their ``/metrics``: they are added to each registry here.
"""

from __future__ import annotations

import platform

from prometheus_client import GC_COLLECTOR, PLATFORM_COLLECTOR, PROCESS_COLLECTOR, CollectorRegistry, Gauge

from fleetsync import __version__


def register_process_metrics(registry: CollectorRegistry) -> None:
    """Add ``process_*`` (CPU, memory, open files; on Linux), ``python_info``, ``python_gc_*`` and
    ``fleetsync_build_info{version, python}`` (always 1: its labels are the point) to ``registry``."""
    for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
        registry.register(collector)
    build = Gauge("fleetsync_build_info", "The fleetsync version and the Python running it (always 1)", ["version", "python"], registry=registry)
    build.labels(__version__, platform.python_version()).set(1)
