"""Field ownership (``metadata.managedFields``) and server-side apply.

A simplified structured-merge-diff: an object's fields are a set of paths; lists
whose items carry a merge key (containers by name, ports by port, conditions by
type, ...) are associative and their items are addressed by key, every other list
is atomic. That is enough for what users of server-side apply rely on: fields a
manager stops applying are removed, fields another manager owns conflict unless
forced, applying the same config twice changes nothing, and ``managedFields`` reads
like a real apiserver's (``FieldsV1``).
"""

from __future__ import annotations

import copy
from typing import Any

import orjson

from fleetsync.model.status import ApiError

Path = tuple[str, ...]

#: Associative lists by field name: the item fields that identify an item.
MERGE_KEYS: dict[str, tuple[str, ...]] = {
    "containers": ("name",),
    "initContainers": ("name",),
    "ephemeralContainers": ("name",),
    "volumes": ("name",),
    "env": ("name",),
    "volumeMounts": ("mountPath",),
    "ports": ("containerPort", "port"),
    "conditions": ("type",),
    "imagePullSecrets": ("name",),
    "ownerReferences": ("uid",),
    "hostAliases": ("ip",),
}

#: Top-level and metadata fields that nobody owns.
_UNOWNED_META = frozenset(
    (
        "name",
        "namespace",
        "uid",
        "resourceVersion",
        "generation",
        "creationTimestamp",
        "managedFields",
        "selfLink",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
    )
)


def item_key(list_field: str, item: Any) -> str | None:
    """``k:{...}`` path element of an associative list item, or None if the list is atomic."""
    candidates = MERGE_KEYS.get(list_field)
    if not candidates or not isinstance(item, dict):
        return None
    for key in candidates:
        if key in item:
            ident = {key: item[key]}
            if list_field == "ports" and "protocol" in item:
                ident["protocol"] = item["protocol"]
            return "k:" + orjson.dumps(ident, option=orjson.OPT_SORT_KEYS).decode()
    return None


def _is_associative(list_field: str, items: list[Any]) -> bool:
    return bool(items) and all(item_key(list_field, i) is not None for i in items)


def field_set(obj: dict[str, Any], *, include_status: bool = False) -> set[Path]:
    """Every owned path of ``obj``: leaves, plus each associative item (marked with ``.``)."""
    paths: set[Path] = set()
    for key, value in obj.items():
        if key in ("apiVersion", "kind") or (key == "status" and not include_status):
            continue
        if key == "metadata":
            for mk, mv in (value or {}).items():
                if mk not in _UNOWNED_META:
                    _collect(mv, ("f:metadata", f"f:{mk}"), mk, paths)
            continue
        _collect(value, (f"f:{key}",), key, paths)
    return paths


def _collect(value: Any, path: Path, name: str, paths: set[Path]) -> None:
    if isinstance(value, dict) and value:
        for k, v in value.items():
            _collect(v, (*path, f"f:{k}"), k, paths)
    elif isinstance(value, list) and _is_associative(name, value):
        for item in value:
            item_path = (*path, item_key(name, item) or "")
            paths.add((*item_path, "."))
            for k, v in item.items():
                _collect(v, (*item_path, f"f:{k}"), k, paths)
    else:
        paths.add(path)


def encode_fields(paths: set[Path]) -> dict[str, Any]:
    """Paths as the nested ``fieldsV1`` map."""
    root: dict[str, Any] = {}
    for path in sorted(paths):
        node = root
        for part in path:
            node = node.setdefault(part, {})
    return root


def decode_fields(fields: dict[str, Any], prefix: Path = ()) -> set[Path]:
    paths: set[Path] = set()
    for part, child in fields.items():
        path = (*prefix, part)
        if child:
            paths |= decode_fields(child, path)
        else:
            paths.add(path)
    return paths


