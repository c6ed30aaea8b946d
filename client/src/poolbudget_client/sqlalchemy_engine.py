"""``create_engine(url, **kw)``: a real SQLAlchemy Engine whose pool follows the allotment file.

SQLAlchemy's ``QueuePool`` has no resize. :class:`FollowingQueuePool` subclasses it and replaces its bookkeeping
with one of its own under one lock: the idle records, the number of records open (idle + checked out + being
connected), ``pool_size``, ``max_overflow`` and the checkouts waiting, served first come first served (a returned
connection or a freed slot is handed to the oldest waiter, so busy threads cannot starve a waiting one). A record counts as open from the
moment a slot is taken for it until its connection is closed, so the pool never holds more than
``pool_size + max_overflow`` connections once a resize has returned, except connections that were already checked
out, which are closed as they come back. Only ``Pool``'s extension points are used: ``_do_get``,
``_do_return_conn``, ``_create_connection``, ``recreate``, ``dispose`` and the status methods.
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from collections import deque
from typing import Any

import sqlalchemy
from sqlalchemy import event, exc
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.pool import ConnectionPoolEntry, Pool, QueuePool

from .allotment import DEFAULT_INTERVAL, Allotment
from .follower import FollowerCore, ThreadFollower

TAG_SQL = "SELECT set_config('application_name', %s, false)"
APP_KEY = "poolbudget_app"  # record.info: the app's own application_name
TAG_KEY = "poolbudget_tag"  # record.info: the tag the connection carries


def _is_idle(dbapi_connection: Any) -> bool:
    """True when the DBAPI connection is outside any transaction (psycopg 3 and psycopg2 know; others: no)."""
    status = getattr(getattr(dbapi_connection, "info", None), "transaction_status", None)
    if status is not None:
        return int(status) == 0
    get_status = getattr(dbapi_connection, "get_transaction_status", None)
    if callable(get_status):
        return int(get_status()) == 0
    return False


class _Waiter:
    """A checkout waiting for a connection: given an idle ``record`` or a ``slot`` to open one."""

    __slots__ = ("event", "record", "slot")
    event_class = threading.Event

    def __init__(self) -> None:
        self.event = self.event_class()
        self.record: ConnectionPoolEntry | None = None
        self.slot = False


class FollowingQueuePool(QueuePool):
    """A ``QueuePool`` that can be resized while in use: :meth:`resize`.

    Same arguments and status methods as ``QueuePool``. ``pool_size=0`` and ``max_overflow=-1`` keep their
    ``QueuePool`` meaning (no limit) until an allotment replaces them.
    """

    def __init__(
        self,
        creator: Any,
        pool_size: int = 5,
        max_overflow: int = 10,
        timeout: float = 30.0,
        use_lifo: bool = False,
        **kw: Any,
    ) -> None:
        super().__init__(
            creator, pool_size=pool_size, max_overflow=max_overflow, timeout=timeout, use_lifo=use_lifo, **kw
        )
        self._pb_lock = threading.Lock()
        self._pb_waiters: deque[_Waiter] = deque()  # checkouts waiting, first come first served
        self._pb_idle: deque[ConnectionPoolEntry] = deque()
        self._pb_lifo = use_lifo
        self._pb_size = pool_size
        self._pb_overflow = max_overflow
        self._pb_open = 0  # records holding (or about to hold) a connection: idle + out + connecting
        self._pb_retired = False  # replaced by recreate(): every returned connection is closed
        self._pb_follower: EngineFollower | None = None

    # -- limits ------------------------------------------------------------------------------------------------

    def _pb_total(self) -> float:
        if self._pb_size == 0 or self._pb_overflow < 0:
            return float("inf")
        return self._pb_size + self._pb_overflow

    def _pb_idle_cap(self) -> float:
        if self._pb_retired:
            return 0
        return self._pb_size if self._pb_size > 0 else float("inf")

    def resize(self, pool_size: int, max_overflow: int) -> None:
        """Apply new limits at once: waiters may proceed on a grow; idle connections beyond the new limits are
        closed now, checked-out ones beyond them when they are returned. Nothing new is opened past the limit.
        """
        if pool_size < 1 or max_overflow < 0:
            raise ValueError("pool_size must be >= 1 and max_overflow >= 0")
        to_close: list[ConnectionPoolEntry] = []
        with self._pb_lock:
            self._pb_size = pool_size
            self._pb_overflow = max_overflow
            total = self._pb_total()
            while self._pb_idle and (
                len(self._pb_idle) > self._pb_idle_cap() or self._pb_open - len(to_close) > total
            ):
                to_close.append(self._pb_idle.popleft())  # the longest idle first
            self._pb_dispatch()
        for record in to_close:
            self._pb_close(record, over_limit=True)

    def _pb_dispatch(self) -> None:
        """Under the lock: hand idle connections, then free slots, to waiters in arrival order (no barging)."""
        while self._pb_waiters:
            if self._pb_idle:
                waiter = self._pb_waiters.popleft()
                waiter.record = self._pb_idle.pop() if self._pb_lifo else self._pb_idle.popleft()
            elif self._pb_open < self._pb_total():
                waiter = self._pb_waiters.popleft()
                self._pb_open += 1
                waiter.slot = True
            else:
                return
            waiter.event.set()

    def _pb_close(self, record: ConnectionPoolEntry, *, over_limit: bool) -> None:
        # The slot is freed only once the connection is closed: never more than the limit at any instant.
        try:
            record.close()
        finally:
            with self._pb_lock:
                self._pb_open -= 1
                self._pb_dispatch()
            follower = self._pb_follower
            if over_limit and follower is not None:
                follower.core.closed_over_limit += 1

    # -- Pool's extension points -------------------------------------------------------------------------------

    def _do_get(self) -> ConnectionPoolEntry:
        follower = self._pb_follower
        if follower is not None and follower.pid != os.getpid():
            follower.after_fork()  # a forked worker: its follower thread did not come along
        waiter: _Waiter | None = None
        with self._pb_lock:
            if not self._pb_waiters and self._pb_idle:
                return self._pb_idle.pop() if self._pb_lifo else self._pb_idle.popleft()
            if not self._pb_waiters and self._pb_open < self._pb_total():
                self._pb_open += 1
            else:
                waiter = _Waiter()
                self._pb_waiters.append(waiter)
        if waiter is not None:
            try:
                waiter.event.wait(self._timeout)
            except BaseException:  # interrupted while waiting: give back whatever was handed over meanwhile
                self._pb_abandon(waiter)
                raise
            with self._pb_lock:  # decide under the lock: a hand-off may race with the timeout
                if waiter.record is None and not waiter.slot:
                    self._pb_waiters.remove(waiter)
                    raise exc.TimeoutError(
                        f"QueuePool limit of size {self._pb_size} overflow {self._pb_overflow} reached, "
                        f"connection timed out, timeout {self._timeout:0.2f}",
                        code="3o7r",
                    )
            if waiter.record is not None:
                return waiter.record
        try:
            return self._create_connection()
        except BaseException:
            with self._pb_lock:
                self._pb_open -= 1
                self._pb_dispatch()
            raise

    def _pb_abandon(self, waiter: _Waiter) -> None:
        with self._pb_lock:
            if waiter.record is None and not waiter.slot:
                self._pb_waiters.remove(waiter)
                return
            if waiter.slot:
                self._pb_open -= 1
                self._pb_dispatch()
        if waiter.record is not None:
            self._do_return_conn(waiter.record)

    def _pb_should_close(self) -> bool:
        return self._pb_open > self._pb_total() or len(self._pb_idle) >= self._pb_idle_cap()

    def _do_return_conn(self, record: ConnectionPoolEntry) -> None:
        with self._pb_lock:
            over_limit = self._pb_open > self._pb_total()
            closing = self._pb_should_close()
        if not closing and not self._pb_retag(record):
            closing = True
        if not closing:
            with self._pb_lock:
                over_limit = self._pb_open > self._pb_total()
                closing = self._pb_should_close()
                if not closing:
                    self._pb_idle.append(record)
                    self._pb_dispatch()
                    return
        self._pb_close(record, over_limit=over_limit)

    # -- confirmation tags -------------------------------------------------------------------------------------

    def _pb_retag(self, record: ConnectionPoolEntry) -> bool:
        """Re-tag a returned connection whose tag is stale. False when it failed (the caller closes it)."""
        follower = self._pb_follower
        dbapi_connection = record.dbapi_connection
        if follower is None or dbapi_connection is None or not follower.core.tagging:
            return True
        tag = follower.core.tag_for(record.info.get(APP_KEY, ""))
        if tag is None or record.info.get(TAG_KEY) == tag or not _is_idle(dbapi_connection):
            return True
        try:
            cursor = dbapi_connection.cursor()
            try:
                cursor.execute(TAG_SQL, (tag,))
            finally:
                cursor.close()
            dbapi_connection.commit()
        except Exception as error:
            follower.core.warn_error_once("tagging a connection", error)
            return False
        record.info[TAG_KEY] = tag
        follower.core.retags += 1
        return True

    def _pb_retag_idle(self) -> None:
        """Take each idle connection out in turn, re-tag it when stale, and return it (or close it if over)."""
        with self._pb_lock:
            count = len(self._pb_idle)
        for _ in range(count):
            with self._pb_lock:
                if not self._pb_idle:
                    return
                record = self._pb_idle.popleft()
            self._do_return_conn(record)

    # -- the rest of QueuePool's surface -----------------------------------------------------------------------

    def recreate(self) -> FollowingQueuePool:
        self.logger.info("Pool recreating")
        pool = self.__class__(
            self._creator,
            pool_size=self._pb_size,
            max_overflow=self._pb_overflow,
            pre_ping=self._pre_ping,
            use_lifo=self._pb_lifo,
            timeout=self._timeout,
            recycle=self._recycle,
            echo=self.echo,
            logging_name=self._orig_logging_name,
            reset_on_return=self._reset_on_return,
            _dispatch=self.dispatch,
            dialect=self._dialect,
        )
        with self._pb_lock:
            self._pb_retired = True  # connections still out come back to this pool: close them then
        if self._pb_follower is not None:
            self._pb_follower.adopt(pool)
        return pool

    def dispose(self) -> None:
        with self._pb_lock:
            records = list(self._pb_idle)
            self._pb_idle.clear()
        for record in records:
            self._pb_close(record, over_limit=False)
        self.logger.info("Pool disposed. %s", self.status())

    def status(self) -> str:
        return (
            f"Pool size: {self.size()}  Connections in pool: {self.checkedin()} "
            f"Current Overflow: {self.overflow()} Current Checked out connections: {self.checkedout()}"
        )

    def size(self) -> int:
        return self._pb_size

    def checkedin(self) -> int:
        return len(self._pb_idle)

    def overflow(self) -> int:
        return self._pb_open - self._pb_size if self._pb_size else 0

    def checkedout(self) -> int:
        return self._pb_open - len(self._pb_idle)

    def open_connections(self) -> int:
        """Records holding or about to hold a connection: idle, checked out, connecting or closing."""
        return self._pb_open


class EngineFollower(ThreadFollower):
    """Follows the allotment file for an engine's pool (and the pools ``engine.dispose()`` recreates)."""

    VISIBLE_RETRY_MAX = 30.0  # seconds between attempts to open the confirming connection, at most

    def __init__(self, core: FollowerCore) -> None:
        super().__init__(core)
        self._pools: weakref.WeakSet[FollowingQueuePool] = weakref.WeakSet()
        self._adopted = False
        self._visible_retry_at = 0.0
        self._visible_backoff = core.interval

    def adopt(self, pool: FollowingQueuePool) -> None:
        self.after_fork()  # engine.dispose(close=False) in a forked worker recreates the pool: follow from here
        pool._pb_follower = self
        self._pools.add(pool)
        self._adopted = True
        applied = self.core.applied
        if applied is not None:
            pool.resize(applied.pool_size, applied.max_overflow)

    def _apply(self, allotment: Allotment) -> None:
        for pool in list(self._pools):
            pool.resize(allotment.pool_size, allotment.max_overflow)

    def _retag_idle(self) -> None:
        if self.core.tagging:
            for pool in list(self._pools):
                pool._pb_retag_idle()

    def _after_tick(self) -> None:
        # A process with no connection open could not show what it applied: keep one open (poolSize >= 1).
        if not self.core.tagging or self.core.applied is None or time.monotonic() < self._visible_retry_at:
            return
        for pool in list(self._pools):
            if pool._pb_retired or pool.open_connections() > 0:
                continue
            try:
                pool.connect().close()
            except Exception as error:
                self.core.warn_error_once("opening a connection to show the confirmation", error)
                # the database is down or refuses: back off, so that polling the file is never held up for long
                self._visible_retry_at = time.monotonic() + self._visible_backoff
                self._visible_backoff = min(self._visible_backoff * 2, self.VISIBLE_RETRY_MAX)
                return
        self._visible_backoff = self.core.interval

    def _finished(self) -> bool:
        return self._adopted and not self._pools


