"""The operator as it ships (``poolbudget run``, a separate process) on a real control plane: kube-apiserver with
etcd, the real Deployment and ReplicaSet controllers rolling out every change, the scheduler, and kwok nodes on
which pods become Ready and stay Terminating for their grace period. Writes are counted from the audit log."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.kube.fixtures import KubeCluster, wait_for
from tests.kube.operator import (
    OPERATOR_ACTOR,
    condition,
    differences,
    operator_on,
    pod_connections,
    settled,
    template_env,
)
from tests.kube.pod_watch import PodWatch
from tests.operator_harness import FAST, budget_manifest, deployment_manifest

pytestmark = [pytest.mark.kube, pytest.mark.timeout(300)]

GRACE = 3  # seconds a deleted pod stays Terminating (kwok honours it), holding its connections


def app(name: str, namespace: str, budget: str, *, replicas: int = 2, profile: str | None = None,
        env: list[dict[str, Any]] | None = None, image: str = "example.com/app:1.0") -> dict[str, Any]:  # fmt: skip
    annotations = {"poolbudget.io/profile": profile} if profile else {}
    manifest = deployment_manifest(
        name, namespace, budget=budget, replicas=replicas, env=env, annotations=annotations
    )
    manifest["spec"]["template"]["metadata"]["labels"]["profile"] = profile or "sqlalchemy"
    pod = manifest["spec"]["template"]["spec"]
    pod["terminationGracePeriodSeconds"] = GRACE
    pod["containers"][0]["image"] = image
    return manifest


def operator_writes(
    kube: KubeCluster, since: int, namespace: str, budget: str
) -> list[tuple[str, str, str, str]]:
    """The operator's writes about this test's objects: its namespace, its budget, and the operator's namespace
    (events about the budget). Other tests' namespaces may still be terminating, their Deployments naming a
    budget that is gone: the warnings a cluster-wide operator posts about those are right, and not this test's."""
    return [
        (w.verb, w.resource, w.subresource, w.name or w.namespace)
        for w in kube.audit.writes(since)
        if w.user_agent.startswith((OPERATOR_ACTOR, "kopf/"))
        and (w.namespace in (namespace, "default") or (w.resource == "poolbudgets" and w.name == budget))
    ]


def revisions(kube: KubeCluster, namespace: str, name: str) -> int:
    d = kube.get("deployment", name, namespace) or {}
    return int((d["metadata"].get("annotations") or {}).get("deployment.kubernetes.io/revision", 0))


def allocation(kube: KubeCluster, budget: str, name: str) -> dict[str, Any]:
    status = (kube.get("poolbudget", budget) or {}).get("status") or {}
    return next((dict(a) for a in status.get("allocations") or [] if a["name"] == name), {})


def converged(kube: KubeCluster, budget: str, namespace: str, *names: str) -> bool:
    return condition(kube, budget, "Ready").get("status") == "True" and settled(kube, namespace, *names)


