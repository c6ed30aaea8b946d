"""The operator as it ships (``poolbudget run``, a separate process) against the real control plane, and the
reading helpers the ``kube`` tests share: the env a pod was started with, conditions, events, settled rollouts."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from tests.kube.fixtures import KubeCluster, wait_for
from tests.operator_harness import OPERATOR_ACTOR, OperatorProcess

__all__ = ["OPERATOR_ACTOR", "KubeOperator", "operator_on"]


class _KubeconfigEnv:
    """What OperatorProcess needs of a cluster: the environment that points a client at it."""

    def __init__(self, kubeconfig: Path) -> None:
        self.kubeconfig = kubeconfig

    def env(self) -> dict[str, str]:
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig)}


class KubeOperator(OperatorProcess):
    """``poolbudget run`` with a kubeconfig (the admin's, or a ServiceAccount's for RBAC tests)."""

    def __init__(self, kubeconfig: Path, workdir: Path, **options: Any) -> None:
        super().__init__(_KubeconfigEnv(kubeconfig), workdir, **options)  # type: ignore[arg-type]
        self.killed = False

    def kill(self) -> None:
        self.killed = True
        super().kill()


@contextlib.contextmanager
def operator_on(
    kube: KubeCluster, workdir: Path, *, kubeconfig: Path | None = None, **options: Any
) -> Iterator[KubeOperator]:
    operator = KubeOperator(kubeconfig or kube.kubeconfig, workdir, **options)
    operator.start()
    try:
        yield operator
    finally:
        code = operator.stop()
        assert operator.killed or code == 0, f"the operator exited with {code}:\n{operator.log()}"


# What an app opens when nothing sized it: SQLAlchemy's QueuePool 5 + 10, psycopg_pool's 4, Langflow's 20 + 30.
APP_DEFAULTS = {"DB_POOL_SIZE": 15, "DB_POOL_MAX_SIZE": 4, "LANGFLOW_DB_CONNECTION_SETTINGS": 50}
PROFILE_SETTING = {
    "sqlalchemy": "DB_POOL_SIZE",
    "psycopg-pool": "DB_POOL_MAX_SIZE",
    "langflow": "LANGFLOW_DB_CONNECTION_SETTINGS",
}


def pod_connections(pod: Mapping[str, Any]) -> int:
    """Connections one pod may open, from its own env as the app reads it, per process times processes.

    A pod the operator has not sized yet opens its app's defaults; the app is told by the pod's ``profile`` label
    (set by the tests' manifests), since a pod carries no annotation of its Deployment."""
    env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0].get("env") or []}
    processes = int(env.get("WEB_CONCURRENCY") or 1)
    if "LANGFLOW_DB_CONNECTION_SETTINGS" in env:
        settings = json.loads(env["LANGFLOW_DB_CONNECTION_SETTINGS"] or "{}")
        return processes * (int(settings["pool_size"]) + int(settings["max_overflow"]))
    if "DB_POOL_MAX_SIZE" in env:
        return processes * int(env["DB_POOL_MAX_SIZE"] or 0)
    if "DB_POOL_SIZE" in env:
        return processes * (int(env["DB_POOL_SIZE"] or 0) + int(env.get("DB_MAX_OVERFLOW") or 0))
    profile = (pod["metadata"].get("labels") or {}).get("profile", "sqlalchemy")
    return processes * APP_DEFAULTS[PROFILE_SETTING[profile]]


def template_env(deployment: Mapping[str, Any], container: int = 0) -> dict[str, str | None]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e.get("value") for e in containers[container].get("env") or []}


def condition(kube: KubeCluster, budget: str, kind: str) -> dict[str, Any]:
    found = kube.get("poolbudget", budget) or {}
    for entry in (found.get("status") or {}).get("conditions") or []:
        if entry.get("type") == kind:
            return dict(entry)
    return {}


def settled(kube: KubeCluster, namespace: str, *names: str) -> bool:
    """Every named Deployment rolled out (observed, updated, ready) and no pod of the namespace terminating."""
    if any(p["metadata"].get("deletionTimestamp") for p in kube.list("pods", namespace)):
        return False
    for name in names:
        d = kube.get("deployment", name, namespace)
        assert d is not None, f"Deployment {namespace}/{name} is gone"
        status, replicas = d.get("status") or {}, d["spec"].get("replicas", 1)
        if status.get("observedGeneration") != d["metadata"].get("generation"):
            return False
        if (status.get("updatedReplicas", 0), status.get("readyReplicas", 0), status.get("replicas", 0)) != (
            replicas,
            replicas,
            replicas,
        ):
            return False
    return True


def wait_settled(kube: KubeCluster, namespace: str, *names: str, timeout: float = 90.0) -> None:
    wait_for(lambda: settled(kube, namespace, *names), timeout=timeout,
             message=lambda: f"rollouts of {names} in {namespace} to settle")  # fmt: skip


def differences(before: Any, after: Any, path: str = "") -> list[str]:
    """Field-by-field differences between two JSON values, as ``path: before != after`` lines."""
    if isinstance(before, dict) and isinstance(after, dict):
        return [line for key in sorted(set(before) | set(after))
                for line in differences(before.get(key), after.get(key), f"{path}.{key}")]  # fmt: skip
    if isinstance(before, list) and isinstance(after, list) and len(before) == len(after):
        return [line for i, (b, a) in enumerate(zip(before, after, strict=True))
                for line in differences(b, a, f"{path}[{i}]")]  # fmt: skip
    return [] if before == after else [f"{path}: {before!r} != {after!r}"]
