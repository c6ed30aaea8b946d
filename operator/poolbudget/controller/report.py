"""What a round tells: the budget's status, written only when it differs from the stored one, and the Warning
events of refused Deployments and of conditions turning bad (once each, not on every round).

What the status says is decided in ``status`` (pure); this module only writes it and posts the events.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from poolbudget.adapters.errors import KubernetesError
from poolbudget.api.conditions import DATABASE_REACHABLE, OVERCOMMITTED
from poolbudget.api.objects import Key, Obj
from poolbudget.controller.state import BudgetMemory, Context
from poolbudget.controller.status import OWNED_FIELDS, ConditionUpdate, status_differs, status_document
from poolbudget.observe.objects import status_of, version_of
from poolbudget.planning.budget import BudgetOutcome, Refusal

logger = logging.getLogger(__name__)


async def write_status(ctx: Context, memory: BudgetMemory, body: Obj, status: Any) -> int:
    """Write the status if it differs from the stored one (and from our own write the watch has not shown yet)."""
    document = status_document(status)
    stored = status_of(body)
    if not status_differs(stored, document):
        memory.own_status = None
        return 0
    version = version_of(body)
    if memory.own_status is not None and memory.own_status == (version, document):
        return 0  # written already; the budget's watch event is on its way
    patch: dict[str, Any] = dict(document)
    for key in stored or {}:
        if key not in document and key in OWNED_FIELDS:
            patch[key] = None  # merge patch: remove what the new status no longer says
    try:
        await ctx.cluster.patch_budget_status(memory.name, patch)
    except KubernetesError as exc:
        logger.warning("PoolBudget %s: %s", memory.name, exc)
        return 0
    memory.own_status = (version, document)
    return 1


def warn_refusals(
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


def warn_delivery(
    ctx: Context, memory: BudgetMemory, body: Obj, outcome: BudgetOutcome, raw: Mapping[Key, Obj]
) -> None:
    """A Warning, once per distinct message, on each Deployment that asked for live delivery and stays on env."""
    current: dict[Key, str] = {}
    for key, managed in outcome.managed.items():
        note = managed.delivery_note
        if note is None:
            continue
        current[key] = note
        if memory.delivery_warned.get(key) != note:
            ctx.events.warning(raw[key], "LiveRefused", f"PoolBudget {memory.name}: {note}")
    memory.delivery_warned = current


def warn_transitions(
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
