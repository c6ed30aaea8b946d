"""The PoolBudget reference (docs/reference.md), generated from the pydantic models.

`python -m poolbudget.api.reference > docs/reference.md` rewrites it; a test keeps the committed file current.
Field names, types, defaults, bounds and descriptions come from the models' JSON schema; the rules that span
several fields (model validators) and the annotations are listed here, beside the code they describe.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from poolbudget.api import annotations as names
from poolbudget.api import workloads
from poolbudget.api.models import GROUP, KIND, PLURAL, SHORT_NAMES, VERSION, PoolBudget

# Rules checked by model validators, which a JSON schema cannot show.
RULES: dict[str, list[str]] = {
    "PoolBudgetSpec": [
        "`profiles[].name` are unique.",
        "`defaults.profile` names a built-in profile or one of `profiles[]`.",
        "`rebalance.mode: demand` needs `metrics.prometheusUrl` or `metrics.pgStatActivity: true`.",
    ],
    "DatabaseSpec": ["At least one of `maxConnections` and `connectionSecretRef` is set."],
    "PoolDefaults": ["`minConnectionsPerProcess` <= `maxConnectionsPerProcess`."],
    "CustomProfile": ["`name` is not a built-in profile's name."],
    "EnvTemplate": [
        "`value` uses only `{poolSize}`, `{maxOverflow}`, `{total}`, `{poolTimeout}`, `{poolRecycle}`, "
        "with no format spec."
    ],
}

# Annotation: (its field in workloads.OptIn, what it means).
ANNOTATIONS: dict[str, tuple[str, str]] = {
    names.BUDGET: ("budget", "Opts the Deployment in: the name of the PoolBudget it draws on."),
    names.PROFILE: (
        "profile",
        "The env format its app reads (`sqlalchemy`, `langflow`, `letta`, `airflow`, `hikari`, "
        "`psycopg-pool`, or a custom profile of the budget). Default: the budget's `defaults.profile`.",
    ),
    names.CONTAINER: (
        "containers",
        "Containers whose processes draw on the budget and get the env. Default: the first container.",
    ),
    names.PROCESSES: (
        "processes",
        "Processes per pod (workers) that each build a pool. Default: the app's own env "
        "(`WEB_CONCURRENCY`, `LANGFLOW_WORKERS`, `LETTA_UVICORN_WORKERS`), else 1.",
    ),
    names.WEIGHT: (
        "weight",
        "Share weight against the budget's other Deployments. Default: `defaults.weight`.",
    ),
    names.MIN_CONNECTIONS: (
        "min_connections",
        "Fewest connections per pool of one process. Default: `defaults.minConnectionsPerProcess`.",
    ),
    names.MAX_CONNECTIONS: (
        "max_connections",
        "Most connections per pool of one process. Default: `defaults.maxConnectionsPerProcess`.",
    ),
    names.DEMAND_QUERY: (
        "demand_query",
        "PromQL for this Deployment's demand in `demand` mode, overriding the profile's and "
        "`metrics.query`. See [demand](demand.md).",
    ),
    names.DELIVERY: (
        "delivery",
        "`live` or `env`: how its pool settings are delivered, overriding `delivery.mode`. Live needs a "
        "profile the client helper serves. See [live delivery](live.md).",
    ),
}

# Descriptions of status fields, which the operator writes (the models carry none).
STATUS_FIELDS: dict[str, str] = {
    "PoolBudgetStatus.maxConnections": "The database's max_connections (read, or `spec.database.maxConnections`).",
    "PoolBudgetStatus.available": "Connections the budget may hand out: the budget formula's result.",
    "PoolBudgetStatus.allocated": "Connections the plan hands out at peak (pods incl. surge x processes x pool); "
    "with live delivery, its running pods' allotments plus `liveHeld`.",
    "PoolBudgetStatus.liveHeld": "Live delivery: the floor kept for pods still to come (HPA peak and surge), and "
    "what pods taking no allotment hold (terminating, or started from an env template).",
    "PoolBudgetStatus.deploymentCount": "Opted-in Deployments drawing on this budget.",
    "PoolBudgetStatus.ready": "The `Ready` condition's status, for `kubectl get pb`.",
    "PoolBudgetStatus.limitsSource": "Where the limits came from (database, spec, last known).",
    "PoolBudgetStatus.availableReason": "The budget formula with this database's numbers.",
    "PoolBudgetStatus.shortfall": "Connections missing for every Deployment's minimum (0 when feasible).",
    "PoolBudgetStatus.allocations": "One entry per opted-in Deployment.",
    "PoolBudgetStatus.conditions": "`Ready`, `Overcommitted`, `DatabaseReachable`, `MetricsAvailable`, "
    "`AllotmentsConfirmed` (live delivery), `Invalid`.",
    "PoolBudgetStatus.observedGeneration": "The spec generation this status describes.",
    "DeploymentAllocation.pods": "Pods counted: replicas (or HPA maxReplicas) plus RollingUpdate surge.",
    "DeploymentAllocation.processesPerPod": "Processes per pod that each build pools.",
    "DeploymentAllocation.poolsPerProcess": "Pools each process builds (2 for Airflow 3).",
    "DeploymentAllocation.poolSize": "Per-process pool size written to the app's env.",
    "DeploymentAllocation.maxOverflow": "Per-process overflow (0 for pools without one).",
    "DeploymentAllocation.connections": "pods x processes x pools x (poolSize + maxOverflow).",
    "DeploymentAllocation.observedConnections": "The footprint of the pods that exist now, old settings included.",
    "DeploymentAllocation.reason": "Why these numbers, in words.",
    "DeploymentAllocation.delivery": "`live` for live delivery (absent: env); its pods are the running ones.",
    "DeploymentAllocation.confirmedPods": "Live: pods whose every process confirmed its allotment.",
    "Condition.lastTransitionTime": "When `status` last changed (RFC 3339).",
    "Condition.observedGeneration": "The spec generation the condition was computed from.",
}

_BOUNDS = {
    "minimum": ">= {}",
    "exclusiveMinimum": "> {}",
    "maximum": "<= {}",
    "exclusiveMaximum": "< {}",
    "minLength": "length >= {}",
    "maxLength": "length <= {}",
    "minItems": "at least {} items",
    "maxItems": "at most {} items",
    "pattern": "matches `{}`",
}


def _ref_name(node: dict[str, Any]) -> str | None:
    ref = node.get("$ref")
    return str(ref).rsplit("/", 1)[-1] if ref else None


def _non_null(node: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """The node without its `| None` branch, and whether it had one."""
    options = node.get("anyOf")
    if options is None:
        return node, False
    typed = [o for o in options if o.get("type") != "null"]
    if len(typed) == 1:
        return {**{k: v for k, v in node.items() if k != "anyOf"}, **typed[0]}, len(typed) < len(options)
    return node, False


def _type(node: dict[str, Any]) -> str:
    node, _ = _non_null(node)
    if (name := _ref_name(node)) is not None:
        return f"[{name}](#{name.lower()})"
    if "anyOf" in node:
        return " or ".join(_type(o) for o in node["anyOf"])
    if "const" in node:
        return f"`{json.dumps(node['const'])}`"
    if "enum" in node:
        return "one of " + ", ".join(f"`{json.dumps(v)}`" for v in node["enum"])
    kind = node.get("type", "object")
    if kind == "array":
        return f"list of {_type(node.get('items', {}))}"
    if kind == "object" and isinstance(node.get("additionalProperties"), dict):
        return f"map of string to {_type(node['additionalProperties'])}"
    return str(kind)


def _bounds(node: dict[str, Any]) -> str:
    node, _ = _non_null(node)
    return ", ".join(template.format(node[key]) for key, template in _BOUNDS.items() if key in node)


def _default(node: dict[str, Any], required: bool) -> str:
    if required:
        return "required"
    if "default" not in node or node["default"] is None:
        return ""
    return f"`{json.dumps(node['default'])}`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _models_in_order(schema: dict[str, Any], roots: list[str]) -> Iterator[str]:
    """Model names in the order a reader meets them, depth first from the roots."""
    seen: set[str] = set()

    def refs(node: Any) -> Iterator[str]:
        if isinstance(node, dict):
            if (name := _ref_name(node)) is not None:
                yield name
            for value in node.values():
                yield from refs(value)
        elif isinstance(node, list):
            for item in node:
                yield from refs(item)

    def visit(name: str) -> Iterator[str]:
        if name in seen:
            return
        seen.add(name)
        yield name
        for child in refs(schema["$defs"][name].get("properties", {})):
            yield from visit(child)

    for root in roots:
        yield from visit(root)


def _section(name: str, model: dict[str, Any]) -> list[str]:
    lines = [f"### {name}", ""]
    if model.get("description"):
        lines += [" ".join(str(model["description"]).split()), ""]
    required = set(model.get("required", []))
    lines += ["| Field | Type | Default | Bounds | Description |", "|---|---|---|---|---|"]
    for field, node in model.get("properties", {}).items():
        lines.append(
            "| "
            + " | ".join(
                [
                    f"`{field}`",
                    _cell(_type(node)),
                    _cell(_default(node, field in required)),
                    _cell(_bounds(node)),
                    _cell(str(node.get("description") or STATUS_FIELDS.get(f"{name}.{field}", ""))),
                ]
            )
            + " |"
        )
    if name in RULES:
        lines += ["", "Rules:", ""] + [f"- {rule}" for rule in RULES[name]]
    return [*lines, ""]


def reference_markdown() -> str:
    """docs/reference.md."""
    schema = PoolBudget.model_json_schema(by_alias=True, mode="validation")
    lines = [
        "<!-- Generated by `python -m poolbudget.api.reference > docs/reference.md` from",
        "     operator/poolbudget/api/models.py. Do not edit: change the models and regenerate. -->",
        "# PoolBudget reference",
        "",
        f"`{GROUP}/{VERSION}`, kind `{KIND}`, plural `{PLURAL}`, short name `{', '.join(SHORT_NAMES)}`, "
        "cluster-scoped. The CRD in `crds/` is generated from the same models (`poolbudget crd`).",
        "Unknown fields are rejected: the operator sets the `Invalid` condition naming the field, and "
        "`poolbudget plan` exits 2.",
        "",
        "## Spec",
        "",
    ]
    for name in _models_in_order(schema, ["PoolBudgetSpec"]):
        lines += _section(name, schema["$defs"][name])
    lines += [
        "## Status",
        "",
        "Written by the operator; `kubectl get pb` shows `maxConnections`, `available`, `allocated`, "
        "`deploymentCount` and `ready` as columns.",
        "",
    ]
    spec_models = set(_models_in_order(schema, ["PoolBudgetSpec"]))
    for name in _models_in_order(schema, ["PoolBudgetStatus"]):
        if name not in spec_models:
            lines += _section(name, schema["$defs"][name])
    lines += [
        "## Deployment annotations",
        "",
        "A Deployment opts in with annotations; the operator touches no Deployment without "
        f"`{names.BUDGET}`.",
        "",
        "| Annotation | Value | Meaning |",
        "|---|---|---|",
    ]
    opt_in = workloads.OptIn.model_json_schema()["properties"]
    for key, (field, meaning) in ANNOTATIONS.items():
        node = opt_in[field]
        value = "comma-separated names" if node.get("type") == "array" else _type(node)
        bounds = _bounds(node)
        lines.append(f"| `{key}` | {_cell(value + (f' ({bounds})' if bounds else ''))} | {_cell(meaning)} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(reference_markdown(), end="")
