"""Which extra of the package brings which optional library, and the one-line error a user
gets when a command needs one that is not installed.

An agent install (``pip install 'fleetsync[agent]'``) leaves out PostgreSQL's driver, the
hub's SQLite store, the brokers' clients and the simulator's libraries, so the modules that
use them are imported only when a command needs them. When one is missing, the command
fails with what to install instead of a traceback. pyproject.toml declares the extras;
this table must name the same ones (tests/e2e/test_package.py checks both).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable

from fleetsync.errors import FleetsyncError

#: Top-level module -> (what needs it, the extra that installs it).
EXTRA_OF_MODULE: dict[str, tuple[str, str]] = {
    "kubernetes_asyncio": ("The agent", "agent"),
    "yarl": ("The agent", "agent"),
    "aiosqlite": ("The hub's SQLite store", "hub"),
    "simdjson": ("The hub", "hub"),
    "uvloop": ("The hub", "hub"),
    "asyncpg": ("PostgreSQL support", "postgres"),
    "aiomqtt": ("MQTT support", "mqtt"),
    "paho": ("MQTT support", "mqtt"),
    "nats": ("NATS support", "nats"),
    "sortedcontainers": ("The simulator", "sim"),
    "jsonpatch": ("The simulator", "sim"),
    "jsonpointer": ("The simulator", "sim"),
    "cryptography": ("The demo", "demo"),
    "opentelemetry": ("Tracing (--otlp-endpoint)", "otel"),
    "psutil": ("The test and benchmark harness (fleetsync.testing)", "test"),
}

#: Commands that need a whole extra of their own: their hint names it, whichever module of it is missing.
EXTRA_OF_COMMAND: dict[str, tuple[str, str]] = {"demo": ("The demo", "demo")}

#: A transport's URL scheme -> the client library it needs (gRPC is always installed).
MODULE_OF_SCHEME: dict[str, str] = {"mqtt": "aiomqtt", "mqtts": "aiomqtt", "nats": "nats"}


def install_hint(module: str, *, command: str = "") -> str | None:
    """The one line telling what to install for ``module`` (a dotted name is fine) missing when
    ``command`` ran, or None when no extra brings it (a missing module of another kind is a
    bug, not a user's install)."""
    top = module.partition(".")[0]
    needed = EXTRA_OF_MODULE.get(top)
    if needed is None:
        return None
    what, extra = EXTRA_OF_COMMAND.get(command, needed)
    return f"{what} needs `pip install 'fleetsync[{extra}]'` (the Python module {top} is not installed)"


class ExtrasMissing(FleetsyncError, ModuleNotFoundError):
    """A command needs optional libraries this install lacks; the message names every extra
    to install, in one line."""


def require(modules: Iterable[str], *, command: str = "") -> None:
    """Raise :class:`ExtrasMissing` naming every extra that brings one of ``modules`` not
    installed: a hub on PostgreSQL in an agent-only install is told ``fleetsync[hub,postgres]``
    at once, not one extra per attempt."""
    missing = sorted({top for module in modules if importlib.util.find_spec(top := module.partition(".")[0]) is None})
    if not missing:
        return
    what_of_extra: dict[str, str] = {}
    for top in missing:
        what, extra = EXTRA_OF_COMMAND.get(command, EXTRA_OF_MODULE.get(top, (f"the Python module {top}", "all")))
        what_of_extra[extra] = min(what_of_extra.get(extra, what), what, key=len)  # "The hub", not "The hub's SQLite store"
    extras = sorted(what_of_extra)
    verb = "needs" if len(extras) == 1 else "need"
    whats = " and ".join(what_of_extra[extra] for extra in extras)
    modules_are = f"module {missing[0]} is" if len(missing) == 1 else f"modules {', '.join(missing)} are"
    raise ExtrasMissing(f"{whats} {verb} `pip install 'fleetsync[{','.join(extras)}]'` (the Python {modules_are} not installed)", name=missing[0])


def scheme_problem(scheme: str) -> str | None:
    """Why a hub or broker URL of ``scheme`` cannot be used in this install, or None if it can:
    checked when the URL is parsed, so an agent fails at start instead of retrying forever."""
    module = MODULE_OF_SCHEME.get(scheme)
    if module is None or importlib.util.find_spec(module) is not None:
        return None
    return install_hint(module)
