"""Defaulting of built-in objects, as a real API server does it, for the Kubernetes API test emulator.

Operators read Deployments back after kubectl applied them; on a real cluster those carry defaults
(replicas, strategy, pod-spec fields). Code that compares or restores Deployments must cope with them,
so the emulator fills in the usual ones instead of storing the manifest verbatim.
"""

from __future__ import annotations

from typing import Any


def default_pod_spec(spec: dict[str, Any]) -> None:
    """Fill the pod spec defaults that show up in ``kubectl get deploy -o yaml``."""
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("securityContext", {})
    spec.setdefault("schedulerName", "default-scheduler")
    for container in [*(spec.get("containers") or []), *(spec.get("initContainers") or [])]:
        if not isinstance(container, dict):
            continue
        image = str(container.get("image", ""))
        tag = image.rsplit("/", 1)[-1]
        latest = "@" not in image and (":" not in tag or tag.endswith(":latest"))
        container.setdefault("imagePullPolicy", "Always" if latest else "IfNotPresent")
        container.setdefault("terminationMessagePath", "/dev/termination-log")
        container.setdefault("terminationMessagePolicy", "File")
        container.setdefault("resources", {})
        for port in container.get("ports") or []:
            if isinstance(port, dict):
                port.setdefault("protocol", "TCP")


def default_deployment(obj: dict[str, Any]) -> None:
    """Defaults of apps/v1 Deployments: replicas, strategy (25% surge/unavailable), history, deadline."""
    spec = obj.setdefault("spec", {})
    spec.setdefault("replicas", 1)
    spec.setdefault("revisionHistoryLimit", 10)
    spec.setdefault("progressDeadlineSeconds", 600)
    strategy = spec.setdefault("strategy", {})
    strategy.setdefault("type", "RollingUpdate")
    if strategy["type"] == "RollingUpdate":
        rolling = strategy.setdefault("rollingUpdate", {})
        rolling.setdefault("maxSurge", "25%")
        rolling.setdefault("maxUnavailable", "25%")
    template = spec.setdefault("template", {})
    default_pod_spec(template.setdefault("spec", {}))


def default_object(group: str, plural: str, obj: dict[str, Any]) -> None:
    """Apply the defaults of the built-in types the emulator knows; other types are left as sent."""
    if (group, plural) in (("apps", "deployments"), ("apps", "replicasets")):
        if plural == "deployments":
            default_deployment(obj)
        else:
            default_pod_spec(obj.setdefault("spec", {}).setdefault("template", {}).setdefault("spec", {}))
    elif (group, plural) == ("", "pods"):
        default_pod_spec(obj.setdefault("spec", {}))
