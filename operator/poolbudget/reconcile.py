"""One budget's loop: observe -> limits -> plan -> order the changes (shrink first) -> apply -> status -> events.

A round reads what kopf's indexes hold (Deployments, HPAs, pods, namespaces), the database's limits (through the
Secret the budget names), plans with :func:`plan_for_budget`, lets :func:`order_changes` decide which Deployments
change now, patches them, and writes the status only when it changed. All decisions are the pure functions of
``planning``, ``observe``, ``status`` and ``delivery``; this module sequences them and does the I/O through
``adapters``. The loop (:func:`run_budget_loop`) is woken by the event handlers and by a periodic refresh, and
coalesces a burst of wake-ups into one round (``spec.rebalance.debounceSeconds``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from pydantic import ValidationError

from poolbudget.adapters.kubernetes import Conflict, KubernetesError, NotFound, SecretError
from poolbudget.api.manifests import format_validation_error
from poolbudget.api.models import PoolBudget, SizingSpec
from poolbudget.api.workloads import Deployment, HorizontalPodAutoscaler, budget_of
from poolbudget.delivery.env import desired_env
from poolbudget.delivery.envpatch import (
    STAMP_CONNECTIONS,
    apply_patch,
    managed_by,
    restore_patch,
    with_application_name,
)
from poolbudget.metrics import OperatorMetrics
from poolbudget.observe import (
    PodFacts,
    format_time,
    observed_footprint,
    rollout_settled,
    seconds_since_roll,
    target_per_pod,
    template_per_pod,
)
from poolbudget.planning.budget import BudgetOutcome, Key, Refusal, plan_for_budget
from poolbudget.planning.limits import DatabaseLimits
from poolbudget.planning.plan import Allocation
from poolbudget.planning.sizing import peak_pods
from poolbudget.planning.transitions import Hysteresis, Transition, Wait, order_changes
from poolbudget.planning.unmanaged import managed_application_name, unmanaged_connections
from poolbudget.status import (
    DATABASE_REACHABLE,
    INVALID,
    METRICS_AVAILABLE,
    OVERCOMMITTED,
    READY,
    ConditionUpdate,
    Reason,
    build_status,
    condition_of,
    overcommitted_update,
    ready_update,
    status_differs,
    status_document,
    stored_status,
)

logger = logging.getLogger(__name__)

Obj = Mapping[str, Any]
PATCH_CONCURRENCY = 16  # patches of one round in flight at once
RETRY_SOON = 1.0  # seconds before a round after a conflict (someone else wrote the Deployment first)
RETRY_LATER = 5.0  # seconds before a round after an API or unexpected error


class ClusterApi(Protocol):
    """The Kubernetes calls a round makes (``adapters.kubernetes.Cluster`` is the real one)."""

    async def patch_deployment(
        self, namespace: str, name: str, patch: Mapping[str, Any]
    ) -> dict[str, Any]: ...

    async def patch_budget_status(self, name: str, status: Mapping[str, Any]) -> dict[str, Any]: ...

    async def read_secret_value(self, namespace: str, name: str, key: str) -> str: ...


class EventSink(Protocol):
    """Kubernetes Events (kopf posts them in the background)."""

    def normal(self, obj: Obj, reason: str, message: str) -> None: ...

    def warning(self, obj: Obj, reason: str, message: str) -> None: ...


@dataclass
class View:
    """What kopf's indexes hold: each maps a key to the values of every object indexed under it."""

    deployments: Mapping[str, Iterable[Obj]]  # by budget name (opted in, or still carrying its settings)
    hpas: Mapping[Key, Iterable[Obj]]  # by (namespace, target Deployment)
    pods: Mapping[Key, Iterable[PodFacts]]  # by (namespace, Deployment)
    namespaces: Mapping[str, Iterable[Mapping[str, str]]]  # name -> its labels

    def deployments_of(self, budget: str) -> list[Obj]:
        return list(self.deployments.get(budget, ()))

    def hpas_of(self, key: Key) -> list[Obj]:
        return list(self.hpas.get(key, ()))

    def pods_of(self, key: Key) -> list[PodFacts]:
        return list(self.pods.get(key, ()))

    def namespace_labels(self) -> dict[str, dict[str, str]]:
        return {name: dict(next(iter(labels), {})) for name, labels in self.namespaces.items()}


