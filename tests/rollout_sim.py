"""A discrete-event model of Deployments rolling under poolbudget: pure, deterministic, no cluster, no clock.

What is modelled, after the Kubernetes controllers (``pkg/controller/deployment``: ``sync.go``, ``rolling.go``,
``recreate.go``; ``pkg/controller/replicaset``), because the invariant lives or dies by their details:

- a Deployment owns one ReplicaSet per pod template; RollingUpdate scales the new one up while
  ``sum(ReplicaSet .spec.replicas) <= replicas + maxSurge`` and the old ones down while at least
  ``replicas - maxUnavailable`` pods are available (surge rounded up, unavailable down; both 0 means 1);
  unhealthy old pods are cleaned up first;
- **terminating pods count for nothing** in those sums (``podReplacementPolicy: TerminationStarted``, the
  default), so a rollout or a ReplicaSet replaces a pod as soon as its deletion starts;
- Recreate scales every old ReplicaSet to 0 and waits until none of their pods exist (terminating
  included) before it starts the new ones;
- a change of ``replicas`` in the middle of a rollout is spread over the active ReplicaSets in proportion
  to their size (old ones grow too), up to ``replicas + maxSurge``;
- a ReplicaSet deletes not-ready pods before ready ones and young before old; a deleted pod keeps every
  connection it holds for ``termination_delay`` ticks (0: it lets go at once); a new pod opens its pool when
  it is created and is ready ``start_delay`` ticks later.

A pod holds ``per_pod`` connections (every pool of every process, saturated) from creation until it is
gone. The *footprint* is the sum over every pod that exists, of every Deployment drawing on the database,
managed or not, terminating or not: what PostgreSQL sees.

The operator: each tick it plans with the real ``plan_for_budget`` (the same path as the operator, from
Deployment and HPA models), builds one ``Transition`` per managed Deployment from what the pods hold, and
asks an ordering (the real ``order_changes`` or another) which templates to change now. Pods of
Deployments it does not manage (not yet opted in, or deleted and still terminating) are subtracted from
``available`` as ``unmanaged`` (SPEC.md, "The budget", with ``unmanaged.subtract`` on and no margin).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from poolbudget.api.limits import DatabaseLimits
from poolbudget.api.models import PoolBudget
from poolbudget.api.workloads import Deployment as DeploymentModel
from poolbudget.api.workloads import HorizontalPodAutoscaler
from poolbudget.planning.budget import BudgetOutcome, plan_for_budget
from poolbudget.planning.transitions import Hysteresis, Steps, Transition, Wait, order_changes

Key = tuple[str, str]
NAMESPACE = "sim"
# Bounds every inner loop: a controller pass that still changes something after this many rounds is a bug.
MAX_CONTROLLER_PASSES = 50

Strategy = Literal["RollingUpdate", "Recreate"]
# Deployment .spec.podReplacementPolicy (KEP-5882, behind a feature gate): TerminationStarted (the default,
# and all a cluster without the gate does) replaces a pod as soon as its deletion starts;
# TerminationComplete counts terminating pods against replicas + maxSurge until they are gone.
ReplacementPolicy = Literal["TerminationStarted", "TerminationComplete"]
# An ordering sees the transitions, `available` and the unmanaged connections in it, and says what changes now.
Ordering = Callable[[Sequence[Transition], int, int], Steps]


# ------------------------------------------------------------------------------------------- the orderings


def real_ordering(hysteresis: Hysteresis | None = None) -> Ordering:
    """The operator's rule: ``planning.transitions.order_changes``."""

    def order(transitions: Sequence[Transition], available: int, unmanaged: int) -> Steps:
        return order_changes(transitions, available, hysteresis=hysteresis, unmanaged=unmanaged)

    return order


