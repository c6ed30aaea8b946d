"""Live delivery with real pools: the operator on the real control plane, a real PostgreSQL that refuses
connections past its limit, and real app processes in every kwok pod (``tests/kube/pod_process_stand_in.py``,
since kwok runs no containers): psycopg_pool sync and async, and SQLAlchemy, through ``poolbudget_client``.

The apps connect as a plain role, so PostgreSQL refuses them at ``max_connections - superuser_reserved``:
a refusal is a breach of the budget. Each pool is kept saturated, so every allotment is used to its last
connection.
"""

from __future__ import annotations

import base64
import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.kube.fixtures import KubeCluster, wait_for
from tests.kube.operator import condition, operator_on
from tests.kube.pod_process_stand_in import PodProcessStandIn
from tests.operator_harness import budget_manifest, deployment_manifest
from tests.pg import PostgresServer

pytestmark = [pytest.mark.kube, pytest.mark.postgres, pytest.mark.timeout(400)]

MAX_CONNECTIONS = 50
APP_USER, APP_PASSWORD = "liveapp", "liveapp-Pa55-k8s"


@pytest.fixture(scope="module")
def database() -> Iterator[PostgresServer]:
    server = PostgresServer.start_new(MAX_CONNECTIONS)
    try:
        server.create_role(APP_USER, password=APP_PASSWORD)
        yield server
    finally:
        server.stop()


def app(name: str, ns: str, budget: str, kind: str, *, replicas: int, workers: int = 1) -> dict[str, Any]:
    profile = "sqlalchemy" if kind in ("sqlalchemy", "no-helper") else "psycopg-pool"
    manifest = deployment_manifest(
        name, ns, budget=budget, replicas=replicas,
        annotations={"poolbudget.io/profile": profile, "poolbudget.io/max-connections": "40"},
        env=[
            {"name": "STAND_IN_APP", "value": kind},
            {"name": "WEB_CONCURRENCY", "value": str(workers)},
            {"name": "POOLBUDGET_FIRST_WAIT_SECONDS", "value": "1"},
        ],
    )  # fmt: skip
    manifest["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = 2
    return manifest


class Backends(threading.Thread):
    """The apps' backends in pg_stat_activity, every 0.1 s: the most seen at once."""

    def __init__(self, server: PostgresServer) -> None:
        super().__init__(daemon=True)
        self.server = server
        self.peak = 0
        self.samples = 0
        self._done = threading.Event()

    def run(self) -> None:
        with psycopg.connect(self.server.superuser_conninfo(), autocommit=True) as conn:
            while not self._done.wait(0.1):
                (n,) = conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE usename = %s", (APP_USER,)
                ).fetchone()  # type: ignore[misc]
                self.peak = max(self.peak, int(n))
                self.samples += 1

    def __enter__(self) -> Backends:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._done.set()
        self.join(5)


@contextlib.contextmanager
def live_world(
    kube: KubeCluster, database: PostgresServer, ns: str, budget: str, tmp_path: Path, **delivery: Any
) -> Iterator[tuple[PodProcessStandIn, Any]]:
    """The budget (live, reading the real database), the stand-in for the namespace's pods, the operator."""
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": budget, "namespace": ns},
              "data": {"url": base64.b64encode(database.url().encode()).decode()}}  # fmt: skip
    spec = {
        "database": {"connectionSecretRef": {"name": budget, "namespace": ns}, "refreshSeconds": 5},
        "reserved": 2,  # this test's sampling connection, and the operator's own reads
        "unmanaged": {"margin": 0},
        "rebalance": {"debounceSeconds": 0.2, "minIntervalSeconds": 0},
        "delivery": {"mode": "live", **delivery},
    }
    kube.apply(secret, budget_manifest(budget, **spec))
    url = database.url(user=APP_USER, password=APP_PASSWORD)
    with (
        PodProcessStandIn(kube.kubeconfig, ns, url, tmp_path / "pods") as stand_in,
        operator_on(kube, tmp_path) as operator,
    ):
        yield stand_in, operator