@dataclass
class BudgetMemory:
    """What one budget's loop remembers between rounds (lost on restart; nothing in it is needed to converge)."""

    name: str
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    limits: DatabaseLimits | None = None  # last limits read from the database
    limits_read_at: float | None = None  # monotonic time of the last attempt
    database_error: str | None = None
    database_reason: str = ""
    database_url: str | None = None  # never logged, never in status or events
    unmanaged: int = 0
    demand: dict[Key, int] = field(default_factory=dict)
    demand_detail: dict[Key, str] = field(default_factory=dict)  # why, per Deployment (status allocations)
    demand_update: ConditionUpdate | None = None
    demand_read_at: float | None = None
    demand_state: Any = None
    warned: dict[Key, str] = field(default_factory=dict)  # refusal events posted, by Deployment
    own_writes: dict[Key, tuple[str, dict[str, Any]]] = field(default_factory=dict)
    own_status: tuple[str, dict[str, Any]] | None = None
    parsed: dict[Key, tuple[str, Deployment | str]] = field(default_factory=dict)  # by resourceVersion
    last_round: float | None = None
    uid: str | None = None  # the object it belongs to: a budget re-created under the name is another
    awaiting_rollouts: bool = False  # growth waits for pods to go: pod and rollout events matter
    deleted: bool = False


@dataclass
class Context:
    """The operator-wide collaborators of every budget's loop."""

    cluster: ClusterApi
    events: EventSink
    metrics: OperatorMetrics
    operator_namespace: str
    database_timeout: float = 5.0
    memories: dict[str, BudgetMemory] = field(default_factory=dict)
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    monotonic: Callable[[], float] = time.monotonic

    def memory(self, budget: str, uid: str | None = None) -> BudgetMemory:
        """The budget's memory; a fresh one when ``uid`` says the budget is a new object under an old name."""
        memory = self.memories.get(budget)
        if memory is None or (uid is not None and memory.uid not in (None, uid)):
            fresh = BudgetMemory(budget, uid=uid)
            if memory is not None:
                fresh.wake = memory.wake  # handlers may hold on to the old event: keep waking the same one
            memory = self.memories[budget] = fresh
        elif uid is not None:
            memory.uid = uid
        return memory

    def wake(self, budgets: Iterable[str]) -> None:
        """Wake the loops of these budgets (those that have one)."""
        for name in budgets:
            self.memory(name).wake.set()

    def awaiting_rollouts(self, budget: str) -> bool:
        """Whether the budget's last round left growth waiting for pods to go (rollout news can unblock it)."""
        memory = self.memories.get(budget)
        return memory is not None and memory.awaiting_rollouts

    def own_echo(self, budget: str, deployment: Obj) -> bool:
        """Whether this Deployment version is the one the budget's own last patch produced (nothing new)."""
        memory = self.memories.get(budget)
        own = memory.own_writes.get(_key(deployment)) if memory is not None else None
        return own is not None and _version(own[1]) == _version(deployment)


@dataclass(frozen=True, slots=True)
class RoundResult:
    """What a round did, and when the next one is due without a wake-up (None: only on a wake-up)."""

    next_round_in: float | None
    writes: int = 0
    changed: tuple[Key, ...] = ()


@dataclass(frozen=True, slots=True)
class LimitsView:
    limits: DatabaseLimits | None
    condition: ConditionUpdate
    allow_growth: bool
    unmanaged: int = 0


@dataclass(frozen=True, slots=True)
class Change:
    """One Deployment's patch in this round."""

    key: Key
    patch: dict[str, Any]
    deployment: Obj
    from_per_pod: int
    to_per_pod: int
    allocation: Allocation | None = None


def _key(obj: Obj) -> Key:
    metadata = obj.get("metadata") or {}
    return str(metadata.get("namespace", "")), str(metadata.get("name", ""))


def _version(obj: Obj) -> str:
    return str((obj.get("metadata") or {}).get("resourceVersion", ""))


def latest(memory: BudgetMemory, deployment: Obj) -> Obj:
    """The Deployment as the index has it, or as our own write left it if the index has not seen that yet."""
    key = _key(deployment)
    own = memory.own_writes.get(key)
    if own is None:
        return deployment
    before, after = own
    if _version(deployment) == before:
        return after
    del memory.own_writes[key]  # the index caught up (or someone wrote after us)
    return deployment


