"""Live delivery in a round: read what pods confirmed, plan per pod, write the allotments that keep the invariant.

A round with live Deployments reads the confirmation tags from ``pg_stat_activity`` (at most every
:data:`TAGS_EVERY` seconds), builds each live Deployment's pods as ``planning.live`` sees them, and after the env
changes are ordered, writes pod annotations: shrinks at once, grows into the room left. It warns about pods that do
not confirm within ``spec.delivery.confirmTimeoutSeconds`` and moves a Deployment none of whose pods ever answered
back to env (``poolbudget.io/live-fallback``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from poolbudget.adapters.errors import KubernetesError, NotFound
from poolbudget.adapters.postgres import DatabaseError, read_client_backends
from poolbudget.api.allotment import parse_allotment, pod_tag_id
from poolbudget.api.annotations import ALLOTMENT, LIVE_FALLBACK, STAMP_DELIVERY
from poolbudget.api.conditions import ALLOTMENTS_CONFIRMED, Reason
from poolbudget.api.models import PoolBudget
from poolbudget.api.objects import Key, Obj
from poolbudget.api.workloads import Deployment
from poolbudget.controller.apply import PATCH_CONCURRENCY
from poolbudget.controller.state import BudgetMemory, Context, View
from poolbudget.controller.status import ConditionUpdate
from poolbudget.delivery.live import allotment_patch
from poolbudget.observe.confirmations import PodTags, tags_by_pod
from poolbudget.observe.footprint import pod_connections
from poolbudget.observe.objects import annotations_of, key_of, template_of, version_of
from poolbudget.planning.budget import BudgetOutcome
from poolbudget.planning.live import Grant, GrantKind, LiveDeployment, LivePod, grant, pod_levels
from poolbudget.planning.plan import split

logger = logging.getLogger(__name__)

TAGS_EVERY = 0.5  # seconds between two reads of the confirmation tags
PENDING_EVERY = 1.0  # seconds between rounds while an allotment waits for confirmation or room


def converted(deployment: Obj) -> bool:
    """Whether the Deployment's pod template is the live one (its opt-in rollout was written)."""
    return annotations_of(template_of(deployment)).get(STAMP_DELIVERY) == "live"


def live_pods_of(view: View, candidates: Iterable[Deployment]) -> tuple[dict[Key, int], frozenset[str]]:
    """Per Deployment, its pods that follow allotments (started from a live template, not terminating); and
    the tag ids of every pod started from a live template (their tagged connections are not unmanaged)."""
    counts: dict[Key, int] = {}
    tag_ids: set[str] = set()
    for d in candidates:
        live = [p for p in view.pods_of(d.key) if p.live]
        tag_ids.update(pod_tag_id(p.uid) for p in live)
        n = sum(1 for p in live if not p.terminating)
        if n:
            counts[d.key] = n
    return counts, frozenset(tag_ids)


async def read_tags(ctx: Context, memory: BudgetMemory) -> None:
    """The confirmation tags now (kept in memory between reads; none when the database cannot be read)."""
    now = ctx.monotonic()
    if memory.live_tags_read_at is not None and now - memory.live_tags_read_at < TAGS_EVERY:
        return
    memory.live_tags_read_at = now
    if memory.database_url is None:
        memory.live_tags = {}
        return
    try:
        backends = await read_client_backends(memory.database_url, timeout=ctx.database_timeout)
    except DatabaseError as exc:
        # Nothing confirmed, nothing observed: every pod counts at its ceiling until the next read. Said once
        # per outage (the reads go on every second; DatabaseReachable says the rest).
        if memory.live_tags:
            logger.warning("PoolBudget %s: reading confirmations: %s", memory.name, exc)
        memory.live_tags = {}
        return
    memory.live_tags = tags_by_pod(backends)


def live_deployments(
    budget: PoolBudget,
    outcome: BudgetOutcome,
    raw: Mapping[Key, Obj],
    view: View,
    tags: Mapping[str, PodTags],
) -> dict[Key, LiveDeployment]:
    """The Deployments whose template is live, with their pods as ``planning.live`` sees them: those delivered
    live, and those going back to env whose pods still hold allotments above the floor (they shrink first)."""
    out: dict[Key, LiveDeployment] = {}
    floor = budget.spec.delivery.floor_per_process
    for key, managed in outcome.managed.items():
        if not converted(raw[key]):
            continue
        w = managed.workload
        pools = w.processes_per_pod * w.pools_per_process
        pods = []
        for fact in view.pods_of(key):
            read = parse_allotment(fact.allotment) if fact.live else None
            found = tags.get(pod_tag_id(fact.uid))
            pods.append(
                LivePod(
                    name=fact.name,
                    terminating=fact.terminating,
                    follows=fact.live,
                    floor_cost=pod_connections(managed, fact, allotment=False),
                    allotment=read.allotment if read else None,
                    intact=read.intact if read else True,
                    confirmed=found.confirmed(w.processes_per_pod) if found else None,
                    observed=found.connections if found else 0,
                )
            )
        present = sum(1 for p in pods if not p.terminating)
        d = LiveDeployment(
            key, pools, floor, max(0, managed.peak_pods - present), tuple(pods), leaving=not managed.live
        )
        if managed.live or not d.drained():
            out[key] = d
    return out


