"""Demand from a real Prometheus scraping real ``prometheus_client`` exporters that play pods.

One Prometheus serves the whole module (its first scrape takes ~6 s). The exporters play:

- ``shop/web`` and ``shop/worker`` (2 pods each): load moved from one to the other by the tests;
- ``steady/api`` and ``steady/cron`` (2 pods each): 20 ± 4 and 3 ± 1 in use, jittering from module start to end;
- ``presets/*``: one Deployment per exporter preset, exporting that exporter's metric names;

and the planner is the real one (``plan_for_budget``) fed with :func:`measure_demand`'s demand.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from poolbudget.api.limits import DatabaseLimits
from poolbudget.api.models import PoolBudget
from poolbudget.api.objects import Key
from poolbudget.api.workloads import Deployment
from poolbudget.controller.demand import DemandReading, measure_demand
from poolbudget.planning.budget import BudgetOutcome, plan_for_budget
from poolbudget.planning.demand import DemandState
from tests.prometheus import PodExporter, PrometheusServer, start_pods, start_prometheus, stop_pods

pytestmark = pytest.mark.prometheus

WINDOW = "5s"
LIMITS = DatabaseLimits(max_connections=60)  # 57 available after PostgreSQL's 3 superuser slots
POLL = 0.5  # seconds between two measurements, as a (fast) reconcile loop would
MOVE_TIMEOUT = 20.0  # seconds for a plan to follow the load; it takes a few scrape intervals
OTEL_USED = "db_client_connections_usage"
OTEL_PENDING = "db_client_connections_pending_requests"

WEB, WORKER = ("shop", "web"), ("shop", "worker")
API, CRON = ("steady", "api"), ("steady", "cron")


def deployment(
    key: Key, replicas: int, profile: str | None = None, annotations: dict[str, str] | None = None
) -> Deployment:
    ns, name = key
    notes = {"poolbudget.io/budget": "db", **(annotations or {})}
    if profile:
        notes["poolbudget.io/profile"] = profile
    env = [{"name": "LETTA_DISABLE_SQLALCHEMY_POOLING", "value": "false"}] if profile == "letta" else []
    return Deployment.model_validate(
        {
            "metadata": {"name": name, "namespace": ns, "annotations": notes},
            "spec": {
                "replicas": replicas,
                "strategy": {"type": "Recreate"},  # pods = replicas: the arithmetic below stays readable
                "template": {"spec": {"containers": [{"name": "app", "env": env}]}},
            },
        }
    )


def budget(url: str, **metrics: Any) -> PoolBudget:
    return PoolBudget.model_validate(
        {
            "metadata": {"name": "db"},
            "spec": {
                "database": {"maxConnections": LIMITS.max_connections},
                "defaults": {"minConnectionsPerProcess": 2, "maxConnectionsPerProcess": 30},
                # No interval: these tests look at demand, the transitions' own test covers the interval.
                "rebalance": {"mode": "demand", "minIntervalSeconds": 0},
                "metrics": {"prometheusUrl": url, "window": WINDOW, **metrics},
            },
        }
    )


@dataclass
class World:
    """The module's Prometheus and the pods it scrapes."""

    prometheus: PrometheusServer
    pods: dict[Key, list[PodExporter]]
    scraped_at: float  # monotonic time when every target had been scraped once

    def load(self, key: Key, used: float, pending: float | None = None) -> None:
        """Set every pod of ``key``: ``used`` connections in use and (if given) ``pending`` waiting."""
        for pod in self.pods[key]:
            pod.set(OTEL_USED, used, state="used", pool_name="main")
            if pending is not None:
                pod.set(OTEL_PENDING, pending, pool_name="main")