# ---------------------------------------------------------------------------------------------------- limits


async def read_limits(
    ctx: Context, memory: BudgetMemory, budget: PoolBudget, application_names: set[str]
) -> LimitsView:
    """The limits to plan with: the database's (re-read every refreshSeconds), else the last known, else spec."""
    from poolbudget.adapters.postgres import (
        DatabaseAuthFailed,
        DatabaseError,
        read_client_backends,
        redact_url,
    )
    from poolbudget.adapters.postgres import read_limits as read_database_limits

    database = budget.spec.database
    declared = DatabaseLimits(database.max_connections, source="spec") if database.max_connections else None
    ref = database.connection_secret_ref
    if ref is None:
        return LimitsView(
            declared,
            ConditionUpdate(
                DATABASE_REACHABLE,
                "Unknown",
                Reason.NOT_CONFIGURED,
                "no spec.database.connectionSecretRef: planning for spec.database.maxConnections",
            ),
            allow_growth=True,
        )
    now = ctx.monotonic()
    if memory.limits_read_at is None or now - memory.limits_read_at >= database.refresh_seconds:
        memory.limits_read_at = now
        namespace = ref.namespace or ctx.operator_namespace
        try:
            url = await ctx.cluster.read_secret_value(namespace, ref.name, ref.key)
            memory.database_url = url
            read = await read_database_limits(url, role=database.role, timeout=ctx.database_timeout)
            if budget.spec.unmanaged.subtract:
                backends = await read_client_backends(url, timeout=ctx.database_timeout)
                memory.unmanaged = unmanaged_connections(
                    backends, application_names, budget.spec.unmanaged.margin
                )
            memory.limits, memory.database_error = read, None
            memory.database_reason = f"limits read from {redact_url(url)}"
        except SecretError as exc:
            memory.database_url = None
            memory.database_error, memory.database_reason = str(exc), "SecretUnavailable"
        except DatabaseAuthFailed as exc:
            memory.database_error, memory.database_reason = str(exc), "AuthenticationFailed"
        except DatabaseError as exc:
            memory.database_error, memory.database_reason = str(exc), "Unreachable"
        if memory.database_error is not None:
            ctx.metrics.database_errors.labels(budget.name).inc()
            logger.warning("PoolBudget %s: %s", budget.name, memory.database_error)
    if memory.database_error is None and memory.limits is not None:
        return LimitsView(
            memory.limits,
            ConditionUpdate(DATABASE_REACHABLE, "True", Reason.CONNECTED, memory.database_reason),
            allow_growth=True,
            unmanaged=memory.unmanaged,
        )
    limits = memory.limits or declared
    kept = (
        f"the last known limits ({memory.limits.max_connections} max_connections)"
        if memory.limits
        else "spec.database.maxConnections"
        if declared
        else "no limits at all (set spec.database.maxConnections as a fallback)"
    )
    return LimitsView(
        limits,
        ConditionUpdate(
            DATABASE_REACHABLE,
            "False",
            memory.database_reason or "Unreachable",
            f"{memory.database_error}; planning with {kept}; only decreases until it answers",
        ),
        allow_growth=False,
        unmanaged=memory.unmanaged,
    )


async def read_demand(
    ctx: Context, memory: BudgetMemory, budget: PoolBudget, outcome: BudgetOutcome
) -> tuple[dict[Key, int], ConditionUpdate, dict[Key, str]]:
    """Demand mode: per-process demand from the demand module (re-measured every refreshSeconds), the
    condition it makes, and per Deployment how its demand was decided."""
    if budget.spec.rebalance.mode != "demand":
        return (
            {},
            ConditionUpdate(
                METRICS_AVAILABLE, "Unknown", Reason.STATIC, "rebalance.mode is static: shares follow weights"
            ),
            {},
        )
    now = ctx.monotonic()
    due = memory.demand_read_at is None or now - memory.demand_read_at >= budget.spec.database.refresh_seconds
    if due or memory.demand_update is None:
        memory.demand_read_at = now
        from poolbudget.demand import DemandState, measure_demand

        if memory.demand_state is None:
            memory.demand_state = DemandState()
        reading = await measure_demand(budget.spec, outcome.managed, memory.database_url, memory.demand_state)
        memory.demand = dict(reading.demand)
        memory.demand_detail = dict(reading.detail)
        # The message already says what is used meanwhile: static weights, or demand held through a short outage.
        memory.demand_update = ConditionUpdate(
            METRICS_AVAILABLE,
            "True" if reading.available else "False",
            reading.reason,
            reading.message or reading.reason,
        )
        if not reading.available:
            ctx.metrics.prometheus_errors.labels(budget.name).inc()
    return memory.demand, memory.demand_update, memory.demand_detail