def naive_ordering(transitions: Sequence[Transition], available: int, unmanaged: int) -> Steps:
    """Every change at once, grow and shrink alike: what a controller without an ordering would do."""
    del available, unmanaged
    shrink = tuple(t.key for t in transitions if t.target_per_pod < t.current_per_pod)
    grow = tuple(t.key for t in transitions if t.target_per_pod > t.current_per_pod)
    return Steps(shrink, grow, ())


# ------------------------------------------------------------------------------------------------ the model


@dataclass(frozen=True, slots=True)
class Shape:
    """What a Deployment is and does not change: strategy, pods' processes and pools, bounds, HPA."""

    name: str
    replicas: int = 2
    strategy: Strategy = "RollingUpdate"
    max_surge: int | str = "25%"
    max_unavailable: int | str = "25%"
    processes: int = 1
    profile: str = "sqlalchemy"
    min_per_process: int = 2
    max_per_process: int = 50
    weight: int = 1
    hpa: tuple[int, int] | None = None  # (minReplicas, maxReplicas)
    managed: bool = True  # False: runs unmanaged until a Join event opts it in
    own_level: int = 5  # per-process connections its own env sets before poolbudget manages it
    demand: int | None = None  # measured demand per process at tick 0

    @property
    def pools(self) -> int:
        """Pools per process: Airflow 3 builds two (SPEC.md, profiles)."""
        return 2 if self.profile == "airflow" else 1

    @property
    def key(self) -> Key:
        return NAMESPACE, self.name


def _resolve(value: int | str, replicas: int, round_up: bool) -> int:
    if isinstance(value, int):
        return value
    fraction = replicas * int(value.rstrip("%")) / 100
    return math.ceil(fraction) if round_up else math.floor(fraction)


def fenceposts(shape: Shape, replicas: int) -> tuple[int, int]:
    """(maxSurge, maxUnavailable) as pod counts, as the Deployment controller resolves them."""
    surge = _resolve(shape.max_surge, replicas, round_up=True)
    unavailable = _resolve(shape.max_unavailable, replicas, round_up=False)
    if surge == 0 and unavailable == 0:
        unavailable = 1  # Kubernetes: both zero would never make progress
    return surge, min(unavailable, replicas)


@dataclass(slots=True)
class Pod:
    """One pod: the connections it holds from creation until it is gone."""

    uid: int
    revision: int
    per_pod: int
    ready_at: int
    gone_at: int | None = None  # set when its deletion starts: the tick at which it has let go

    @property
    def terminating(self) -> bool:
        return self.gone_at is not None

    def available(self, now: int) -> bool:
        return self.gone_at is None and now >= self.ready_at


@dataclass(slots=True)
class ReplicaSet:
    """The pods of one pod template (revision) of a Deployment."""

    revision: int
    per_pod: int
    replicas: int = 0
    pods: list[Pod] = field(default_factory=list)
    desired: int = 0  # the Deployment's replicas when the controller last scaled it (its annotation)

    def active(self) -> list[Pod]:
        return [p for p in self.pods if not p.terminating]

    def available(self, now: int) -> int:
        return sum(1 for p in self.pods if p.available(now))


@dataclass(slots=True)
class SimDeployment:
    """A Deployment's changing state: replicas, template (per-process level), ReplicaSets, opt-in."""

    shape: Shape
    replicas: int
    level: int
    revision: int = 1
    replica_sets: list[ReplicaSet] = field(default_factory=list)
    managed: bool = True
    deleted: bool = False
    weight: int = 1
    demand: int | None = None
    rolled_at: int | None = None  # tick the operator last changed its template

    @property
    def key(self) -> Key:
        return self.shape.key

    @property
    def per_pod(self) -> int:
        """Connections a pod of the current template opens."""
        return self.level * self.shape.processes * self.shape.pools

    def pods(self) -> Iterable[Pod]:
        for rs in self.replica_sets:
            yield from rs.pods

    def footprint(self) -> int:
        return sum(p.per_pod for p in self.pods())

    def new_rs(self) -> ReplicaSet:
        for rs in self.replica_sets:
            if rs.revision == self.revision:
                return rs
        rs = ReplicaSet(self.revision, self.per_pod)
        self.replica_sets.append(rs)
        return rs

    def settled(self) -> bool:
        """``observe.rollout_settled``: every replica runs the template, none more, no pod terminating.

        A deleted Deployment has settled when its last pod is gone."""
        if self.deleted:
            return not any(True for _ in self.pods())
        new = self.new_rs()
        active = [p for rs in self.replica_sets for p in rs.active()]
        return (
            len(new.active()) >= self.replicas
            and len(active) <= self.replicas
            and all(not p.terminating and p.per_pod <= self.per_pod for p in self.pods())
        )