def _jitter(
    pods: dict[Key, list[PodExporter]], levels: dict[Key, tuple[float, float]], stop: threading.Event
) -> None:
    rng = random.Random(5)  # seeded: a failure replays the same noise
    while not stop.wait(0.2):
        for key, (level, spread) in levels.items():
            for pod in pods[key]:
                pod.set(OTEL_USED, level + rng.uniform(-spread, spread), state="used", pool_name="main")


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    pods: dict[Key, list[PodExporter]] = {
        key: start_pods(*key, count) for key, count in ((WEB, 2), (WORKER, 2), (API, 2), (CRON, 2))
    }
    for key in ("otel", "letta", "psyco", "hikari", "pgexp"):
        pods[("presets", key)] = start_pods("presets", key, 1) if key != "pgexp" else []
    pods[("monitoring", "postgres-exporter")] = start_pods("monitoring", "postgres-exporter", 1)
    _export_presets(pods)
    stop = threading.Event()
    noise = threading.Thread(
        target=_jitter, args=(pods, {API: (20.0, 4.0), CRON: (3.0, 1.0)}, stop), daemon=True
    )
    noise.start()
    every = [pod for group in pods.values() for pod in group]
    server = start_prometheus(every)
    try:
        yield World(server, pods, time.monotonic())
    finally:
        stop.set()
        noise.join(timeout=5)
        server.close()
        stop_pods(every)


def _export_presets(pods: dict[Key, list[PodExporter]]) -> None:
    """Each preset's exporter, with 5 connections in use and 2 requests waiting (7 wanted) where it can say."""
    (otel,) = pods[("presets", "otel")]
    otel.set(OTEL_USED, 5, state="used", pool_name="main")
    otel.set(OTEL_USED, 3, state="idle", pool_name="main")  # idle connections are not demand
    otel.set(OTEL_PENDING, 2, pool_name="main")
    (letta,) = pods[("presets", "letta")]
    letta.set("gauge_db_pool_connections_checked_out_ratio", 5, engine_name="async")
    letta.set("db_pool_waiters_ratio", 2, engine_name="async", pool_mode="queue")
    (psyco,) = pods[("presets", "psyco")]
    psyco.set("psycopg_pool_pool_size", 9, name="pool-1")
    psyco.set("psycopg_pool_pool_available", 4, name="pool-1")
    psyco.set("psycopg_pool_requests_waiting", 2, name="pool-1")
    (hikari,) = pods[("presets", "hikari")]
    hikari.set("hikaricp_connections_active", 5, pool="HikariPool-1")
    hikari.set("hikaricp_connections_pending", 2, pool="HikariPool-1")
    (exporter,) = pods[("monitoring", "postgres-exporter")]
    # postgres_exporter's view of the database: presets/pgexp holds 8 busy connections and 10 idle ones.
    for state, count in (("active", 6), ("idle in transaction", 2), ("idle", 10)):
        exporter.set(
            "pg_stat_activity_count", count, application_name="presets/pgexp", state=state, datname="app"
        )
    exporter.set("pg_stat_activity_count", 40, application_name="someone/else", state="active", datname="app")


def per_process(outcome: BudgetOutcome) -> dict[Key, int]:
    return {a.workload.key: a.per_process for a in outcome.plan.allocations}


async def measure_and_plan(
    pb: PoolBudget, deployments: list[Deployment], state: DemandState
) -> tuple[DemandReading, BudgetOutcome]:
    """One reconcile's worth: who is managed, what they demand, the plan; the invariant checked every time."""
    managed = plan_for_budget(pb, LIMITS, deployments).managed
    reading = await measure_demand(pb.spec, managed, None, state, timeout=3.0)
    outcome = plan_for_budget(pb, LIMITS, deployments, demand=reading.demand or None)
    assert outcome.plan.allocated <= outcome.plan.available, outcome.plan
    return reading, outcome


async def until(
    step: Callable[[], Awaitable[tuple[DemandReading, BudgetOutcome]]],
    done: Callable[[DemandReading, BudgetOutcome], bool],
    limit: float = MOVE_TIMEOUT,
) -> tuple[list[tuple[DemandReading, BudgetOutcome]], float]:
    """Run ``step`` every :data:`POLL` s until ``done``; the readings and the seconds it took, or a failure."""
    started = time.monotonic()
    seen: list[tuple[DemandReading, BudgetOutcome]] = []
    while True:
        reading, outcome = await step()
        seen.append((reading, outcome))
        if done(reading, outcome):
            return seen, time.monotonic() - started
        if time.monotonic() - started > limit:
            last = seen[-1]
            pytest.fail(f"not done within {limit:g}s: {last[0]} {per_process(last[1])}")
        await asyncio.sleep(POLL)