# ---------------------------------------------------------------------------------------------------- a round


def _invalid_round_updates(message: str) -> list[ConditionUpdate]:
    return [
        ConditionUpdate(
            READY, "False", Reason.INVALID, "the spec is invalid; nothing changes until it is fixed"
        ),
        ConditionUpdate(INVALID, "True", Reason.INVALID, message),
    ]


async def reconcile_budget(ctx: Context, body: Obj, view: View) -> RoundResult:
    """One round for one budget. Never raises for what the next round may fix; returns when to run again."""
    metadata = body.get("metadata") or {}
    name = str(metadata.get("name", ""))
    memory = ctx.memory(name, metadata.get("uid"))
    started = ctx.monotonic()
    try:
        async with memory.lock:
            if memory.deleted or metadata.get("deletionTimestamp"):
                return RoundResult(None)  # being deleted: release_budget gives the Deployments back
            return await _round(ctx, memory, body, view)
    finally:
        memory.last_round = ctx.monotonic()
        ctx.metrics.reconcile_duration.labels(name).observe(memory.last_round - started)


async def _round(ctx: Context, memory: BudgetMemory, body: Obj, view: View) -> RoundResult:
    name = memory.name
    now = ctx.clock()
    now_text = format_time(now)
    metadata = body.get("metadata") or {}
    generation = metadata.get("generation")
    previous = stored_status(body)
    try:
        budget = PoolBudget.model_validate(dict(body))
    except ValidationError as exc:
        message = format_validation_error(exc)
        if (condition_of(previous.conditions, INVALID) or _NO_CONDITION).status != "True":
            ctx.events.warning(body, "InvalidSpec", message)
        writes = await _write_status(
            ctx,
            memory,
            body,
            build_status(
                previous=previous,
                plan=None,
                updates=_invalid_round_updates(message),
                waits={},
                limits_source=previous.limits_source,
                now=now_text,
                generation=generation,
            ),
        )
        return RoundResult(None, writes)
    spec = budget.spec

    # Observe: the Deployments that opted in, those still carrying this budget's settings, their HPAs and pods.
    candidates: list[Deployment] = []
    raw: dict[Key, Obj] = {}
    release: list[Obj] = []
    refusals: list[Refusal] = []
    for indexed in view.deployments_of(name):
        deployment = latest(memory, indexed)
        key = _key(deployment)
        annotations = (deployment.get("metadata") or {}).get("annotations") or {}
        owner = managed_by(deployment)
        if budget_of(annotations) != name:
            if owner == name:
                release.append(deployment)
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
    limits_view = await read_limits(ctx, memory, budget, application_names)

    writes, changed, retry = 0, [], None
    released = await _release(ctx, memory, budget, body, release)
    writes += released.writes
    retry = _sooner(retry, released.next_round_in)

    if limits_view.limits is None:
        updates = [
            ready_update(
                None, {}, None, "no limits: the database cannot be read and spec has no maxConnections"
            ),
            limits_view.condition,
            ConditionUpdate(INVALID, "False", Reason.VALID),
        ]
        _warn_transitions(ctx, body, previous.conditions, updates)
        writes += await _write_status(
            ctx,
            memory,
            body,
            build_status(
                previous=previous,
                plan=None,
                updates=updates,
                waits={},
                limits_source=None,
                now=now_text,
                generation=generation,
            ),
        )
        return RoundResult(_sooner(retry, spec.database.refresh_seconds), writes)

    namespace_labels = view.namespace_labels() if spec.namespace_selector is not None else None
    outcome = plan_for_budget(
        budget, limits_view.limits, candidates, hpas, namespace_labels, unmanaged=limits_view.unmanaged
    )
    refusals += outcome.refused
    # A refused Deployment that still has our settings keeps its pools: count them, or others grow into them.
    held: dict[Key, int] = {}
    for refusal in refusals:
        key = (refusal.namespace, refusal.name)
        if key in raw and managed_by(raw[key]) == name:
            held[key] = refused_footprint(
                raw[key], view.pods_of(key), _hpa_replicas(view.hpas_of(key), spec.sizing.hpa), spec.sizing
            )
    unmanaged = limits_view.unmanaged + sum(held.values())
    if held:
        outcome = plan_for_budget(
            budget, limits_view.limits, candidates, hpas, namespace_labels, unmanaged=unmanaged
        )
    demand, metrics_update, demand_detail = await read_demand(ctx, memory, budget, outcome)
    if demand:
        outcome = plan_for_budget(
            budget, limits_view.limits, candidates, hpas, namespace_labels, demand, unmanaged
        )
    plan = outcome.plan
    refusals = [
        still_counted(r, raw[r.namespace, r.name]) if (r.namespace, r.name) in held else r for r in refusals
    ]
    _warn_refusals(ctx, memory, body, refusals, raw)

    # Order: shrink first, grow only into observed room, hold back small or too frequent growth.
    transitions: list[Transition] = []
    patches: dict[Key, Change] = {}
    observed: dict[Key, int] = {}
    for allocation in plan.allocations:
        key = allocation.workload.key
        managed = outcome.managed[key]
        deployment = raw[key]
        pods = view.pods_of(key)
        observed[key] = observed_footprint(managed, pods)
        from_per_pod = template_per_pod(managed, deployment)
        to_per_pod = target_per_pod(allocation)
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
        desired = with_application_name(
            desired_env(budget, managed, allocation), deployment, managed_application_name(*key)
        )
        patch = apply_patch(deployment, name, desired, to_per_pod, now_text)
        if patch is not None:
            patches[key] = Change(key, patch, deployment, from_per_pod, to_per_pod, allocation)
    hysteresis = Hysteresis(
        min_change_ratio=spec.rebalance.min_change_ratio,
        min_change_connections=spec.rebalance.min_change_connections,
        min_interval_seconds=spec.rebalance.min_interval_seconds,
    )
    steps = order_changes(transitions, plan.available, limits_view.allow_growth, hysteresis)
    waits = dict(steps.waiting)
    by_key = {t.key: t for t in transitions}
    moving = set(steps.shrink) | set(steps.grow)
    first: list[Change] = [patches[k] for k in steps.shrink if k in patches]
    for key, change in patches.items():
        # Same connections, other entries (first opt-in, a timeout, PGAPPNAME): due once rolling is allowed.
        t = by_key[key]
        if key not in moving and key not in waits and t.current_per_pod == t.target_per_pod:
            if _touches_template(change.patch) and not _may_roll(t, hysteresis):
                continue
            first.append(change)
    applied = await _apply(ctx, memory, budget, body, first)
    if not steps.shrink and applied.ok:
        # No shrink in this round: every grow that fits goes now (order_changes already left room for all).
        second = await _apply(ctx, memory, budget, body, [patches[k] for k in steps.grow if k in patches])
    else:
        second = _Applied()
        for key in steps.grow:
            waits.setdefault(key, Wait.SHRINKS_IN_FLIGHT)
    writes += applied.writes + second.writes
    changed = applied.changed + second.changed
    retry = _sooner(retry, applied.retry, second.retry)
    if changed:
        ctx.metrics.rebalances.labels(name).inc()

    # Status, conditions and the events of their transitions.
    updates = [
        ready_update(plan, waits, memory.database_error if limits_view.condition.status == "False" else None),
        overcommitted_update(plan),
        limits_view.condition,
        metrics_update,
        ConditionUpdate(INVALID, "False", Reason.VALID),
    ]
    _warn_transitions(ctx, body, previous.conditions, updates)
    status = build_status(
        previous=previous,
        plan=plan,
        updates=updates,
        waits=waits,
        limits_source=limits_view.limits.source,
        now=now_text,
        generation=generation,
        demand_detail=demand_detail,
        held=held,
    )
    writes += await _write_status(ctx, memory, body, status)
    ctx.metrics.record_plan(name, plan, observed)
    memory.awaiting_rollouts = any(wait in (Wait.SHRINKS_IN_FLIGHT, Wait.NO_ROOM) for wait in waits.values())

    # When to look again without a wake-up: the limits' refresh, or when held-back growth may roll.
    next_round: float | None = float(spec.database.refresh_seconds)
    for key, wait in waits.items():
        since = by_key[key].seconds_since_roll if key in by_key else None
        if wait is Wait.TOO_SOON and since is not None:
            next_round = _sooner(next_round, max(1.0, spec.rebalance.min_interval_seconds - since))
    return RoundResult(_sooner(next_round, retry), writes, tuple(changed))