def available(kube: KubeCluster, budget: str) -> int:
    return int(((kube.get("poolbudget", budget) or {}).get("status") or {}).get("available") or 0)


def allotted(kube: KubeCluster, budget: str, stand_in: PodProcessStandIn) -> int:
    """What the running processes' pools may open now, plus the floor the operator keeps for pods to come."""
    status = (kube.get("poolbudget", budget) or {}).get("status") or {}
    return sum(total for _, total in stand_in.limits()) + int(status.get("liveHeld") or 0)


def all_confirmed(kube: KubeCluster, budget: str, stand_in: PodProcessStandIn, pods: int) -> bool:
    status = (kube.get("poolbudget", budget) or {}).get("status") or {}
    confirmed = sum(a.get("confirmedPods") or 0 for a in status.get("allocations") or [])
    return (
        confirmed == pods
        and len(stand_in.pods()) == pods
        and condition(kube, budget, "AllotmentsConfirmed").get("status") == "True"
    )


def test_live_pools_follow_scale_events_with_no_restart_and_no_refusal(
    kube: KubeCluster, database: PostgresServer, budget_name: str, namespaces: Callable[[str], str],
    tmp_path: Path,
) -> None:  # fmt: skip
    ns = namespaces("live-apps")
    with (
        Backends(database) as backends,
        live_world(kube, database, ns, budget_name, tmp_path) as (stand_in, op),
    ):
        kube.apply(
            app("alchemy", ns, budget_name, "sqlalchemy", replicas=2, workers=2),
            app("sync", ns, budget_name, "psycopg-sync", replicas=1, workers=2),
            app("async", ns, budget_name, "psycopg-async", replicas=1),
        )
        wait_for(lambda: all_confirmed(kube, budget_name, stand_in, 4), timeout=120,
                 message=lambda: f"every pod confirmed\n{op.log()}")  # fmt: skip
        starts = dict(stand_in.process_starts)
        room = available(kube, budget_name)
        used = allotted(kube, budget_name, stand_in)
        assert 0.98 * room <= used <= room

        # Scale up: every pool of the old pods shrinks, the new ones grow once that is confirmed.
        event = time.monotonic()
        kube.kubectl("scale", "deployment/alchemy", "-n", ns, "--replicas=4")
        wait_for(lambda: all_confirmed(kube, budget_name, stand_in, 6)
                 and allotted(kube, budget_name, stand_in) >= 0.98 * room, timeout=60,
                 message=lambda: f"scaled up, {allotted(kube, budget_name, stand_in)} of {room}\n{op.log()}")  # fmt: skip
        settled_in = time.monotonic() - event
        assert allotted(kube, budget_name, stand_in) <= room

        # Scale down: the room the gone pods held goes back to the others, without a restart.
        kube.kubectl("scale", "deployment/alchemy", "-n", ns, "--replicas=1")
        wait_for(lambda: all_confirmed(kube, budget_name, stand_in, 3), timeout=60,
                 message=lambda: f"scaled down and confirmed\n{op.log()}")  # fmt: skip
        wait_for(lambda: allotted(kube, budget_name, stand_in) >= 0.98 * room, timeout=30,
                 message=lambda: f"room given back: {allotted(kube, budget_name, stand_in)} of {room}")  # fmt: skip
        restarted = {p: n for p, n in stand_in.process_starts.items() if p in starts and n != starts[p]}
        assert restarted == {}, "no process was restarted by the operator"
    print(
        f"\nlive: scale-up settled and confirmed in {settled_in:.1f} s; peak {backends.peak} backends of {room}"
    )
    assert stand_in.refusals == []
    assert backends.peak <= room


