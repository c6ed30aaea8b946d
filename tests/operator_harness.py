"""Running the real operator (``poolbudget run``, as a subprocess) against the Kubernetes API emulator.

The emulator is a test double of the API server (``tests/emulator``), not a real cluster: its pod simulator plays
the Deployment controller and the kubelets, so rollouts, surge pods and terminating pods happen as on a cluster.
Tests drive it with the real ``kubectl`` and read what everyone wrote from its write history.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from poolbudget import __version__
from poolbudget.api.limits import DatabaseLimits
from poolbudget.api.models import PoolBudget
from poolbudget.api.workloads import Deployment, HorizontalPodAutoscaler, budget_of
from poolbudget.observe.footprint import template_per_pod
from poolbudget.planning.budget import manage
from poolbudget.planning.limits import compute_available
from tests.emulator import KubernetesEmulator, wait_until

ROOT = Path(__file__).resolve().parents[1]
BUDGET_CRD = ROOT / "crds" / "poolbudget.io_poolbudgets.yaml"
PEERING_CRD = ROOT / "crds" / "kopf-peering.yaml"
OPERATOR_ACTOR = f"poolbudget/{__version__}"
STARTUP_TIMEOUT = 30.0
STOP_TIMEOUT = 20.0

__all__ = ["KubernetesEmulator", "OperatorProcess", "wait_until"]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_cluster(
    workdir: Path, *, peering: bool = False, start_delay: float = 0.1, termination_delay: float = 0.4
) -> KubernetesEmulator:
    """An emulator serving the PoolBudget CRD (and kopf's peering CRD), with the pod simulator running."""
    emulator = KubernetesEmulator(workdir / "emulator").start()
    emulator.register_crd(BUDGET_CRD)
    if peering:
        emulator.register_crd(PEERING_CRD)
    emulator.pod_simulator(start_delay=start_delay, termination_delay=termination_delay).start(0.05)
    return emulator


class OperatorProcess:
    """One ``poolbudget run`` process against the emulator, with its own liveness and metrics ports and log."""

    def __init__(
        self,
        emulator: KubernetesEmulator,
        workdir: Path,
        *,
        standalone: bool = True,
        priority: int | None = None,
        env: Mapping[str, str] | None = None,
        name: str = "operator",
        args: Sequence[str] = (),
    ) -> None:
        self.emulator = emulator
        self.log_path = workdir / f"{name}.log"
        self.liveness_port = free_port()
        self.metrics_port = free_port()
        self.standalone = standalone
        self.args = list(args)  # more `poolbudget run` arguments, e.g. the chart's --namespace list
        self.env = {
            **emulator.env(),
            "POOLBUDGET_NAMESPACE": "default",
            "POOLBUDGET_METRICS_PORT": str(self.metrics_port),
            "PYTHONUNBUFFERED": "1",
            **({"POOLBUDGET_PEERING_PRIORITY": str(priority)} if priority is not None else {}),
            **(env or {}),
        }
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def actor(self) -> str:
        """How this process's own writes show in the emulator's history (its User-Agent)."""
        return f"{OPERATOR_ACTOR} ({socket.gethostname()}/{self.pid})"

    def start(self) -> OperatorProcess:
        command = ["poolbudget", "run", "--liveness", f"http://127.0.0.1:{self.liveness_port}/healthz"]
        if self.standalone:
            command.append("--standalone")
        command += self.args
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(command, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        wait_until(
            self._alive, timeout=STARTUP_TIMEOUT, interval=0.1, message=f"operator liveness ({self.log()})"
        )
        return self

    def _alive(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"the operator exited with {self.process.returncode}:\n{self.log()}")
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.liveness_port}/healthz", timeout=1
            ) as answer:
                return bool(answer.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def stop(self) -> int:
        """SIGTERM, as Kubernetes stops a pod; kill after a timeout. Returns the exit code."""
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(timeout=STOP_TIMEOUT)

    def kill(self) -> None:
        """SIGKILL, as a node failure or an OOM kill ends it: no graceful stop, its peering record left behind."""
        assert self.process is not None
        self.process.kill()
        self.process.wait(timeout=STOP_TIMEOUT)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-6000:]
        except OSError:
            return ""

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=2) as answer:
            return str(answer.read().decode())

    def metric(self, name: str, **labels: str) -> float | None:
        """One sample of the operator's own metrics, or None when it is not exported."""
        wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        for line in self.metrics().splitlines():
            if line.startswith("#"):
                continue
            series, _, value = line.rpartition(" ")
            metric, _, rest = series.partition("{")
            found = ",".join(sorted(rest.rstrip("}").split(","))) if rest else ""
            if metric == name and found == wanted:
                return float(value)
        return None

    def rounds(self, budget: str) -> int:
        """Reconcile rounds this process has run for a budget."""
        return int(self.metric("poolbudget_reconcile_duration_seconds_count", budget=budget) or 0)


