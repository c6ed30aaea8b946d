"""The operator's own Prometheus metrics (prometheus-client), served on ``POOLBUDGET_METRICS_PORT`` (default 9090).

Every metric poolbudget exports (the Helm chart's docs list them from here):

Per budget (label ``budget``):

- ``poolbudget_max_connections`` (gauge): the database's max_connections, as last read (or declared).
- ``poolbudget_available_connections`` (gauge): connections the budget may hand out (SPEC.md's ``available``).
- ``poolbudget_allocated_connections`` (gauge): connections the plan hands out at peak.
- ``poolbudget_overcommitted`` (gauge, 0 or 1): 1 when even every minimum does not fit.
- ``poolbudget_shortfall_connections`` (gauge): how many connections the minimums lack (0 when they fit).
- ``poolbudget_rebalances_total`` (counter): rounds that changed at least one Deployment.
- ``poolbudget_database_errors_total`` (counter): failed reads of the database's limits.
- ``poolbudget_prometheus_errors_total`` (counter): failed demand measurements (demand mode).
- ``poolbudget_reconcile_duration_seconds`` (histogram): time of one reconcile round.

Per Deployment (labels ``budget``, ``namespace``, ``deployment``):

- ``poolbudget_deployment_allocated_connections`` (gauge): connections planned for it at peak.
- ``poolbudget_deployment_observed_connections`` (gauge): connections its existing pods hold (terminating too).
- ``poolbudget_deployment_pool_size`` (gauge): planned pool_size per process (per pool).
- ``poolbudget_deployment_max_overflow`` (gauge): planned max_overflow per process (per pool).
- ``poolbudget_deployment_restarts_total`` (counter): pod-template changes poolbudget made (each rolls the pods).

Series of Deployments and budgets that are gone are removed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping

from prometheus_client import (
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    start_http_server,
)

from poolbudget.api.objects import Key
from poolbudget.planning.plan import BudgetPlan

DEFAULT_PORT = 9090
_BUDGET = ("budget",)
_DEPLOYMENT = ("budget", "namespace", "deployment")


class OperatorMetrics:
    """The metrics of one operator process, in their own registry (so tests can make as many as they like)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        if registry is None:
            registry = CollectorRegistry(auto_describe=True)
            # The usual process_* and python_info series, as the default registry would have them.
            registry.register(PROCESS_COLLECTOR)
            registry.register(PLATFORM_COLLECTOR)
        self.registry = r = registry
        self.max_connections = Gauge(
            "poolbudget_max_connections", "max_connections of the database", _BUDGET, registry=r
        )
        self.available = Gauge(
            "poolbudget_available_connections", "connections the budget may hand out", _BUDGET, registry=r
        )
        self.allocated = Gauge(
            "poolbudget_allocated_connections", "connections the plan hands out at peak", _BUDGET, registry=r
        )
        self.overcommitted = Gauge(
            "poolbudget_overcommitted", "1 when even the minimums do not fit", _BUDGET, registry=r
        )
        self.shortfall = Gauge(
            "poolbudget_shortfall_connections", "connections the minimums lack", _BUDGET, registry=r
        )
        self.rebalances = Counter(
            "poolbudget_rebalances", "rounds that changed at least one Deployment", _BUDGET, registry=r
        )
        self.database_errors = Counter(
            "poolbudget_database_errors", "failed reads of the database's limits", _BUDGET, registry=r
        )
        self.prometheus_errors = Counter(
            "poolbudget_prometheus_errors", "failed demand measurements", _BUDGET, registry=r
        )
        self.reconcile_duration = Histogram(
            "poolbudget_reconcile_duration_seconds",
            "time of one reconcile round",
            _BUDGET,
            registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
        )
        self.deployment_allocated = Gauge(
            "poolbudget_deployment_allocated_connections",
            "connections planned at peak",
            _DEPLOYMENT,
            registry=r,
        )
        self.deployment_observed = Gauge(
            "poolbudget_deployment_observed_connections",
            "connections held by existing pods",
            _DEPLOYMENT,
            registry=r,
        )
        self.deployment_pool_size = Gauge(
            "poolbudget_deployment_pool_size", "planned pool_size per process", _DEPLOYMENT, registry=r
        )
        self.deployment_max_overflow = Gauge(
            "poolbudget_deployment_max_overflow", "planned max_overflow per process", _DEPLOYMENT, registry=r
        )
        self.deployment_restarts = Counter(
            "poolbudget_deployment_restarts", "pod-template changes poolbudget made", _DEPLOYMENT, registry=r
        )
        self.live_unconfirmed = Gauge(
            "poolbudget_live_unconfirmed_pods",
            "live pods that have not confirmed the allotment written on them",
            _BUDGET,
            registry=r,
        )
        self.deployment_allotments = Counter(
            "poolbudget_deployment_allotments", "live allotments written on its pods", _DEPLOYMENT, registry=r
        )
        self._budget_metrics = (
            self.max_connections,
            self.available,
            self.allocated,
            self.overcommitted,
            self.shortfall,
            self.rebalances,
            self.database_errors,
            self.prometheus_errors,
            self.reconcile_duration,
            self.live_unconfirmed,
        )
        self._deployment_metrics = (
            self.deployment_allocated,
            self.deployment_observed,
            self.deployment_pool_size,
            self.deployment_max_overflow,
            self.deployment_restarts,
            self.deployment_allotments,
        )
        self._published: dict[str, set[Key]] = {}

    def serve(self, port: int, address: str = "0.0.0.0") -> None:  # scraped from the pod network
        """Serve ``/metrics`` on ``port`` in a background thread."""
        start_http_server(port, addr=address, registry=self.registry)

    def record_plan(self, budget: str, plan: BudgetPlan, observed: Mapping[Key, int]) -> None:
        """Publish a round's plan; Deployments no longer in it lose their series."""
        self.max_connections.labels(budget).set(plan.availability.max_connections)
        self.available.labels(budget).set(plan.available)
        self.allocated.labels(budget).set(plan.allocated)
        self.overcommitted.labels(budget).set(0 if plan.feasible else 1)
        self.shortfall.labels(budget).set(plan.shortfall)
        current: set[Key] = set()
        for a in plan.allocations:
            ns, name = a.workload.key
            current.add((ns, name))
            self.deployment_allocated.labels(budget, ns, name).set(a.connections)
            self.deployment_observed.labels(budget, ns, name).set(observed.get((ns, name), 0))
            self.deployment_pool_size.labels(budget, ns, name).set(a.pool_size)
            self.deployment_max_overflow.labels(budget, ns, name).set(a.max_overflow)
        self.forget_deployments(budget, self._published.get(budget, set()) - current)
        self._published[budget] = current

    def record_round(self, budget: str, seconds: float) -> None:
        self.reconcile_duration.labels(budget).observe(seconds)

    def count_rebalance(self, budget: str) -> None:
        self.rebalances.labels(budget).inc()

    def count_database_error(self, budget: str) -> None:
        self.database_errors.labels(budget).inc()

    def count_prometheus_error(self, budget: str) -> None:
        self.prometheus_errors.labels(budget).inc()

    def record_restarts(self, budget: str, keys: Iterable[Key]) -> None:
        for ns, name in keys:
            self.deployment_restarts.labels(budget, ns, name).inc()

    def record_live(self, budget: str, unconfirmed: int | None, allotted: Mapping[Key, int]) -> None:
        """A round's live delivery: pods still to confirm, and the allotments written per Deployment."""
        if unconfirmed is not None:
            self.live_unconfirmed.labels(budget).set(unconfirmed)
        for (ns, name), n in allotted.items():
            self.deployment_allotments.labels(budget, ns, name).inc(n)

    def forget_deployments(self, budget: str, keys: Iterable[Key]) -> None:
        for ns, name in keys:
            for metric in self._deployment_metrics:
                with contextlib.suppress(KeyError):  # never published for it
                    metric.remove(budget, ns, name)

    def forget_budget(self, budget: str) -> None:
        """Remove every series of a budget that is gone."""
        self.forget_deployments(budget, self._published.pop(budget, set()))
        for metric in self._budget_metrics:
            with contextlib.suppress(KeyError):
                metric.remove(budget)
