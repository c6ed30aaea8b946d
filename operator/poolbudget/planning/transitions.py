"""Moving from the settings Deployments run with to the planned ones without passing `available` on the way.

Pure: the operator (and the transitions simulation in the tests) pass in what they observed; this decides which
Deployments to change now and which must wait. The rules (SPEC.md, "The invariant"):

- shrinks go first, and always may (they are how an overcommitted budget gets back within its limit);
- no Deployment grows while any shrink is being applied or still rolling out (its old pods, running or
  terminating, still hold connections at the old settings);
- then grows are applied, in a stable order, only while the observed footprint (every pod that exists, at the
  settings it started with) plus the planned growth of everything growing stays within `available`;
- growth smaller than the hysteresis threshold, or sooner than the minimum interval after the last roll, waits;
  a shrink never waits for either.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

Key = tuple[str, str]


@dataclass(frozen=True, slots=True)
class Transition:
    """One Deployment's move, in connections per pod (every process and pool of one pod)."""

    key: Key
    current_per_pod: int  # at the settings its pod template carries now
    target_per_pod: int  # at the planned settings
    peak_pods: int  # pods the plan sizes it for (replicas + surge, or HPA max + surge)
    observed: int  # connections held by its existing pods, terminating ones included
    settled: bool  # its rollout is done: every pod runs the current template, none is terminating
    current_per_process: int = 0  # per-pool level now (for hysteresis), 0 when unknown
    target_per_process: int = 0
    seconds_since_roll: float | None = None  # None: never rolled by poolbudget

    @property
    def growth(self) -> int:
        """How much its budgeted footprint rises (negative: falls)."""
        return self.peak_pods * (self.target_per_pod - self.current_per_pod)


class Wait(StrEnum):
    """Why a change is held back this round."""

    SHRINKS_IN_FLIGHT = "waiting for shrinking Deployments to finish their rollouts"
    NO_ROOM = "waiting for room: the observed footprint plus this growth would pass available"
    GROWTH_FROZEN = "growth frozen: the database limits could not be confirmed"
    SMALL_CHANGE = "change below the rebalance threshold"
    TOO_SOON = "rolled too recently (rebalance.minIntervalSeconds)"


@dataclass(frozen=True, slots=True)
class Hysteresis:
    """When growth is worth a restart. Shrinks ignore it: they keep the invariant."""

    min_change_ratio: float = 0.0
    min_change_connections: int = 0
    min_interval_seconds: float = 0.0

    def holds_back(self, t: Transition) -> Wait | None:
        if t.current_per_process > 0:
            step = t.target_per_process - t.current_per_process
            if step < self.min_change_connections or step < self.min_change_ratio * t.current_per_process:
                return Wait.SMALL_CHANGE
        if t.seconds_since_roll is not None and t.seconds_since_roll < self.min_interval_seconds:
            return Wait.TOO_SOON
        return None


@dataclass(frozen=True, slots=True)
class Steps:
    """What to apply now; everything else waits for a later round, with the reason."""

    shrink: tuple[Key, ...]
    grow: tuple[Key, ...]
    waiting: tuple[tuple[Key, Wait], ...]


def order_changes(
    transitions: Iterable[Transition],
    available: int,
    allow_growth: bool = True,
    hysteresis: Hysteresis | None = None,
) -> Steps:
    """Decide which Deployments change now: every shrink, then the grows that fit (see the module doc)."""
    hysteresis = hysteresis or Hysteresis()
    moves = sorted(transitions, key=lambda t: t.key)
    shrink = tuple(t.key for t in moves if t.target_per_pod < t.current_per_pod)
    growing = [t for t in moves if t.target_per_pod > t.current_per_pod]
    waiting: list[tuple[Key, Wait]] = []
    grow: list[Key] = []
    # A Deployment that is still rolling with a net reduction in flight (old pods not gone) blocks growth too.
    in_flight = shrink or any(not t.settled for t in moves if t.target_per_pod <= t.current_per_pod)
    footprint = sum(t.observed for t in moves)
    for t in growing:
        reason = hysteresis.holds_back(t)
        if reason is None and not allow_growth:
            reason = Wait.GROWTH_FROZEN
        if reason is None and in_flight:
            reason = Wait.SHRINKS_IN_FLIGHT
        if reason is None and footprint + t.growth > available:
            reason = Wait.NO_ROOM
        if reason is None:
            grow.append(t.key)
            footprint += t.growth
        else:
            waiting.append((t.key, reason))
    return Steps(shrink, tuple(grow), tuple(waiting))