async def test_connections_follow_the_load_and_come_back(world: World) -> None:
    pb = budget(world.prometheus.url)
    deployments = [deployment(WEB, 2), deployment(WORKER, 2)]
    static = per_process(plan_for_budget(pb, LIMITS, deployments))
    assert static == {WEB: 14, WORKER: 14}  # 57 available over 2 x 2 pools: 14 each by weight
    state = DemandState(recovery_successes=2, hold_seconds=0)

    # web saturated (12 in use, 6 waiting per pod), worker idle: web wants 18 per process.
    world.load(WEB, 12, 6)
    world.load(WORKER, 1, 0)
    seen, took = await until(
        lambda: measure_and_plan(pb, deployments, state),
        lambda r, o: r.demand.get(WEB) == 18 and per_process(o)[WEB] > per_process(o)[WORKER],
    )
    reading, outcome = seen[-1]
    assert reading.available
    assert reading.reason == "DemandMeasured"
    assert reading.demand[WEB] == 18
    assert reading.demand[WORKER] == 2  # 1 in use, kept at the minimum
    assert "in use + waiting" in reading.detail[WEB]
    assert per_process(outcome)[WEB] > static[WEB]
    print(f"moved to web in {took:.1f}s: {per_process(outcome)}")

    # The load turns: worker saturated, web idle.
    world.load(WORKER, 12, 6)
    world.load(WEB, 1, 0)
    seen, took = await until(
        lambda: measure_and_plan(pb, deployments, state),
        lambda r, o: r.demand == {WEB: 2, WORKER: 18} and per_process(o)[WORKER] > per_process(o)[WEB],
    )
    reading, outcome = seen[-1]
    assert reading.demand == {WEB: 2, WORKER: 18}
    assert per_process(outcome)[WORKER] > static[WORKER]
    print(f"moved back to worker in {took:.1f}s: {per_process(outcome)}")


async def test_jitter_around_a_steady_level_changes_nothing(world: World) -> None:
    pb = budget(world.prometheus.url)
    deployments = [deployment(API, 2), deployment(CRON, 2)]
    # Let a whole window of jittered samples be scraped, so the first reading sees the steady state.
    await asyncio.sleep(max(0.0, world.scraped_at + 6.0 - time.monotonic()))
    state = DemandState()
    plans, demands = [], []
    for _ in range(12):  # 6 s of readings: a whole window of fresh noise
        reading, outcome = await measure_and_plan(pb, deployments, state)
        assert reading.available, reading
        plans.append(per_process(outcome))
        demands.append(reading.demand)
        await asyncio.sleep(POLL)
    # The noise really was there, in what Prometheus scraped (else this test would prove nothing).
    swing = world.prometheus.query(
        f'max_over_time({OTEL_USED}{{namespace="steady"}}[6s]) - min_over_time({OTEL_USED}{{namespace="steady"}}[6s])'
    )
    assert len(swing) == 4
    # Each series moved by at least a tenth of its jitter's width (a constant would not move at all). A tighter bar
    # flakes: six uniform samples of cron's 3 ± 1 span less than 1.0 about one time in nine (the CI run that found it).
    width = {"api": 8.0, "cron": 2.0}
    assert all(float(s["value"][1]) >= width[s["metric"]["pod"].split("-")[0]] / 10 for s in swing), swing
    assert all(d == demands[0] for d in demands), demands
    assert all(p == plans[0] for p in plans), plans
    assert plans[0][API] > plans[0][CRON]  # and demand did drive the plan


