"""kopf wiring, and nothing else: settings, indexes, wake-ups, one daemon per PoolBudget, its deletion, probes.

No decisions here: the indexes keep plain facts, the event handlers carry out what ``runtime.wakeups`` makes of
an event (wake the loops of the budgets concerned, warn, release), and every round is
:func:`poolbudget.controller.reconcile.reconcile_budget`, run by ``runtime.loop``. Deployments, HPAs, pods and namespaces are only observed (indexes
and ``on.event``): kopf keeps no progress, diff-base or finalizer on them, so users' objects carry nothing from kopf.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import kopf

from poolbudget.adapters.errors import KubernetesError
from poolbudget.api.annotations import FINALIZER
from poolbudget.api.models import GROUP, PLURAL, VERSION
from poolbudget.controller.apply import release_budget, release_orphan
from poolbudget.controller.state import View
from poolbudget.observe.objects import budgets_of, hpa_target, key_of, metadata_of
from poolbudget.observe.pods import PodFacts, pod_facts
from poolbudget.runtime.loop import run_budget_loop
from poolbudget.runtime.memo import Runtime

logger = logging.getLogger(__name__)

# The operator's own registry: importing this module (e.g. a test that reads the handlers) registers nothing
# in kopf's default registry, which other kopf operators in the same process would pick up.
registry = kopf.OperatorRegistry()

PEERING_NAME = "poolbudget"
WATCH_SERVER_TIMEOUT = 300  # seconds a watch stays open before the server is asked for a fresh one
WATCH_CLIENT_TIMEOUT = 330
REQUEST_TIMEOUT = 30
CONNECT_TIMEOUT = 10


def _runtime(memo: Any) -> Runtime:
    runtime: Runtime = memo.poolbudget
    return runtime


def _plain(obj: Mapping[str, Any]) -> dict[str, Any]:
    """A kopf body as a plain dict (without managedFields, which nobody here reads)."""
    out = {key: value for key, value in obj.items()}
    metadata = dict(metadata_of(out))
    metadata.pop("managedFields", None)
    out["metadata"] = metadata
    return out


def _view(indexes: Mapping[str, Any]) -> View:
    """What a round reads: the indexes below, which kopf passes to every handler by their names."""
    return View(
        deployments=indexes["budget_deployments"],  # kopf.Index[str, dict]: by budget name
        hpas=indexes["hpas_by_target"],  # kopf.Index[Key, dict]: by (namespace, target Deployment)
        pods=indexes["pods_by_deployment"],  # kopf.Index[Key, PodFacts]
        namespaces=indexes["namespace_labels"],  # kopf.Index[str, labels]
    )


@kopf.on.startup(registry=registry)
async def configure(settings: kopf.OperatorSettings, memo: Any, **_: Any) -> None:
    """Timeouts, storages that leave users' objects alone, events at WARNING+ only, peering."""
    runtime = _runtime(memo)
    settings.watching.server_timeout = WATCH_SERVER_TIMEOUT
    settings.watching.client_timeout = WATCH_CLIENT_TIMEOUT
    settings.watching.connect_timeout = CONNECT_TIMEOUT
    settings.networking.request_timeout = REQUEST_TIMEOUT
    settings.networking.connect_timeout = CONNECT_TIMEOUT
    # Only PoolBudgets have changing handlers (on.delete) and daemons, so only they get kopf's marks; keep them
    # under poolbudget.io, in annotations (the CRD's status schema would prune kopf's status fields).
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="poolbudget.io")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="poolbudget.io", key="last-handled-configuration"
    )
    # kopf turns its log lines into Events; only problems are worth one. Our own events are posted explicitly.
    settings.posting.level = logging.WARNING
    settings.peering.name = PEERING_NAME
    settings.peering.clusterwide = True  # one peering for all replicas, whatever namespaces they serve
    settings.peering.standalone = runtime.standalone
    settings.peering.mandatory = not runtime.standalone
    settings.peering.priority = runtime.priority
    settings.peering.lifetime = runtime.peering_lifetime  # how soon the others take over after a crash
    settings.peering.stealth = True
    if not runtime.standalone and not await runtime.cluster.ensure_peering(PEERING_NAME):
        logger.warning(
            "ClusterKopfPeering %r is missing and could not be created: the operator stays paused until it exists "
            "(kubectl apply -f crds/kopf-peering.yaml, or run with --standalone)",
            PEERING_NAME,
        )


@kopf.on.login(registry=registry)
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """The pod's service account in a cluster, else the kubeconfig (``KUBECONFIG``), as ``kubectl`` would.

    A registry of our own gets none of kopf's default login handlers, hence this one.
    """
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


@kopf.on.cleanup(registry=registry)
async def close(memo: Any, **_: Any) -> None:
    _runtime(memo).close()


# ------------------------------------------------------------------------------------------------ indexes


@kopf.index("apps", "v1", "deployments", registry=registry)
def budget_deployments(body: kopf.Body, **_: Any) -> dict[str, dict[str, Any]]:
    """Deployments by the budget they opted into, and by the budget whose settings they still carry."""
    names = budgets_of(body)
    if not names:
        return {}
    snapshot = _plain(body)
    return {name: snapshot for name in names}


@kopf.index("apps", "v1", "deployments", registry=registry)
def deployment_budgets(body: kopf.Body, **_: Any) -> dict[tuple[str, str], frozenset[str]]:
    """For pods and HPAs: which budgets care about a Deployment."""
    names = budgets_of(body)
    return {key_of(body): names} if names else {}


