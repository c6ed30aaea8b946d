"""CustomResourceDefinitions in the Kubernetes API test emulator: serving, pruning, defaulting, validation.

A real API server prunes unknown fields, applies schema defaults and rejects invalid values of custom
resources. Operators that write a status field missing from the CRD schema lose it silently on a real
cluster, so the emulator does the same rather than hide such bugs. Validation covers the common
keywords only (type, enum, required, bounds, lengths, pattern); CEL rules and formats are ignored.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from typing import Any

from .resources import AGE_COLUMN, Column, ResourceType

_TYPE_CHECKS: dict[str, Any] = {
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
}


class CrdError(ValueError):
    """A CustomResourceDefinition the emulator cannot serve (the server answers 422)."""


def resource_types_from_crd(crd: Mapping[str, Any]) -> list[ResourceType]:
    """Every served version of a CRD as a resource type; raises :class:`CrdError` if malformed."""
    spec = crd.get("spec") or {}
    names = spec.get("names") or {}
    group, plural, kind = spec.get("group"), names.get("plural"), names.get("kind")
    if not group or not plural or not kind:
        raise CrdError("spec.group, spec.names.plural and spec.names.kind are required")
    expected_name = f"{plural}.{group}"
    if (crd.get("metadata") or {}).get("name") != expected_name:
        raise CrdError(
            f'metadata.name: Invalid value: must be spec.names.plural+"."+spec.group: {expected_name!r}'
        )
    if spec.get("scope") not in ("Namespaced", "Cluster"):
        raise CrdError("spec.scope: Unsupported value: must be Namespaced or Cluster")
    versions = [version for version in spec.get("versions") or [] if version.get("served", True)]
    if not versions:
        raise CrdError("spec.versions: at least one served version is required")
    types = []
    for version in versions:
        printer_columns = version.get("additionalPrinterColumns")
        if printer_columns:
            columns = tuple(
                Column(
                    name=column["name"],
                    type=column.get("type", "string"),
                    json_path=column.get("jsonPath"),
                    description=column.get("description", ""),
                    priority=int(column.get("priority", 0)),
                    format=column.get("format", ""),
                )
                for column in printer_columns
            )
        else:
            # As in Kubernetes: with no printer columns declared, the server shows NAME and AGE.
            columns = (AGE_COLUMN,)
        subresources = version.get("subresources") or {}
        types.append(
            ResourceType(
                group=group,
                version=version["name"],
                plural=plural,
                singular=names.get("singular") or kind.lower(),
                kind=kind,
                namespaced=spec["scope"] == "Namespaced",
                short_names=tuple(names.get("shortNames") or ()),
                categories=tuple(names.get("categories") or ()),
                status_subresource="status" in subresources,
                tracks_generation=True,
                columns=columns,
                schema=(version.get("schema") or {}).get("openAPIV3Schema"),
                crd_name=expected_name,
            )
        )
    return types


def crd_status(crd: Mapping[str, Any]) -> dict[str, Any]:
    """The status a real API server reports once a CRD is accepted and established."""
    spec = crd.get("spec") or {}
    names = dict(spec.get("names") or {})
    names.setdefault("singular", names.get("kind", "").lower())
    names.setdefault("listKind", f"{names.get('kind', '')}List")
    now = (crd.get("metadata") or {}).get("creationTimestamp")
    return {
        "acceptedNames": names,
        "conditions": [
            {
                "type": "NamesAccepted",
                "status": "True",
                "reason": "NoConflicts",
                "message": "no conflicts found",
                "lastTransitionTime": now,
            },
            {
                "type": "Established",
                "status": "True",
                "reason": "InitialNamesAccepted",
                "message": "the initial names have been accepted",
                "lastTransitionTime": now,
            },
        ],
        "storedVersions": [v["name"] for v in spec.get("versions") or [] if v.get("storage")],
    }


def prune_and_default(value: Any, schema: Mapping[str, Any] | None) -> Any:
    """Drop fields the structural schema does not declare and fill in declared defaults."""
    if schema is None:
        return value
    if isinstance(value, dict):
        properties = schema.get("properties")
        additional = schema.get("additionalProperties")
        preserve = bool(schema.get("x-kubernetes-preserve-unknown-fields"))
        if properties is not None:
            for key in list(value):
                if key in properties:
                    value[key] = prune_and_default(value[key], properties[key])
                elif isinstance(additional, dict):
                    value[key] = prune_and_default(value[key], additional)
                elif not preserve and additional is not True:
                    del value[key]
            for key, subschema in properties.items():
                if key not in value and "default" in subschema:
                    value[key] = prune_and_default(copy.deepcopy(subschema["default"]), subschema)
        elif isinstance(additional, dict):
            for key in list(value):
                value[key] = prune_and_default(value[key], additional)
        elif not preserve and additional is not True and schema.get("type") == "object":
            value.clear()  # An object with no declared properties keeps nothing, as in Kubernetes.
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [prune_and_default(item, schema["items"]) for item in value]
    return value


def prune_object(obj: dict[str, Any], schema: Mapping[str, Any] | None) -> dict[str, Any]:
    """Prune and default a whole custom resource; apiVersion, kind and metadata are never pruned."""
    if schema is None:
        return obj
    kept = {key: obj[key] for key in ("apiVersion", "kind", "metadata") if key in obj}
    rest = {key: value for key, value in obj.items() if key not in kept}
    rest = prune_and_default(
        rest,
        {
            **schema,
            "properties": {
                key: value
                for key, value in (schema.get("properties") or {}).items()
                if key not in ("apiVersion", "kind", "metadata")
            },
        },
    )
    return {**kept, **rest}


def validate(value: Any, schema: Mapping[str, Any] | None, path: str = "") -> list[dict[str, str]]:
    """Check the common OpenAPI keywords; returns Kubernetes-style causes (empty when valid)."""
    if schema is None:
        return []
    field = path or "<root>"
    if value is None:
        if schema.get("nullable"):
            return []
        return [_cause(field, f'{field} in body must be of type {schema.get("type", "object")}: "null"')]
    expected = schema.get("type")
    if expected in _TYPE_CHECKS and not _TYPE_CHECKS[expected](value):
        return [_cause(field, f'{field} in body must be of type {expected}: "{_type_name(value)}"')]
    if schema.get("x-kubernetes-int-or-string") and not isinstance(value, int | str):
        return [_cause(field, f"{field} in body must be of type integer or string")]
    causes: list[dict[str, str]] = []
    if "enum" in schema and value not in schema["enum"]:
        allowed = ", ".join(f'"{item}"' for item in schema["enum"])
        causes.append(_cause(field, f'Unsupported value: "{value}": supported values: {allowed}'))
    if isinstance(value, int | float) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            causes.append(
                _cause(field, f"{field} in body should be greater than or equal to {schema['minimum']}")
            )
        if "maximum" in schema and value > schema["maximum"]:
            causes.append(
                _cause(field, f"{field} in body should be less than or equal to {schema['maximum']}")
            )
    if isinstance(value, str):
        if "minLength" in schema and len(value) < schema["minLength"]:
            causes.append(
                _cause(field, f"{field} in body should be at least {schema['minLength']} chars long")
            )
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            causes.append(_cause(field, f"{field} in body may not be longer than {schema['maxLength']}"))
        if "pattern" in schema and not re.search(schema["pattern"], value):
            causes.append(_cause(field, f"{field} in body should match '{schema['pattern']}'"))
    if isinstance(value, list):
        if "minItems" in schema and len(value) < schema["minItems"]:
            causes.append(_cause(field, f"{field} in body should have at least {schema['minItems']} items"))
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            causes.append(_cause(field, f"{field} in body should have at most {schema['maxItems']} items"))
        if isinstance(schema.get("items"), dict):
            for index, item in enumerate(value):
                causes += validate(item, schema["items"], f"{path}[{index}]")
    if isinstance(value, dict):
        for key in schema.get("required") or []:
            if key not in value:
                causes.append(_cause(f"{path}.{key}".lstrip("."), "Required value"))
        properties = schema.get("properties") or {}
        additional = schema.get("additionalProperties")
        for key, item in value.items():
            subschema = properties.get(key, additional if isinstance(additional, dict) else None)
            causes += validate(item, subschema, f"{path}.{key}".lstrip("."))
    return causes


def validate_object(obj: Mapping[str, Any], schema: Mapping[str, Any] | None) -> list[dict[str, str]]:
    """Validate a custom resource's fields other than apiVersion, kind and metadata."""
    if schema is None:
        return []
    properties = {k: v for k, v in (schema.get("properties") or {}).items() if k not in ("metadata",)}
    body = {key: value for key, value in obj.items() if key not in ("apiVersion", "kind", "metadata")}
    required = [key for key in schema.get("required") or [] if key not in ("apiVersion", "kind", "metadata")]
    return validate(body, {**schema, "properties": properties, "required": required})


def _cause(field: str, message: str) -> dict[str, str]:
    return {"reason": "FieldValueInvalid", "message": message, "field": field}


def _type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"
