"""The inputs of a round besides the cluster's objects: the database's limits (and the unmanaged connections it
reports), and in demand mode the measured demand.

Each is re-read every ``spec.database.refreshSeconds`` at the most, and kept in the budget's memory in between; a
read that fails keeps the last known value and says so in the condition it returns.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from poolbudget.adapters.errors import SecretError
from poolbudget.adapters.postgres import DatabaseAuthFailed, DatabaseError, read_client_backends, redact_url
from poolbudget.adapters.postgres import read_limits as read_database_limits
from poolbudget.adapters.prometheus import PrometheusAccess
from poolbudget.api.conditions import DATABASE_REACHABLE, METRICS_AVAILABLE, Reason
from poolbudget.api.limits import DatabaseLimits
from poolbudget.api.models import DatabaseSpec, PoolBudget, PrometheusAccessSpec
from poolbudget.api.objects import Key
from poolbudget.controller.demand import measure_demand
from poolbudget.controller.state import BudgetMemory, Context
from poolbudget.controller.status import ConditionUpdate
from poolbudget.planning.budget import BudgetOutcome
from poolbudget.planning.demand import DemandState
from poolbudget.planning.unmanaged import unmanaged_connections

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class LimitsView:
    """The limits a round plans with, the DatabaseReachable condition they make, and whether growth may go."""

    limits: DatabaseLimits | None
    condition: ConditionUpdate
    allow_growth: bool
    unmanaged: int = 0


async def read_limits(
    ctx: Context,
    memory: BudgetMemory,
    budget: PoolBudget,
    application_names: set[str],
    live_tag_ids: frozenset[str] = frozenset(),
) -> LimitsView:
    """The limits to plan with: the database's (re-read every refreshSeconds), else the last known, else spec."""
    database = budget.spec.database
    ref = database.connection_secret_ref
    if ref is None:
        return limits_view(database, memory)
    now = ctx.monotonic()
    if memory.limits_read_at is None or now - memory.limits_read_at >= database.refresh_seconds:
        memory.limits_read_at = now
        namespace = ref.namespace or ctx.operator_namespace
        try:
            url = await ctx.cluster.read_secret_value(namespace, ref.name, ref.key)
            memory.database_url = url
            read = await read_database_limits(url, role=database.role, timeout=ctx.database_timeout)
            if budget.spec.unmanaged.subtract:
                backends = await read_client_backends(url, timeout=ctx.database_timeout)
                memory.unmanaged = unmanaged_connections(
                    backends, application_names, budget.spec.unmanaged.margin, live_tag_ids
                )
            memory.limits, memory.database_error = read, None
            memory.database_reason = f"limits read from {redact_url(url)}"
        except SecretError as exc:
            memory.database_url = None
            memory.database_error, memory.database_reason = str(exc), Reason.SECRET_UNAVAILABLE
        except DatabaseAuthFailed as exc:
            memory.database_error, memory.database_reason = str(exc), Reason.AUTHENTICATION_FAILED
        except DatabaseError as exc:
            memory.database_error, memory.database_reason = str(exc), Reason.UNREACHABLE
        if memory.database_error is not None:
            ctx.metrics.count_database_error(budget.name)
            logger.warning("PoolBudget %s: %s", budget.name, memory.database_error)
    return limits_view(database, memory)