@kopf.index("autoscaling", "v2", "horizontalpodautoscalers", registry=registry)
def hpas_by_target(body: kopf.Body, **_: Any) -> dict[tuple[str, str], dict[str, Any]]:
    """HPAs by the Deployment they scale."""
    target = hpa_target(body)
    return {target: _plain(body)} if target is not None else {}


@kopf.index("v1", "pods", registry=registry)
def pods_by_deployment(body: kopf.Body, **_: Any) -> dict[tuple[str, str], PodFacts]:
    """Pods of Deployments (through their ReplicaSet), with the connections they carry; terminating ones too."""
    facts = pod_facts(body)
    return {facts.key: facts} if facts is not None else {}


@kopf.index("v1", "namespaces", registry=registry)
def namespace_labels(name: str, labels: kopf.Labels, **_: Any) -> dict[str, dict[str, str]]:
    """Namespace labels, for spec.namespaceSelector."""
    return {name: {"kubernetes.io/metadata.name": name, **dict(labels)}}


@kopf.index(GROUP, VERSION, PLURAL, registry=registry)
def budget_names(name: str, **_: Any) -> dict[str, bool]:
    """Which budgets exist (for Deployments naming one that does not)."""
    return {name: True}


# ------------------------------------------------------------------------------------------------ wake-ups


@kopf.on.event("apps", "v1", "deployments", registry=registry)  # type: ignore[arg-type]  # indexes by name
async def deployment_changed(
    type: str, body: kopf.Body, name: str, memo: Any, budget_names: kopf.Index[str, bool], **_: Any
) -> None:
    """Wake the budgets a Deployment names (now or before), warn that the budget it names does not exist, or give
    it its env back when its budget is gone: as :meth:`WatchMemory.deployment_event` decides."""
    runtime = _runtime(memo)
    context = runtime.context
    key = (body.metadata.namespace or "", name)
    news = runtime.watch.deployment_event(context, type, key, body, budget_names)
    context.wake(news.wake)
    if news.unknown_budget is not None:
        context.events.warning(body, "UnknownBudget", news.unknown_budget)
    if news.orphaned:
        await release_orphan(context, _plain(body))


@kopf.on.event("v1", "pods", registry=registry)  # type: ignore[arg-type]  # indexes by name
def pod_changed(
    body: kopf.Body, memo: Any, deployment_budgets: kopf.Index[tuple[str, str], frozenset[str]], **_: Any
) -> None:
    """Pods matter to a budget only while growth waits for old pods to go."""
    facts = pod_facts(body)
    if facts is not None and facts.key in deployment_budgets:
        context = _runtime(memo).context
        for names in deployment_budgets[facts.key]:
            context.wake(n for n in names if context.awaiting_rollouts(n))


@kopf.on.event("autoscaling", "v2", "horizontalpodautoscalers", registry=registry)  # type: ignore[arg-type]  # indexes by name
def hpa_changed(
    type: str,
    body: kopf.Body,
    memo: Any,
    deployment_budgets: kopf.Index[tuple[str, str], frozenset[str]],
    **_: Any,
) -> None:
    """An HPA's bounds (or, for sizing by currentReplicas, its replicas) size its Deployment's peak."""
    runtime = _runtime(memo)
    if not runtime.watch.hpa_event(type, body):
        return
    key = hpa_target(body)
    if key is not None and key in deployment_budgets:
        for names in deployment_budgets[key]:
            runtime.context.wake(names)


@kopf.on.event("v1", "namespaces", registry=registry)  # type: ignore[arg-type]  # indexes by name
def namespace_changed(memo: Any, budget_names: kopf.Index[str, bool], **_: Any) -> None:
    # Rare: wake every budget (a namespaceSelector may now match differently).
    _runtime(memo).context.wake(list(budget_names))


@kopf.on.event(GROUP, VERSION, PLURAL, registry=registry)
def budget_changed(name: str, body: kopf.Body, memo: Any, **_: Any) -> None:
    """A new spec wakes the budget's loop; status writes (ours) and kopf's own marks do not."""
    runtime = _runtime(memo)
    if runtime.watch.budget_event(name, body.metadata.get("generation")):
        runtime.context.wake([name])


# ------------------------------------------------------------------------------------------------ the loop


@kopf.daemon(GROUP, VERSION, PLURAL, cancellation_timeout=10.0, registry=registry)
async def budget_loop(name: str, body: kopf.Body, memo: Any, **indexes: Any) -> None:
    """One loop per PoolBudget, for as long as it exists (kopf cancels it on deletion and on shutdown)."""
    # kopf keeps `body` current with every watch event of the budget.
    await run_budget_loop(_runtime(memo).context, name, lambda: body, _view(indexes))


@kopf.on.delete(GROUP, VERSION, PLURAL, registry=registry)
async def budget_deleted(name: str, uid: str, memo: Any, **indexes: Any) -> None:
    """Give every Deployment of a deleted budget its own env back before the budget goes."""
    runtime = _runtime(memo)
    try:
        await release_budget(runtime.context, name, uid, _view(indexes))
    except KubernetesError as exc:
        raise kopf.TemporaryError(str(exc), delay=1) from None


# ------------------------------------------------------------------------------------------------ liveness


@kopf.on.probe(id="budgets", registry=registry)
def budgets_probe(memo: Any, **_: Any) -> int:
    """How many budgets this process runs loops for (served on --liveness)."""
    return len(_runtime(memo).context.memories)
