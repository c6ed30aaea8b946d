"""The proof: a plan turned into real pools fits a real PostgreSQL at its peak; the seeds' static settings do not.

A real server with ``max_connections=60`` and four Deployments of four profiles (SQLAlchemy, Langflow,
psycopg-pool, Airflow 3), with HPA, surge and worker processes. The operator's own chain does the work: it
reads the limits and ``pg_stat_activity`` (adapter), plans (``plan_for_budget``), renders each container's env
(``desired_env`` + ``PGAPPNAME``). Each simulated process then builds its pools *only from that env*, read the
way the app reads it (a SQLAlchemy ``QueuePool`` engine, or a ``psycopg_pool.ConnectionPool``), and every pool
of every process of every pod checks out its maximum at the same instant. Nobody is refused. The same pods with
the seeds' static settings (20 + 30, and 50 + 100, per process) are refused with PostgreSQL's own words.
"""

from __future__ import annotations

import contextlib
import re
import threading
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import psycopg
import psycopg_pool
import pytest
import sqlalchemy
import sqlalchemy.exc
from sqlalchemy.engine import URL

from poolbudget.adapters.postgres import read_client_backends, read_limits
from poolbudget.api.models import PoolBudget
from poolbudget.api.workloads import Deployment, HorizontalPodAutoscaler
from poolbudget.delivery.env import desired_env
from poolbudget.delivery.envpatch import with_application_name
from poolbudget.planning.budget import BudgetOutcome, plan_for_budget
from poolbudget.planning.unmanaged import managed_application_name, unmanaged_connections
from poolbudget.profiles import PoolSettings, resolve_profile
from tests.apps import APPS, PoolShape
from tests.pg import PostgresServer

pytestmark = pytest.mark.postgres

WAIT = 20.0  # seconds: the bound on every wait below; the whole proof takes a few seconds
APP_PASSWORD = "app-Pa55word-proof"
REFUSALS = (
    "FATAL:  sorry, too many clients already",
    "FATAL:  remaining connection slots are reserved for non-replication superuser connections",
)

BUDGET = PoolBudget.model_validate(
    {
        "metadata": {"name": "main-db"},
        "spec": {
            "database": {"maxConnections": 60, "connectionSecretRef": {"name": "main-db", "key": "url"}},
            "reserved": 0,  # nothing kept aside: the plan may fill the server to the last slot
            "defaults": {"maxConnectionsPerProcess": 30, "poolTimeout": 10},
        },
    }
)


def deployment(
    namespace: str,
    name: str,
    profile: str,
    replicas: int,
    env: Mapping[str, str],
    strategy: dict[str, Any] | None = None,
    annotations: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """An apps/v1 Deployment manifest that opts in to BUDGET with ``profile``."""
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "annotations": {
                "poolbudget.io/budget": "main-db",
                "poolbudget.io/profile": profile,
                **(annotations or {}),
            },
        },
        "spec": {
            "replicas": replicas,
            "strategy": strategy or {"type": "RollingUpdate"},
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "containers": [
                        {
                            "name": name,
                            "image": f"{name}:1",
                            "env": [{"name": k, "value": v} for k, v in env.items()],
                        }
                    ]
                },
            },
        },
    }


MANIFESTS = [
    # FastAPI (seed 001): 2 gunicorn workers, HPA up to 3, default 25% surge -> 4 pods x 2 processes.
    deployment("shop", "api", "sqlalchemy", 2, {"WEB_CONCURRENCY": "2"}),
    # Langflow (seed 000): 2 workers, surge 1 -> 2 pods x 2 processes; the user's own echo key is kept.
    deployment(
        "ai",
        "langflow",
        "langflow",
        1,
        {"LANGFLOW_WORKERS": "2", "LANGFLOW_DB_CONNECTION_SETTINGS": '{"echo": false}'},
        {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}},
    ),
    # A psycopg_pool worker (seed 002): Recreate -> 2 pods x 1 process.
    deployment("jobs", "worker", "psycopg-pool", 2, {}, {"type": "Recreate"}),
    # Airflow 3 api-server: 1 replica + 25% surge -> 2 pods x 1 process x 2 engines (sync and async).
    deployment("jobs", "airflow", "airflow", 1, {}, annotations={"poolbudget.io/processes": "1"}),
]
HPAS = [
    {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "api", "namespace": "shop"},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "api"},
            "maxReplicas": 3,
        },
    }
]


# --- the apps: each reads its own env, the way the real app does --------------------------------------------


@dataclass(frozen=True)
class Process:
    """One worker process of one pod: its env, and the pools it builds from that env alone."""

    deployment: str
    profile: str
    pod: int
    index: int
    env: Mapping[str, str]
    pools: tuple[PoolShape, ...]

    @property
    def application_name(self) -> str:
        return self.env.get("PGAPPNAME", "")

    @property
    def most(self) -> int:
        return sum(p.most for p in self.pools)


