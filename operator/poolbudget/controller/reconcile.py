"""One budget's round, in a fixed order: read -> observe -> plan -> order the changes (shrink first) -> apply ->
report (status, events).

A round reads what kopf's indexes hold (a :class:`~poolbudget.controller.state.View` of Deployments, HPAs, pods,
namespaces) and the database's limits (``inputs``), plans with :func:`plan_for_budget`, lets
:func:`order_changes` decide which Deployments change now, patches them (``apply``), and writes the status
only when it changed (``report``). All decisions are the pure functions of ``planning``, ``observe``,
``status`` and ``delivery``; this module sequences them. The loop that runs rounds is ``runtime.loop``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Any

from pydantic import ValidationError

from poolbudget.api.conditions import ALLOTMENTS_CONFIRMED, INVALID, READY, Reason
from poolbudget.api.limits import DatabaseLimits
from poolbudget.api.manifests import format_validation_error
from poolbudget.api.models import PoolBudget, PoolBudgetSpec, PoolBudgetStatus
from poolbudget.api.objects import Key, Obj
from poolbudget.api.workloads import Deployment, HorizontalPodAutoscaler, budget_of
from poolbudget.controller.apply import Applied, Change, apply_changes, release_deployments, touches_template
from poolbudget.controller.inputs import read_demand, read_limits
from poolbudget.controller.live import PENDING_EVERY, deliver, live_deployments, live_pods_of, read_tags
from poolbudget.controller.report import warn_delivery, warn_refusals, warn_transitions, write_status
from poolbudget.controller.state import BudgetMemory, Context, RoundResult, View, latest, sooner
from poolbudget.controller.status import (
    ConditionUpdate,
    build_status,
    condition_of,
    overcommitted_update,
    ready_update,
    stored_status,
)
from poolbudget.delivery.env import desired_env
from poolbudget.delivery.envpatch import apply_patch, with_application_name
from poolbudget.delivery.live import floor_per_pod, live_env
from poolbudget.observe.footprint import (
    observed_footprint,
    rollout_settled,
    seconds_since_roll,
    target_per_pod,
    template_per_pod,
)
from poolbudget.observe.objects import (
    annotations_of,
    format_time,
    key_of,
    managed_by,
    metadata_of,
    uid_of,
    version_of,
)
from poolbudget.observe.refused import refused_footprint, replicas_from_hpa, still_counted
from poolbudget.planning.budget import BudgetOutcome, Refusal, plan_for_budget
from poolbudget.planning.live import LiveDeployment, held, held_outside_plan
from poolbudget.planning.transitions import Hysteresis, Steps, Transition, Wait, order_changes
from poolbudget.planning.unmanaged import managed_application_name

logger = logging.getLogger(__name__)

_NO_CONDITION = ConditionUpdate(READY, "Unknown", "")


async def reconcile_budget(ctx: Context, body: Obj, view: View) -> RoundResult:
    """One round for one budget. Never raises for what the next round may fix; returns when to run again."""
    metadata = metadata_of(body)
    name = str(metadata.get("name", ""))
    memory = ctx.memory(name, uid_of(body))
    started = ctx.monotonic()
    try:
        async with memory.lock:
            if memory.deleted or metadata.get("deletionTimestamp"):
                return RoundResult(None)  # being deleted: release_budget gives the Deployments back
            return await _round(ctx, memory, body, view)
    finally:
        memory.last_round = ctx.monotonic()
        ctx.metrics.record_round(name, memory.last_round - started)


async def _round(ctx: Context, memory: BudgetMemory, body: Obj, view: View) -> RoundResult:
    name = memory.name
    now = ctx.clock()
    now_text = format_time(now)
    generation = metadata_of(body).get("generation")
    previous = stored_status(body)
    try:
        budget = PoolBudget.model_validate(dict(body))
    except ValidationError as exc:
        message = format_validation_error(exc)
        if (condition_of(previous.conditions, INVALID) or _NO_CONDITION).status != "True":
            ctx.events.warning(body, "InvalidSpec", message)
        updates = _invalid_round_updates(message)
        writes = await _write_without_plan(
            ctx, memory, body, previous, updates, previous.limits_source, now_text, generation
        )
        return RoundResult(None, writes)
    spec = budget.spec

    deployments = _observe(memory, name, view)
    live_pods, live_tag_ids = live_pods_of(view, deployments.candidates)
    limits_view = await read_limits(ctx, memory, budget, deployments.application_names, live_tag_ids)

    released = await release_deployments(ctx, memory, budget, body, deployments.to_release)
    writes, retry = released.writes, released.next_round_in

    if limits_view.limits is None:
        updates = [
            ready_update(
                None, {}, None, "no limits: the database cannot be read and spec has no maxConnections"
            ),
            limits_view.condition,
            ConditionUpdate(INVALID, "False", Reason.VALID),
        ]
        warn_transitions(ctx, body, previous.conditions, updates)
        writes += await _write_without_plan(ctx, memory, body, previous, updates, None, now_text, generation)
        return RoundResult(sooner(retry, spec.database.refresh_seconds), writes)

    planned = await _plan(
        ctx, memory, budget, limits_view.limits, limits_view.unmanaged, deployments, view, live_pods
    )
    plan = planned.outcome.plan
    lives = planned.lives
    warn_refusals(ctx, memory, body, planned.refusals, deployments.raw)
    warn_delivery(ctx, memory, body, planned.outcome, deployments.raw)

    # Order: shrink first, grow only into observed room, hold back small or too frequent growth. Live pods hold
    # what planning.live counts; the env Deployments share the rest.
    transitions, patches, observed = _transitions(
        budget, planned.outcome, deployments.raw, view, now, now_text, lives
    )
    live_held = sum(held(d) for d in lives.values())
    hysteresis = Hysteresis(
        min_change_ratio=spec.rebalance.min_change_ratio,
        min_change_connections=spec.rebalance.min_change_connections,
        min_interval_seconds=spec.rebalance.min_interval_seconds,
    )
    steps = order_changes(
        transitions,
        plan.available - live_held,
        limits_view.allow_growth,
        hysteresis,
        unmanaged=limits_view.unmanaged,
    )
    waits = dict(steps.waiting)
    by_key = {t.key: t for t in transitions}
    applied = await _apply_in_order(ctx, memory, budget, body, steps, by_key, patches, waits, hysteresis)
    writes += applied.writes
    retry = sooner(retry, applied.retry)

    # Live: the room env leaves (as sized, plus the growth just ordered) goes to pods, one annotation each.
    env_held = sum(t.reserved for t in transitions) + sum(by_key[k].growth for k in steps.grow)
    live = await deliver(
        ctx,
        memory,
        budget,
        body,
        planned.outcome,
        lives,
        deployments.raw,
        room=plan.available - env_held - live_held,
        rounding_left=plan.available - planned.live_held_outside - plan.allocated,
        allow_growth=limits_view.allow_growth,
    )
    writes += live.writes
    if live.pending or live.fell_back:
        retry = sooner(retry, PENDING_EVERY)
    if applied.changed or live.writes:
        ctx.metrics.count_rebalance(name)

    # Status, conditions and the events of their transitions.
    updates = [
        ready_update(plan, waits, memory.database_error if limits_view.condition.status == "False" else None),
        overcommitted_update(plan),
        limits_view.condition,
        planned.metrics_update,
        ConditionUpdate(INVALID, "False", Reason.VALID),
    ]
    if live.condition is not None:
        updates.append(live.condition)
    elif condition_of(previous.conditions, ALLOTMENTS_CONFIRMED) is not None:
        updates.append(
            ConditionUpdate(ALLOTMENTS_CONFIRMED, "Unknown", Reason.NO_LIVE, "no live Deployments")
        )
    warn_transitions(ctx, body, previous.conditions, updates)
    status = build_status(
        previous=previous,
        plan=plan,
        updates=updates,
        waits=waits,
        limits_source=limits_view.limits.source,
        now=now_text,
        generation=generation,
        demand_detail=planned.demand_detail,
        held=planned.held,
        confirmed={k: d.confirmed_pods() for k, d in lives.items() if not d.leaving},
        live_held=planned.live_held_outside,
    )
    writes += await write_status(ctx, memory, body, status)
    ctx.metrics.record_plan(name, plan, observed)
    # Pod news matters while growth waits for pods to go, and to every live Deployment (each pod is allotted).
    memory.awaiting_rollouts = (
        bool(lives)
        or any(m.live for m in planned.outcome.managed.values())
        or any(wait in (Wait.SHRINKS_IN_FLIGHT, Wait.NO_ROOM) for wait in waits.values())
    )
    return RoundResult(sooner(_next_round(spec, waits, by_key), retry), writes, tuple(applied.changed))


def _invalid_round_updates(message: str) -> list[ConditionUpdate]:
    return [
        ConditionUpdate(
            READY, "False", Reason.INVALID, "the spec is invalid; nothing changes until it is fixed"
        ),
        ConditionUpdate(INVALID, "True", Reason.INVALID, message),
    ]


async def _write_without_plan(
    ctx: Context,
    memory: BudgetMemory,
    body: Obj,
    previous: PoolBudgetStatus,
    updates: list[ConditionUpdate],
    limits_source: str | None,
    now_text: str,
    generation: Any,
) -> int:
    """The status of a round without a plan (invalid spec, no limits): new conditions, the figures kept."""
    return await write_status(
        ctx,
        memory,
        body,
        build_status(
            previous=previous,
            plan=None,
            updates=updates,
            waits={},
            limits_source=limits_source,
            now=now_text,
            generation=generation,
        ),
    )


# ---------------------------------------------------------------------------------------------------- observe


@dataclass(frozen=True, slots=True)
class _Deployments:
    """The budget's Deployments as a round finds them in the index."""

    candidates: list[Deployment]  # opted in and valid: what the planner sees
    raw: dict[Key, Obj]  # every one opted in that no other budget still holds, as it is
    refusals: list[Refusal]  # opted in, but not a valid Deployment
    to_release: list[Obj]  # no longer opted in, but still at this budget's settings
    hpas: list[HorizontalPodAutoscaler]  # those scaling the candidates
    application_names: set[str]  # the PGAPPNAMEs of this budget's pools (not unmanaged connections)


