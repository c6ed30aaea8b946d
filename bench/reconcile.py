"""How fast the operator reacts: the real operator (``poolbudget run``) against the Kubernetes API emulator.

The emulator (``tests/emulator``, a test double of the API server, with its pod simulator rolling Deployments) holds
one PoolBudget and N opted-in Deployments (default 200, spread over 20 namespaces, 1 to 3 replicas, one budget so
every event re-plans all of them). Then, one at a time, E scale events (default 100): a Deployment gets one more
replica. For each event the bench reads the emulator's write history:

- latency: from the scale write to the operator's last Deployment patch caused by it (events that changed no
  Deployment's settings are counted apart: their plan moved nobody);
- writes: every write the operator made itself (Deployment patches and status writes) until the next event,
  against the bound "Deployments whose settings changed + 1 status write"; kopf's Event posts are counted apart.

Between events the bench waits until the operator has planned the new replica count (the budget's status shows it)
and the rollouts it started have finished, so events do not overlap. Defaults of the budget are kept: debounce
1 s, min interval 300 s (so growth is held back and every change here is a shrink, written at once).

Run: ``python -m bench.reconcile`` (from the repository root) (``--deployments``, ``--events``, ``--json PATH``). It takes a few minutes.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tests.operator_harness import (
    OPERATOR_ACTOR,
    OperatorProcess,
    budget_manifest,
    budget_status,
    deployment_manifest,
    start_cluster,
    wait_until,
)

NAMESPACES = 20


@dataclass
class EventResult:
    deployment: str
    latency: float | None  # seconds from the scale write to the last patch it caused; None: nothing changed
    changed: int  # Deployments whose settings the operator changed
    deployment_writes: int
    status_writes: int
    event_posts: int

    @property
    def writes(self) -> int:
        return self.deployment_writes + self.status_writes


def percentile(values: Sequence[float], share: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(share * (len(ordered) - 1))))
    return ordered[index]


def quiet(cluster: Any, seconds: float) -> bool:
    """No write at all (operator, pods) for ``seconds``: rollouts and rounds are over."""
    history = cluster.history
    return not history or time.time() - history[-1].timestamp >= seconds


def fleet_names(deployments: int) -> list[tuple[str, str]]:
    """The (namespace, name) of each Deployment of the fleet, in creation order."""
    return [(f"team-{i % NAMESPACES:02d}", f"app-{i:03d}") for i in range(deployments)]


def fleet_manifests(deployments: int) -> list[dict[str, Any]]:
    """The bench's PoolBudget and its Deployments (1 to 3 replicas), as created in the emulator."""
    # Sized so that the budget binds: everyone shares, nobody sits at its max.
    manifests = [budget_manifest(max_connections=8 * 3 * deployments, reserved=10)]
    for i, (namespace, name) in enumerate(fleet_names(deployments)):
        manifests.append(deployment_manifest(name, namespace, replicas=1 + i % 3))
    return manifests


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deployments", type=int, default=200)
    parser.add_argument("--events", type=int, default=100)
    parser.add_argument("--json", metavar="PATH", help="also write the numbers here")
    args = parser.parse_args(argv)

    workdir = Path(tempfile.mkdtemp(prefix="poolbudget-bench-"))
    cluster = start_cluster(workdir, start_delay=0.0, termination_delay=0.0)
    operator = OperatorProcess(cluster, workdir, name="bench-operator")
    results: list[EventResult] = []
    try:
        for index in range(NAMESPACES):
            cluster.create_namespace(f"team-{index:02d}")
        names = fleet_names(args.deployments)
        for manifest in fleet_manifests(args.deployments):
            cluster.create(manifest)
        started = time.monotonic()
        operator.start()
        wait_until(
            lambda: budget_status(cluster).get("deploymentCount") == args.deployments and quiet(cluster, 2.0),
            timeout=300,
            interval=0.2,
            message="the first plan applied and rolled out",
        )
        print(f"{args.deployments} Deployments planned and rolled out in {time.monotonic() - started:.1f} s")

        replicas = {key: 1 + i % 3 for i, key in enumerate(names)}
        for event in range(args.events):
            namespace, name = names[(event * 7) % len(names)]
            replicas[(namespace, name)] += 1
            mark = cluster.mark()
            cluster.patch(
                "apps/v1", "deployments", name, {"spec": {"replicas": replicas[(namespace, name)]}}, namespace
            )
            scaled_at = cluster.history[mark].timestamp

            def planned(ns: str = namespace, n: str = name) -> bool:
                allocation = next(
                    (
                        a
                        for a in budget_status(cluster).get("allocations") or []
                        if (a["namespace"], a["name"]) == (ns, n)
                    ),
                    None,
                )
                # peak pods = replicas + 25% surge (rounded up)
                return allocation is not None and allocation["pods"] == replicas[(ns, n)] + -(
                    -replicas[(ns, n)] // 4
                )

            wait_until(planned, timeout=30, interval=0.05, message=f"event {event}: the new replicas planned")
            wait_until(
                lambda: quiet(cluster, 1.5), timeout=60, interval=0.1, message=f"event {event}: settled"
            )
            writes = cluster.writes(since=mark, changed_only=True)
            mine = [r for r in writes if r.actor.startswith(OPERATOR_ACTOR)]
            patches = [r for r in mine if r.plural == "deployments"]
            results.append(
                EventResult(
                    deployment=f"{namespace}/{name}",
                    latency=(max(r.timestamp for r in patches) - scaled_at) if patches else None,
                    changed=len({r.key for r in patches}),
                    deployment_writes=len(patches),
                    status_writes=sum(1 for r in mine if r.plural == "poolbudgets"),
                    event_posts=sum(1 for r in writes if r.plural == "events"),
                )
            )
            last = results[-1]
            print(
                f"event {event:3d} {last.deployment:22s} changed {last.changed:3d} writes {last.writes:3d}"
                f" events {last.event_posts:3d} latency {last.latency if last.latency is None else round(last.latency, 3)}"
            )
    finally:
        operator.stop()
        cluster.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    latencies = [r.latency for r in results if r.latency is not None]
    over_bound = [r for r in results if r.writes > r.changed + 1]
    summary: dict[str, Any] = {
        "deployments": args.deployments,
        "events": len(results),
        "events_that_changed_settings": len(latencies),
        "latency_p50_s": round(percentile(latencies, 0.50), 3) if latencies else None,
        "latency_p99_s": round(percentile(latencies, 0.99), 3) if latencies else None,
        "latency_max_s": round(max(latencies), 3) if latencies else None,
        "changed_per_event_mean": round(statistics.mean(r.changed for r in results), 2),
        "writes_per_event_mean": round(statistics.mean(r.writes for r in results), 2),
        "writes_per_event_max": max(r.writes for r in results),
        "status_writes_per_event_max": max(r.status_writes for r in results),
        "events_over_bound": len(over_bound),
        "event_posts_per_event_mean": round(statistics.mean(r.event_posts for r in results), 2),
        "machine": f"{platform.python_implementation()} {platform.python_version()}, {platform.machine()}",
    }
    print(json.dumps(summary, indent=2))
    if args.json:
        Path(args.json).write_text(
            json.dumps({"summary": summary, "events": [asdict(r) for r in results]}, indent=2)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
