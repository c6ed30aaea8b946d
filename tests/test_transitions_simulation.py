"""The ordering rule against a model of real rollouts: does the footprint PostgreSQL sees stay within `available`?

``tests/rollout_sim.py`` models the Deployment and ReplicaSet controllers (surge, unavailability, Recreate,
proportional scaling, slow termination), HPA steps, demand and weight changes, Deployments opting in and
being deleted, and an operator that plans with the real ``plan_for_budget`` and orders its template changes
with the real ``order_changes``. Every test here runs random traces through it (hypothesis) or one explicit
trace, and checks the footprint (every pod that exists, terminating ones included) after every step.

What it shows:

- pods that let go of their connections when their deletion starts: the operator's ordering keeps the
  footprint within ``available`` on every trace of events the plan sizes for, and reaches the plan;
- the same with pods that hold their connections while terminating, when the Deployments use
  ``podReplacementPolicy: TerminationComplete`` (terminating pods count against maxSurge);
- the naive ordering (every change at once) passes ``available``: on an explicit trace and on random ones;
- **counterexample**: pods that hold their connections while terminating under ``TerminationStarted`` (the
  Kubernetes default): the controller starts a rollout's new pods while the old ones still terminate, so a
  rollout can hold every old pod *and* every new one. ``order_changes`` counts growth as
  ``peak_pods x (target - current)`` and the planner sizes ``replicas + maxSurge`` pods, so the footprint
  passes ``available`` (``test_slow_termination_*``: strict expected failures, they flip when it is fixed);
  ``spec.sizing.rolloutOverlap`` (overlap sizing, and the overlap rule in ``order_changes``) keeps those
  traces within ``available``;
- a running Deployment that opts in above its planned size, in a full database: its settings already exceed
  their own rollout reserve, so the shrink that brings it back adds its surge pods (smaller) for a moment;
  within the reserve, a shrink whose surge pods would not fit waits instead (``NO_ROOM_TO_SHRINK``);
- ``kubectl scale`` beyond the plan is outside the operator's control: it never grows anyone while the
  footprint is over, its rollouts add only the surge pods of its shrinks, and the footprint comes back.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, Phase, example, find, given, settings, target
from hypothesis import strategies as st

from poolbudget.planning.sizing import peak_pods
from poolbudget.planning.transitions import Hysteresis, Wait
from tests.rollout_sim import (
    Event,
    ReplacementPolicy,
    Scenario,
    Shape,
    describe,
    naive_ordering,
    simulate,
)

# Events the plan sizes for: HPA steps within min..max, demand and weight changes, opt-ins of running
# Deployments (counted as unmanaged until then), deletions, manual scale-downs, users' own rollouts.
CONTROLLED = ("hpa", "scale", "demand", "weight", "join", "leave", "rollout")

SURGES: tuple[int | str, ...] = ("25%", "25%", "50%", "100%", 0, 1, 2)
UNAVAILABLE: tuple[int | str, ...] = ("25%", "25%", 0, 1, "50%")
# A Deployment that opts in has room for its HPA's max only once the shrinks made for it have rolled out
# (start 3 + termination 8 ticks at most here): its own events sooner are outside what the plan can reserve.
# Shrinks chain: a rollout of a Deployment still rolling waits for its terminating pods (TerminationComplete),
# so every event shortly before the opt-in may put one more rollout ahead of the shrinks made for it.
JOIN_SETTLES = 12


def settled_after_join(tick: int, earlier: Sequence[Event]) -> int:
    """When the shrinks made for an opt-in at ``tick`` have rolled out, at the latest: one rollout per event in
    the run of events before it (each within ``JOIN_SETTLES`` of the next), plus its own."""
    chained, last = 1, tick
    for event in reversed(earlier):
        if last - event.tick >= JOIN_SETTLES:
            break
        chained, last = chained + 1, event.tick
    return tick + JOIN_SETTLES * chained


AT_ONCE = st.just(0)  # pods let go of their connections as soon as their deletion starts
SLOWLY = st.integers(1, 8)  # pods hold them for 1 to 8 ticks while they terminate


@st.composite
def shapes(draw: st.DrawFn, index: int, joiners_at_minimum: bool = True) -> Shape:
    """One Deployment: strategy, surge, processes, profile, bounds, weight, HPA, opt-in.

    ``joiners_at_minimum``: a Deployment that opts in later runs at its minimum pool until then (as
    ``poolbudget plan`` would advise), so opting in can only grow it; otherwise anything up to 12."""
    rolling = draw(st.integers(0, 4)) > 0
    hpa = None
    if draw(st.integers(0, 2)) == 0:
        low = draw(st.integers(1, 4))
        hpa = (low, low + draw(st.integers(0, 4)))
        replicas = draw(st.integers(*hpa))
    else:
        replicas = draw(st.integers(0, 5))
    low_level = draw(st.integers(1, 4))
    own_level = low_level if joiners_at_minimum else draw(st.integers(1, 12))
    return Shape(
        name=f"app-{index}",
        replicas=replicas,
        strategy="RollingUpdate" if rolling else "Recreate",
        max_surge=draw(st.sampled_from(SURGES)),
        max_unavailable=draw(st.sampled_from(UNAVAILABLE)),
        processes=draw(st.integers(1, 3)),
        profile=draw(st.sampled_from(("sqlalchemy", "sqlalchemy", "airflow", "hikari"))),
        min_per_process=low_level,
        max_per_process=low_level + draw(st.integers(0, 40)),
        weight=draw(st.integers(1, 3)),
        hpa=hpa,
        managed=draw(st.integers(0, 3)) > 0,
        own_level=own_level,
        demand=draw(st.one_of(st.none(), st.integers(1, 30))),
    )


def minimum_need(shape: Shape, overlap_sizing: bool = False) -> int:
    """Connections the shape needs at its minimum, sized as the planner sizes it (peak pods)."""
    hpa_max = shape.hpa[1] if shape.hpa else None
    sized = hpa_max or shape.replicas
    surge = shape.max_surge
    del sized
    pods, _ = peak_pods(shape.replicas, shape.strategy, surge, hpa_max, overlap=overlap_sizing)
    return pods * shape.processes * shape.pools * shape.min_per_process


def own_footprint(shape: Shape) -> int:
    """What an unmanaged Deployment's pods hold at its own settings."""
    return shape.replicas * shape.processes * shape.pools * shape.own_level


