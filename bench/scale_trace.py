"""The scale trace: one real PostgreSQL, the same scale events, three ways of sizing the pools.

A real PostgreSQL 15 (``max_connections`` 100, from ``tests/pg.py``) and the Kubernetes API emulator with its pod
simulator (``tests/emulator``: a test double of the API server that rolls Deployments like the Deployment
controller). Every pod the emulator runs becomes a simulated app here: one thread per pool of each of its
processes, holding a real SQLAlchemy ``QueuePool`` or ``psycopg_pool.ConnectionPool`` configured *only* from the
pod's env, and keeping it saturated (every connection the pool allows checked out, released and taken again
every second). A pod stops its app when its deletion starts (a graceful shutdown that closes the pool).

The trace (seconds after the apps start): the api's HPA scales it 2 -> 4 -> 6 -> 8; ``kubectl scale`` takes
letta from 3 replicas to 1; the api rolls out a new template with maxSurge 1; a new Deployment (worker) opts in.
It runs once per strategy:

- ``seeds``: the seed documents' static settings, per process: api 50 + 100 (FastAPI, seed 001), langflow
  20 + 30 (seed 000), letta 25 + 10 (seed 003); the worker keeps psycopg_pool's default (4);
- ``even``: one even split of ``available`` computed once for the initial replicas (13 per process), kept;
- ``poolbudget``: the real operator (``poolbudget run``) reading the real server's limits.

Per strategy: connection refusals (PostgreSQL's "too many clients" / "remaining connection slots"), pool
timeouts, peak connections (PostgreSQL's count of the apps' backends, sampled, and the apps' own exact count of
open connections), utilization at steady state (connections held over ``available`` in the last seconds), pod
restarts the operator's rollouts caused. One plot per strategy in ``bench/results/``.

Run: ``python -m bench.scale_trace`` (from the repository root) (about five minutes; ``--strategies``, ``--json PATH``, ``--no-check``).
It exits 1 when poolbudget has a refusal, passes ``available`` or uses less than 90% of it at steady state, or
when a static strategy has no refusals.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import logging
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import psycopg_pool
import sqlalchemy
import sqlalchemy.exc
from sqlalchemy import event
from sqlalchemy.engine import URL

from poolbudget.api.limits import DatabaseLimits
from poolbudget.planning.limits import compute_available
from poolbudget.planning.sizing import processes_from_env
from poolbudget.profiles import PoolSettings, resolve_profile
from tests.apps import APPS, PoolShape
from tests.operator_harness import (
    OPERATOR_ACTOR,
    KubernetesEmulator,
    OperatorProcess,
    apply,
    budget_manifest,
    container_env,
    settled,
    start_cluster,
    wait_until,
)
from tests.pg import PostgresServer

ROOT = Path(__file__).resolve().parents[1]
MAX_CONNECTIONS = 100
RESERVED = 2  # this bench's own sampling connection and the operator's reads: kept out of the apps' budget
AVAILABLE = compute_available(DatabaseLimits(MAX_CONNECTIONS), RESERVED).available  # 100 - 3 - 2 = 95
APP_USER, APP_PASSWORD = "app", "app-Pa55word-trace"
READER_USER, READER_PASSWORD = "poolbudget", "reader-Pa55word-trace"
NAMESPACE = "default"
REFUSALS = ("too many clients already", "remaining connection slots are reserved")

HOLD_SECONDS = 1.0  # a saturated pool's connections are released and taken again this often
REFUSED_BACKOFF = 0.2  # after a refusal, an app holds what it got and tries again next cycle
SAMPLE_SECONDS = 0.1
POD_POLL_SECONDS = 0.05
START_DELAY, TERMINATION_DELAY = 0.3, 0.3  # the pod simulator's readiness and termination delays
SLOW_TERMINATION_DELAY = (
    3.0  # "-slow-shutdown" strategies: pods hold their connections this long when deleted
)
WAIT = 60.0  # the bound on every wait for the cluster to settle
STEADY_WINDOW = 6.0  # seconds at the end of the trace over which utilization is measured
TRACE_END = 60.0
UTILIZATION_TARGET = 0.90


# --------------------------------------------------------------------------------------------- the apps


@dataclass(frozen=True)
class App:
    """One Deployment of the trace: its profile, its seed settings, its shape."""

    name: str
    profile: str
    replicas: int
    seed_env: Mapping[str, str]  # the settings its team wrote by hand (the seed documents')
    extra_env: Mapping[str, str] = field(default_factory=dict)  # workers and the like
    strategy: Mapping[str, Any] = field(default_factory=lambda: {"type": "RollingUpdate"})

    def processes(self) -> int:
        return (processes_from_env(dict(self.extra_env)) or (1, ""))[0]

    def manifest(self, env: Mapping[str, str], opted_in: bool) -> dict[str, Any]:
        annotations = (
            {"poolbudget.io/budget": "main", "poolbudget.io/profile": self.profile} if opted_in else {}
        )
        return {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": self.name, "namespace": NAMESPACE, "annotations": annotations},
            "spec": {
                "replicas": self.replicas,
                "strategy": dict(self.strategy),
                "selector": {"matchLabels": {"app": self.name}},
                "template": {
                    "metadata": {"labels": {"app": self.name}},
                    "spec": {
                        "containers": [
                            {
                                "name": "app",
                                "image": f"example.com/{self.name}:1.0",
                                "env": [
                                    {"name": k, "value": v} for k, v in {**env, **self.extra_env}.items()
                                ],
                            }
                        ]
                    },
                },
            },
        }


API = App(
    "api",
    "sqlalchemy",
    2,
    {"DB_POOL_SIZE": "50", "DB_MAX_OVERFLOW": "100", "DB_POOL_TIMEOUT": "30"},
    strategy={"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
)
LANGFLOW = App(
    "langflow",
    "langflow",
    1,
    {
        "LANGFLOW_DB_CONNECTION_SETTINGS": json.dumps(
            {
                "pool_size": 20,
                "max_overflow": 30,
                "pool_timeout": 30,
                "pool_pre_ping": True,
                "pool_recycle": 1800,
            }
        )
    },
    extra_env={"LANGFLOW_WORKERS": "2"},
    strategy={"type": "Recreate"},
)
LETTA = App(
    "letta",
    "letta",
    3,
    {"LETTA_PG_POOL_SIZE": "25", "LETTA_PG_MAX_OVERFLOW": "10", "LETTA_DISABLE_SQLALCHEMY_POOLING": "false"},
    strategy={"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}},
)
WORKER = App("worker", "psycopg-pool", 2, {}, strategy={"type": "Recreate"})
INITIAL = (API, LANGFLOW, LETTA)
BY_NAME = {app.name: app for app in (*INITIAL, WORKER)}
HPA = {
    "apiVersion": "autoscaling/v2",
    "kind": "HorizontalPodAutoscaler",
    "metadata": {"name": "api", "namespace": NAMESPACE},
    "spec": {
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "api"},
        "minReplicas": 2,
        "maxReplicas": 8,
    },
}


def even_env(app: App) -> dict[str, str]:
    """The even split, computed once: ``available`` over every process of the initial replicas."""
    processes = sum(a.replicas * a.processes() for a in INITIAL)
    per_process = AVAILABLE // processes
    overflow = per_process // 2
    settings = PoolSettings(per_process - overflow, overflow, 30, 1800)
    return {**app.seed_env, **resolve_profile(app.profile).render(settings, app.seed_env)}


# ---------------------------------------------------------------------------------------- what happened


class Tally:
    """Everything the apps saw, from every thread: open connections (exact), refusals, pool timeouts."""

    def __init__(self, start: float) -> None:
        self.start = start
        self._lock = threading.Lock()
        self.open: dict[str, int] = {}
        self.peak_open = 0
        self.refusals: list[tuple[float, str, str]] = []
        self.timeouts: list[tuple[float, str]] = []
        self.other_errors: list[tuple[float, str, str]] = []

    def now(self) -> float:
        return time.monotonic() - self.start

    def opened(self, deployment: str) -> None:
        with self._lock:
            self.open[deployment] = self.open.get(deployment, 0) + 1
            self.peak_open = max(self.peak_open, sum(self.open.values()))

    def closed(self, deployment: str) -> None:
        with self._lock:
            self.open[deployment] = self.open.get(deployment, 0) - 1

    def failed(self, deployment: str, error: BaseException) -> None:
        text = str(getattr(error, "orig", None) or error)
        with self._lock:
            if isinstance(error, (sqlalchemy.exc.TimeoutError, psycopg_pool.PoolTimeout)):
                self.timeouts.append((self.now(), deployment))
            elif any(marker in text for marker in REFUSALS):
                self.refusals.append((self.now(), deployment, text.strip().splitlines()[0]))
            else:
                self.other_errors.append((self.now(), deployment, text.strip().splitlines()[0][:200]))

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self.open)


class PoolDriver(threading.Thread):
    """One pool of one process of one pod, kept saturated until stopped; its connections counted exactly."""

    def __init__(
        self, server: PostgresServer, tally: Tally, deployment: str, app_name: str, shape: PoolShape
    ):
        super().__init__(name=f"app-{deployment}", daemon=True)
        self.server, self.tally, self.deployment, self.shape = server, tally, deployment, shape
        self.app_name = app_name
        self.stopping = threading.Event()

    def run(self) -> None:
        with contextlib.suppress(Exception):  # a broken pool ends its app; the tally has the reason
            if self.shape.kind == "queuepool":
                self._run_queuepool()
            else:
                self._run_psycopg_pool()

    # -- SQLAlchemy

    def _run_queuepool(self) -> None:
        url = URL.create(
            "postgresql+psycopg", APP_USER, APP_PASSWORD, self.server.host, self.server.port, "postgres"
        )
        engine = sqlalchemy.create_engine(
            url,
            pool_size=self.shape.size,
            max_overflow=self.shape.overflow,
            pool_timeout=self.shape.timeout,
            connect_args={"application_name": self.app_name, "connect_timeout": 5},
        )
        event.listen(engine.pool, "connect", lambda *_: self.tally.opened(self.deployment))
        event.listen(engine.pool, "close", lambda *_: self.tally.closed(self.deployment))
        try:
            while not self.stopping.is_set():
                self._cycle(engine.raw_connection, lambda conn: conn.close())
        finally:
            engine.dispose()

    # -- psycopg_pool

    def _run_psycopg_pool(self) -> None:
        tally, deployment = self.tally, self.deployment

        class CountedConnection(psycopg.Connection[Any]):
            """Counts opens and closes; psycopg_pool connects in the background, out of the app's sight."""

            counted = False

            @classmethod
            def connect(cls, *args: Any, **kwargs: Any) -> Any:
                try:
                    conn = super().connect(*args, **kwargs)
                except psycopg.OperationalError as exc:
                    tally.failed(deployment, exc)
                    raise
                conn.counted = True
                tally.opened(deployment)
                return conn

            def close(self) -> None:
                if self.counted:
                    self.counted = False
                    tally.closed(deployment)
                super().close()

        conninfo = psycopg.conninfo.make_conninfo(
            host=self.server.host,
            port=self.server.port,
            user=APP_USER,
            password=APP_PASSWORD,
            dbname="postgres",
            application_name=self.app_name,
            connect_timeout=5,
        )
        pool = psycopg_pool.ConnectionPool(
            conninfo,
            min_size=max(1, self.shape.size),
            max_size=max(1, self.shape.most),
            timeout=self.shape.timeout,
            connection_class=CountedConnection,
            reconnect_timeout=3600,
            kwargs={"autocommit": True},  # nothing for the pool to roll back when a connection comes back
            open=False,
        )
        pool.open(wait=False)
        try:
            while not self.stopping.is_set():
                self._cycle(lambda: pool.getconn(timeout=self.shape.timeout), pool.putconn)
        finally:
            pool.close(timeout=5)

    # -- one saturation cycle

    def _cycle(self, checkout: Callable[[], Any], give_back: Callable[[Any], None]) -> None:
        held: list[Any] = []
        refused = False
        try:
            for _ in range(self.shape.most):
                if self.stopping.is_set():
                    break
                try:
                    conn = checkout()
                except Exception as exc:  # refused, timed out: note it, hold what we have
                    self.tally.failed(self.deployment, exc)
                    refused = True
                    break
                held.append(conn)
                with contextlib.suppress(Exception):
                    conn.cursor().execute("SELECT 1")
            self.stopping.wait(HOLD_SECONDS if not refused else HOLD_SECONDS + REFUSED_BACKOFF)
        finally:
            for conn in held:
                with contextlib.suppress(Exception):
                    give_back(conn)


