"""What every budget's round shares: the operator-wide :class:`Context`, each budget's :class:`BudgetMemory`, the
:class:`View` of kopf's indexes a round reads, and the :class:`RoundResult` it returns.

The Kubernetes calls, the events and the operator's metrics are Protocols (:class:`ClusterApi`,
:class:`EventSink`, :class:`RoundMetrics`): ``adapters`` and ``runtime`` provide the real ones, tests answer them
in memory.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from poolbudget.api.limits import DatabaseLimits
from poolbudget.api.objects import Key, Obj
from poolbudget.api.workloads import Deployment
from poolbudget.controller.status import ConditionUpdate
from poolbudget.observe.confirmations import PodTags
from poolbudget.observe.objects import key_of, version_of
from poolbudget.observe.pods import PodFacts
from poolbudget.planning.demand import DemandState
from poolbudget.planning.plan import BudgetPlan

RETRY_SOON = 1.0  # seconds before a round after a conflict (someone else wrote the Deployment first)
RETRY_LATER = 5.0  # seconds before a round after an API or unexpected error


class ClusterApi(Protocol):
    """The Kubernetes calls a round makes (``adapters.kubernetes.Cluster`` is the real one)."""

    async def patch_deployment(
        self, namespace: str, name: str, patch: Mapping[str, Any]
    ) -> dict[str, Any]: ...

    async def patch_pod(self, namespace: str, name: str, patch: Mapping[str, Any]) -> dict[str, Any]: ...

    async def patch_budget_status(self, name: str, status: Mapping[str, Any]) -> dict[str, Any]: ...

    async def read_secret_value(self, namespace: str, name: str, key: str) -> str: ...


class RoundMetrics(Protocol):
    """The operator's own metrics, as rounds feed them (``runtime.metrics.OperatorMetrics`` is the real one)."""

    def record_plan(self, budget: str, plan: BudgetPlan, observed: Mapping[Key, int]) -> None: ...

    def record_restarts(self, budget: str, keys: Iterable[Key]) -> None: ...

    def record_live(self, budget: str, unconfirmed: int | None, allotted: Mapping[Key, int]) -> None: ...

    def record_round(self, budget: str, seconds: float) -> None: ...

    def count_rebalance(self, budget: str) -> None: ...

    def count_database_error(self, budget: str) -> None: ...

    def count_prometheus_error(self, budget: str) -> None: ...

    def forget_budget(self, budget: str) -> None: ...


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
    demand_state: DemandState | None = None
    warned: dict[Key, str] = field(default_factory=dict)  # refusal events posted, by Deployment
    delivery_warned: dict[Key, str] = field(default_factory=dict)  # live refused: events posted
    own_writes: dict[Key, tuple[str, dict[str, Any]]] = field(default_factory=dict)
    own_status: tuple[str, dict[str, Any]] | None = None
    parsed: dict[Key, tuple[str, Deployment | str]] = field(default_factory=dict)  # by resourceVersion
    last_round: float | None = None
    uid: str | None = None  # the object it belongs to: a budget re-created under the name is another
    awaiting_rollouts: bool = False  # growth waits for pods to go, or pods are live: pod events matter
    # Live delivery: the confirmation tags last read, the allotments written (generation, when) per pod, the
    # Deployments some pod of which answered, since when each is live, the late confirmations warned about.
    live_tags: dict[str, PodTags] = field(default_factory=dict)
    live_tags_read_at: float | None = None
    live_written: dict[tuple[Key, str], tuple[int, float]] = field(default_factory=dict)
    live_seen: set[Key] = field(default_factory=set)
    live_since: dict[Key, float] = field(default_factory=dict)
    live_warned: set[tuple[Key, str, int]] = field(default_factory=set)
    deleted: bool = False


@dataclass
class Context:
    """The operator-wide collaborators of every budget's loop."""

    cluster: ClusterApi
    events: EventSink
    metrics: RoundMetrics
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
        """Wake the loops of these budgets (those that have one: a name without a loop gets no memory)."""
        for name in budgets:
            memory = self.memories.get(name)
            if memory is not None:
                memory.wake.set()

    def forget(self, budget: str, memory: BudgetMemory | None = None) -> None:
        """Drop a budget's memory when it is gone (its loop ended, or it was deleted and released); with
        ``memory``, only if that is still the one kept (a budget re-created under the name has its own)."""
        if memory is None or self.memories.get(budget) is memory:
            self.memories.pop(budget, None)

    def awaiting_rollouts(self, budget: str) -> bool:
        """Whether the budget's last round left growth waiting for pods to go (rollout news can unblock it)."""
        memory = self.memories.get(budget)
        return memory is not None and memory.awaiting_rollouts

    def own_echo(self, budget: str, deployment: Obj) -> bool:
        """Whether this Deployment version is the one the budget's own last patch produced (nothing new)."""
        memory = self.memories.get(budget)
        own = memory.own_writes.get(key_of(deployment)) if memory is not None else None
        return own is not None and version_of(own[1]) == version_of(deployment)


@dataclass(frozen=True, slots=True)
class RoundResult:
    """What a round did, and when the next one is due without a wake-up (None: only on a wake-up)."""

    next_round_in: float | None
    writes: int = 0
    changed: tuple[Key, ...] = ()


def latest(memory: BudgetMemory, deployment: Obj) -> Obj:
    """The Deployment as the index has it, or as our own write left it if the index has not seen that yet."""
    key = key_of(deployment)
    own = memory.own_writes.get(key)
    if own is None:
        return deployment
    before, after = own
    if version_of(deployment) == before:
        return after
    del memory.own_writes[key]  # the index caught up (or someone wrote after us)
    return deployment


def sooner(*delays: float | None) -> float | None:
    """The shortest of the delays given (None ones do not count); None when there is none."""
    present = [d for d in delays if d is not None]
    return min(present) if present else None