def value_at(obj: Any, path: Path) -> Any:
    """The value at ``path`` (``_MISSING`` if absent)."""
    node = obj
    for part in path:
        if part == ".":
            return node
        if isinstance(node, dict) and part.startswith("f:"):
            node = node.get(part[2:], _MISSING)
        elif isinstance(node, list) and part.startswith("k:"):
            node = next((i for i in node if _item_matches(i, part)), _MISSING)
        else:
            return _MISSING
        if node is _MISSING:
            return _MISSING
    return node


def _item_matches(item: Any, part: str) -> bool:
    if not isinstance(item, dict):
        return False
    ident = orjson.loads(part[2:])
    return all(item.get(k) == v for k, v in ident.items())


def remove_path(obj: Any, path: Path) -> None:
    """Remove the field (or associative item) at ``path`` if present, pruning emptied maps."""
    if path and path[-1] == ".":
        path = path[:-1]
    parents: list[tuple[Any, str]] = []
    node = obj
    for part in path:
        parents.append((node, part))
        if isinstance(node, dict) and part.startswith("f:"):
            node = node.get(part[2:], _MISSING)
        elif isinstance(node, list) and part.startswith("k:"):
            node = next((i for i in node if _item_matches(i, part)), _MISSING)
        else:
            return
        if node is _MISSING:
            return
    container, part = parents[-1]
    if isinstance(container, dict):
        container.pop(part[2:], None)
    else:
        container[:] = [i for i in container if not _item_matches(i, part)]
    # prune now-empty maps/lists back up the path (but never the top-level object)
    for container, part in reversed(parents[:-1]):
        child = value_at(container, (part,))
        if child in ({}, []) and isinstance(container, dict):
            container.pop(part[2:], None)
        else:
            break


def merge(live: Any, config: Any, name: str = "") -> Any:
    """Deep-merge ``config`` into ``live``: maps merge, associative lists merge by key, the rest is replaced."""
    if isinstance(live, dict) and isinstance(config, dict):
        out = dict(live)
        for k, v in config.items():
            out[k] = merge(live.get(k, _MISSING), v, k) if k in live else copy.deepcopy(v)
        return out
    if isinstance(live, list) and isinstance(config, list) and _is_associative(name, config) and _is_associative(name, live):
        by_key = {item_key(name, i): i for i in live}
        out_list = []
        seen = set()
        for item in config:
            key = item_key(name, item)
            seen.add(key)
            out_list.append(merge(by_key[key], item, name) if key in by_key else copy.deepcopy(item))
        # live items the config does not mention stay (another manager may own them), after the applied ones
        out_list.extend(i for i in live if item_key(name, i) not in seen)
        return out_list
    return copy.deepcopy(config)


class _Missing:
    def __repr__(self) -> str:
        return "<missing>"


_MISSING: Any = _Missing()


def _entries(obj: dict[str, Any]) -> list[dict[str, Any]]:
    return list(obj.get("metadata", {}).get("managedFields") or [])


def _owned(entry: dict[str, Any]) -> set[Path]:
    return decode_fields(entry.get("fieldsV1") or {})


def _entry(manager: str, operation: str, api_version: str, paths: set[Path], now: str, subresource: str = "") -> dict[str, Any]:
    entry: dict[str, Any] = {
        "manager": manager,
        "operation": operation,
        "apiVersion": api_version,
        "time": now,
        "fieldsType": "FieldsV1",
        "fieldsV1": encode_fields(paths),
    }
    if subresource:
        entry["subresource"] = subresource
    return entry


def _path_text(path: Path) -> str:
    text = ""
    for part in path:
        if part == ".":
            continue
        text += f".{part[2:]}" if part.startswith("f:") else f"[{part[2:]}]"
    return text


