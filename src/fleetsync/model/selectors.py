"""Kubernetes label and field selectors: parsing with clear errors, and matching.

Grammar follows k8s.io/apimachinery/pkg/labels: comma-separated requirements, each
``key``, ``!key``, ``key=v``, ``key==v``, ``key!=v``, ``key in (a,b)``,
``key notin (a,b)``, ``key>n``, ``key<n``. Field selectors allow only ``=``, ``==``
and ``!=`` on a per-type set of fields.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass

from fleetsync.errors import FleetsyncError

_NAME = r"[A-Za-z0-9](?:[-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
_QUALIFIED_NAME = re.compile(rf"^(?:[a-z0-9](?:[-a-z0-9.]{{0,251}}[a-z0-9])?/)?{_NAME}$")
_LABEL_VALUE = re.compile(rf"^(?:{_NAME})?$")
_KEY = r"[A-Za-z0-9][-A-Za-z0-9_./]*"
_SET_RE = re.compile(rf"^({_KEY})\s+(in|notin)\s*\((.*)\)$")
_EXISTS_RE = re.compile(rf"^(!?)\s*({_KEY})$")
_CMP_RE = re.compile(rf"^({_KEY})\s*(==|=|!=|>|<)\s*(.*)$")


class SelectorError(FleetsyncError, ValueError):
    """A selector string that cannot be parsed; the message names the bad part."""


def is_qualified_name(key: str) -> bool:
    return bool(_QUALIFIED_NAME.match(key))


def is_label_value(value: str) -> bool:
    return len(value) <= 63 and bool(_LABEL_VALUE.match(value))


@dataclass(frozen=True, slots=True)
class Requirement:
    key: str
    op: str  # "=", "!=", "in", "notin", "exists", "!", ">", "<"
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        value = labels.get(self.key)
        match self.op:
            case "exists":
                return present
            case "!":
                return not present
            case "=" | "in":
                return present and value in self.values
            case "!=" | "notin":
                return not present or value not in self.values
            case ">" | "<":
                if value is None:
                    return False
                try:
                    number = int(value)
                except ValueError:
                    return False
                bound = int(self.values[0])
                return number > bound if self.op == ">" else number < bound
        raise AssertionError(self.op)


def _split_top_level(text: str) -> list[str]:
    """Split on commas that are not inside parentheses."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts


@dataclass(frozen=True, slots=True)
class LabelSelector:
    requirements: tuple[Requirement, ...] = ()

    @classmethod
    def parse(cls, text: str | None) -> LabelSelector:
        if not text or not text.strip():
            return cls()
        reqs = [cls._parse_requirement(term.strip(), text) for term in _split_top_level(text)]
        return cls(tuple(reqs))

    @staticmethod
    def _parse_requirement(term: str, whole: str) -> Requirement:
        if not term:
            raise SelectorError(f"unable to parse requirement: empty term in label selector {whole!r}")
        if m := _SET_RE.match(term):
            key, op, inner = m.group(1), m.group(2), m.group(3)
            values = tuple(v.strip() for v in inner.split(",")) if inner.strip() else ()
            req = Requirement(key, op, values)
        elif m := _EXISTS_RE.match(term):
            req = Requirement(m.group(2), "!" if m.group(1) else "exists")
        elif m := _CMP_RE.match(term):
            key, op, value = m.group(1), m.group(2), m.group(3).strip()
            op = "=" if op == "==" else op
            if op in (">", "<") and not re.fullmatch(r"-?\d+", value):
                raise SelectorError(f"unable to parse requirement: for '{op}' operator, the value must be an integer, got {value!r}")
            req = Requirement(key, op, (value,))
        else:
            raise SelectorError(f"unable to parse requirement: {term!r} in label selector {whole!r}")
        if not is_qualified_name(req.key):
            raise SelectorError(f"unable to parse requirement: invalid label key {req.key!r}: must be a qualified name")
        if req.op in ("in", "notin") and not req.values:
            raise SelectorError(f"unable to parse requirement: for '{req.op}' operator, values set can't be empty")
        for value in req.values:
            if req.op not in (">", "<") and not is_label_value(value):
                raise SelectorError(f"unable to parse requirement: invalid label value {value!r}")
        return req

    @classmethod
    def from_match_labels(cls, labels: Mapping[str, str]) -> LabelSelector:
        return cls(tuple(Requirement(k, "=", (v,)) for k, v in sorted(labels.items())))

    @property
    def empty(self) -> bool:
        return not self.requirements

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(r.matches(labels) for r in self.requirements)

    def equalities(self) -> dict[str, str]:
        """The labels every match has with a single value (``k=v``, ``k==v``, ``k in (v)``):
        what a store can filter by before the whole selector is checked."""
        return {r.key: r.values[0] for r in self.requirements if r.op == "=" or (r.op == "in" and len(r.values) == 1)}


def _unescape_field_value(value: str) -> str:
    return re.sub(r"\\(.)", r"\1", value)


@dataclass(frozen=True, slots=True)
class FieldSelector:
    terms: tuple[tuple[str, str, str], ...] = ()  # (field, op "=" | "!=", value)

    @classmethod
    def parse(cls, text: str | None, *, allowed: Collection[str]) -> FieldSelector:
        if not text or not text.strip():
            return cls()
        terms = []
        for raw in re.split(r"(?<!\\),", text):
            term = raw.strip()
            m = re.match(r"^([^=!]+?)\s*(==|=|!=)\s*(.*)$", term)
            if not m:
                raise SelectorError(f"invalid field selector term {term!r}: expected field=value, field==value or field!=value")
            field_, op, value = m.group(1).strip(), m.group(2), _unescape_field_value(m.group(3).strip())
            if field_ not in allowed:
                raise SelectorError(f'field label not supported: "{field_}" (supported: {", ".join(sorted(allowed))})')
            terms.append((field_, "!=" if op == "!=" else "=", value))
        return cls(tuple(terms))

    @property
    def empty(self) -> bool:
        return not self.terms

    def matches(self, fields: Mapping[str, str]) -> bool:
        return all((fields.get(field_, "") == value) == (op == "=") for field_, op, value in self.terms)
