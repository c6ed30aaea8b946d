"""Even split vs demand-driven split, on a real PostgreSQL with real SQLAlchemy pools.

Two services share one database through the same total connections (what ``poolbudget`` plans for
``max_connections`` = 40: 37 available): ``bench/busy`` and ``bench/quiet``, each 2 pods x 1 process, each
process one SQLAlchemy async engine (``QueuePool`` semantics: ``pool_size`` + ``max_overflow``, ``pool_timeout``).
Requests arrive open-loop (Poisson, seeded) and each holds a connection for ``SELECT pg_sleep(service time)``:
busy offers about 10 connections' worth of load per process, quiet about 1.

1. **Even split**: the real planner in static mode (equal weights) sizes every pool. While that load runs, each
   process exports its pool's state (connections in use, requests waiting) as OpenTelemetry-style gauges from a
   ``prometheus_client`` registry on loopback, and a real Prometheus scrapes them every second.
2. **Demand-driven split**: ``measure_demand`` reads Prometheus (the profile's default query, the window's p95 of
   in use + waiting per process), the real planner turns that demand into pool sizes, and the same load runs again.

For each phase and service: p50/p99 of the wait for a pooled connection (a request that times out counts with
the time it waited), pool timeouts, requests served, and the most client backends PostgreSQL saw at once.

Run: ``python -m bench.demand`` (from the repository root) (``--seconds``, ``--busy-rate``, ``--quiet-rate``, ``--service-ms``, ``--json PATH``).
Loopback only; every loop is bounded by the phase's duration; about a minute in all.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import random
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import sqlalchemy.exc
from sqlalchemy import Engine, create_engine, text

from poolbudget.api.limits import DatabaseLimits
from poolbudget.api.models import PoolBudget
from poolbudget.api.objects import Key
from poolbudget.api.workloads import Deployment
from poolbudget.controller.demand import DemandReading, measure_demand
from poolbudget.planning.budget import plan_for_budget
from poolbudget.planning.demand import DemandState
from poolbudget.planning.plan import Allocation, BudgetPlan
from tests.pg import PostgresServer
from tests.prometheus import PodExporter, start_pods, start_prometheus, stop_pods

MAX_CONNECTIONS = 40
PODS = 2
BUSY: Key = ("bench", "busy")
QUIET: Key = ("bench", "quiet")
WINDOW = "10s"
SAMPLE_EVERY = 0.1  # seconds between two exports of a pool's state
POOL_TIMEOUT = 2  # seconds an app waits for a pooled connection (SQLAlchemy's pool_timeout)
DRAIN_MARGIN = 5.0  # seconds, on top of pool timeout + service time, for in-flight requests to end


@dataclass
class Load:
    rate: float  # requests per second per process
    service: float  # seconds a request holds its connection


@dataclass
class ServiceResult:
    service: str
    per_process: int
    pool_size: int
    max_overflow: int
    requests: int
    timeouts: int
    wait_p50_ms: float
    wait_p99_ms: float
    wait_max_ms: float


@dataclass
class PhaseResult:
    phase: str
    available: int
    allocated: int
    peak_backends: int
    demand: dict[str, int] = field(default_factory=dict)
    services: list[ServiceResult] = field(default_factory=list)


class Process:
    """One app process: a SQLAlchemy engine (QueuePool) sized by the plan, and what it exports about its pool.

    Each request is a thread, as in a threaded web server: it waits in the pool, not in a queue of ours.
    """

    def __init__(
        self, server: PostgresServer, key: Key, allocation: Allocation, exporter: PodExporter
    ) -> None:
        ns, name = key
        # The private Unix socket with trust: connecting costs what it costs an app next to its database.
        url = (
            f"postgresql+psycopg://postgres@/postgres?host={server.socket_dir}&port={server.port}"
            f"&application_name={ns}/{name}"
        )
        self.engine: Engine = create_engine(
            url,
            pool_size=allocation.pool_size,
            max_overflow=allocation.max_overflow,
            pool_timeout=POOL_TIMEOUT,
        )
        self.exporter = exporter
        self.lock = threading.Lock()
        self.waiting = 0
        self.waits: list[float] = []
        self.timeouts = 0

    def export(self) -> None:
        """Publish in-use and waiting as OpenTelemetry's pool metrics (as Prometheus names them)."""
        in_use = self.engine.pool.checkedout()  # type: ignore[attr-defined]
        self.exporter.set("db_client_connections_usage", in_use, state="used", pool_name="main")
        self.exporter.set("db_client_connections_pending_requests", self.waiting, pool_name="main")

    def request(self, service: float, arrived: float) -> None:
        with self.lock:
            self.waiting += 1
        try:
            conn = self.engine.connect()
        except sqlalchemy.exc.TimeoutError:
            with self.lock:
                self.timeouts += 1
                self.waits.append(time.monotonic() - arrived)
            return
        finally:
            with self.lock:
                self.waiting -= 1
        with self.lock:
            self.waits.append(time.monotonic() - arrived)
        with conn:
            conn.execute(text("SELECT pg_sleep(:t)"), {"t": service})