_NO_CONDITION = ConditionUpdate(READY, "Unknown", "")


# ---------------------------------------------------------------------------------------------------- refused


def template_stamp(deployment: Obj) -> int | None:
    """Connections per pod the pod template's stamp declares (what poolbudget last wrote), if any."""
    template = (deployment.get("spec") or {}).get("template") or {}
    raw = str(((template.get("metadata") or {}).get("annotations") or {}).get(STAMP_CONNECTIONS, ""))
    return int(raw) if raw.isdigit() else None


def raw_peak_pods(deployment: Obj, hpa_replicas: int | None, sizing: SizingSpec) -> int:
    """The most pods a Deployment can run at once, read from the object as it is (it may not parse: that can
    be why it was refused), with the same rule as the plan's; a maxSurge that does not parse counts as 25%."""
    spec = deployment.get("spec") or {}
    replicas = spec.get("replicas")
    strategy = spec.get("strategy") or {}
    max_surge = (strategy.get("rollingUpdate") or {}).get("maxSurge")
    if not isinstance(max_surge, int | str) or isinstance(max_surge, bool):
        max_surge = None
    arguments = (
        replicas if isinstance(replicas, int) and not isinstance(replicas, bool) and replicas >= 0 else None,
        str(strategy.get("type") or "RollingUpdate"),
    )
    try:
        pods, _ = peak_pods(*arguments, max_surge, hpa_replicas, sizing.count_surge, sizing.rollout_overlap)
    except ValueError:
        pods, _ = peak_pods(*arguments, None, hpa_replicas, sizing.count_surge, sizing.rollout_overlap)
    return pods


