"""``follow(pool)`` for psycopg_pool's ``ConnectionPool`` and ``AsyncConnectionPool``.

Applying an allotment: ``pool.resize(min_size=poolSize, max_size=poolSize + maxOverflow)`` (public), then what
psycopg_pool does not do by itself: idle connections beyond the new ``max_size`` are closed at once, and a
connection that comes back (or finishes connecting) while the pool holds more than ``max_size`` is closed instead
of being pooled. That needs four of psycopg_pool's internals, all under the pool's own lock: ``_pool`` (the idle
deque), ``_nconns`` (connections owned: idle, out, being made), ``_add_to_pool`` and ``_add_connection`` (wrapped
on the instance, restored by ``stop()``). Connections are tagged (``application_name``) through the pool's
``configure`` and ``reset`` callbacks, chained after the app's own.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Generator
from types import TracebackType
from typing import Any, Self
from weakref import WeakKeyDictionary

from psycopg import AsyncConnection, Connection
from psycopg.pq import TransactionStatus
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from .allotment import Allotment
from .follower import FIRST_WAIT_POLL, FollowerCore, StopsOnExit, ThreadFollower

TAG_SQL = "SELECT set_config('application_name', %s, false)"
ATTRIBUTE = "_poolbudget_follower"


def _conninfo_secrets(pool: ConnectionPool[Any] | AsyncConnectionPool[Any]) -> list[str]:
    """The password in the pool's conninfo or kwargs, so that no warning ever carries it."""
    secrets: list[str] = []
    with contextlib.suppress(Exception):
        from psycopg.conninfo import conninfo_to_dict

        if isinstance(pool.conninfo, str):
            password = conninfo_to_dict(pool.conninfo).get("password")
            if password:
                secrets.append(str(password))
    kwargs = pool.kwargs
    if isinstance(kwargs, dict) and kwargs.get("password"):
        secrets.append(str(kwargs["password"]))
    return secrets


def _set_sizes_before_open(
    pool: ConnectionPool[Any] | AsyncConnectionPool[Any], allotment: Allotment
) -> None:
    """The sizes a pool that is not open yet will open with. No lock: before ``open()`` no worker runs (and
    psycopg_pool 3.2 makes its lock only at open)."""
    min_size, max_size = pool._check_size(allotment.pool_size, allotment.total)
    pool._min_size, pool._max_size = min_size, max_size
    pool._nconns = pool._nconns_min = min_size


def _close(pool: ConnectionPool[Any], conn: Connection[Any]) -> None:
    # psycopg_pool's own _close_connection (3.2.8 and 3.3 have it, 3.2.0 not) drops the back-reference first.
    close = getattr(pool, "_close_connection", None)
    if close is not None:
        close(conn)
    else:
        conn._pool = None
        conn.close()


async def _aclose(pool: AsyncConnectionPool[Any], conn: AsyncConnection[Any]) -> None:
    close = getattr(pool, "_close_connection", None)
    if close is not None:
        await close(conn)
    else:
        conn._pool = None
        await conn.close()


class _Tags:
    """The app's own name and the tag last set, per connection (weakly: closed connections drop out)."""

    def __init__(self, core: FollowerCore) -> None:
        self.core = core
        self.base: WeakKeyDictionary[Any, str] = WeakKeyDictionary()
        self.tag: WeakKeyDictionary[Any, str] = WeakKeyDictionary()

    def wanted(self, conn: Connection[Any] | AsyncConnection[Any]) -> str | None:
        """The tag ``conn`` should carry now, or None when it already does (or tagging is off)."""
        if not self.core.tagging:
            return None
        base = self.base.get(conn)
        if base is None:
            base = self.core.app_name_of(conn.info.parameter_status("application_name"))
            self.base[conn] = base
        tag = self.core.tag_for(base)
        return None if tag == self.tag.get(conn) else tag


