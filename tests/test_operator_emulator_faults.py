"""Faults, with the real operator against the Kubernetes API emulator (a test double) and a real PostgreSQL:
the database going away, and the operator restarting."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from tests.emulator.store import WriteRecord
from tests.operator_harness import (
    FAST,
    KubernetesEmulator,
    OperatorProcess,
    answered_spec_change,
    apply,
    budget_manifest,
    budget_status,
    condition,
    container_env,
    deployment_manifest,
    events,
    events_about,
    running,
    settled,
    stamp_changes,
    wait_for_rounds,
    wait_until,
)
from tests.pg import PostgresServer

pytestmark = [pytest.mark.emulator, pytest.mark.timeout(120)]


def per_process(cluster: KubernetesEmulator, name: str) -> int:
    env = container_env(cluster, name)
    return int(env.get("DB_POOL_SIZE") or 0) + int(env.get("DB_MAX_OVERFLOW") or 0)


@pytest.mark.postgres
def test_database_down_keeps_the_last_limits_and_allows_no_increase(
    cluster: KubernetesEmulator, tmp_path: Path
) -> None:
    server = PostgresServer.start_new(40)
    try:
        cluster.create(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "main-db", "namespace": "default"},
                "data": {"url": base64.b64encode(server.url().encode()).decode()},
            }
        )
        database = {"connectionSecretRef": {"name": "main-db"}, "refreshSeconds": 5}
        # No other client is connected: `unmanaged` is the margin alone (the operator's own reads never count).
        apply(
            cluster,
            budget_manifest(database=database, rebalance=FAST, unmanaged={"subtract": True, "margin": 3}),
        )
        apply(cluster, deployment_manifest("a"), deployment_manifest("b"))
        with running(OperatorProcess(cluster, tmp_path)) as operator:
            wait_until(lambda: condition(cluster, "DatabaseReachable").get("status") == "True", timeout=15)
            status = budget_status(cluster)
            assert (status["maxConnections"], status["available"], status["limitsSource"]) == (
                40,
                34,
                "database",
            )
            assert "- 3 unmanaged" in status["availableReason"]
            wait_until(
                lambda: settled(cluster, "a", "b") and "PGAPPNAME" in container_env(cluster, "a"), timeout=15
            )
            sized = per_process(cluster, "a")

            server.stop()
            wait_until(lambda: condition(cluster, "DatabaseReachable").get("status") == "False", timeout=15)
            reachable = condition(cluster, "DatabaseReachable")
            assert "only decreases" in reachable["message"]
            assert "last known limits" in reachable["message"]
            assert budget_status(cluster)["available"] == 34  # kept

            mark = cluster.mark()
            cluster.kubectl("scale", "deployment/b", "--replicas=0")  # a would get b's share
            rounds = operator.rounds("main")
            wait_for_rounds(operator, "main", rounds + 2)
            assert per_process(cluster, "a") == sized
            changes = stamp_changes(cluster, since=mark)
            assert all(
                after is not None and before is not None and after < before for _, before, after in changes
            )
            assert "a" not in [name for name, _, _ in changes]
            assert condition(cluster, "Ready")["status"] == "False"

            cluster.kubectl("scale", "deployment/a", "--replicas=6")  # a must shrink: decreases still go
            wait_until(lambda: per_process(cluster, "a") < sized, timeout=10, message="a shrinking")

            secrets = (server.password, "Secret-7f3a")
            texts = [operator.log(), str(budget_status(cluster)), str(events(cluster))]
            assert not [s for s in secrets for t in texts if s in t], "the database password leaked"
    finally:
        server.stop()


def test_a_restarted_operator_converges_without_a_single_write(
    cluster: KubernetesEmulator, tmp_path: Path
) -> None:
    apply(cluster, budget_manifest(max_connections=80, reserved=5, rebalance=FAST))
    apply(cluster, deployment_manifest("a"), deployment_manifest("b", replicas=3), deployment_manifest("c"))
    with running(OperatorProcess(cluster, tmp_path, name="first")):
        wait_until(lambda: all("PGAPPNAME" in container_env(cluster, n) for n in "abc"), timeout=10)
        wait_until(
            lambda: settled(cluster, "a", "b", "c") and condition(cluster, "Ready").get("status") == "True",
            timeout=20,
        )
        answered_spec_change(
            cluster
        )  # the first operator has written all it would: it answered a later change
    mark = cluster.mark()
    with running(OperatorProcess(cluster, tmp_path, name="second")) as second:
        wait_for_rounds(second, "main", 1)
        # A later event the second operator must answer: a Deployment opting in with an unknown profile. Its
        # Refused warning comes from a round that saw everything before it, the initial listing's wake-ups included.
        apply(cluster, deployment_manifest("probe", annotations={"poolbudget.io/profile": "cobol"}))
        wait_until(
            lambda: any(e.get("reason") == "Refused" for e in events_about(cluster, "Deployment", "probe")),
            timeout=15,
            message="the probe refused",
        )
    written = [
        (r.actor, r.verb, r.plural, r.name)
        for r in cluster.writes(since=mark, changed_only=True)
        if not r.actor.startswith(("pod-simulator", "kubectl", "test")) and not _about_probe(r)
    ]
    assert written == []


def _about_probe(record: WriteRecord) -> bool:
    """The Refused warnings (on the probe and on the budget) are the answer the test waits for, not news."""
    if record.plural != "events":
        return False
    event = record.object
    about = (event.get("involvedObject") or {}).get("name")
    return about == "probe" or "default/probe" in str(event.get("message", ""))
