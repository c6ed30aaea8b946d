"""A PoolBudget's status: conditions keep their transition time, and an unchanged status is not rewritten. Pure."""

from __future__ import annotations

from poolbudget.api.conditions import OVERCOMMITTED, READY
from poolbudget.api.limits import DatabaseLimits
from poolbudget.api.models import Condition, PoolBudgetStatus
from poolbudget.controller.status import (
    ConditionUpdate,
    build_status,
    condition_of,
    merge_conditions,
    overcommitted_update,
    ready_update,
    status_differs,
    status_document,
)
from poolbudget.planning.limits import compute_available
from poolbudget.planning.plan import BudgetPlan, Workload, plan_budget
from poolbudget.planning.transitions import Wait

T0, T1 = "2026-01-01T00:00:00Z", "2026-01-01T00:01:00Z"


def plan_for(available_max: int, pods: int = 2) -> BudgetPlan:
    workloads = [Workload("shop", name, "sqlalchemy", pods, 1) for name in ("a", "b")]
    return plan_budget("main", compute_available(DatabaseLimits(available_max)), workloads)


def test_transition_time_moves_only_when_the_status_changes() -> None:
    first = merge_conditions([], [ConditionUpdate(READY, "True", "Balanced", "2 Deployments")], T0, 1)
    same = merge_conditions(first, [ConditionUpdate(READY, "True", "Balanced", "3 Deployments")], T1, 2)
    assert same[0].last_transition_time == T0
    assert same[0].message == "3 Deployments"
    assert same[0].observed_generation == 2
    flipped = merge_conditions(same, [ConditionUpdate(READY, "False", "Rebalancing")], T1, 2)
    assert flipped[0].last_transition_time == T1


def test_conditions_come_in_a_fixed_order_and_unmentioned_ones_stay() -> None:
    kept = Condition(type="Invalid", status="False", reason="Valid", last_transition_time=T0)
    merged = merge_conditions(
        [kept],
        [ConditionUpdate(OVERCOMMITTED, "False", "Fits"), ConditionUpdate(READY, "True", "Balanced")],
        T1,
        1,
    )
    assert [c.type for c in merged] == ["Ready", "Overcommitted", "Invalid"]


def test_ready_says_why_not() -> None:
    fits = plan_for(100)
    assert ready_update(fits, {}, None).status == "True"
    waiting = ready_update(fits, {("shop", "a"): Wait.SHRINKS_IN_FLIGHT}, None)
    assert (waiting.status, waiting.reason) == ("False", "Rebalancing")
    assert "shop/a" in waiting.message
    shrink_held = ready_update(fits, {("shop", "b"): Wait.NO_ROOM_TO_SHRINK}, None)
    assert (shrink_held.status, shrink_held.message) == (
        "False",
        "1 waiting to change: shop/b",
    )  # not in force
    held = ready_update(fits, {("shop", "a"): Wait.TOO_SOON}, None)
    assert held.status == "True"  # hysteresis is deliberate, not a problem
    short = plan_for(10, pods=4)
    assert ready_update(short, {}, None).reason == "Overcommitted"
    update = overcommitted_update(short)
    assert update.status == "True"
    assert "more than the" in update.message


def test_an_unchanged_round_does_not_rewrite_the_status() -> None:
    plan = plan_for(100)
    updates = [ConditionUpdate(READY, "True", "Balanced", "ok")]
    first = build_status(
        previous=PoolBudgetStatus(),
        plan=plan,
        updates=updates,
        waits={},
        limits_source="spec",
        now=T0,
        generation=1,
    )
    stored = status_document(first)
    again = build_status(
        previous=PoolBudgetStatus.model_validate(stored),
        plan=plan,
        updates=updates,
        waits={},
        limits_source="spec",
        now=T1,
        generation=1,
    )
    assert not status_differs(stored, status_document(again))
    assert condition_of(again.conditions, READY) is not None
    assert stored["deploymentCount"] == 2
    assert stored["allocations"][0]["poolSize"] >= 1
    # another field kept by someone else in the status does not force a write
    assert not status_differs({**stored, "kopf": {"progress": {}}}, status_document(again))


def test_a_waiting_deployment_says_so_in_its_allocation() -> None:
    plan = plan_for(100)
    status = build_status(
        previous=PoolBudgetStatus(),
        plan=plan,
        updates=[],
        waits={("shop", "a"): Wait.NO_ROOM},
        limits_source="spec",
        now=T0,
        generation=1,
    )
    assert "not applied yet: waiting for room" in status.allocations[0].reason


def test_allocations_explain_demand_and_the_available_reason_names_held_deployments() -> None:
    plan = plan_for(100)
    detail = {("shop", "a"): "demand 4 kept: 5 is within the deadband; holding demand 4 confirmed 42s ago"}
    status = build_status(
        previous=PoolBudgetStatus(),
        plan=plan,
        updates=[],
        waits={("shop", "a"): Wait.NO_ROOM},
        limits_source="spec",
        now=T0,
        generation=1,
        demand_detail=detail,
        held={("shop", "c"): 12},
    )
    reason = status.allocations[0].reason
    assert "; demand: demand 4 kept: 5 is within the deadband; holding demand 4 confirmed earlier" in reason
    assert "earlier; not applied yet: waiting for room" in reason
    assert "; demand:" not in status.allocations[1].reason
    assert status.available_reason is not None
    assert status.available_reason.endswith("held by refused Deployments still at their settings: shop/c 12")
