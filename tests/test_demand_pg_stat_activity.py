"""Zero-instrumentation demand: the operator samples ``pg_stat_activity`` itself, on a real PostgreSQL.

Apps are played by real psycopg connections opened under the ``application_name`` the operator injects
(``PGAPPNAME=<namespace>/<deployment>``); a psql-like session under another name is nobody's demand. A connection
checked out of a pool holds a transaction open (``idle in transaction``, as SQLAlchemy's do) and is in use; one
returned to the pool stays open but ``idle``, and is not.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import psycopg
import pytest

from poolbudget.api.limits import DatabaseLimits
from poolbudget.api.models import PoolBudget
from poolbudget.api.objects import Key
from poolbudget.api.workloads import Deployment
from poolbudget.controller.demand import measure_demand
from poolbudget.planning.budget import plan_for_budget
from poolbudget.planning.demand import DemandState
from tests.pg import PostgresServer

pytestmark = pytest.mark.postgres

WEB, WORKER = ("shop", "web"), ("shop", "worker")
LIMITS = DatabaseLimits(max_connections=40)  # 37 available


def deployment(key: Key, replicas: int) -> Deployment:
    ns, name = key
    return Deployment.model_validate(
        {
            "metadata": {"name": name, "namespace": ns, "annotations": {"poolbudget.io/budget": "db"}},
            "spec": {
                "replicas": replicas,
                "strategy": {"type": "Recreate"},
                "template": {"spec": {"containers": [{"name": "app"}]}},
            },
        }
    )


def budget(window: str = "1m") -> PoolBudget:
    return PoolBudget.model_validate(
        {
            "metadata": {"name": "db"},
            "spec": {
                "database": {"maxConnections": LIMITS.max_connections},
                "defaults": {"minConnectionsPerProcess": 2, "maxConnectionsPerProcess": 30},
                "rebalance": {"mode": "demand", "minIntervalSeconds": 0},
                "metrics": {"pgStatActivity": True, "window": window},
            },
        }
    )


class Apps:
    """Connections held open under application names, as pooled apps hold them."""

    def __init__(self, server: PostgresServer) -> None:
        self.server = server
        self.held: list[psycopg.Connection[tuple[object, ...]]] = []

    def open(self, application_name: str, count: int) -> None:
        """``count`` connections checked out: each in a transaction, as a pool's checked-out connection is."""
        for _ in range(count):
            conn = psycopg.connect(self.server.url(), application_name=application_name, connect_timeout=10)
            conn.execute("SELECT 1")  # opens the transaction, and leaves it open
            self.held.append(conn)

    def release(self) -> None:
        """Every connection back to its pool: still open, now ``idle``."""
        for conn in self.held:
            conn.commit()

    def close(self) -> None:
        for conn in self.held:
            with contextlib.suppress(Exception):
                conn.close()
        self.held.clear()


@pytest.fixture
def apps(pg100: PostgresServer) -> Iterator[Apps]:
    held = Apps(pg100)
    yield held
    held.close()
    pg100.wait_for_backends(lambda n: n == 0, timeout=10)


async def test_backends_are_attributed_by_application_name(pg100: PostgresServer, apps: Apps) -> None:
    apps.open("shop/web", 12)  # 2 replicas x 1 process: 6 per process
    apps.open("shop/worker", 1)
    apps.open("psql", 3)  # someone's session: nobody's demand
    assert pg100.wait_for_backends(lambda n: n == 16) == 16
    pb = budget()
    deployments = [deployment(WEB, 2), deployment(WORKER, 1)]
    managed = plan_for_budget(pb, LIMITS, deployments).managed

    reading = await measure_demand(pb.spec, managed, pg100.url(), DemandState(), timeout=5)

    assert reading.available, reading
    assert reading.reason == "DemandMeasured"
    assert reading.demand == {WEB: 6, WORKER: 2}  # worker: 1 in use, kept at its minimum
    assert "application_name='shop/web'" in reading.detail[WEB]
    outcome = plan_for_budget(pb, LIMITS, deployments, demand=reading.demand)
    assert outcome.plan.allocated <= outcome.plan.available
    levels = {a.workload.key: a.per_process for a in outcome.plan.allocations}
    assert levels[WEB] >= 6