def _observe(memory: BudgetMemory, name: str, view: View) -> _Deployments:
    """The Deployments that opted in, those still carrying this budget's settings, their HPAs."""
    candidates: list[Deployment] = []
    raw: dict[Key, Obj] = {}
    to_release: list[Obj] = []
    refusals: list[Refusal] = []
    for indexed in view.deployments_of(name):
        deployment = latest(memory, indexed)
        key = key_of(deployment)
        annotations = annotations_of(deployment)
        owner = managed_by(deployment)
        if budget_of(annotations) != name:
            if owner == name:
                to_release.append(deployment)
            continue
        if owner not in (None, name):
            continue  # another budget still has its settings in there: it releases it first, then we take it
        raw[key] = deployment
        parsed = _parsed(memory, deployment)
        if isinstance(parsed, Deployment):
            candidates.append(parsed)
        else:
            refusals.append(Refusal(*key, parsed))
    memory.parsed = {key: memory.parsed[key] for key in raw if key in memory.parsed}
    hpas = []
    for d in candidates:
        for h in view.hpas_of(d.key):
            try:
                hpas.append(HorizontalPodAutoscaler.model_validate(dict(h)))
            except ValidationError:
                continue  # not an HPA we can read: the Deployment is sized by its replicas
    # Refused ones that still carry our settings also carry our PGAPPNAME: they are counted as held, not here.
    application_names = {managed_application_name(*d.key) for d in candidates} | {
        managed_application_name(*key) for key, d in raw.items() if managed_by(d) == name
    }
    return _Deployments(candidates, raw, refusals, to_release, hpas, application_names)


