"""Resource types served by the Kubernetes API test emulator: the built-ins and their table columns."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

ALL_VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")
SUBRESOURCE_VERBS = ("get", "patch", "update")


@dataclass(frozen=True)
class Column:
    """One column of a server-side printed table (``kubectl get``), like a CRD's printer column."""

    name: str
    type: str = "string"
    json_path: str | None = None
    # Built-ins compute some cells (e.g. a Deployment's READY "2/3"); CRD columns use json_path only.
    render: Callable[[Mapping[str, Any]], Any] | None = None
    description: str = ""
    priority: int = 0
    format: str = ""


AGE_COLUMN = Column(name="Age", type="date", json_path=".metadata.creationTimestamp")


@dataclass(frozen=True)
class ResourceType:
    """One served group/version/plural; storage is shared by all versions of a group/plural."""

    group: str
    version: str
    plural: str
    singular: str
    kind: str
    namespaced: bool
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    status_subresource: bool = False
    scale_subresource: bool = False  # Only Deployments here: an autoscaling/v1 Scale.
    tracks_generation: bool = False  # metadata.generation exists and counts spec changes.
    columns: tuple[Column, ...] = (AGE_COLUMN,)
    schema: Mapping[str, Any] | None = field(default=None, compare=False)  # CRD openAPIV3Schema.
    crd_name: str | None = None

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def storage_key(self) -> tuple[str, str]:
        return (self.group, self.plural)

    @property
    def qualified(self) -> str:
        """How Kubernetes names the resource in error messages: ``deployments.apps``, ``pods``."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    def discovery_entries(self) -> list[dict[str, Any]]:
        """The APIResourceList entries: the resource itself plus its subresources."""
        entries: list[dict[str, Any]] = [
            {
                "name": self.plural,
                "singularName": self.singular,
                "namespaced": self.namespaced,
                "kind": self.kind,
                "verbs": list(ALL_VERBS),
                **({"shortNames": list(self.short_names)} if self.short_names else {}),
                **({"categories": list(self.categories)} if self.categories else {}),
            }
        ]
        if self.status_subresource:
            entries.append(
                {
                    "name": f"{self.plural}/status",
                    "singularName": "",
                    "namespaced": self.namespaced,
                    "kind": self.kind,
                    "verbs": list(SUBRESOURCE_VERBS),
                }
            )
        if self.scale_subresource:
            # kubectl scale finds the Scale's group/version here; without it, it refuses to scale.
            entries.append(
                {
                    "name": f"{self.plural}/scale",
                    "singularName": "",
                    "namespaced": self.namespaced,
                    "group": "autoscaling",
                    "version": "v1",
                    "kind": "Scale",
                    "verbs": list(SUBRESOURCE_VERBS),
                }
            )
        return entries


def _deployment_ready(obj: Mapping[str, Any]) -> str:
    status = obj.get("status") or {}
    return f"{status.get('readyReplicas', 0)}/{(obj.get('spec') or {}).get('replicas', 1)}"


def _pod_ready(obj: Mapping[str, Any]) -> str:
    statuses = (obj.get("status") or {}).get("containerStatuses") or []
    total = len((obj.get("spec") or {}).get("containers") or [])
    return f"{sum(1 for status in statuses if status.get('ready'))}/{total}"


def _pod_status(obj: Mapping[str, Any]) -> str:
    if (obj.get("metadata") or {}).get("deletionTimestamp"):
        return "Terminating"
    return str((obj.get("status") or {}).get("phase", "Pending"))


def _builtin(
    group: str,
    version: str,
    plural: str,
    kind: str,
    *,
    namespaced: bool = True,
    short: tuple[str, ...] = (),
    status: bool = False,
    generation: bool = False,
    columns: tuple[Column, ...] = (AGE_COLUMN,),
    categories: tuple[str, ...] = (),
) -> ResourceType:
    return ResourceType(
        group=group,
        version=version,
        plural=plural,
        singular=kind.lower(),
        kind=kind,
        namespaced=namespaced,
        short_names=short,
        categories=categories,
        status_subresource=status,
        scale_subresource=(plural == "deployments"),
        tracks_generation=generation,
        columns=columns,
    )


BUILTIN_TYPES: tuple[ResourceType, ...] = (
    _builtin(
        "",
        "v1",
        "namespaces",
        "Namespace",
        namespaced=False,
        short=("ns",),
        status=True,
        columns=(Column("Status", json_path=".status.phase"), AGE_COLUMN),
    ),
    _builtin(
        "",
        "v1",
        "pods",
        "Pod",
        short=("po",),
        status=True,
        categories=("all",),
        columns=(
            Column("Ready", render=_pod_ready),
            Column("Status", render=_pod_status),
            Column("Restarts", type="integer", render=lambda obj: 0),
            AGE_COLUMN,
        ),
    ),
    _builtin("", "v1", "events", "Event", short=("ev",)),
    _builtin("", "v1", "secrets", "Secret"),
    _builtin("", "v1", "configmaps", "ConfigMap", short=("cm",)),
    _builtin("", "v1", "services", "Service", short=("svc",), status=True, categories=("all",)),
    _builtin("", "v1", "serviceaccounts", "ServiceAccount", short=("sa",)),
    _builtin(
        "apps",
        "v1",
        "deployments",
        "Deployment",
        short=("deploy",),
        status=True,
        generation=True,
        categories=("all",),
        columns=(
            Column("Ready", render=_deployment_ready),
            Column(
                "Up-to-date",
                type="integer",
                render=lambda obj: (obj.get("status") or {}).get("updatedReplicas", 0),
            ),
            Column(
                "Available",
                type="integer",
                render=lambda obj: (obj.get("status") or {}).get("availableReplicas", 0),
            ),
            AGE_COLUMN,
        ),
    ),
    _builtin(
        "apps",
        "v1",
        "replicasets",
        "ReplicaSet",
        short=("rs",),
        status=True,
        generation=True,
        categories=("all",),
    ),
    _builtin(
        "autoscaling",
        "v2",
        "horizontalpodautoscalers",
        "HorizontalPodAutoscaler",
        short=("hpa",),
        status=True,
        generation=True,
        categories=("all",),
    ),
    _builtin("coordination.k8s.io", "v1", "leases", "Lease"),
    _builtin("events.k8s.io", "v1", "events", "Event", short=("ev",)),
    _builtin("rbac.authorization.k8s.io", "v1", "roles", "Role"),
    _builtin("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding"),
    _builtin("rbac.authorization.k8s.io", "v1", "clusterroles", "ClusterRole", namespaced=False),
    _builtin(
        "rbac.authorization.k8s.io", "v1", "clusterrolebindings", "ClusterRoleBinding", namespaced=False
    ),
    _builtin(
        "apiextensions.k8s.io",
        "v1",
        "customresourcedefinitions",
        "CustomResourceDefinition",
        namespaced=False,
        short=("crd", "crds"),
        status=True,
        generation=True,
    ),
)

CRD_KEY = ("apiextensions.k8s.io", "customresourcedefinitions")
NAMESPACES_KEY = ("", "namespaces")
PODS_KEY = ("", "pods")
DEPLOYMENTS_KEY = ("apps", "deployments")
REPLICASETS_KEY = ("apps", "replicasets")