def limits_view(database: DatabaseSpec, memory: BudgetMemory) -> LimitsView:
    """What the last reads (kept in ``memory``) mean for this round: the limits, the condition, whether growth
    may go. Without a connection Secret, the declared maxConnections; when the database did not answer, the last
    known limits (else the declared ones), and only decreases."""
    declared = DatabaseLimits(database.max_connections, source="spec") if database.max_connections else None
    if database.connection_secret_ref is None:
        return LimitsView(
            declared,
            ConditionUpdate(
                DATABASE_REACHABLE,
                "Unknown",
                Reason.NOT_CONFIGURED,
                "no spec.database.connectionSecretRef: planning for spec.database.maxConnections",
            ),
            allow_growth=True,
        )
    if memory.database_error is None and memory.limits is not None:
        return LimitsView(
            memory.limits,
            ConditionUpdate(DATABASE_REACHABLE, "True", Reason.CONNECTED, memory.database_reason),
            allow_growth=True,
            unmanaged=memory.unmanaged,
        )
    limits = memory.limits or declared
    kept = (
        f"the last known limits ({memory.limits.max_connections} max_connections)"
        if memory.limits
        else "spec.database.maxConnections"
        if declared
        else "no limits at all (set spec.database.maxConnections as a fallback)"
    )
    return LimitsView(
        limits,
        ConditionUpdate(
            DATABASE_REACHABLE,
            "False",
            memory.database_reason or Reason.UNREACHABLE,
            f"{memory.database_error}; planning with {kept}; only decreases until it answers",
        ),
        allow_growth=False,
        unmanaged=memory.unmanaged,
    )


async def prometheus_access(ctx: Context, spec: PrometheusAccessSpec) -> PrometheusAccess:
    """The CA bundle, credentials and headers for Prometheus, read from the Secrets ``spec`` names."""

    async def read(namespace: str | None, name: str, key: str) -> str:
        return await ctx.cluster.read_secret_value(namespace or ctx.operator_namespace, name, key)

    ca = spec.ca_secret_ref
    token = spec.bearer_token_secret_ref
    basic = spec.basic_auth_secret_ref
    return PrometheusAccess(
        ca_pem=await read(ca.namespace, ca.name, ca.key) if ca else None,
        verify=not spec.insecure_skip_verify,
        bearer_token=(await read(token.namespace, token.name, token.key)).strip() if token else None,
        basic_auth=(
            (
                await read(basic.namespace, basic.name, basic.username_key),
                await read(basic.namespace, basic.name, basic.password_key),
            )
            if basic
            else None
        ),
        headers=tuple(sorted(spec.headers.items())),
    )


async def read_demand(
    ctx: Context, memory: BudgetMemory, budget: PoolBudget, outcome: BudgetOutcome
) -> tuple[dict[Key, int], ConditionUpdate, dict[Key, str]]:
    """Demand mode: per-process demand from the demand module (re-measured every refreshSeconds), the
    condition it makes, and per Deployment how its demand was decided."""
    if budget.spec.rebalance.mode != "demand":
        return (
            {},
            ConditionUpdate(
                METRICS_AVAILABLE, "Unknown", Reason.STATIC, "rebalance.mode is static: shares follow weights"
            ),
            {},
        )
    now = ctx.monotonic()
    due = memory.demand_read_at is None or now - memory.demand_read_at >= budget.spec.database.refresh_seconds
    if due or memory.demand_update is None:
        memory.demand_read_at = now
        if memory.demand_state is None:
            memory.demand_state = DemandState()
        try:
            access = await prometheus_access(ctx, budget.spec.metrics.prometheus)
        except SecretError as exc:
            # Without its credentials the reading would fail on every query: say why once, as an outage would.
            memory.demand_update = ConditionUpdate(
                METRICS_AVAILABLE,
                "False",
                Reason.SECRET_UNAVAILABLE,
                f"Prometheus access: {exc}; static weights",
            )
            ctx.metrics.count_prometheus_error(budget.name)
            return {}, memory.demand_update, {}
        reading = await measure_demand(
            budget.spec, outcome.managed, memory.database_url, memory.demand_state, prometheus=access
        )
        memory.demand = dict(reading.demand)
        memory.demand_detail = dict(reading.detail)
        # The message already says what is used meanwhile: static weights, or demand held through a short outage.
        memory.demand_update = ConditionUpdate(
            METRICS_AVAILABLE,
            "True" if reading.available else "False",
            reading.reason,
            reading.message or reading.reason,
        )
        if not reading.available:
            ctx.metrics.count_prometheus_error(budget.name)
    return memory.demand, memory.demand_update, memory.demand_detail