def record_update(old: dict[str, Any] | None, new: dict[str, Any], *, manager: str, now: str, subresource: str = "") -> None:
    """Set ``new``'s managedFields after a create/update/patch by ``manager`` (operation Update).

    The manager takes the fields whose values it changed; other managers lose those,
    and everyone loses fields that no longer exist.
    """
    status = subresource == "status"
    new_paths = field_set(new, include_status=status)
    if status:
        new_paths = {p for p in new_paths if p[0] == "f:status"}
    changed = {p for p in new_paths if old is None or value_at(old, p) != value_at(new, p)}
    entries = []
    mine = None
    source = old if old is not None else new
    for entry in _entries(source):
        owned = _owned(entry)
        if status != (entry.get("subresource") == "status"):
            entries.append(entry)
            continue
        is_mine = entry["manager"] == manager and entry["operation"] == "Update"
        if is_mine:
            mine = entry
            owned = (owned & new_paths) | changed
        else:
            owned = (owned & new_paths) - changed
        if owned:
            entries.append({**entry, "fieldsV1": encode_fields(owned), **({"time": now} if is_mine else {})})
    if mine is None and changed:
        entries.append(_entry(manager, "Update", new.get("apiVersion", ""), changed, now, subresource))
    new.setdefault("metadata", {})["managedFields"] = entries


def apply(live: dict[str, Any] | None, config: dict[str, Any], *, manager: str, force: bool, now: str) -> dict[str, Any]:
    """Server-side apply ``config`` as ``manager`` onto ``live`` (None: create). Returns the new object.

    Raises 409 Conflict naming each field another manager owns with a different
    value, unless ``force``.
    """
    applied = field_set(config)
    api_version = config.get("apiVersion", "")
    if live is None:
        obj = copy.deepcopy(config)
        obj.setdefault("metadata", {})["managedFields"] = [_entry(manager, "Apply", api_version, applied, now)]
        return obj
    others: list[tuple[dict[str, Any], set[Path]]] = []
    previously: set[Path] = set()
    for entry in _entries(live):
        if entry.get("subresource"):
            others.append((entry, _owned(entry)))
        elif entry["manager"] == manager and entry["operation"] == "Apply":
            previously = _owned(entry)
        else:
            others.append((entry, _owned(entry)))
    conflicts = []
    for entry, owned in others:
        for path in sorted(applied & owned):
            if path[-1] != "." and value_at(live, path) != value_at(config, path):
                conflicts.append((entry["manager"], entry.get("apiVersion", ""), path))
    if conflicts and not force:
        described = "\n".join(f'- conflict with "{m}" using {v}: {_path_text(p)}' for m, v, p in conflicts)
        n = len(conflicts)
        raise ApiError(
            409,
            "Conflict",
            f"Apply failed with {n} conflict{'s' if n > 1 else ''}: {described.removeprefix('- ') if n == 1 else chr(10) + described}",
        )
    obj = copy.deepcopy(live)
    still_owned_by_others = set().union(*(owned for _, owned in others)) if others else set()
    for path in sorted(previously - applied, key=len, reverse=True):
        if path not in still_owned_by_others:
            remove_path(obj, path)
    meta = obj.get("metadata", {})
    merged = merge(obj, {k: v for k, v in config.items() if k != "metadata"})
    config_meta = {k: v for k, v in (config.get("metadata") or {}).items() if k not in _UNOWNED_META}
    merged["metadata"] = merge(meta, config_meta)
    conflicting = {p for _, _, p in conflicts}
    entries = []
    placed = False
    for entry in _entries(live):
        if entry["manager"] == manager and entry["operation"] == "Apply" and not entry.get("subresource"):
            # unchanged ownership keeps its timestamp, so a no-op apply writes nothing
            entries.append(entry if previously == applied else _entry(manager, "Apply", api_version, applied, now))
            placed = True
            continue
        owned = _owned(entry)
        keep = owned - conflicting if force else owned
        if keep:
            entries.append(entry if keep == owned else {**entry, "fieldsV1": encode_fields(keep)})
    if not placed:
        entries.append(_entry(manager, "Apply", api_version, applied, now))
    merged["metadata"]["managedFields"] = entries
    return merged  # type: ignore[no-any-return]
