"""Live delivery against env delivery: the same scale trace, on the real control plane, with real pools.

Per mode, a fresh namespace and budget on the real control plane (kube-apiserver, etcd, the real Deployment
controller, kwok nodes), the operator as it ships, a real PostgreSQL (``max_connections`` 60, its own per mode)
and real app processes in every pod (``tests/kube/pod_process_stand_in.py``: SQLAlchemy through
``poolbudget_client``, psycopg_pool sync and async; every pool kept saturated). The apps connect as a plain role,
so PostgreSQL refuses them past ``max_connections - superuser_reserved``.

The trace: opt-in of three Deployments; an HPA-style scale-up of ``api`` 2 -> 4; a scale-down of ``worker``
2 -> 1; an image change of ``events``; a budget change (``reserved`` 2 -> 10); an HPA-style scale-down of
``api`` 4 -> 2. After each event: until it settles (live: every pod confirmed and nothing left to grant; env:
Ready and every rollout done), then 10 s more.

Measured per mode: refusals by PostgreSQL (the apps' own reports), restarts the operator caused (Deployment
revisions beyond opt-in and the trace's own image change), allotted over available 10 s after each event settles
(what every running process's pool may open, plus, live, the floor kept for pods to come), from each event to
every grown pool applied and to every shrink applied. Every 0.25 s: the apps' backends, the pools' limits,
``available``: plotted for both modes.

Run from the repository root: ``python -m bench.live_trace`` (``--json``, ``--plot``). About 6 minutes.
"""

from __future__ import annotations

import argparse
import base64
import json
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from tests.kube.controlplane import ControlPlane, wait_until
from tests.kube.fixtures import KubeCluster, install_crds
from tests.kube.operator import KubeOperator, condition, settled
from tests.kube.pod_process_stand_in import PodProcessStandIn
from tests.operator_harness import budget_manifest, deployment_manifest
from tests.pg import PostgresServer

MAX_CONNECTIONS = 60
APP_USER, APP_PASSWORD = "traceapp", "traceapp-Pa55-live"
HOLD_AFTER = 10.0  # seconds after an event settles at which allotted / available is read
SAMPLE_EVERY = 0.25
APPS = (("api", "sqlalchemy", 2, 2), ("worker", "psycopg-sync", 2, 2), ("events", "psycopg-async", 1, 1))


def app(name: str, ns: str, budget: str, kind: str, replicas: int, workers: int) -> dict[str, Any]:
    profile = "sqlalchemy" if kind == "sqlalchemy" else "psycopg-pool"
    manifest = deployment_manifest(
        name, ns, budget=budget, replicas=replicas, annotations={"poolbudget.io/profile": profile},
        env=[{"name": "STAND_IN_APP", "value": kind}, {"name": "WEB_CONCURRENCY", "value": str(workers)},
             {"name": "POOLBUDGET_FIRST_WAIT_SECONDS", "value": "1"}],
    )  # fmt: skip
    manifest["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = 2
    return manifest


def hpa(name: str, ns: str, low: int, high: int) -> dict[str, Any]:
    return {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
                     "minReplicas": low, "maxReplicas": high,
                     "metrics": [{"type": "Resource", "resource": {"name": "cpu",
                                  "target": {"type": "Utilization", "averageUtilization": 80}}}]}}  # fmt: skip


@dataclass
class Sample:
    t: float
    backends: int
    allotted: int
    available: int


@dataclass
class Trace:
    mode: str
    samples: list[Sample] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    refusals: int = 0
    restarts: int = 0


