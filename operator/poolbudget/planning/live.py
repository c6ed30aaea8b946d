"""Live delivery, planned per pod: what each pod may hold now, and which allotments to write so that it never
passes ``available`` (SPEC.md, "Live delivery").

Pure. A pod's **commitment** is the most its processes may hold at this instant: its allotment once confirmed,
else the ceiling written with it (the larger of the old and the new size), never less than the connections seen
or its floor. The invariant, over every pod of a budget::

    sum(commitment) + reserve + (what env-delivered Deployments may hold) <= available

where ``reserve`` keeps ``floor`` for every pod that may still appear before the operator reacts (each
Deployment's peak, HPA maximum and surge, minus the pods it has). :func:`grant` keeps it: a shrink is written at
once and lowers nothing until it is confirmed; a grow is written only into room (partly, when only part fits).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum

from poolbudget.api.allotment import PodAllotment
from poolbudget.api.objects import Key
from poolbudget.planning.budget import BudgetOutcome


@dataclass(frozen=True, slots=True)
class LivePod:
    """One pod of a live Deployment, as the operator sees it."""

    name: str
    terminating: bool
    follows: bool  # started from the live template: its processes follow the allotment file
    floor_cost: int  # connections it may hold without an allotment (its stamp: the floor, or its old env)
    allotment: PodAllotment | None = None
    intact: bool = True  # False: the annotation was edited by hand (or cannot be read)
    confirmed: int | None = None  # the generation every process of it confirmed; None: not seen
    observed: int = 0  # its tagged connections in pg_stat_activity


@dataclass(frozen=True, slots=True)
class LiveDeployment:
    """A Deployment whose template is live: its pods, and what one per-pool step costs per pod."""

    key: Key
    pools_per_pod: int  # processes x pools per process
    floor: int  # per-pool connections before the first allotment
    reserve_pods: int  # pods that may appear before the operator reacts
    pods: tuple[LivePod, ...]
    leaving: bool = False  # going back to env: its pods shrink to the floor before its env rollout

    def drained(self) -> bool:
        """Leaving, and no pod may hold more than its floor by its allotment any more."""
        return all(
            (level := committed_level(p)) is None or self.pools_per_pod * level <= p.floor_cost
            for p in self.pods
        )

    @property
    def reserve(self) -> int:
        return self.reserve_pods * self.pools_per_pod * self.floor

    def confirmed_pods(self) -> int:
        """Following pods whose every process applied the allotment written on it."""
        return sum(
            1
            for p in self.following()
            if p.allotment is not None and p.confirmed is not None and p.confirmed >= p.allotment.generation
        )

    def following(self) -> list[LivePod]:
        """The pods that take allotments: started from the live template, not terminating."""
        return [p for p in self.pods if p.follows and not p.terminating]


def committed_level(pod: LivePod) -> int | None:
    """The per-pool total the pod may hold now by its allotment; None when it has none."""
    a = pod.allotment
    if a is None:
        return None
    if pod.intact and pod.confirmed is not None and pod.confirmed >= a.generation:
        return a.total
    return a.ceiling


def commitment(pod: LivePod, pools_per_pod: int) -> int:
    """The most the pod's processes may hold at this instant."""
    level = committed_level(pod)
    by_allotment = pools_per_pod * level if level is not None and pod.follows else 0
    return max(pod.observed, pod.floor_cost, by_allotment)


def held(deployment: LiveDeployment) -> int:
    """What the Deployment may hold now: every pod's commitment, and the reserve for pods still to come."""
    return sum(commitment(p, deployment.pools_per_pod) for p in deployment.pods) + deployment.reserve


def held_outside_plan(deployment: LiveDeployment) -> int:
    """What the plan cannot give out: pods that take no allotment (terminating, or from an env template) and
    the reserve. The plan shares the rest among the following pods."""
    fixed = [p for p in deployment.pods if p.terminating or not p.follows]
    return sum(commitment(p, deployment.pools_per_pod) for p in fixed) + deployment.reserve


def pod_levels(
    deployments: Iterable[LiveDeployment],
    levels: Mapping[Key, int],
    maximums: Mapping[Key, int],
    leftover: int,
) -> dict[tuple[Key, str], int]:
    """Per following pod, its per-pool level: its Deployment's, plus one for as many pods (in a stable order)
    as the plan's rounding left room for. ``levels`` are the plan's per-process levels; ``maximums`` the caps."""
    out: dict[tuple[Key, str], int] = {}
    for d in sorted(deployments, key=lambda d: d.key):
        for pod in sorted(d.following(), key=lambda p: p.name):
            level = levels[d.key]
            if leftover >= d.pools_per_pod and level < maximums[d.key]:
                level += 1
                leftover -= d.pools_per_pod
            out[d.key, pod.name] = level
    return out


