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
from dataclasses import dataclass
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

    def since_now(self) -> None:
        """Forget the peak so far: before the operator sized the first pods, they ran the apps' own defaults
        (SQLAlchemy's 5 + 10 per process), which nothing but the operator's first rollout bounds."""
        self.peak = 0

    def __enter__(self) -> Backends:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._done.set()
        self.join(5)


@dataclass
class World:
    """One test's budget, the stand-in running its pods, the operator, and the backends sampled."""

    kube: KubeCluster
    budget: str
    stand_in: PodProcessStandIn
    operator: Any
    backends: Backends

    def status(self) -> dict[str, Any]:
        return dict((self.kube.get("poolbudget", self.budget) or {}).get("status") or {})

    def available(self) -> int:
        return int(self.status().get("available") or 0)

    def allotted(self) -> int:
        """What the running processes' pools may open now, plus the floor the operator keeps for pods to come."""
        return sum(total for _, total in self.stand_in.limits()) + int(self.status().get("liveHeld") or 0)

    def confirmed(self, pods: int) -> bool:
        """``pods`` pods run, and every one of them confirmed its allotment."""
        allocations = self.status().get("allocations") or []
        return (
            sum(a.get("confirmedPods") or 0 for a in allocations) == pods
            and len(self.stand_in.pods()) == pods
            and self.condition()["status"] == "True"
        )

    def condition(self) -> dict[str, Any]:
        return condition(self.kube, self.budget, "AllotmentsConfirmed") or {"status": None}

    def settle(self, pods: int, at_least: float = 0, timeout: float = 60) -> None:
        """Wait until ``pods`` pods confirmed and at least ``at_least`` connections are allotted."""
        wait_for(lambda: self.confirmed(pods) and self.allotted() >= at_least, timeout=timeout,
                 message=lambda: f"{pods} pods confirmed, {self.allotted()} >= {at_least} allotted: "
                 f"{list(self.stand_in.limits())}, {self.condition()}\n{self.operator.log()}")  # fmt: skip


@contextlib.contextmanager
def live_world(
    kube: KubeCluster, database: PostgresServer, ns: str, budget: str, tmp_path: Path, **delivery: Any
) -> Iterator[World]:
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
        Backends(database) as backends,
        PodProcessStandIn(kube.kubeconfig, ns, url, tmp_path / "pods") as stand_in,
        operator_on(kube, tmp_path) as operator,
    ):
        yield World(kube, budget, stand_in, operator, backends)


def test_live_pools_follow_scale_events_with_no_restart_and_no_refusal(
    kube: KubeCluster, database: PostgresServer, budget_name: str, namespaces: Callable[[str], str],
    tmp_path: Path,
) -> None:  # fmt: skip
    ns = namespaces("live-apps")
    with live_world(kube, database, ns, budget_name, tmp_path) as world:
        kube.apply(
            app("alchemy", ns, budget_name, "sqlalchemy", replicas=2, workers=2),
            app("sync", ns, budget_name, "psycopg-sync", replicas=1, workers=2),
            app("async", ns, budget_name, "psycopg-async", replicas=1),
        )
        world.settle(4, timeout=120)
        world.backends.since_now()
        starts = dict(world.stand_in.process_starts)
        room = world.available()
        assert 0.98 * room <= world.allotted() <= room

        # Scale up: every pool of the old pods shrinks, the new ones grow once that is confirmed.
        event = time.monotonic()
        kube.kubectl("scale", "deployment/alchemy", "-n", ns, "--replicas=4")
        world.settle(6, at_least=0.98 * room)
        settled_in = time.monotonic() - event
        assert world.allotted() <= room

        # Scale down: the room the gone pods held goes back to the others, without a restart.
        kube.kubectl("scale", "deployment/alchemy", "-n", ns, "--replicas=1")
        world.settle(3, at_least=0.98 * room)
        restarted = {p: n for p, n in world.stand_in.process_starts.items() if p in starts and n != starts[p]}
        assert restarted == {}, "no process was restarted by the operator"
    peak = world.backends.peak
    print(f"\nlive: scale-up settled and confirmed in {settled_in:.1f} s; peak {peak} backends of {room}")
    assert world.stand_in.refusals == []
    assert peak <= room