@contextlib.contextmanager
def running(operator: OperatorProcess) -> Iterator[OperatorProcess]:
    operator.start()
    try:
        yield operator
    finally:
        operator.stop()


# ------------------------------------------------------------------------------------------------ manifests


def budget_manifest(name: str = "main", max_connections: int = 100, **spec: Any) -> dict[str, Any]:
    """A PoolBudget; tests pass camelCase spec fields (``reserved=10``, ``rebalance={...}``)."""
    database = spec.pop("database", {"maxConnections": max_connections})
    return {
        "apiVersion": "poolbudget.io/v1alpha1",
        "kind": "PoolBudget",
        "metadata": {"name": name},
        "spec": {"database": database, **spec},
    }


def deployment_manifest(
    name: str,
    namespace: str = "default",
    *,
    budget: str | None = "main",
    replicas: int = 2,
    env: list[dict[str, Any]] | None = None,
    annotations: Mapping[str, str] | None = None,
    containers: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    metadata_annotations = {"poolbudget.io/budget": budget} if budget else {}
    metadata_annotations.update(annotations or {})
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace, "annotations": metadata_annotations},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "containers": containers
                    or [
                        {"name": "app", "image": "example.com/app:1.0", "env": env if env is not None else []}
                    ]
                },
            },
        },
    }


def apply(emulator: KubernetesEmulator, *documents: Mapping[str, Any]) -> None:
    """``kubectl apply --validate=false`` (the emulator serves no OpenAPI document), as a user would."""
    emulator.kubectl(
        "apply", "--validate=false", "-f", "-", input=yaml.safe_dump_all([dict(d) for d in documents])
    )


def write_manifests(path: Path, *documents: Mapping[str, Any]) -> Path:
    path.write_text(yaml.safe_dump_all([dict(d) for d in documents]))
    return path


# ------------------------------------------------------------------------------------------------ reading


def deployment(emulator: KubernetesEmulator, name: str, namespace: str = "default") -> dict[str, Any]:
    found = emulator.get("apps/v1", "deployments", name, namespace)
    assert found is not None, f"Deployment {namespace}/{name} is gone"
    return found


def container_env(
    emulator: KubernetesEmulator, name: str, namespace: str = "default", container: int = 0
) -> dict[str, str | None]:
    spec = deployment(emulator, name, namespace)["spec"]["template"]["spec"]
    return {e["name"]: e.get("value") for e in spec["containers"][container].get("env") or []}


def budget_status(emulator: KubernetesEmulator, name: str = "main") -> dict[str, Any]:
    found = emulator.get("poolbudget.io/v1alpha1", "poolbudgets", name)
    return dict((found or {}).get("status") or {})


def condition(emulator: KubernetesEmulator, kind: str, name: str = "main") -> dict[str, Any]:
    for entry in budget_status(emulator, name).get("conditions") or []:
        if entry.get("type") == kind:
            return dict(entry)
    return {}


def events(emulator: KubernetesEmulator, namespace: str | None = None) -> list[dict[str, Any]]:
    return emulator.list_objects("v1", "events", namespace)


def events_about(emulator: KubernetesEmulator, kind: str, name: str) -> list[dict[str, Any]]:
    return [
        e
        for e in events(emulator)
        if (e.get("involvedObject") or {}).get("kind") == kind
        and (e.get("involvedObject") or {}).get("name") == name
    ]


def settled(emulator: KubernetesEmulator, *names: str, namespace: str = "default") -> bool:
    """Every named Deployment's rollout is done and none of its pods is terminating."""
    pods = emulator.list_objects("v1", "pods", namespace)
    if any(p["metadata"].get("deletionTimestamp") for p in pods):
        return False
    for name in names:
        d = deployment(emulator, name, namespace)
        status, replicas = d.get("status") or {}, d["spec"].get("replicas", 1)
        if status.get("observedGeneration") != d["metadata"].get("generation"):
            return False
        if status.get("updatedReplicas", 0) != replicas or status.get("readyReplicas", 0) != replicas:
            return False
        if status.get("replicas", 0) != replicas:
            return False
    return True