# ----------------------------------------------------------------------------------------------- the events


@dataclass(frozen=True, slots=True)
class Event:
    """Something that happens at a tick. ``kind``:

    - ``hpa``: the HPA sets ``replicas`` (within its min..max: an event the plan sizes for);
    - ``scale``: ``kubectl scale`` to ``value`` replicas (beyond the plan when it scales up: external);
    - ``demand``: measured demand per process becomes ``value`` (None: unknown);
    - ``weight``: the Deployment's weight annotation becomes ``value``;
    - ``join``: the Deployment opts in (its pods were unmanaged until now);
    - ``leave``: the Deployment is deleted (its pods terminate);
    - ``rollout``: someone changes its pod template (a new image): a rollout at the same pool settings.
    """

    tick: int
    kind: Literal["hpa", "scale", "demand", "weight", "join", "leave", "rollout"]
    name: str
    value: int | None = None


# External to the operator's control: the plan cannot have sized for them.
EXTERNAL_KINDS = frozenset({"scale"})


@dataclass(frozen=True, slots=True)
class Scenario:
    """A whole trace: the database, the Deployments at tick 0, the events, and pod timing."""

    max_connections: int
    shapes: tuple[Shape, ...]
    events: tuple[Event, ...] = ()
    start_delay: int = 1
    termination_delay: int = 0
    policy: ReplacementPolicy = "TerminationStarted"
    # The budget's spec.sizing.rolloutOverlap: RollingUpdate Deployments sized for replicas + max(maxSurge,
    # replicas) pods, and grows that need room for every new pod beside every old one.
    overlap_sizing: bool = False
    horizon: int = 200
    hysteresis: Hysteresis = field(default_factory=Hysteresis)


@dataclass(slots=True)
class Breach:
    """One moment the footprint passed ``available``."""

    tick: int
    phase: str
    footprint: int
    available: int
    pods: dict[str, list[tuple[int, int, bool]]]  # Deployment -> [(revision, per_pod, terminating)]


@dataclass(frozen=True, slots=True)
class Raise:
    """New pods an operator-written rollout started while the footprint was over ``available``."""

    tick: int
    deployment: str
    connections: int
    shrinking: bool  # the new pods are smaller than the old ones they replace
    written_while_over: bool = (
        True  # False: the operator wrote it before this stretch over ``available`` began
    )


@dataclass(slots=True)
class Outcome:
    """What a run saw."""

    available: int
    peak: int = 0
    breaches: list[Breach] = field(default_factory=list)
    # Ticks at which the operator started growth while the footprint was already over available.
    grew_while_over: list[int] = field(default_factory=list)
    # Pods a rollout of a template the operator wrote started while the footprint was already over.
    raised_while_over: list[Raise] = field(default_factory=list)
    feasible: bool = True  # whether the plan at the end of the run fits (overcommitted otherwise)
    converged_at: int | None = None  # first tick after the last event with every template at the plan
    last_over: int | None = None  # last tick the footprint was above available
    rolls: int = 0  # template changes the operator made
    footprints: list[int] = field(default_factory=list)  # at the end of every tick
    last_waits: tuple[tuple[Key, Wait], ...] = ()  # what the operator held back in its last round, and why

    @property
    def first_breach(self) -> Breach | None:
        return self.breaches[0] if self.breaches else None


