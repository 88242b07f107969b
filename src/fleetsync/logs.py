"""Log setup for every fleetsync command: plain text for people, or one JSON object per line for log pipelines.

Why a context: most log lines are about one cluster, one of its types, one agent run, yet
the code that logs them (a watch, the engine, the store's retries) is far from the code that
knows which. So the places that do know -- the hub's session as it handles an agent's
message, the agent as it starts, a type's watch task -- bind those fields to the current
asyncio context (:func:`bound`, :func:`bind`), and every line logged in it, and in the tasks
it starts, carries them. asyncio copies the context into each new task, so a binding reaches
the work it spawned and nothing else. An explicit ``extra={"cluster": ...}`` on a log call
wins over the context.

``--log-format json`` writes each record as one line: ``time`` (UTC, ISO 8601, ms),
``level``, ``logger``, ``message``, the context fields that are known (``cluster``, ``type``,
``session``), any other ``extra=`` fields, and ``exception`` (the traceback as one string
field, never lines of its own). ``--log-format text`` (the default) is the classic
``TIME LEVEL LOGGER: MESSAGE``.
"""

from __future__ import annotations

import contextvars
import datetime
import logging
import sys
import types
from collections.abc import Mapping
from typing import Any, TextIO

import orjson

#: The fields a context may bind (documented in docs/observability.md): the cluster a line is
#: about, the resource type (group/version/Kind), and the session (the agent's incarnation:
#: one agent run, the same on the agent's lines and on the hub's).
CONTEXT_FIELDS = ("cluster", "type", "session")
FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

_context: contextvars.ContextVar[Mapping[str, str]] = contextvars.ContextVar("fleetsync_log_context", default=types.MappingProxyType({}))

#: The attributes every LogRecord has: whatever else a record carries came from ``extra=``.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime", "taskName"}


def _merged(fields: Mapping[str, str | None]) -> Mapping[str, str]:
    current = _context.get()
    if not current and all(fields.values()):  # (the common case: nothing bound yet)
        return fields  # type: ignore[return-value]
    merged = dict(current)
    for key, value in fields.items():
        if value:
            merged[key] = value
        else:
            merged.pop(key, None)
    return merged


class bound:  # (lower case: used as a function, ``with logs.bound(cluster=...):``)
    """Within the block, log lines carry ``fields`` (a None or empty value removes one). A class,
    not a generator: the hub enters one for every message an agent sends."""

    __slots__ = ("_fields", "_token")

    def __init__(self, **fields: str | None) -> None:
        self._fields = fields
        self._token: contextvars.Token[Mapping[str, str]] | None = None

    def __enter__(self) -> None:
        self._token = _context.set(_merged(self._fields))

    def __exit__(self, *exc: object) -> None:
        assert self._token is not None
        _context.reset(self._token)


def bind(**fields: str | None) -> None:
    """From here on in this task (and the tasks it starts), log lines carry ``fields``; inside a
    :func:`bound` block, only until the block ends."""
    _context.set(_merged(fields))


def current() -> Mapping[str, str]:
    """The fields bound now."""
    return _context.get()


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (see the module doc)."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        doc.update(_context.get())
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                doc[key] = value
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            doc["exception"] = record.exc_text
        if record.stack_info:
            doc["stack"] = self.formatStack(record.stack_info)
        return orjson.dumps(doc, default=str).decode()


def announce(message: str, *, logger: str) -> None:
    """A line for the person who started the process (where it listens, say): on stdout as it is,
    or, with JSON logs, a log record of ``logger`` (every line of a JSON log is JSON)."""
    if _format == "json":
        logging.getLogger(logger).info(message)
    else:
        print(message, flush=True)


_format = "text"


def configure(*, level: str = "info", fmt: str = "text", stream: TextIO | None = None) -> logging.Handler:
    """Send every logger's records at ``level`` and above to ``stream`` (stderr) in ``fmt``; returns the handler."""
    if fmt not in FORMATS:
        raise ValueError(f"log format {fmt!r}: expected one of {', '.join(FORMATS)}")
    global _format
    _format = fmt
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    logging.captureWarnings(True)  # a library's warnings become records too: one format on stderr
    return handler