class PodApp:
    """The app inside one pod: its processes' pools, built from the pod's env alone."""

    def __init__(self, pod: Mapping[str, Any], server: PostgresServer, tally: Tally) -> None:
        labels = pod["metadata"].get("labels") or {}
        self.deployment = labels.get("app", "?")
        container = (pod.get("spec") or {}).get("containers", [{}])[0]
        env = {e["name"]: str(e.get("value", "")) for e in container.get("env") or [] if "valueFrom" not in e}
        processes = (processes_from_env(env) or (1, ""))[0]
        shapes = APPS[BY_NAME[self.deployment].profile](env)
        app_name = env.get("PGAPPNAME", f"{NAMESPACE}/{self.deployment}")
        self.drivers = [
            PoolDriver(server, tally, self.deployment, app_name, shape)
            for _ in range(processes)
            for shape in shapes
        ]
        self.most = sum(s.most for s in shapes) * processes

    def start(self) -> None:
        for driver in self.drivers:
            driver.start()

    def stop(self, wait: bool = True) -> None:
        for driver in self.drivers:
            driver.stopping.set()
        if wait:
            for driver in self.drivers:
                driver.join(timeout=10)


class Kubelet(threading.Thread):
    """Starts an app in every pod the emulator runs, stops it when the pod's deletion starts."""

    def __init__(
        self, emulator: KubernetesEmulator, server: PostgresServer, tally: Tally, hold_while_terminating: bool
    ) -> None:
        super().__init__(name="kubelet", daemon=True)
        self.emulator, self.server, self.tally = emulator, server, tally
        # False: an app closes its pool when its pod's deletion starts (SIGTERM). True: it keeps every
        # connection until the pod is gone (a slow graceful shutdown).
        self.hold_while_terminating = hold_while_terminating
        self.apps: dict[str, PodApp] = {}
        self.started = 0
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            pods = self.emulator.list_objects("v1", "pods", NAMESPACE)
            alive = {
                p["metadata"]["uid"]: p
                for p in pods
                if self.hold_while_terminating or not p["metadata"].get("deletionTimestamp")
            }
            for uid, pod in alive.items():
                if uid not in self.apps and not pod["metadata"].get("deletionTimestamp"):
                    app = PodApp(pod, self.server, self.tally)
                    self.apps[uid] = app
                    app.start()
                    self.started += 1
            for uid in [u for u in self.apps if u not in alive]:
                self.apps.pop(uid).stop(wait=False)  # SIGTERM: the app closes its pool and exits
            self.stopping.wait(POD_POLL_SECONDS)

    def usable(self) -> dict[str, int]:
        """The most connections the running pods' pools may open, per Deployment (from their env)."""
        usable: dict[str, int] = {}
        for app in list(self.apps.values()):
            usable[app.deployment] = usable.get(app.deployment, 0) + app.most
        return usable

    def stop_all(self) -> None:
        self.stopping.set()
        self.join(timeout=10)
        for app in self.apps.values():
            app.stop(wait=False)
        for app in self.apps.values():
            for driver in app.drivers:
                driver.join(timeout=10)
        self.apps.clear()


