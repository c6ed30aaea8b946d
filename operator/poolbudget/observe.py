"""What is really running: connections held by existing pods, and whether a rollout has finished.

Pure: the operator indexes pods and Deployments (plain dicts from the API) and passes them in; nothing here
talks to the cluster. A pod holds the connections of the settings it started with: poolbudget stamps the pod
template with its per-pod allotment, so every pod carries it; pods started before a Deployment opted in carry
no stamp and are counted from their own env, as the app would read it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from poolbudget.delivery.envpatch import ROLLED_AT, STAMP_BUDGET, STAMP_CONNECTIONS
from poolbudget.planning.budget import Managed
from poolbudget.planning.plan import Allocation
from poolbudget.planning.sizing import processes_from_env

EnvByContainer = Mapping[str, Mapping[str, str]]


@dataclass(frozen=True, slots=True)
class PodFacts:
    """One pod of a Deployment, reduced to what its connections are.

    ``stamp`` is its ``poolbudget.io/connections-per-pod`` annotation (None when it has none); ``env`` holds the
    literal env of each container, kept only for unstamped pods (the stamp says it all otherwise).
    """

    namespace: str
    name: str
    deployment: str
    terminating: bool
    stamp: int | None = None
    budget: str | None = None
    env: Mapping[str, Mapping[str, str]] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, str]:
        return self.namespace, self.deployment


def literal_env(container: Mapping[str, Any]) -> dict[str, str]:
    """A container's env entries with literal values (valueFrom cannot be read without the cluster)."""
    env: dict[str, str] = {}
    for entry in container.get("env") or []:
        if isinstance(entry, dict) and "valueFrom" not in entry and isinstance(entry.get("name"), str):
            env[entry["name"]] = str(entry.get("value", ""))
    return env


def env_by_container(pod_spec: Mapping[str, Any]) -> dict[str, dict[str, str]]:
    """Literal env of every container of a pod spec, by container name."""
    return {
        str(c.get("name", "")): literal_env(c)
        for c in pod_spec.get("containers") or []
        if isinstance(c, dict)
    }


def _stamp(annotations: Mapping[str, str]) -> int | None:
    raw = annotations.get(STAMP_CONNECTIONS, "")
    return int(raw) if raw.isdigit() else None


def deployment_of(metadata: Mapping[str, Any]) -> str | None:
    """The Deployment that owns a pod: its ReplicaSet owner's name without the ``-<pod-template-hash>``."""
    template_hash = (metadata.get("labels") or {}).get("pod-template-hash")
    for owner in metadata.get("ownerReferences") or []:
        if owner.get("kind") == "ReplicaSet" and owner.get("controller", True):
            name = str(owner.get("name", ""))
            if template_hash and name.endswith("-" + template_hash):
                return name[: -len(template_hash) - 1]
            return None
    return None


def pod_facts(pod: Mapping[str, Any]) -> PodFacts | None:
    """The facts of a pod owned by a Deployment (through its ReplicaSet); None for any other pod."""
    metadata = pod.get("metadata") or {}
    deployment = deployment_of(metadata)
    if deployment is None:
        return None
    annotations = metadata.get("annotations") or {}
    stamp = _stamp(annotations)
    return PodFacts(
        namespace=str(metadata.get("namespace", "")),
        name=str(metadata.get("name", "")),
        deployment=deployment,
        terminating=bool(metadata.get("deletionTimestamp")),
        stamp=stamp,
        budget=annotations.get(STAMP_BUDGET),
        env={} if stamp is not None else env_by_container(pod.get("spec") or {}),
    )


def per_pod_from_env(managed: Managed, env: EnvByContainer, fallback: int | None = None) -> int:
    """Connections one pod opens with this env: over the managed containers, processes x pools x per process.

    A container whose pool size cannot be known from env (``profile.read`` says None) counts at the
    Deployment's max per process, conservatively, unless ``fallback`` (a per-pod total) is given.
    """
    total = 0
    pools = managed.profile.pools_per_process
    for container in managed.containers:
        container_env = env.get(container.name, {})
        settings = managed.profile.read(container_env)
        if settings is None:
            if fallback is not None:
                return fallback
            per_process = managed.workload.max_per_process
        else:
            per_process = settings.total
        processes = managed.opt_in.processes
        if processes is None:
            processes = (processes_from_env(container_env) or (1, ""))[0]
        total += processes * pools * per_process
    return total


def template_per_pod(managed: Managed, deployment: Mapping[str, Any]) -> int:
    """Connections a pod started from the Deployment's current template opens."""
    template = (deployment.get("spec") or {}).get("template") or {}
    stamp = _stamp((template.get("metadata") or {}).get("annotations") or {})
    return per_pod_from_env(managed, env_by_container(template.get("spec") or {}), fallback=stamp)


def target_per_pod(allocation: Allocation) -> int:
    """Connections one pod opens at the planned settings."""
    w = allocation.workload
    return w.processes_per_pod * w.pools_per_process * allocation.per_process


def pod_connections(managed: Managed, pod: PodFacts) -> int:
    """Connections a pod holds: its stamp, or what its own env says."""
    if pod.stamp is not None:
        return pod.stamp
    return per_pod_from_env(managed, pod.env)


def observed_footprint(managed: Managed, pods: Iterable[PodFacts]) -> int:
    """Connections held by every existing pod of the Deployment, terminating ones included."""
    return sum(pod_connections(managed, pod) for pod in pods)


def rollout_settled(deployment: Mapping[str, Any], pods: Iterable[PodFacts], managed: Managed) -> bool:
    """Whether the Deployment's rollout is done: the controller has seen the current template, every replica
    runs it, and no pod holds more than the template allows (no old pods left, none terminating)."""
    metadata = deployment.get("metadata") or {}
    status = deployment.get("status") or {}
    replicas = (deployment.get("spec") or {}).get("replicas", 1)
    if int(status.get("observedGeneration", 0)) < int(metadata.get("generation", 1)):
        return False
    if replicas and int(status.get("updatedReplicas", 0)) < replicas:
        return False
    if int(status.get("replicas", 0)) > replicas:
        return False
    current = template_per_pod(managed, deployment)
    return all(not pod.terminating and pod_connections(managed, pod) <= current for pod in pods)


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


def seconds_since_roll(deployment: Mapping[str, Any], now: datetime) -> float | None:
    """Seconds since poolbudget last changed the Deployment's pod template; None if it never did."""
    annotations = (deployment.get("metadata") or {}).get("annotations") or {}
    rolled = parse_time(annotations.get(ROLLED_AT, ""))
    return None if rolled is None else max(0.0, (now - rolled).total_seconds())
