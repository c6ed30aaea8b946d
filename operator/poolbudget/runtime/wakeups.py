"""What a watch event means for the budgets' loops: which to wake, and whether it calls for a Warning or a release.

Plain decisions over what the event handlers saw before (:class:`WatchMemory`), kept apart from kopf so that they
can be tested without it: ``handlers`` feeds them kopf's events and carries out the answer.
"""

from __future__ import annotations

from collections.abc import Container
from dataclasses import dataclass, field
from typing import Any

from poolbudget.api.annotations import ANNOTATION_PREFIX
from poolbudget.api.objects import Key, Obj
from poolbudget.api.workloads import budget_of
from poolbudget.controller.state import Context
from poolbudget.observe.objects import annotations_of, budgets_of, managed_by, metadata_of, status_of


@dataclass(frozen=True, slots=True)
class DeploymentNews:
    """What one watch event of a Deployment calls for."""

    wake: list[str]  # budgets whose loops should look again
    # A Warning to post: it names a budget that does not exist (a new message).
    unknown_budget: str | None = None
    orphaned: bool = False  # its budget is gone without having released it: give it its own env back


def deployment_signature(deployment: Obj) -> tuple[Any, ...]:
    """What of a Deployment can change a plan: its spec (generation) and poolbudget's annotations."""
    annotations = annotations_of(deployment)
    ours = tuple(sorted((k, v) for k, v in annotations.items() if k.startswith(ANNOTATION_PREFIX)))
    return metadata_of(deployment).get("generation"), ours


@dataclass
class WatchMemory:
    """What the event handlers remember of the objects they saw, to tell news from repeats (one per process)."""

    last_budgets: dict[Key, set[str]] = field(default_factory=dict)  # budgets each Deployment named last
    # UnknownBudget warnings posted, by Deployment.
    unknown_warned: dict[Key, str] = field(default_factory=dict)
    # What of each Deployment and HPA was seen.
    signatures: dict[Key, tuple[Any, ...]] = field(default_factory=dict)
    budget_generations: dict[str, Any] = field(default_factory=dict)

    def deployment_event(
        self, context: Context, event_type: str, key: Key, deployment: Obj, budgets: Container[str]
    ) -> DeploymentNews:
        """A Deployment was added, modified or deleted: wake the budgets it names now or named before when
        something that matters changed; warn once when it names a budget that does not exist; release it when the
        budget whose settings it carries is gone (``budgets``: the names of those that exist)."""
        wanted, owner = budget_of(annotations_of(deployment)), managed_by(deployment)
        now = set(budgets_of(deployment))
        concerned = now | self.last_budgets.pop(key, set())
        if now and event_type != "DELETED":
            self.last_budgets[key] = now
        signature = deployment_signature(deployment)
        changed = event_type == "DELETED" or self.signatures.get(key) != signature
        self.signatures[key] = signature
        if event_type == "DELETED":
            self.signatures.pop(key, None)
        # Status-only updates (the controller rolling pods) matter only to a budget waiting for a rollout; the echo
        # of our own patch brings nothing new.
        wake = [
            n
            for n in concerned
            if (changed and not context.own_echo(n, deployment)) or context.awaiting_rollouts(n)
        ]
        unknown = None
        if wanted is not None and wanted not in budgets:
            message = f"annotation poolbudget.io/budget names PoolBudget {wanted!r}, which does not exist"
            if self.unknown_warned.get(key) != message:
                self.unknown_warned[key] = message
                unknown = message
        else:
            self.unknown_warned.pop(key, None)
        # Its budget is gone without releasing it (finalizer removed by hand): give it its env back.
        orphaned = owner is not None and owner not in budgets and event_type != "DELETED"
        return DeploymentNews(wake, unknown, orphaned)

    def hpa_event(self, event_type: str, hpa: Obj) -> bool:
        """Whether an HPA's event is news: its bounds (or, for sizing by currentReplicas, its replicas) changed."""
        metadata = metadata_of(hpa)
        key = ("hpa/" + (metadata.get("namespace") or ""), metadata.get("name") or "")
        signature = (metadata.get("generation"), status_of(hpa).get("currentReplicas"))
        if event_type == "DELETED":
            self.signatures.pop(key, None)
        elif self.signatures.get(key) == signature:
            return False
        else:
            self.signatures[key] = signature
        return True

    def budget_event(self, name: str, generation: Any) -> bool:
        """Whether a PoolBudget's event brings a new spec (its status writes, ours, and kopf's marks do not)."""
        if self.budget_generations.get(name) == generation:
            return False
        self.budget_generations[name] = generation
        return True