def test_scale_trace_with_the_real_deployment_controller_never_exceeds_available(
    kube: KubeCluster, budget_name: str, namespaces: Callable[[str], str], tmp_path: Path
) -> None:
    """Three Deployments of different profiles, one under an HPA; kubectl scale up and down and an image change,
    rolled out by the real controllers. A watch on every pod checks the sum of the pods' own env at each event."""
    ns = namespaces("trace")
    available = 60 - 3 - 2
    kube.apply(budget_manifest(budget_name, 60, reserved=2, rebalance=FAST))
    names = ("web", "worker", "flow")
    with PodWatch(kube.kubeconfig, ns, available, pod_connections) as watch:
        kube.apply(
            app("web", ns, budget_name, replicas=2, env=[{"name": "WEB_CONCURRENCY", "value": "2"}]),
            app("worker", ns, budget_name, replicas=2, profile="psycopg-pool"),
            app("flow", ns, budget_name, replicas=1, profile="langflow"),
            {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
             "metadata": {"name": "web", "namespace": ns},
             "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
                      "minReplicas": 1, "maxReplicas": 4,
                      "metrics": [{"type": "Resource", "resource": {"name": "cpu",
                                   "target": {"type": "Utilization", "averageUtilization": 80}}}]}},
        )  # fmt: skip
        # Unsized pods open the app defaults (SQLAlchemy's 5 + 10 per process): sized before they count.
        with operator_on(kube, tmp_path) as operator:
            wait_for(lambda: converged(kube, budget_name, ns, *names), timeout=120,
                     message=lambda: f"first plan rolled out\n{operator.log()}")  # fmt: skip
            watch_from = watch.events
            watch.breaches.clear()  # before the operator sized them, the apps' own defaults ran over (by design)
            watch.peak = watch.total()
            steps: list[tuple[str, list[str]]] = [
                ("HPA-style scale-up web 2 -> 4", ["scale", "deployment/web", "--replicas=4"]),
                ("scale-down worker 2 -> 1", ["scale", "deployment/worker", "--replicas=1"]),
                ("image change flow", ["set", "image", "deployment/flow", "app=example.com/app:1.1"]),
                ("HPA-style scale-down web 4 -> 1", ["scale", "deployment/web", "--replicas=1"]),
            ]
            report = []
            for label, command in steps:
                before = {n: revisions(kube, ns, n) for n in names}
                kube.kubectl(*command, "-n", ns)
                wait_for(lambda: converged(kube, budget_name, ns, *names), timeout=120,
                         message=lambda step=label: f"{step}: convergence\n{operator.log()}")  # fmt: skip
                rollouts = {n: revisions(kube, ns, n) - before[n] for n in names}
                report.append((label, rollouts, watch.peak))
        assert watch.events > watch_from
    print(f"\nscale trace on the real control plane (available {available}):")
    for label, rollouts, peak in report:
        print(f"  {label}: rollouts {rollouts}, largest sum so far {peak}")
    assert watch.breaches == [], f"over available at {[(b.total, b.pods) for b in watch.breaches[:3]]}"
    assert 0 < watch.peak <= available


def test_exact_restore_on_annotation_removal_and_on_budget_deletion(
    kube: KubeCluster, budget_name: str, namespaces: Callable[[str], str], tmp_path: Path
) -> None:
    ns = namespaces("restore")
    user_env = [{"name": "DB_POOL_SIZE", "value": "20"}, {"name": "DB_MAX_OVERFLOW", "value": "30"},
                {"name": "LOG_LEVEL", "value": "info"}]  # fmt: skip
    kube.apply(budget_manifest(budget_name, 40, rebalance=FAST))
    kube.apply(app("a", ns, None, env=user_env), app("b", ns, None, env=user_env))  # type: ignore[arg-type]
    original = {n: kube.get("deployment", n, ns) for n in "ab"}
    with operator_on(kube, tmp_path) as operator:
        for n in "ab":
            kube.kubectl("annotate", "deployment", n, "-n", ns, f"poolbudget.io/budget={budget_name}")
        wait_for(lambda: all(template_env(kube.get("deployment", n, ns) or {})["DB_POOL_SIZE"] != "20" for n in "ab"),
                 timeout=60, message="both sized")  # fmt: skip
        kube.kubectl("annotate", "deployment", "a", "-n", ns, "poolbudget.io/budget-")
        kube.kubectl("delete", "poolbudget", budget_name, "--wait=false")

        def restored(name: str) -> bool:
            return template_env(kube.get("deployment", name, ns) or {})["DB_POOL_SIZE"] == "20"

        wait_for(
            lambda: restored("a") and restored("b"),
            timeout=60,
            message=lambda: f"both restored\n{operator.log()}",
        )
        wait_for(lambda: kube.get("poolbudget", budget_name) is None, timeout=30,
                 message=lambda: f"the budget's finalizer released\n{operator.log()}")  # fmt: skip
        for n in "ab":
            now, before = kube.get("deployment", n, ns), original[n]
            assert now is not None
            assert before is not None
            assert differences(before["spec"], now["spec"]) == [], f"{n}: the spec differs after the restore"
            annotations = dict(now["metadata"].get("annotations") or {})
            annotations.pop("poolbudget.io/budget", None)  # b keeps its opt-in: its budget is gone, not it
            managed_by_server = {
                "deployment.kubernetes.io/revision",
                "kubectl.kubernetes.io/last-applied-configuration",
            }
            expected = {
                k: v
                for k, v in (before["metadata"].get("annotations") or {}).items()
                if k not in managed_by_server
            }
            assert {k: v for k, v in annotations.items() if k not in managed_by_server} == expected
            assert now["metadata"].get("labels") == before["metadata"].get("labels")
            assert not now["metadata"].get("finalizers")


