"""``poolbudget_client.create_engine``: a real SQLAlchemy Engine whose pool follows the allotment file.

Against a real PostgreSQL (counted in pg_stat_activity through the confirmation tags), plus a Hypothesis state
machine that drives the resizable pool over a fake DBAPI (fast, no server) to check its bookkeeping exactly.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from typing import Any

import poolbudget_client
import psycopg
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from poolbudget_client import parse_tag, sqlalchemy_engine
from poolbudget_client.sqlalchemy_engine import FollowingQueuePool
from sqlalchemy import Engine, Integer, String, event, exc, select, text
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from tests.client_fixtures import Pod, Server, tagged_count, tagged_names, wait_for

FAST = 0.05


@pytest.fixture
def engines() -> Iterator[list[Engine]]:
    made: list[Engine] = []
    yield made
    for engine in made:
        follower = poolbudget_client.follower_of(engine)
        if follower is not None:
            follower.stop()
        engine.dispose()


def url(server: Server, app: str | None = "ledger") -> str:
    base = server.url().replace("postgresql://", "postgresql+psycopg://", 1)
    return f"{base}?application_name={app}" if app else base


def generations(server: Server, pod: Pod) -> list[int]:
    tags = [parse_tag(name) for name in tagged_names(server, pod.tag)]
    return sorted(tag.generation for tag in tags if tag is not None)


def follower(engine: Engine) -> Any:
    found = poolbudget_client.follower_of(engine)
    assert found is not None
    return found


# -- on a real server ----------------------------------------------------------------------------------------


class Base(DeclarativeBase):
    pass


class Invoice(Base):
    __tablename__ = f"client_invoice_{uuid.uuid4().hex[:8]}"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    customer: Mapped[str] = mapped_column(String(40))


@pytest.mark.postgres
def test_orm_sessions_work_through_the_following_engine(
    server: Server, pod: Pod, engines: list[Engine]
) -> None:
    pod.kubelet.write_allotment(1, 2, 1)
    engine = poolbudget_client.create_engine(
        url(server),
        pool_size=1,
        max_overflow=0,
        allotment_file=pod.kubelet.path,
        pod_uid=pod.uid,
        poll_interval=FAST,
    )
    engines.append(engine)
    assert isinstance(engine, Engine)
    assert (engine.pool.size(), engine.pool._pb_overflow) == (2, 1)  # type: ignore[attr-defined]
    Base.metadata.create_all(engine)
    try:
        with Session(engine) as session:
            session.add_all([Invoice(customer="acme"), Invoice(customer="globex")])
            session.commit()
        with Session(engine) as session:
            assert session.scalars(select(Invoice.customer).order_by(Invoice.id)).all() == ["acme", "globex"]
        names = tagged_names(server, pod.tag)
        assert names
        for name in names:
            tag = parse_tag(name)
            assert tag is not None
            assert (tag.app, tag.process, tag.generation) == (
                "ledger",
                os.getpid(),
                1,
            )  # the app's own name kept
    finally:
        Base.metadata.drop_all(engine)


@pytest.mark.postgres
def test_shrink_closes_idle_at_once_and_in_use_on_return(
    server: Server, pod: Pod, engines: list[Engine]
) -> None:
    pod.kubelet.write_allotment(1, 4, 2)
    engine = poolbudget_client.create_engine(
        url(server), allotment_file=pod.kubelet.path, pod_uid=pod.uid, poll_interval=FAST, pool_timeout=0.3
    )
    engines.append(engine)
    held = [engine.connect() for _ in range(6)]
    for conn in held[:2]:
        conn.close()  # 2 idle, 4 in use
    held = held[2:]
    assert wait_for(lambda: tagged_count(server, pod.tag), lambda n: n == 6) == 6
    pod.kubelet.write_allotment(2, 1, 1)  # total 2
    assert follower(engine).wait_applied(2, timeout=5)
    assert wait_for(lambda: tagged_count(server, pod.tag), lambda n: n == 4) == 4  # idle ones closed at once
    with pytest.raises(exc.TimeoutError, match="QueuePool limit of size 1 overflow 1"):
        engine.connect()  # 4 out, limit 2: nothing new is opened (waits pool_timeout, 0.3 s)
    for conn, expected in zip(
        held, [3, 2, 2, 1], strict=True
    ):  # over the limit, over the limit, pooled, overflow
        conn.close()
        assert wait_for(lambda: tagged_count(server, pod.tag), lambda n, e=expected: n == e) == expected  # type: ignore[misc]
    assert wait_for(lambda: generations(server, pod), lambda g: g == [2]) == [2]  # re-tagged on return
    with engine.connect() as conn:
        assert conn.execute(text("SELECT 1")).scalar() == 1


@pytest.mark.postgres
def test_never_above_the_new_total_under_concurrent_load(
    server: Server, pod: Pod, engines: list[Engine]
) -> None:
    plan = [(2, 2), (5, 3), (1, 1), (4, 2), (1, 0), (3, 1), (2, 0)]  # (poolSize, maxOverflow) per generation
    pod.kubelet.write_allotment(1, *plan[0])
    engine = poolbudget_client.create_engine(
        url(server), allotment_file=pod.kubelet.path, pod_uid=pod.uid, poll_interval=0.02, pool_timeout=20
    )
    engines.append(engine)
    pool = engine.pool
    assert isinstance(pool, FollowingQueuePool)
    live = [0]
    live_lock = threading.Lock()
    connects: list[tuple[float, int]] = []  # (time, live connections right after this one was made)

    @event.listens_for(engine, "connect")
    def _connected(dbapi_connection: Any, record: Any) -> None:
        with live_lock:
            live[0] += 1
            connects.append((time.monotonic(), live[0]))

    @event.listens_for(engine, "close")
    def _closed(dbapi_connection: Any, record: Any) -> None:
        with live_lock:
            live[0] -= 1

    workers = 8
    iterations = [0] * workers
    errors: list[BaseException] = []
    stop = threading.Event()

    def work(index: int) -> None:
        while not stop.is_set():
            try:
                with engine.connect() as conn:
                    conn.execute(text("SELECT pg_sleep(0.001)" if index % 2 else "SELECT 1"))
            except BaseException as error:
                errors.append(error)
                return
            iterations[index] += 1

    threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(workers)]
    for thread in threads:
        thread.start()
    sampler = psycopg.connect(server.superuser_conninfo(), autocommit=True)  # type: ignore[attr-defined]
    try:
        for generation, (size, overflow) in enumerate(plan[1:], start=2):
            total = size + overflow
            pod.kubelet.write_allotment(generation, size, overflow)
            assert follower(engine).wait_applied(generation, timeout=5)
            seen = list(
                iterations
            )  # every worker finishes two more rounds: nothing checked out before is left
            assert wait_for(
                lambda: iterations,
                lambda now, s=seen: all(n >= b + 2 for n, b in zip(now, s, strict=True)),
                10,
            )
            window_start = time.monotonic()
            server_counts, pool_counts = [], []
            while time.monotonic() - window_start < 0.25:
                server_counts.append(
                    sampler.execute(
                        "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'"
                        " AND application_name LIKE %s",
                        [f"%~pb1.{pod.tag}.%"],
                    ).fetchone()[0]  # type: ignore[index]
                )
                pool_counts.append(pool.open_connections())
            window_end = time.monotonic()
            assert max(pool_counts) <= total, (generation, total, pool_counts)
            assert max(server_counts) <= total, (generation, total, server_counts)
            made = [n for at, n in connects if window_start <= at <= window_end]
            assert all(n <= total for n in made), (generation, total, made)
            assert not errors, errors
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
        sampler.close()
    assert not errors, errors
    assert sum(iterations) > 100  # the load was real


@pytest.mark.postgres
def test_a_process_with_no_open_connection_keeps_one_to_confirm(
    server: Server, pod: Pod, engines: list[Engine]
) -> None:
    pod.kubelet.write_allotment(3, 2, 0)
    engine = poolbudget_client.create_engine(
        url(server, app=None), allotment_file=pod.kubelet.path, pod_uid=pod.uid, poll_interval=FAST
    )
    engines.append(engine)
    assert wait_for(lambda: generations(server, pod), lambda g: g == [3]) == [3]  # the app never connected
    pod.kubelet.write_allotment(4, 1, 0)
    assert wait_for(lambda: generations(server, pod), lambda g: g == [4]) == [4]  # idle one re-tagged
    tag = parse_tag(tagged_names(server, pod.tag)[0])
    assert tag is not None
    assert tag.app == ""  # the app set no name: the tag alone


@pytest.mark.postgres
def test_failures_are_logged_without_the_password(
    server: Server, pod: Pod, engines: list[Engine], caplog: pytest.LogCaptureFixture
) -> None:
    secret = "Wrong-Secret-9x!#"
    port = urllib.parse.urlsplit(server.url()).port
    bad = f"postgresql+psycopg://postgres:{urllib.parse.quote(secret, safe='')}@127.0.0.1:{port}/postgres"
    caplog.set_level(logging.DEBUG)
    pod.kubelet.write_allotment(1, 2, 0)
    engine = poolbudget_client.create_engine(
        bad, allotment_file=pod.kubelet.path, pod_uid=pod.uid, poll_interval=FAST, first_wait=2
    )
    engines.append(engine)
    warned = wait_for(
        lambda: [r for r in caplog.records if r.name == "poolbudget_client" and r.levelno >= logging.WARNING],
        lambda records: bool(records),
        timeout=10,
    )
    assert warned, "the failing connection should have been reported"
    assert "password authentication failed" in warned[0].getMessage()
    with pytest.raises(exc.OperationalError):
        engine.connect()  # the app sees its own error as usual
    logged = caplog.text + "".join(r.getMessage() for r in caplog.records)
    assert secret not in logged
    assert urllib.parse.quote(secret, safe="") not in logged


def test_dispose_keeps_following(pod: Pod, engines: list[Engine]) -> None:
    pod.kubelet.write_allotment(1, 3, 1)
    engine = poolbudget_client.create_engine(
        "postgresql+psycopg://u@127.0.0.1:1/db",
        allotment_file=pod.kubelet.path,
        poll_interval=FAST,
        pod_uid=pod.uid,
    )
    engines.append(engine)
    engine.dispose()  # SQLAlchemy replaces the pool (recreate)
    assert engine.pool.size() == 3
    pod.kubelet.write_allotment(2, 5, 0)
    assert follower(engine).wait_applied(2, timeout=5)
    assert engine.pool.size() == 5


# -- the pool's bookkeeping, exactly, over a fake DBAPI ------------------------------------------------------


class FakeDBAPI:
    """Counts live connections; enough of a DBAPI for SQLAlchemy's pool (rollback on return, close)."""

    def __init__(self) -> None:
        self.live = 0

    def connect(self) -> FakeConnection:
        self.live += 1
        return FakeConnection(self)


