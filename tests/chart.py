"""Helpers for the chart tests: rendering to objects, finding them, validating them offline."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import yaml

# The Kubernetes minor versions the chart is validated against (kubernetes-validate ships 1.25 to 1.37).
KUBERNETES_VERSIONS = ["1.29", "1.30", "1.31", "1.32", "1.33", "1.34", "1.35"]

# Kinds whose schema kubernetes-validate does not have (custom resources); checked by their own tests.
CUSTOM_KINDS = {"ServiceMonitor", "PrometheusRule", "ClusterKopfPeering"}


Grant = tuple[str, str, str]  # (API group, resource, verb); "" is the core group


def granted(role: dict[str, Any]) -> set[Grant]:
    """Every (group, resource, verb) a Role's or ClusterRole's rules grant."""
    return {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def objects(rendered: str) -> list[dict[str, Any]]:
    """The objects in `helm template` output, empty documents dropped."""
    return [doc for doc in yaml.safe_load_all(rendered) if doc]


def find(rendered: list[dict[str, Any]], kind: str, name_suffix: str = "") -> dict[str, Any]:
    """The one object of this kind (whose name ends with ``name_suffix``)."""
    found = [o for o in rendered if o["kind"] == kind and o["metadata"]["name"].endswith(name_suffix)]
    assert len(found) == 1, (
        f"expected one {kind} *{name_suffix}, found {[o['metadata']['name'] for o in found]}"
    )
    return found[0]


def validate_strict(obj: dict[str, Any], version: str) -> None:
    """Validate one built-in object against Kubernetes' own schema, unknown fields being errors."""
    try:
        kubernetes_validate.validate(obj, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        raise AssertionError(
            f"{obj['kind']} {obj['metadata']['name']} is invalid for Kubernetes {version}: {exc.message} "
            f"at {'/'.join(str(p) for p in exc.path)}"
        ) from None


def exported_series() -> set[str]:
    """Every series name the operator's metrics produce (counters as `_total`, histograms' parts)."""
    from prometheus_client import CollectorRegistry

    from poolbudget.runtime.metrics import OperatorMetrics

    names: set[str] = set()
    for family in OperatorMetrics(CollectorRegistry()).registry.collect():
        if family.type == "counter":
            names |= {f"{family.name}_total", f"{family.name}_created"}
        elif family.type == "histogram":
            names |= {family.name + suffix for suffix in ("_bucket", "_sum", "_count", "_created")}
        else:
            names.add(family.name)
    return names


def container_command(deployment: dict[str, Any], entrypoint: list[str]) -> list[str]:
    """What the kubelet runs for the Deployment's first container: the image's ENTRYPOINT plus `args`."""
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert "command" not in container, "the chart keeps the image's ENTRYPOINT"
    return [*entrypoint, *container.get("args", [])]


def container_env(deployment: dict[str, Any]) -> dict[str, str]:
    """The first container's env as the kubelet resolves it (the downward API's metadata.namespace only)."""
    namespace = deployment["metadata"]["namespace"]
    env: dict[str, str] = {}
    for entry in deployment["spec"]["template"]["spec"]["containers"][0].get("env", []):
        if "value" in entry:
            env[entry["name"]] = str(entry["value"])
        else:
            assert entry["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}, entry
            env[entry["name"]] = namespace
    return env