@dataclass
class Sample:
    t: float
    backends: int  # PostgreSQL's count of the apps' client backends
    open: dict[str, int]  # the apps' own count of open connections, per Deployment
    usable: int  # the most the running pods' pools may open, from their env


class Sampler(threading.Thread):
    """Counts the apps' backends on the server every SAMPLE_SECONDS (over the superuser's private socket)."""

    def __init__(self, server: PostgresServer, tally: Tally, kubelet: Kubelet) -> None:
        super().__init__(name="sampler", daemon=True)
        self.server, self.tally, self.kubelet = server, tally, kubelet
        self.samples: list[Sample] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        with psycopg.connect(self.server.superuser_conninfo(), autocommit=True, connect_timeout=10) as conn:
            while not self.stopping.is_set():
                row = conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' AND usename = %s",
                    (APP_USER,),
                ).fetchone()
                self.samples.append(
                    Sample(
                        self.tally.now(),
                        int(row[0]) if row else 0,
                        self.tally.snapshot(),
                        sum(self.kubelet.usable().values()),
                    )
                )
                self.stopping.wait(SAMPLE_SECONDS)

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=10)


# -------------------------------------------------------------------------------------------- the trace


@dataclass(frozen=True)
class Step:
    at: float
    label: str
    action: Callable[[KubernetesEmulator, str], object]


