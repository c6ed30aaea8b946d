"""What a watch event means for the budgets' loops: which to wake, when to warn, when to release. No kopf."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Mapping
from typing import Any

import pytest

from poolbudget.api.annotations import BUDGET, MANAGED_BY
from poolbudget.controller.apply import release_budget
from poolbudget.controller.state import Context, RoundResult, View
from poolbudget.runtime.loop import run_budget_loop
from poolbudget.runtime.metrics import OperatorMetrics
from poolbudget.runtime.wakeups import WatchMemory

KEY = ("shop", "web")


class NoCluster:
    """Deciding on wake-ups calls nothing."""

    async def patch_deployment(self, namespace: str, name: str, patch: Mapping[str, Any]) -> dict[str, Any]:
        raise AssertionError("no call expected")

    async def patch_budget_status(self, name: str, status: Mapping[str, Any]) -> dict[str, Any]:
        raise AssertionError("no call expected")

    async def read_secret_value(self, namespace: str, name: str, key: str) -> str:
        raise AssertionError("no call expected")


class NoEvents:
    def normal(self, obj: Mapping[str, Any], reason: str, message: str) -> None:
        raise AssertionError("no event expected")

    def warning(self, obj: Mapping[str, Any], reason: str, message: str) -> None:
        raise AssertionError("no event expected")


def context() -> Context:
    return Context(cluster=NoCluster(), events=NoEvents(), metrics=OperatorMetrics(), operator_namespace="pb")


def deployment(
    annotations: Mapping[str, str] | None = None, *, generation: int = 1, version: int = 1
) -> dict[str, Any]:
    return {
        "metadata": {
            "namespace": "shop",
            "name": "web",
            "generation": generation,
            "resourceVersion": str(version),
            "annotations": dict({BUDGET: "main"} if annotations is None else annotations),
        }
    }


def test_a_deployment_wakes_its_budget_when_what_matters_changed_and_not_on_a_repeat() -> None:
    ctx, watch = context(), WatchMemory()
    assert watch.deployment_event(ctx, "ADDED", KEY, deployment(), {"main"}).wake == ["main"]
    # A status-only update (same generation, same annotations): nothing for the plan.
    assert watch.deployment_event(ctx, "MODIFIED", KEY, deployment(version=2), {"main"}).wake == []
    # A new spec, or a change of poolbudget's annotations, is news.
    news = watch.deployment_event(ctx, "MODIFIED", KEY, deployment(generation=2, version=3), {"main"})
    assert news.wake == ["main"]
    changed = deployment({BUDGET: "main", "poolbudget.io/weight": "3"}, generation=2, version=4)
    assert watch.deployment_event(ctx, "MODIFIED", KEY, changed, {"main"}).wake == ["main"]
    # Annotations of others do not count.
    other = copy.deepcopy(changed)
    other["metadata"]["annotations"]["team"] = "shop"
    assert watch.deployment_event(ctx, "MODIFIED", KEY, other, {"main"}).wake == []


def test_the_echo_of_the_budgets_own_patch_wakes_nothing() -> None:
    ctx, watch = context(), WatchMemory()
    watch.deployment_event(ctx, "ADDED", KEY, deployment(), {"main"})
    patched = deployment({BUDGET: "main", MANAGED_BY: "main"}, generation=2, version=7)
    ctx.memory("main").own_writes[KEY] = ("1", patched)
    assert watch.deployment_event(ctx, "MODIFIED", KEY, patched, {"main"}).wake == []


def test_a_budget_waiting_for_a_rollout_is_woken_by_every_update() -> None:
    ctx, watch = context(), WatchMemory()
    watch.deployment_event(ctx, "ADDED", KEY, deployment(), {"main"})
    ctx.memory("main").awaiting_rollouts = True
    assert watch.deployment_event(ctx, "MODIFIED", KEY, deployment(version=2), {"main"}).wake == ["main"]


def test_a_deployment_that_leaves_a_budget_or_goes_still_wakes_the_budget_it_named() -> None:
    ctx, watch = context(), WatchMemory()
    watch.deployment_event(ctx, "ADDED", KEY, deployment(), {"main", "other"})
    moved = deployment({BUDGET: "other"}, generation=1, version=2)
    assert sorted(watch.deployment_event(ctx, "MODIFIED", KEY, moved, {"main", "other"}).wake) == [
        "main",
        "other",
    ]
    assert watch.deployment_event(ctx, "DELETED", KEY, moved, {"main", "other"}).wake == ["other"]
    # Deleted: forgotten, so the same object coming back is news again.
    assert watch.last_budgets == {}
    assert watch.signatures == {}
    assert watch.deployment_event(ctx, "ADDED", KEY, moved, {"main", "other"}).wake == ["other"]


def test_naming_a_budget_that_does_not_exist_warns_once_per_message() -> None:
    ctx, watch = context(), WatchMemory()
    news = watch.deployment_event(ctx, "ADDED", KEY, deployment({BUDGET: "nosuch"}), set())
    assert news.unknown_budget is not None
    assert "'nosuch'" in news.unknown_budget
    again = deployment({BUDGET: "nosuch"}, generation=2, version=2)
    assert watch.deployment_event(ctx, "MODIFIED", KEY, again, set()).unknown_budget is None
    # Once the budget exists the warning is forgotten: naming a missing one again warns again.
    watch.deployment_event(ctx, "MODIFIED", KEY, again, {"nosuch"})
    assert watch.unknown_warned == {}
    assert watch.deployment_event(ctx, "MODIFIED", KEY, again, set()).unknown_budget is not None


def test_settings_of_a_budget_that_is_gone_call_for_a_release_unless_the_deployment_is_gone_too() -> None:
    ctx, watch = context(), WatchMemory()
    orphan = deployment({MANAGED_BY: "gone"})
    assert watch.deployment_event(ctx, "MODIFIED", KEY, orphan, {"main"}).orphaned
    assert not watch.deployment_event(ctx, "DELETED", KEY, orphan, {"main"}).orphaned
    held = deployment({BUDGET: "main", MANAGED_BY: "main"})
    assert not watch.deployment_event(ctx, "MODIFIED", KEY, held, {"main"}).orphaned


def test_an_hpa_is_news_when_its_bounds_or_current_replicas_change() -> None:
    watch = WatchMemory()
    hpa: dict[str, Any] = {
        "metadata": {"namespace": "shop", "name": "web", "generation": 1},
        "status": {"currentReplicas": 2},
    }
    assert watch.hpa_event("ADDED", hpa)
    assert not watch.hpa_event("MODIFIED", hpa)
    hpa["status"]["currentReplicas"] = 3
    assert watch.hpa_event("MODIFIED", hpa)
    hpa["metadata"]["generation"] = 2
    assert watch.hpa_event("MODIFIED", hpa)
    assert watch.hpa_event("DELETED", hpa)
    assert watch.hpa_event("ADDED", hpa)  # forgotten on deletion


def test_a_budget_is_news_only_with_a_new_generation() -> None:
    watch = WatchMemory()
    assert watch.budget_event("main", 1)
    assert not watch.budget_event("main", 1)  # a status write
    assert watch.budget_event("main", 2)
    assert watch.budget_event("other", 2)


def test_waking_a_budget_without_a_loop_keeps_nothing_for_it() -> None:
    """A Deployment naming a budget that does not exist (or no longer does) must not leave state behind."""
    ctx = context()
    ctx.wake(["gone", "never-was"])
    assert ctx.memories == {}
    memory = ctx.memory("main")
    ctx.wake(["main", "gone"])
    assert memory.wake.is_set()
    assert set(ctx.memories) == {"main"}


def test_a_budget_whose_loop_ended_is_forgotten() -> None:
    ctx, released = context(), []

    async def one_round(c: Context, body: Mapping[str, Any], view: View) -> RoundResult:
        released.append(body["metadata"]["name"])
        raise asyncio.CancelledError  # kopf cancels the daemon: the budget is gone (or the operator stops)

    async def loop() -> None:
        body = {"metadata": {"name": "main", "uid": "u1"}}
        await run_budget_loop(ctx, "main", lambda: body, View({}, {}, {}, {}), one_round)

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(loop())
    assert released == ["main"]
    assert ctx.memories == {}
    ctx.wake(["main"])  # a late event about it
    assert ctx.memories == {}


def test_a_deleted_budget_is_forgotten_once_its_deployments_are_released() -> None:
    ctx = context()
    ctx.memory("main", "u1")
    view = View({"main": []}, {}, {}, {})  # nothing left to restore
    assert asyncio.run(release_budget(ctx, "main", "u1", view)) == 0
    assert ctx.memories == {}


def test_forgetting_an_old_memory_keeps_the_budget_recreated_under_the_name() -> None:
    ctx = context()
    old = ctx.memory("main", "u1")
    new = ctx.memory("main", "u2")  # deleted and created again: another object, a fresh memory
    ctx.forget("main", old)
    assert ctx.memories == {"main": new}