class World:
    def __init__(self, kube: KubeCluster, mode: str, server: PostgresServer, workdir: Path) -> None:
        self.kube, self.mode, self.server = kube, mode, server
        self.ns = kube.namespace(f"trace-{mode}")
        self.budget = f"trace-{mode}"
        self.stand_in = PodProcessStandIn(
            kube.kubeconfig,
            self.ns,
            server.url(user=APP_USER, password=APP_PASSWORD),
            workdir / f"pods-{mode}",
        )
        self.trace = Trace(mode)
        self._done = threading.Event()
        self._status: dict[str, Any] = {}
        self.started = time.monotonic()

    def status(self) -> dict[str, Any]:
        return dict(((self.kube.get("poolbudget", self.budget) or {}).get("status")) or {})

    def allotted(self, status: dict[str, Any]) -> int:
        return sum(t for _, t in self.stand_in.limits()) + int(status.get("liveHeld") or 0)

    def sample(self) -> None:
        with psycopg.connect(self.server.superuser_conninfo(), autocommit=True) as conn:
            started = self.started
            while not self._done.wait(SAMPLE_EVERY):
                row = conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE usename = %s", (APP_USER,)
                ).fetchone()
                status = self._status
                self.trace.samples.append(
                    Sample(time.monotonic() - started, int(row[0]) if row else 0, self.allotted(status),
                           int(status.get("available") or 0))
                )  # fmt: skip

    def poll_status(self) -> None:
        while not self._done.wait(0.25):
            self._status = self.status()

    def settled(self) -> bool:
        status = self._status = self.status()
        pods = [p for p in self.kube.list("pods", self.ns)]
        if any(p["metadata"].get("deletionTimestamp") for p in pods):
            return False
        if self.mode == "live":
            confirmed = sum(a.get("confirmedPods") or 0 for a in status.get("allocations") or [])
            ok = confirmed == len(pods) == len(self.stand_in.pods())
            ok = ok and condition(self.kube, self.budget, "AllotmentsConfirmed").get("status") == "True"
            # Nothing left to grant: within one pod's step of available.
            return ok and self.allotted(status) >= int(status.get("available") or 0) - 2
        ready = condition(self.kube, self.budget, "Ready").get("status") == "True"
        return (
            ready
            and settled(self.kube, self.ns, *(a[0] for a in APPS))
            and len(self.stand_in.pods()) == len(pods)
        )

    def revisions(self) -> int:
        total = 0
        for name, *_ in APPS:
            d = self.kube.get("deployment", name, self.ns) or {}
            total += int((d["metadata"].get("annotations") or {}).get("deployment.kubernetes.io/revision", 0))
        return total


def applied_after(stand_in: PodProcessStandIn, since: float) -> tuple[float | None, float | None]:
    """Seconds from ``since`` (wall clock) to the last grow and to the last shrink any process applied."""
    grow = shrink = None
    for run in list(stand_in.runs.values()):
        for process in run.processes:
            previous = run.floor_total()
            for t, _, total in process.applied:
                if t >= since and total != previous:
                    if total > previous:
                        grow = max(grow or 0.0, t - since)
                    else:
                        shrink = max(shrink or 0.0, t - since)
                previous = total
    return grow, shrink


def run_mode(kube: KubeCluster, mode: str, workdir: Path) -> Trace:
    server = PostgresServer.start_new(MAX_CONNECTIONS)
    try:
        server.create_role(APP_USER, password=APP_PASSWORD)
        world = World(kube, mode, server, workdir)
        ns, budget = world.ns, world.budget
        secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": budget, "namespace": ns},
                  "data": {"url": base64.b64encode(server.url().encode()).decode()}}  # fmt: skip
        spec: dict[str, Any] = {
            "database": {"connectionSecretRef": {"name": budget, "namespace": ns}, "refreshSeconds": 5},
            "reserved": 2, "unmanaged": {"margin": 0},
            "rebalance": {"debounceSeconds": 0.2, "minIntervalSeconds": 0},  # env at its quickest
            "delivery": {"mode": mode},
        }  # fmt: skip
        kube.apply(secret, budget_manifest(budget, **spec), hpa("api", ns, 1, 4))
        operator = KubeOperator(kube.kubeconfig, workdir, name=f"operator-{mode}")
        steps: list[tuple[str, Callable[[], object]]] = [
            ("opt-in", lambda: kube.apply(*(app(n, ns, budget, k, r, w) for n, k, r, w in APPS))),
            ("api 2 -> 4", lambda: kube.kubectl("scale", "deployment/api", "-n", ns, "--replicas=4")),
            ("worker 2 -> 1", lambda: kube.kubectl("scale", "deployment/worker", "-n", ns, "--replicas=1")),
            ("events image", lambda: kube.kubectl("set", "image", "deployment/events", "app=example.com/app:2", "-n", ns)),
            ("reserved 2 -> 10", lambda: kube.kubectl("patch", "poolbudget", budget, "--type=merge", "-p", '{"spec":{"reserved":10}}')),
            ("api 4 -> 2", lambda: kube.kubectl("scale", "deployment/api", "-n", ns, "--replicas=2")),
        ]  # fmt: skip
        with world.stand_in:
            operator.start()
            threading.Thread(target=world.sample, daemon=True).start()
            threading.Thread(target=world.poll_status, daemon=True).start()
            opted_in_revisions = None
            try:
                for label, action in steps:
                    wall, started = time.time(), time.monotonic()
                    at = started - world.started
                    action()
                    wait_until(world.settled, timeout=180, interval=0.25,
                               message=lambda step=label: f"{mode} {step}: settling\n{operator.log()}")  # fmt: skip
                    settle = time.monotonic() - started
                    if opted_in_revisions is None:
                        opted_in_revisions = world.revisions()
                    time.sleep(HOLD_AFTER)  # the measurement window after settling, not a wait for an event
                    status = world.status()
                    grow, shrink = applied_after(world.stand_in, wall)
                    world.trace.events.append({
                        "event": label, "at_s": round(at, 2), "settled_s": round(settle, 2),
                        "allotted": world.allotted(status), "available": int(status.get("available") or 0),
                        "grow_applied_s": None if grow is None else round(grow, 2),
                        "shrink_applied_s": None if shrink is None else round(shrink, 2),
                    })  # fmt: skip
                    print(f"{mode}: {world.trace.events[-1]}", flush=True)
                world.trace.restarts = (
                    world.revisions() - (opted_in_revisions or 0) - 1
                )  # minus the image change
            finally:
                world._done.set()
                operator.stop()
        world.trace.refusals = len(world.stand_in.refusals)
        return world.trace
    finally:
        server.stop()