def _parsed(memory: BudgetMemory, deployment: Obj) -> Deployment | str:
    """The Deployment validated into the model (or what is wrong with it), once per version of it."""
    key, version = key_of(deployment), version_of(deployment)
    cached = memory.parsed.get(key)
    if cached is not None and cached[0] == version and version:
        return cached[1]
    result: Deployment | str
    try:
        result = Deployment.model_validate(dict(deployment))
    except ValidationError as exc:
        result = format_validation_error(exc)
    memory.parsed[key] = (version, result)
    return result


# ---------------------------------------------------------------------------------------------------- plan


@dataclass(frozen=True, slots=True)
class _Planned:
    """The plan a round goes with, and what it says about the Deployments it leaves out."""

    outcome: BudgetOutcome
    held: dict[Key, int]  # connections held by refused Deployments still at this budget's settings
    refusals: list[Refusal]
    metrics_update: ConditionUpdate
    demand_detail: dict[Key, str]
    lives: dict[Key, LiveDeployment]  # live Deployments whose template is live, with their pods
    live_held_outside: int  # what those hold outside the plan (pods taking no allotment, the reserve)


async def _plan(
    ctx: Context,
    memory: BudgetMemory,
    budget: PoolBudget,
    limits: DatabaseLimits,
    unmanaged: int,
    deployments: _Deployments,
    view: View,
    live_pods: dict[Key, int],
) -> _Planned:
    """Plan; again with what refused Deployments still hold, if any; again with what live pods hold outside
    the plan, if any; again with the measured demand, if any.

    ``unmanaged``: the connections others hold (the database's unmanaged ones), before the refused ones'."""
    name, spec = budget.name, budget.spec
    candidates, hpas, raw = deployments.candidates, deployments.hpas, deployments.raw
    namespace_labels = view.namespace_labels() if spec.namespace_selector is not None else None
    replan = partial(plan_for_budget, budget, limits, candidates, hpas, namespace_labels, live_pods=live_pods)
    outcome = replan(unmanaged=unmanaged)
    refusals = [*deployments.refusals, *outcome.refused]
    # A refused Deployment that still has our settings keeps its pools: count them, or others grow into them.
    held: dict[Key, int] = {}
    for refusal in refusals:
        key = (refusal.namespace, refusal.name)
        if key in raw and managed_by(raw[key]) == name:
            held[key] = refused_footprint(
                raw[key],
                view.pods_of(key),
                replicas_from_hpa(view.hpas_of(key), spec.sizing.hpa),
                spec.sizing,
            )
    unmanaged += sum(held.values())
    if held:
        outcome = replan(unmanaged=unmanaged)
    lives: dict[Key, LiveDeployment] = {}
    if any(m.live for m in outcome.managed.values()):
        await read_tags(ctx, memory)
        lives = live_deployments(budget, outcome, raw, view, memory.live_tags)
    outside = sum(held_outside_plan(d) for d in lives.values())
    if outside:
        outcome = replan(unmanaged=unmanaged, live_held=outside)
    demand, metrics_update, demand_detail = await read_demand(ctx, memory, budget, outcome)
    if demand:
        outcome = replan(demand=demand, unmanaged=unmanaged, live_held=outside)
    refusals = [
        still_counted(r, raw[r.namespace, r.name]) if (r.namespace, r.name) in held else r for r in refusals
    ]
    return _Planned(outcome, held, refusals, metrics_update, demand_detail, lives, outside)


