"""Patch formats of the Kubernetes API, as implemented by the test emulator (not a real API server).

Three formats matter to the clients we drive: JSON merge patches (RFC 7386; kopf, kubectl for
custom resources), JSON patches (RFC 6902; kopf's finalizers and annotations, guarded by a ``test``
op on the resourceVersion) and strategic merge patches (kubectl apply/annotate/scale on built-ins).
The strategic merge covers only what kubectl sends: merge keys for the usual lists and the
``$patch``, ``$setElementOrder``, ``$retainKeys`` and ``$deleteFromPrimitiveList`` directives.
"""

from __future__ import annotations

import copy
from typing import Any

JSON = Any


class PatchError(Exception):
    """A patch that cannot be applied; the server answers 422 Unprocessable Entity."""


def merge_patch(target: JSON, patch: JSON) -> JSON:
    """Apply an RFC 7386 JSON merge patch; returns a new document, the inputs stay untouched."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


# ---------------------------------------------------------------------------------------------
# RFC 6902 JSON patch
# ---------------------------------------------------------------------------------------------


def _split_pointer(pointer: str) -> list[str]:
    if pointer == "":
        return []
    if not pointer.startswith("/"):
        raise PatchError(f"invalid JSON pointer {pointer!r}")
    return [part.replace("~1", "/").replace("~0", "~") for part in pointer[1:].split("/")]


def _list_index(container: list[Any], token: str, *, for_insert: bool) -> int:
    if token == "-" and for_insert:
        return len(container)
    if not token.isdigit():
        raise PatchError(f"invalid list index {token!r}")
    index = int(token)
    limit = len(container) if for_insert else len(container) - 1
    if index > limit:
        raise PatchError(f"list index {index} out of range")
    return index


def _resolve_parent(document: JSON, tokens: list[str], pointer: str) -> JSON:
    node = document
    for token in tokens[:-1]:
        if isinstance(node, dict):
            if token not in node:
                raise PatchError(f"path {pointer!r} does not exist")
            node = node[token]
        elif isinstance(node, list):
            node = node[_list_index(node, token, for_insert=False)]
        else:
            raise PatchError(f"path {pointer!r} does not exist")
    return node


def _get(document: JSON, pointer: str) -> JSON:
    tokens = _split_pointer(pointer)
    if not tokens:
        return document
    parent = _resolve_parent(document, tokens, pointer)
    last = tokens[-1]
    if isinstance(parent, dict):
        if last not in parent:
            raise PatchError(f"path {pointer!r} does not exist")
        return parent[last]
    if isinstance(parent, list):
        return parent[_list_index(parent, last, for_insert=False)]
    raise PatchError(f"path {pointer!r} does not exist")


def _remove(document: JSON, pointer: str) -> JSON:
    tokens = _split_pointer(pointer)
    if not tokens:
        raise PatchError("cannot remove the whole document")
    parent = _resolve_parent(document, tokens, pointer)
    last = tokens[-1]
    if isinstance(parent, dict):
        if last not in parent:
            raise PatchError(f"path {pointer!r} does not exist")
        return parent.pop(last)
    if isinstance(parent, list):
        return parent.pop(_list_index(parent, last, for_insert=False))
    raise PatchError(f"path {pointer!r} does not exist")


def _add(document: JSON, pointer: str, value: JSON) -> JSON:
    tokens = _split_pointer(pointer)
    if not tokens:
        return value
    parent = _resolve_parent(document, tokens, pointer)
    last = tokens[-1]
    if isinstance(parent, dict):
        parent[last] = value
    elif isinstance(parent, list):
        parent.insert(_list_index(parent, last, for_insert=True), value)
    else:
        raise PatchError(f"path {pointer!r} does not exist")
    return document


def json_patch(target: JSON, operations: JSON) -> JSON:
    """Apply an RFC 6902 JSON patch; a failed ``test`` op raises :class:`PatchError` (HTTP 422)."""
    if not isinstance(operations, list):
        raise PatchError("a JSON patch must be a list of operations")
    document = copy.deepcopy(target)
    for operation in operations:
        if not isinstance(operation, dict) or "op" not in operation or "path" not in operation:
            raise PatchError(f"malformed JSON patch operation {operation!r}")
        op, path = operation["op"], operation["path"]
        if op == "test":
            actual = _get(document, path)
            if actual != operation.get("value"):
                raise PatchError(f"test failed at {path!r}: {actual!r} != {operation.get('value')!r}")
        elif op == "add":
            document = _add(document, path, copy.deepcopy(operation.get("value")))
        elif op == "remove":
            _remove(document, path)
        elif op == "replace":
            _get(document, path)  # Must exist, unlike "add".
            tokens = _split_pointer(path)
            if not tokens:
                document = copy.deepcopy(operation.get("value"))
            else:
                parent = _resolve_parent(document, tokens, path)
                if isinstance(parent, list):
                    parent[_list_index(parent, tokens[-1], for_insert=False)] = copy.deepcopy(
                        operation.get("value")
                    )
                else:
                    parent[tokens[-1]] = copy.deepcopy(operation.get("value"))
        elif op == "move":
            value = _remove(document, operation["from"])
            document = _add(document, path, value)
        elif op == "copy":
            document = _add(document, path, copy.deepcopy(_get(document, operation["from"])))
        else:
            raise PatchError(f"unknown JSON patch op {op!r}")
    return document


# ---------------------------------------------------------------------------------------------
# Strategic merge patch (the subset kubectl needs)
# ---------------------------------------------------------------------------------------------

# Lists of objects merged item by item, by field name -> merge key (from the Kubernetes Go types).
# Lists not named here are replaced as a whole, like lists without a patchStrategy in Kubernetes.
MERGE_KEYS: dict[str, str] = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "volumeDevices": "devicePath",
    "imagePullSecrets": "name",
    "hostAliases": "ip",
    "conditions": "type",
    "ownerReferences": "uid",
    "topologySpreadConstraints": "topologyKey",
    "resourceClaims": "name",
}
# Lists of scalars that merge as sets rather than being replaced.
MERGED_PRIMITIVE_LISTS = {"finalizers"}

_ORDER_PREFIX = "$setElementOrder/"
_DELETE_PRIMITIVE_PREFIX = "$deleteFromPrimitiveList/"


def _merge_key_for(field: str, items: list[Any]) -> str | None:
    if field == "ports":
        # Containers' ports merge by containerPort, Services' ports by port.
        if any(isinstance(item, dict) and "containerPort" in item for item in items):
            return "containerPort"
        return "port"
    return MERGE_KEYS.get(field)


def _merge_object_list(original: list[Any], patch: list[Any], key: str) -> list[Any]:
    if any(isinstance(item, dict) and item.get("$patch") == "replace" for item in patch):
        return [copy.deepcopy(item) for item in patch if not (isinstance(item, dict) and "$patch" in item)]
    result = copy.deepcopy(original)
    for item in patch:
        if not isinstance(item, dict) or key not in item:
            result.append(copy.deepcopy(item))
            continue
        index = next(
            (
                i
                for i, existing in enumerate(result)
                if isinstance(existing, dict) and existing.get(key) == item[key]
            ),
            None,
        )
        if item.get("$patch") == "delete":
            if index is not None:
                result.pop(index)
        elif index is None:
            result.append(strategic_merge_patch({}, item))
        else:
            result[index] = strategic_merge_patch(result[index], item)
    return result


def _apply_order(items: list[Any], order: list[Any], field: str) -> list[Any]:
    """Honour ``$setElementOrder``: listed items first in that order, server-only items after."""
    if not order:
        return items
    if isinstance(order[0], dict):
        key = next(iter(order[0]))
        positions = {entry.get(key): i for i, entry in enumerate(order) if isinstance(entry, dict)}

        def position(item: Any) -> Any:
            return item.get(key) if isinstance(item, dict) else None
    else:
        positions = {value: i for i, value in enumerate(order)}

        def position(item: Any) -> Any:
            return item

    listed = sorted(
        (item for item in items if position(item) in positions), key=lambda i: positions[position(i)]
    )
    rest = [item for item in items if position(item) not in positions]
    return listed + rest


def strategic_merge_patch(target: JSON, patch: JSON) -> JSON:
    """Apply a strategic merge patch as kubectl sends it; returns a new document."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    directive = patch.get("$patch")
    if directive == "delete":
        return None
    if directive == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if not k.startswith("$")}
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    orders: dict[str, list[Any]] = {}
    for key, value in patch.items():
        if key.startswith(_ORDER_PREFIX):
            orders[key[len(_ORDER_PREFIX) :]] = value
        elif key.startswith(_DELETE_PRIMITIVE_PREFIX):
            field = key[len(_DELETE_PRIMITIVE_PREFIX) :]
            if isinstance(result.get(field), list):
                result[field] = [item for item in result[field] if item not in value]
        elif key.startswith("$"):
            continue  # $retainKeys is handled below; other directives carry no data for us.
        elif value is None:
            result.pop(key, None)
        elif isinstance(value, dict):
            merged = strategic_merge_patch(result.get(key), value)
            if merged is None:
                result.pop(key, None)
            else:
                result[key] = merged
        elif isinstance(value, list):
            existing = result.get(key)
            original: list[Any] = existing if isinstance(existing, list) else []
            merge_key = _merge_key_for(key, [*original, *value])
            if key in MERGED_PRIMITIVE_LISTS:
                result[key] = original + [item for item in value if item not in original]
            elif merge_key is not None and all(isinstance(item, dict) for item in value):
                result[key] = _merge_object_list(original, value, merge_key)
            else:
                result[key] = copy.deepcopy(value)
        else:
            result[key] = value
    for field, order in orders.items():
        if isinstance(result.get(field), list):
            result[field] = _apply_order(result[field], order, field)
    retain = patch.get("$retainKeys")
    if isinstance(retain, list):
        result = {k: v for k, v in result.items() if k in retain}
    return result
