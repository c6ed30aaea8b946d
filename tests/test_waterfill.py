"""The fast water-fill is exactly its definition, the step-by-step reference greedy."""

import copy

from hypothesis import given, settings
from hypothesis import strategies as st

from poolbudget.planning.waterfill import Claim, fill, reference_fill

claims = st.lists(
    st.builds(
        lambda m, level, room, w: Claim(m, level, level + room, w),
        st.integers(0, 12),
        st.integers(0, 6),
        st.integers(0, 40),
        st.integers(1, 7),
    ),
    min_size=1,
    max_size=8,
)


@settings(max_examples=3000, deadline=None)
@given(budget=st.integers(-5, 1500), claims=claims)
def test_fast_fill_equals_reference_greedy(budget: int, claims: list[Claim]) -> None:
    fast, slow = copy.deepcopy(claims), copy.deepcopy(claims)
    assert fill(budget, fast) == reference_fill(budget, slow)
    assert [c.level for c in fast] == [c.level for c in slow]


def test_fill_spends_within_budget_and_stops_at_caps() -> None:
    many = [Claim(3, 1, 10, 1), Claim(5, 1, 4, 2)]
    left = fill(100, many)
    assert [c.level for c in many] == [10, 4]
    assert left == 100 - 3 * 9 - 5 * 3


def test_weights_share_proportionally() -> None:
    pair = [Claim(1, 0, 1000, 1), Claim(1, 0, 1000, 3)]
    assert fill(400, pair) == 0
    assert [c.level for c in pair] == [100, 300]
