"""Bad input and faults on the real control plane: every bad annotation gets a Warning on its Deployment and changes
nothing; the database going away keeps the last limits and allows only decreases (a real PostgreSQL)."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.kube.fixtures import KubeCluster, wait_for
from tests.kube.operator import condition, operator_on, template_env
from tests.operator_harness import FAST, budget_manifest, deployment_manifest
from tests.pg import PostgresServer

pytestmark = [pytest.mark.kube, pytest.mark.timeout(300)]


def warning(kube: KubeCluster, namespace: str, name: str, reason: str) -> str:
    for event in kube.list("events", namespace):
        involved = event["involvedObject"]
        if (involved["kind"], involved["name"], event["reason"]) == ("Deployment", name, reason):
            assert event["type"] == "Warning", event
            return str(event["message"])
    return ""


def test_bad_annotations_get_a_warning_and_change_nothing(
    kube: KubeCluster, budget_name: str, namespaces: Callable[[str], str], tmp_path: Path
) -> None:
    allowed, elsewhere = namespaces("allowed"), namespaces("elsewhere")
    kube.kubectl("label", "namespace", allowed, "team=db")
    selector = {"matchLabels": {"team": "db"}}
    kube.apply(budget_manifest(budget_name, 50, rebalance=FAST, namespaceSelector=selector))
    bad = [
        deployment_manifest("orphan", allowed, budget=f"{budget_name}-nosuch"),
        deployment_manifest(
            "odd", allowed, budget=budget_name, annotations={"poolbudget.io/profile": "cobol"}
        ),
        deployment_manifest("outside", elsewhere, budget=budget_name),
        deployment_manifest(
            "typo", allowed, budget=budget_name, annotations={"poolbudget.io/processes": "lots"}
        ),
    ]
    kube.apply(*bad)
    before = {(d["metadata"]["namespace"], d["metadata"]["name"]): kube.get("deployment", d["metadata"]["name"],
              d["metadata"]["namespace"]) for d in bad}  # fmt: skip
    # A good one beside them: once it is sized, the operator has had a round over all of them.
    kube.apply(deployment_manifest("good", allowed, budget=budget_name, replicas=1))
    with operator_on(kube, tmp_path) as operator:
        wait_for(lambda: "DB_POOL_SIZE" in template_env(kube.get("deployment", "good", allowed) or {}), timeout=60,
                 message=lambda: f"the good Deployment sized\n{operator.log()}")  # fmt: skip
        found = wait_for(lambda: (w := [warning(kube, allowed, "orphan", "UnknownBudget"),
                                        warning(kube, allowed, "odd", "Refused"),
                                        warning(kube, elsewhere, "outside", "Refused"),
                                        warning(kube, allowed, "typo", "Refused")]) and all(w) and w,
                         timeout=60, message="a Warning on every bad Deployment")  # fmt: skip
        assert "nosuch" in found[0]
        assert "unknown profile 'cobol'" in found[1]
        assert f"'{elsewhere}' is not selected" in found[2]
        assert "annotation poolbudget.io/processes" in found[3]
        status = (kube.get("poolbudget", budget_name) or {})["status"]
        assert [a["name"] for a in status["allocations"]] == ["good"]
    for (namespace, name), original in before.items():
        now = kube.get("deployment", name, namespace) or {}
        assert original is not None
        assert now["metadata"]["generation"] == original["metadata"]["generation"], f"{name} was changed"
        assert now["spec"] == original["spec"]


@pytest.mark.postgres
def test_database_down_keeps_the_last_limits_and_allows_no_increase(
    kube: KubeCluster, budget_name: str, namespaces: Callable[[str], str], tmp_path: Path
) -> None:
    server = PostgresServer.start_new(40)  # its own: this test stops it
    try:
        _database_down(kube, budget_name, namespaces("db"), tmp_path, server)
    finally:
        server.stop()


def _database_down(
    kube: KubeCluster, budget_name: str, ns: str, tmp_path: Path, server: PostgresServer
) -> None:
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": budget_name, "namespace": ns},
              "data": {"url": base64.b64encode(server.url().encode()).decode()}}  # fmt: skip
    database: dict[str, Any] = {
        "connectionSecretRef": {"name": budget_name, "namespace": ns},
        "refreshSeconds": 5,
    }
    kube.apply(secret, budget_manifest(budget_name, database=database, rebalance=FAST))
    kube.apply(
        deployment_manifest("a", ns, budget=budget_name), deployment_manifest("b", ns, budget=budget_name)
    )

    def per_process(name: str) -> int:
        env = template_env(kube.get("deployment", name, ns) or {})
        return int(env.get("DB_POOL_SIZE") or 0) + int(env.get("DB_MAX_OVERFLOW") or 0)

    with operator_on(kube, tmp_path) as operator:
        wait_for(lambda: condition(kube, budget_name, "DatabaseReachable").get("status") == "True"
                 and per_process("a") > 0, timeout=60, message=lambda: f"limits read\n{operator.log()}")  # fmt: skip
        status = (kube.get("poolbudget", budget_name) or {})["status"]
        assert (status["maxConnections"], status["available"], status["limitsSource"]) == (40, 37, "database")
        sized = per_process("a")

        server.stop()
        wait_for(lambda: condition(kube, budget_name, "DatabaseReachable").get("status") == "False", timeout=60,
                 message="DatabaseReachable=False")  # fmt: skip
        reachable = condition(kube, budget_name, "DatabaseReachable")
        assert "only decreases" in reachable["message"]
        assert "last known limits" in reachable["message"]

        rounds = operator.rounds(budget_name)
        kube.kubectl("scale", "deployment/b", "-n", ns, "--replicas=0")  # a would get b's share: not now
        wait_for(
            lambda: operator.rounds(budget_name) >= rounds + 2,
            timeout=60,
            message="two rounds after the scale",
        )
        assert per_process("a") == sized
        kube.kubectl("scale", "deployment/a", "-n", ns, "--replicas=8")  # a must shrink: decreases still go
        wait_for(lambda: per_process("a") < sized, timeout=60, message="a shrinking with the database down")

        texts = [
            operator.log(),
            json.dumps(kube.get("poolbudget", budget_name)),
            kube.kubectl("get", "events", "-A").stdout,
        ]
        assert not [t for t in texts if server.password in t], "the database password leaked"
