"""The real operator (``poolbudget run``) against the Kubernetes API emulator (a test double, not a real cluster).

Driven with ``kubectl`` as a user would; what happened is read from the emulator's write history. The emulator's
pod simulator rolls Deployments (surge pods, terminating pods), so the shrink-first rule is exercised for real.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.operator_harness import (
    FAST,
    KubernetesEmulator,
    OperatorProcess,
    answered_spec_change,
    apply,
    budget_manifest,
    budget_status,
    budgeted_footprint,
    condition,
    container_env,
    deployment,
    deployment_manifest,
    events_about,
    operator_writes,
    running,
    settled,
    wait_until,
    write_manifests,
)

pytestmark = [pytest.mark.emulator, pytest.mark.timeout(120)]


@pytest.fixture
def operator(cluster: KubernetesEmulator, tmp_path: Path) -> Iterator[OperatorProcess]:
    with running(OperatorProcess(cluster, tmp_path)) as process:
        yield process


def pool_env(env: dict[str, str | None]) -> dict[str, str | None]:
    return {k: v for k, v in env.items() if k.startswith("DB_")}


def test_three_deployments_get_the_planned_env_within_5s(
    cluster: KubernetesEmulator, operator: OperatorProcess, tmp_path: Path
) -> None:
    """Same numbers as `poolbudget plan` on the same manifests; `kubectl get pb` shows the columns."""
    budget = budget_manifest(max_connections=100, reserved=10)
    deployments = [
        deployment_manifest("api", env=[{"name": "WEB_CONCURRENCY", "value": "2"}]),
        deployment_manifest("worker", replicas=1, annotations={"poolbudget.io/weight": "2"}),
        deployment_manifest("admin", replicas=3, env=[{"name": "DB_POOL_SIZE", "value": "20"}]),
    ]
    apply(cluster, budget)
    started = time.monotonic()
    apply(cluster, *deployments)

    planned = json.loads(
        subprocess.run(
            [
                "poolbudget",
                "plan",
                "-f",
                str(write_manifests(tmp_path / "m.yaml", budget, *deployments)),
                "-o",
                "json",
            ],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout
    )["budgets"][0]
    expected = {d["name"]: {e["name"]: e["value"] for e in d["env"]} for d in planned["deployments"]}

    def applied() -> bool:
        return all(
            {k: container_env(cluster, name).get(k) for k in env} == env for name, env in expected.items()
        )

    wait_until(applied, timeout=5.0, message="the planned env on every Deployment")
    assert time.monotonic() - started < 5.0
    for name in expected:
        assert container_env(cluster, name)["PGAPPNAME"] == f"default/{name}"
    assert container_env(cluster, "api")["WEB_CONCURRENCY"] == "2"  # the user's own entries stay

    wait_until(lambda: budget_status(cluster).get("allocated") == planned["allocated"], timeout=5.0)
    table = cluster.kubectl("get", "pb").stdout.splitlines()
    assert table[0].split() == ["NAME", "MAX", "AVAILABLE", "ALLOCATED", "DEPLOYMENTS", "READY", "AGE"]
    row = table[1].split()
    assert row[:6] == ["main", "100", str(planned["available"]), str(planned["allocated"]), "3", "True"]


def test_a_scale_up_shrinks_the_others_first_and_never_exceeds_available(
    cluster: KubernetesEmulator, operator: OperatorProcess
) -> None:
    """Replaying the write history: the operator's writes never raise an over-budget footprint, and every grow
    lands within available; the scaled Deployment grows only after the others' shrunk rollouts finished."""
    apply(cluster, budget_manifest(max_connections=100, reserved=10, rebalance=FAST))
    apply(
        cluster,
        deployment_manifest("a", replicas=0),
        deployment_manifest("b"),
        deployment_manifest("c"),
    )
    wait_until(lambda: all("PGAPPNAME" in container_env(cluster, n) for n in "abc"), timeout=10)
    wait_until(
        lambda: settled(cluster, "a", "b", "c") and condition(cluster, "Ready").get("status") == "True",
        timeout=15,
    )
    before = {n: int(container_env(cluster, n)["DB_POOL_SIZE"] or 0) for n in "bc"}
    mark = cluster.mark()

    cluster.kubectl("scale", "deployment/a", "--replicas=2")
    wait_until(
        lambda: (
            settled(cluster, "a", "b", "c")
            and condition(cluster, "Ready").get("status") == "True"
            and budget_status(cluster)["allocations"][0]["pods"] == 3
        ),
        timeout=30,
    )
    patches = [(r.name, r.seq) for r in operator_writes(cluster, since=mark, plural="deployments")]
    shrinks = [seq for name, seq in patches if name in "bc"]
    grows = [seq for name, seq in patches if name == "a"]
    assert shrinks, patches
    assert grows, patches
    assert max(shrinks) < min(grows), f"a grew before b and c shrank: {patches}"
    assert all(int(container_env(cluster, n)["DB_POOL_SIZE"] or 0) <= before[n] for n in "bc")

    # Then a scale-up of a Deployment at its fair share: everyone shrinks, nobody grows.
    cluster.kubectl("scale", "deployment/b", "--replicas=4")
    wait_until(
        lambda: (
            settled(cluster, "a", "b", "c")
            and condition(cluster, "Ready").get("status") == "True"
            and budget_status(cluster)["allocations"][1]["pods"] == 5
        ),
        timeout=30,
    )

    checked = 0
    previous: int | None = None
    for record, state in cluster.replay():
        if ("poolbudget.io", "poolbudgets", "", "main") not in state or record.plural != "deployments":
            continue
        footprint, available = budgeted_footprint(state, "main")
        if record.actor.startswith("poolbudget/") and previous is not None:
            checked += 1
            if previous > available:
                assert footprint <= previous, f"write {record.seq} raised an over-budget footprint"
            if footprint > previous:
                assert footprint <= available, f"grow {record.seq} landed at {footprint} > {available}"
        previous = footprint
    assert checked >= 5
    assert footprint <= available, json.dumps(budget_status(cluster), indent=1)  # converged within the budget