class GrantKind(StrEnum):
    FIRST = "first"  # the pod's first allotment
    SHRINK = "shrink"
    GROW = "grow"
    REWRITE = "rewrite"  # the annotation was edited by hand: written again


@dataclass(frozen=True, slots=True)
class Grant:
    """One allotment to write on one pod."""

    key: Key
    pod: str
    allotment: PodAllotment
    kind: GrantKind
    partial: bool = False  # grown only part of the way: room was short


@dataclass(frozen=True, slots=True)
class Granted:
    grants: tuple[Grant, ...]
    waiting: tuple[tuple[Key, str], ...]  # pods whose grow waits for room


Split = Callable[[Key, int], tuple[int, int]]  # (deployment, per-pool level) -> (pool_size, max_overflow)


def _base_level(pod: LivePod, d: LiveDeployment) -> int:
    """The per-pool level the pod may hold now: by its allotment, else by its floor."""
    level = committed_level(pod)
    return level if level is not None else pod.floor_cost // max(1, d.pools_per_pod)


def _kind(pod: LivePod, change: GrantKind) -> GrantKind:
    if pod.allotment is None:
        return GrantKind.FIRST
    return change if pod.intact else GrantKind.REWRITE


def grant(
    deployments: Iterable[LiveDeployment],
    targets: Mapping[tuple[Key, str], int],
    room: int,
    budget: str,
    split: Split,
    last_generation: Mapping[tuple[Key, str], int] | None = None,
    allow_growth: bool = True,
) -> Granted:
    """The allotments to write now. ``room``: ``available`` minus everything held (live pods' commitments and
    reserves, env Deployments' footprint and growth). Shrinks and rewrites first (they need no room); then grows
    in a stable order, each as far as the room goes. ``last_generation``: what the operator wrote last per pod
    (a new generation is above it and above the pod's own)."""
    last_generation = last_generation or {}
    out: list[Grant] = []
    grows: list[tuple[LiveDeployment, LivePod, int, int, int]] = []
    for d in sorted(deployments, key=lambda d: d.key):
        for pod in sorted(d.following(), key=lambda p: p.name):
            target = targets.get((d.key, pod.name))
            a = pod.allotment
            if target is None or (a is not None and pod.intact and a.total == target):
                continue
            base = _base_level(pod, d)
            generation = max(a.generation if a else 0, last_generation.get((d.key, pod.name), 0)) + 1
            if target <= base:
                size, overflow = split(d.key, target)
                allotment = PodAllotment(generation, size, overflow, base, budget)
                out.append(Grant(d.key, pod.name, allotment, _kind(pod, GrantKind.SHRINK)))
            else:
                grows.append((d, pod, target, generation, base))
    waiting: list[tuple[Key, str]] = []
    for d, pod, target, generation, base in grows:
        new_level = min(target, base + max(0, room) // d.pools_per_pod) if allow_growth else base
        if new_level <= base and pod.allotment is not None and pod.intact:
            waiting.append((d.key, pod.name))
            continue
        new_level = max(1, new_level)
        size, overflow = split(d.key, new_level)
        allotment = PodAllotment(generation, size, overflow, max(base, new_level), budget)
        before = commitment(pod, d.pools_per_pod)
        room -= max(0, max(pod.observed, pod.floor_cost, d.pools_per_pod * allotment.ceiling) - before)
        out.append(Grant(d.key, pod.name, allotment, _kind(pod, GrantKind.GROW), partial=new_level < target))
        if new_level < target:
            waiting.append((d.key, pod.name))
    return Granted(tuple(out), tuple(waiting))


def offline_reserve(floor: int, outcome: BudgetOutcome) -> int:
    """What a live plan keeps aside offline (``poolbudget plan --delivery live``), where every replica is taken as
    a running pod: the floor of each pod a live Deployment's peak may add."""
    return sum(
        max(0, m.peak_pods - m.workload.pods)
        * m.workload.processes_per_pod
        * m.workload.pools_per_process
        * floor
        for m in outcome.managed.values()
        if m.live
    )
