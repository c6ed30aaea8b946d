"""Weighted integer water-filling: the one allocation rule the planner uses.

Every claimant draws ``multiplier`` connections per step of its level (a step is one more connection per
pool of every process of every pod). The rule, stated as the slow reference greedy it is defined by:

    repeat: among the claimants below their cap whose next step still fits the remaining budget,
            raise the one with the lowest ``level / weight`` (ties: lowest index) by one step.

A claimant whose step does not fit is never considered again (the remaining budget only shrinks).
``fill`` computes exactly the reference's result, fast: it jumps to the greedy state at a level ``mu``
(every position below ``mu`` filled, none above), chosen so that no claimant could have been skipped on
the way, and finishes with the greedy itself on a heap.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass

# Levels are jumped to at a dyadic rational mu = p / 2**_SHIFT, so ceil(mu * weight) is exact integer math.
_SHIFT = 20
_ONE = 1 << _SHIFT


@dataclass(slots=True)
class Claim:
    """One claimant: ``level`` is raised in place towards ``cap``, each step costing ``multiplier``."""

    multiplier: int
    level: int
    cap: int
    weight: int


def fill(budget: int, claims: Sequence[Claim]) -> int:
    """Raise the claims' levels by the reference greedy within ``budget``; return what is left unused."""
    active = [i for i, c in enumerate(claims) if c.level < c.cap and c.multiplier > 0]
    if not active or budget <= 0:
        return budget
    budget = _jump(budget, claims, active)
    return _greedy(budget, claims, active)


def reference_fill(budget: int, claims: Sequence[Claim]) -> int:
    """The definition of ``fill``, one step at a time: slow, used by the tests as the oracle."""
    excluded: set[int] = set()
    while True:
        best = -1
        for i, c in enumerate(claims):
            if i in excluded or c.level >= c.cap or c.multiplier <= 0:
                continue
            if c.multiplier > budget:
                excluded.add(i)
                continue
            if best < 0 or c.level * claims[best].weight < claims[best].level * c.weight:
                best = i
        if best < 0:
            return budget
        claims[best].level += 1
        budget -= claims[best].multiplier


def _jump(budget: int, claims: Sequence[Claim], active: list[int]) -> int:
    """Move every active claim to the greedy state at the highest level that keeps a full step in hand.

    The relaxed (real-valued) cost of raising everyone to level ``lam`` is piecewise linear; we solve it for
    a target that leaves room for rounding up (one step per claim) and for the largest single step, so the
    greedy could not have skipped anyone before reaching that state.
    """
    largest_step = 0
    rounding = 0
    # Slope of the relaxed cost changes at lam = level/weight (starts rising) and lam = cap/weight (stops).
    # Changes at the same point are summed first (no cost accrues between equal points): levels and weights
    # are small integers, so thousands of claims share a few hundred points, and only those are sorted.
    slope_change: dict[float, int] = {}
    for i in active:
        c = claims[i]
        step = c.multiplier
        rounding += step
        if step > largest_step:
            largest_step = step
        rate = step * c.weight
        start, stop = c.level / c.weight, c.cap / c.weight
        slope_change[start] = slope_change.get(start, 0) + rate
        slope_change[stop] = slope_change.get(stop, 0) - rate
    target = budget - largest_step - rounding
    if target <= 0:
        return budget
    cost = 0.0
    slope = 0
    points = sorted(slope_change)
    lam = points[0]
    for at in points:
        step_cost = slope * (at - lam)
        if cost + step_cost >= target:
            lam += (target - cost) / slope
            break
        cost += step_cost
        lam = at
        slope += slope_change[at]
    # Round mu down to a dyadic rational; the exact integer state below is the greedy state at mu.
    mu = int(lam * _ONE)
    raised: list[tuple[int, int]] = []
    spent = 0
    for i in active:
        c = claims[i]
        level = (mu * c.weight + _ONE - 1) >> _SHIFT
        if level > c.cap:
            level = c.cap
        if level > c.level:
            spent += (level - c.level) * c.multiplier
            raised.append((i, level))
    if spent > budget - largest_step:  # float error in lam: skip the jump, the greedy alone is still exact
        return budget
    for i, level in raised:
        claims[i].level = level
    return budget - spent


def _greedy(budget: int, claims: Sequence[Claim], active: list[int]) -> int:
    heap = [(claims[i].level / claims[i].weight, i) for i in active if claims[i].level < claims[i].cap]
    heapq.heapify(heap)
    # Once no step fits any more (typically the budget is spent to 0), stop instead of popping every claim.
    smallest = min((claims[i].multiplier for _, i in heap), default=0)
    while heap and budget >= smallest:
        i = heap[0][1]
        c = claims[i]
        if c.multiplier > budget:
            heapq.heappop(heap)  # excluded for good: the budget never grows
            continue
        c.level += 1
        budget -= c.multiplier
        if c.level < c.cap:
            heapq.heapreplace(heap, (c.level / c.weight, i))  # one sift instead of a pop and a push
        else:
            heapq.heappop(heap)
    return budget
