"""Weighted integer water-filling: the one allocation rule the planner uses.

Every claimant draws ``multiplier`` connections per step of its level (a step is one more connection per
pool of every process of every pod). The rule, stated as the slow reference greedy it is defined by:

    repeat: among the claimants below their cap whose next step still fits the remaining budget,
            raise the one with the lowest ``level / weight`` (ties: lowest index) by one step.

A claimant whose step does not fit is never considered again (the remaining budget only shrinks).
``fill`` computes exactly the reference's result, fast: it jumps to the greedy state at a level ``mu``
(every position below ``mu`` filled, none above), chosen so that no claimant could have been skipped on
the way, and finishes with the greedy itself.

The work is done on parallel lists (``fill_levels`` over ``ClaimLists``), which is what the planner hands
it: no object per claimant. ``fill`` is the same rule over ``Claim`` objects.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

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


class ClaimLists(NamedTuple):
    """Claims as parallel lists, claim ``i`` at index ``i`` of each: no object per claim. ``levels`` is raised in
    place."""

    multipliers: Sequence[int]
    levels: list[int]
    caps: Sequence[int]
    weights: Sequence[int]


def fill(budget: int, claims: Sequence[Claim]) -> int:
    """Raise the claims' levels by the reference greedy within ``budget``; return what is left unused."""
    lists = ClaimLists(
        [c.multiplier for c in claims],
        [c.level for c in claims],
        [c.cap for c in claims],
        [c.weight for c in claims],
    )
    left = fill_levels(budget, lists)
    for c, level in zip(claims, lists.levels, strict=True):
        c.level = level
    return left


def fill_levels(budget: int, claims: ClaimLists) -> int:
    """``fill`` on parallel lists: raise ``claims.levels`` in place; return what is left of ``budget``."""
    if budget <= 0:
        return budget
    multipliers, levels, caps, _ = claims
    active = [
        i
        for i, (m, level, cap) in enumerate(zip(multipliers, levels, caps, strict=True))
        if level < cap and m > 0
    ]
    if not active:
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


def _jump(budget: int, claims: ClaimLists, active: list[int]) -> int:
    """Move every active claim to the greedy state at the highest level that keeps a full step in hand.

    The relaxed (real-valued) cost of raising everyone to level ``lam`` is piecewise linear; we solve it for
    a target that leaves room for rounding up (one step per claim) and for the largest single step, so the
    greedy could not have skipped anyone before reaching that state.
    """
    multipliers, levels, caps, weights = claims
    steps = [multipliers[i] for i in active]
    largest_step = max(steps)
    target = budget - largest_step - sum(steps)  # the sum: rounding up costs at most one step per claim
    if target <= 0:
        return budget
    # Slope of the relaxed cost changes at lam = level/weight (starts rising) and lam = cap/weight (stops).
    # Levels, caps and weights are small integers, so thousands of claims come in a few hundred distinct
    # (level, cap, weight): steps are summed per triple first, then slope changes per point (no cost accrues
    # between equal points), and only those points are sorted.
    summed: dict[tuple[int, int, int], int] = {}
    for i, step in zip(active, steps, strict=True):
        key = (levels[i], caps[i], weights[i])
        summed[key] = summed.get(key, 0) + step
    slope_change: dict[float, int] = {}
    for (level, cap, weight), step in summed.items():
        rate = step * weight
        start, stop = level / weight, cap / weight
        slope_change[start] = slope_change.get(start, 0) + rate
        slope_change[stop] = slope_change.get(stop, 0) - rate
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
    jumped = levels.copy()
    spent = 0
    for i, step in zip(active, steps, strict=True):
        level = (mu * weights[i] + _ONE - 1) >> _SHIFT
        if level > caps[i]:
            level = caps[i]
        if level > jumped[i]:
            spent += (level - jumped[i]) * step
            jumped[i] = level
    if spent > budget - largest_step:  # float error in lam: skip the jump, the greedy alone is still exact
        return budget
    levels[:] = jumped
    return budget - spent


def _greedy(budget: int, claims: ClaimLists, active: list[int]) -> int:
    """The reference greedy itself, from where the jump left off.

    Claims are queued by the ``level / weight`` of their next step; the claims that share one (thousands do:
    levels and weights are small integers) wait in one group, so the heap orders the few distinct values
    and each step is a list append, not a heap operation over every claim. A group is taken in index order.
    """
    multipliers, levels, caps, weights = claims
    waiting: dict[float, list[int]] = {}
    for i in active:
        if levels[i] < caps[i]:
            waiting.setdefault(levels[i] / weights[i], []).append(i)
    if not waiting:
        return budget
    # Once no step fits any more (typically the budget is spent to 0), stop instead of visiting every claim.
    smallest = min(multipliers[i] for group in waiting.values() for i in group)
    keys = list(waiting)
    heapq.heapify(keys)
    while keys and budget >= smallest:
        for i in sorted(waiting.pop(heapq.heappop(keys))):
            step = multipliers[i]
            if step > budget:
                continue  # excluded for good: the budget never grows
            level = levels[i] + 1
            levels[i] = level
            budget -= step
            if level < caps[i]:
                key = level / weights[i]  # always higher than the group's: it waits for a later turn
                if key in waiting:
                    waiting[key].append(i)
                else:
                    waiting[key] = [i]
                    heapq.heappush(keys, key)
    return budget
