"""What every follower shares: the file it polls, what it applied, the tag it gives connections, its warnings.

A pool-specific follower (psycopg_pool sync or async, the SQLAlchemy pool) supplies the resizing and tagging;
:class:`ThreadFollower` runs the polling loop on a daemon thread for the synchronous ones.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import Self

from .allotment import (
    DEFAULT_INTERVAL,
    Allotment,
    AllotmentFile,
    allotment_path_from_env,
    first_wait_from_env,
)
from .confirmation_tag import clean_app_name, format_tag, pod_id, pod_id_from_env
from .process_generation import REGISTRY, Member

logger = logging.getLogger("poolbudget_client")
FIRST_WAIT_POLL = 0.05  # seconds between polls while waiting for the first allotment


def redact(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every secret replaced by ``***`` (secrets shorter than 3 characters are ignored)."""
    for secret in secrets:
        if secret and len(secret) >= 3:
            text = text.replace(secret, "***")
    return text


class FollowerCore:
    """State shared by all followers: source, pod identity, applied allotment, confirmation tag, warnings."""

    def __init__(
        self,
        *,
        allotment_file: str | os.PathLike[str] | None,
        first_wait: float | None,
        interval: float,
        pod_uid: str | None,
        pod_name: str | None,
        secrets: Iterable[str] = (),
        what: str = "pool",
    ) -> None:
        path = Path(allotment_file) if allotment_file is not None else allotment_path_from_env()
        self.source: AllotmentFile | None = AllotmentFile(path) if path is not None else None
        self.first_wait = first_wait_from_env() if first_wait is None else max(0.0, first_wait)
        self.interval = max(0.01, interval if interval > 0 else DEFAULT_INTERVAL)
        if pod_uid is None and pod_name is None:
            self.pod = pod_id_from_env()
        else:
            self.pod = pod_id(pod_uid, pod_name)
        self.what = what
        self.applied: Allotment | None = None  # the allotment in force, None = the pool's own size
        self.applied_count = 0  # how many allotments were applied (a definite signal for tests and metrics)
        self.retags = 0  # connections re-tagged (idle ones after a change, returned ones when stale)
        self.closed_over_limit = 0  # connections closed because the pool was over its new limit
        self._secrets = [secret for secret in secrets if secret]
        self._changed = threading.Condition()
        self._warned: set[str] = set()
        self._joined = False
        if self.source is None:
            logger.info("poolbudget: POOLBUDGET_ALLOTMENT_FILE is not set: the %s keeps its own size", what)
        elif self.pod is None:
            self.warn_once(
                "no-pod",
                "poolbudget: neither POD_UID nor POD_NAME is set: the %s follows the allotment but its "
                "connections carry no confirmation tag",
                what,
            )

    # -- the allotment applied -------------------------------------------------------------------------------

    @property
    def applied_generation(self) -> int:
        return self.applied.generation if self.applied is not None else 0

    def record_applied(self, allotment: Allotment) -> None:
        with self._changed:
            self.applied = allotment
            self.applied_count += 1
            self._changed.notify_all()
        logger.info(
            "poolbudget: applied generation %d (poolSize %d, maxOverflow %d) to the %s",
            allotment.generation,
            allotment.pool_size,
            allotment.max_overflow,
            self.what,
        )

    def wait_applied(self, generation: int | None = None, timeout: float = 10.0) -> bool:
        """Block until an allotment (of at least ``generation``, when given) is applied; False on timeout."""

        def done() -> bool:
            if self.applied is None:
                return False
            return generation is None or self.applied.generation >= generation

        with self._changed:
            return self._changed.wait_for(done, timeout)

    def wait_count(self, count: int, timeout: float = 10.0) -> bool:
        """Block until at least ``count`` allotments have been applied; False on timeout."""
        with self._changed:
            return self._changed.wait_for(lambda: self.applied_count >= count, timeout)

    def after_fork(self) -> None:
        """Fresh locks and registry membership for a forked child (the parent's may be held by a dead thread)."""
        self._changed = threading.Condition()
        self._joined = False

    # -- the confirmation tag --------------------------------------------------------------------------------

    def join(self, member: Member) -> None:
        if self.pod is not None and not self._joined:
            REGISTRY.join(self.pod, member)
            self._joined = True

    def leave(self, member: Member) -> None:
        if self.pod is not None and self._joined:
            REGISTRY.leave(self.pod, member)
            self._joined = False

    def announce(self) -> None:
        """Tell the process registry this follower's generation changed."""
        if self.pod is not None and self._joined:
            REGISTRY.update(self.pod)

    @property
    def tagging(self) -> bool:
        return self.pod is not None and self.source is not None

    def tag_for(self, app: str | None) -> str | None:
        """The application_name for a connection whose app-given name is ``app``; None when not tagging."""
        if not self.tagging:
            return None
        assert self.pod is not None
        return format_tag(app, self.pod, os.getpid(), REGISTRY.generation(self.pod))

    @staticmethod
    def app_name_of(application_name: str | None) -> str:
        return clean_app_name(application_name)

    # -- warnings that never repeat and never carry secrets --------------------------------------------------

    def describe(self, error: BaseException) -> str:
        lines = str(error).strip().splitlines()
        first = lines[0] if lines else ""
        return redact(f"{type(error).__name__}: {first}" if first else type(error).__name__, self._secrets)

    def warn_once(self, key: str, message: str, *args: object) -> None:
        if key in self._warned:
            return
        self._warned.add(key)
        logger.warning(message, *args)

    def warn_error_once(self, doing: str, error: BaseException) -> None:
        self.warn_once(
            f"{doing}:{type(error).__name__}",
            "poolbudget: %s failed (%s); the %s keeps going",
            doing,
            self.describe(error),
            self.what,
        )