class PoolFollower(ThreadFollower):
    """Follows the allotment file for one ``psycopg_pool.ConnectionPool``. Returned by :func:`follow`."""

    def __init__(self, pool: ConnectionPool[Any], core: FollowerCore) -> None:
        super().__init__(core)
        self.pool = pool
        self._tags = _Tags(core)
        if getattr(pool, ATTRIBUTE, None) is not None:
            raise RuntimeError("this pool is already followed by poolbudget_client")
        setattr(pool, ATTRIBUTE, self)
        self._original_configure = pool._configure
        self._original_reset = pool._reset
        original_add_to_pool = pool._add_to_pool
        original_add_connection = pool._add_connection

        def configure(conn: Connection[Any]) -> None:
            if self._original_configure is not None:
                self._original_configure(conn)
            self._tag(conn, fresh=True)

        def reset(conn: Connection[Any]) -> None:
            if self._original_reset is not None:
                self._original_reset(conn)
            self._tag(conn, fresh=False)

        def add_to_pool(conn: Connection[Any]) -> None:
            with pool._lock:
                over = not pool._closed and pool._nconns > pool._max_size
                if over:
                    pool._nconns -= 1
            if over:
                self.core.closed_over_limit += 1
                _close(pool, conn)
                return
            original_add_to_pool(conn)

        def add_connection(attempt: Any, growing: bool = False) -> None:
            with pool._lock:
                if pool._nconns > pool._max_size:  # a grow queued before a shrink: do not connect at all
                    pool._nconns -= 1
                    if growing:
                        pool._growing = False
                    return
            original_add_connection(attempt, growing=growing)

        pool._configure = configure
        pool._reset = reset
        pool._add_to_pool = add_to_pool  # type: ignore[method-assign]
        pool._add_connection = add_connection  # type: ignore[method-assign]

    def _tag(self, conn: Connection[Any], *, fresh: bool) -> None:
        try:
            tag = self._tags.wanted(conn)
            if tag is None or conn.info.transaction_status != TransactionStatus.IDLE:
                return  # never touch a connection inside a transaction
            conn.execute(TAG_SQL, [tag])
            if not conn.autocommit:
                conn.commit()
            self._tags.tag[conn] = tag
            if not fresh:
                self.core.retags += 1
        except Exception as error:
            self.core.warn_error_once("tagging a connection", error)
            with contextlib.suppress(Exception):
                if conn.info.transaction_status in (TransactionStatus.INTRANS, TransactionStatus.INERROR):
                    conn.rollback()

    def _apply(self, allotment: Allotment) -> None:
        pool = self.pool
        if not pool._opened:  # not open yet: it will open with the allotment (resize() needs the workers)
            _set_sizes_before_open(pool, allotment)
            return
        pool.resize(min_size=allotment.pool_size, max_size=allotment.total)
        to_close = []
        with pool._lock:
            while pool._pool and pool._nconns > pool._max_size:
                to_close.append(pool._pool.pop())
                pool._nconns -= 1
            pool._nconns_min = min(pool._nconns_min, len(pool._pool))
            if pool._waiting:  # clients already waiting get the new room now, not at the next request
                pool._maybe_grow_pool()
        for conn in to_close:
            self.core.closed_over_limit += 1
            _close(pool, conn)

    def _retag_idle(self) -> None:
        if not self.core.tagging or not self.pool._opened:
            return
        pool = self.pool
        with pool._lock:
            count = len(pool._pool)
        for _ in range(count):
            with pool._lock:
                if not pool._pool:
                    return
                conn = pool._pool.popleft()
                pool._nconns_min = min(pool._nconns_min, len(pool._pool))
            self._tag(conn, fresh=False)
            if conn.info.transaction_status == TransactionStatus.IDLE:
                pool._add_to_pool(conn)
            else:  # broken or stuck: psycopg_pool's own return path replaces it
                pool._return_connection(conn, from_getconn=True)

    def _finished(self) -> bool:
        return bool(self.pool._opened and self.pool.closed)  # closed after being open (not: not yet open)

    def _stopped_hook(self) -> None:
        pool = self.pool
        pool._configure = self._original_configure
        pool._reset = self._original_reset
        for name in ("_add_to_pool", "_add_connection"):
            with contextlib.suppress(AttributeError):
                delattr(pool, name)  # the instance attribute goes; the class's method shows again
        with contextlib.suppress(AttributeError):
            delattr(pool, ATTRIBUTE)