def processes_from_plan(outcome: BudgetOutcome) -> list[Process]:
    """Every process of every pod at the peak, each with the env the operator would give its container."""
    processes = []
    by_key = {a.workload.key: a for a in outcome.plan.allocations}
    for key, managed in sorted(outcome.managed.items()):
        allocation = by_key[key]
        manifest = next(m for m in MANIFESTS if _name(m) == "/".join(key))
        desired = desired_env(BUDGET, managed, allocation)
        entries = with_application_name(desired, manifest, managed_application_name(*key))
        container = managed.containers[0]
        env = {**container.literal_env(), **entries[container.name]}
        pools = tuple(APPS[managed.profile.name](env))
        # The app's reading and the profile's reading of the same env agree (and with the allocation).
        read = managed.profile.read(env)
        assert read is not None
        assert len(pools) == managed.profile.pools_per_process
        assert all(p.most == read.total == allocation.per_process for p in pools), (key, env)
        for pod in range(managed.workload.pods):
            for index in range(managed.workload.processes_per_pod):
                processes.append(Process("/".join(key), managed.profile.name, pod, index, env, pools))
    return processes


def processes_with_static_settings(processes: list[Process], size: int, overflow: int) -> list[Process]:
    """The same processes, configured by hand as the seeds did: ``size + overflow`` per pool, every process."""
    static = PoolSettings(size, overflow, pool_timeout=2)
    out = []
    for process in processes:
        env = {**process.env, **resolve_profile(process.profile).render(static, process.env)}
        pools = tuple(APPS[process.profile](env))
        out.append(Process(process.deployment, process.profile, process.pod, process.index, env, pools))
    return out


def _name(manifest: Mapping[str, Any]) -> str:
    return f"{manifest['metadata']['namespace']}/{manifest['metadata']['name']}"


# --- driving real pools to their maximum, all at once ---------------------------------------------------------


