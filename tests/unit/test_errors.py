"""Every exception fleetsync declares derives from :class:`~fleetsync.errors.FleetsyncError` (and keeps its standard base)."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import fleetsync
from fleetsync.errors import FleetsyncError
from fleetsync.model.types import UnknownResourceType
from fleetsync.transport.base import TransportError


def _declared_exceptions() -> list[type[BaseException]]:
    found = []
    for info in pkgutil.walk_packages(fleetsync.__path__, "fleetsync."):
        if "_pb2" in info.name or info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        found += [c for c in vars(module).values() if inspect.isclass(c) and issubclass(c, BaseException) and c.__module__ == module.__name__]
    return found


def test_every_declared_exception_is_a_fleetsync_error() -> None:
    declared = _declared_exceptions()
    assert len(declared) > 25  # the walk found the package's exceptions
    assert [f"{c.__module__}.{c.__qualname__}" for c in declared if not issubclass(c, FleetsyncError)] == []


def test_standard_bases_are_kept() -> None:
    assert issubclass(TransportError, ConnectionError)
    assert issubclass(UnknownResourceType, LookupError)
