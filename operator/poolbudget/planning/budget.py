"""One budget's plan from the objects that name it: the single entry point the CLI and the operator share."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

from poolbudget.api.annotations import CONTAINER, LIVE_FALLBACK
from poolbudget.api.limits import DatabaseLimits
from poolbudget.api.models import PoolBudget
from poolbudget.api.objects import Key
from poolbudget.api.workloads import (
    AnnotationError,
    Container,
    Deployment,
    HorizontalPodAutoscaler,
    OptIn,
    parse_opt_in,
)
from poolbudget.planning.limits import compute_available
from poolbudget.planning.plan import BudgetPlan, Workload, plan_budget
from poolbudget.planning.sizing import hpa_replicas, peak_pods, processes_of
from poolbudget.profiles import Profile, ProfileError, resolve_profile


@dataclass(frozen=True, slots=True)
class Refusal:
    """A Deployment that named this budget but cannot be managed by it, and why (a Warning event)."""

    namespace: str
    name: str
    message: str


@dataclass(frozen=True, slots=True)
class Managed:
    """An opted-in Deployment the plan covers: what it is, which profile and containers carry its pools."""

    deployment: Deployment
    opt_in: OptIn
    profile: Profile
    containers: tuple[Container, ...]
    workload: Workload
    live: bool = False  # delivered live (its template follows allotments), else by env
    peak_pods: int = 0  # the most pods it may run at once (the env plan's pods); live plans count its pods
    delivery_note: str | None = None  # why it asked for live delivery but stays on env (a Warning event)


@dataclass(frozen=True, slots=True)
class BudgetOutcome:
    """The plan for one budget, the Deployments it manages, and those it refused."""

    plan: BudgetPlan
    managed: dict[Key, Managed] = field(default_factory=dict)
    refused: tuple[Refusal, ...] = ()


def namespace_allowed(budget: PoolBudget, namespace_labels: Mapping[str, str]) -> bool:
    selector = budget.spec.namespace_selector
    return selector is None or selector.matches(dict(namespace_labels))


def _processes(opt_in: OptIn, containers: Iterable[Container]) -> tuple[int, str]:
    counts = [processes_of(opt_in.processes, container.literal_env()) for container in containers]
    total = sum(n for n, _ in counts)
    if len(counts) == 1:
        return total, counts[0][1]
    return total, " + ".join(
        f"{n} in {c.name} ({why})" for (n, why), c in zip(counts, containers, strict=True)
    )


def _select_containers(deployment: Deployment, opt_in: OptIn) -> tuple[Container, ...]:
    containers = deployment.spec.template.spec.containers
    if not opt_in.containers:
        return (containers[0],)
    by_name = {c.name: c for c in containers}
    missing = [name for name in opt_in.containers if name not in by_name]
    if missing:
        raise AnnotationError(
            f"annotation {CONTAINER} names {', '.join(missing)}, "
            f"not in the pod template (containers: {', '.join(by_name)})"
        )
    return tuple(by_name[name] for name in opt_in.containers)


def delivery_mode(
    budget: PoolBudget, opt_in: OptIn, profile: Profile, annotations: Mapping[str, str]
) -> tuple[bool, str | None]:
    """Whether the Deployment is delivered live, and when it asked for live but stays on env, why."""
    if (opt_in.delivery or budget.spec.delivery.mode) != "live":
        return False, None
    if not profile.live:
        return False, (
            f"profile {profile.name} cannot follow live allotments (live serves psycopg-pool, sqlalchemy and "
            f"custom profiles with live: true): delivered by env"
        )
    fallback = annotations.get(LIVE_FALLBACK)
    if fallback:
        return False, None  # said once, when it fell back; the annotation says why
    return True, None


def manage(
    budget: PoolBudget,
    deployment: Deployment,
    hpas: Iterable[HorizontalPodAutoscaler] = (),
    demand_per_process: int | None = None,
    live_pods: int | None = None,
) -> Managed:
    """How the planner sees one opted-in Deployment; AnnotationError or ProfileError when it cannot.

    ``live_pods``: the pods that follow live allotments now; a live Deployment is planned for those (its peak
    is kept for the reserve), an env one for its peak."""
    spec = budget.spec
    opt_in = parse_opt_in(deployment.metadata.annotations)
    profile = resolve_profile(opt_in.profile or spec.defaults.profile, spec.profiles)
    live, delivery_note = delivery_mode(budget, opt_in, profile, deployment.metadata.annotations)
    containers = _select_containers(deployment, opt_in)
    hpa = next((h for h in hpas if h.targets(deployment)), None)
    sized_for = None
    if hpa is not None:
        current = hpa.status.current_replicas if hpa.status else None
        sized_for = hpa_replicas(spec.sizing.hpa, hpa.spec.max_replicas, current, deployment.spec.replicas)
    pods, pods_reason = peak_pods(
        deployment.spec.replicas,
        deployment.spec.strategy.type,
        deployment.max_surge,
        sized_for,
        spec.sizing.count_surge,
        spec.sizing.rollout_overlap,
    )
    peak = pods
    if live:
        pods, pods_reason = live_pods or 0, f"live: {live_pods or 0} running, peak {peak} = {pods_reason}"
    replicas = sized_for if sized_for is not None else deployment.spec.replicas
    rolling = deployment.spec.strategy.type != "Recreate"
    processes, processes_reason = _processes(opt_in, containers)
    minimum = opt_in.min_connections or spec.defaults.min_connections_per_process
    maximum = max(minimum, opt_in.max_connections or spec.defaults.max_connections_per_process)
    workload = Workload(
        namespace=deployment.metadata.namespace,
        name=deployment.metadata.name,
        profile=profile.name,
        pods=pods,
        replicas=1 if replicas is None else replicas,
        rolling=rolling,
        processes_per_pod=processes,
        pools_per_process=profile.pools_per_process,
        min_per_process=minimum,
        max_per_process=maximum,
        weight=opt_in.weight or spec.defaults.weight,
        has_overflow=profile.has_overflow,
        overflow_ratio=spec.defaults.overflow_ratio,
        demand_per_process=demand_per_process,
        pods_reason=pods_reason,
        processes_reason=processes_reason,
    )
    return Managed(deployment, opt_in, profile, containers, workload, live, peak, delivery_note)


def plan_for_budget(
    budget: PoolBudget,
    limits: DatabaseLimits,
    deployments: Iterable[Deployment],
    hpas: Iterable[HorizontalPodAutoscaler] = (),
    namespace_labels: Mapping[str, Mapping[str, str]] | None = None,
    demand: Mapping[Key, int] | None = None,
    unmanaged: int = 0,
    live_pods: Mapping[Key, int] | None = None,
    live_held: int = 0,
) -> BudgetOutcome:
    """Plan one budget over the Deployments that name it.

    ``namespace_labels`` maps namespace names to their labels; a namespace missing from it has only the label
    Kubernetes gives every namespace (``kubernetes.io/metadata.name``). Deployments that cannot be managed
    (bad annotations, unknown profile, namespace not selected) are refused and left out of the plan.
    """
    # HPAs by the Deployment they name, so each Deployment looks at its own (not every HPA: quadratic).
    hpas_by_target: dict[Key, list[HorizontalPodAutoscaler]] = {}
    for hpa in hpas:
        hpas_by_target.setdefault((hpa.metadata.namespace, hpa.spec.scale_target_ref.name), []).append(hpa)
    managed: dict[Key, Managed] = {}
    refused: list[Refusal] = []
    for deployment in deployments:
        ns, name = deployment.key
        labels = (namespace_labels or {}).get(ns, {"kubernetes.io/metadata.name": ns})
        if not namespace_allowed(budget, labels):
            refused.append(
                Refusal(ns, name, f"namespace {ns!r} is not selected by PoolBudget {budget.name!r}")
            )
            continue
        try:
            managed[deployment.key] = manage(
                budget,
                deployment,
                hpas_by_target.get(deployment.key, ()),
                (demand or {}).get(deployment.key),
                (live_pods or {}).get(deployment.key),
            )
        except (AnnotationError, ProfileError) as exc:
            refused.append(Refusal(ns, name, str(exc)))
    availability = compute_available(limits, budget.spec.reserved, unmanaged)
    workloads = (m.workload for m in managed.values())
    if not live_held:
        return BudgetOutcome(plan_budget(budget.name, availability, workloads), managed, tuple(refused))
    # What live pods hold outside the plan is not given out; the plan still reports the true `available`.
    less = replace(availability, available=max(0, availability.available - live_held))
    plan = replace(plan_budget(budget.name, less, workloads), availability=availability)
    return BudgetOutcome(plan, managed, tuple(refused))
