"""Shrink first, grow only into room: the ordering rule of planning/transitions.py."""

from poolbudget.planning.transitions import Hysteresis, Transition, Wait, order_changes


def move(
    name: str,
    current: int,
    target: int,
    pods: int = 2,
    observed: int | None = None,
    settled: bool = True,
    **kw: object,
) -> Transition:
    held = pods * current if observed is None else observed
    return Transition(("ns", name), current, target, pods, held, settled, **kw)  # type: ignore[arg-type]


def test_shrinks_go_first_and_growth_waits_for_them() -> None:
    steps = order_changes([move("a", 10, 6), move("b", 10, 14)], available=100)
    assert steps.shrink == (("ns", "a"),)
    assert steps.grow == ()
    assert steps.waiting == ((("ns", "b"), Wait.SHRINKS_IN_FLIGHT),)


def test_growth_waits_while_a_shrunk_rollout_still_has_old_pods() -> None:
    rolling = move("a", 6, 6, observed=2 * 10, settled=False)  # old pods at 10 still terminating
    steps = order_changes([rolling, move("b", 10, 14)], available=100)
    assert steps.grow == ()
    assert steps.waiting[0][1] is Wait.SHRINKS_IN_FLIGHT


def test_grows_only_into_room_counting_terminating_pods() -> None:
    steps = order_changes([move("a", 10, 20, observed=40), move("b", 10, 20, observed=40)], available=100)
    assert steps.grow == (("ns", "a"),)  # 80 observed + 20 growth fits; another 20 would not
    assert steps.waiting == ((("ns", "b"), Wait.NO_ROOM),)


def test_no_growth_when_limits_are_unconfirmed_but_shrinks_proceed() -> None:
    steps = order_changes([move("a", 10, 4), move("b", 4, 10)], available=100, allow_growth=False)
    assert steps.shrink == (("ns", "a"),)
    assert steps.waiting == ((("ns", "b"), Wait.GROWTH_FROZEN),)


def test_hysteresis_holds_back_small_or_frequent_growth_never_a_shrink() -> None:
    rule = Hysteresis(min_change_ratio=0.2, min_change_connections=2, min_interval_seconds=300)
    small = move("a", 10, 11, current_per_process=10, target_per_process=11)
    recent = move("b", 10, 20, current_per_process=10, target_per_process=20, seconds_since_roll=30)
    shrink = move("c", 10, 9, current_per_process=10, target_per_process=9, seconds_since_roll=1)
    steps = order_changes([small, recent, shrink], available=1000, hysteresis=rule)
    assert steps.shrink == (("ns", "c"),)
    assert dict(steps.waiting) == {("ns", "a"): Wait.SMALL_CHANGE, ("ns", "b"): Wait.TOO_SOON}


def test_overlap_growth_needs_room_for_every_new_pod_beside_every_old_one() -> None:
    # 3 replicas at 7 per pod, one more terminating: 28 held. Growing to 10 per pod may run 3 new pods (30)
    # beside all of them, so it waits for room; without overlap the same move would be let through.
    held = 4 * 7
    plain = move("a", 7, 10, pods=4, observed=held)
    overlapping = move("a", 7, 10, pods=4, observed=held, overlap_pods=3)
    assert order_changes([plain], available=40).grow == (("ns", "a"),)
    steps = order_changes([overlapping], available=40)
    assert steps.waiting == ((("ns", "a"), Wait.NO_ROOM),)
    assert order_changes([overlapping], available=28 + 30).grow == (("ns", "a"),)


def test_overlap_runs_one_rollout_at_a_time_unless_the_budget_is_already_over() -> None:
    rolling = move("a", 10, 6, pods=3, observed=30, settled=False, overlap_pods=2)
    steps = order_changes([rolling], available=40)
    assert steps.shrink == ()
    assert steps.waiting == ((("ns", "a"), Wait.ROLLOUT_IN_FLIGHT),)
    assert order_changes([rolling], available=25).shrink == (("ns", "a"),)  # over: shrinking is the way back
    unsettled_grow = move("b", 6, 10, pods=3, observed=18, settled=False, overlap_pods=2)
    assert order_changes([unsettled_grow], available=100).waiting == ((("ns", "b"), Wait.ROLLOUT_IN_FLIGHT),)


