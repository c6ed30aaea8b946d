"""Carry a round's decisions to the cluster: patch the Deployments whose env changes (and say so in events), and
give Deployments back their own env when they leave a budget or the budget is deleted.

The patches are built elsewhere (``delivery.envpatch``); what a write leaves is remembered in the budget's memory,
so the next round does not mistake the watch's echo of it for news.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from poolbudget.adapters.errors import Conflict, KubernetesError, NotFound
from poolbudget.api.models import PoolBudget
from poolbudget.api.objects import Key, Obj
from poolbudget.controller.state import (
    RETRY_LATER,
    RETRY_SOON,
    BudgetMemory,
    Context,
    RoundResult,
    View,
    latest,
    sooner,
)
from poolbudget.delivery.envpatch import restore_patch
from poolbudget.observe.objects import key_of, managed_by, mapping, version_of
from poolbudget.planning.plan import Allocation

logger = logging.getLogger(__name__)

PATCH_CONCURRENCY = 16  # patches of one round in flight at once


@dataclass(frozen=True, slots=True)
class Change:
    """One Deployment's patch in this round."""

    key: Key
    patch: dict[str, Any]
    deployment: Obj
    from_per_pod: int
    to_per_pod: int
    allocation: Allocation | None = None


@dataclass
class Applied:
    """What a batch of patches did: the writes that went through, and when to retry the ones that did not."""

    writes: int = 0
    changed: list[Key] = field(default_factory=list)
    retry: float | None = None
    ok: bool = True


def touches_template(patch: Mapping[str, Any]) -> bool:
    """Whether a patch changes the pod template (and so rolls the Deployment's pods)."""
    return "template" in mapping(patch.get("spec"))


async def apply_changes(
    ctx: Context, memory: BudgetMemory, budget: PoolBudget, body: Obj, changes: list[Change]
) -> Applied:
    """Patch the Deployments (concurrently), then post an event per resize on the Deployment and the budget."""
    result = Applied()
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
                result.retry = sooner(result.retry, RETRY_SOON)
                continue
            result.retry = sooner(result.retry, RETRY_LATER)
            logger.warning("PoolBudget %s: %s", budget.name, outcome)
            ctx.events.warning(body, "PatchFailed", str(outcome))
            continue
        result.writes += 1
        result.changed.append(change.key)
        memory.own_writes[change.key] = (version_of(change.deployment), outcome)
        if touches_template(change.patch):
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


async def release_deployments(
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
        ns, name = key_of(deployment)
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
            memory.own_writes[(ns, name)] = (version_of(deployment), after)
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
        result = await release_deployments(ctx, memory, None, None, owned)
    if result.next_round_in is not None:
        raise KubernetesError(f"PoolBudget {name}: some Deployments could not be restored yet")
    ctx.metrics.forget_budget(name)
    ctx.forget(name, memory)  # released: nothing of the budget is kept
    return result.writes


async def release_orphan(ctx: Context, deployment: Obj) -> int:
    """A Deployment carrying the settings of a budget that no longer exists: restore it."""
    result = await release_deployments(ctx, None, None, None, [deployment])
    return result.writes