def _scale(name: str, replicas: int) -> Callable[[KubernetesEmulator, str], object]:
    return lambda emulator, _: emulator.kubectl("scale", f"deployment/{name}", f"--replicas={replicas}")


def _roll(name: str) -> Callable[[KubernetesEmulator, str], object]:
    patch = {"spec": {"template": {"metadata": {"annotations": {"example.com/release": "2"}}}}}
    return lambda emulator, _: emulator.kubectl(
        "patch", f"deployment/{name}", "--type=merge", "-p", json.dumps(patch)
    )


def _join(app: App) -> Callable[[KubernetesEmulator, str], object]:
    return lambda emulator, strategy: apply(
        emulator, app.manifest(env_for(strategy, app), strategy.startswith("poolbudget"))
    )


TRACE = (
    Step(4, "HPA: api 2 -> 4", _scale("api", 4)),
    Step(10, "HPA: api 4 -> 6", _scale("api", 6)),
    Step(16, "HPA: api 6 -> 8", _scale("api", 8)),
    Step(24, "kubectl scale letta 3 -> 1", _scale("letta", 1)),
    Step(32, "api rollout (maxSurge 1)", _roll("api")),
    Step(42, "worker opts in (new)", _join(WORKER)),
)


def env_for(strategy: str, app: App) -> dict[str, str]:
    """What the app's team writes in its Deployment under each strategy (poolbudget then rewrites it)."""
    return even_env(app) if strategy == "even" else dict(app.seed_env)


