"""A PoolBudget's status: conditions and per-Deployment allocations, built from a round's outcome. Pure.

Conditions keep their ``lastTransitionTime`` while their status stays the same, and the whole status is compared
with what is stored, so an unchanged budget is never written (an operator restart writes nothing).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from poolbudget.api.conditions import (
    CONDITION_ORDER,
    OVERCOMMITTED,
    READY,
    ConditionStatus,
    ConditionType,
    Reason,
)
from poolbudget.api.models import Condition, DeploymentAllocation, PoolBudgetStatus
from poolbudget.api.objects import Key
from poolbudget.observe.objects import status_of
from poolbudget.planning.plan import BudgetPlan
from poolbudget.planning.transitions import Wait

# Waits that keep the plan from being in force (hysteresis waits are deliberate: the plan is close enough).
BLOCKING_WAITS = frozenset(
    {Wait.SHRINKS_IN_FLIGHT, Wait.NO_ROOM, Wait.GROWTH_FROZEN, Wait.NO_ROOM_TO_SHRINK, Wait.ROLLOUT_IN_FLIGHT}
)


@dataclass(frozen=True, slots=True)
class ConditionUpdate:
    """What a round says about one condition; the time is added when it is merged."""

    type: ConditionType
    status: ConditionStatus
    reason: str
    message: str = ""


def merge_conditions(
    previous: Iterable[Condition],
    updates: Iterable[ConditionUpdate],
    now: str,
    generation: int | None,
) -> list[Condition]:
    """The new conditions: ``lastTransitionTime`` moves only when a condition's status changes.

    Conditions the round says nothing about are kept as they were, in a fixed order of types.
    """
    by_type = {c.type: c for c in previous}
    for update in updates:
        old = by_type.get(update.type)
        since = old.last_transition_time if old is not None and old.status == update.status else now
        by_type[update.type] = Condition(
            type=update.type,
            status=update.status,
            reason=update.reason,
            message=update.message,
            last_transition_time=since,
            observed_generation=generation,
        )
    return [by_type[t] for t in CONDITION_ORDER if t in by_type]


def condition_of(conditions: Iterable[Condition], kind: ConditionType) -> Condition | None:
    return next((c for c in conditions if c.type == kind), None)


def stored_status(body: Mapping[str, Any]) -> PoolBudgetStatus:
    """The status as stored on the object; empty when there is none or it does not parse."""
    try:
        return PoolBudgetStatus.model_validate(dict(status_of(body)))
    except ValueError:
        return PoolBudgetStatus()


def ready_update(
    plan: BudgetPlan | None,
    waits: Mapping[Key, Wait],
    database_error: str | None,
    limits_problem: str | None = None,
) -> ConditionUpdate:
    """Ready: the plan fits and is in force (every change written, none held back by the shrink-first rule)."""
    if plan is None:
        return ConditionUpdate(
            READY, "False", Reason.LIMITS_UNKNOWN, limits_problem or "no limits to plan with"
        )
    if not plan.feasible:
        return ConditionUpdate(
            READY, "False", Reason.OVERCOMMITTED, f"the minimums need {plan.shortfall} connections more"
        )
    blocked = sorted(f"{ns}/{name}" for (ns, name), wait in waits.items() if wait in BLOCKING_WAITS)
    if blocked:
        return ConditionUpdate(
            READY, "False", Reason.REBALANCING, f"{len(blocked)} waiting to change: " + ", ".join(blocked)
        )
    if database_error is not None:
        return ConditionUpdate(
            READY, "False", Reason.DATABASE_UNREACHABLE, "planning with the last known limits; no increases"
        )
    count = len(plan.allocations)
    return ConditionUpdate(
        READY,
        "True",
        Reason.BALANCED,
        f"{count} Deployment{'s' if count != 1 else ''} within {plan.available} available connections",
    )


def overcommitted_update(plan: BudgetPlan) -> ConditionUpdate:
    if plan.feasible:
        return ConditionUpdate(
            OVERCOMMITTED, "False", Reason.FITS, f"allocated {plan.allocated} of {plan.available}"
        )
    return ConditionUpdate(
        OVERCOMMITTED,
        "True",
        Reason.OVERCOMMITTED,
        f"the minimums of {len(plan.allocations)} Deployments need {plan.shortfall} connections more than the "
        f"{plan.available} available; every Deployment is held at the fairest split that fits",
    )


# Ages ("confirmed 40s ago") tick on every demand read: written as is, they would rewrite the status each time.
_AGE = re.compile(r"\b\d+s ago\b")


def steady_demand_detail(detail: str) -> str:
    """A demand explanation without the ages in it, so the status changes only when the decision does."""
    return _AGE.sub("earlier", detail)


def allocations(
    plan: BudgetPlan,
    waits: Mapping[Key, Wait],
    demand_detail: Mapping[Key, str] | None = None,
    confirmed: Mapping[Key, int] | None = None,
) -> list[DeploymentAllocation]:
    """Per Deployment: the planned settings and why, how its demand was decided (demand mode), and what holds
    the change back if anything does."""
    out = []
    for a in plan.allocations:
        w = a.workload
        reason = a.reason
        detail = (demand_detail or {}).get(w.key)
        if detail:
            reason += f"; demand: {steady_demand_detail(detail)}"
        if w.key in waits:
            reason += f"; not applied yet: {waits[w.key].value}"
        out.append(
            DeploymentAllocation(
                namespace=w.namespace,
                name=w.name,
                profile=w.profile,
                pods=w.pods,
                processes_per_pod=w.processes_per_pod,
                pools_per_process=w.pools_per_process,
                pool_size=a.pool_size,
                max_overflow=a.max_overflow,
                connections=a.connections,
                reason=reason,
                delivery="live" if confirmed is not None and w.key in confirmed else None,
                confirmed_pods=(confirmed or {}).get(w.key),
            )
        )
    return out


def available_reason(plan: BudgetPlan, held: Mapping[Key, int] | None = None) -> str:
    """The arithmetic of ``available``, naming the refused Deployments still counted in its ``unmanaged`` term
    (they keep the settings poolbudget wrote, so their connections are real but no longer in the plan)."""
    text = plan.availability.reason
    counted = {key: n for key, n in sorted((held or {}).items()) if n}
    if counted:
        names = ", ".join(f"{ns}/{name} {n}" for (ns, name), n in counted.items())
        text += (
            f"; unmanaged includes {sum(counted.values())} held by refused Deployments still at their "
            f"settings: {names}"
        )
    return text


def build_status(
    *,
    previous: PoolBudgetStatus,
    plan: BudgetPlan | None,
    updates: Sequence[ConditionUpdate],
    waits: Mapping[Key, Wait],
    limits_source: str | None,
    now: str,
    generation: int | None,
    demand_detail: Mapping[Key, str] | None = None,
    held: Mapping[Key, int] | None = None,
    confirmed: Mapping[Key, int] | None = None,
    live_held: int = 0,
) -> PoolBudgetStatus:
    """The status after a round. Without a plan (invalid spec, no limits), the numbers are kept as they were.

    ``demand_detail`` explains each Deployment's demand (demand mode); ``held`` maps refused Deployments that
    still carry this budget's settings to the connections counted for them; ``confirmed``, per live
    Deployment, its pods that applied their allotment; ``live_held``, what live Deployments hold outside the
    plan (counted in ``allocated``).
    """
    conditions = merge_conditions(previous.conditions, updates, now, generation)
    ready = condition_of(conditions, READY)
    if plan is None:
        return previous.model_copy(
            update={
                "conditions": conditions,
                "ready": ready.status if ready else None,
                "observed_generation": generation,
            }
        )
    return PoolBudgetStatus(
        max_connections=plan.availability.max_connections,
        available=plan.available,
        allocated=plan.allocated + live_held,
        live_held=live_held or None,
        deployment_count=len(plan.allocations),
        ready=ready.status if ready else None,
        limits_source=limits_source,
        available_reason=available_reason(plan, held),
        shortfall=plan.shortfall,
        allocations=allocations(plan, waits, demand_detail, confirmed),
        conditions=conditions,
        observed_generation=generation,
    )


def status_document(status: PoolBudgetStatus) -> dict[str, Any]:
    """The status as written to the API (camelCase, no nulls)."""
    document: dict[str, Any] = status.model_dump(by_alias=True, exclude_none=True, mode="json")
    return document


def status_differs(stored: Mapping[str, Any] | None, document: Mapping[str, Any]) -> bool:
    """Whether writing ``document`` would change the stored status (fields others keep there are ignored)."""
    stored = stored or {}
    return any(stored.get(key) != value for key, value in document.items()) or any(
        key not in document for key in stored if key in OWNED_FIELDS
    )


# The status fields poolbudget writes (others may keep fields of their own in the status).
OWNED_FIELDS = frozenset(
    PoolBudgetStatus.model_fields[name].alias or name for name in PoolBudgetStatus.model_fields
)
