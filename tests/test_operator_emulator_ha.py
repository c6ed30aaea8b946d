"""Two operator replicas with kopf peering against the Kubernetes API emulator (a test double): one acts, and when
it stops (gracefully, or killed) the other takes over."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.operator_harness import (
    FAST,
    OperatorProcess,
    apply,
    budget_manifest,
    container_env,
    deployment_manifest,
    operator_writes,
    settled,
    start_cluster,
    wait_until,
)

pytestmark = [pytest.mark.emulator, pytest.mark.timeout(120)]


def test_two_replicas_with_peering_one_acts_and_the_other_takes_over(tmp_path: Path) -> None:
    cluster = start_cluster(tmp_path, peering=True)
    active = OperatorProcess(cluster, tmp_path, standalone=False, priority=200, name="active")
    standby = OperatorProcess(cluster, tmp_path, standalone=False, priority=100, name="standby")
    try:
        active.start()
        standby.start()
        # The first replica created the peering object; both keep their record in it.
        wait_until(
            lambda: (
                len(
                    (cluster.get("kopf.dev/v1", "clusterkopfpeerings", "poolbudget") or {}).get("status")
                    or {}
                )
                == 2
            ),
            timeout=15,
            message="both replicas in the peering",
        )
        apply(cluster, budget_manifest(max_connections=60, rebalance=FAST))
        apply(cluster, deployment_manifest("a"), deployment_manifest("b"))
        wait_until(lambda: all("PGAPPNAME" in container_env(cluster, n) for n in "ab"), timeout=10)
        wait_until(lambda: settled(cluster, "a", "b"), timeout=15)
        writers = {r.actor for r in operator_writes(cluster)}
        assert writers == {active.actor}, writers

        active.stop()
        mark = cluster.mark()
        before = container_env(cluster, "a")["DB_POOL_SIZE"]
        cluster.kubectl("scale", "deployment/b", "--replicas=6")
        wait_until(
            lambda: container_env(cluster, "a")["DB_POOL_SIZE"] != before,
            timeout=20,
            message=f"the standby taking over ({standby.log()})",
        )
        writers = {r.actor for r in operator_writes(cluster, since=mark)}
        assert writers == {standby.actor}, writers
    finally:
        standby.stop()
        active.stop()
        cluster.stop()


LIFETIME = 8  # seconds (POOLBUDGET_PEERING_LIFETIME; the chart's default is kopf's 60)


def test_a_killed_replica_is_taken_over_once_its_peering_record_expires(tmp_path: Path) -> None:
    cluster = start_cluster(tmp_path, peering=True)
    lifetime = {"POOLBUDGET_PEERING_LIFETIME": str(LIFETIME)}
    active = OperatorProcess(cluster, tmp_path, standalone=False, priority=200, name="active", env=lifetime)
    standby = OperatorProcess(cluster, tmp_path, standalone=False, priority=100, name="standby", env=lifetime)
    try:
        active.start()
        standby.start()
        apply(cluster, budget_manifest(max_connections=60, rebalance=FAST))
        apply(cluster, deployment_manifest("a"), deployment_manifest("b"))
        wait_until(lambda: all("DB_POOL_SIZE" in container_env(cluster, n) for n in "ab"), timeout=15)
        wait_until(lambda: settled(cluster, "a", "b"), timeout=20)
        assert {r.actor for r in operator_writes(cluster)} == {active.actor}

        active.kill()  # no graceful stop: its record stays in the peering object until it expires
        killed_at = time.monotonic()
        mark = cluster.mark()
        before = container_env(cluster, "a")["DB_POOL_SIZE"]
        cluster.kubectl("scale", "deployment/b", "--replicas=6")
        wait_until(
            lambda: container_env(cluster, "a")["DB_POOL_SIZE"] != before,
            timeout=LIFETIME + 30,
            message=f"the standby taking over after a crash ({standby.log()})",
        )
        took = time.monotonic() - killed_at
        assert {r.actor for r in operator_writes(cluster, since=mark)} == {standby.actor}
        # Not before the killed replica's record expired: until then the standby stays paused. Its last
        # keep-alive came at most 3 s before the kill (kopf renews every lifetime - 5..10 s, at least every 1 s).
        assert took >= LIFETIME - 4, (
            f"took over {took:.1f} s after the kill: its {LIFETIME} s record had not expired"
        )
        print(f"taken over {took:.1f} s after the kill (lifetime {LIFETIME} s)")
    finally:
        standby.stop()
        cluster.stop()
