"""Reading the plain JSON of Kubernetes objects: the one home of ``obj.get("metadata") or {}`` and its kind.

Every other layer asks these accessors (or the facts built from them) instead of walking raw dicts itself. A field
that is missing, or not the shape the API gives it, reads as empty.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from poolbudget.api import workloads
from poolbudget.api.annotations import MANAGED_BY
from poolbudget.api.objects import Key, Obj


def mapping(value: Any) -> Mapping[str, Any]:
    """``value`` if it is a mapping, else an empty one (a missing or malformed field)."""
    return value if isinstance(value, Mapping) else {}


def metadata_of(obj: Obj) -> Mapping[str, Any]:
    return mapping(obj.get("metadata"))


def spec_of(obj: Obj) -> Mapping[str, Any]:
    return mapping(obj.get("spec"))


def status_of(obj: Obj) -> Mapping[str, Any]:
    return mapping(obj.get("status"))


def annotations_of(obj: Obj) -> Mapping[str, str]:
    """The object's annotations (of its ``metadata``)."""
    return mapping(metadata_of(obj).get("annotations"))


def key_of(obj: Obj) -> Key:
    """An object's (namespace, name)."""
    metadata = metadata_of(obj)
    return str(metadata.get("namespace", "")), str(metadata.get("name", ""))


def version_of(obj: Obj) -> str:
    """An object's resourceVersion ("" when it has none)."""
    return str(metadata_of(obj).get("resourceVersion", ""))


def uid_of(obj: Obj) -> str | None:
    uid = metadata_of(obj).get("uid")
    return None if uid is None else str(uid)


def template_of(deployment: Obj) -> Mapping[str, Any]:
    """A Deployment's pod template."""
    return mapping(spec_of(deployment).get("template"))


def containers_of(pod_spec: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """The containers of a pod spec, by name."""
    containers = pod_spec.get("containers") or []
    return {str(c.get("name", "")): c for c in containers if isinstance(c, dict)}


def template_containers(deployment: Obj) -> dict[str, Mapping[str, Any]]:
    """The containers of a Deployment's pod template, by name."""
    return containers_of(spec_of(template_of(deployment)))


def env_entry(container: Mapping[str, Any], name: str) -> tuple[int, dict[str, Any]] | None:
    """Where the env entry called ``name`` stands in a container's env, and the entry; None when absent."""
    for index, entry in enumerate(container.get("env") or []):
        if isinstance(entry, dict) and entry.get("name") == name:
            return index, entry
    return None


def literal_env(container: Mapping[str, Any]) -> dict[str, str]:
    """A container's env entries with literal values (valueFrom cannot be read without the cluster)."""
    return workloads.literal_env(
        (entry["name"], str(entry.get("value", "")), "valueFrom" in entry)
        for entry in container.get("env") or []
        if isinstance(entry, dict) and isinstance(entry.get("name"), str)
    )


def env_by_container(pod_spec: Mapping[str, Any]) -> dict[str, dict[str, str]]:
    """Literal env of every container of a pod spec, by container name."""
    return {name: literal_env(c) for name, c in containers_of(pod_spec).items()}


def stamp_of(annotations: Mapping[str, str], name: str) -> int | None:
    """A whole-number annotation poolbudget stamped (e.g. connections per pod); None when absent or not one."""
    raw = str(annotations.get(name, ""))
    return int(raw) if raw.isdigit() else None


def parse_time(text: str) -> datetime | None:
    """An RFC 3339 timestamp as Kubernetes writes them; None when it does not parse."""
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def format_time(moment: datetime) -> str:
    """RFC 3339 with second precision, in UTC, as Kubernetes writes timestamps."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def managed_by(deployment: Obj) -> str | None:
    """The budget whose settings the Deployment carries, or None."""
    return annotations_of(deployment).get(MANAGED_BY) or None


def budgets_of(deployment: Obj) -> frozenset[str]:
    """The budgets a Deployment concerns: the one it opted into, and the one whose settings it still carries."""
    return frozenset(
        n for n in (workloads.budget_of(annotations_of(deployment)), managed_by(deployment)) if n
    )


def hpa_target(hpa: Obj) -> Key | None:
    """The Deployment an HorizontalPodAutoscaler scales, as (namespace, name); None when it scales something else."""
    ref = mapping(spec_of(hpa).get("scaleTargetRef"))
    if ref.get("kind") != "Deployment" or not ref.get("name"):
        return None
    return str(metadata_of(hpa).get("namespace") or ""), str(ref["name"])
