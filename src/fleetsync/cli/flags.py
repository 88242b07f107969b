"""Flags that also come from the environment: ``--some-flag`` <- ``FLEETSYNC_SOME_FLAG``.

Every flag of every subcommand is declared through :func:`add_flag`, so the rule
holds everywhere and ``--help`` names the variable.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any


def env_name(flag: str) -> str:
    return "FLEETSYNC_" + flag.lstrip("-").replace("-", "_").upper()


def add_flag(parser: argparse.ArgumentParser, flag: str, *, type: Callable[[str], Any] = str, default: Any = None, help: str, **kwargs: Any) -> None:  # noqa: A002
    """Add ``flag`` whose default comes from its environment variable when set."""
    var = env_name(flag)
    raw = os.environ.get(var)
    if raw is not None and raw != "":
        try:
            default = type(raw)
        except (TypeError, ValueError):
            parser.error(f"environment variable {var}={raw!r} is not a valid value for {flag}")
    shown = "" if default is None else f" (default: {default})"
    parser.add_argument(flag, type=type, default=default, help=f"{help}{shown} [env {var}]", **kwargs)


def add_switch(parser: argparse.ArgumentParser, flag: str, *, help: str) -> None:  # noqa: A002
    """A boolean ``--flag`` / ``--no-flag``; the environment variable takes 1/0, true/false."""
    var = env_name(flag)
    raw = os.environ.get(var, "").lower()
    default = raw in ("1", "true", "yes", "on") if raw else None
    parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=f"{help} [env {var}]")


def non_negative_float(text: str) -> float:
    value = float(text)
    if value < 0:
        raise ValueError(text)
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise ValueError(text)
    return value


def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise ValueError(text)
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError(text)
    return value


# argparse prints the type's __name__ in its error message ("invalid positive_int value")
non_negative_float.__name__ = "non-negative number"
positive_float.__name__ = "positive number"
positive_int.__name__ = "positive integer"
non_negative_int.__name__ = "non-negative integer"


def read_token_file(flag: str, path: str, *, min_length: int = 1) -> str:
    """The token in ``path`` (stripped), or a ValueError naming ``flag`` and what is wrong."""
    try:
        token = Path(path).read_text().strip()
    except OSError as exc:
        raise ValueError(f"{flag} {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{flag} {path}: not a text file") from None
    if not token:
        raise ValueError(f"{flag} {path} is empty")
    if len(token) < min_length:
        raise ValueError(f"{flag} {path}: a token needs at least {min_length} characters (`fleetsync token create` makes 47)")
    return token
