"""The counted "every object indexed" gate behaves exactly as kopf's own ToggleSet(all), operation by operation."""

from __future__ import annotations

import asyncio

from hypothesis import given
from hypothesis import strategies as st
from kopf._cogs.aiokits import aiotoggles

from poolbudget.runtime.index_readiness import CountedToggleSet

STOCK = aiotoggles.ToggleSet  # the tests never install the counted set globally

# (make, initial state) / (turn, index, state) / (drop, index)
operations = st.lists(
    st.one_of(
        st.tuples(st.just("make"), st.booleans()),
        st.tuples(st.just("turn"), st.integers(0, 20), st.booleans()),
        st.tuples(st.just("drop"), st.integers(0, 20)),
    ),
    max_size=60,
)


@given(operations)
def test_the_counted_set_agrees_with_kopfs_after_every_operation(ops: list[tuple]) -> None:  # type: ignore[type-arg]
    async def run() -> None:
        stock, counted = STOCK(all), CountedToggleSet(all)
        pairs: list[tuple[aiotoggles.Toggle, aiotoggles.Toggle]] = []
        for op in ops:
            if op[0] == "make":
                pairs.append((await stock.make_toggle(op[1]), await counted.make_toggle(op[1])))
            elif pairs and op[0] == "turn":
                a, b = pairs[op[1] % len(pairs)]
                await a.turn_to(op[2])
                await b.turn_to(op[2])
            elif pairs and op[0] == "drop":
                a, b = pairs[op[1] % len(pairs)]
                await stock.drop_toggle(a)
                await counted.drop_toggle(b)
            assert counted.is_on() == stock.is_on(), op
            assert len(counted) == len(stock)

    asyncio.run(run())


def test_waiters_are_released_when_the_last_object_is_indexed() -> None:
    async def run() -> None:
        gate = CountedToggleSet(all)
        toggles = [await gate.make_toggle(name=f"object {i}") for i in range(3)]
        waiter = asyncio.create_task(gate.wait_for(True))
        await gate.drop_toggle(toggles[0])
        await toggles[1].turn_to(True)
        await asyncio.sleep(0)
        assert not waiter.done()  # one object is still not indexed
        await gate.drop_toggles(toggles[1:])
        await asyncio.wait_for(waiter, timeout=5)
        assert gate.is_on()

    asyncio.run(run())


def test_other_functions_stay_kopfs_own() -> None:
    async def run() -> None:
        paused = CountedToggleSet(any)
        assert not paused.is_on()
        toggle = await paused.make_toggle(True)
        assert paused.is_on()
        await toggle.turn_to(False)
        assert not paused.is_on()

    asyncio.run(run())