def test_a_restarted_operator_converges_without_a_single_write(
    kube: KubeCluster, budget_name: str, namespaces: Callable[[str], str], tmp_path: Path
) -> None:
    ns = namespaces("restart")
    kube.apply(budget_manifest(budget_name, 80, reserved=5, rebalance=FAST))
    kube.apply(app("a", ns, budget_name), app("b", ns, budget_name, replicas=3), app("c", ns, budget_name))
    with operator_on(kube, tmp_path, name="first"):
        wait_for(
            lambda: converged(kube, budget_name, ns, "a", "b", "c"), timeout=120, message="first convergence"
        )
    mark = kube.audit.mark()
    with operator_on(kube, tmp_path, name="second") as second:
        wait_for(
            lambda: second.rounds(budget_name) >= 1, timeout=30, message="the second operator's first round"
        )
        # A definite later signal: news the operator must answer with a round of its own, and nothing else.
        rounds = second.rounds(budget_name)
        # weight 1 is the default: the Deployment's news wakes the budget, and the plan stays the same.
        kube.kubectl("annotate", "deployment", "a", "-n", ns, "poolbudget.io/weight=1")
        wait_for(lambda: second.rounds(budget_name) > rounds, timeout=30, message="a round after the touch")
    assert operator_writes(kube, mark, ns, budget_name) == []


def test_a_concurrent_writer_during_a_rebalance_loses_nothing(
    kube: KubeCluster, budget_name: str, namespaces: Callable[[str], str], tmp_path: Path
) -> None:
    """kubectl patches the Deployment while the operator rebalances it: the operator's stale write is refused with
    409 by the real server, it reads again and writes once more; both the user's change and the sizing stand."""
    ns = namespaces("conflict")
    kube.apply(budget_manifest(budget_name, 60, rebalance=FAST))
    kube.apply(app("a", ns, budget_name), app("b", ns, budget_name))
    with operator_on(kube, tmp_path) as operator:
        wait_for(lambda: converged(kube, budget_name, ns, "a", "b"), timeout=120, message="first convergence")
        mark = kube.audit.mark()
        sizes = {n: template_env(kube.get("deployment", n, ns) or {})["DB_POOL_SIZE"] for n in "ab"}
        kube.kubectl("scale", "deployment/b", "-n", ns, "--replicas=4")
        for i in range(20):  # a user's tool writing the same Deployment over and over during the rebalance
            patch = {"spec": {"template": {"metadata": {"labels": {"touched": str(i)}}}}}
            kube.kubectl("patch", "deployment", "a", "-n", ns, "--type", "merge", "-p", json.dumps(patch))
        wait_for(lambda: converged(kube, budget_name, ns, "a", "b")
                 and template_env(kube.get("deployment", "a", ns) or {})["DB_POOL_SIZE"] != sizes["a"],
                 timeout=120, message=lambda: f"rebalanced\n{operator.log()}")  # fmt: skip
        a = kube.get("deployment", "a", ns) or {}
        assert a["spec"]["template"]["metadata"]["labels"]["touched"] == "19"  # the user's last write stands
        status = (kube.get("poolbudget", budget_name) or {})["status"]
        planned = {x["name"]: x for x in status["allocations"]}
        assert int(template_env(a)["DB_POOL_SIZE"] or 0) == planned["a"]["poolSize"]
        writes = [w for w in kube.audit.writes(mark) if w.user_agent.startswith(OPERATOR_ACTOR)
                  and w.resource == "deployments"]  # fmt: skip
        conflicts = [w for w in writes if w.code == 409]
        print(
            f"\noperator Deployment writes during the rebalance: {len(writes)}, refused with 409: {len(conflicts)}"
        )
        assert all(w.code in (200, 409) for w in writes), [(w.name, w.code) for w in writes]