@st.composite
def scenarios(
    draw: st.DrawFn,
    termination_delay: st.SearchStrategy[int] = AT_ONCE,
    policy: ReplacementPolicy = "TerminationStarted",
    kinds: Sequence[str] = CONTROLLED,
    external_scale_up: bool = False,
    hysteresis: bool = True,
    joiners_at_minimum: bool = True,
    overlap_sizing: bool = False,
) -> Scenario:
    """A database sized so every minimum fits (the plan is feasible), Deployments and a trace of events."""
    count = draw(st.integers(1, 4))
    deployment_shapes = tuple(draw(shapes(i, joiners_at_minimum)) for i in range(count))
    managed = [s for s in deployment_shapes if s.managed]
    joiners = [s for s in deployment_shapes if not s.managed]
    need = max(
        sum(minimum_need(s, overlap_sizing) for s in deployment_shapes),
        sum(minimum_need(s, overlap_sizing) for s in managed) + sum(own_footprint(s) for s in joiners),
    )
    max_connections = max(1, need + draw(st.integers(0, 60)))

    ticks = sorted(draw(st.lists(st.integers(1, 30), min_size=1, max_size=10)))
    replicas = {s.name: s.replicas for s in deployment_shapes}
    joined = {s.name: s.managed for s in deployment_shapes}
    reserved_from: dict[str, int] = {}  # when a joiner's own events are within what the plan reserves
    by_name = {s.name: s for s in deployment_shapes}
    events: list[Event] = []
    for tick in ticks:
        shape = by_name[draw(st.sampled_from(sorted(by_name)))]
        kind = draw(st.sampled_from(kinds))
        if not joined[shape.name] and kind not in ("join", "leave"):
            kind = "join"  # an unmanaged Deployment does nothing the budget could see coming until it opts in
        value: int | None = None
        if kind == "join" and joined[shape.name]:
            continue
        if kind != "join" and tick < reserved_from.get(shape.name, 0):
            continue  # its room exists once the shrinks made for it have rolled out: sooner, it is external
        if kind in ("hpa", "scale") and shape.hpa is not None:
            kind, value = "hpa", draw(st.integers(*shape.hpa))
        elif kind in ("hpa", "scale"):
            top = replicas[shape.name] + (3 if external_scale_up else 0)
            kind, value = "scale", draw(st.integers(0, top))
            replicas[shape.name] = value
        elif kind == "demand":
            value = draw(st.one_of(st.none(), st.integers(1, 40)))
        elif kind == "weight":
            value = draw(st.integers(1, 4))
        elif kind == "join":
            joined[shape.name] = True
            reserved_from[shape.name] = settled_after_join(tick, events)
        events.append(Event(tick, kind, shape.name, value))  # type: ignore[arg-type]

    rule = Hysteresis()
    if hysteresis and draw(st.booleans()):
        rule = Hysteresis(min_change_ratio=0.2, min_change_connections=2, min_interval_seconds=5)
    return Scenario(
        max_connections=max_connections,
        shapes=deployment_shapes,
        events=tuple(events),
        start_delay=draw(st.integers(1, 3)),
        termination_delay=draw(termination_delay),
        policy=policy,
        overlap_sizing=overlap_sizing,
        hysteresis=rule,
    )