def test_a_process_killed_mid_shrink_and_a_pod_that_never_confirms(
    kube: KubeCluster, database: PostgresServer, budget_name: str, namespaces: Callable[[str], str],
    tmp_path: Path,
) -> None:  # fmt: skip
    ns = namespaces("live-faults")
    with (
        Backends(database) as backends,
        live_world(kube, database, ns, budget_name, tmp_path, confirmTimeoutSeconds=5) as (stand_in, op),
    ):
        kube.apply(
            app("a", ns, budget_name, "sqlalchemy", replicas=1, workers=2),
            app("b", ns, budget_name, "psycopg-sync", replicas=1, workers=2),
        )
        room = available(kube, budget_name)
        # Pods of 2 processes grow in steps of 2: one connection may stay unused.
        wait_for(lambda: all_confirmed(kube, budget_name, stand_in, 2)
                 and allotted(kube, budget_name, stand_in) >= room - 1, timeout=120,
                 message=lambda: f"confirmed: {allotted(kube, budget_name, stand_in)} of {room}, "
                 f"{list(stand_in.limits())}, {condition(kube, budget_name, 'AllotmentsConfirmed')}")  # fmt: skip
        (pod_a,) = [p for p in stand_in.pods() if p.startswith("a-")]
        (pod_b,) = [p for p in stand_in.pods() if p.startswith("b-")]
        before = {p: sum(t for q, t in stand_in.limits() if q == p) for p in (pod_a, pod_b)}

        # b never confirms its shrink (frozen: it holds its connections, applies nothing); a worker of a is
        # killed as the shrink reaches it, and a new one starts in its place.
        stand_in.freeze(pod_b)
        kube.kubectl("scale", "deployment/a", "-n", ns, "--replicas=2")
        stand_in.kill_process(pod_a, 0)
        wait_for(lambda: condition(kube, budget_name, "AllotmentsConfirmed").get("reason") == "Unconfirmed",
                 timeout=60, message=lambda: f"b reported\n{op.log()}")  # fmt: skip
        assert pod_b in condition(kube, budget_name, "AllotmentsConfirmed")["message"]
        events = [e for e in kube.list("events", ns) if e.get("reason") == "NotConfirmed"]
        assert any(pod_b in e["message"] for e in events)
        # Counted at its old size meanwhile: the new pod of a has not grown into b's room.
        assert backends.peak <= room

        stand_in.freeze(pod_b, frozen=False)
        wait_for(lambda: all_confirmed(kube, budget_name, stand_in, 3), timeout=60,
                 message=lambda: f"all confirmed once b applies\n{op.log()}")  # fmt: skip
        after = sum(t for q, t in stand_in.limits() if q == pod_b)
        assert after < before[pod_b]
    assert stand_in.refusals == []
    assert backends.peak <= room


def test_an_app_without_the_helper_falls_back_to_env_and_nothing_breaks(
    kube: KubeCluster, database: PostgresServer, budget_name: str, namespaces: Callable[[str], str],
    tmp_path: Path,
) -> None:  # fmt: skip
    """Its pods run real pools sized by the floor env and never tag a connection: it goes back to env once
    (one rollout, an event), while a helper app beside it stays live."""
    ns = namespaces("live-nohelper")
    with (
        Backends(database) as backends,
        live_world(kube, database, ns, budget_name, tmp_path, confirmTimeoutSeconds=5) as (stand_in, op),
    ):
        kube.apply(
            app("plain", ns, budget_name, "no-helper", replicas=1, workers=2),
            app("alchemy", ns, budget_name, "sqlalchemy", replicas=1, workers=2),
        )
        wait_for(lambda: [e for e in kube.list("events", ns) if e.get("reason") == "LiveFallback"], timeout=90,
                 message=lambda: f"plain fell back\n{op.log()}")  # fmt: skip

        def plain_on_env() -> bool:
            d = kube.get("deployment", "plain", ns) or {}
            env = {e["name"]: e.get("value") for e in d["spec"]["template"]["spec"]["containers"][0]["env"]}
            return "POOLBUDGET_ALLOTMENT_FILE" not in env and int(env.get("DB_POOL_SIZE") or 0) > 1

        wait_for(plain_on_env, timeout=60, message=lambda: f"plain sized by env\n{op.log()}")
        room = available(kube, budget_name)
        alchemy = (kube.get("deployment", "alchemy", ns) or {})["spec"]["template"]["metadata"]["annotations"]
        assert alchemy["poolbudget.io/delivery"] == "live"
    assert stand_in.refusals == []
    assert backends.peak <= room
