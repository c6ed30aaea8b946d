"""Measured demand for one budget: the glue the reconcile loop calls when ``spec.rebalance.mode == "demand"``.

Contract for the caller (``reconcile.py``)::

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

from collections.abc import Mapping
from dataclasses import dataclass, field

from poolbudget.api.models import PoolBudgetSpec
from poolbudget.planning.budget import Key, Managed

__all__ = ["DemandReading", "DemandState", "measure_demand"]


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


class DemandState:
    """What one budget's demand measurement remembers between calls (keep one per budget).

    - ``recovery_successes``: after a failure, this many consecutive good reads before demand is used again;
    - ``hold_seconds``: while metrics are unavailable, keep the last accepted demand this long, then fall
      back to static weights (an empty ``demand``).
    """

    def __init__(self, *, recovery_successes: int = 3, hold_seconds: float = 300.0) -> None:
        self.recovery_successes = recovery_successes
        self.hold_seconds = hold_seconds


async def measure_demand(
    spec: PoolBudgetSpec,
    managed: Mapping[Key, Managed],
    database_url: str | None,
    state: DemandState | None = None,
) -> DemandReading:
    """Measure the per-process demand of every managed Deployment of one budget.

    Reads Prometheus (``spec.metrics.prometheusUrl``) with each Deployment's query (annotation
    ``poolbudget.io/demand-query``, else ``spec.metrics.query``, else its profile's default), and/or
    ``pg_stat_activity`` through ``database_url`` when ``spec.metrics.pgStatActivity`` is true. ``state`` carries
    the hysteresis and the recovery counter across calls; without it every call stands alone.
    """
    return DemandReading({}, False, "NotImplemented", {}, "demand measurement is being built (issue 5)")