def _hpa_replicas(hpas: Iterable[Obj], mode: str) -> int | None:
    """The replicas an HPA targeting the Deployment sizes it for (as ``manage`` reads it), if one does."""
    for hpa in hpas:
        if mode == "maxReplicas":
            value = (hpa.get("spec") or {}).get("maxReplicas")
        else:
            value = (hpa.get("status") or {}).get("currentReplicas")
        if isinstance(value, int) and value >= 0:
            return value
    return None


def refused_footprint(
    deployment: Obj, pods: Iterable[PodFacts], hpa_replicas: int | None, sizing: SizingSpec
) -> int:
    """Connections a refused Deployment still at poolbudget's settings can hold: the larger of what its pods hold
    now and its stamp times its peak pods (a rollout of its own may surge it while poolbudget cannot act).

    Its pods carry the stamp; one that does not (started before poolbudget's first write) is counted at the
    template's stamp, as its env cannot be read without a profile, and the profile may be what is wrong.
    """
    per_pod = template_stamp(deployment)
    observed = sum(p.stamp if p.stamp is not None else (per_pod or 0) for p in pods)
    peak = per_pod * raw_peak_pods(deployment, hpa_replicas, sizing) if per_pod is not None else 0
    return max(observed, peak)


def still_counted(refusal: Refusal, deployment: Obj) -> Refusal:
    """The refusal of a Deployment that keeps poolbudget's settings: say it still counts and stays as it is."""
    per_pod = template_stamp(deployment)
    settings = f" ({per_pod} connections per pod)" if per_pod is not None else ""
    return Refusal(
        refusal.namespace,
        refusal.name,
        f"{refusal.message}; it is still counted at its current settings{settings}, and poolbudget will not "
        "change it until the annotation is fixed",
    )


def _parsed(memory: BudgetMemory, deployment: Obj) -> Deployment | str:
    """The Deployment validated into the model (or what is wrong with it), once per version of it."""
    key, version = _key(deployment), _version(deployment)
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


def _sooner(*delays: float | None) -> float | None:
    present = [d for d in delays if d is not None]
    return min(present) if present else None


def _touches_template(patch: Mapping[str, Any]) -> bool:
    return "template" in (patch.get("spec") or {})