LIFETIME = 8  # seconds a peer's record holds the others back (POOLBUDGET_PEERING_LIFETIME; the chart's is 60)


def deployment_writers(kube: KubeCluster, since: int) -> set[str]:
    """The operator processes (by User-Agent) that patched Deployments since an audit-log offset."""
    return {w.user_agent for w in kube.audit.writes(since) if w.resource == "deployments"
            and w.user_agent.startswith(OPERATOR_ACTOR)}  # fmt: skip


@pytest.mark.parametrize("ending", ["stopped", "killed"])
def test_two_replicas_with_peering_one_acts_and_the_other_takes_over(
    kube: KubeCluster, budget_name: str, namespaces: Callable[[str], str], tmp_path: Path, ending: str
) -> None:
    """Stopped (SIGTERM), the active replica removes its peering record and the standby resumes at once; killed,
    its record holds the standby back until it expires."""
    ns = namespaces(ending)
    kube.apply(budget_manifest(budget_name, 60, rebalance=FAST))
    kube.apply(app("a", ns, budget_name), app("b", ns, budget_name))
    lifetime = {"POOLBUDGET_PEERING_LIFETIME": str(LIFETIME)}
    mark = kube.audit.mark()
    with operator_on(kube, tmp_path, standalone=False, priority=200, name="active", env=lifetime) as active, \
            operator_on(kube, tmp_path, standalone=False, priority=100, name="standby", env=lifetime) as standby:  # fmt: skip
        wait_for(lambda: converged(kube, budget_name, ns, "a", "b"), timeout=120, message="first convergence")
        assert deployment_writers(kube, mark) == {active.actor}

        if ending == "stopped":
            assert active.stop() == 0
        else:
            active.kill()
        ended_at = time.monotonic()
        mark = kube.audit.mark()
        before = template_env(kube.get("deployment", "a", ns) or {})["DB_POOL_SIZE"]
        kube.kubectl("scale", "deployment/b", "-n", ns, "--replicas=5")
        wait_for(lambda: template_env(kube.get("deployment", "a", ns) or {})["DB_POOL_SIZE"] != before,
                 timeout=60, message=lambda: f"the standby taking over\n{standby.log()}")  # fmt: skip
        took = time.monotonic() - ended_at
        assert deployment_writers(kube, mark) == {standby.actor}
        if ending == "killed":
            # Not before the killed replica's record expired (its last keep-alive came at most ~3 s before).
            assert took >= LIFETIME - 4, f"taken over {took:.1f} s after the kill: its record had not expired"
        print(f"\n{ending}: the standby took over {took:.1f} s later")


def test_the_api_server_restarted_mid_rebalance(
    kube: KubeCluster, budget_name: str, namespaces: Callable[[str], str], tmp_path: Path
) -> None:
    """kube-apiserver stops right after a scale event and comes back on the same etcd: the operator reconnects
    (its resumed watches may be answered 410 Gone), converges, and the invariant held throughout."""
    if kube.plane is None:
        pytest.skip("restarting the API server needs the built-in control plane")
    ns = namespaces("restart-api")
    available = 60 - 3
    kube.apply(budget_manifest(budget_name, 60, rebalance=FAST))
    kube.apply(app("a", ns, budget_name), app("b", ns, budget_name))
    with operator_on(kube, tmp_path) as operator:
        wait_for(lambda: converged(kube, budget_name, ns, "a", "b"), timeout=120, message="first convergence")
        with PodWatch(kube.kubeconfig, ns, available, pod_connections) as watch:
            wait_for(lambda: watch.events > 0, timeout=30, message="the pod watch listing")
            kube.kubectl("scale", "deployment/b", "-n", ns, "--replicas=1")
            kube.plane.stop_apiserver()
            kube.plane.start_apiserver()
            wait_for(lambda: converged(kube, budget_name, ns, "a", "b")
                     and allocation(kube, budget_name, "b").get("pods") == 2,
                     timeout=180, message=lambda: f"convergence after the restart\n{operator.log()}")  # fmt: skip
        assert watch.restarts >= 1  # the watch did see the server go away
        assert watch.breaches == [], [(b.total, b.pods) for b in watch.breaches[:3]]
