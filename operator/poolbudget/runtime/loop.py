"""One budget's loop: rounds at once, then on each wake-up (after the debounce window, so that a burst of events
makes one plan) or when the previous round asked to be run again; the budget's memory goes when the loop ends.

No kopf here: ``handlers`` starts one loop per PoolBudget (a kopf daemon) and wakes it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from pydantic import ValidationError

from poolbudget.api.models import RebalanceSpec
from poolbudget.api.objects import Obj
from poolbudget.controller.reconcile import reconcile_budget
from poolbudget.controller.state import RETRY_LATER, Context, RoundResult, View
from poolbudget.observe.objects import mapping, spec_of, uid_of

logger = logging.getLogger(__name__)


async def run_budget_loop(
    ctx: Context,
    name: str,
    current_body: Callable[[], Obj],
    view: View,
    round_fn: Callable[[Context, Obj, View], Awaitable[RoundResult]] = reconcile_budget,
) -> None:
    """Run rounds for one budget until cancelled: at once, then on each wake-up (after the debounce window,
    so a burst makes one plan) or when the previous round asked to be run again."""
    memory = ctx.memory(name, uid_of(current_body()))
    delay: float | None = 0.0
    try:
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
                    await asyncio.sleep(debounce_seconds(current_body()))
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
    finally:
        # The loop ends when the budget is gone (or the operator stops): nothing may keep its memory alive.
        ctx.forget(name, memory)


def debounce_seconds(body: Obj) -> float:
    """``spec.rebalance.debounceSeconds`` as the model validates it; its default when the spec says none or
    an invalid one (the round reports the invalid spec)."""
    try:
        rebalance = RebalanceSpec.model_validate(dict(mapping(spec_of(body).get("rebalance"))))
    except ValidationError:
        return RebalanceSpec().debounce_seconds
    return rebalance.debounce_seconds