# ------------------------------------------------------------------------------- pods let go at once


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios(termination_delay=AT_ONCE))
def test_ordering_keeps_the_footprint_within_available_when_pods_let_go_at_once(scenario: Scenario) -> None:
    outcome = simulate(scenario)
    target(outcome.peak / scenario.max_connections)  # steer the search towards full budgets
    assert not outcome.breaches, describe(scenario, outcome)
    if scenario.hysteresis == Hysteresis():
        assert outcome.converged_at is not None, "the plan was never reached\n" + describe(scenario, outcome)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios(termination_delay=SLOWLY, policy="TerminationComplete"))
@example(  # found in a fresh example database: a steady rolling Deployment grew into its surge reserve
    Scenario(
        max_connections=16,
        shapes=(
            Shape("app-0", replicas=2, strategy="Recreate", processes=3, max_per_process=3, own_level=2),
            Shape("app-1", replicas=1, max_per_process=3, own_level=2),
        ),
        events=(Event(1, "scale", "app-0", 1),),
        termination_delay=1,
        policy="TerminationComplete",
    )
).via("discovered failure")
def test_ordering_keeps_the_footprint_within_available_with_slow_termination_and_termination_complete(
    scenario: Scenario,
) -> None:
    outcome = simulate(scenario)
    target(outcome.peak / scenario.max_connections)  # steer the search towards full budgets
    assert not outcome.breaches, describe(scenario, outcome)
    if scenario.hysteresis == Hysteresis():
        assert outcome.converged_at is not None, "the plan was never reached\n" + describe(scenario, outcome)


# ------------------------------------------------------------------------------------ the naive ordering


def shrink_one_grow_the_other() -> Scenario:
    """Demand moves from `a` to `b` on a 100-connection database.

    Plan before: a 5 pods (4 + 1 surge) x 11 = 55, b 4 pods (2 + 100% surge) x 11 = 44. After: a 5 x 2 = 10,
    b 4 x 22 = 88. Naive, both roll at once: b starts two pods at 22 next to its two old ones at 11 (66)
    while a still runs four old pods at 11 and its first new one at 2 (46): 112 > 100. Ordered, a shrinks
    first and b grows into what a let go: the peak is 74.
    """
    return Scenario(
        max_connections=100,
        shapes=(
            Shape("a", replicas=4, max_surge=1, max_unavailable=0, demand=10),
            Shape("b", replicas=2, max_surge="100%", max_unavailable=0, demand=10),
        ),
        events=(Event(1, "demand", "a", 2), Event(1, "demand", "b", 40)),
        start_delay=2,
    )


def test_naive_ordering_passes_available_on_an_explicit_trace() -> None:
    scenario = shrink_one_grow_the_other()
    naive = simulate(scenario, naive_ordering)
    assert naive.peak == 112, describe(scenario, naive)
    ordered = simulate(scenario)
    assert ordered.peak == 74, describe(scenario, ordered)
    assert not ordered.breaches
    assert ordered.converged_at is not None


def test_naive_ordering_passes_available_on_random_traces() -> None:
    def breaks(scenario: Scenario) -> bool:
        return bool(simulate(scenario, naive_ordering).breaches)

    found = find(
        scenarios(termination_delay=AT_ONCE, hysteresis=False),
        breaks,
        # The first example that breaks is enough: no shrinking (it takes longer than the search).
        settings=settings(max_examples=500, deadline=None, database=None, phases=[Phase.generate]),
    )
    assert simulate(found).breaches == [], describe(found, simulate(found))


# ------------------------------------------------------------------------------------ slow termination

