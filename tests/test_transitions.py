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