# ---------------------------------------------------------------------------------------------------- changes


def _transitions(
    budget: PoolBudget,
    outcome: BudgetOutcome,
    raw: dict[Key, Obj],
    view: View,
    now: datetime,
    now_text: str,
    lives: dict[Key, LiveDeployment],
) -> tuple[list[Transition], dict[Key, Change], dict[Key, int]]:
    """Per planned Deployment: where it stands and where the plan takes it (for ``order_changes``), its patch
    (when its env or stamps differ), and the connections its pods hold now.

    A live Deployment's template goes to the floor (its one rollout); once there (in ``lives``) it has no
    Transition: its pods are sized by their annotations, and a patch only puts its template back if edited."""
    spec = budget.spec
    transitions: list[Transition] = []
    patches: dict[Key, Change] = {}
    observed: dict[Key, int] = {}
    for allocation in outcome.plan.allocations:
        key = allocation.workload.key
        managed = outcome.managed[key]
        deployment = raw[key]
        pods = view.pods_of(key)
        observed[key] = observed_footprint(managed, pods)
        from_per_pod = template_per_pod(managed, deployment)
        to_per_pod = floor_per_pod(budget, managed) if managed.live else target_per_pod(allocation)
        entries = (
            live_env(budget, managed, deployment)
            if managed.live
            else desired_env(budget, managed, allocation)
        )
        desired = with_application_name(entries, deployment, managed_application_name(*key))
        patch = apply_patch(deployment, budget.name, desired, to_per_pod, now_text, live=managed.live)
        if key in lives:
            # Live: its template put back if edited. Leaving live: its pods shrink to the floor first.
            if patch is not None and not lives[key].leaving:
                patches[key] = Change(key, patch, deployment, from_per_pod, to_per_pod)
            continue
        per_process_divisor = allocation.workload.processes_per_pod * allocation.workload.pools_per_process
        since = seconds_since_roll(deployment, now)
        transitions.append(
            Transition(
                key=key,
                current_per_pod=from_per_pod,
                target_per_pod=to_per_pod,
                peak_pods=allocation.workload.pods,
                observed=observed[key],
                settled=rollout_settled(deployment, pods, managed),
                current_per_process=from_per_pod // per_process_divisor if per_process_divisor else 0,
                target_per_process=allocation.per_process,
                seconds_since_roll=since,
                overlap_pods=allocation.workload.replicas
                if spec.sizing.rollout_overlap and allocation.workload.rolling
                else 0,
                surge_pods=allocation.workload.pods - allocation.workload.replicas
                if allocation.workload.rolling
                else 0,
            )
        )
        if patch is not None:
            patches[key] = Change(key, patch, deployment, from_per_pod, to_per_pod, allocation)
    return transitions, patches, observed