async def test_samples_accumulate_over_the_window(pg100: PostgresServer, apps: Apps) -> None:
    pb = budget(window="1m")
    deployments = [deployment(WEB, 2), deployment(WORKER, 1)]
    managed = plan_for_budget(pb, LIMITS, deployments).managed
    state = DemandState()
    t0 = 1_000_000.0  # readings at chosen instants: the window is the state's, not the wall clock's

    apps.open("shop/web", 4)
    apps.open("shop/worker", 2)
    pg100.wait_for_backends(lambda n: n == 6)
    first = await measure_demand(pb.spec, managed, pg100.url(), state, now=t0)
    assert first.demand == {WEB: 2, WORKER: 2}

    apps.open("shop/web", 16)  # a burst: 20 over 2 replicas
    pg100.wait_for_backends(lambda n: n == 22)
    burst = await measure_demand(pb.spec, managed, pg100.url(), state, now=t0 + 10)
    assert burst.demand[WEB] == 10  # the p95 of (2, 10) per process

    apps.close()
    pg100.wait_for_backends(lambda n: n == 0)
    # The burst is still within the window: demand stays (and the deadband keeps it).
    calm = await measure_demand(pb.spec, managed, pg100.url(), state, now=t0 + 20)
    assert calm.demand[WEB] == 10
    # Once the burst has left the window, demand falls: zero is a measurement for an app seen before.
    later = await measure_demand(pb.spec, managed, pg100.url(), state, now=t0 + 75)
    assert later.available
    assert later.demand == {WEB: 2, WORKER: 2}


async def test_idle_connections_a_pool_keeps_are_not_demand(pg100: PostgresServer, apps: Apps) -> None:
    # A burst checks out 20 connections; the pools then keep them all open, idle. Counting open connections
    # would keep the demand at whatever the pools were given, for ever.
    pb = budget(window="1m")
    deployments = [deployment(WEB, 2), deployment(WORKER, 1)]
    managed = plan_for_budget(pb, LIMITS, deployments).managed
    state = DemandState()
    t0 = 1_000_000.0
    apps.open("shop/web", 20)
    apps.open("shop/worker", 6)
    pg100.wait_for_backends(lambda n: n == 26)
    burst = await measure_demand(pb.spec, managed, pg100.url(), state, now=t0)
    assert burst.demand == {WEB: 10, WORKER: 6}

    apps.release()
    rows = pg100.execute(
        "SELECT state, count(*) FROM pg_stat_activity WHERE application_name LIKE 'shop/%' GROUP BY state"
    )
    assert rows == [("idle", 26)]  # all still open
    later = await measure_demand(pb.spec, managed, pg100.url(), state, now=t0 + 75)
    assert later.available, later
    assert later.demand == {WEB: 2, WORKER: 2}  # the burst left the window; idle is nobody's demand
    assert "(not idle)" in later.detail[WEB]


async def test_an_app_never_seen_has_no_demand_rather_than_zero(pg100: PostgresServer, apps: Apps) -> None:
    # A driver that ignores PGAPPNAME (asyncpg, JDBC) shows up under another name: its Deployment is not idle.
    apps.open("shop/web", 2)
    apps.open("", 5)
    pg100.wait_for_backends(lambda n: n == 7)
    pb = budget()
    managed = plan_for_budget(pb, LIMITS, [deployment(WEB, 2), deployment(WORKER, 1)]).managed
    reading = await measure_demand(pb.spec, managed, pg100.url(), DemandState())
    assert reading.reason == "PartialData"
    assert set(reading.demand) == {WEB}
    assert "no connections ever seen" in reading.detail[WORKER]


async def test_without_a_database_it_says_why(pg100: PostgresServer) -> None:
    pb = budget()
    managed = plan_for_budget(pb, LIMITS, [deployment(WEB, 2)]).managed
    no_url = await measure_demand(pb.spec, managed, None, DemandState())
    assert (no_url.available, no_url.reason, no_url.demand) == (False, "NoDatabaseURL", {})
    down = await measure_demand(
        pb.spec, managed, pg100.url().replace(str(pg100.port), "1"), DemandState(), timeout=3
    )
    assert (down.available, down.reason) == (False, "DatabaseUnreachable")
    assert pg100.password not in down.message
