"""The PoolBudget CustomResourceDefinition, generated from the pydantic models.

Kubernetes wants a *structural* schema: every node typed, no `$ref`, no `anyOf` over types. Pydantic's JSON
schema is turned into one here: references inlined, `X | None` made `nullable`, titles dropped.
"""

from __future__ import annotations

from typing import Any

import yaml

from poolbudget.api.models import GROUP, KIND, PLURAL, SHORT_NAMES, VERSION, PoolBudgetSpec, PoolBudgetStatus

PRINTER_COLUMNS = [
    {
        "name": "Max",
        "type": "integer",
        "jsonPath": ".status.maxConnections",
        "description": "max_connections of the database",
    },
    {
        "name": "Available",
        "type": "integer",
        "jsonPath": ".status.available",
        "description": "connections the budget may hand out",
    },
    {
        "name": "Allocated",
        "type": "integer",
        "jsonPath": ".status.allocated",
        "description": "connections the plan hands out at peak",
    },
    {
        "name": "Deployments",
        "type": "integer",
        "jsonPath": ".status.deploymentCount",
        "description": "opted-in Deployments",
    },
    {"name": "Ready", "type": "string", "jsonPath": ".status.ready", "description": "the Ready condition"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]

_DROP = {"title", "default"}


def _structural(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, list):
        return [_structural(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = defs[node["$ref"].rsplit("/", 1)[-1]]
        merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        return _structural(merged, defs)
    options = node.get("anyOf")
    if options is not None:
        typed = [o for o in options if o.get("type") != "null"]
        rest = {k: v for k, v in node.items() if k != "anyOf"}
        if len(typed) == 1:
            merged = {**_structural(typed[0], defs), **_structural(rest, defs)}
            if len(typed) < len(options):
                merged["nullable"] = True
            return merged
        # int | str (e.g. maxSurge): Kubernetes' int-or-string
        return {**_structural(rest, defs), "x-kubernetes-int-or-string": True}
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP or key == "$defs":
            continue
        if key == "properties":
            out[key] = {name: _structural(prop, defs) for name, prop in value.items()}
        elif key == "const":
            out["enum"] = [value]
        elif key == "additionalProperties" and value is False:
            continue  # unknown fields are pruned by the API server; `false` is not allowed in a CRD
        elif key in ("exclusiveMinimum", "exclusiveMaximum"):
            # JSON Schema 2020 writes the bound here; OpenAPI v3.0 (Kubernetes) wants a flag beside it
            out["minimum" if key == "exclusiveMinimum" else "maximum"] = value
            out[key] = True
        else:
            out[key] = _structural(value, defs)
    if "enum" in out and "type" not in out:
        out["type"] = "string"
    return out


def openapi_schema(model: type[Any]) -> dict[str, Any]:
    """A structural OpenAPI v3 schema for a pydantic model, by its wire (camelCase) names."""
    schema = model.model_json_schema(by_alias=True, mode="validation")
    result: dict[str, Any] = _structural(schema, schema.get("$defs", {}))
    return result


def crd() -> dict[str, Any]:
    """The CustomResourceDefinition object."""
    spec_schema = openapi_schema(PoolBudgetSpec)
    status_schema = openapi_schema(PoolBudgetStatus)
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{PLURAL}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": "Cluster",
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": KIND.lower(),
                "shortNames": list(SHORT_NAMES),
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": "A database's connection budget, shared by the Deployments that opt in.",
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec_schema,
                                "status": status_schema,
                            },
                        }
                    },
                }
            ],
        },
    }


def crd_yaml() -> str:
    """The CRD as the YAML committed in crds/ and the Helm chart."""
    header = "# Generated by `poolbudget crd` from operator/poolbudget/api/models.py. Do not edit.\n"
    return header + yaml.safe_dump(crd(), sort_keys=False, width=120)