def follower_of(target: Engine | Pool) -> EngineFollower | None:
    """The follower of an engine made by :func:`create_engine` (or of its pool); None otherwise."""
    pool = target.pool if isinstance(target, Engine) else target
    return getattr(pool, "_pb_follower", None)


def create_engine(
    url: str | sqlalchemy.URL,
    *,
    allotment_file: str | os.PathLike[str] | None = None,
    first_wait: float | None = None,
    poll_interval: float = DEFAULT_INTERVAL,
    pod_uid: str | None = None,
    pod_name: str | None = None,
    **kw: Any,
) -> Engine:
    """``sqlalchemy.create_engine(url, **kw)`` with a pool that follows the allotment file.

    ``pool_size`` / ``max_overflow`` (and every other ``kw``) mean what they mean to SQLAlchemy and are the
    floor used until the first allotment arrives; afterwards ``pool_size = poolSize`` and ``max_overflow =
    maxOverflow``. ``allotment_file`` defaults to ``POOLBUDGET_ALLOTMENT_FILE`` (unset: the engine never
    resizes), ``pod_uid`` / ``pod_name`` to ``POD_UID`` / ``POD_NAME``. Waits up to ``first_wait`` seconds
    (default ``POOLBUDGET_FIRST_WAIT_SECONDS`` or 5) for the first allotment.
    """
    if "poolclass" in kw or "pool" in kw:
        raise TypeError("poolbudget_client.create_engine chooses the pool: do not pass poolclass or pool")
    secrets: list[str] = []
    password = make_url(url).password
    if password:
        secrets.append(str(password))
    connect_args = kw.get("connect_args") or {}
    if isinstance(connect_args, dict) and connect_args.get("password"):
        secrets.append(str(connect_args["password"]))
    engine = sqlalchemy.create_engine(url, poolclass=FollowingQueuePool, **kw)
    core = FollowerCore(
        allotment_file=allotment_file,
        first_wait=first_wait,
        interval=poll_interval,
        pod_uid=pod_uid,
        pod_name=pod_name,
        secrets=secrets,
        what="SQLAlchemy engine",
    )
    follower = EngineFollower(core)
    pool = engine.pool
    if not isinstance(pool, FollowingQueuePool):  # a plugin swapped it: follow nothing rather than half
        raise TypeError(f"the engine's pool is a {type(pool).__name__}, not FollowingQueuePool")
    follower.adopt(pool)

    @event.listens_for(engine, "do_connect")
    def _tag_new_connection(
        dialect: Any, record: ConnectionPoolEntry | None, cargs: Any, cparams: dict[str, Any]
    ) -> None:
        app = core.app_name_of(cparams.get("application_name") or os.environ.get("PGAPPNAME"))
        tag = core.tag_for(app)
        if tag is not None:
            cparams["application_name"] = tag
            if record is not None:
                record.info[APP_KEY] = app
                record.info[TAG_KEY] = tag

    follower.start()
    return engine