SLOW_TERMINATION_BUG = (
    "the default sizing (replicas + maxSurge, SPEC.md) assumes pods let go of their connections as they start to "
    "terminate; with TerminationStarted (the Kubernetes default) a rollout starts new pods while old ones still "
    "hold theirs, so the footprint can pass available: spec.sizing.rolloutOverlap is the mode for such apps "
    "(test_rollout_overlap_*)"
)


def scale_down_then_grow() -> Scenario:
    """The smallest counterexample found: one Deployment, 3 replicas at the default 25% surge, 30 connections.

    Plan: 3 + 1 surge = 4 pods x 7 = 28. ``kubectl scale --replicas=2``: one pod terminates (holding 7 for
    5 ticks); the plan becomes 2 + 1 = 3 pods x 10 = 30. order_changes: observed 21 (terminating pod
    included) + growth 3 x (10 - 7) = 30 <= 30, grow. The rollout starts a surge pod at 10 at once:
    7 + 7 + 7(terminating) + 10 = 31 > 30, then both new pods while all three old ones terminate: 41.
    """
    return Scenario(
        max_connections=30,
        shapes=(Shape("a", replicas=3, min_per_process=2),),
        events=(Event(1, "scale", "a", 2),),
        start_delay=1,
        termination_delay=5,
    )


def test_the_counterexample_holds_with_termination_complete() -> None:
    scenario = scale_down_then_grow()
    outcome = simulate(replace(scenario, policy="TerminationComplete"))
    assert not outcome.breaches, describe(scenario, outcome)
    assert outcome.converged_at is not None


@pytest.mark.xfail(strict=True, reason=SLOW_TERMINATION_BUG)
def test_slow_termination_scale_down_then_grow_stays_within_available() -> None:
    scenario = scale_down_then_grow()
    outcome = simulate(scenario)
    assert not outcome.breaches, describe(scenario, outcome)


@pytest.mark.xfail(strict=True, reason=SLOW_TERMINATION_BUG)
def test_slow_termination_random_traces_stay_within_available() -> None:
    breaking: list[Scenario] = []

    # Collected rather than raised: the report says how many traces break, not only the first.
    @settings(max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
    @given(scenarios(termination_delay=SLOWLY))
    def run(scenario: Scenario) -> None:
        if simulate(scenario).breaches:
            breaking.append(scenario)

    run()
    first = breaking[0] if breaking else None
    assert first is None, f"{len(breaking)} of 200 traces pass available; the first:\n" + describe(
        first, simulate(first)
    )


def opting_in_above_the_plan() -> Scenario:
    """A running Deployment (2 pods at 10) fills a 20-connection database, then opts in.

    The plan: 2 + 1 surge = 3 pods x 6 = 18. The rolling update starts its surge pod at 6 before an old pod
    goes: 10 + 10 + 6 = 26 > 20. No ordering avoids that: the only room is the one the Deployment holds.
    """
    return Scenario(
        max_connections=20,
        shapes=(Shape("a", replicas=2, min_per_process=2, managed=False, own_level=10),),
        events=(Event(1, "join", "a"),),
    )


def test_opting_in_above_the_plan_shrinks_back_adding_only_its_own_smaller_surge_pods() -> None:
    """Its settings already exceed their own rollout reserve (as sized, 3 x 10 = 30 > 20): the way back is to
    shrink. The rolling update's surge pod (6) passes available for a moment (26 > 20) — the one transient the
    operator accepts, only when the budget is already over as sized — then the footprint is back and stays."""
    scenario = opting_in_above_the_plan()
    outcome = simulate(scenario)
    shown = describe(scenario, outcome)
    assert outcome.grew_while_over == [], shown
    assert outcome.peak == 20 + 6, shown  # its 20, plus one surge pod at the new, smaller size
    assert outcome.converged_at is not None, shown
    assert outcome.footprints[-1] <= scenario.max_connections, shown


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    scenarios(
        termination_delay=SLOWLY,
        kinds=("hpa", "scale", "demand", "weight", "join", "leave"),
        overlap_sizing=True,
        hysteresis=False,
    )
)
@example(  # found in a fresh example database: over as sized only while a deleted Deployment's pod terminated
    Scenario(
        max_connections=6,
        shapes=(
            Shape(
                "app-0", replicas=1, strategy="Recreate", min_per_process=1, max_per_process=3, own_level=1
            ),
            Shape(
                "app-1",
                replicas=1,
                strategy="Recreate",
                min_per_process=1,
                max_per_process=1,
                hpa=(1, 1),
                managed=False,
                own_level=1,
            ),
            Shape("app-2", replicas=1, max_per_process=2, managed=False, own_level=2),
        ),
        events=(Event(1, "join", "app-2"), Event(1, "leave", "app-0")),
        termination_delay=1,
        overlap_sizing=True,
    )
).via("discovered failure")
def test_rollout_overlap_keeps_slow_termination_within_available(scenario: Scenario) -> None:
    """``spec.sizing.rolloutOverlap``: rolling Deployments sized for replicas + max(maxSurge, replicas) pods,
    a grow counted as every new pod on top of every existing one, one rollout at a time per Deployment.

    Users' own rollouts are left out: two template changes within one termination period keep three
    revisions of pods alive, which no ordering of the operator's changes can prevent.
    """
    outcome = simulate(scenario)
    target(outcome.peak / scenario.max_connections)
    assert not outcome.breaches, describe(scenario, outcome)
    assert outcome.converged_at is not None, "the plan was never reached\n" + describe(scenario, outcome)