def _may_roll(t: Transition, hysteresis: Hysteresis) -> bool:
    return t.seconds_since_roll is None or t.seconds_since_roll >= hysteresis.min_interval_seconds


# ---------------------------------------------------------------------------------------------------- writes


@dataclass
class _Applied:
    writes: int = 0
    changed: list[Key] = field(default_factory=list)
    retry: float | None = None
    ok: bool = True


async def _apply(
    ctx: Context, memory: BudgetMemory, budget: PoolBudget, body: Obj, changes: list[Change]
) -> _Applied:
    """Patch the Deployments (concurrently), then post an event per resize on the Deployment and the budget."""
    result = _Applied()
    if not changes:
        return result
    limit = asyncio.Semaphore(PATCH_CONCURRENCY)

    async def patch(change: Change) -> tuple[Change, dict[str, Any] | KubernetesError]:
        async with limit:
            try:
                return change, await ctx.cluster.patch_deployment(*change.key, change.patch)
            except KubernetesError as exc:
                return change, exc

    rolled: list[Key] = []
    for change, outcome in await asyncio.gather(*(patch(c) for c in changes)):
        if isinstance(outcome, KubernetesError):
            result.ok = False
            if isinstance(outcome, NotFound):
                continue  # deleted meanwhile; the index will drop it
            if isinstance(outcome, Conflict):
                result.retry = _sooner(result.retry, RETRY_SOON)
                continue
            result.retry = _sooner(result.retry, RETRY_LATER)
            logger.warning("PoolBudget %s: %s", budget.name, outcome)
            ctx.events.warning(body, "PatchFailed", str(outcome))
            continue
        result.writes += 1
        result.changed.append(change.key)
        memory.own_writes[change.key] = (_version(change.deployment), outcome)
        if _touches_template(change.patch):
            rolled.append(change.key)
        if change.from_per_pod != change.to_per_pod and change.allocation is not None:
            a = change.allocation
            ns, name = change.key
            message = (
                f"{change.from_per_pod} -> {change.to_per_pod} connections per pod (pool_size {a.pool_size}, "
                f"max_overflow {a.max_overflow} per process) by PoolBudget {budget.name}"
            )
            ctx.events.normal(change.deployment, "Resized", message)
            ctx.events.normal(body, "Resized", f"Deployment {ns}/{name}: {message}; {a.reason}")
    ctx.metrics.record_restarts(budget.name, rolled)
    return result


async def _release(
    ctx: Context,
    memory: BudgetMemory | None,
    budget: PoolBudget | None,
    body: Obj | None,
    deployments: list[Obj],
) -> RoundResult:
    """Give Deployments back their own env (annotation removed, budget deleted): restore, then tell them."""
    writes, retry = 0, None
    for deployment in deployments:
        patch = restore_patch(deployment)
        if patch is None:
            continue
        ns, name = _key(deployment)
        try:
            after = await ctx.cluster.patch_deployment(ns, name, patch)
        except NotFound:
            continue
        except KubernetesError as exc:
            retry = RETRY_SOON if isinstance(exc, Conflict) else RETRY_LATER
            logger.warning("releasing Deployment %s/%s: %s", ns, name, exc)
            continue
        writes += 1
        if memory is not None:
            memory.own_writes[(ns, name)] = (_version(deployment), after)
            memory.warned.pop((ns, name), None)
        owner = budget.name if budget is not None else managed_by(deployment)
        message = f"released by PoolBudget {owner}: its own env restored"
        ctx.events.normal(deployment, "Released", message)
        if body is not None:
            ctx.events.normal(body, "Released", f"Deployment {ns}/{name} {message}")
    return RoundResult(retry, writes)


async def release_budget(ctx: Context, name: str, uid: str | None, view: View) -> int:
    """The budget is being deleted: stop its loop and restore every Deployment it manages.

    Raises KubernetesError when a Deployment could not be restored (kopf retries the deletion handler).
    """
    memory = ctx.memory(name, uid)
    async with memory.lock:
        memory.deleted = True
        owned = [d for d in (latest(memory, d) for d in view.deployments_of(name)) if managed_by(d) == name]
        result = await _release(ctx, memory, None, None, owned)
    if result.next_round_in is not None:
        raise KubernetesError(f"PoolBudget {name}: some Deployments could not be restored yet")
    ctx.metrics.forget_budget(name)
    return result.writes


