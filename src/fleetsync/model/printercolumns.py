"""A CRD's printer columns (``additionalPrinterColumns``) evaluated on its objects (pure code).

The hub serves Tables of types it learnt from its agents; for a CRD, ``kubectl get``
shows the columns the CRD declares, as the Kubernetes API server computes them: each
column's JSONPath into the object, ``date`` columns as an age, and an absent value as an
empty cell. The JSONPath subset is what CRDs use in practice: fields (``.spec.size``),
indexes (``.status.conditions[0].type``) and equality filters
(``.status.conditions[?(@.type=="Ready")].status``); a path outside it yields an empty
cell, never an error (the column was accepted from an agent, the table is still served).
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from typing import Any

from fleetsync.model.objects import dig, human_duration, parse_rfc3339
from fleetsync.model.types import PrinterColumn

Row = list[Any]
Column = tuple[str, str, int]

_STEP = re.compile(r"""\.([A-Za-z0-9_$-]+)|\[(\d+)\]|\[\?\(@\.([A-Za-z0-9_.-]+)\s*==\s*["']([^"']*)["']\)\]|\['([^']+)'\]""")


def _steps(path: str) -> list[tuple[str, Any]] | None:
    """``path`` as (kind, argument) steps; None if it is outside the supported subset."""
    text = path.strip()
    if text.startswith("{") and text.endswith("}"):
        text = text[1:-1]
    steps: list[tuple[str, Any]] = []
    at = 0
    while at < len(text):
        m = _STEP.match(text, at)
        if m is None:
            return None
        field, index, key, value, quoted = m.groups()
        if field is not None or quoted is not None:
            steps.append(("field", field if field is not None else quoted))
        elif index is not None:
            steps.append(("index", int(index)))
        else:
            steps.append(("filter", (key, value)))
        at = m.end()
    return steps


def evaluate(path: str, obj: dict[str, Any]) -> Any:
    """The value at ``path`` in ``obj`` (None: absent, or a path outside the supported subset)."""
    steps = _steps(path)
    if steps is None:
        return None
    value: Any = obj
    for kind, argument in steps:
        if kind == "field":
            value = value.get(argument) if isinstance(value, dict) else None
        elif kind == "index":
            value = value[argument] if isinstance(value, list) and argument < len(value) else None
        else:
            key, wanted = argument
            value = next((v for v in value if isinstance(v, dict) and str(dig(v, key)) == wanted), None) if isinstance(value, list) else None
        if value is None:
            return None
    return value


def _cell(column: PrinterColumn, value: Any) -> Any:
    if value is None:
        return None
    if column.type == "date":
        try:
            return human_duration(time.time() - parse_rfc3339(str(value)))
        except ValueError:
            return None
    if column.type == "integer" and isinstance(value, int) and not isinstance(value, bool):
        return value
    if column.type == "number" and isinstance(value, int | float) and not isinstance(value, bool):
        return value
    if column.type == "boolean" and isinstance(value, bool):
        return value
    if isinstance(value, dict | list):
        return str(value)
    return value if column.type == "string" else str(value)


def columns(printer_columns: Sequence[PrinterColumn]) -> list[Column]:
    """The Table column definitions (besides Name) of a type with these printer columns."""
    return [(c.name, c.type, c.priority) for c in printer_columns]


def row(printer_columns: Sequence[PrinterColumn], obj: dict[str, Any]) -> Row:
    """One object's cells (besides its name) under these printer columns."""
    return [_cell(c, evaluate(c.json_path, obj)) for c in printer_columns]