@dataclass
class LiveRound:
    """What the live part of a round did."""

    writes: int = 0
    pending: bool = False  # something waits for a confirmation or for room: look again soon
    condition: ConditionUpdate | None = None
    fell_back: list[Key] = field(default_factory=list)


async def deliver(
    ctx: Context,
    memory: BudgetMemory,
    budget: PoolBudget,
    body: Obj,
    outcome: BudgetOutcome,
    lives: Mapping[Key, LiveDeployment],
    raw: Mapping[Key, Obj],
    room: int,
    rounding_left: int,
    allow_growth: bool,
) -> LiveRound:
    """Write the allotments that fit ``room``; warn about late confirmations; fall back where none ever came.

    ``rounding_left``: what the plan could not give out in whole per-process steps; it goes one step per pod."""
    result = LiveRound()
    floor = budget.spec.delivery.floor_per_process
    if not lives:
        memory.live_written.clear()
        ctx.metrics.record_live(budget.name, 0, {})
        return result
    by_key = {a.workload.key: a for a in outcome.plan.allocations}
    levels = {k: floor if d.leaving else by_key[k].per_process for k, d in lives.items()}
    maximums = {k: outcome.managed[k].workload.max_per_process for k in lives}
    wanting = any(
        by_key[k].per_process < by_key[k].workload.demand_cap for k, d in lives.items() if not d.leaving
    )
    targets = pod_levels(lives.values(), levels, maximums, rounding_left if wanting else 0)

    def splitter(key: Key, level: int) -> tuple[int, int]:
        w = outcome.managed[key].workload
        return split(level, w.has_overflow, w.overflow_ratio)

    last = {k: g for k, (g, _) in memory.live_written.items()}
    granted = grant(lives.values(), targets, room, budget.name, splitter, last, allow_growth)
    result.writes += await _write(ctx, memory, budget, body, raw, granted.grants)
    result.pending = bool(granted.waiting)
    now = ctx.monotonic()
    unconfirmed: list[str] = []
    pending = 0
    timeout = budget.spec.delivery.confirm_timeout_seconds
    current = {(key, p.name) for key, d in lives.items() for p in d.following()}
    memory.live_written = {k: v for k, v in memory.live_written.items() if k in current}
    for key, d in lives.items():
        if any(p.observed or p.confirmed is not None for p in d.pods):
            memory.live_seen.add(key)
        for pod in d.following():
            if pod.allotment is not None:
                # Written before this process started (a restart): its confirmation is timed from now.
                memory.live_written.setdefault((key, pod.name), (pod.allotment.generation, now))
            if pod.allotment is None or (pod.confirmed or -1) < pod.allotment.generation:
                result.pending = True
                pending += 1
                since = memory.live_written.get((key, pod.name), (0, now))[1]
                if now - since >= timeout:
                    unconfirmed.append(f"{key[0]}/{pod.name}")
                    _warn_once(ctx, memory, raw[key], key, pod, timeout)
        started = memory.live_since.setdefault(key, now)
        if not d.leaving and key not in memory.live_seen and d.following() and now - started >= timeout:
            result.writes += await _fall_back(ctx, memory, budget, body, raw[key], d, timeout)
            result.fell_back.append(key)
    memory.live_since = {k: v for k, v in memory.live_since.items() if k in lives}
    result.condition = _condition(lives, unconfirmed, pending, timeout)
    ctx.metrics.record_live(budget.name, pending, {})
    return result