async def _apply_in_order(
    ctx: Context,
    memory: BudgetMemory,
    budget: PoolBudget,
    body: Obj,
    steps: Steps,
    by_key: dict[Key, Transition],
    patches: dict[Key, Change],
    waits: dict[Key, Wait],
    hysteresis: Hysteresis,
) -> Applied:
    """Shrinks (and changes of the same size) first; grows in the same round only when nothing shrinks and all
    went well, else they wait for the shrinks (added to ``waits``)."""
    moving = set(steps.shrink) | set(steps.grow)
    first: list[Change] = [patches[k] for k in steps.shrink if k in patches]
    for key, change in patches.items():
        t = by_key.get(key)
        if t is None:
            first.append(change)  # a live template put back as it should be: the same floor, no Transition
            continue
        # Same connections, other entries (first opt-in, a timeout, PGAPPNAME): due once rolling is allowed.
        if key not in moving and key not in waits and t.current_per_pod == t.target_per_pod:
            if touches_template(change.patch) and not _may_roll(t, hysteresis):
                continue
            first.append(change)
    applied = await apply_changes(ctx, memory, budget, body, first)
    if not steps.shrink and applied.ok:
        # No shrink in this round: every grow that fits goes now (order_changes already left room for all).
        second = await apply_changes(
            ctx, memory, budget, body, [patches[k] for k in steps.grow if k in patches]
        )
    else:
        second = Applied()
        for key in steps.grow:
            waits.setdefault(key, Wait.SHRINKS_IN_FLIGHT)
    return Applied(
        applied.writes + second.writes,
        applied.changed + second.changed,
        sooner(applied.retry, second.retry),
        applied.ok and second.ok,
    )


def _may_roll(t: Transition, hysteresis: Hysteresis) -> bool:
    return t.seconds_since_roll is None or t.seconds_since_roll >= hysteresis.min_interval_seconds


def _next_round(spec: PoolBudgetSpec, waits: dict[Key, Wait], by_key: dict[Key, Transition]) -> float | None:
    """When to look again without a wake-up: the limits' refresh, or when held-back growth may roll."""
    next_round: float | None = float(spec.database.refresh_seconds)
    for key, wait in waits.items():
        since = by_key[key].seconds_since_roll if key in by_key else None
        if wait is Wait.TOO_SOON and since is not None:
            next_round = sooner(next_round, max(1.0, spec.rebalance.min_interval_seconds - since))
    return next_round
