"""Measured demand for one budget: the glue the reconcile loop calls when ``spec.rebalance.mode == "demand"``.

Contract for the caller (``controller/inputs.py``)::

    state = DemandState()                      # one per budget, kept across reconciles
    reading = await measure_demand(spec, outcome.managed, database_url, state)
    outcome = plan_for_budget(..., demand=reading.demand or None)
    # condition MetricsAvailable: status "True" if reading.available else "False",
    #                             reason=reading.reason, message=reading.message
    # status allocations: reading.detail[key] explains each Deployment's demand

Pass ``reading.demand`` to the planner *as is*, whatever ``available`` says: this module already decides the
fallback. An empty dict means "static weights"; while Prometheus is briefly unavailable it may still carry the
last demand accepted (see ``DemandState.hold_seconds``), so a Prometheus restart does not roll Deployments.
``available`` and ``reason`` are for the ``MetricsAvailable`` condition only.

Never raises for a metrics problem (Prometheus down, bad query, no data, database unreachable): those come back
as ``available=False`` with the reason. See ``docs/demand.md``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from poolbudget.adapters.postgres import DatabaseError, read_client_backends
from poolbudget.adapters.prometheus import (
    PrometheusAccess,
    PrometheusError,
    PrometheusQueryFailed,
    PrometheusURLInvalid,
    RangeSeries,
    query_range,
)
from poolbudget.api.conditions import (
    DATABASE_UNREACHABLE,
    DEMAND_FAILURE_ORDER,
    MEASURED,
    NO_DATA,
    NO_DATABASE_URL,
    NO_DEPLOYMENTS,
    PARTIAL,
    PROMETHEUS_UNREACHABLE,
    PROMETHEUS_URL_INVALID,
    QUERY_FAILED,
    QUERY_INVALID,
    RECOVERING,
)
from poolbudget.api.models import PoolBudgetSpec
from poolbudget.api.objects import Key
from poolbudget.planning.budget import Managed
from poolbudget.planning.demand import (
    Bounds,
    DemandQueries,
    DemandState,
    Measurement,
    QueryTemplateError,
    Shape,
    estimate,
    held_demand,
    measure,
    measure_totals,
    observe,
    range_step,
    select_queries,
    settle,
    trim_history,
    window_seconds,
)
from poolbudget.planning.unmanaged import managed_application_name, reported_application_name

__all__ = ["DemandReading", "measure_demand"]

logger = logging.getLogger(__name__)

# Queries in flight at once against one Prometheus: enough to be quick, few enough not to be a load.
MAX_CONCURRENT_QUERIES = 8


@dataclass(frozen=True, slots=True)
class DemandReading:
    """One measurement of a budget's demand.

    ``demand`` maps (namespace, deployment) to connections per process (per pool), within each Deployment's
    [min, max]; Deployments without a measurement are absent (the planner then sizes them by weight).
    ``available`` and ``reason`` (a CamelCase condition reason) and ``message`` feed ``MetricsAvailable``;
    ``detail`` explains, per Deployment, what was measured and what was decided.
    """

    demand: dict[Key, int]
    available: bool
    reason: str
    detail: dict[Key, str] = field(default_factory=dict)
    message: str = ""


@dataclass(frozen=True, slots=True)
class _Subject:
    """One Deployment as demand sees it."""

    key: Key
    shape: Shape
    bounds: Bounds
    profile: str
    annotation_query: str | None


def _subject(key: Key, managed: Managed, spec: PoolBudgetSpec) -> _Subject:
    workload = managed.workload
    replicas = managed.deployment.spec.replicas
    current = None
    if managed.containers:
        settings = managed.profile.read(managed.containers[0].literal_env())
        current = settings.total if settings is not None else None
    shape = Shape(
        pools_per_pod=workload.processes_per_pod * workload.pools_per_process,
        replicas=1 if replicas is None else replicas,
        current_per_process=current,
    )
    bounds = Bounds(
        workload.min_per_process,
        workload.max_per_process,
        spec.rebalance.min_change_ratio,
        spec.rebalance.min_change_connections,
    )
    return _Subject(key, shape, bounds, managed.profile.name, managed.opt_in.demand_query)


@dataclass(slots=True)
class _Round:
    """What one call found out, before it is turned into a reading."""

    measurements: dict[Key, Measurement] = field(default_factory=dict)
    notes: dict[Key, str] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)  # condition reason -> first message
    answered: bool = False  # at least one source answered (even with no data)

    def fail(self, reason: str, message: str) -> None:
        self.failures.setdefault(reason, message)


def _failure_reason(error: PrometheusError) -> str:
    if isinstance(error, PrometheusQueryFailed):
        return QUERY_FAILED
    if isinstance(error, PrometheusURLInvalid):
        return PROMETHEUS_URL_INVALID
    return PROMETHEUS_UNREACHABLE


async def _query_pair(
    url: str,
    access: PrometheusAccess,
    queries: DemandQueries,
    start: float,
    end: float,
    step: int,
    query_timeout: float,
    gate: asyncio.Semaphore,
) -> tuple[list[RangeSeries], list[RangeSeries]]:
    async with gate:
        in_use = await query_range(
            url, queries.in_use, start=start, end=end, step=step, timeout=query_timeout, access=access
        )
    if not queries.pending or not in_use:
        return in_use, []
    async with gate:
        try:
            pending = await query_range(
                url, queries.pending, start=start, end=end, step=step, timeout=query_timeout, access=access
            )
        except PrometheusQueryFailed:
            pending = []  # the waiting signal is a refinement: a bad one must not cost the in-use one
    return in_use, pending


async def _from_prometheus(
    url: str,
    access: PrometheusAccess,
    subjects: list[_Subject],
    spec: PoolBudgetSpec,
    end: float,
    query_timeout: float,
    found: _Round,
) -> None:
    window = spec.metrics.window
    start, step = end - window_seconds(window), range_step(window)
    gate = asyncio.Semaphore(MAX_CONCURRENT_QUERIES)
    tasks: dict[Key, asyncio.Task[tuple[list[RangeSeries], list[RangeSeries]]]] = {}
    sources: dict[Key, str] = {}
    for subject in subjects:
        ns, name = subject.key
        try:
            queries = select_queries(
                ns, name, subject.profile, window, spec.metrics.query, subject.annotation_query
            )
        except QueryTemplateError as exc:
            found.notes[subject.key] = f"query not usable: {exc}"
            found.fail(QUERY_INVALID, f"{ns}/{name}: {exc}")
            continue
        sources[subject.key] = queries.source
        tasks[subject.key] = asyncio.create_task(
            _query_pair(url, access, queries, start, end, step, query_timeout, gate)
        )
    if not tasks:
        return
    # Bounded as a whole: a hung server must not hold the reconcile for timeout x queries / concurrency.
    done, pending = await asyncio.wait(tasks.values(), timeout=2 * query_timeout + 1)
    for task in pending:
        task.cancel()
    by_subject = {s.key: s for s in subjects}
    for key, task in tasks.items():
        ns, name = key
        if task not in done:
            found.notes[key] = "Prometheus: no answer within the timeout"
            found.fail(PROMETHEUS_UNREACHABLE, f"Prometheus did not answer within {2 * query_timeout + 1:g}s")
            continue
        error = task.exception()
        if isinstance(error, PrometheusError):
            found.notes[key] = f"Prometheus: {error}"
            found.fail(_failure_reason(error), str(error))
            continue
        if error is not None:
            raise error
        found.answered = True
        in_use, waiting = task.result()
        measurement = measure(in_use, waiting, by_subject[key].shape, sources[key])
        if measurement.empty:
            found.notes[key] = f"Prometheus has no data for {ns}/{name} over {window} ({sources[key]})"
        else:
            found.measurements[key] = measurement


async def _from_pg_stat_activity(
    database_url: str | None,
    subjects: list[_Subject],
    spec: PoolBudgetSpec,
    state: DemandState,
    now: float,
    query_timeout: float,
    found: _Round,
) -> None:
    if database_url is None:
        found.fail(
            NO_DATABASE_URL, "metrics.pgStatActivity needs the database URL (database.connectionSecretRef)"
        )
        return
    try:
        backends = await read_client_backends(database_url, timeout=query_timeout)
    except DatabaseError as exc:
        found.fail(DATABASE_UNREACHABLE, f"pg_stat_activity: {exc}")
        return
    found.answered = True
    # In use, not open: a pool keeps idle connections open, and counting them would make demand whatever the
    # pools were last given. A connection is seen (its app reports PGAPPNAME) when it is open at all.
    in_use: dict[str, int] = {}
    opened: set[str] = set()
    for backend in backends:
        in_use[backend.application_name] = in_use.get(backend.application_name, 0) + backend.in_use
        if backend.count:
            opened.add(backend.application_name)
    window = window_seconds(spec.metrics.window)
    for subject in subjects:
        app = reported_application_name(managed_application_name(*subject.key))
        history = trim_history(state.activity.get(subject.key, ()), now, window, float(in_use.get(app, 0)))
        state.activity[subject.key] = history
        if app in opened:
            state.activity_seen.add(subject.key)
        if subject.key in found.measurements:
            continue  # Prometheus measured it: in use + waiting says more than pg_stat_activity's instants
        source = f"pg_stat_activity application_name={app!r} (not idle)"
        # Never seen: its driver may not report PGAPPNAME (asyncpg, JDBC), so zero would be a guess, not a fact.
        if subject.key in state.activity_seen:
            found.measurements[subject.key] = measure_totals(history, subject.shape, source)
        else:
            found.notes.setdefault(subject.key, f"no connections ever seen under {source}")


async def measure_demand(
    spec: PoolBudgetSpec,
    managed: Mapping[Key, Managed],
    database_url: str | None,
    state: DemandState | None = None,
    *,
    now: float | None = None,
    timeout: float = 10.0,  # noqa: ASYNC109  (seconds per query; part of the contract)
    prometheus: PrometheusAccess = PrometheusAccess(),  # noqa: B008  (frozen: one shared default is safe)
) -> DemandReading:
    """Measure the per-process demand of every managed Deployment of one budget.

    Reads Prometheus (``spec.metrics.prometheusUrl``) with each Deployment's query (annotation
    ``poolbudget.io/demand-query``, else ``spec.metrics.query``, else its profile's default), and/or
    ``pg_stat_activity`` through ``database_url`` when ``spec.metrics.pgStatActivity`` is true. ``state`` carries
    the hysteresis and the recovery counter across calls; without it every call stands alone. ``now`` (unix
    seconds) is for tests; ``timeout`` bounds each query (and twice it, plus a second, the whole Prometheus read);
    ``prometheus`` says how to reach it (CA, credentials, headers: read from Secrets by the caller).
    """
    state = state if state is not None else DemandState()
    now = time.time() if now is None else now
    subjects = [_subject(key, m, spec) for key, m in sorted(managed.items())]
    # Forget Deployments that left the budget, so one that comes back starts afresh.
    for memory in (state.accepted, state.activity):
        for key in [k for k in memory if k not in managed]:
            del memory[key]
    state.activity_seen &= set(managed)
    running = [s for s in subjects if s.shape.replicas > 0]
    if not running:
        return DemandReading({}, True, NO_DEPLOYMENTS, {}, "no running Deployment to measure")

    found = _Round()
    if spec.metrics.prometheus_url:
        await _from_prometheus(spec.metrics.prometheus_url, prometheus, running, spec, now, timeout, found)
    if spec.metrics.pg_stat_activity:
        await _from_pg_stat_activity(database_url, running, spec, state, now, timeout, found)

    ok = found.answered and bool(found.measurements)
    state.health = observe(state.health, ok, state.recovery_successes)
    detail: dict[Key, str] = {}
    for subject in running:
        key = subject.key
        measurement = found.measurements.get(key)
        if state.health.available and measurement is not None:
            guess = estimate(measurement, spec.metrics.quantile, subject.shape, subject.bounds)
            accepted, decision = settle(
                state.accepted.get(key),
                guess.demand,
                now,
                subject.bounds,
                spec.rebalance.min_interval_seconds,
            )
            state.accepted[key] = accepted
            detail[key] = f"{decision}: {guess.why} [{measurement.source}]"
        elif measurement is not None:
            detail[key] = (
                f"measured, not used yet: {state.health.successes} of {state.recovery_successes} good reads"
                " since metrics failed"
            )
        else:
            detail[key] = found.notes.get(key, "no measurement")

    demand: dict[Key, int] = {}
    for subject in running:
        held, why = held_demand(state.accepted.get(subject.key), now, state.hold_seconds, subject.bounds)
        detail[subject.key] += why
        if held is not None:
            demand[subject.key] = held

    reason, message = _condition(state, found, running, demand)
    if not state.health.available:
        logger.info("demand unavailable (%s): %s", reason, message)
    return DemandReading(demand, state.health.available, reason, detail, message)


def _condition(
    state: DemandState, found: _Round, running: list[_Subject], demand: Mapping[Key, int]
) -> tuple[str, str]:
    missing = [
        f"{ns}/{name}" for ns, name in (s.key for s in running) if (ns, name) not in found.measurements
    ]
    if state.health.available:
        if not missing and not found.failures:
            return MEASURED, f"demand measured for {len(running)} Deployments"
        problems = "; ".join(found.failures.values())
        text = f"no measurement for {', '.join(missing)}" if missing else "every Deployment measured"
        return PARTIAL, f"{text}{'; ' + problems if problems else ''}"
    fallback = (
        f"holding the last accepted demand of {len(demand)} Deployments (up to {state.hold_seconds:g}s)"
        if demand
        else "using static weights"
    )
    if found.answered and found.measurements:
        return RECOVERING, (
            f"{state.health.successes} of {state.recovery_successes} consecutive good reads since metrics"
            f" failed; {fallback}"
        )
    for reason in DEMAND_FAILURE_ORDER:
        if reason in found.failures:
            return reason, f"{found.failures[reason]}; {fallback}"
    return NO_DATA, f"no data for any Deployment ({', '.join(missing)}); {fallback}"