def budget(mode: str, prometheus_url: str = "http://127.0.0.1:1") -> PoolBudget:
    return PoolBudget.model_validate(
        {
            "metadata": {"name": "bench"},
            "spec": {
                "database": {"maxConnections": MAX_CONNECTIONS},
                "defaults": {"minConnectionsPerProcess": 2, "maxConnectionsPerProcess": 30},
                "rebalance": {"mode": mode},
                "metrics": {"prometheusUrl": prometheus_url, "window": WINDOW},
            },
        }
    )


def deployments() -> list[Deployment]:
    return [
        Deployment.model_validate(
            {
                "metadata": {"name": name, "namespace": ns, "annotations": {"poolbudget.io/budget": "bench"}},
                "spec": {
                    "replicas": PODS,
                    "strategy": {"type": "Recreate"},
                    "template": {"spec": {"containers": [{"name": "app"}]}},
                },
            }
        )
        for ns, name in (BUSY, QUIET)
    ]


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (0 for no values)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def arrivals(
    process: Process, load: Load, deadline: float, seed: float, requests: list[threading.Thread]
) -> None:
    """Open-loop Poisson arrivals until ``deadline`` (monotonic): one thread per request."""
    rng = random.Random(seed)
    next_at = time.monotonic()
    while True:
        next_at += rng.expovariate(load.rate)
        if next_at >= deadline:
            return
        time.sleep(max(0.0, next_at - time.monotonic()))
        worker = threading.Thread(target=process.request, args=(load.service, next_at), daemon=True)
        worker.start()
        requests.append(worker)


class Sampler:
    """Every ``SAMPLE_EVERY`` s: each process exports its pool; every 0.2 s: client backends PostgreSQL holds."""

    def __init__(self, server: PostgresServer, processes: list[Process]) -> None:
        self.server = server
        self.processes = processes
        self.stop = threading.Event()
        self.peak_backends = 0
        self.threads = [
            threading.Thread(target=self._export, daemon=True),
            threading.Thread(target=self._count, daemon=True),
        ]

    def __enter__(self) -> Sampler:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=5)

    def _export(self) -> None:
        while not self.stop.wait(SAMPLE_EVERY):
            for process in self.processes:
                process.export()

    def _count(self) -> None:
        sql = (
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE backend_type = 'client backend' AND application_name LIKE 'bench/%'"
        )
        with psycopg.connect(self.server.superuser_conninfo(), autocommit=True) as conn:
            while not self.stop.wait(0.2):
                row = conn.execute(sql).fetchone()
                self.peak_backends = max(self.peak_backends, int(row[0]) if row else 0)


def run_phase(
    name: str,
    server: PostgresServer,
    allocations: dict[Key, Allocation],
    exporters: dict[Key, list[PodExporter]],
    loads: dict[Key, Load],
    seconds: float,
    seed: int,
    measure_after: float | None = None,
    demand_budget: PoolBudget | None = None,
    managed: Any = None,
) -> tuple[dict[Key, list[Process]], int, DemandReading | None]:
    """Run both services' load for ``seconds`` with pools sized by ``allocations``; optionally measure demand."""
    processes = {
        key: [Process(server, key, allocations[key], exporters[key][i]) for i in range(PODS)] for key in loads
    }
    every = [p for group in processes.values() for p in group]
    rng = random.Random(seed)
    requests: list[threading.Thread] = []
    reading = None
    with Sampler(server, every) as sampler:
        deadline = time.monotonic() + seconds
        generators = [
            threading.Thread(
                target=arrivals, args=(p, loads[key], deadline, rng.random(), requests), daemon=True
            )
            for key, group in processes.items()
            for p in group
        ]
        for generator in generators:
            generator.start()
        if measure_after is not None and demand_budget is not None:
            time.sleep(measure_after)
            reading = asyncio.run(measure_demand(demand_budget.spec, managed, None, DemandState(), timeout=5))
        for generator in generators:
            generator.join(timeout=seconds + DRAIN_MARGIN)
        # In-flight requests end within the pool timeout plus their service time: bounded joins.
        drain_by = time.monotonic() + POOL_TIMEOUT + max(x.service for x in loads.values()) + DRAIN_MARGIN
        for worker in list(requests):
            worker.join(timeout=max(0.0, drain_by - time.monotonic()))
    for process in every:
        process.export()  # idle again, for the next phase's first scrapes
        process.engine.dispose()
    print(f"  {name}: done, at most {sampler.peak_backends} client backends", flush=True)
    return processes, sampler.peak_backends, reading


def summarise(
    phase: str,
    processes: dict[Key, list[Process]],
    allocations: dict[Key, Allocation],
    plan: BudgetPlan,
    peak: int,
) -> PhaseResult:
    result = PhaseResult(phase, plan.available, plan.allocated, peak)
    for key, group in processes.items():
        waits = [w for p in group for w in p.waits]
        allocation = allocations[key]
        result.services.append(
            ServiceResult(
                service=key[1],
                per_process=allocation.per_process,
                pool_size=allocation.pool_size,
                max_overflow=allocation.max_overflow,
                requests=len(waits),
                timeouts=sum(p.timeouts for p in group),
                wait_p50_ms=round(1000 * percentile(waits, 0.50), 2),
                wait_p99_ms=round(1000 * percentile(waits, 0.99), 2),
                wait_max_ms=round(1000 * max(waits, default=0.0), 2),
            )
        )
    return result


