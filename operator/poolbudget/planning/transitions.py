"""Moving from the settings Deployments run with to the planned ones without passing `available` on the way.

Pure: the operator (and the transitions simulation in the tests) pass in what they observed; this decides which
Deployments to change now and which must wait. The rules (SPEC.md, "The invariant"):

- shrinks go first; one waits only while the budget is within `available` (observed, and as its current settings
  are sized, leaving out the connections measured as unmanaged) and its rolling update's own new pods (started
  before the old ones go) would pass it; over `available`, every shrink goes: it is the way back;
- no Deployment grows while any shrink is being applied or still rolling out (its old pods, running or
  terminating, still hold connections at the old settings);
- then grows are applied, in a stable order, only while the footprint (each Deployment as sized at its current
  settings, or as observed where more pods than that hold connections, terminating ones included) plus the
  planned growth of everything growing stays within `available`;
- growth smaller than the hysteresis threshold, or sooner than the minimum interval after the last roll, waits;
  a shrink never waits for either.

Growth is ``peak_pods x (target - current)``: right when pods let go of their connections as they start to
terminate. Where they keep them while terminating (Kubernetes' default pod replacement starts the new pods
meanwhile), a rollout can hold every old pod *and* every new one. For those apps (`spec.sizing.rolloutOverlap`,
which also sizes the plan for the overlap), a Transition carries ``overlap_pods`` (the size of the new
ReplicaSet): a grow then needs room for all its new pods on top of the observed footprint, and a Deployment
whose last rollout has not settled does not start another (unless the budget is already over: shrinking is the
way back). ``tests/test_transitions_simulation.py`` shows both regimes on a model of the controllers.
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
    overlap_pods: int = 0  # rolloutOverlap: new pods that may run beside every old one (0: off, or Recreate)
    surge_pods: int = 0  # pods a rolling update starts before old ones go (maxSurge; 0 for Recreate)

    @property
    def growth(self) -> int:
        """How much its footprint may rise while it grows (negative: falls)."""
        if self.overlap_pods:
            return self.overlap_pods * self.target_per_pod  # every new pod on top of every pod there is
        return self.peak_pods * (self.target_per_pod - self.current_per_pod)

    @property
    def reserved(self) -> int:
        """What it may hold before any change of ours: as sized at its current settings, or as observed where
        more pods than that hold connections (a scale-down's terminating pods). A steady rolling Deployment runs
        fewer pods than its peak; its HPA, or its next rollout, fills that reserve at the current settings. With
        rolloutOverlap the rollouts are counted by ``growth`` instead, on top of this."""
        pods = self.peak_pods - self.overlap_pods
        return max(self.observed, pods * self.current_per_pod)

    @property
    def shrink_transient(self) -> int:
        """What a shrinking rollout adds for a while: its new pods, started before the old ones are gone."""
        return (self.overlap_pods or self.surge_pods) * self.target_per_pod


class Wait(StrEnum):
    """Why a change is held back this round."""

    SHRINKS_IN_FLIGHT = "waiting for shrinking Deployments to finish their rollouts"
    ROLLOUT_IN_FLIGHT = "waiting for its previous rollout or scale-down to finish"
    NO_ROOM_TO_SHRINK = "waiting for room for the surge pods of its shrinking rollout"
    NO_ROOM = "waiting for room: the footprint (as sized, or observed) plus this growth would pass available"
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
    unmanaged: int = 0,
) -> Steps:
    """Decide which Deployments change now: every shrink, then the grows that fit (see the module doc).

    ``unmanaged``: the connections others hold, measured in ``pg_stat_activity`` and already taken out of
    ``available``. They count in the footprint as measured, not in whether our own settings are over as sized:
    a deleted Deployment's pods count there while they terminate, and would make the budget look over for a
    moment, letting shrinks pass ``available`` with their surge pods for nothing that lasts.
    """
    hysteresis = hysteresis or Hysteresis()
    moves = sorted(transitions, key=lambda t: t.key)
    footprint = sum(t.observed for t in moves)
    waiting: list[tuple[Key, Wait]] = []
    shrinking = [t for t in moves if t.target_per_pod < t.current_per_pod]
    # Over (now, or as sized: our current settings no longer fit their own rollout reserve, e.g. after a
    # `kubectl scale`), shrinking is the way back, whatever its rollout adds for a while.
    budgeted = sum(t.peak_pods * t.current_per_pod for t in moves)
    observed_over = footprint > available
    over = observed_over or budgeted > available + unmanaged
    shrink_list: list[Key] = []
    transient = footprint
    for t in shrinking:
        if not observed_over and t.overlap_pods and not t.settled:
            # One rollout at a time: its old pods may still hold on. Only a real breach overrides this, since
            # a third revision beside two unsettled ones is what overlap sizing has no room for.
            waiting.append((t.key, Wait.ROLLOUT_IN_FLIGHT))
        elif not over and transient + t.shrink_transient > available:
            waiting.append((t.key, Wait.NO_ROOM_TO_SHRINK))  # waiting is safe: nothing grows meanwhile
        else:
            shrink_list.append(t.key)
            transient += t.shrink_transient
    shrink = tuple(shrink_list)
    growing = [t for t in moves if t.target_per_pod > t.current_per_pod]
    grow: list[Key] = []
    held = sum(t.reserved for t in moves)
    # A Deployment that is still rolling with a net reduction in flight (old pods not gone) blocks growth too.
    in_flight = bool(shrinking) or any(not t.settled for t in moves if t.target_per_pod <= t.current_per_pod)
    for t in growing:
        reason = hysteresis.holds_back(t)
        if reason is None and not allow_growth:
            reason = Wait.GROWTH_FROZEN
        if reason is None and in_flight:
            reason = Wait.SHRINKS_IN_FLIGHT
        if reason is None and not t.settled:
            reason = Wait.ROLLOUT_IN_FLIGHT  # its terminating pods are not in what it is sized for
        if reason is None and held + t.growth > available:
            reason = Wait.NO_ROOM
        if reason is None:
            grow.append(t.key)
            held += t.growth
        else:
            waiting.append((t.key, reason))
    return Steps(shrink, tuple(grow), tuple(waiting))
