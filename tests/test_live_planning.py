"""Live delivery's pure core: the allotment annotation, the tags, and the invariant of planning.live.

The invariant (SPEC.md, "Live delivery"): at every instant, what every pod's processes may really hold, plus the
floor of every pod still to come, stays within ``available``. A model of pods that apply their allotment at
random moments (after the operator wrote it, never before) checks it through random sequences of rounds, scale
events and plan changes.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import poolbudget_client
from hypothesis import example, given, settings
from hypothesis import strategies as st

from poolbudget.api.allotment import PodAllotment, format_allotment, parse_allotment, parse_tag, pod_tag_id
from poolbudget.observe.confirmations import tags_by_pod
from poolbudget.planning.live import LiveDeployment, LivePod, commitment, grant, held
from poolbudget.planning.plan import split

KEY = ("apps", "api")


def test_allotment_round_trips_and_the_client_reads_it() -> None:
    a = PodAllotment(7, 4, 2, 9, "main")
    text = format_allotment(a)
    assert parse_allotment(text).allotment == a
    assert parse_allotment(text).intact
    read = poolbudget_client.parse_allotment(text)
    assert (read.generation, read.pool_size, read.max_overflow) == (7, 4, 2)


def test_a_hand_edit_is_seen_and_counted_at_its_size() -> None:
    text = format_allotment(PodAllotment(7, 4, 2, 6, "main")).replace('"poolSize":4', '"poolSize":40')
    read = parse_allotment(text)
    assert not read.intact
    assert read.allotment is not None
    assert read.allotment.ceiling == 42
    assert parse_allotment("{not json").intact is False
    assert parse_allotment("{not json").allotment is None
    assert parse_allotment(None).intact  # absent: nothing written yet


@given(
    app=st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=70),
    process=st.integers(1, 4_000_000),
    generation=st.integers(0, 10**18),
)
def test_the_operator_reads_every_tag_the_client_writes(app: str, process: int, generation: int) -> None:
    uid = "5f2b9c1e-7d3a-4b6e-9f10-2c4d5e6f7a8b"
    tag = poolbudget_client.format_tag(app, poolbudget_client.pod_id(uid), process, generation)
    parsed = parse_tag(tag)
    assert parsed is not None
    assert (parsed.pod, parsed.process, parsed.generation) == (pod_tag_id(uid), process, generation)


@dataclass
class _Backend:
    application_name: str
    count: int


def test_a_pod_confirms_when_every_process_is_at_the_generation() -> None:
    pod = "5f2b9c1e7d3a"
    backends = [_Backend(f"app~pb1.{pod}.11.3", 2), _Backend(f"app~pb1.{pod}.11.2", 1), _Backend("psql", 4)]
    tags = tags_by_pod(backends)[pod]
    assert tags.connections == 3
    assert tags.confirmed(1) == 3
    assert tags.confirmed(2) is None  # the second worker is not seen: not confirmed
    tags = tags_by_pod([*backends, _Backend(f"~pb1.{pod}.12.2", 1)])[pod]
    assert tags.confirmed(2) == 2  # the slower worker is at 2


# ------------------------------------------------------------------------------------------- the model


@dataclass
class _Pod:
    name: str
    processes_level: int  # per-pool level its processes enforce now
    applied: int = 0  # the generation they enforce (0: the floor, before any allotment)
    annotation: PodAllotment | None = None
    terminating: bool = False
    busy: bool = True  # an idle pool shows one connection per process, however many it may open


@dataclass
class _World:
    pools: int
    floor: int
    peak: int
    available: int
    pods: list[_Pod] = field(default_factory=list)
    written: dict[str, int] = field(default_factory=dict)
    next_name: int = 0

    def actual(self) -> int:
        """What the processes really may hold now (the model's truth)."""
        return sum(self.pools * p.processes_level for p in self.pods) + self.reserve_real()

    def reserve_real(self) -> int:
        present = sum(1 for p in self.pods if not p.terminating)
        return max(0, self.peak - present) * self.pools * self.floor

    def view(self) -> LiveDeployment:
        pods = tuple(
            LivePod(
                name=p.name,
                terminating=p.terminating,
                follows=True,
                floor_cost=self.pools * self.floor,
                allotment=p.annotation,
                confirmed=p.applied if p.applied else None,
                observed=self.pools * (p.processes_level if p.busy else 1),
            )
            for p in self.pods
        )
        present = sum(1 for p in self.pods if not p.terminating)
        return LiveDeployment(KEY, self.pools, self.floor, max(0, self.peak - present), pods)


_step = st.one_of(
    st.tuples(st.just("round"), st.lists(st.integers(1, 8), min_size=1, max_size=4)),
    st.tuples(st.just("apply"), st.integers(0, 3)),
    st.tuples(st.just("start"), st.just(0)),
    st.tuples(st.just("terminate"), st.integers(0, 3)),
    st.tuples(st.just("gone"), st.integers(0, 3)),
    st.tuples(st.just("scale-up"), st.integers(1, 3)),
    st.tuples(st.just("idle"), st.integers(0, 3)),
)


@settings(max_examples=800, deadline=None)
# A shrink counted as done before it is confirmed: the other pod grows into room the first still holds.
@example(
    pools=1,
    floor=1,
    peak=4,
    spare=4,
    steps=[
        ("round", [6, 2]),
        ("apply", 0),
        ("apply", 1),
        ("round", [2, 6]),
        ("idle", 0),
        ("round", [2, 6]),
        ("apply", 1),
    ],
)
@given(
    pools=st.integers(1, 4),
    floor=st.integers(1, 2),
    peak=st.integers(1, 8),
    spare=st.integers(0, 12),
    steps=st.lists(_step, max_size=60),
)
def test_every_instant_stays_within_available(
    pools: int, floor: int, peak: int, spare: int, steps: list[tuple[str, Any]]
) -> None:
    world = _World(pools, floor, peak, available=peak * pools * floor + spare)
    for _ in range(max(1, peak // 2)):
        world.pods.append(_Pod(f"p{world.next_name}", floor))
        world.next_name += 1
    for action, n in steps:
        assert world.actual() <= world.available, (action, world)
        if action == "round":
            # The operator's round.
            d = world.view()
            room = world.available - held(d)
            assert room >= 0, "the operator's count is never below the truth"
            # Per pod, from some plan (maybe too large: grant must cut it to the room).
            targets = {(KEY, p.name): n[i % len(n)] for i, p in enumerate(d.following())}
            granted = grant([d], targets, room, "b", lambda _k, lv: split(lv, True, 0.5), world.written)
            for g in granted.grants:
                pod = next(p for p in world.pods if p.name == g.pod)
                assert g.allotment.generation > max(world.written.get(g.pod, 0), pod.applied)
                pod.annotation = g.allotment
                world.written[g.pod] = g.allotment.generation
        elif action == "apply" and world.pods:
            pod = world.pods[n % len(world.pods)]
            if pod.annotation is not None and not pod.terminating:
                pod.processes_level, pod.applied = pod.annotation.total, pod.annotation.generation
        elif action == "start" and sum(1 for p in world.pods if not p.terminating) < world.peak:
            world.pods.append(_Pod(f"p{world.next_name}", floor))
            world.next_name += 1
        elif action == "terminate" and world.pods and world.peak > 1:
            # A scale-down: the Deployment's replicas (and so its peak) drop, then a pod terminates.
            world.peak -= 1
            world.pods[n % len(world.pods)].terminating = True
        elif (
            action == "scale-up"
            and world.reserve_real() + held(world.view()) + n * pools * floor <= world.available
        ):
            world.peak += n  # an HPA's maxReplicas raised within what the budget can hold at the floor
        elif action == "idle" and world.pods:
            pod = world.pods[n % len(world.pods)]
            pod.busy = not pod.busy
        elif action == "gone":
            gone = [p for p in world.pods if p.terminating]
            if gone:
                world.pods.remove(gone[n % len(gone)])
    assert world.actual() <= world.available


def test_a_grow_waits_for_the_shrink_to_be_confirmed() -> None:
    a = LivePod("a", False, True, 1, PodAllotment(1, 6, 0, 6, "b"), confirmed=1, observed=6)
    b = LivePod("b", False, True, 1, PodAllotment(1, 2, 0, 2, "b"), confirmed=1, observed=2)
    d = LiveDeployment(KEY, 1, 1, 0, (a, b))
    targets = {(KEY, "a"): 4, (KEY, "b"): 4}
    first = grant([d], targets, room=0, budget="b", split=lambda _k, lv: (lv, 0))
    assert [(g.pod, g.allotment.total, g.allotment.ceiling) for g in first.grants] == [("a", 4, 6)]
    assert first.waiting == ((KEY, "b"),)
    shrunk = replace(a, allotment=first.grants[0].allotment)
    assert commitment(shrunk, 1) == 6  # written, not confirmed: still counted at 6
    confirmed = replace(shrunk, confirmed=2, observed=4)
    d2 = LiveDeployment(KEY, 1, 1, 0, (confirmed, b))
    second = grant([d2], targets, room=2, budget="b", split=lambda _k, lv: (lv, 0))
    assert [(g.pod, g.allotment.total) for g in second.grants] == [("b", 4)]


def test_a_new_pod_gets_its_first_allotment_even_without_room() -> None:
    new = LivePod("n", False, True, 2)
    d = LiveDeployment(KEY, 2, 1, 0, (new,))
    granted = grant([d], {(KEY, "n"): 5}, room=0, budget="b", split=lambda _k, lv: (lv, 0))
    assert [(g.allotment.total, g.partial) for g in granted.grants] == [(1, True)]
