"""kopf's "every object indexed" gate, made linear in the number of objects.

At startup kopf holds every object's handlers until all index handlers of all objects ran: a ``ToggleSet(all)``
with one toggle per object. Its stock implementation wakes every waiting worker on every change, and each one
recomputes ``all()`` over every toggle: cubic in the objects. Measured on the real control plane with 2,000
Deployments and 6,000 pods (the operator indexes both): no reconcile round after 7 minutes, 70% of the CPU in
``ToggleSet.make_toggle -> notify_all`` (py-spy), RSS still climbing. This set keeps a count of the toggles that are
off and wakes the waiters only when the whole set flips; everything else is kopf's own class.
"""

from __future__ import annotations

from collections.abc import Iterable

from kopf._cogs.aiokits import aiotoggles  # no public hook: kopf builds the set inside its orchestration

_StockToggleSet = aiotoggles.ToggleSet


class CountedToggle(aiotoggles.Toggle):
    """A toggle of a :class:`CountedToggleSet`: it tells its set when it flips."""

    def __init__(self, owner: CountedToggleSet, state: bool, *, name: str | None) -> None:
        super().__init__(state, name=name, condition=owner._condition)
        self._owner = owner

    async def turn_to(self, __state: bool) -> None:
        async with self._condition:
            if self._state != bool(__state) and self in self._owner._toggles:
                self._owner._off += -1 if __state else 1
            self._state = bool(__state)
            self._condition.notify_all()  # waiters of this one toggle (rare), and of the set if it flipped


class CountedToggleSet(_StockToggleSet):
    """``ToggleSet(all)`` with an O(1) state; any other function behaves exactly as kopf's own set."""

    def __init__(self, fn: object) -> None:
        super().__init__(fn)  # type: ignore[arg-type]
        self._counted = fn is all
        self._off = 0

    def is_on(self) -> bool:
        if not self._counted:
            return super().is_on()
        return self._off == 0

    async def make_toggle(self, __val: bool = False, *, name: str | None = None) -> aiotoggles.Toggle:
        if not self._counted:
            return await super().make_toggle(__val, name=name)
        toggle = CountedToggle(self, __val, name=name)
        async with self._condition:
            was = self.is_on()
            self._toggles.add(toggle)
            self._off += toggle.is_off()
            if self.is_on() != was:
                self._condition.notify_all()
        return toggle

    async def drop_toggle(self, toggle: aiotoggles.Toggle) -> None:
        await self.drop_toggles([toggle])

    async def drop_toggles(self, toggles: Iterable[aiotoggles.Toggle]) -> None:
        if not self._counted:
            return await super().drop_toggles(toggles)
        async with self._condition:
            was = self.is_on()
            for toggle in toggles:
                if toggle in self._toggles:
                    self._toggles.discard(toggle)
                    self._off -= toggle.is_off()
            if self.is_on() != was:
                self._condition.notify_all()
        return None


def install() -> None:
    """Make kopf build its sets from :class:`CountedToggleSet` (idempotent; before ``kopf.run``)."""
    aiotoggles.ToggleSet = CountedToggleSet  # type: ignore[misc]
