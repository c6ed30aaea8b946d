"""A pod simulator for the Kubernetes API test emulator: deployment controller, ReplicaSets and kubelets in one.

Off by default. When on, each Deployment gets a ReplicaSet per pod template and pods kept in step with
``spec.replicas``; a template change rolls the pods honouring ``maxSurge``/``maxUnavailable`` (or
Recreate), pods become ready after ``start_delay`` and deleted pods stay Terminating (with
``metadata.deletionTimestamp``) for ``termination_delay``: on a real cluster those pods still hold their
database connections, so the operator must count them. The Deployment's status follows the pods.

Timing is driven by ``tick()`` against a clock: call it yourself with a :class:`ManualClock` for
deterministic steps, or ``start(period)`` a background loop on the real monotonic clock.
Simplifications: no nodes, scheduling, probes, minReadySeconds, paused rollouts or proportional scaling.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import itertools
import json
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .store import ApiError, Obj, Store, WriteContext, WriteRecord, iso_timestamp

logger = logging.getLogger(__name__)

_HASH_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # The alphabet Kubernetes uses for pod-template-hash.
REVISION_ANNOTATION = "deployment.kubernetes.io/revision"


class ManualClock:
    """A clock that only moves when told to, for deterministic pod-simulator tests."""

    def __init__(self, start: float = 0.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class _PodTimes:
    ready_at: float
    terminate_at: float | None = None


def template_hash(template: Mapping[str, Any]) -> str:
    """A stable 10-character hash of a pod template, like the ``pod-template-hash`` label."""
    digest = hashlib.sha256(json.dumps(template, sort_keys=True).encode()).digest()
    return "".join(_HASH_ALPHABET[byte % len(_HASH_ALPHABET)] for byte in digest[:10])


def resolve_int_or_percent(value: Any, total: int, *, round_up: bool) -> int:
    """``maxSurge``/``maxUnavailable``: an int, or a percent of the replicas (surge rounds up)."""
    if isinstance(value, str) and value.endswith("%"):
        scaled = int(value[:-1]) * total / 100
        return math.ceil(scaled) if round_up else math.floor(scaled)
    return int(value)


def _is_ready(pod: Mapping[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def _is_terminating(obj: Mapping[str, Any]) -> bool:
    return bool(obj["metadata"].get("deletionTimestamp"))


def _owned_by(obj: Mapping[str, Any], uid: str) -> bool:
    return any(ref.get("uid") == uid for ref in obj["metadata"].get("ownerReferences") or [])


class PodSimulator:
    """Keeps pods, ReplicaSets and Deployment status in step with Deployments (see the module docstring)."""

    def __init__(
        self,
        store: Store,
        *,
        start_delay: float = 0.0,
        termination_delay: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.start_delay = start_delay
        self.termination_delay = termination_delay
        self.clock = clock
        self.context = WriteContext(actor="pod-simulator")
        self._times: dict[str, _PodTimes] = {}
        self._indexes: dict[str, int] = {}
        self._addresses = itertools.count(1)
        self._tick_lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.enabled = False
        self._types = {
            plural: store.find_type(group, "v1", plural)
            for group, plural in (("", "pods"), ("apps", "replicasets"), ("apps", "deployments"))
        }

    # ------------------------------------------------------------------ lifecycle

    def enable(self) -> PodSimulator:
        """Take over pod deletion (Terminating pods wait for the simulator); ``tick()`` does the rest."""
        if not self.enabled:
            self.enabled = True
            self.store.graceful_pod_deletion = True
            self.store.listeners.append(self._on_write)
        return self

    def disable(self) -> None:
        self.stop()
        if self.enabled:
            self.enabled = False
            self.store.graceful_pod_deletion = False
            self.store.listeners.remove(self._on_write)

    def start(self, period: float = 0.05) -> PodSimulator:
        """Tick in a background thread every ``period`` seconds, and soon after any outside write."""
        self.enable()
        if self._thread is None:
            self._stopping.clear()
            self._thread = threading.Thread(
                target=self._loop, args=(period,), name="pod-simulator", daemon=True
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._stopping.set()
            self._wake.set()
            self._thread.join(timeout=10)
            self._thread = None

    def _loop(self, period: float) -> None:
        while not self._stopping.is_set():
            try:
                self.tick()
            except Exception:  # Keep simulating; a failure shows in the log and in the test's outcome.
                logger.exception("pod simulator tick failed")
            self._wake.wait(period)
            self._wake.clear()

    def _on_write(self, record: WriteRecord) -> None:
        if record.actor != self.context.actor and record.plural in ("deployments", "pods", "replicasets"):
            self._wake.set()

    def settle(self, max_ticks: int = 100) -> int:
        """Tick until a tick changes nothing (pending delays need the clock to move); returns ticks run."""
        for count in range(1, max_ticks + 1):
            if not self.tick():
                return count
        raise RuntimeError(f"the pod simulator did not settle within {max_ticks} ticks")

    # ------------------------------------------------------------------ one step

    def tick(self) -> int:
        """One step of every controller: roll Deployments, then start and stop pods. Returns writes made."""
        with self._tick_lock:
            now = self.clock()
            changes = 0
            deployments, _ = self.store.list_objects(self._type("deployments"), None)
            for deployment in deployments:
                try:
                    changes += self._reconcile(deployment, now)
                except ApiError as error:  # Deleted or its namespace terminating meanwhile: next tick.
                    logger.debug(
                        "pod simulator skipped %s: %s", deployment["metadata"]["name"], error.message
                    )
            changes += self._run_kubelet(now)
            for deployment in deployments:
                with contextlib.suppress(ApiError):
                    changes += self._write_status(
                        deployment["metadata"]["namespace"], deployment["metadata"]["name"]
                    )
            return changes

    def _type(self, plural: str) -> Any:
        rtype = self._types[plural]
        assert rtype is not None
        return rtype

    def _run_kubelet(self, now: float) -> int:
        changes = 0
        pods, _ = self.store.list_objects(self._type("pods"), None)
        for pod in pods:
            uid = pod["metadata"]["uid"]
            times = self._times.setdefault(uid, _PodTimes(ready_at=now + self.start_delay))
            namespace, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
            try:
                if _is_terminating(pod):
                    if times.terminate_at is None:
                        times.terminate_at = now + self.termination_delay
                        if _is_ready(pod):
                            self._set_pod_status(namespace, name, ready=False, now=now)
                            changes += 1
                    if now >= times.terminate_at:
                        self.store.finish_pod_deletion(namespace, name, self.context)
                        self._times.pop(uid, None)
                        changes += 1
                elif not _is_ready(pod) and now >= times.ready_at:
                    self._set_pod_status(namespace, name, ready=True, now=now)
                    changes += 1
            except ApiError:
                self._times.pop(uid, None)  # Gone meanwhile.
        return changes

    def _next_address(self) -> str:
        number = next(self._addresses)
        return f"10.{number // 65536 % 256}.{number // 256 % 256}.{number % 256}"

    def _set_pod_status(self, namespace: str, name: str, *, ready: bool, now: float) -> None:
        flag = "True" if ready else "False"
        started = iso_timestamp(self.store.clock())

        def mutate(pod: Obj) -> Obj:
            containers = (pod.get("spec") or {}).get("containers") or []
            status = pod.get("status") or {}
            status.update(
                {
                    "phase": "Running",
                    "conditions": [
                        {"type": kind, "status": "True" if kind == "PodScheduled" else flag}
                        for kind in ("PodScheduled", "Initialized", "ContainersReady", "Ready")
                    ],
                    "containerStatuses": [
                        {
                            "name": c.get("name"),
                            "image": c.get("image"),
                            "ready": ready,
                            "started": True,
                            "restartCount": 0,
                            "state": {"running": {"startedAt": status.get("startTime", started)}},
                        }
                        for c in containers
                    ],
                    "podIP": status.get("podIP") or self._next_address(),
                    "startTime": status.get("startTime", started),
                }
            )
            pod["status"] = status
            return pod

        self.store.update(self._type("pods"), namespace, name, mutate, self.context, subresource="status")

    # ------------------------------------------------------------------ the deployment controller

    def _owned(self, plural: str, namespace: str, owner_uid: str) -> list[Obj]:
        items, _ = self.store.list_objects(self._type(plural), namespace)
        return [item for item in items if _owned_by(item, owner_uid)]

    def _pods_of(self, namespace: str, deployment_uid: str) -> list[Obj]:
        sets = {rs["metadata"]["uid"] for rs in self._owned("replicasets", namespace, deployment_uid)}
        pods, _ = self.store.list_objects(self._type("pods"), namespace)
        return [pod for pod in pods if any(_owned_by(pod, uid) for uid in sets)]

    def _ensure_replicaset(self, deployment: Obj, pod_hash: str) -> Obj:
        namespace, name = deployment["metadata"]["namespace"], deployment["metadata"]["name"]
        sets = self._owned("replicasets", namespace, deployment["metadata"]["uid"])
        for replica_set in sets:
            if replica_set["metadata"].get("labels", {}).get("pod-template-hash") == pod_hash:
                return replica_set
        revision = 1 + max(
            (int(rs["metadata"].get("annotations", {}).get(REVISION_ANNOTATION, 0)) for rs in sets), default=0
        )
        spec = deployment["spec"]
        template = copy.deepcopy(spec["template"])
        template.setdefault("metadata", {}).setdefault("labels", {})["pod-template-hash"] = pod_hash
        selector = copy.deepcopy(spec["selector"])
        selector.setdefault("matchLabels", {})["pod-template-hash"] = pod_hash
        replica_set = self.store.create(
            self._type("replicasets"),
            namespace,
            {
                "metadata": {
                    "name": f"{name}-{pod_hash}",
                    "labels": dict(template["metadata"]["labels"]),
                    "annotations": {REVISION_ANNOTATION: str(revision)},
                    "ownerReferences": [self._owner_reference("apps/v1", "Deployment", deployment)],
                },
                "spec": {"replicas": 0, "selector": selector, "template": template},
            },
            self.context,
        )
        self.store.update(
            self._type("deployments"),
            namespace,
            name,
            lambda d: _annotate_revision(d, revision),
            self.context,
        )
        return replica_set

    @staticmethod
    def _owner_reference(api_version: str, kind: str, owner: Mapping[str, Any]) -> Obj:
        return {
            "apiVersion": api_version,
            "kind": kind,
            "name": owner["metadata"]["name"],
            "uid": owner["metadata"]["uid"],
            "controller": True,
            "blockOwnerDeletion": True,
        }

    def _create_pod(self, deployment: Obj, replica_set: Obj, pod_hash: str, now: float) -> None:
        namespace = deployment["metadata"]["namespace"]
        template = replica_set["spec"]["template"]
        prefix = replica_set["metadata"]["name"]
        index = self._indexes.get(prefix, 0)
        existing = {
            pod["metadata"]["name"] for pod in self.store.list_objects(self._type("pods"), namespace)[0]
        }
        while f"{prefix}-{index}" in existing:
            index += 1
        self._indexes[prefix] = index + 1
        metadata: Obj = {
            "name": f"{prefix}-{index}",
            "labels": dict(template["metadata"]["labels"]),
            "ownerReferences": [self._owner_reference("apps/v1", "ReplicaSet", replica_set)],
        }
        if template["metadata"].get("annotations"):
            metadata["annotations"] = dict(template["metadata"]["annotations"])
        spec = copy.deepcopy(template.get("spec") or {})
        spec.setdefault("nodeName", "emulated-node")
        pod = self.store.create(
            self._type("pods"), namespace, {"metadata": metadata, "spec": spec}, self.context
        )
        self._times[pod["metadata"]["uid"]] = _PodTimes(ready_at=now + self.start_delay)

    def _delete_pods(self, pods: list[Obj], count: int) -> int:
        # Like the ReplicaSet controller: unready pods go first, then the newest.
        unready = sorted((p for p in pods if not _is_ready(p)), key=lambda p: p["metadata"]["name"])
        ready = sorted(
            (p for p in pods if _is_ready(p)),
            key=lambda p: (p["metadata"]["creationTimestamp"], p["metadata"]["name"]),
            reverse=True,
        )
        victims = unready + ready
        deleted = 0
        for pod in victims[: max(count, 0)]:
            self.store.delete(
                self._type("pods"), pod["metadata"]["namespace"], pod["metadata"]["name"], self.context
            )
            deleted += 1
        return deleted

    def _reconcile(self, deployment: Obj, now: float) -> int:
        if _is_terminating(deployment):
            return 0
        spec = deployment["spec"]
        replicas = int(spec.get("replicas", 1))
        pod_hash = template_hash(spec["template"])
        replica_set = self._ensure_replicaset(deployment, pod_hash)
        pods = self._pods_of(deployment["metadata"]["namespace"], deployment["metadata"]["uid"])
        active = [pod for pod in pods if not _is_terminating(pod)]
        new = [pod for pod in active if pod["metadata"]["labels"].get("pod-template-hash") == pod_hash]
        old = [pod for pod in active if pod not in new]
        strategy = spec.get("strategy") or {}
        changes = 0
        if strategy.get("type") == "Recreate":
            if old:
                return self._delete_pods(old, len(old))
            if any(pod["metadata"]["labels"].get("pod-template-hash") != pod_hash for pod in pods):
                return 0  # Recreate waits until every old pod is gone, terminating ones included.
            for _ in range(replicas - len(new)):
                self._create_pod(deployment, replica_set, pod_hash, now)
                changes += 1
            return changes + self._delete_pods(new, len(new) - replicas)
        rolling = strategy.get("rollingUpdate") or {}
        surge = resolve_int_or_percent(rolling.get("maxSurge", "25%"), replicas, round_up=True)
        unavailable = resolve_int_or_percent(rolling.get("maxUnavailable", "25%"), replicas, round_up=False)
        if surge == 0 and unavailable == 0:
            unavailable = 1  # As in Kubernetes, so that a rollout can progress at all.
        if len(new) > replicas:
            return self._delete_pods(new, len(new) - replicas)
        if not old:
            for _ in range(replicas - len(new)):
                self._create_pod(deployment, replica_set, pod_hash, now)
                changes += 1
            return changes
        # Scale the new ReplicaSet up within the surge; terminating pods do not count, as in Kubernetes.
        room = min(replicas + surge - len(active), replicas - len(new))
        if room > 0:
            for _ in range(room):
                self._create_pod(deployment, replica_set, pod_hash, now)
            return room
        # Scale the old ones down while keeping replicas - maxUnavailable pods available.
        min_available = replicas - unavailable
        new_unavailable = sum(1 for pod in new if not _is_ready(pod))
        budget = len(active) - min_available - new_unavailable
        if budget <= 0:
            return 0
        unready_old = [pod for pod in old if not _is_ready(pod)]
        changes = self._delete_pods(unready_old, min(budget, len(unready_old)))
        budget -= changes
        available = sum(1 for pod in active if _is_ready(pod))
        ready_old = [pod for pod in old if _is_ready(pod)]
        return changes + self._delete_pods(ready_old, min(budget, available - min_available, len(ready_old)))

    def _write_status(self, namespace: str, name: str) -> int:
        """Bring ReplicaSet and Deployment status in line with the pods; writes only what changed."""
        deployment = self.store.get(self._type("deployments"), namespace, name)
        if _is_terminating(deployment):
            return 0
        spec = deployment["spec"]
        replicas = int(spec.get("replicas", 1))
        pod_hash = template_hash(spec["template"])
        pods = self._pods_of(namespace, deployment["metadata"]["uid"])
        active = [pod for pod in pods if not _is_terminating(pod)]
        changes = 0
        for replica_set in self._owned("replicasets", namespace, deployment["metadata"]["uid"]):
            rs_hash = replica_set["metadata"].get("labels", {}).get("pod-template-hash")
            mine = [pod for pod in active if pod["metadata"]["labels"].get("pod-template-hash") == rs_hash]
            ready = sum(1 for pod in mine if _is_ready(pod))
            rs_status = {
                "replicas": len(mine),
                "readyReplicas": ready,
                "availableReplicas": ready,
                "fullyLabeledReplicas": len(mine),
                "observedGeneration": replica_set["metadata"].get("generation", 1),
            }
            rs_name = replica_set["metadata"]["name"]
            if replica_set["spec"].get("replicas") != len(mine):
                self.store.update(
                    self._type("replicasets"),
                    namespace,
                    rs_name,
                    _setter("spec", {**replica_set["spec"], "replicas": len(mine)}),
                    self.context,
                )
                changes += 1
            current = self.store.get(self._type("replicasets"), namespace, rs_name)
            if current.get("status") != rs_status:
                self.store.update(
                    self._type("replicasets"),
                    namespace,
                    rs_name,
                    _setter("status", rs_status),
                    self.context,
                    subresource="status",
                )
                changes += 1
        updated = [pod for pod in active if pod["metadata"]["labels"].get("pod-template-hash") == pod_hash]
        ready = sum(1 for pod in active if _is_ready(pod))
        strategy = spec.get("strategy") or {}
        max_unavailable = (
            0
            if strategy.get("type") == "Recreate"
            else resolve_int_or_percent(
                (strategy.get("rollingUpdate") or {}).get("maxUnavailable", "25%"), replicas, round_up=False
            )
        )
        complete = len(updated) == replicas == len(active) and ready == replicas
        status: Obj = {
            "observedGeneration": deployment["metadata"].get("generation", 1),
            "replicas": len(active),
            "updatedReplicas": len(updated),
            "readyReplicas": ready,
            "availableReplicas": ready,
        }
        if len(active) - ready > 0:
            status["unavailableReplicas"] = len(active) - ready
        status = {key: value for key, value in status.items() if value or key == "observedGeneration"}
        previous = deployment.get("status") or {}
        status["conditions"] = _conditions(
            previous.get("conditions") or [],
            self.store.clock(),
            [
                (
                    "Available",
                    ready >= replicas - max_unavailable,
                    "MinimumReplicasAvailable"
                    if ready >= replicas - max_unavailable
                    else "MinimumReplicasUnavailable",
                ),
                ("Progressing", True, "NewReplicaSetAvailable" if complete else "ReplicaSetUpdated"),
            ],
        )
        if status != previous:
            self.store.update(
                self._type("deployments"),
                namespace,
                name,
                _setter("status", status),
                self.context,
                subresource="status",
            )
            changes += 1
        return changes


def _setter(key: str, value: Any) -> Callable[[Obj], Obj]:
    """A mutation for ``Store.update`` that sets one top-level field."""
    return lambda obj: {**obj, key: value}


def _annotate_revision(deployment: Obj, revision: int) -> Obj:
    deployment["metadata"].setdefault("annotations", {})[REVISION_ANNOTATION] = str(revision)
    return deployment


def _conditions(previous: list[Obj], now: float, wanted: list[tuple[str, bool, str]]) -> list[Obj]:
    """Deployment conditions; timestamps move only when a condition's status or reason changes."""
    by_type = {condition.get("type"): condition for condition in previous}
    result = []
    for kind, ok, reason in wanted:
        flag = "True" if ok else "False"
        old = by_type.get(kind)
        if old and old.get("status") == flag and old.get("reason") == reason:
            result.append(old)
        else:
            stamp = iso_timestamp(now)
            result.append(
                {
                    "type": kind,
                    "status": flag,
                    "reason": reason,
                    "lastUpdateTime": stamp,
                    "lastTransitionTime": stamp,
                }
            )
    return result