class AsyncPoolFollower(StopsOnExit):
    """Follows the allotment file for one ``psycopg_pool.AsyncConnectionPool``, as a task on the running loop.

    ``await follow(pool)`` (or ``async with follow(pool)``) waits for the first allotment, at most
    ``first_wait`` seconds; the task runs either way. ``stop()`` (or ``await astop()``) ends it.
    """

    def __init__(self, pool: AsyncConnectionPool[Any], core: FollowerCore) -> None:
        try:
            self.loop = asyncio.get_running_loop()
        except RuntimeError:
            raise RuntimeError(
                "poolbudget_client.follow(AsyncConnectionPool) must be called from a running event loop"
            ) from None
        if getattr(pool, ATTRIBUTE, None) is not None:
            raise RuntimeError("this pool is already followed by poolbudget_client")
        self.core = core
        self.pool = pool
        self._tags = _Tags(core)
        self._wake = asyncio.Event()
        self._ready = asyncio.Event()
        self._retag_wanted = True
        self._hooks_removed = False
        setattr(pool, ATTRIBUTE, self)
        self._original_configure = pool._configure
        self._original_reset = pool._reset
        original_add_to_pool = pool._add_to_pool
        original_add_connection = pool._add_connection

        async def configure(conn: AsyncConnection[Any]) -> None:
            if self._original_configure is not None:
                await self._original_configure(conn)
            await self._tag(conn, fresh=True)

        async def reset(conn: AsyncConnection[Any]) -> None:
            if self._original_reset is not None:
                await self._original_reset(conn)
            await self._tag(conn, fresh=False)

        async def add_to_pool(conn: AsyncConnection[Any]) -> None:
            async with pool._lock:
                over = not pool._closed and pool._nconns > pool._max_size
                if over:
                    pool._nconns -= 1
            if over:
                self.core.closed_over_limit += 1
                await _aclose(pool, conn)
                return
            await original_add_to_pool(conn)

        async def add_connection(attempt: Any, growing: bool = False) -> None:
            async with pool._lock:
                if pool._nconns > pool._max_size:
                    pool._nconns -= 1
                    if growing:
                        pool._growing = False
                    return
            await original_add_connection(attempt, growing=growing)

        pool._configure = configure
        pool._reset = reset
        pool._add_to_pool = add_to_pool  # type: ignore[method-assign]
        pool._add_connection = add_connection  # type: ignore[method-assign]
        self._task = self.loop.create_task(self._run(), name="poolbudget-follower")

    # protocol for the process registry (called from any thread)
    @property
    def applied_generation(self) -> int:
        return self.core.applied_generation

    def retag_soon(self) -> None:
        self._retag_wanted = True
        with contextlib.suppress(RuntimeError):  # the loop is closed: nothing left to tag
            self.loop.call_soon_threadsafe(self._wake.set)

    @property
    def applied(self) -> Allotment | None:
        return self.core.applied

    def wait_applied(self, generation: int | None = None, timeout: float = 10.0) -> bool:
        """Blocking wait (from another thread); in the loop use :meth:`wait_applied_async`."""
        return self.core.wait_applied(generation, timeout)

    async def wait_applied_async(self, generation: int | None = None, within: float = 10.0) -> bool:
        """Wait in the loop until an allotment (of at least ``generation``) is applied; False after ``within`` s."""
        deadline = time.monotonic() + within
        while True:
            applied = self.core.applied
            if applied is not None and (generation is None or applied.generation >= generation):
                return True
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.01)

    async def _tag(self, conn: AsyncConnection[Any], *, fresh: bool) -> None:
        try:
            tag = self._tags.wanted(conn)
            if tag is None or conn.info.transaction_status != TransactionStatus.IDLE:
                return
            await conn.execute(TAG_SQL, [tag])
            if not conn.autocommit:
                await conn.commit()
            self._tags.tag[conn] = tag
            if not fresh:
                self.core.retags += 1
        except Exception as error:
            self.core.warn_error_once("tagging a connection", error)
            with contextlib.suppress(Exception):
                if conn.info.transaction_status in (TransactionStatus.INTRANS, TransactionStatus.INERROR):
                    await conn.rollback()

    async def _apply(self, allotment: Allotment) -> None:
        pool = self.pool
        if not pool._opened:  # not open yet: it will open with the allotment
            _set_sizes_before_open(pool, allotment)
            return
        await pool.resize(min_size=allotment.pool_size, max_size=allotment.total)
        to_close = []
        async with pool._lock:
            while pool._pool and pool._nconns > pool._max_size:
                to_close.append(pool._pool.pop())
                pool._nconns -= 1
            pool._nconns_min = min(pool._nconns_min, len(pool._pool))
            if pool._waiting:
                pool._maybe_grow_pool()
        for conn in to_close:
            self.core.closed_over_limit += 1
            await _aclose(pool, conn)

    async def _retag_idle(self) -> None:
        if not self.core.tagging or not self.pool._opened:
            return
        pool = self.pool
        async with pool._lock:
            count = len(pool._pool)
        for _ in range(count):
            async with pool._lock:
                if not pool._pool:
                    return
                conn = pool._pool.popleft()
                pool._nconns_min = min(pool._nconns_min, len(pool._pool))
            await self._tag(conn, fresh=False)
            if conn.info.transaction_status == TransactionStatus.IDLE:
                await pool._add_to_pool(conn)
            else:
                await pool._return_connection(conn, from_getconn=True)

    async def _tick(self) -> None:
        try:
            source = self.core.source
            allotment = source.poll() if source is not None else None
            if source is not None and allotment is not None:
                try:
                    await self._apply(allotment)
                except Exception as error:
                    self.core.warn_error_once("applying the allotment", error)
                    source.current = self.core.applied
                else:
                    self.core.record_applied(allotment)
                    self.core.announce()
            if self._retag_wanted:
                self._retag_wanted = False
                try:
                    await self._retag_idle()
                except Exception as error:
                    self.core.warn_error_once("re-tagging idle connections", error)
        except Exception as error:
            self.core.warn_error_once("following the allotment", error)

    async def _run(self) -> None:
        try:
            self.core.join(self)
            source = self.core.source
            if source is None:
                return
            deadline = time.monotonic() + self.core.first_wait
            while True:
                await self._tick()
                if self.core.applied is not None:
                    break
                if time.monotonic() >= deadline:
                    self.core.warn_once(
                        "first-wait",
                        "poolbudget: no valid allotment in %s after %.1f s: the %s runs at its own size until "
                        "one arrives",
                        source.path,
                        self.core.first_wait,
                        self.core.what,
                    )
                    break
                await asyncio.sleep(min(FIRST_WAIT_POLL, max(0.0, deadline - time.monotonic())))
            self._ready.set()
            while not self._finished():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.core.interval)
                self._wake.clear()
                if self._finished():
                    break
                await self._tick()
        finally:
            self._ready.set()

    def _finished(self) -> bool:
        return bool(self.pool._opened and self.pool.closed)

    async def _wait_ready(self) -> Self:
        await self._ready.wait()
        return self

    def __await__(self) -> Generator[Any, None, Self]:
        return self._wait_ready().__await__()

    def stop(self) -> None:
        """Stop following (the task is cancelled; the pool keeps the size it has). Safe to call twice."""
        if not self._task.done():
            self._task.cancel()
        self.core.leave(self)
        if not self._hooks_removed:
            self._hooks_removed = True
            pool = self.pool
            pool._configure = self._original_configure
            pool._reset = self._original_reset
            for name in ("_add_to_pool", "_add_connection", ATTRIBUTE):
                with contextlib.suppress(AttributeError):
                    delattr(pool, name)

    async def astop(self) -> None:
        """:meth:`stop`, then wait for the task to end."""
        self.stop()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def __aenter__(self) -> Self:
        return await self._wait_ready()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.astop()


def follow_pool(
    pool: ConnectionPool[Any] | AsyncConnectionPool[Any],
    make_core: Callable[[list[str]], FollowerCore],
) -> PoolFollower | AsyncPoolFollower:
    from psycopg_pool import AsyncNullConnectionPool, NullConnectionPool

    if isinstance(pool, NullConnectionPool | AsyncNullConnectionPool):
        raise TypeError(
            "poolbudget_client.follow() does not support null pools (they keep no connections to size)"
        )
    core = make_core(_conninfo_secrets(pool))
    if isinstance(pool, AsyncConnectionPool):
        return AsyncPoolFollower(pool, core)
    return PoolFollower(pool, core).start()