async def test_prometheus_down_falls_back_without_flapping_and_recovers(world: World) -> None:
    pb = budget(world.prometheus.url)
    deployments = [deployment(API, 2), deployment(CRON, 2)]
    static = per_process(plan_for_budget(pb, LIMITS, deployments))
    falls_back = DemandState(recovery_successes=3, hold_seconds=0)
    holds = DemandState(recovery_successes=3, hold_seconds=120)

    def both() -> Awaitable[list[tuple[DemandReading, BudgetOutcome]]]:
        async def run() -> list[tuple[DemandReading, BudgetOutcome]]:
            return [await measure_and_plan(pb, deployments, s) for s in (falls_back, holds)]

        return run()

    (first, measured), (held_first, _) = await both()
    assert first.available
    assert held_first.available
    assert per_process(measured) != static  # demand-driven before the outage

    world.prometheus.stop()
    try:
        for _ in range(4):
            (down, plan_down), (holding, plan_holding) = await both()
            assert not down.available
            assert down.reason == "PrometheusUnreachable"
            assert "static weights" in down.message
            assert down.demand == {}
            assert per_process(plan_down) == static  # fallback: the static plan
            assert not holding.available
            assert holding.reason == "PrometheusUnreachable"
            assert holding.demand == held_first.demand  # a short outage rolls nothing
            assert per_process(plan_holding) == per_process(measured)
            await asyncio.sleep(0.2)
    finally:
        world.prometheus.start()  # same port, same data: as a Prometheus pod that restarted

    reasons: list[tuple[bool, str]] = []
    for _ in range(6):
        (reading, _), _ = await both()
        reasons.append((reading.available, reading.reason))
        await asyncio.sleep(0.2)
    # Three consecutive good reads before demand is used again, then it stays: no flapping either way.
    assert reasons == [(False, "Recovering"), (False, "Recovering")] + [(True, "DemandMeasured")] * 4, reasons
    (_, plan_back), _ = await both()
    assert per_process(plan_back) == per_process(measured)


async def test_every_preset_measures_its_exporter(world: World) -> None:
    pb = budget(world.prometheus.url)
    deployments = [
        deployment(("presets", "otel"), 1),
        deployment(("presets", "letta"), 1, profile="letta"),
        deployment(("presets", "psyco"), 1, profile="psycopg-pool"),
        deployment(("presets", "hikari"), 1, profile="hikari"),
        deployment(
            ("presets", "pgexp"), 2, annotations={"poolbudget.io/demand-query": "preset:postgres-exporter"}
        ),
    ]
    seen, _ = await until(
        lambda: measure_and_plan(pb, deployments, DemandState()),
        lambda r, o: r.reason == "DemandMeasured",
    )
    reading = seen[-1][0]
    assert reading.demand == {
        ("presets", "otel"): 7,  # 5 used + 2 waiting
        ("presets", "letta"): 7,
        ("presets", "psyco"): 7,  # pool_size 9 - available 4, + 2 waiting
        ("presets", "hikari"): 7,
        ("presets", "pgexp"): 4,  # 8 busy backends over 2 replicas; idle ones are not demand
    }, reading.detail
    assert "profile hikari default (hikaricp)" in reading.detail[("presets", "hikari")]
    assert "preset:postgres-exporter" in reading.detail[("presets", "pgexp")]


async def test_bad_queries_and_missing_data_are_reasons_not_errors(world: World) -> None:
    deployments = [deployment(API, 2), deployment(CRON, 2)]

    broken = budget(world.prometheus.url, query="sum(")
    reading, outcome = await measure_and_plan(broken, deployments, DemandState())
    assert (reading.available, reading.reason, reading.demand) == (False, "QueryFailed", {})
    assert "parse error" in reading.message
    assert per_process(outcome) == per_process(plan_for_budget(broken, LIMITS, deployments))

    empty = budget(world.prometheus.url, query='no_such_metric{namespace="{namespace}"}')
    reading, _ = await measure_and_plan(empty, deployments, DemandState())
    assert (reading.available, reading.reason, reading.demand) == (False, "NoData", {})

    # One Deployment's annotation is wrong: the other is still measured, and status says which and why.
    typo = [
        deployment(API, 2, annotations={"poolbudget.io/demand-query": 'x{app="{deploy}"}'}),
        deployment(CRON, 2),
    ]
    reading, _ = await measure_and_plan(budget(world.prometheus.url), typo, DemandState())
    assert reading.available
    assert reading.reason == "PartialData"
    assert set(reading.demand) == {CRON}
    assert "{deploy}" in reading.detail[API]

    nowhere = budget("http://127.0.0.1:1")  # nothing listens on port 1
    reading, _ = await measure_and_plan(nowhere, deployments, DemandState())
    assert (reading.available, reading.reason) == (False, "PrometheusUnreachable")