def test_rollout_overlap_on_the_minimal_counterexample() -> None:
    scenario = replace(scale_down_then_grow(), overlap_sizing=True)
    outcome = simulate(scenario)
    assert not outcome.breaches, describe(scenario, outcome)
    assert outcome.converged_at is not None


# ------------------------------------------------------------------------------ outside the operator


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios(termination_delay=AT_ONCE, kinds=("scale", "hpa", "demand"), external_scale_up=True))
def test_manual_scale_up_beyond_the_plan_the_operator_never_grows_into_it_and_recovers(
    scenario: Scenario,
) -> None:
    """``kubectl scale`` up is external (no admission webhook stops it): the footprint may pass available.

    Then the operator grows nobody; the only pods the rollouts it writes meanwhile add are the surge pods of its
    shrinks, at the smaller size (a rolling update starts them before the old ones go; a grow written before the
    scale-up may still be rolling out); and once the plan fits again the footprint comes back within available
    and stays there.
    """
    outcome = simulate(scenario)
    shown = describe(scenario, outcome)
    assert outcome.grew_while_over == [], shown
    # A grow written before the user's scale-up may still be rolling out: no operator can stop that rollout.
    assert all(r.shrinking for r in outcome.raised_while_over if r.written_while_over), shown
    if outcome.feasible and scenario.hysteresis == Hysteresis():
        if outcome.converged_at is None:
            # At the limit, a shrinking rolling update's own surge pods would pass available: the operator waits
            # (within the budget, saying why) rather than pass it itself. Only the user's scale-up got it there.
            assert outcome.footprints[-1] <= scenario.max_connections, shown
            assert any(why is Wait.NO_ROOM_TO_SHRINK for _, why in outcome.last_waits), shown
            return
        assert outcome.last_over is None or outcome.last_over <= outcome.converged_at, shown
        assert outcome.footprints[-1] <= scenario.max_connections, shown


def test_rollout_overlap_never_stacks_a_third_revision_when_only_the_sizing_is_over() -> None:
    """Found by the random search: after an opt-in, the current settings were over as sized (not as observed);
    a second shrink of app-3 beside its unsettled first rollout stacked three revisions of pods (19 > 18).
    One rollout at a time yields only to an observed breach."""
    scenario = Scenario(
        max_connections=18,
        shapes=(
            Shape(
                "app-0", replicas=0, strategy="Recreate", min_per_process=1, max_per_process=1, own_level=1
            ),
            Shape(
                "app-1",
                replicas=1,
                strategy="Recreate",
                processes=2,
                max_per_process=5,
                hpa=(1, 1),
                own_level=2,
            ),
            Shape(
                "app-2",
                replicas=1,
                processes=2,
                min_per_process=1,
                max_per_process=1,
                hpa=(1, 2),
                managed=False,
                own_level=1,
            ),
            Shape("app-3", replicas=1, max_per_process=4, own_level=2),
        ),
        events=(Event(1, "scale", "app-0", 0), Event(1, "weight", "app-1", 2), Event(2, "join", "app-2")),
        termination_delay=1,
        overlap_sizing=True,
    )
    outcome = simulate(scenario)
    assert not outcome.breaches, describe(scenario, outcome)
    assert outcome.converged_at is not None, describe(scenario, outcome)
