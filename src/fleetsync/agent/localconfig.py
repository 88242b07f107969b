"""The agent's local config target: a JSON object in a file, the part seed 004's snap config plays.

Gates are its ``feature.*`` keys with ``true``/``false`` values (JSON booleans; the strings
"true"/"false" are read too); other keys belong to whoever else uses the file and are
kept as they are. Writes replace the file atomically (a temporary file renamed over it),
so a reader never sees half a file.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fleetsync.model.gates import GATE_KEY


class LocalConfigError(ValueError):
    """The local config file cannot be read or is not a JSON object."""


class LocalConfig:
    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self) -> dict[str, Any]:
        """The whole file ({} if it does not exist yet)."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise LocalConfigError(f"local config {self.path}: {exc.strerror}") from None
        if not text.strip():
            return {}
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise LocalConfigError(f"local config {self.path} is not JSON: {exc}") from None
        if not isinstance(data, dict):
            raise LocalConfigError(f"local config {self.path} must be a JSON object (key -> value), not {type(data).__name__}")
        return data

    def gates(self) -> dict[str, bool]:
        """The ``feature.*`` keys whose values are booleans (anything else is not a gate and is left alone)."""
        found: dict[str, bool] = {}
        for key, value in self.read().items():
            if not GATE_KEY.match(key):
                continue
            if isinstance(value, str) and value.lower() in ("true", "false"):
                value = value.lower() == "true"
            if isinstance(value, bool):
                found[key] = value
        return found

    def update(self, changes: Mapping[str, bool | str | None]) -> None:
        """Set or remove (None) keys, keeping the rest of the file."""
        data = self.read()
        for key, value in changes.items():
            if value is None:
                data.pop(key, None)
            else:
                data[key] = value
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w") as out:
                json.dump(data, out, indent=2, sort_keys=True)
                out.write("\n")
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