async def release_orphan(ctx: Context, deployment: Obj) -> int:
    """A Deployment carrying the settings of a budget that no longer exists: restore it."""
    result = await _release(ctx, None, None, None, [deployment])
    return result.writes


async def _write_status(ctx: Context, memory: BudgetMemory, body: Obj, status: Any) -> int:
    """Write the status if it differs from the stored one (and from our own write the watch has not shown yet)."""
    document = status_document(status)
    stored = body.get("status") if isinstance(body.get("status"), Mapping) else {}
    if not status_differs(stored, document):
        memory.own_status = None
        return 0
    version = _version(body)
    if memory.own_status is not None and memory.own_status == (version, document):
        return 0  # written already; the budget's watch event is on its way
    patch: dict[str, Any] = dict(document)
    for key in stored or {}:
        if key not in document and key in _STATUS_KEYS:
            patch[key] = None  # merge patch: remove what the new status no longer says
    try:
        await ctx.cluster.patch_budget_status(memory.name, patch)
    except KubernetesError as exc:
        logger.warning("PoolBudget %s: %s", memory.name, exc)
        return 0
    memory.own_status = (version, document)
    return 1


_STATUS_KEYS = frozenset(
    {
        "maxConnections",
        "available",
        "allocated",
        "deploymentCount",
        "ready",
        "limitsSource",
        "availableReason",
        "shortfall",
        "allocations",
        "conditions",
        "observedGeneration",
    }
)


# ---------------------------------------------------------------------------------------------------- events


def _warn_refusals(
    ctx: Context, memory: BudgetMemory, body: Obj, refusals: list[Refusal], raw: Mapping[Key, Obj]
) -> None:
    """A Warning on each refused Deployment and on the budget, once per distinct message."""
    current: dict[Key, str] = {}
    for refusal in refusals:
        key = (refusal.namespace, refusal.name)
        current[key] = refusal.message
        if memory.warned.get(key) != refusal.message and key in raw:
            ctx.events.warning(raw[key], "Refused", f"PoolBudget {memory.name}: {refusal.message}")
            ctx.events.warning(
                body, "Refused", f"Deployment {refusal.namespace}/{refusal.name}: {refusal.message}"
            )
    memory.warned = current


def _warn_transitions(
    ctx: Context, body: Obj, previous: Iterable[Any], updates: Iterable[ConditionUpdate]
) -> None:
    """Warnings when a budget becomes overcommitted or loses its database (not on every round)."""
    before = {c.type: c.status for c in previous}
    for update in updates:
        if update.type == OVERCOMMITTED and update.status == "True" and before.get(OVERCOMMITTED) != "True":
            ctx.events.warning(body, "Overcommitted", update.message)
        if (
            update.type == DATABASE_REACHABLE
            and update.status == "False"
            and before.get(update.type) != "False"
        ):
            ctx.events.warning(body, "DatabaseUnreachable", update.message)


# ---------------------------------------------------------------------------------------------------- the loop


async def run_budget_loop(
    ctx: Context,
    name: str,
    current_body: Callable[[], Obj],
    view: View,
    round_fn: Callable[[Context, Obj, View], Awaitable[RoundResult]] = reconcile_budget,
) -> None:
    """Run rounds for one budget until cancelled: at once, then on each wake-up (after the debounce window,
    so a burst makes one plan) or when the previous round asked to be run again."""
    memory = ctx.memory(name, (current_body().get("metadata") or {}).get("uid"))
    delay: float | None = 0.0
    while True:
        woken = delay == 0.0
        if not woken:
            try:
                async with asyncio.timeout(delay):
                    await memory.wake.wait()
                woken = True
            except TimeoutError:
                woken = False
            if woken:
                await asyncio.sleep(_debounce(current_body()))
        memory.wake.clear()
        try:
            result = await round_fn(ctx, current_body(), view)
            delay = result.next_round_in
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("PoolBudget %s: the round failed; trying again in %s s", name, RETRY_LATER)
            delay = RETRY_LATER
        if delay is not None and delay <= 0:
            delay = 0.1


def _debounce(body: Obj) -> float:
    rebalance = (body.get("spec") or {}).get("rebalance") or {}
    value = rebalance.get("debounceSeconds", 1.0)
    return float(value) if isinstance(value, int | float) and 0 <= value <= 60 else 1.0
