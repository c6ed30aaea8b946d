"""Server-side printing (``meta.k8s.io/v1`` Table) for ``kubectl get`` against the API test emulator."""

from __future__ import annotations

import datetime
import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

from .resources import Column, ResourceType

_NAME_COLUMN = {
    "name": "Name",
    "type": "string",
    "format": "name",
    "description": "Name must be unique within a namespace.",
    "priority": 0,
}
_TOKEN_RE = re.compile(
    r"""\.([A-Za-z0-9_\-/]+)|\[(\d+)\]|\[\?\(@\.([A-Za-z0-9_.\-]+)\s*==\s*["']?([^"')]*)["']?\)\]|\[\*\]"""
)


def jsonpath(obj: Any, path: str) -> list[Any]:
    """Evaluate the simple JSONPath of printer columns: ``.a.b``, ``[0]``, ``[*]``, ``[?(@.k=="v")]``."""
    expression = path.strip()
    if expression.startswith("{") and expression.endswith("}"):
        expression = expression[1:-1]
    expression = expression.removeprefix("$")
    nodes = [obj]
    position = 0
    while position < len(expression):
        match = _TOKEN_RE.match(expression, position)
        if not match:
            return []  # Unsupported syntax prints as <none>, not as a crash of the emulator.
        key, index, filter_key, filter_value = match.groups()
        next_nodes: list[Any] = []
        for node in nodes:
            if key is not None and isinstance(node, Mapping) and key in node:
                next_nodes.append(node[key])
            elif index is not None and isinstance(node, list) and int(index) < len(node):
                next_nodes.append(node[int(index)])
            elif filter_key is not None and isinstance(node, list):
                next_nodes += [item for item in node if _matches(item, filter_key, filter_value)]
            elif match.group(0) == "[*]" and isinstance(node, list):
                next_nodes += node
        nodes = next_nodes
        position = match.end()
    return nodes


def _matches(item: Any, key: str, expected: str) -> bool:
    # Filters compare as strings, so [?(@.ready==true)] and [?(@.type=="Ready")] both work.
    found = jsonpath(item, "." + key)
    if not found:
        return False
    value = found[0]
    text = ("true" if value else "false") if isinstance(value, bool) else str(value)
    return text == expected


def human_duration(seconds: float) -> str:
    """Kubernetes' ``duration.HumanDuration``: the AGE format of ``kubectl get``."""
    if seconds < -1:
        return "<invalid>"
    seconds = max(0, int(seconds))
    minutes, hours, days = seconds // 60, seconds // 3600, seconds // 86400
    if seconds < 120:
        return f"{seconds}s"
    if minutes < 10:
        return f"{minutes}m{seconds % 60}s" if seconds % 60 else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    if hours < 8:
        return f"{hours}h{minutes % 60}m" if minutes % 60 else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    if hours < 192:
        return f"{days}d{hours % 24}h" if hours % 24 else f"{days}d"
    if days < 365 * 2:
        return f"{days}d"
    years = days // 365
    if days < 365 * 8:
        return f"{years}y{days % 365}d" if days % 365 else f"{years}y"
    return f"{years}y"


def _cell(column: Column, obj: Mapping[str, Any], now: float) -> Any:
    if column.render is not None:
        return column.render(obj)
    results = jsonpath(obj, column.json_path or "")
    if not results or results[0] is None:
        return None  # kubectl prints <none>.
    value = results[0]
    if column.type == "date":
        if not isinstance(value, str):
            return "<invalid>"
        try:
            stamp = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return "<invalid>"
        return human_duration(now - stamp.timestamp())
    if column.type == "integer":
        return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
    if column.type == "number":
        return value if isinstance(value, int | float) and not isinstance(value, bool) else None
    if column.type == "boolean":
        return value if isinstance(value, bool) else None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def _row_object(obj: Mapping[str, Any], include_object: str) -> Any:
    if include_object == "None":
        return None
    if include_object == "Object":
        return obj
    return {
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": obj.get("metadata", {}),
    }


def render_table(
    rtype: ResourceType,
    objects: Iterable[Mapping[str, Any]],
    *,
    resource_version: str,
    now: float,
    include_object: str = "Metadata",
    continue_token: str = "",
) -> dict[str, Any]:
    """Build the Table kubectl asks for with ``Accept: application/json;as=Table;v=v1;g=meta.k8s.io``."""
    definitions = [dict(_NAME_COLUMN)] + [
        {
            "name": column.name,
            "type": "string" if column.type == "date" else column.type,  # Dates are rendered as ages.
            "format": column.format,
            "description": column.description,
            "priority": column.priority,
        }
        for column in rtype.columns
    ]
    rows = [
        {
            "cells": [obj.get("metadata", {}).get("name")]
            + [_cell(column, obj, now) for column in rtype.columns],
            "object": _row_object(obj, include_object),
        }
        for obj in objects
    ]
    metadata: dict[str, Any] = {"resourceVersion": resource_version}
    if continue_token:
        metadata["continue"] = continue_token
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": metadata,
        "columnDefinitions": definitions,
        "rows": rows,
    }