def test_a_shrink_waits_while_its_own_surge_pods_would_pass_available_unless_already_over() -> None:
    # Sized, a (2 pods at 2) and b (3) take 7 of 7. With a's own earlier rollout still holding 2 more, the
    # shrink's surge pod (1) would make 8: within the budget, waiting is safe; over it, shrinking is the way back.
    shrink = move("a", 2, 1, pods=2, observed=2, surge_pods=1)
    other = move("b", 3, 3, pods=1, observed=3)
    steps = order_changes(
        [shrink, other], available=7
    )  # sized: 2 x 2 + 3 = 7, within; observed 5 + 1 surge fits
    assert steps.shrink == (("ns", "a"),)
    shrink = move("a", 2, 1, pods=2, observed=4, surge_pods=1)  # a rollout of its own holds 2 more
    steps = order_changes([shrink, other], available=7)
    assert steps.shrink == ()
    assert steps.waiting == ((("ns", "a"), Wait.NO_ROOM_TO_SHRINK),)
    assert order_changes([shrink, other], available=8).shrink == (("ns", "a"),)
    assert order_changes([shrink, other], available=6).shrink == (("ns", "a"),)  # over: the way back


def test_overlap_holds_an_unsettled_rollout_even_when_over_as_sized_but_not_observed() -> None:
    # As sized (3 x 10 = 30) the current settings pass 25, but what exists (18) does not: a second rollout
    # beside the unsettled first would stack a third revision of pods, so it still waits.
    rolling = move("a", 10, 6, pods=3, observed=18, settled=False, overlap_pods=2)
    assert order_changes([rolling], available=25).waiting == ((("ns", "a"), Wait.ROLLOUT_IN_FLIGHT),)


def test_growth_counts_a_rolling_deployment_as_sized_not_only_as_observed() -> None:
    # b runs 1 pod at 2 but is sized for 2 (1 + surge): its rollout starts a pod at 3 beside the old one (5),
    # so room is measured from 2 x 2 = 4, not from the 2 it holds now. Found by the transitions simulation.
    steady = move("b", 2, 3, pods=2, observed=2, surge_pods=1)
    neighbour = move("a", 6, 6, pods=1, observed=12)  # 6 more than sized: a pod not yet gone
    assert order_changes([neighbour, steady], available=16).waiting == ((("ns", "b"), Wait.NO_ROOM),)
    assert order_changes([neighbour, steady], available=18).grow == (("ns", "b"),)


def test_over_as_sized_leaves_out_the_connections_measured_as_unmanaged() -> None:
    # a (1 pod + 1 surge at 2) holds 2 of 2 available; 4 more are unmanaged, 3 of them a deleted Deployment's
    # terminating pod. Sized (4) it passes available only because of them: its shrink's surge pod would make 3 > 2,
    # for a moment that passes by itself, so it waits. Over as sized by its own settings, it goes (the way back).
    shrink = move("a", 2, 1, pods=2, observed=2, surge_pods=1)
    assert order_changes([shrink], available=2, unmanaged=4).waiting == (
        (("ns", "a"), Wait.NO_ROOM_TO_SHRINK),
    )
    assert order_changes([shrink], available=2).shrink == (("ns", "a"),)


def test_a_deployment_still_rolling_or_scaling_down_does_not_grow() -> None:
    # Its terminating pods hold connections beyond what it is sized for, and a rolling grow would add new
    # pods beside them: it waits for them to go (any sizing).
    scaled_down = move("a", 6, 9, pods=1, observed=12, settled=False)
    assert order_changes([scaled_down], available=100).waiting == ((("ns", "a"), Wait.ROLLOUT_IN_FLIGHT),)
    gone = move("a", 6, 9, pods=1, observed=6)
    assert order_changes([gone], available=100).grow == (("ns", "a"),)
