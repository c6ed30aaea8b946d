"""How fast the planner is: 10 to 10,000 opted-in Deployments through the real planning code.

Two paths are timed, separately:

- ``plan_budget``: the allocation itself, from ``Workload`` values (what the operator re-runs on every event);
- ``plan_for_budget``: the whole path the CLI and the operator take from validated ``Deployment`` models and HPAs
  (annotation parsing, profile resolution, pod and process counting, then ``plan_budget``).

The Deployments are a deterministic, realistic mix: every built-in profile, 1 to 12 replicas, RollingUpdate with
default, integer or percent surge and some Recreate, a third behind an HPA, worker counts, weights, per-Deployment
min/max, and measured demand for some. The database is sized so the budget binds (the fill has real work to do).

Times are the median of several repetitions (``time.perf_counter``); peak memory is measured in a separate run
under ``tracemalloc`` (which slows the code it traces, so it never shares a run with the timing).

Run: ``python -m bench.planner`` (from the repository root) (add ``--check`` to fail when 10,000 Deployments take 100 ms or more in
``plan_budget``, ``--profile`` for a cProfile of the largest case, ``--json PATH`` to keep the numbers).
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import json
import os
import platform
import pstats
import random
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from poolbudget.api.limits import DatabaseLimits
from poolbudget.api.models import PoolBudget
from poolbudget.api.workloads import Deployment, HorizontalPodAutoscaler
from poolbudget.planning.budget import plan_for_budget
from poolbudget.planning.limits import Availability, compute_available
from poolbudget.planning.plan import BudgetPlan, Workload, plan_budget
from poolbudget.planning.sizing import peak_pods

SIZES = (10, 100, 1_000, 10_000)
TARGET_SECONDS = 0.100  # issue 2: 10,000 Deployments in under 100 ms
PROFILES = ("sqlalchemy", "langflow", "letta", "airflow", "hikari", "psycopg-pool")
# What each profile means for the planner: (pools per process, has overflow), as profiles/ declares them.
PROFILE_SHAPE = {
    "sqlalchemy": (1, True),
    "langflow": (1, True),
    "letta": (1, True),
    "airflow": (2, True),
    "hikari": (1, False),
    "psycopg-pool": (1, False),
}
SURGES: tuple[int | str | None, ...] = (None, None, "25%", "50%", 1, 2, 0)
BUDGET_DOC: dict[str, Any] = {
    "apiVersion": "poolbudget.io/v1alpha1",
    "kind": "PoolBudget",
    "metadata": {"name": "bench"},
    "spec": {
        "database": {"maxConnections": 100},
        "reserved": 10,
        "defaults": {"minConnectionsPerProcess": 2, "maxConnectionsPerProcess": 50},
    },
}


@dataclass(frozen=True, slots=True)
class Fleet:
    """One generated set of Deployments, in both shapes the two timed paths take."""

    deployments: list[Deployment]
    hpas: list[HorizontalPodAutoscaler]
    demand: dict[tuple[str, str], int]
    workloads: list[Workload]
    limits: DatabaseLimits
    availability: Availability


@dataclass(frozen=True, slots=True)
class Measurement:
    """The numbers for one path at one size."""

    path: str
    deployments: int
    median_ms: float
    min_ms: float
    cpu_median_ms: float  # process CPU time: less sensitive to other work on the machine than wall time
    repetitions: int
    peak_kib: float
    allocated: int
    available: int
    feasible: bool


def make_fleet(count: int, seed: int = 7) -> Fleet:
    """``count`` Deployments (and their HPAs and demand), deterministic for a seed."""
    rng = random.Random(seed * 1_000_003 + count)
    deployments: list[Deployment] = []
    hpas: list[HorizontalPodAutoscaler] = []
    demand: dict[tuple[str, str], int] = {}
    workloads: list[Workload] = []
    minimum_footprint = 0
    for i in range(count):
        namespace, name = f"team-{i % 37}", f"app-{i}"
        profile = rng.choice(PROFILES)
        replicas = rng.randint(1, 12)
        recreate = rng.random() < 0.15
        surge = None if recreate else rng.choice(SURGES)
        processes = rng.choice((1, 1, 1, 2, 4))
        weight = rng.choice((1, 1, 1, 2, 3))
        low = rng.choice((2, 2, 3, 5))
        high = rng.choice((10, 20, 30, 50))
        hpa_max = rng.randint(replicas + 1, replicas + 10) if rng.random() < 0.33 else None
        measured = rng.randint(1, high + 10) if rng.random() < 0.3 else None

        annotations = {
            "poolbudget.io/budget": "bench",
            "poolbudget.io/profile": profile,
            "poolbudget.io/weight": str(weight),
            "poolbudget.io/min-connections": str(low),
            "poolbudget.io/max-connections": str(high),
        }
        env = [{"name": "WEB_CONCURRENCY", "value": str(processes)}] if processes > 1 else []
        strategy: dict[str, Any] = {"type": "Recreate" if recreate else "RollingUpdate"}
        if surge is not None:
            strategy["rollingUpdate"] = {"maxSurge": surge}
        deployments.append(
            Deployment.model_validate(
                {
                    "metadata": {"name": name, "namespace": namespace, "annotations": annotations},
                    "spec": {
                        "replicas": replicas,
                        "strategy": strategy,
                        "template": {"spec": {"containers": [{"name": "app", "env": env}]}},
                    },
                }
            )
        )
        if hpa_max is not None:
            hpas.append(
                HorizontalPodAutoscaler.model_validate(
                    {
                        "metadata": {"name": name, "namespace": namespace},
                        "spec": {
                            "scaleTargetRef": {"kind": "Deployment", "name": name},
                            "minReplicas": replicas,
                            "maxReplicas": hpa_max,
                        },
                    }
                )
            )
        if measured is not None:
            demand[(namespace, name)] = measured

        pools, overflow = PROFILE_SHAPE[profile]
        pods, pods_reason = peak_pods(replicas, strategy["type"], surge, hpa_max)
        workload = Workload(
            namespace=namespace,
            name=name,
            profile=profile,
            pods=pods,
            processes_per_pod=processes,
            pools_per_process=pools,
            min_per_process=low,
            max_per_process=high,
            weight=weight,
            has_overflow=overflow,
            demand_per_process=measured,
            pods_reason=pods_reason,
            processes_reason="WEB_CONCURRENCY" if processes > 1 else "default",
        )
        workloads.append(workload)
        minimum_footprint += workload.multiplier * low
    # A database where every minimum fits with room to share, but not every max: the fill does real work.
    limits = DatabaseLimits(max_connections=3 * minimum_footprint + 13)
    availability = compute_available(limits, reserved=10)
    return Fleet(deployments, hpas, demand, workloads, limits, availability)


def _fast_path(fleet: Fleet) -> Callable[[], BudgetPlan]:
    return lambda: plan_budget("bench", fleet.availability, fleet.workloads)


def _full_path(fleet: Fleet) -> Callable[[], BudgetPlan]:
    budget = PoolBudget.model_validate(BUDGET_DOC)
    return lambda: (
        plan_for_budget(budget, fleet.limits, fleet.deployments, fleet.hpas, demand=fleet.demand).plan
    )


def _repetitions(count: int) -> int:
    # Enough repetitions for a stable median, bounded so the whole run stays within a minute.
    return max(7, min(201, 20_000 // count))


def measure(path: str, count: int, run: Callable[[], BudgetPlan]) -> Measurement:
    """Median and minimum wall time over repetitions, then peak traced memory of one more run."""
    plan = run()  # warm-up: imports, caches, first allocations
    repetitions = _repetitions(count)
    times: list[float] = []
    cpu: list[float] = []
    for _ in range(repetitions):
        gc.collect()  # don't charge one run for the garbage of the previous one
        start, start_cpu = time.perf_counter(), time.process_time()
        run()
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    gc.collect()
    tracemalloc.start()
    try:
        run()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return Measurement(
        path=path,
        deployments=count,
        median_ms=statistics.median(times) * 1000,
        min_ms=min(times) * 1000,
        cpu_median_ms=statistics.median(cpu) * 1000,
        repetitions=repetitions,
        peak_kib=peak / 1024,
        allocated=plan.allocated,
        available=plan.available,
        feasible=plan.feasible,
    )


def calibration_seconds() -> float:
    """Wall time of ten million trivial loop iterations: how fast this machine runs Python right now
    (about 0.4 s on an idle modern core); scale the numbers by it when comparing runs."""
    start = time.perf_counter()
    total = 0
    for i in range(10_000_000):
        total += i
    return time.perf_counter() - start


def machine() -> dict[str, str]:
    """The facts the numbers depend on, and how busy the machine was."""
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "nproc": str(os.cpu_count()),
        "cpu": model,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "loadavg": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "calibration_s": f"{calibration_seconds():.2f}",
    }


def _settle_heap() -> None:
    gc.collect()


def _report(m: Measurement) -> Measurement:
    print(
        f"{m.path:16} {m.deployments:>6,} Deployments: median {m.median_ms:8.2f} ms, "
        f"min {m.min_ms:8.2f} ms, CPU {m.cpu_median_ms:8.2f} ms, peak {m.peak_kib:9,.0f} KiB "
        f"({m.repetitions} runs)",
        flush=True,
    )
    return m


def markdown(results: list[Measurement]) -> str:
    """The results as the table bench/README.md shows."""
    lines = [
        "| path | Deployments | median (wall) | min (wall) | median (CPU) | peak memory | runs | allocated / available |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for m in results:
        lines.append(
            f"| `{m.path}` | {m.deployments:,} | {m.median_ms:.2f} ms | {m.min_ms:.2f} ms | {m.cpu_median_ms:.2f} ms "
            f"| {m.peak_kib:,.0f} KiB | {m.repetitions} | {m.allocated:,} / {m.available:,} |"
        )
    return "\n".join(lines)


def profile_largest(fleet: Fleet, path: str) -> str:
    """cProfile of one run of the largest case, top entries by cumulative time."""
    run = _fast_path(fleet) if path == "plan_budget" else _full_path(fleet)
    profiler = cProfile.Profile()
    profiler.enable()
    run()
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(15)
    return out.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--check", action="store_true", help="exit 1 if plan_budget misses the target")
    parser.add_argument("--profile", choices=("plan_budget", "plan_for_budget"), help="cProfile the largest")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args(argv)

    facts = machine()
    print(
        f"# {facts['nproc']} CPUs, {facts['cpu']}, {facts['implementation']} {facts['python']}, "
        f"load average {facts['loadavg']}, 10M-iteration loop {facts['calibration_s']} s"
    )
    results: list[Measurement] = []
    for count in args.sizes:
        # plan_budget with only its Workloads alive: the collector's full passes walk every live object, and
        # the Deployment models (built for the other path) would be charged to the planner.
        workloads_only = replace(make_fleet(count), deployments=[], hpas=[])
        _settle_heap()
        results.append(_report(measure("plan_budget", count, _fast_path(workloads_only))))
        if args.profile == "plan_budget" and count == max(args.sizes):
            print(profile_largest(workloads_only, "plan_budget"))
        del workloads_only
    for count in args.sizes:
        fleet = make_fleet(count)
        _settle_heap()
        results.append(_report(measure("plan_for_budget", count, _full_path(fleet))))
        if args.profile == "plan_for_budget" and count == max(args.sizes):
            print(profile_largest(fleet, "plan_for_budget"))
        del fleet
    print()
    print(markdown(results))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps({"machine": facts, "results": [asdict(m) for m in results]}, indent=2) + "\n"
        )
    largest = max((m for m in results if m.path == "plan_budget"), key=lambda m: m.deployments, default=None)
    if args.check and largest is not None and largest.deployments >= 10_000:
        if largest.median_ms >= TARGET_SECONDS * 1000:
            print(
                f"FAIL: plan_budget took {largest.median_ms:.1f} ms for {largest.deployments:,} Deployments"
            )
            return 1
        print(f"OK: plan_budget plans {largest.deployments:,} Deployments in {largest.median_ms:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
