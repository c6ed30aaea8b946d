"""Property-based proof of SPEC.md's invariant, over random budgets, Deployments, surges, HPAs and workers.

Pod, process and bound counts are recomputed here from the raw manifests, independently of the planner.
"""

from __future__ import annotations

import math
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from poolbudget.api.limits import DatabaseLimits
from poolbudget.api.models import PoolBudget
from poolbudget.api.workloads import Deployment, HorizontalPodAutoscaler
from poolbudget.planning.budget import plan_for_budget
from poolbudget.planning.limits import compute_available
from poolbudget.planning.plan import Workload, plan_budget
from tests.strategies import scenarios


def expected_multiplier(doc: dict[str, Any], hpas: list[dict[str, Any]], hpa_mode: str, overlap: bool) -> int:
    spec, ann = doc["spec"], doc["metadata"]["annotations"]
    replicas = spec.get("replicas", 1)
    hpa = next(
        (
            h
            for h in hpas
            if h["spec"]["scaleTargetRef"]["name"] == doc["metadata"]["name"]
            and h["metadata"]["namespace"] == doc["metadata"]["namespace"]
        ),
        None,
    )
    if hpa is not None and hpa_mode == "maxReplicas":
        replicas = hpa["spec"]["maxReplicas"]
    surge = 0
    if spec["strategy"]["type"] == "RollingUpdate" and replicas > 0:
        raw = spec["strategy"].get("rollingUpdate", {}).get("maxSurge", "25%")
        surge = raw if isinstance(raw, int) else math.ceil(replicas * int(raw[:-1]) / 100)
        if overlap:  # every old pod beside the whole new ReplicaSet
            surge = max(surge, replicas)
    env = {e["name"]: e["value"] for e in spec["template"]["spec"]["containers"][0]["env"]}
    processes = int(ann.get("poolbudget.io/processes", env.get("WEB_CONCURRENCY", 1)))
    pools = 2 if ann.get("poolbudget.io/profile") == "airflow" else 1
    return (replicas + surge) * processes * pools


def expected_bounds(doc: dict[str, Any], budget: dict[str, Any]) -> tuple[int, int]:
    ann, defaults = doc["metadata"]["annotations"], budget["spec"]["defaults"]
    low = int(ann.get("poolbudget.io/min-connections", defaults["minConnectionsPerProcess"]))
    high = int(ann.get("poolbudget.io/max-connections", defaults["maxConnectionsPerProcess"]))
    return low, max(low, high)


@settings(max_examples=2500, deadline=None)
@given(scenarios())
def test_the_invariant_holds_whenever_the_minimums_fit(scenario: Any) -> None:
    budget_doc, docs, hpa_docs, max_connections = scenario
    budget = PoolBudget.model_validate(budget_doc)
    limits = DatabaseLimits(max_connections)
    outcome = plan_for_budget(
        budget,
        limits,
        [Deployment.model_validate(d) for d in docs],
        [HorizontalPodAutoscaler.model_validate(h) for h in hpa_docs],
    )
    plan = outcome.plan
    available = compute_available(limits, budget.spec.reserved).available
    assert plan.available == available
    assert not outcome.refused

    by_key = {(a.workload.namespace, a.workload.name): a for a in plan.allocations}
    mode = budget_doc["spec"]["sizing"]["hpa"]
    overlap = budget_doc["spec"]["sizing"]["rolloutOverlap"]
    footprint, at_minimum, at_one = 0, 0, 0
    for doc in docs:
        allocation = by_key[(doc["metadata"]["namespace"], doc["metadata"]["name"])]
        multiplier = expected_multiplier(doc, hpa_docs, mode, overlap)
        low, high = expected_bounds(doc, budget_doc)
        assert allocation.workload.multiplier == multiplier
        assert allocation.connections == multiplier * allocation.per_process
        assert allocation.pool_size + allocation.max_overflow == allocation.per_process
        assert allocation.pool_size >= 1
        footprint += allocation.connections
        at_minimum += multiplier * low
        at_one += multiplier
        if plan.feasible:
            assert low <= allocation.per_process <= high
            if allocation.per_process < high and multiplier:
                assert multiplier > plan.unused, "budget left idle that this Deployment could use"
        else:
            assert 1 <= allocation.per_process <= low

    assert plan.allocated == footprint
    assert plan.feasible == (at_minimum <= available)
    assert plan.shortfall == max(0, at_minimum - available)
    if plan.feasible or at_one <= available:
        assert footprint <= available

    again = plan_for_budget(
        budget,
        limits,
        [Deployment.model_validate(d) for d in reversed(docs)],
        [HorizontalPodAutoscaler.model_validate(h) for h in reversed(hpa_docs)],
    )
    assert again.plan == plan


workloads = st.lists(
    st.builds(
        lambda i, pods, procs, low, room, weight, demand: Workload(
            "ns", f"w{i}", "sqlalchemy", pods, procs, 1, low, low + room, weight, True, 0.5, demand
        ),
        st.integers(0, 10_000),
        st.integers(0, 8),
        st.integers(1, 4),
        st.integers(1, 4),
        st.integers(0, 40),
        st.integers(1, 5),
        st.one_of(st.none(), st.integers(0, 60)),
    ),
    max_size=10,
    unique_by=lambda w: w.name,
)


@settings(max_examples=2000, deadline=None)
@given(workloads, st.integers(0, 2000))
def test_needs_are_met_fairly_before_anyone_gets_more(workloads: list[Workload], available: int) -> None:
    """Nobody above its minimum is more than one step ahead (by weight) of anyone still below its need whose
    step costs no more; nobody gets beyond its need while another with a step as cheap is below its own."""
    plan = plan_budget("db", compute_available(DatabaseLimits(available, 0)), workloads)
    if not plan.feasible:
        return
    running = [a for a in plan.allocations if a.workload.multiplier]
    for i in running:
        wi = i.workload
        if i.per_process >= wi.demand_cap:
            continue
        for j in running:
            wj = j.workload
            if j is i or wi.multiplier > wj.multiplier:
                continue
            if j.per_process > wj.min_per_process:
                assert (j.per_process - 1) * wi.weight <= i.per_process * wj.weight
            assert j.per_process <= wj.demand_cap


def test_demand_moves_connections_to_the_busy_deployment() -> None:
    busy = Workload(
        "ns", "busy", "sqlalchemy", 2, 1, min_per_process=2, max_per_process=40, demand_per_process=30
    )
    idle = Workload(
        "ns", "idle", "sqlalchemy", 2, 1, min_per_process=2, max_per_process=40, demand_per_process=3
    )
    plan = plan_budget("db", compute_available(DatabaseLimits(60, 0)), [busy, idle])
    levels = {a.workload.name: a.per_process for a in plan.allocations}
    assert levels == {"busy": 27, "idle": 3}
    assert plan.allocated == 60
