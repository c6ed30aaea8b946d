"""What this process as a whole has applied, per pod identity: the generation its connections are tagged with.

A process may follow several pools (two engines, a sync and an async pool). The tag must mean "this process
applied generation G", so it carries the *lowest* generation applied by any of the process's active followers.
When that value changes, every follower is asked to re-tag its idle connections.
"""

from __future__ import annotations

import os
import threading
from typing import Protocol


class Member(Protocol):
    @property
    def applied_generation(self) -> int: ...

    def retag_soon(self) -> None: ...


class _Registry:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._members: dict[str, dict[int, Member]] = {}
        self._generation: dict[str, int] = {}

    def join(self, pod: str, member: Member) -> None:
        with self._lock:
            self._members.setdefault(pod, {})[id(member)] = member
        self.update(pod)

    def leave(self, pod: str, member: Member) -> None:
        with self._lock:
            self._members.get(pod, {}).pop(id(member), None)
        self.update(pod)

    def generation(self, pod: str) -> int:
        with self._lock:
            return self._generation.get(pod, 0)

    def update(self, pod: str) -> None:
        """Recompute the process's generation for ``pod``; when it changed, ask every member to re-tag."""
        with self._lock:
            members = list(self._members.get(pod, {}).values())
            generation = min((member.applied_generation for member in members), default=0)
            changed = self._generation.get(pod, 0) != generation
            self._generation[pod] = generation
        if changed:
            for member in members:
                member.retag_soon()

    def _forget_after_fork(self) -> None:
        # A forked child runs none of the parent's follower threads: it starts empty, like a new process.
        self._lock = threading.Lock()
        self._members = {}
        self._generation = {}


REGISTRY = _Registry()
os.register_at_fork(after_in_child=REGISTRY._forget_after_fork)