def summary(trace: Trace) -> dict[str, Any]:
    shares = [e["allotted"] / e["available"] for e in trace.events if e["available"]]
    grows = [e["grow_applied_s"] for e in trace.events[1:] if e["grow_applied_s"] is not None]
    shrinks = [e["shrink_applied_s"] for e in trace.events[1:] if e["shrink_applied_s"] is not None]
    # Over available: every sample, and those not within 5 s of an event that lowered available itself (a
    # budget change: the pools must shrink to the new figure; no operator can do that in no time).
    lowered = [e["at_s"] for e in trace.events if e["event"].startswith("reserved")]
    peak_over = max((s.backends - s.available for s in trace.samples if s.available), default=0)
    peak_over_elsewhere = max(
        (s.backends - s.available for s in trace.samples
         if s.available and not any(0 <= s.t - at <= 5 for at in lowered)),
        default=0,
    )  # fmt: skip
    return {
        "mode": trace.mode,
        "refusals": trace.refusals,
        "restarts_after_opt_in": trace.restarts,
        "allotted_share_min": round(min(shares), 3) if shares else None,
        "allotted_share_per_event": [round(s, 3) for s in shares],
        "grow_applied_max_s": max(grows) if grows else None,
        "shrink_applied_max_s": max(shrinks) if shrinks else None,
        "backends_peak_minus_available": peak_over,
        "backends_peak_minus_available_outside_budget_change": peak_over_elsewhere,
        "samples": [[round(s.t, 2), s.backends, s.allotted, s.available] for s in trace.samples[::4]],
        "events": trace.events,
    }


def plot(traces: list[Trace], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(traces), 1, figsize=(11, 3.6 * len(traces)), sharex=False)
    for ax, trace in zip(axes, traces, strict=True):
        t = [s.t for s in trace.samples]
        ax.plot(t, [s.available for s in trace.samples], color="black", label="available")
        ax.plot(
            t,
            [s.allotted for s in trace.samples],
            color="tab:blue",
            label="pools may open (+ live floor kept)",
        )
        ax.plot(
            t, [s.backends for s in trace.samples], color="tab:orange", label="backends in pg_stat_activity"
        )
        ax.set_title(
            f"{trace.mode} delivery: {trace.refusals} refusals, {trace.restarts} restarts after opt-in"
        )
        for e in trace.events:
            ax.axvline(e["at_s"], color="grey", linewidth=0.5)
            ax.text(e["at_s"], 1, e["event"], rotation=90, fontsize=7, va="bottom")
        ax.set_ylabel("connections")
        ax.legend(loc="lower right", fontsize=8)
    axes[-1].set_xlabel("seconds")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, default=Path("bench/results/live_trace.json"))
    parser.add_argument("--plot", type=Path, default=Path("bench/results/live_trace.png"))
    parser.add_argument("--modes", default="env,live")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="poolbudget-live-trace-") as tmp:
        workdir = Path(tmp)
        plane = ControlPlane(workdir / "control-plane").start()
        try:
            kube = KubeCluster(plane.kubeconfig, workdir, plane)
            install_crds(kube)
            traces = [run_mode(kube, mode, workdir) for mode in args.modes.split(",")]
        finally:
            plane.stop()
    result = [summary(t) for t in traces]
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    plot(traces, args.plot)
    for r in result:
        print(json.dumps({k: v for k, v in r.items() if k not in ("events", "samples")}))


if __name__ == "__main__":
    main()
