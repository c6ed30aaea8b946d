"""Demand: from pool metrics to the connections one process of a Deployment needs, without flapping.

Pure: no I/O and no clock. The glue (``poolbudget.controller.demand``) runs the queries and passes in what came back and
the time it is; everything decided from those is here:

- which PromQL measures a Deployment (annotation, else budget, else its profile's exporter preset);
- per-pool samples from the series (a series with a ``pod`` label is one pod, divided by the pools it runs;
  one without is the Deployment's total, divided by every pool of every replica);
- demand = a (nearest-rank) quantile of those samples, in-use plus waiting requests, rounded up; a pool saturated at its
  size with no waiting signal asks for one growth step more (the only way to see starvation without waiters);
- a deadband and a minimum interval, so noise keeps the previous demand;
- when metrics count as available again after a failure (N consecutive good reads).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from poolbudget.api.models import ProfileName
from poolbudget.api.objects import Key

# Template placeholders: the three MetricsSpec documents, plus {pods}, a regex for the Deployment's pod names.
PLACEHOLDERS = ("namespace", "deployment", "window", "pods")
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_DURATION = re.compile(r"^([0-9]+)([smhd])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
PRESET_PREFIX = "preset:"
# Points a range query returns per series at most; the step is the window divided by this, at least 1 s.
POINTS_PER_WINDOW = 60
# Values this close under an integer count as that integer (float sums of gauges are not exact).
_EPSILON = 1e-6


class QueryTemplateError(ValueError):
    """A demand query template that cannot be rendered; the message names the problem."""


@dataclass(frozen=True, slots=True)
class Exporter:
    """A preset: the PromQL for connections in use and requests waiting, for one kind of exporter."""

    name: str
    in_use: str
    pending: str | None
    description: str


# The Deployment's pods, by the labels Kubernetes service discovery (and kube-prometheus' Pod/ServiceMonitors) set.
_POD = 'namespace="{namespace}", pod=~"{pods}"'

EXPORTERS: dict[str, Exporter] = {
    e.name: e
    for e in (
        Exporter(
            "opentelemetry",
            # The semantic conventions renamed the metric (db.client.connections.usage -> db.client.connection.count):
            # `or` takes whichever the app's instrumentation emits.
            f'sum by (namespace, pod) (db_client_connections_usage{{{_POD}, state="used"}})'
            f' or sum by (namespace, pod) (db_client_connection_count{{{_POD}, db_client_connection_state="used"}})',
            f"sum by (namespace, pod) (db_client_connections_pending_requests{{{_POD}}})"
            f" or sum by (namespace, pod) (db_client_connection_pending_requests{{{_POD}}})",
            "OpenTelemetry db.client.connections.usage{state=used} and db.client.connections.pending_requests",
        ),
        Exporter(
            "letta",
            # OpenTelemetry's Prometheus exporter may add a `_ratio` suffix to unit-"1" gauges: accept both names.
            f'sum by (namespace, pod) ({{__name__=~"gauge_db_pool_connections_checked_out(_ratio)?", {_POD}}})',
            f'sum by (namespace, pod) ({{__name__=~"db_pool_waiters(_ratio)?", {_POD}}})',
            "Letta's gauge_db_pool_connections_checked_out and db_pool_waiters",
        ),
        Exporter(
            "psycopg-pool",
            f"sum by (namespace, pod) (psycopg_pool_pool_size{{{_POD}}} - psycopg_pool_pool_available{{{_POD}}})",
            f"sum by (namespace, pod) (psycopg_pool_requests_waiting{{{_POD}}})",
            "psycopg_pool get_stats() as gauges: pool_size - pool_available, and requests_waiting",
        ),
        Exporter(
            "hikaricp",
            f"sum by (namespace, pod) (hikaricp_connections_active{{{_POD}}})",
            f"sum by (namespace, pod) (hikaricp_connections_pending{{{_POD}}})",
            "HikariCP (Micrometer) hikaricp_connections_active and hikaricp_connections_pending",
        ),
        Exporter(
            "postgres-exporter",
            # No pod label: the Deployment's total, by the application_name the operator injects (PGAPPNAME).
            'sum(pg_stat_activity_count{application_name="{namespace}/{deployment}", state!="idle"})',
            None,
            "postgres_exporter pg_stat_activity_count by application_name, every state but idle",
        ),
    )
}

# Which preset a profile's apps most likely export. SQLAlchemy apps (Langflow, Airflow included) are covered by
# OpenTelemetry's SQLAlchemy instrumentation; custom profiles get the same.
PROFILE_EXPORTERS: dict[str, str] = {
    ProfileName.SQLALCHEMY: "opentelemetry",
    ProfileName.LANGFLOW: "opentelemetry",
    ProfileName.AIRFLOW: "opentelemetry",
    ProfileName.LETTA: "letta",
    ProfileName.HIKARI: "hikaricp",
    ProfileName.PSYCOPG_POOL: "psycopg-pool",
}
DEFAULT_EXPORTER = "opentelemetry"


@dataclass(frozen=True, slots=True)
class DemandQueries:
    """The rendered PromQL for one Deployment, and where it came from (for status)."""

    in_use: str
    pending: str | None
    source: str


def window_seconds(window: str) -> int:
    """A Prometheus duration such as ``30s`` or ``5m`` in seconds."""
    match = _DURATION.match(window)
    if not match:
        raise QueryTemplateError(f"window {window!r} is not a duration such as 30s, 5m or 1h")
    return int(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def range_step(window: str) -> int:
    """The step of the range query over ``window``: about :data:`POINTS_PER_WINDOW` points, at least 1 s."""
    return max(1, window_seconds(window) // POINTS_PER_WINDOW)


def pods_regex(deployment: str) -> str:
    """RE2 for the names of a Deployment's pods, ``<deployment>-<replicaset hash>-<pod suffix>``.

    Written for a PromQL double-quoted string: the backslash before a dot is doubled.
    """
    return deployment.replace(".", "\\\\.") + "-[a-z0-9]+-[a-z0-9]+"


def render(template: str, namespace: str, deployment: str, window: str) -> str:
    """Fill ``{namespace}``, ``{deployment}``, ``{window}`` and ``{pods}`` in a PromQL template.

    Only those tokens are replaced, so PromQL's own braces stay as they are; any other ``{word}`` is a typo
    (PromQL never has a bare identifier in braces) and raises :class:`QueryTemplateError`.
    """
    values = {
        "namespace": namespace,
        "deployment": deployment,
        "window": window,
        "pods": pods_regex(deployment),
    }
    unknown = sorted({m.group(1) for m in _PLACEHOLDER.finditer(template)} - set(values))
    if unknown:
        known = ", ".join("{" + p + "}" for p in PLACEHOLDERS)
        raise QueryTemplateError(
            f"unknown placeholder {', '.join('{' + u + '}' for u in unknown)} (known: {known})"
        )
    if not template.strip():
        raise QueryTemplateError("empty query")
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], template)


def select_queries(
    namespace: str,
    deployment: str,
    profile: str,
    window: str,
    budget_query: str | None = None,
    annotation_query: str | None = None,
) -> DemandQueries:
    """The queries that measure one Deployment: its annotation, else the budget's, else its profile's preset.

    An override is a PromQL template for connections in use (add waiting requests inside it if the exporter
    has them), or ``preset:<name>`` to pick another exporter's pair of queries.
    """
    for template, source in (
        (annotation_query, "annotation poolbudget.io/demand-query"),
        (budget_query, "spec.metrics.query"),
    ):
        if template is None or not template.strip():
            continue
        template = template.strip()
        if template.startswith(PRESET_PREFIX):
            name = template.removeprefix(PRESET_PREFIX).strip()
            return _preset(name, namespace, deployment, window, f"{source} ({PRESET_PREFIX}{name})")
        try:
            return DemandQueries(render(template, namespace, deployment, window), None, source)
        except QueryTemplateError as exc:
            raise QueryTemplateError(f"{source}: {exc}") from None
    name = PROFILE_EXPORTERS.get(profile, DEFAULT_EXPORTER)
    return _preset(name, namespace, deployment, window, f"profile {profile} default ({name})")


def _preset(name: str, namespace: str, deployment: str, window: str, source: str) -> DemandQueries:
    exporter = EXPORTERS.get(name)
    if exporter is None:
        raise QueryTemplateError(f"{source}: unknown preset {name!r} (known: {', '.join(EXPORTERS)})")
    pending = render(exporter.pending, namespace, deployment, window) if exporter.pending else None
    return DemandQueries(render(exporter.in_use, namespace, deployment, window), pending, source)


class SeriesLike(Protocol):
    """One series of a range query (``adapters.prometheus.RangeSeries`` is one)."""

    @property
    def labels(self) -> Mapping[str, str]: ...

    @property
    def points(self) -> Sequence[tuple[float, float]]: ...


@dataclass(frozen=True, slots=True)
class Shape:
    """How a Deployment's pods hold pools, to turn a pod's (or the Deployment's) connections into per-pool ones.

    ``pools_per_pod`` = processes per pod x pools per process; ``replicas`` divides series without a ``pod``
    label; ``current_per_process`` (the level its pods run now; None when unknown) lets a saturated pool without
    a waiting signal ask for more.
    """

    pools_per_pod: int
    replicas: int
    current_per_process: int | None = None


@dataclass(frozen=True, slots=True)
class Measurement:
    """One Deployment's per-pool samples over the window and what they add up to."""

    samples: tuple[float, ...]  # per-pool connections in use + waiting, one per (instant, pod)
    instants: int
    pods: int  # most pods seen at one instant (replicas when the series are totals)
    peak_pending: float  # most requests waiting per pool at one instant
    pending_signal: bool  # a waiting-requests series was there at all
    source: str = ""

    @property
    def empty(self) -> bool:
        return not self.samples


def _instant(t: float) -> float:
    return round(t, 3)


def _by_instant_and_pod(series: Iterable[SeriesLike]) -> tuple[dict[float, dict[str | None, float]], bool]:
    """Sum values per (instant, pod); ``pod`` None for series without the label. Second: any series at all."""
    table: dict[float, dict[str | None, float]] = {}
    seen = False
    for s in series:
        seen = True
        pod = s.labels.get("pod")
        for t, value in s.points:
            if math.isnan(value) or math.isinf(value):
                continue
            row = table.setdefault(_instant(t), {})
            row[pod] = row.get(pod, 0.0) + max(0.0, value)
    return table, seen


def measure(
    in_use: Iterable[SeriesLike],
    pending: Iterable[SeriesLike],
    shape: Shape,
    source: str = "",
) -> Measurement:
    """Per-pool samples from range-query series: (in use + waiting) of one pod / its pools, at every instant.

    Series without a ``pod`` label are the Deployment's total: divided by ``replicas x pools_per_pod``.
    Waiting requests without a ``pod`` label are spread evenly over the pods seen at that instant.
    """
    used, _ = _by_instant_and_pod(in_use)
    waiting, pending_signal = _by_instant_and_pod(pending)
    pools_per_pod = max(1, shape.pools_per_pod)
    samples: list[float] = []
    pods_seen = 0
    peak_pending = 0.0
    for t in sorted(used):
        row = used[t]
        pods = {p: v for p, v in row.items() if p is not None}
        # A total (no pod label) stands for every replica; per-pod series stand for themselves.
        holders: dict[str | None, tuple[float, int]] = {p: (v, 1) for p, v in pods.items()}
        if None in row:
            holders[None] = (row[None], max(1, shape.replicas))
        count = sum(n for _, n in holders.values())
        pods_seen = max(pods_seen, count)
        waits = waiting.get(t, {})
        spread = waits.get(None, 0.0) / count if count else 0.0
        for pod, (value, n) in holders.items():
            extra = waits.get(pod, 0.0) if pod is not None else 0.0
            extra += spread * n
            peak_pending = max(peak_pending, extra / (n * pools_per_pod))
            per_pool = (value + extra) / (n * pools_per_pod)
            samples.extend([per_pool] * n)
    return Measurement(tuple(samples), len(used), pods_seen, peak_pending, pending_signal, source)


def measure_totals(history: Iterable[tuple[float, float]], shape: Shape, source: str = "") -> Measurement:
    """Per-pool samples from a Deployment's total connections seen at several instants (pg_stat_activity)."""
    pools = max(1, shape.replicas) * max(1, shape.pools_per_pod)
    points = sorted(history)
    samples = tuple(max(0.0, total) / pools for _, total in points for _ in range(max(1, shape.replicas)))
    return Measurement(samples, len(points), max(1, shape.replicas), 0.0, False, source)


def quantile(values: Sequence[float], q: float) -> float:
    """The nearest-rank ``q``-quantile: the smallest sample with at least a share ``q`` of samples at or below it.

    An observed value, never an interpolation between two: while load ramps up, an interpolated quantile
    passes through values no pool ever had, and the deadband could then settle on one of them.
    """
    if not values:
        raise ValueError("quantile of no values")
    if not 0 < q <= 1:
        raise ValueError(f"quantile must be within (0, 1], got {q}")
    ordered = sorted(values)
    rank = max(1, math.ceil(q * len(ordered) - _EPSILON))
    return ordered[rank - 1]


@dataclass(frozen=True, slots=True)
class Bounds:
    """A Deployment's [min, max] per process, and the growth step that counts as a change worth a restart."""

    minimum: int
    maximum: int
    min_change_ratio: float = 0.0
    min_change_connections: int = 0

    def step(self, level: int) -> int:
        """The smallest change from ``level`` that is not noise: max(connections, ceil(ratio x level)), >= 1."""
        return max(1, self.min_change_connections, math.ceil(self.min_change_ratio * level - _EPSILON))

    def clamp(self, value: int) -> int:
        return min(self.maximum, max(self.minimum, value))


@dataclass(frozen=True, slots=True)
class Estimate:
    """What a measurement asks for, per process, within bounds, with the reasoning."""

    demand: int
    observed: float  # the quantile itself
    why: str


def estimate(measurement: Measurement, q: float, shape: Shape, bounds: Bounds) -> Estimate:
    """Demand per process from a non-empty measurement: ceil(quantile), saturation, then [min, max]."""
    observed = quantile(measurement.samples, q)
    label = "max" if q >= 1 else f"p{q * 100:g}"
    what = "in use + waiting" if measurement.pending_signal else "in use"
    why = (
        f"{label} of {what} per process = {observed:.1f} over {len(measurement.samples)} samples"
        f" ({measurement.instants} instants, {measurement.pods} pods)"
    )
    if measurement.peak_pending > 0:
        why += f", up to {measurement.peak_pending:.1f} waiting per process"
    wanted = math.ceil(observed - _EPSILON)
    level = shape.current_per_process
    if not measurement.pending_signal and level is not None and wanted >= level:
        # Saturated with no waiters metric: it may want more than it can show; probe one step up.
        wanted = level + bounds.step(level)
        why += f"; saturated at its {level} per process with no waiting-requests signal: asking for {wanted}"
    demand = bounds.clamp(wanted)
    if demand != wanted:
        why += f"; clamped to [{bounds.minimum}, {bounds.maximum}]"
    return Estimate(demand, observed, why)


@dataclass(frozen=True, slots=True)
class Accepted:
    """The demand last accepted for a Deployment: when it was set, and when a measurement last confirmed it."""

    demand: int
    changed_at: float
    confirmed_at: float


def settle(
    previous: Accepted | None,
    proposed: int,
    now: float,
    bounds: Bounds,
    min_interval_seconds: float = 0.0,
) -> tuple[Accepted, str]:
    """Keep the previous demand unless the new one differs by a step worth a restart.

    - first measurement: accepted;
    - a change smaller than ``bounds.step(previous)``: kept (noise);
    - a fall sooner than ``min_interval_seconds`` after the last change: kept (a shrink would roll at once, the
      transitions only hold growth back);
    - otherwise accepted. The previous value is clamped into the current bounds first.
    """
    if previous is None:
        return Accepted(proposed, now, now), f"demand {proposed} (first measurement)"
    held = bounds.clamp(previous.demand)
    step = bounds.step(held)
    if abs(proposed - held) < step:
        why = f"demand {held} kept: {proposed} is within the deadband of {step} around it"
        return Accepted(held, previous.changed_at, now), why
    since = now - previous.changed_at
    if proposed < held and since < min_interval_seconds:
        why = (
            f"demand {held} kept: {proposed} is lower, but the last change was {since:.0f}s ago"
            f" (rebalance.minIntervalSeconds {min_interval_seconds:g})"
        )
        return Accepted(held, previous.changed_at, now), why
    return Accepted(proposed, now, now), f"demand {proposed} (was {held})"


def held_demand(
    accepted: Accepted | None, now: float, hold_seconds: float, bounds: Bounds
) -> tuple[int | None, str]:
    """The demand a Deployment is planned with, and what to add to its explanation.

    Its accepted demand (clamped into the current bounds) while a measurement confirmed it within
    ``hold_seconds`` (so a short metrics outage rolls nothing); after that none: it is sized by its static weight.
    """
    if accepted is None:
        return None, "; no demand: sized by its static weight"
    age = now - accepted.confirmed_at
    if age <= hold_seconds or accepted.confirmed_at == now:
        demand = bounds.clamp(accepted.demand)
        if accepted.confirmed_at == now:
            return demand, ""
        return demand, f"; holding demand {demand} confirmed {age:.0f}s ago"
    return None, f"; demand {accepted.demand} confirmed {age:.0f}s ago has expired: static weight"


@dataclass(frozen=True, slots=True)
class Health:
    """Whether measured demand is used: after a failure, only after ``successes`` >= the recovery count."""

    available: bool = False
    successes: int = 0  # consecutive good reads
    failed_before: bool = False  # a failure was seen: recovery needs several good reads, a cold start one


def observe(health: Health, ok: bool, recovery_successes: int) -> Health:
    """The next health after one read. Any failure makes demand unavailable at once (and resets the count)."""
    if not ok:
        return Health(False, 0, True)
    successes = health.successes + 1
    needed = max(1, recovery_successes) if health.failed_before else 1
    return Health(health.available or successes >= needed, successes, health.failed_before)


def trim_history(
    history: Sequence[tuple[float, float]], now: float, window: float, sample: float | None = None
) -> tuple[tuple[float, float], ...]:
    """``history`` with ``(now, sample)`` appended (when given) and everything older than ``window`` dropped."""
    points = [*history, (now, sample)] if sample is not None else list(history)
    return tuple((t, v) for t, v in points if now - window <= t <= now)


class DemandState:
    """What one budget's demand measurement remembers between calls (keep one per budget).

    - ``recovery_successes``: after a failure, this many consecutive good reads before demand is used again
      (a cold start needs one), so a Prometheus that comes and goes does not flip the plan back and forth;
    - ``hold_seconds``: a Deployment's accepted demand stays in use this long after a measurement last
      confirmed it, so a short Prometheus outage rolls nothing; after that it falls back to its static weight.

    It also keeps the accepted demand per Deployment (the deadband's reference) and, for ``pgStatActivity``,
    the totals sampled within the window and which application names were ever seen with connections (before
    that, a Deployment has no measurement: zero connections could mean a driver that ignores PGAPPNAME).
    """

    def __init__(self, *, recovery_successes: int = 3, hold_seconds: float = 300.0) -> None:
        if recovery_successes < 1:
            raise ValueError("recovery_successes must be >= 1")
        if hold_seconds < 0:
            raise ValueError("hold_seconds must be >= 0")
        self.recovery_successes = recovery_successes
        self.hold_seconds = hold_seconds
        self.health = Health()
        self.accepted: dict[Key, Accepted] = {}
        self.activity: dict[Key, tuple[tuple[float, float], ...]] = {}
        self.activity_seen: set[Key] = set()  # application names seen with connections at least once

    def remember(self, demand: Mapping[Key, int], at: float) -> None:
        """Seed accepted demand (e.g. from the budget's status after an operator restart), as of ``at``.

        Without it a restarted operator measures afresh, and a small difference from what the running pods
        were planned with could shrink a Deployment that did not need it.
        """
        for key, value in demand.items():
            self.accepted[key] = Accepted(int(value), at, at)
        self.health = Health(True, 1, False)