@dataclass
class Result:
    """One strategy's numbers."""

    strategy: str
    refusals: int = 0
    pool_timeouts: int = 0
    other_errors: int = 0
    peak_backends: int = 0  # PostgreSQL's count, sampled every SAMPLE_SECONDS
    peak_open: int = 0  # the apps' exact count
    available: int = AVAILABLE
    max_connections: int = MAX_CONNECTIONS
    steady_backends: float = 0.0  # mean of the sampled backends over the last STEADY_WINDOW seconds
    steady_peak: int = 0  # the most backends at once over that window
    usable: int = 0  # what the running pods' pools may open at the end (from their env)
    utilization: float = 0.0  # usable / available
    per_deployment: dict[str, int] = field(default_factory=dict)  # usable at the end, per Deployment
    restarts: int = 0  # pods the operator's own rollouts replaced during the trace
    pods_started: int = 0
    first_refusal: str = ""
    samples: list[tuple[float, int, dict[str, int], int]] = field(default_factory=list)
    refusal_times: list[float] = field(default_factory=list)
    timeout_times: list[float] = field(default_factory=list)


def operator_restarts(emulator: KubernetesEmulator, since: float) -> int:
    """Pods replaced by rollouts the operator started: its template changes after ``since``, times replicas."""
    templates: dict[str, Any] = {}
    restarts = 0
    for record in emulator.history:
        if record.plural != "deployments" or record.event is None:
            continue
        template = json.dumps((record.object.get("spec") or {}).get("template"), sort_keys=True)
        before = templates.get(record.name)
        templates[record.name] = template
        if (
            record.actor.startswith(OPERATOR_ACTOR)
            and record.timestamp >= since
            and before not in (None, template)
        ):
            restarts += int((record.object.get("spec") or {}).get("replicas", 1))
    return restarts