def run(args: argparse.Namespace) -> dict[str, Any]:
    limits = DatabaseLimits(max_connections=MAX_CONNECTIONS)
    service = args.service_ms / 1000
    loads = {BUSY: Load(args.busy_rate, service), QUIET: Load(args.quiet_rate, service)}
    print(f"PostgreSQL max_connections={MAX_CONNECTIONS}; Prometheus scraping every 1s ...", flush=True)
    server = PostgresServer.start_new(MAX_CONNECTIONS)
    exporters = {key: start_pods(*key, PODS) for key in (BUSY, QUIET)}
    every_exporter = [e for group in exporters.values() for e in group]
    prometheus = None
    try:
        prometheus = start_prometheus(every_exporter)
        static = plan_for_budget(budget("static"), limits, deployments())
        even = {a.workload.key: a for a in static.plan.allocations}
        print("even split per process:", {k[1]: a.per_process for k, a in even.items()}, flush=True)
        demand_budget = budget("demand", prometheus.url)
        # Measure near the end of the even phase: the window then covers the steady state, not the start.
        even_run, even_peak, reading = run_phase(
            "even split",
            server,
            even,
            exporters,
            loads,
            args.seconds,
            args.seed,
            measure_after=args.seconds - 1.0,
            demand_budget=demand_budget,
            managed=static.managed,
        )
        if reading is None or not reading.available:
            raise SystemExit(f"demand not measured: {reading}")
        print("measured demand per process:", {k[1]: v for k, v in reading.demand.items()}, flush=True)
        for key, why in reading.detail.items():
            print(f"  {key[1]}: {why}", flush=True)
        planned = plan_for_budget(demand_budget, limits, deployments(), demand=reading.demand)
        by_demand = {a.workload.key: a for a in planned.plan.allocations}
        print(
            "demand-driven split per process:",
            {k[1]: a.per_process for k, a in by_demand.items()},
            flush=True,
        )
        demand_run, demand_peak, _ = run_phase(
            "demand-driven split", server, by_demand, exporters, loads, args.seconds, args.seed
        )
        phases = [
            summarise("even split", even_run, even, static.plan, even_peak),
            summarise("demand-driven split", demand_run, by_demand, planned.plan, demand_peak),
        ]
        phases[1].demand = {k[1]: v for k, v in reading.demand.items()}
    finally:
        if prometheus is not None:
            prometheus.close()
        stop_pods(every_exporter)
        server.stop()
    return {
        "machine": {"python": platform.python_version(), "platform": platform.platform()},
        "load": {
            "seconds_per_phase": args.seconds,
            "service_ms": args.service_ms,
            "busy_rate_per_process": args.busy_rate,
            "quiet_rate_per_process": args.quiet_rate,
            "processes_per_service": PODS,
            "pool_timeout_s": POOL_TIMEOUT,
        },
        "phases": [asdict(p) for p in phases],
    }


def table(report: dict[str, Any]) -> str:
    lines = [
        "| split | service | per process (pool+overflow) | requests | timeouts | wait p50 ms | wait p99 ms | peak backends |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for phase in report["phases"]:
        for s in phase["services"]:
            lines.append(
                f"| {phase['phase']} | {s['service']} | {s['per_process']} ({s['pool_size']}+{s['max_overflow']})"
                f" | {s['requests']} | {s['timeouts']} | {s['wait_p50_ms']} | {s['wait_p99_ms']}"
                f" | {phase['peak_backends']} of {phase['available']} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--seconds", type=float, default=20.0, help="length of each phase (>= 12: the window)"
    )
    parser.add_argument("--busy-rate", type=float, default=200.0, help="busy requests per second per process")
    parser.add_argument(
        "--quiet-rate", type=float, default=20.0, help="quiet requests per second per process"
    )
    parser.add_argument(
        "--service-ms", type=float, default=50.0, help="milliseconds a request holds a connection"
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", type=Path, help="also write the report as JSON here")
    args = parser.parse_args(argv)
    if args.seconds < 12:
        parser.error("--seconds must be >= 12 so the demand window (10s) sees the load")
    started = time.monotonic()
    report = run(args)
    report["elapsed_s"] = round(time.monotonic() - started, 1)
    print()
    print(table(report))
    even, demand = ({s["service"]: s for s in p["services"]} for p in report["phases"])
    ratio = even["busy"]["wait_p99_ms"] / max(demand["busy"]["wait_p99_ms"], 0.001)
    print(f"\nbusy p99 wait: {ratio:.1f}x lower with demand-driven shares; elapsed {report['elapsed_s']}s")
    report["busy_p99_ratio"] = round(ratio, 1)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