# ---------------------------------------------------------------------------------------------- the cluster


class Cluster:
    """Deployments, their controllers and the operator, advanced one tick at a time."""

    def __init__(self, scenario: Scenario, ordering: Ordering) -> None:
        self.scenario = scenario
        self.ordering = ordering
        self.now = 0
        self._uid = 0
        self._plans: dict[tuple[Any, ...], BudgetOutcome] = {}
        # (Deployment, revision) of templates the operator wrote, and the tick it wrote them.
        self._written: dict[tuple[Key, int], int] = {}
        self._over_since: int | None = None  # when the footprint last went over ``available``, while it is
        self.budget = PoolBudget.model_validate(
            {
                "metadata": {"name": "sim"},
                "spec": {
                    "database": {"maxConnections": scenario.max_connections},
                    "defaults": {"minConnectionsPerProcess": 1, "maxConnectionsPerProcess": 50},
                    "sizing": {"rolloutOverlap": scenario.overlap_sizing},
                },
            }
        )
        self.limits = DatabaseLimits(scenario.max_connections, superuser_reserved=0)
        self.available = scenario.max_connections  # what PostgreSQL gives the apps
        self.deployments: dict[Key, SimDeployment] = {}
        self.outcome = Outcome(self.available)
        for shape in scenario.shapes:
            d = SimDeployment(
                shape,
                replicas=shape.replicas,
                level=shape.own_level,
                managed=shape.managed,
                weight=shape.weight,
                demand=shape.demand,
            )
            self.deployments[shape.key] = d
        # Tick 0: the unmanaged pods run at their own settings; the operator has applied its plan to the
        # managed ones (seeing the unmanaged pods) and every rollout has finished.
        for d in self.deployments.values():
            if not d.managed:
                self._start(d)
        plan = self.plan()
        for allocation in plan.plan.allocations:
            d = self.deployments[allocation.workload.key]
            d.level = allocation.per_process
            self._start(d)

    def _start(self, d: SimDeployment) -> None:
        rs = d.new_rs()
        rs.per_pod = d.per_pod
        rs.replicas = rs.desired = d.replicas
        rs.pods = [self._pod(d, ready_at=0) for _ in range(d.replicas)]

    # -- helpers

    def _pod(self, d: SimDeployment, ready_at: int) -> Pod:
        self._uid += 1
        return Pod(self._uid, d.revision, d.per_pod, ready_at)

    def footprint(self) -> int:
        return sum(d.footprint() for d in self.deployments.values())

    def managed(self) -> list[SimDeployment]:
        return [d for d in self.deployments.values() if d.managed and not d.deleted]

    def unmanaged(self) -> int:
        return sum(d.footprint() for d in self.deployments.values() if not d.managed or d.deleted)

    def _check(self, phase: str) -> None:
        footprint = self.footprint()
        self.outcome.peak = max(self.outcome.peak, footprint)
        over = footprint > self.available
        if over and self._over_since is None:
            self._over_since = self.now
        elif not over:
            self._over_since = None
        if over:
            self.outcome.last_over = self.now
            self.outcome.breaches.append(
                Breach(
                    self.now,
                    phase,
                    footprint,
                    self.available,
                    {
                        d.shape.name: [(p.revision, p.per_pod, p.terminating) for p in d.pods()]
                        for d in self.deployments.values()
                    },
                )
            )

    # -- the operator

    def _model(self, d: SimDeployment) -> tuple[DeploymentModel, HorizontalPodAutoscaler | None]:
        s = d.shape
        annotations = {
            "poolbudget.io/budget": "sim",
            "poolbudget.io/profile": s.profile,
            "poolbudget.io/processes": str(s.processes),
            "poolbudget.io/weight": str(d.weight),
            "poolbudget.io/min-connections": str(s.min_per_process),
            "poolbudget.io/max-connections": str(s.max_per_process),
        }
        strategy: dict[str, Any] = {"type": s.strategy}
        if s.strategy == "RollingUpdate":
            strategy["rollingUpdate"] = {"maxSurge": s.max_surge, "maxUnavailable": s.max_unavailable}
        model = DeploymentModel.model_validate(
            {
                "metadata": {"name": s.name, "namespace": NAMESPACE, "annotations": annotations},
                "spec": {
                    "replicas": d.replicas,
                    "strategy": strategy,
                    "template": {"spec": {"containers": [{"name": "app"}]}},
                },
            }
        )
        hpa = None
        if s.hpa is not None:
            hpa = HorizontalPodAutoscaler.model_validate(
                {
                    "metadata": {"name": s.name, "namespace": NAMESPACE},
                    "spec": {
                        "scaleTargetRef": {"kind": "Deployment", "name": s.name},
                        "minReplicas": s.hpa[0],
                        "maxReplicas": s.hpa[1],
                    },
                    "status": {"currentReplicas": d.replicas},
                }
            )
        return model, hpa

    def plan(self) -> BudgetOutcome:
        """The real ``plan_for_budget`` over the managed Deployments (cached: it only changes on events)."""
        managed = sorted(self.managed(), key=lambda d: d.key)
        unmanaged = self.unmanaged()
        signature = (
            unmanaged,
            tuple((d.key, d.replicas, d.weight, d.demand) for d in managed),
        )
        cached = self._plans.get(signature)
        if cached is not None:
            return cached
        models = [self._model(d) for d in managed]
        demand = {d.key: d.demand for d in managed if d.demand is not None}
        outcome = plan_for_budget(
            self.budget,
            self.limits,
            [m for m, _ in models],
            [h for _, h in models if h is not None],
            demand=demand,
            unmanaged=unmanaged,
        )
        self._plans[signature] = outcome
        return outcome

    def transitions(self, outcome: BudgetOutcome) -> list[Transition]:
        """What the operator observes, as ``reconcile`` builds it."""
        moves = []
        for allocation in outcome.plan.allocations:
            w = allocation.workload
            d = self.deployments[w.key]
            since = None if d.rolled_at is None else float(self.now - d.rolled_at)
            moves.append(
                Transition(
                    key=w.key,
                    current_per_pod=d.per_pod,
                    target_per_pod=w.processes_per_pod * w.pools_per_process * allocation.per_process,
                    peak_pods=w.pods,
                    observed=d.footprint(),
                    settled=d.settled(),
                    current_per_process=d.level,
                    target_per_process=allocation.per_process,
                    seconds_since_roll=since,
                    overlap_pods=w.replicas if self.scenario.overlap_sizing and w.rolling else 0,
                    surge_pods=w.pods - w.replicas if w.rolling else 0,
                )
            )
        return moves

    def operate(self) -> None:
        """One operator round: plan, order, change the templates the ordering lets change now."""
        outcome = self.plan()
        moves = self.transitions(outcome)
        steps = self.ordering(moves, outcome.plan.available, self.unmanaged())
        self.outcome.last_waits = steps.waiting
        levels = {a.workload.key: a.per_process for a in outcome.plan.allocations}
        by_key = {t.key: t for t in moves}
        if steps.grow and self.footprint() > self.available:
            self.outcome.grew_while_over.append(self.now)
        for key in (*steps.shrink, *steps.grow):
            d = self.deployments[key]
            if d.level == levels[key] or by_key[key].current_per_pod == by_key[key].target_per_pod:
                continue
            d.level = levels[key]
            d.revision += 1
            self._written[(key, d.revision)] = self.now
            d.rolled_at = self.now
            self.outcome.rolls += 1

    def quiet(self) -> bool:
        """At the plan, and nothing rolling or terminating anywhere."""
        return self.at_plan() and all(d.settled() for d in self.deployments.values())

    def at_plan(self) -> bool:
        """Every managed template carries the plan's settings and every rollout has settled."""
        outcome = self.plan()
        levels = {a.workload.key: a.per_process for a in outcome.plan.allocations}
        return all(d.level == levels[d.key] and d.settled() for d in self.managed())

    # -- the controllers

    def _scale_rs(self, d: SimDeployment, rs: ReplicaSet, replicas: int) -> bool:
        """Scale a ReplicaSet and stamp it with the Deployment's replicas (``desired-replicas``)."""
        replicas = max(0, replicas)
        if rs.replicas == replicas and rs.desired == d.replicas:
            return False
        rs.replicas, rs.desired = replicas, d.replicas
        return True

    def _terminating(self, d: SimDeployment) -> int:
        return sum(1 for p in d.pods() if p.terminating)

    def _room(self, d: SimDeployment) -> int:
        """Pods the controller may still add: up to replicas + maxSurge (replicas for Recreate), counting
        terminating pods too under TerminationComplete."""
        surge = fenceposts(d.shape, d.replicas)[0] if d.shape.strategy == "RollingUpdate" else 0
        total = sum(rs.replicas for rs in d.replica_sets)
        if self.scenario.policy == "TerminationComplete":
            total += self._terminating(d)
        return d.replicas + surge - total

    def _scale_up(self, d: SimDeployment, rs: ReplicaSet, replicas: int) -> bool:
        """Scale up, but under TerminationComplete only as far as terminating pods leave room."""
        if replicas > rs.replicas and self.scenario.policy == "TerminationComplete":
            replicas = min(replicas, rs.replicas + max(0, self._room(d)))
        return self._scale_rs(d, rs, replicas)

    def _proportional(self, d: SimDeployment, new: ReplicaSet) -> bool:
        """``sync.go`` ``scale``: a replicas change spread over the active ReplicaSets by their size."""
        active = [rs for rs in d.replica_sets if rs.replicas > 0]
        if len(active) <= 1:
            target = active[0] if active else new
            return self._scale_up(d, target, d.replicas)
        if new.replicas == d.replicas and new.available(self.now) >= d.replicas:
            return any([self._scale_rs(d, rs, 0) for rs in d.replica_sets if rs is not new])
        # Every ReplicaSet is rescaled (and stamped), as sync.go does; the leftover goes to the first.
        surge = fenceposts(d.shape, d.replicas)[0] if d.shape.strategy == "RollingUpdate" else 0
        allowed = d.replicas + surge if d.replicas > 0 else 0
        total = sum(rs.replicas for rs in active)
        to_add = allowed - total
        if to_add > 0 and self.scenario.policy == "TerminationComplete":
            to_add = min(to_add, max(0, self._room(d)))
        if to_add == 0:
            return any([self._scale_rs(d, rs, rs.replicas) for rs in d.replica_sets])
        # Largest first; on scale-up newer first, on scale-down older first (sync.go sorts this way).
        ordered = sorted(active, key=lambda rs: (-rs.replicas, -rs.revision if to_add > 0 else rs.revision))
        shares = [int(rs.replicas * to_add / total) for rs in ordered]
        shares[0] += to_add - sum(shares)
        changed = False
        for rs, share in zip(ordered, shares, strict=True):
            changed |= self._scale_rs(d, rs, rs.replicas + share)
        for rs in d.replica_sets:
            changed |= self._scale_rs(d, rs, rs.replicas)
        return changed

    def _rolling(self, d: SimDeployment, new: ReplicaSet) -> bool:
        """``rolling.go``: scale the new ReplicaSet up within the surge, the old ones down within availability."""
        unavailable = fenceposts(d.shape, d.replicas)[1]
        old = sorted((rs for rs in d.replica_sets if rs is not new), key=lambda rs: rs.revision)
        if new.replicas > d.replicas:
            return self._scale_rs(d, new, d.replicas)
        if new.replicas < d.replicas:
            room = self._room(d)
            if room > 0:
                return self._scale_rs(d, new, new.replicas + min(room, d.replicas - new.replicas))
        if sum(rs.replicas for rs in old) == 0:
            return False
        min_available = d.replicas - unavailable
        all_count = sum(rs.replicas for rs in d.replica_sets)
        new_unavailable = new.replicas - new.available(self.now)
        max_scaled_down = all_count - min_available - new_unavailable
        if max_scaled_down <= 0:
            return False
        changed = False
        cleaned = 0
        for rs in old:  # cleanupUnhealthyReplicas: old pods that are not available go first
            if cleaned >= max_scaled_down:
                break
            unhealthy = rs.replicas - rs.available(self.now)
            if rs.replicas == 0 or unhealthy <= 0:
                continue
            step = min(max_scaled_down - cleaned, unhealthy)
            changed |= self._scale_rs(d, rs, rs.replicas - step)
            cleaned += step
        available = sum(rs.available(self.now) for rs in d.replica_sets)
        to_scale_down = available - min_available
        scaled = 0
        for rs in old:  # scaleDownOldReplicaSetsForRollingUpdate
            if scaled >= to_scale_down:
                break
            if rs.replicas == 0:
                continue
            step = min(rs.replicas, to_scale_down - scaled)
            changed |= self._scale_rs(d, rs, rs.replicas - step)
            scaled += step
        return changed

    def _recreate(self, d: SimDeployment, new: ReplicaSet) -> bool:
        """``recreate.go``: old ReplicaSets to 0, wait until their pods are gone (terminating too), then new."""
        old = [rs for rs in d.replica_sets if rs is not new]
        if any([self._scale_rs(d, rs, 0) for rs in old]):
            return True
        if any(rs.pods for rs in old):
            return False
        return self._scale_up(d, new, d.replicas)

    def _replicaset(self, d: SimDeployment, rs: ReplicaSet, rollout: bool) -> bool:
        """The ReplicaSet controller: create or delete pods until the active ones match ``replicas``.

        ``rollout``: the Deployment controller's last step was a rollout step (not a replicas change)."""
        active = rs.active()
        if len(active) < rs.replicas:
            old = [p.per_pod for other in d.replica_sets if other is not rs for p in other.active()]
            written_at = self._written.get((d.key, rs.revision))
            older = [o for o in d.replica_sets if o.revision < rs.revision]
            replaced = [max(older, key=lambda o: o.revision).per_pod] if older else []
            if rollout and old and written_at is not None and self.footprint() > self.available:
                over_since = self.now if self._over_since is None else self._over_since
                self.outcome.raised_while_over.append(
                    Raise(
                        self.now,
                        d.shape.name,
                        (rs.replicas - len(active)) * rs.per_pod,
                        # smaller than the template it replaced, or than pods of older ones still there
                        shrinking=rs.per_pod < max([*old, *replaced]),
                        written_while_over=written_at >= over_since,
                    )
                )
            for _ in range(rs.replicas - len(active)):
                pod = self._pod(d, ready_at=self.now + self.scenario.start_delay)
                pod.revision, pod.per_pod = rs.revision, rs.per_pod
                rs.pods.append(pod)
            return True
        if len(active) > rs.replicas:
            # Not ready before ready, young before old (the controller's deletion ranking, simplified).
            victims = sorted(active, key=lambda p: (p.available(self.now), -p.ready_at, -p.uid))
            for pod in victims[: len(active) - rs.replicas]:
                pod.gone_at = self.now + self.scenario.termination_delay
            rs.pods = [p for p in rs.pods if p.gone_at is None or p.gone_at > self.now]
            return True
        return False

    def _sync(self, d: SimDeployment) -> bool:
        """One Deployment controller sync, then its ReplicaSets'."""
        changed = False
        rollout = False  # whether this sync stepped a rollout (else: deletion or a replicas change)
        if d.deleted:
            for rs in d.replica_sets:
                changed |= self._scale_rs(d, rs, 0)
        elif any(rs.replicas > 0 and rs.desired != d.replicas for rs in d.replica_sets):
            # isScalingEvent: an active ReplicaSet was sized for other replicas than the Deployment's now.
            changed |= self._proportional(d, d.new_rs())
        else:
            rollout = True
            if d.shape.strategy == "Recreate":
                changed |= self._recreate(d, d.new_rs())
            else:
                changed |= self._rolling(d, d.new_rs())
        for rs in d.replica_sets:
            changed |= self._replicaset(d, rs, rollout)
        return changed

    def settle_controllers(self) -> None:
        """Run the controllers until nothing changes this tick (they react in milliseconds; a tick is longer)."""
        for _ in range(MAX_CONTROLLER_PASSES):
            changed = False
            for d in self.deployments.values():
                changed |= self._sync(d)
            self._check("controllers")
            if not changed:
                return
        raise AssertionError(f"controllers did not settle within {MAX_CONTROLLER_PASSES} passes")

    # -- time

    def _apply(self, event: Event) -> None:
        d = self.deployments[(NAMESPACE, event.name)]
        if d.deleted:
            return
        match event.kind:
            case "hpa" | "scale":
                d.replicas = max(0, event.value or 0)
            case "demand":
                d.demand = event.value
            case "weight":
                d.weight = max(1, event.value or 1)
            case "join":
                d.managed = True
            case "leave":
                d.deleted = True
            case "rollout":
                d.revision += 1

    def tick(self) -> None:
        """Advance one tick: pods that finished terminating let go; events; the operator; the controllers."""
        self.now += 1
        for d in self.deployments.values():
            for rs in d.replica_sets:
                rs.pods = [p for p in rs.pods if p.gone_at is None or p.gone_at > self.now]
        for event in self.scenario.events:
            if event.tick == self.now:
                self._apply(event)
        self._check("events")
        self.operate()
        self.settle_controllers()
        self.outcome.footprints.append(self.footprint())

    def run(self) -> Outcome:
        """Run the scenario to its horizon (or until it has converged after the last event)."""
        self.settle_controllers()
        last_event = max((e.tick for e in self.scenario.events), default=0)
        for _ in range(self.scenario.horizon):
            self.tick()
            if self.now > last_event and self.quiet():
                self.outcome.converged_at = self.now
                break
        self.outcome.feasible = self.plan().plan.feasible
        return self.outcome


def simulate(scenario: Scenario, ordering: Ordering | None = None) -> Outcome:
    """Run a scenario under an ordering (the operator's real rule by default)."""
    order = ordering or real_ordering(scenario.hysteresis)
    return Cluster(scenario, order).run()


def describe(scenario: Scenario, outcome: Outcome) -> str:
    """A counterexample, readable: the scenario and the first breach with every pod."""
    lines = [
        f"max_connections={scenario.max_connections} start_delay={scenario.start_delay} "
        f"termination_delay={scenario.termination_delay}",
        *(f"  {s}" for s in scenario.shapes),
        *(f"  {e}" for e in scenario.events),
    ]
    breach = outcome.first_breach
    if breach is not None:
        lines.append(
            f"first breach at tick {breach.tick} ({breach.phase}): footprint {breach.footprint} > {breach.available}"
        )
        for name, pods in breach.pods.items():
            shown = ", ".join(f"r{rev}:{per}{'(T)' if term else ''}" for rev, per, term in pods)
            lines.append(f"    {name}: {shown}")
    return "\n".join(lines)


def with_events(scenario: Scenario, *events: Event) -> Scenario:
    """The same scenario with more events."""
    return replace(scenario, events=(*scenario.events, *events))