def run_strategy(strategy: str, server: PostgresServer, workdir: Path) -> Result:
    """One run of the trace: a fresh emulator, the apps, the events; the operator only for poolbudget."""
    slow = strategy.endswith("-slow-shutdown")
    termination = SLOW_TERMINATION_DELAY if slow else TERMINATION_DELAY
    emulator = start_cluster(workdir, start_delay=START_DELAY, termination_delay=termination)
    operator: OperatorProcess | None = None
    try:
        opted_in = strategy.startswith("poolbudget")
        apply(emulator, HPA)
        if opted_in:
            emulator.create(
                {
                    "apiVersion": "v1",
                    "kind": "Secret",
                    "metadata": {"name": "main-db", "namespace": NAMESPACE},
                    "data": {
                        "url": base64.b64encode(server.url(READER_USER, READER_PASSWORD).encode()).decode()
                    },
                }
            )
            apply(
                emulator,
                budget_manifest(
                    database={
                        "connectionSecretRef": {"name": "main-db"},
                        "role": APP_USER,
                        "refreshSeconds": 30,
                    },
                    reserved=RESERVED,
                    defaults={"poolTimeout": 5, "maxConnectionsPerProcess": 50},
                    rebalance={"debounceSeconds": 0.5, "minIntervalSeconds": 0},
                ),
            )
        apply(emulator, *(app.manifest(env_for(strategy, app), opted_in) for app in INITIAL))
        if opted_in:
            operator = OperatorProcess(emulator, workdir, name=f"operator-{strategy}").start()
            wait_until(
                lambda: all("PGAPPNAME" in container_env(emulator, a.name) for a in INITIAL),
                timeout=WAIT,
                message="the operator's first plan written",
            )
        wait_until(lambda: settled(emulator, *(a.name for a in INITIAL)), timeout=WAIT, message="settled")

        start = time.monotonic()
        wall_start = time.time()
        tally = Tally(start)
        kubelet = Kubelet(emulator, server, tally, hold_while_terminating=slow)
        sampler = Sampler(server, tally, kubelet)
        sampler.start()
        kubelet.start()
        try:
            for step in TRACE:
                time.sleep(max(0.0, start + step.at - time.monotonic()))
                print(f"  {strategy:10} t={tally.now():5.1f}s {step.label}", flush=True)
                step.action(emulator, strategy)
            time.sleep(max(0.0, start + TRACE_END - time.monotonic()))
            final_usable = kubelet.usable()
        finally:
            sampler.stop()  # first: the apps' shutdown is not part of the trace
            kubelet.stop_all()
        result = Result(strategy)
        result.refusals = len(tally.refusals)
        result.pool_timeouts = len(tally.timeouts)
        result.other_errors = len(tally.other_errors)
        result.peak_backends = max((s.backends for s in sampler.samples), default=0)
        result.peak_open = tally.peak_open
        steady = [s.backends for s in sampler.samples if TRACE_END - STEADY_WINDOW <= s.t <= TRACE_END]
        result.steady_backends = sum(steady) / len(steady) if steady else 0.0
        result.steady_peak = max(steady, default=0)
        result.per_deployment = dict(sorted(final_usable.items()))
        result.usable = sum(final_usable.values())
        result.utilization = min(result.usable, AVAILABLE) / AVAILABLE
        result.restarts = operator_restarts(emulator, wall_start) if opted_in else 0
        result.pods_started = kubelet.started
        result.first_refusal = tally.refusals[0][2] if tally.refusals else ""
        result.samples = [(round(s.t, 2), s.backends, s.open, s.usable) for s in sampler.samples]
        result.refusal_times = [round(t, 2) for t, _, _ in tally.refusals]
        result.timeout_times = [round(t, 2) for t, _ in tally.timeouts]
        if tally.other_errors:
            print(f"  {strategy}: {len(tally.other_errors)} other errors, e.g. {tally.other_errors[0][2]}")
        return result
    finally:
        if operator is not None:
            operator.stop()
        emulator.stop()
        # No app of this run may hold a connection into the next one.
        server.wait_for_backends(lambda n: n == 0, usename=APP_USER, timeout=WAIT)