async def _write(
    ctx: Context,
    memory: BudgetMemory,
    budget: PoolBudget,
    body: Obj,
    raw: Mapping[Key, Obj],
    grants: Iterable[Grant],
) -> int:
    limit = asyncio.Semaphore(PATCH_CONCURRENCY)

    async def write(g: Grant) -> Grant | None:
        async with limit:
            try:
                await ctx.cluster.patch_pod(g.key[0], g.pod, allotment_patch(g.allotment))
            except NotFound:
                return None  # gone meanwhile
            except KubernetesError as exc:
                logger.warning("PoolBudget %s: %s", budget.name, exc)
                return None
            return g

    done = [g for g in await asyncio.gather(*(write(g) for g in grants)) if g is not None]
    now = ctx.monotonic()
    by_deployment: dict[Key, list[Grant]] = {}
    for g in done:
        memory.live_written[g.key, g.pod] = (g.allotment.generation, now)
        by_deployment.setdefault(g.key, []).append(g)
        if g.kind is GrantKind.REWRITE:
            message = f"pod {g.pod}: its allotment annotation was edited by hand; written again by PoolBudget {budget.name}"
            ctx.events.warning(raw[g.key], "AllotmentEdited", message)
    for key, grants_of in by_deployment.items():
        sizes = sorted({(g.allotment.pool_size, g.allotment.max_overflow) for g in grants_of})
        shown = ", ".join(f"pool_size {s} max_overflow {o}" for s, o in sizes)
        message = f"{len(grants_of)} pods allotted {shown} per process, live, by PoolBudget {budget.name}"
        ctx.events.normal(raw[key], "Allotted", message)
    ctx.metrics.record_live(budget.name, None, {k: len(v) for k, v in by_deployment.items()})
    return len(done)


def _warn_once(
    ctx: Context, memory: BudgetMemory, deployment: Obj, key: Key, pod: LivePod, timeout: int
) -> None:
    generation = pod.allotment.generation if pod.allotment else 0
    marker = (key, pod.name, generation)
    if marker in memory.live_warned:
        return
    memory.live_warned.add(marker)
    held_at = (
        f"counted at {pod.allotment.ceiling} per pool until it does" if pod.allotment else "at its floor"
    )
    ctx.events.warning(
        deployment,
        "NotConfirmed",
        f"pod {pod.name} has not confirmed allotment generation {generation} within {timeout} s; {held_at}",
    )


async def _fall_back(
    ctx: Context,
    memory: BudgetMemory,
    budget: PoolBudget,
    body: Obj,
    deployment: Obj,
    live: LiveDeployment,
    waited: int,
) -> int:
    """No pod of the Deployment ever answered: mark it for env delivery (the next round rolls it once), and take
    the allotments off its pods. No tag means no process follows them with a connection open (the helper keeps
    one open once it applied one), so the pods hold their floor, and the env rollout may grow from there."""
    reason = (
        f"no pod confirmed a live allotment within {waited} s (the app does not use poolbudget_client, or "
        f"cannot reach the database): delivered by env; remove this annotation to try live again"
    )
    ns, name = key = key_of(deployment)
    patch = {"metadata": {"annotations": {LIVE_FALLBACK: reason}, "resourceVersion": version_of(deployment)}}
    try:
        after = await ctx.cluster.patch_deployment(ns, name, patch)
    except KubernetesError as exc:
        logger.warning("PoolBudget %s: falling back %s/%s: %s", budget.name, ns, name, exc)
        return 0
    memory.own_writes[key] = (version_of(deployment), after)
    memory.live_since.pop(key, None)
    writes = 1
    for pod in live.pods:
        if pod.allotment is None:
            continue
        try:
            await ctx.cluster.patch_pod(ns, pod.name, {"metadata": {"annotations": {ALLOTMENT: None}}})
            writes += 1
        except KubernetesError as exc:
            logger.warning("PoolBudget %s: %s", budget.name, exc)
    ctx.events.warning(deployment, "LiveFallback", reason)
    ctx.events.warning(body, "LiveFallback", f"Deployment {ns}/{name}: {reason}")
    return writes


def _condition(
    lives: Mapping[Key, LiveDeployment], late: list[str], pending: int, timeout: int
) -> ConditionUpdate:
    if late:
        shown = ", ".join(sorted(late)[:10]) + (f" and {len(late) - 10} more" if len(late) > 10 else "")
        return ConditionUpdate(
            ALLOTMENTS_CONFIRMED,
            "False",
            Reason.UNCONFIRMED,
            f"not confirmed within {timeout} s, counted at their old size: {shown}",
        )
    pods = sum(len(d.following()) for d in lives.values())
    if pending:
        return ConditionUpdate(
            ALLOTMENTS_CONFIRMED,
            "False",
            Reason.PENDING,
            f"{pending} of {pods} live pods applying an allotment",
        )
    return ConditionUpdate(
        ALLOTMENTS_CONFIRMED, "True", Reason.CONFIRMED, f"{pods} live pods in {len(lives)} Deployments"
    )
