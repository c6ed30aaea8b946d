"""The planner: from a budget's availability and the Deployments drawing on it, each one's pool settings.

Pure and deterministic: the same inputs give the same plan, in the same order, with a reason for every number.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from operator import attrgetter, mul

from poolbudget.planning.limits import Availability
from poolbudget.planning.waterfill import ClaimLists, fill_levels

# Plans list Deployments by (namespace, name), sorted by one, then the other; attrgetter sorts without a Python
# call per item.
_BY_NAME = attrgetter("name")
_BY_NAMESPACE = attrgetter("namespace")


@dataclass(frozen=True, slots=True)
class Workload:
    """One opted-in Deployment as the planner sees it: how many pools it runs at once and its bounds.

    Levels are *per pool* connections: ``pool_size + max_overflow`` (or ``max_size``) of one pool of one process.
    """

    namespace: str
    name: str
    profile: str
    pods: int
    processes_per_pod: int
    pools_per_process: int = 1
    min_per_process: int = 2
    max_per_process: int = 50
    weight: int = 1
    has_overflow: bool = True
    overflow_ratio: float = 0.5
    demand_per_process: int | None = None
    pods_reason: str = ""
    processes_reason: str = ""
    replicas: int = 0  # R it is sized for (spec.replicas or the HPA's), without surge
    rolling: bool = True  # RollingUpdate (False: Recreate, whose old pods are gone before new ones start)

    @property
    def key(self) -> tuple[str, str]:
        return self.namespace, self.name

    @property
    def multiplier(self) -> int:
        """Connections one more step of the per-process level costs: every pool of every process of every pod."""
        return self.pods * self.processes_per_pod * self.pools_per_process

    @property
    def demand_cap(self) -> int:
        """What it needs: its measured demand within [min, max], or its max when demand is unknown."""
        if self.demand_per_process is None:
            return self.max_per_process
        return min(self.max_per_process, max(self.min_per_process, self.demand_per_process))


class Bound(StrEnum):
    """What stopped a Deployment's level where it is."""

    MAX = "max"
    DEMAND = "demand"
    SHARE = "share"
    MIN = "min"
    IDLE = "idle"
    SHORT = "overcommitted"


@dataclass(frozen=True, slots=True)
class Allocation:
    """The settings the plan gives one Deployment, and what they cost the budget."""

    workload: Workload
    per_process: int
    pool_size: int
    max_overflow: int
    bound: Bound

    @property
    def connections(self) -> int:
        return self.workload.multiplier * self.per_process

    @property
    def reason(self) -> str:
        w = self.workload
        why = {
            Bound.MAX: f"at its max of {w.max_per_process} per process",
            Bound.DEMAND: f"meets its measured demand of {w.demand_per_process} per process",
            Bound.SHARE: f"fair share at weight {w.weight}",
            Bound.MIN: f"at its minimum of {w.min_per_process} per process",
            Bound.IDLE: "no pods: held at its minimum until it runs",
            Bound.SHORT: f"below its minimum of {w.min_per_process}: the budget is overcommitted",
        }[self.bound]
        pools = f" x {w.pools_per_process} pools" if w.pools_per_process != 1 else ""
        return (
            f"{w.pods} pods ({w.pods_reason}) x {w.processes_per_pod} processes ({w.processes_reason}){pools}"
            f" x {self.per_process} ({self.pool_size} pool + {self.max_overflow} overflow; {why})"
            f" = {self.connections}"
        )


@dataclass(frozen=True, slots=True)
class BudgetPlan:
    """One budget's plan. ``feasible`` is False when even every minimum does not fit: ``shortfall`` says by how much."""

    name: str
    availability: Availability
    allocations: tuple[Allocation, ...]
    shortfall: int

    @property
    def available(self) -> int:
        return self.availability.available

    @property
    def allocated(self) -> int:
        return sum(a.connections for a in self.allocations)

    @property
    def feasible(self) -> bool:
        return self.shortfall == 0

    @property
    def unused(self) -> int:
        return self.available - self.allocated


# Cached: thousands of Deployments share a few hundred (level, overflow) pairs, and a lookup takes less than
# half the time of the split.
@functools.lru_cache(maxsize=4096)
def split(per_process: int, has_overflow: bool, overflow_ratio: float) -> tuple[int, int]:
    """Split a per-pool total into (pool_size, max_overflow); at least one persistent connection."""
    if not has_overflow or per_process <= 1:
        return per_process, 0
    overflow = min(per_process - 1, int(per_process * overflow_ratio))
    return per_process - overflow, overflow


def plan_budget(name: str, availability: Availability, workloads: Iterable[Workload]) -> BudgetPlan:
    """Share ``availability.available`` among ``workloads`` by weighted water-filling.

    Every Deployment first gets its minimum; the rest is filled fairly up to what each needs (its demand, or its
    max without demand), then, if anything is left, up to each one's max. If the minimums do not fit, the plan is
    the fairest split that does (levels between 1 and the minimum) and ``shortfall`` says what is missing.
    """
    # By name, then (stably) by namespace: the (namespace, name) order, comparing strings instead of tuples,
    # in half the time.
    ordered = sorted(workloads, key=_BY_NAME)
    ordered.sort(key=_BY_NAMESPACE)
    budget = availability.available
    # What the fill needs, as parallel lists in plan order, read in one pass over the Workloads: at 10,000 they
    # outgrow the CPU caches, and each pass costs a cache miss per Deployment. The fill works on the lists,
    # with no object per Deployment. One without pods draws nothing (multiplier 0): the fill passes it by.
    multipliers: list[int] = []
    minimums: list[int] = []
    weights: list[int] = []
    needs: list[int] = []
    maximums: list[int] = []
    for w in ordered:
        multipliers.append(max(w.multiplier, 0))
        minimums.append(w.min_per_process)
        weights.append(w.weight)
        needs.append(w.demand_cap)
        maximums.append(w.max_per_process)
    at_minimum = sum(map(mul, multipliers, minimums))
    shortfall = max(0, at_minimum - budget)
    if shortfall:
        # From 1 up to the minimum; one without pods is held at its minimum.
        levels = [1 if m else low for m, low in zip(multipliers, minimums, strict=True)]
        fill_levels(budget - sum(multipliers), ClaimLists(multipliers, levels, minimums, weights))
    else:
        levels = minimums.copy()
        remaining = fill_levels(budget - at_minimum, ClaimLists(multipliers, levels, needs, weights))
        fill_levels(remaining, ClaimLists(multipliers, levels, maximums, weights))
    allocations = []
    for w, level, m in zip(ordered, levels, multipliers, strict=True):
        pool_size, overflow = split(level, w.has_overflow, w.overflow_ratio)
        allocations.append(Allocation(w, level, pool_size, overflow, _bound(w, level, m == 0, shortfall)))
    return BudgetPlan(name, availability, tuple(allocations), shortfall)


def _bound(w: Workload, level: int, idle: bool, shortfall: int) -> Bound:
    if idle:
        return Bound.IDLE
    if level < w.min_per_process:
        return Bound.SHORT
    if level >= w.max_per_process:
        return Bound.MAX
    if w.demand_per_process is not None and level == w.demand_cap:
        return Bound.DEMAND
    if level == w.min_per_process and shortfall == 0:
        return Bound.MIN
    return Bound.SHARE