# ---------------------------------------------------------------------------------------------- output


TITLES = {
    "seeds": "The seeds' static settings (api 50+100, langflow 20+30, letta 25+10 per process)",
    "even": "Even static split, computed once for the initial replicas (13 per process)",
    "poolbudget": "poolbudget (the operator re-plans on every event)",
    "poolbudget-slow-shutdown": "poolbudget, pods holding their connections 3 s while terminating (not asserted)",
}


def plot(result: Result, path: Path) -> None:
    """Open connections over time, stacked per Deployment, against available; events and refusals marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    times = [t for t, _, _, _ in result.samples]
    names = [app.name for app in (*INITIAL, WORKER)]
    stacks = [[max(0, opened.get(name, 0)) for _, _, opened, _ in result.samples] for name in names]
    usable = [u for _, _, _, u in result.samples]
    top = max(MAX_CONNECTIONS, result.peak_open, result.peak_backends) * 1.25
    fig, ax = plt.subplots(figsize=(10, 5.6), dpi=110)
    ax.stackplot(times, stacks, labels=[f"{n} (open, apps' count)" for n in names], alpha=0.75)
    ax.plot(
        times,
        [b for _, b, _, _ in result.samples],
        color="black",
        linewidth=0.9,
        label="backends (PostgreSQL)",
    )
    ax.step(
        times, usable, where="post", color="tab:purple", linewidth=1.2, label="what the pools may open (env)"
    )
    ax.axhline(AVAILABLE, color="tab:red", linestyle="--", linewidth=1.2, label=f"available ({AVAILABLE})")
    ax.axhline(
        MAX_CONNECTIONS,
        color="dimgray",
        linestyle=":",
        linewidth=1.0,
        label=f"max_connections ({MAX_CONNECTIONS})",
    )
    if max(usable, default=0) > top:
        ax.annotate(
            f"the pools may open up to {max(usable)}",
            xy=(TRACE_END * 0.99, top * 0.985),
            ha="right",
            va="top",
            fontsize=8,
            color="tab:purple",
        )
    for step in TRACE:
        ax.axvline(step.at, color="gray", linewidth=0.7)
        ax.text(step.at + 0.4, top * 0.03, step.label, rotation=90, va="bottom", fontsize=7, color="dimgray")
    if result.refusal_times:
        ax.plot(
            result.refusal_times,
            [top * 0.995] * len(result.refusal_times),
            "v",
            color="red",
            markersize=4,
            label="a refused connection",
        )
    ax.set_xlim(0, TRACE_END)
    ax.set_ylim(0, top)
    ax.set_xlabel("seconds since the apps started")
    ax.set_ylabel("connections")
    ax.set_title(
        f"{TITLES.get(result.strategy, result.strategy)}\nrefusals {result.refusals}, pool timeouts "
        f"{result.pool_timeouts}, peak {max(result.peak_open, result.peak_backends)} of {AVAILABLE} available, "
        f"the pools may open {usable_text(result)} at the end",
        fontsize=9,
    )
    fig.legend(loc="lower center", fontsize=7, ncol=4, frameon=False)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    fig.savefig(path)
    plt.close(fig)


def usable_text(r: Result) -> str:
    """What the pools may open against available: a share, or how many times over."""
    if r.usable > r.available:
        return f"{r.usable} ({r.usable / r.available:.1f}x available)"
    return f"{r.usable} ({r.utilization:.0%})"


def table(results: list[Result]) -> str:
    """The results as bench/README.md shows them."""
    lines = [
        "| strategy | refusals | pool timeouts | peak open (apps' exact count) | peak backends (sampled) "
        "| available | usable at the end | held at the end (mean) | restarts caused |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r.strategy} | {r.refusals} | {r.pool_timeouts} | {r.peak_open} | {r.peak_backends} | {r.available} "
            f"| {usable_text(r)} | {r.steady_backends:.1f} | {r.restarts} |"
        )
    return "\n".join(lines)


def check(results: list[Result]) -> list[str]:
    """The comparison the benchmark asserts; a regression fails it."""
    failures = []
    for r in results:
        if r.strategy.endswith("-slow-shutdown"):
            continue  # shown, not asserted: see tests/test_transitions_simulation.py
        if r.strategy != "poolbudget":
            if not r.refusals:
                failures.append(f"{r.strategy}: no refusals (a static strategy should be refused)")
            continue
        peak = max(r.peak_open, r.peak_backends)
        if r.refusals:
            failures.append(f"poolbudget: {r.refusals} refusals ({r.first_refusal})")
        if peak > r.available:
            failures.append(f"poolbudget: peak {peak} > available {r.available}")
        if r.utilization < UTILIZATION_TARGET:
            failures.append(f"poolbudget: usable at the end {r.utilization:.0%} < {UTILIZATION_TARGET:.0%}")
    return failures


@contextlib.contextmanager
def database() -> Iterator[PostgresServer]:
    server = PostgresServer.start_new(MAX_CONNECTIONS)
    try:
        server.create_role(APP_USER, password=APP_PASSWORD)
        server.create_role(READER_USER, password=READER_PASSWORD)
        yield server
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> int:
    # psycopg_pool logs every failed background connect; the tally counts them, the log would drown the output.
    logging.getLogger("psycopg.pool").setLevel(logging.CRITICAL)
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--strategies", nargs="+", default=["seeds", "even", "poolbudget"])
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "scale_trace.json")
    parser.add_argument("--plots", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--no-check", action="store_true", help="report only; do not fail on the comparison")
    args = parser.parse_args(argv)

    results: list[Result] = []
    workdir = Path(tempfile.mkdtemp(prefix="poolbudget-scale-trace-"))
    try:
        with database() as server:
            for strategy in args.strategies:
                print(f"{strategy}:", flush=True)
                result = run_strategy(strategy, server, workdir / strategy)
                results.append(result)
                args.plots.mkdir(parents=True, exist_ok=True)
                plot(result, args.plots / f"scale_trace_{strategy}.png")
                print(
                    f"  refusals {result.refusals}, pool timeouts {result.pool_timeouts}, peak "
                    f"{result.peak_open} exact / {result.peak_backends} sampled of {AVAILABLE}, usable at the end "
                    f"{usable_text(result)} {result.per_deployment}, held "
                    f"{result.steady_backends:.1f}, restarts {result.restarts}, pods started {result.pods_started}",
                    flush=True,
                )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print()
    print(table(results))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps([asdict(r) for r in results], indent=1) + "\n")
    failures = check(results)
    for failure in failures:
        print("FAIL:", failure)
    return 1 if failures and not args.no_check else 0


if __name__ == "__main__":
    sys.exit(main())