class StopsOnExit:
    """``with follower: ...`` stops it at the end of the block."""

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


class ThreadFollower(StopsOnExit):
    """A synchronous follower: polls on a daemon thread, applies changes, re-tags idle connections.

    Subclasses implement :meth:`_apply`, :meth:`_retag_idle` and optionally :meth:`_after_tick` and
    :meth:`_finished`. Usable as a context manager; :meth:`stop` is idempotent.
    """

    def __init__(self, core: FollowerCore) -> None:
        self.core = core
        self._wake = threading.Event()
        self._stopped = threading.Event()
        self._retag_wanted = True  # tag idle connections once at start: the operator sees the helper at once
        self._thread: threading.Thread | None = None
        self._hooks_removed = False
        self.pid = os.getpid()  # the process whose thread polls; a forked child restarts it (after_fork)

    # protocol for the process registry
    @property
    def applied_generation(self) -> int:
        return self.core.applied_generation

    def retag_soon(self) -> None:
        self._retag_wanted = True
        self._wake.set()

    @property
    def applied(self) -> Allotment | None:
        return self.core.applied

    def wait_applied(self, generation: int | None = None, timeout: float = 10.0) -> bool:
        return self.core.wait_applied(generation, timeout)

    def start(self) -> Self:
        """Wait up to ``first_wait`` for a first allotment (the pool runs at its own size meanwhile), then poll."""
        self.core.join(self)
        if self.core.source is None:
            return self
        deadline = time.monotonic() + self.core.first_wait
        while True:
            self._tick()
            if self.core.applied is not None or self._stopped.is_set():
                break
            if time.monotonic() >= deadline:
                self.core.warn_once(
                    "first-wait",
                    "poolbudget: no valid allotment in %s after %.1f s: the %s runs at its own size until one "
                    "arrives",
                    self.core.source.path,
                    self.core.first_wait,
                    self.core.what,
                )
                break
            time.sleep(min(FIRST_WAIT_POLL, max(0.0, deadline - time.monotonic())))
        self._thread = threading.Thread(target=self._run, name="poolbudget-follower", daemon=True)
        self._thread.start()
        return self

    def after_fork(self) -> None:
        """In a forked child (the parent's thread did not come along): poll again from this process.

        The allotment already applied stays in force; connections opened from now on carry this process's id.
        """
        if self.pid == os.getpid() or self._stopped.is_set():
            return
        self.pid = os.getpid()
        self._wake = threading.Event()
        self.core.after_fork()
        self.core.join(self)
        self.core.announce()
        self._retag_wanted = True
        if self.core.source is not None:
            self._thread = threading.Thread(target=self._run, name="poolbudget-follower", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stopped.is_set():
            self._wake.wait(self.core.interval)
            self._wake.clear()
            if self._stopped.is_set():
                break
            if self._finished():
                break
            self._tick()
            try:
                self._after_tick()
            except Exception as error:
                self.core.warn_error_once("following the allotment", error)

    def _tick(self) -> None:
        try:
            source = self.core.source
            allotment = source.poll() if source is not None else None
            if source is not None and allotment is not None:
                try:
                    self._apply(allotment)
                except Exception as error:
                    self.core.warn_error_once("applying the allotment", error)
                    source.current = self.core.applied  # so that the next poll tries again
                else:
                    self.core.record_applied(allotment)
                    self.core.announce()
            if self._retag_wanted:
                self._retag_wanted = False
                try:
                    self._retag_idle()
                except Exception as error:
                    self.core.warn_error_once("re-tagging idle connections", error)
        except Exception as error:  # the loop must survive anything
            self.core.warn_error_once("following the allotment", error)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop following; the pool keeps the size it has. Safe to call twice."""
        self._stopped.set()
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        self.core.leave(self)
        if not self._hooks_removed:
            self._hooks_removed = True
            self._stopped_hook()

    # -- for subclasses --------------------------------------------------------------------------------------

    def _apply(self, allotment: Allotment) -> None:
        raise NotImplementedError

    def _retag_idle(self) -> None:
        raise NotImplementedError

    def _after_tick(self) -> None:
        """Called after every poll of the background thread (the SQLAlchemy follower keeps one connection
        open here); not during the first wait, so that starting never blocks on the database."""

    def _finished(self) -> bool:
        """True when the pool is gone or closed: the thread then ends by itself."""
        return False

    def _stopped_hook(self) -> None:
        """Called once by :meth:`stop` (the psycopg follower removes its hooks here)."""