def test_removing_the_annotation_restores_the_deployment_byte_for_byte(
    cluster: KubernetesEmulator, operator: OperatorProcess
) -> None:
    """Its share goes to the others; deleting the budget restores them all."""
    apply(cluster, budget_manifest(max_connections=60, reserved=0, rebalance=FAST))
    user_env = [
        {"name": "DB_POOL_SIZE", "value": "20"},
        {"name": "DATABASE_URL", "valueFrom": {"secretKeyRef": {"name": "db", "key": "url"}}},
        {"name": "DB_POOL_TIMEOUT", "valueFrom": {"configMapKeyRef": {"name": "tuning", "key": "timeout"}}},
        {"name": "LOG_LEVEL", "value": "info"},
    ]
    apply(cluster, deployment_manifest("a", env=user_env), deployment_manifest("b"), deployment_manifest("c"))
    originals = {n: deployment(cluster, n)["spec"]["template"] for n in "abc"}
    wait_until(
        lambda: (
            all("PGAPPNAME" in container_env(cluster, n) for n in "abc") and settled(cluster, "a", "b", "c")
        ),
        timeout=15,
    )
    shared = budget_status(cluster)["allocations"][1]["connections"]

    cluster.kubectl("annotate", "deployment", "a", "poolbudget.io/budget-")
    wait_until(
        lambda: deployment(cluster, "a")["spec"]["template"] == originals["a"],
        timeout=10,
        message="a's pod template restored",
    )
    restored = deployment(cluster, "a")
    assert json.dumps(restored["spec"]["template"], sort_keys=True) == json.dumps(
        originals["a"], sort_keys=True
    )
    assert not [k for k in restored["metadata"].get("annotations", {}) if k.startswith("poolbudget.io/")]
    # kopf only observed the Deployments: no finalizer, no progress or diff-base annotation on them, ever.
    kopf_marks = [
        r.seq
        for r in cluster.writes(plural="deployments")
        if r.object["metadata"].get("finalizers")
        or any("kopf" in k or "last-handled" in k for k in r.object["metadata"].get("annotations") or {})
    ]
    assert kopf_marks == []
    wait_until(
        lambda: (
            budget_status(cluster).get("deploymentCount") == 2
            and budget_status(cluster)["allocations"][0]["connections"] > shared
        ),
        timeout=15,
        message="a's share going to b and c",
    )

    assert (
        operator.metric(
            "poolbudget_deployment_allocated_connections", budget="main", namespace="default", deployment="a"
        )
        is None
    )  # a's series are gone
    assert (
        operator.metric(
            "poolbudget_deployment_allocated_connections", budget="main", namespace="default", deployment="b"
        )
        == budget_status(cluster)["allocations"][0]["connections"]
    )

    cluster.kubectl("delete", "pb", "main", "--wait=false")
    wait_until(
        lambda: all(deployment(cluster, n)["spec"]["template"] == originals[n] for n in "bc"),
        timeout=15,
        message="b and c restored when the budget is deleted",
    )
    wait_until(lambda: cluster.get("poolbudget.io/v1alpha1", "poolbudgets", "main") is None, timeout=10)
    assert operator.metric("poolbudget_available_connections", budget="main") is None
    released = [e for e in events_about(cluster, "Deployment", "b") if e.get("reason") == "Released"]
    assert released, "b was told it was released"