class FakeConnection:
    def __init__(self, db: FakeDBAPI) -> None:
        self.db = db
        self.closed = False

    def rollback(self) -> None:
        pass

    def commit(self) -> None:
        pass

    def cursor(self) -> Any:
        raise NotImplementedError

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.db.live -= 1


def test_a_checkout_interrupted_while_handed_a_connection_gives_it_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    db = FakeDBAPI()
    pool = FollowingQueuePool(db.connect, pool_size=1, max_overflow=0, timeout=5)
    held = pool.connect()

    class Interrupted(threading.Event):
        def wait(self, timeout: float | None = None) -> bool:
            held.close()  # the returned connection goes straight to the waiting checkout...
            raise KeyboardInterrupt  # ...which is interrupted at that very moment

    monkeypatch.setattr(sqlalchemy_engine._Waiter, "event_class", Interrupted)
    with pytest.raises(KeyboardInterrupt):
        pool.connect()
    monkeypatch.undo()
    assert (pool.checkedin(), pool.open_connections(), db.live) == (1, 1, 1)  # not lost with the waiter
    pool.connect().close()  # and usable at once
    pool.dispose()
    assert db.live == 0


class PoolMachine(RuleBasedStateMachine):
    """Checkouts, returns, invalidations and resizes in any order; the limits hold after every step."""

    def __init__(self) -> None:
        super().__init__()
        self.db = FakeDBAPI()
        self.pool = FollowingQueuePool(self.db.connect, pool_size=2, max_overflow=1, timeout=0)
        self.held: list[Any] = []
        self.size, self.overflow = 2, 1

    @property
    def total(self) -> int:
        return self.size + self.overflow

    @rule()
    def checkout(self) -> None:
        idle, opened = self.pool.checkedin(), self.pool.open_connections()
        expected = idle > 0 or opened < self.total
        try:
            self.held.append(self.pool.connect())
        except exc.TimeoutError:
            assert not expected, (idle, opened, self.total)
        else:
            assert expected, (idle, opened, self.total)

    @precondition(lambda self: bool(self.held))
    @rule(index=st.integers(0, 50))
    def checkin(self, index: int) -> None:
        self.held.pop(index % len(self.held)).close()

    @precondition(lambda self: bool(self.held))
    @rule(index=st.integers(0, 50))
    def invalidate(self, index: int) -> None:
        self.held.pop(index % len(self.held)).invalidate()

    @rule(size=st.integers(1, 4), overflow=st.integers(0, 3))
    def resize(self, size: int, overflow: int) -> None:
        self.pool.resize(size, overflow)
        self.size, self.overflow = size, overflow

    @invariant()
    def limits_hold(self) -> None:
        idle, opened, out = self.pool.checkedin(), self.pool.open_connections(), len(self.held)
        assert opened == idle + out
        assert self.pool.checkedout() == out
        assert self.db.live <= opened  # an invalidated record reconnects only when checked out again
        assert idle <= self.size  # idle beyond pool_size closed at once
        assert opened <= max(self.total, out)  # above the limit only by connections that were already out
        if idle:
            assert opened <= self.total  # never idle while over the limit

    def teardown(self) -> None:
        for fairy in self.held:
            fairy.close()
        self.pool.dispose()
        assert self.db.live == 0


TestPoolMachine = PoolMachine.TestCase
TestPoolMachine.settings = settings(max_examples=80, stateful_step_count=40, deadline=None)
