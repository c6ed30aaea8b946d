"""What is really running: connections held by existing pods, and whether a rollout has finished.

Pure: the operator indexes pods and Deployments (plain dicts from the API) and passes them in; nothing here
talks to the cluster. A pod holds the connections of the settings it started with: poolbudget stamps the pod
template with its per-pod allotment, so every pod carries it; pods started before a Deployment opted in carry
no stamp and are counted from their own env, as the app would read it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime

from poolbudget.api.allotment import parse_allotment
from poolbudget.api.annotations import ROLLED_AT, STAMP_CONNECTIONS
from poolbudget.api.objects import Obj
from poolbudget.observe.objects import (
    annotations_of,
    env_by_container,
    metadata_of,
    parse_time,
    spec_of,
    stamp_of,
    status_of,
    template_of,
)
from poolbudget.observe.pods import PodFacts
from poolbudget.planning.budget import Managed
from poolbudget.planning.plan import Allocation
from poolbudget.planning.sizing import processes_of

EnvByContainer = Mapping[str, Mapping[str, str]]


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
        processes, _ = processes_of(managed.opt_in.processes, container_env)
        total += processes * pools * per_process
    return total


def template_per_pod(managed: Managed, deployment: Obj) -> int:
    """Connections a pod started from the Deployment's current template opens."""
    template = template_of(deployment)
    stamp = stamp_of(annotations_of(template), STAMP_CONNECTIONS)
    return per_pod_from_env(managed, env_by_container(spec_of(template)), fallback=stamp)


def target_per_pod(allocation: Allocation) -> int:
    """Connections one pod opens at the planned settings."""
    w = allocation.workload
    return w.processes_per_pod * w.pools_per_process * allocation.per_process


def pod_connections(managed: Managed, pod: PodFacts, allotment: bool = True) -> int:
    """Connections a pod holds: its stamp, or what its own env says; for a live pod (with ``allotment``), at
    least the ceiling of the allotment written on it."""
    held = pod.stamp if pod.stamp is not None else per_pod_from_env(managed, pod.env)
    if allotment and pod.live and pod.allotment is not None:
        read = parse_allotment(pod.allotment).allotment
        if read is not None:
            w = managed.workload
            held = max(held, w.processes_per_pod * w.pools_per_process * read.ceiling)
    return held


def observed_footprint(managed: Managed, pods: Iterable[PodFacts]) -> int:
    """Connections held by every existing pod of the Deployment, terminating ones included."""
    return sum(pod_connections(managed, pod) for pod in pods)


def rollout_settled(deployment: Obj, pods: Iterable[PodFacts], managed: Managed) -> bool:
    """Whether the Deployment's rollout is done: the controller has seen the current template, every replica
    runs it, and no pod holds more than the template allows (no old pods left, none terminating)."""
    metadata, status = metadata_of(deployment), status_of(deployment)
    replicas = spec_of(deployment).get("replicas", 1)
    if int(status.get("observedGeneration", 0)) < int(metadata.get("generation", 1)):
        return False
    if replicas and int(status.get("updatedReplicas", 0)) < replicas:
        return False
    if int(status.get("replicas", 0)) > replicas:
        return False
    current = template_per_pod(managed, deployment)
    return all(not pod.terminating and pod_connections(managed, pod) <= current for pod in pods)


def seconds_since_roll(deployment: Obj, now: datetime) -> float | None:
    """Seconds since poolbudget last changed the Deployment's pod template; None if it never did."""
    rolled = parse_time(annotations_of(deployment).get(ROLLED_AT, ""))
    return None if rolled is None else max(0.0, (now - rolled).total_seconds())