def test_a_langflow_deployment_keeps_its_own_json_keys(
    cluster: KubernetesEmulator, operator: OperatorProcess
) -> None:
    settings = json.dumps({"echo": True, "pool_size": 40, "max_overflow": 40})
    apply(cluster, budget_manifest(max_connections=50, rebalance=FAST))
    apply(
        cluster,
        deployment_manifest(
            "langflow",
            annotations={"poolbudget.io/profile": "langflow"},
            env=[{"name": "LANGFLOW_DB_CONNECTION_SETTINGS", "value": settings}],
        ),
    )
    wait_until(lambda: "PGAPPNAME" in container_env(cluster, "langflow"), timeout=10)
    written = json.loads(container_env(cluster, "langflow")["LANGFLOW_DB_CONNECTION_SETTINGS"] or "{}")
    assert written["echo"] is True
    assert written["pool_size"] + written["max_overflow"] <= 47 // 3
    assert set(written) >= {"pool_size", "max_overflow", "pool_timeout", "pool_pre_ping", "pool_recycle"}


def _no_deployment_patches(cluster: KubernetesEmulator, since: int) -> list[Any]:
    return [
        r
        for r in cluster.writes(since=since, plural="deployments", changed_only=True)
        if not r.actor.startswith(("kubectl", "pod-simulator", "test"))
    ]


def test_bad_input_gets_a_clear_message_and_changes_nothing(
    cluster: KubernetesEmulator, operator: OperatorProcess
) -> None:
    cluster.create_namespace("allowed", {"team": "db"})
    cluster.create_namespace("elsewhere")
    apply(
        cluster,
        budget_manifest("strict", max_connections=50, namespaceSelector={"matchLabels": {"team": "db"}}),
    )
    invalid = budget_manifest("broken", database={"refreshSeconds": 30})  # neither a limit nor a secret
    apply(cluster, invalid)
    mark = cluster.mark()
    apply(
        cluster,
        deployment_manifest("orphan", budget="nosuch"),
        deployment_manifest(
            "odd", "allowed", budget="strict", annotations={"poolbudget.io/profile": "cobol"}
        ),
        deployment_manifest("outside", "elsewhere", budget="strict"),
        deployment_manifest("victim", budget="broken"),
        deployment_manifest(
            "typo", "allowed", budget="strict", annotations={"poolbudget.io/processes": "lots"}
        ),
    )

    wait_until(lambda: condition(cluster, "Invalid", "broken").get("status") == "True", timeout=10)
    message = condition(cluster, "Invalid", "broken")["message"]
    assert "spec.database" in message
    assert "maxConnections" in message

    def warned(name: str, reason: str) -> str:
        found = [e for e in events_about(cluster, "Deployment", name) if e.get("reason") == reason]
        return str(found[0]["message"]) if found else ""

    assert "nosuch" in wait_until(lambda: warned("orphan", "UnknownBudget"), timeout=10)
    assert "unknown profile 'cobol'" in wait_until(lambda: warned("odd", "Refused"), timeout=10)
    assert "'elsewhere' is not selected" in wait_until(lambda: warned("outside", "Refused"), timeout=10)
    assert "annotation poolbudget.io/processes" in wait_until(lambda: warned("typo", "Refused"), timeout=10)
    wait_until(lambda: budget_status(cluster, "strict").get("deploymentCount") == 0, timeout=10)
    # Rounds of both budgets that came after every Deployment above: still nothing touched.
    answered_spec_change(cluster, "strict")
    answered_spec_change(cluster, "broken")
    assert _no_deployment_patches(cluster, mark) == []