def operator_writes(emulator: KubernetesEmulator, since: int = 0, plural: str | None = None) -> list[Any]:
    """Accepted, effective writes the operator made itself (not kopf's, not the pod simulator's)."""
    return [
        r
        for r in emulator.writes(since=since, plural=plural, changed_only=True)
        if r.actor.startswith(OPERATOR_ACTOR)
    ]


def stamp_changes(emulator: KubernetesEmulator, since: int = 0) -> list[tuple[str, int | None, int | None]]:
    """The operator's Deployment writes since a mark: (name, per-pod stamp before, after)."""
    stamps: dict[Any, int | None] = {}
    changes = []
    for record, _ in emulator.replay():
        if record.plural != "deployments":
            continue
        annotations = ((record.object.get("spec") or {}).get("template") or {}).get("metadata", {}).get(
            "annotations"
        ) or {}
        raw = annotations.get("poolbudget.io/connections-per-pod")
        after = int(raw) if raw else None
        if record.seq > since and record.actor.startswith(OPERATOR_ACTOR):
            changes.append((record.name, stamps.get(record.key), after))
        stamps[record.key] = after
    return changes


# ------------------------------------------------------------------------------------------------ the invariant


def budgeted_footprint(state: Mapping[Any, Mapping[str, Any]], budget_name: str) -> tuple[int, int]:
    """(footprint, available) in one state of the history: the sum over opted-in Deployments of their peak pods
    times the connections per pod their current template opens, and the budget's available connections."""
    budget_obj = state.get(("poolbudget.io", "poolbudgets", "", budget_name))
    assert budget_obj is not None, f"PoolBudget {budget_name} is not in the history"
    budget = PoolBudget.model_validate(dict(budget_obj))
    assert budget.spec.database.max_connections is not None
    available = compute_available(
        DatabaseLimits(budget.spec.database.max_connections), budget.spec.reserved
    ).available
    hpas = [
        HorizontalPodAutoscaler.model_validate(dict(obj))
        for (group, plural, _, _), obj in state.items()
        if (group, plural) == ("autoscaling", "horizontalpodautoscalers")
    ]
    total = 0
    for (group, plural, _, _), obj in state.items():
        if (group, plural) != ("apps", "deployments"):
            continue
        if budget_of((obj.get("metadata") or {}).get("annotations") or {}) != budget_name:
            continue
        managed = manage(budget, Deployment.model_validate(dict(obj)), hpas)
        total += managed.workload.pods * template_per_pod(managed, obj)
    return total, available


def answered_spec_change(emulator: KubernetesEmulator, name: str = "main", timeout: float = 15.0) -> int:
    """A definite point in the operator's work: change the budget's spec in a way that changes no plan
    (``database.refreshSeconds`` one more), and wait until a round has answered it (the status says it observed
    the new generation). That round came after every event before the change; returns the generation."""
    budget = emulator.get("poolbudget.io/v1alpha1", "poolbudgets", name) or {}
    refresh = int(((budget.get("spec") or {}).get("database") or {}).get("refreshSeconds", 60))
    changed = emulator.patch(
        "poolbudget.io/v1alpha1", "poolbudgets", name, {"spec": {"database": {"refreshSeconds": refresh + 1}}}
    )
    generation = int(changed["metadata"]["generation"])
    wait_until(
        lambda: budget_status(emulator, name).get("observedGeneration") == generation,
        timeout=timeout,
        message=f"a round of {name} answering generation {generation}",
    )
    return generation


def wait_for_rounds(operator: OperatorProcess, budget: str, at_least: int, timeout: float = 15.0) -> int:
    return int(
        wait_until(
            lambda: operator.rounds(budget) >= at_least and operator.rounds(budget),
            timeout=timeout,
            message=f"{at_least} reconcile rounds of {budget}",
        )
    )


# Rebalance settings that keep the operator tests fast: a short debounce, no minimum interval between rolls.
FAST = {"debounceSeconds": 0.2, "minIntervalSeconds": 0}


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[KubernetesEmulator]:
    """The Kubernetes API emulator with the CRDs and namespaces the operator tests use (not a real cluster)."""
    emulator = start_cluster(tmp_path)
    try:
        yield emulator
    finally:
        emulator.stop()
