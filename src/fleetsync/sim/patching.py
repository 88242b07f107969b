"""The PATCH flavours of the Kubernetes API (besides server-side apply).

- ``application/merge-patch+json``: RFC 7386 (null deletes, maps merge, lists replace);
- ``application/strategic-merge-patch+json``: like a merge patch, but lists with a
  merge key (see :data:`fieldmanager.MERGE_KEYS`) merge item by item and honour
  ``$patch: delete`` / ``$patch: replace``; custom resources refuse it (415), as on
  a real apiserver;
- ``application/json-patch+json``: RFC 6902, by the ``jsonpatch`` library.
"""

from __future__ import annotations

import copy
from typing import Any

import jsonpatch
import jsonpointer

from fleetsync.model.status import ApiError
from fleetsync.sim.fieldmanager import item_key

MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
JSON_PATCH = "application/json-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"
PATCH_TYPES = (MERGE_PATCH, STRATEGIC_MERGE_PATCH, JSON_PATCH, APPLY_PATCH)


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def strategic_merge_patch(target: Any, patch: Any, name: str = "") -> Any:
    if isinstance(patch, dict):
        if patch.get("$patch") == "replace":
            return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
        out = dict(target) if isinstance(target, dict) else {}
        for key, value in patch.items():
            if key.startswith("$"):
                continue
            if value is None:
                out.pop(key, None)
            else:
                out[key] = strategic_merge_patch(out.get(key), value, key)
        return out
    if isinstance(patch, list) and isinstance(target, list):
        keyed = [item_key(name, i) for i in patch if not (isinstance(i, dict) and i.get("$patch") == "replace")]
        if keyed and all(k is not None for k in keyed):
            result = list(target)
            for item in patch:
                key = item_key(name, item)
                index = next((n for n, cur in enumerate(result) if item_key(name, cur) == key), None)
                if isinstance(item, dict) and item.get("$patch") == "delete":
                    if index is not None:
                        del result[index]
                elif index is None:
                    result.append({k: v for k, v in item.items() if not k.startswith("$")})
                else:
                    result[index] = strategic_merge_patch(result[index], item, name)
            return result
    return copy.deepcopy(patch)


def apply_patch(content_type: str, target: dict[str, Any], patch: Any, *, custom_resource: bool) -> dict[str, Any]:
    """Apply a non-apply PATCH body to ``target``; errors are 400/415/422 Status values."""
    if content_type == MERGE_PATCH:
        if not isinstance(patch, dict):
            raise ApiError.bad_request("merge patch body must be a JSON object")
        result = merge_patch(target, patch)
    elif content_type == STRATEGIC_MERGE_PATCH:
        if custom_resource:
            raise ApiError.unsupported_media_type(f"{MERGE_PATCH}, {JSON_PATCH}, {APPLY_PATCH} (strategic merge patch is not supported for custom resources)")
        if not isinstance(patch, dict):
            raise ApiError.bad_request("strategic merge patch body must be a JSON object")
        result = strategic_merge_patch(target, patch)
    elif content_type == JSON_PATCH:
        try:
            result = jsonpatch.JsonPatch(patch).apply(target)
        except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException, TypeError, AttributeError) as exc:
            raise ApiError(422, "Invalid", f"the json patch could not be applied: {exc}") from None
    else:
        raise ApiError.unsupported_media_type(", ".join(PATCH_TYPES))
    if not isinstance(result, dict):
        raise ApiError.bad_request("the patch did not produce an object")
    return result