class Refusals:
    """The text of every connection the server refused, from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.texts: list[str] = []

    def add(self, text: str) -> None:
        with self._lock:
            self.texts.append(text)


def recording_connection_class(refusals: Refusals) -> type[psycopg.Connection[Any]]:
    """A psycopg connection class that notes refusals: psycopg_pool retries in the background, out of sight."""

    class RecordingConnection(psycopg.Connection[Any]):
        @classmethod
        def connect(cls, *args: Any, **kwargs: Any) -> Any:
            try:
                return super().connect(*args, **kwargs)
            except psycopg.OperationalError as exc:
                refusals.add(str(exc))
                raise

    return RecordingConnection


@dataclass
class Run:
    """What one process managed to hold at the instant every process held its most."""

    held: int = 0
    error: str = ""


def run_process(
    process: Process,
    server: PostgresServer,
    user: str,
    refusals: Refusals,
    all_holding: threading.Barrier,
    release: threading.Event,
    run: Run,
) -> None:
    """Build the process's pools from its env, check out each pool's maximum, hold until released."""
    with contextlib.ExitStack() as stack:
        try:
            for shape in process.pools:
                if shape.kind == "queuepool":
                    run.held += _fill_queuepool(stack, shape, process, server, user, refusals)
                else:
                    run.held += _fill_psycopg_pool(stack, shape, process, server, user, refusals)
        except Exception as exc:  # a refused app stops filling, as a real one would fail its request
            run.error = f"{type(exc).__name__}: {exc}"
        finally:
            with contextlib.suppress(threading.BrokenBarrierError):
                all_holding.wait(timeout=WAIT)
            release.wait(timeout=WAIT)


def _fill_queuepool(
    stack: contextlib.ExitStack,
    shape: PoolShape,
    process: Process,
    server: PostgresServer,
    user: str,
    refusals: Refusals,
) -> int:
    url = URL.create("postgresql+psycopg", user, APP_PASSWORD, server.host, server.port, "postgres")
    engine = sqlalchemy.create_engine(
        url,
        pool_size=shape.size,
        max_overflow=shape.overflow,
        pool_timeout=shape.timeout,
        pool_pre_ping=True,
        # application_name: what libpq takes from the PGAPPNAME the env carries.
        connect_args={"application_name": process.application_name, "connect_timeout": 10},
    )
    stack.callback(engine.dispose)
    held = 0
    for _ in range(shape.most):
        try:
            connection = stack.enter_context(engine.connect())
        except sqlalchemy.exc.OperationalError as exc:
            refusals.add(str(exc.orig))
            raise
        connection.exec_driver_sql("SELECT 1")
        held += 1
    return held


def _fill_psycopg_pool(
    stack: contextlib.ExitStack,
    shape: PoolShape,
    process: Process,
    server: PostgresServer,
    user: str,
    refusals: Refusals,
) -> int:
    pool = psycopg_pool.ConnectionPool(
        server.url(user, APP_PASSWORD),
        min_size=shape.size,
        max_size=shape.most,
        timeout=shape.timeout,
        open=False,
        kwargs={"application_name": process.application_name, "connect_timeout": 10},
        connection_class=recording_connection_class(refusals),
    )
    stack.callback(pool.close, timeout=5)
    pool.open(wait=True, timeout=shape.timeout)
    held = 0
    for _ in range(shape.most):
        # Seed 002: a pooled connection is taken and given back through its context manager.
        connection = stack.enter_context(pool.connection())
        connection.execute("SELECT 1")
        held += 1
    return held


@dataclass(frozen=True)
class Peak:
    """The instant every process held its most: per-process results, refusals, and what the server counted."""

    runs: list[Run]
    refusals: list[str]
    backends: int


def drive_to_peak(processes: list[Process], server: PostgresServer, user: str) -> Peak:
    """Every pool of every process checks out its maximum at the same time; count at that instant; release."""
    refusals = Refusals()
    all_holding = threading.Barrier(len(processes) + 1)
    release = threading.Event()
    runs = [Run() for _ in processes]
    threads = [
        threading.Thread(
            target=run_process,
            args=(p, server, user, refusals, all_holding, release, run),
            name=f"{p.deployment}#{p.pod}.{p.index}",
            daemon=True,
        )
        for p, run in zip(processes, runs, strict=True)
    ]
    try:
        for thread in threads:
            thread.start()
        all_holding.wait(timeout=WAIT)
        backends = count_backends(server, user)
    finally:
        release.set()
        for thread in threads:
            thread.join(timeout=WAIT)
    assert not [t.name for t in threads if t.is_alive()], "a process did not let go of its pools in time"
    server.wait_for_backends(lambda n: n == 0, usename=user, timeout=WAIT)
    return Peak(runs, refusals.texts, backends)


def count_backends(server: PostgresServer, user: str) -> int:
    # As the superuser over the Unix socket: it may use the reserved slots, so counting never takes an app's.
    sql = "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' AND usename = %s"
    return int(server.execute(sql, [user])[0][0])


# --- the proof --------------------------------------------------------------------------------------------


@pytest.fixture
def app_user(pg60: PostgresServer) -> Iterator[str]:
    """The role every app logs in as: a plain role, so it cannot use the superuser slots."""
    name = f"app_{uuid.uuid4().hex[:8]}"
    pg60.create_role(name, password=APP_PASSWORD)
    pg60.wait_for_backends(lambda n: n == 0, timeout=WAIT)  # earlier tests' sessions are gone
    yield name
    pg60.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", [name])
    pg60.execute(f'DROP ROLE "{name}"')


async def plan_on_the_real_server(server: PostgresServer, user: str) -> BudgetOutcome:
    """What the operator does: read the limits and pg_stat_activity, then plan the four Deployments."""
    deployments = [Deployment.model_validate(m) for m in MANIFESTS]
    limits = await read_limits(server.url(), role=user, timeout=WAIT)
    backends = await read_client_backends(server.url(), timeout=WAIT)
    names = {managed_application_name(*d.key) for d in deployments}
    unmanaged = unmanaged_connections(backends, names, margin=0)
    hpas = [HorizontalPodAutoscaler.model_validate(h) for h in HPAS]
    return plan_for_budget(BUDGET, limits, deployments, hpas, unmanaged=unmanaged)


async def test_the_plan_fits_the_real_server_with_every_pool_at_its_maximum(
    pg60: PostgresServer, app_user: str
) -> None:
    outcome = await plan_on_the_real_server(pg60, app_user)
    plan = outcome.plan
    assert plan.feasible
    assert (
        plan.available == 60 - 3
    )  # max_connections - superuser_reserved; nothing unmanaged, nothing reserved
    pods = {
        "/".join(a.workload.key): (a.workload.pods, a.workload.processes_per_pod) for a in plan.allocations
    }
    assert pods == {"shop/api": (4, 2), "ai/langflow": (2, 2), "jobs/worker": (2, 1), "jobs/airflow": (2, 1)}
    processes = processes_from_plan(outcome)
    assert sum(p.most for p in processes) == plan.allocated <= plan.available

    peak = drive_to_peak(processes, pg60, app_user)

    assert peak.refusals == []
    assert [r.error for r in peak.runs if r.error] == []
    assert [r.held for r in peak.runs] == [p.most for p in processes]  # every pool at its maximum ...
    assert peak.backends == plan.allocated  # ... at the same instant, as the server counts them
    # And the plan filled the server: what is left is less than one more step of the cheapest Deployment.
    assert plan.unused < min(a.workload.multiplier for a in plan.allocations)


@pytest.mark.parametrize(("size", "overflow"), [(20, 30), (50, 100)], ids=["20+30", "50+100"])
async def test_the_seeds_static_settings_are_refused_by_the_same_server(
    pg60: PostgresServer, app_user: str, size: int, overflow: int
) -> None:
    processes = processes_with_static_settings(
        processes_from_plan(await plan_on_the_real_server(pg60, app_user)), size, overflow
    )
    assert sum(p.most for p in processes) > 57

    peak = drive_to_peak(processes, pg60, app_user)

    assert peak.refusals, "static pools this large must be refused"
    for text in peak.refusals:
        assert any(refusal in text for refusal in REFUSALS), text
    assert peak.backends <= 60 - 3  # the server held its line; the apps paid for it
    assert sum(1 for r in peak.runs if r.error) >= 1
    assert all(re.search(r"OperationalError|PoolTimeout", r.error) for r in peak.runs if r.error)