def test_a_process_killed_mid_shrink_and_a_pod_that_never_confirms(
    kube: KubeCluster, database: PostgresServer, budget_name: str, namespaces: Callable[[str], str],
    tmp_path: Path,
) -> None:  # fmt: skip
    ns = namespaces("live-faults")
    with live_world(kube, database, ns, budget_name, tmp_path, confirmTimeoutSeconds=5) as world:
        stand_in = world.stand_in
        kube.apply(
            app("a", ns, budget_name, "sqlalchemy", replicas=1, workers=2),
            app("b", ns, budget_name, "psycopg-sync", replicas=1, workers=2),
        )
        room = world.available()
        world.settle(2, at_least=room - 1, timeout=120)  # pods of 2 processes grow in steps of 2
        world.backends.since_now()
        (pod_a,) = [p for p in stand_in.pods() if p.startswith("a-")]
        (pod_b,) = [p for p in stand_in.pods() if p.startswith("b-")]
        before = sum(t for q, t in stand_in.limits() if q == pod_b)

        # b never confirms its shrink (frozen: it holds its connections, applies nothing); a worker of a is
        # killed as the shrink reaches it, and a new one starts in its place.
        stand_in.freeze(pod_b)
        kube.kubectl("scale", "deployment/a", "-n", ns, "--replicas=2")
        stand_in.kill_process(pod_a, 0)
        wait_for(lambda: world.condition().get("reason") == "Unconfirmed", timeout=60,
                 message=lambda: f"b reported\n{world.operator.log()}")  # fmt: skip
        assert pod_b in world.condition()["message"]
        events = [e for e in kube.list("events", ns) if e.get("reason") == "NotConfirmed"]
        assert any(pod_b in e["message"] for e in events)
        # Counted at its old size meanwhile: the new pod of a has not grown into b's room.
        assert world.backends.peak <= room

        stand_in.freeze(pod_b, frozen=False)
        world.settle(3)
        assert sum(t for q, t in stand_in.limits() if q == pod_b) < before
    assert stand_in.refusals == []
    assert world.backends.peak <= room


def test_an_app_without_the_helper_falls_back_to_env_and_nothing_breaks(
    kube: KubeCluster, database: PostgresServer, budget_name: str, namespaces: Callable[[str], str],
    tmp_path: Path,
) -> None:  # fmt: skip
    """Its pods run real pools sized by the floor env and never tag a connection: it goes back to env once
    (one rollout, an event), while a helper app beside it stays live."""
    ns = namespaces("live-nohelper")
    with live_world(kube, database, ns, budget_name, tmp_path, confirmTimeoutSeconds=5) as world:
        kube.apply(
            app("plain", ns, budget_name, "no-helper", replicas=1, workers=2),
            app("alchemy", ns, budget_name, "sqlalchemy", replicas=1, workers=2),
        )
        wait_for(lambda: [e for e in kube.list("events", ns) if e.get("reason") == "LiveFallback"], timeout=90,
                 message=lambda: f"plain fell back\n{world.operator.log()}")  # fmt: skip
        world.backends.since_now()  # from here on, every pod was started from a template the operator wrote

        def plain_on_env() -> bool:
            d = kube.get("deployment", "plain", ns) or {}
            env = {e["name"]: e.get("value") for e in d["spec"]["template"]["spec"]["containers"][0]["env"]}
            return "POOLBUDGET_ALLOTMENT_FILE" not in env and int(env.get("DB_POOL_SIZE") or 0) > 1

        wait_for(plain_on_env, timeout=60, message=lambda: f"plain sized by env\n{world.operator.log()}")
        room = world.available()
        alchemy = (kube.get("deployment", "alchemy", ns) or {})["spec"]["template"]["metadata"]["annotations"]
        assert alchemy["poolbudget.io/delivery"] == "live"
    assert world.stand_in.refusals == []
    assert world.backends.peak <= room
