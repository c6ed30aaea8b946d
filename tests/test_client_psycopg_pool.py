"""``poolbudget_client.follow`` on real psycopg_pool pools against a real PostgreSQL, counted in pg_stat_activity.

The file is written by the kubelet stand-in (AtomicWriter's symlink swaps). Every wait has a timeout and ends on a
definite signal (the follower's applied generation, its poll counter, the server's count), never a fixed sleep.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
import urllib.parse
from collections.abc import Iterator
from typing import Any

import poolbudget_client
import pytest
from poolbudget_client import parse_tag
from psycopg_pool import AsyncConnectionPool, ConnectionPool, NullConnectionPool

from tests.client_fixtures import Pod, Server, new_pod, tagged_count, tagged_names, wait_for
from tests.kubelet_file_stand_in import KubeletFileStandIn

pytestmark = pytest.mark.postgres

FAST = 0.05  # poll interval for tests that are not about the deadline


def open_pool(server: Server, min_size: int = 1, max_size: int = 1, **kw: Any) -> ConnectionPool[Any]:
    pool: ConnectionPool[Any] = ConnectionPool(
        server.url(),
        min_size=min_size,
        max_size=max_size,
        kwargs={"application_name": "billing"},
        open=False,
        timeout=10,
        **kw,
    )
    pool.open(wait=True, timeout=10)
    return pool


@pytest.fixture
def pools() -> Iterator[list[ConnectionPool[Any]]]:
    opened: list[ConnectionPool[Any]] = []
    yield opened
    for pool in opened:
        pool.close()


def generations(server: Server, pod: Pod) -> list[int]:
    tags = [parse_tag(name) for name in tagged_names(server, pod.tag)]
    return sorted(tag.generation for tag in tags if tag is not None)


def test_grow_is_applied_within_the_deadline_and_tags_show_it(
    server: Server, pod: Pod, pools: list[ConnectionPool[Any]]
) -> None:
    pool = open_pool(server)
    pools.append(pool)
    pod.kubelet.write_allotment(1, 2, 1)
    with poolbudget_client.follow(
        pool, allotment_file=pod.kubelet.path, first_wait=5, pod_uid=pod.uid
    ) as follower:
        assert follower.applied is not None  # the first allotment was there: applied before follow() returned
        assert (pool.min_size, pool.max_size) == (2, 3)
        started = time.monotonic()
        pod.kubelet.write_allotment(2, 5, 2)  # a grow, polled at the default interval (1 s)
        assert follower.wait_applied(2, timeout=5)
        elapsed = time.monotonic() - started
        assert elapsed < 5, elapsed  # the bound; aim about 1 s
        assert (pool.min_size, pool.max_size) == (5, 7)
        assert wait_for(lambda: generations(server, pod), lambda g: g == [2] * 5) == [2] * 5
        for name in tagged_names(server, pod.tag):
            tag = parse_tag(name)
            assert tag is not None
            assert (tag.app, tag.pod, tag.process) == ("billing", pod.tag, os.getpid())  # app's name kept


def test_shrink_closes_idle_at_once_and_in_use_on_return(
    server: Server, pod: Pod, pools: list[ConnectionPool[Any]]
) -> None:
    pool = open_pool(server)
    pools.append(pool)
    pod.kubelet.write_allotment(1, 6, 0)
    with poolbudget_client.follow(
        pool, allotment_file=pod.kubelet.path, first_wait=5, interval=FAST, pod_uid=pod.uid
    ) as follower:
        assert wait_for(lambda: tagged_count(server, pod.tag), lambda n: n == 6) == 6
        held = [pool.getconn() for _ in range(4)]  # 4 in use, 2 idle
        pod.kubelet.write_allotment(2, 1, 1)  # total 2
        assert follower.wait_applied(2, timeout=5)
        assert wait_for(lambda: tagged_count(server, pod.tag), lambda n: n == 4) == 4  # idle ones closed now
        expected = [3, 2, 2, 2]  # the first two returns are over the limit: closed; then pooled
        for conn, count in zip(held, expected, strict=True):
            pool.putconn(conn)
            assert wait_for(lambda: tagged_count(server, pod.tag), lambda n, c=count: n == c) == count  # type: ignore[misc]
        # the survivors were re-tagged when they came back: the server sees generation 2
        assert wait_for(lambda: generations(server, pod), lambda g: g == [2, 2]) == [2, 2]
        with pool.connection() as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        assert follower.core.closed_over_limit == 4


def test_bad_file_keeps_the_last_good_size_warns_once_and_never_raises(
    server: Server, pod: Pod, pools: list[ConnectionPool[Any]], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="poolbudget_client")
    pool = open_pool(server)
    pools.append(pool)
    pod.kubelet.write_allotment(1, 3, 1)
    with poolbudget_client.follow(
        pool, allotment_file=pod.kubelet.path, first_wait=5, interval=FAST, pod_uid=pod.uid
    ) as follower:
        source = follower.core.source
        assert source is not None
        for content in [
            "{oops",
            "{oops",
            '{"generation": 2, "perProcess": {"poolSize": -1, "maxOverflow": 0}}',
            None,
        ]:
            seen = source.polls
            pod.kubelet.write(content)
            assert wait_for(lambda: source.polls, lambda n, s=seen: n >= s + 2) >= seen + 2  # type: ignore[misc]
            assert (pool.min_size, pool.max_size) == (3, 4)
            with pool.connection() as conn:  # the app goes on
                assert conn.execute("SELECT 1").fetchone() == (1,)
        pod.kubelet.write_allotment(3, 2, 0)  # the next valid file is applied
        assert follower.wait_applied(3, timeout=5)
        assert (pool.min_size, pool.max_size) == (2, 2)
    problems = [r.getMessage() for r in caplog.records if r.name == "poolbudget_client"]
    assert len(problems) == 3, problems  # malformed (written twice), negative, missing: one warning each
    assert "not valid JSON" in problems[0]
    assert "below 1" in problems[1]
    assert "does not exist" in problems[2]


def test_at_start_waits_for_the_first_allotment_at_the_floor(
    server: Server, pod: Pod, pools: list[ConnectionPool[Any]], caplog: pytest.LogCaptureFixture
) -> None:
    pool = open_pool(server)
    pools.append(pool)
    # nothing arrives: follow() gives up after first_wait and the pool keeps its own (floor) size
    caplog.set_level(logging.WARNING, logger="poolbudget_client")
    started = time.monotonic()
    with poolbudget_client.follow(
        pool, allotment_file=pod.kubelet.path, first_wait=0.3, interval=FAST, pod_uid=pod.uid
    ) as follower:
        assert 0.3 <= time.monotonic() - started < 3
        assert follower.applied is None
        assert (pool.min_size, pool.max_size) == (1, 1)
        assert any("no valid allotment" in r.getMessage() for r in caplog.records)
        pod.kubelet.write_allotment(1, 2, 0)  # it arrives later: applied by the background poll
        assert follower.wait_applied(1, timeout=5)
        assert (pool.min_size, pool.max_size) == (2, 2)

    # it arrives during the wait: follow() returns as soon as it is applied
    other = open_pool(server)
    pools.append(other)
    later = KubeletFileStandIn(pod.kubelet.volume_dir.parent / "other")
    writer = threading.Timer(0.2, later.write_allotment, args=(4, 3, 1))
    started = time.monotonic()
    writer.start()
    try:
        with poolbudget_client.follow(
            other, allotment_file=later.path, first_wait=10, pod_uid=pod.uid
        ) as follower:
            assert follower.applied is not None
            assert follower.applied.generation == 4
            assert time.monotonic() - started < 5
            assert (other.min_size, other.max_size) == (3, 4)
    finally:
        writer.cancel()


def test_without_the_env_file_follow_changes_nothing(
    server: Server, pools: list[ConnectionPool[Any]]
) -> None:
    pool = open_pool(server, min_size=2, max_size=3)
    pools.append(pool)
    os.environ.pop("POOLBUDGET_ALLOTMENT_FILE", None)
    started = time.monotonic()
    with poolbudget_client.follow(pool) as follower:
        assert time.monotonic() - started < 1  # no file configured: no wait at all
        assert follower.applied is None
        assert (pool.min_size, pool.max_size) == (2, 3)


async def test_async_pool_grows_and_shrinks(server: Server, pod: Pod) -> None:
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        server.url(), min_size=1, max_size=1, kwargs={"application_name": "worker"}, open=False, timeout=10
    )
    await pool.open(wait=True, timeout=10)
    try:
        pod.kubelet.write_allotment(1, 3, 1)
        async with poolbudget_client.follow(
            pool, allotment_file=pod.kubelet.path, first_wait=5, interval=FAST, pod_uid=pod.uid
        ) as follower:
            assert follower.applied is not None
            assert (pool.min_size, pool.max_size) == (3, 4)

            async def count(expected: int) -> int:
                return await asyncio.to_thread(
                    wait_for, lambda: tagged_count(server, pod.tag), lambda n: n == expected
                )

            assert await count(3) == 3
            held = [await pool.getconn() for _ in range(2)]
            pod.kubelet.write_allotment(2, 1, 0)
            assert await follower.wait_applied_async(2, within=5)
            assert await count(2) == 2  # the idle one closed at once
            await pool.putconn(held[0])
            assert await count(1) == 1  # over the limit on return: closed
            await pool.putconn(held[1])
            assert await count(1) == 1
            names = await asyncio.to_thread(
                wait_for,
                lambda: tagged_names(server, pod.tag),
                lambda names: [parse_tag(n).generation for n in names] == [2],  # type: ignore[union-attr]
            )
            tag = parse_tag(names[0])
            assert tag is not None
            assert (tag.app, tag.generation, tag.process) == ("worker", 2, os.getpid())
            async with pool.connection() as conn:
                assert await (await conn.execute("SELECT 1")).fetchone() == (1,)
    finally:
        await pool.close()


def test_a_process_shows_the_lowest_generation_its_followers_applied(
    server: Server, pod: Pod, pools: list[ConnectionPool[Any]]
) -> None:
    # Two pools in one process (say a sync pool and an engine): the tag means "this process applied G", so it
    # carries the generation both have applied.
    first, second = open_pool(server), open_pool(server)
    pools.extend([first, second])
    other = KubeletFileStandIn(pod.kubelet.volume_dir.parent / "second")
    pod.kubelet.write_allotment(5, 2, 0)
    other.write_allotment(3, 2, 0)
    common = {"first_wait": 5, "interval": FAST, "pod_uid": pod.uid}
    with (
        poolbudget_client.follow(first, allotment_file=pod.kubelet.path, **common) as one,  # type: ignore[arg-type]
        poolbudget_client.follow(second, allotment_file=other.path, **common) as two,  # type: ignore[arg-type]
    ):
        assert (one.applied, two.applied) == (
            poolbudget_client.Allotment(5, 2, 0),
            poolbudget_client.Allotment(3, 2, 0),
        )
        assert wait_for(lambda: generations(server, pod), lambda g: g == [3] * 4) == [3] * 4
        other.write_allotment(6, 2, 0)
        assert two.wait_applied(6, timeout=5)
        assert wait_for(lambda: generations(server, pod), lambda g: g == [5] * 4) == [5] * 4
    # stopped followers leave the tags as they were; the pools keep their sizes
    assert (first.max_size, second.max_size) == (2, 2)


def test_a_pool_followed_before_it_opens_opens_with_the_allotment(server: Server, pod: Pod) -> None:
    pool: ConnectionPool[Any] = ConnectionPool(server.url(), min_size=1, max_size=1, open=False, timeout=10)
    pod.kubelet.write_allotment(1, 3, 1)
    started = time.monotonic()
    with poolbudget_client.follow(
        pool, allotment_file=pod.kubelet.path, first_wait=5, interval=FAST, pod_uid=pod.uid
    ) as follower:
        assert time.monotonic() - started < 2  # applied at once, no waiting for an open pool
        assert follower.applied is not None
        assert (pool.min_size, pool.max_size) == (3, 4)
        pool.open(wait=True, timeout=10)
        try:
            assert wait_for(lambda: generations(server, pod), lambda g: g == [1] * 3) == [1] * 3
            pod.kubelet.write_allotment(2, 1, 0)  # and it goes on following once open
            assert follower.wait_applied(2, timeout=5)
            assert wait_for(lambda: generations(server, pod), lambda g: g == [2]) == [2]
        finally:
            pool.close()


def test_resizes_under_concurrent_load_stay_within_max_size(
    server: Server, pod: Pod, pools: list[ConnectionPool[Any]]
) -> None:
    plan = [(2, 1), (5, 2), (1, 0), (3, 3), (1, 1), (4, 0)]
    pool = open_pool(server)
    pools.append(pool)
    pod.kubelet.write_allotment(1, *plan[0])
    workers = 6
    iterations = [0] * workers
    errors: list[BaseException] = []
    stop = threading.Event()

    def work(index: int) -> None:
        while not stop.is_set():
            try:
                with pool.connection(timeout=20) as conn:
                    conn.execute("SELECT 1")
            except BaseException as error:
                errors.append(error)
                return
            iterations[index] += 1

    with poolbudget_client.follow(
        pool, allotment_file=pod.kubelet.path, first_wait=5, interval=0.02, pod_uid=pod.uid
    ) as follower:
        threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(workers)]
        for thread in threads:
            thread.start()
        try:
            for generation, (size, overflow) in enumerate(plan[1:], start=2):
                pod.kubelet.write_allotment(generation, size, overflow)
                assert follower.wait_applied(generation, timeout=5)
                seen = list(iterations)
                assert wait_for(
                    lambda: iterations,
                    lambda now, s=seen: all(n >= b + 2 for n, b in zip(now, s, strict=True)),
                    10,
                )
                counts = [tagged_count(server, pod.tag) for _ in range(10)]
                assert max(counts) <= size + overflow, (generation, counts)
                assert pool.get_stats()["pool_size"] <= size + overflow
                assert not errors, errors
        finally:
            stop.set()
            for thread in threads:
                thread.join(10)
    assert not errors, errors


def test_a_failing_pool_logs_no_password(server: Server, pod: Pod, caplog: pytest.LogCaptureFixture) -> None:
    secret = "Wrong-Secret-psyc0pg!"
    conninfo = server.url(password=secret)  # right user, wrong password: every connection attempt fails
    caplog.set_level(logging.DEBUG)
    pod.kubelet.write_allotment(1, 2, 0)
    pool: ConnectionPool[Any] = ConnectionPool(conninfo, min_size=1, max_size=1, open=True, timeout=1)
    try:
        with poolbudget_client.follow(
            pool, allotment_file=pod.kubelet.path, first_wait=2, interval=FAST, pod_uid=pod.uid
        ) as follower:
            assert follower.applied is not None  # sizes are applied even while the database refuses
            failed = wait_for(
                lambda: [r for r in caplog.records if "password authentication failed" in r.getMessage()],
                bool,
                timeout=10,
            )
            assert failed, "psycopg_pool should have reported the failing connection"
    finally:
        pool.close()
    logged = caplog.text + "".join(r.getMessage() for r in caplog.records)
    assert secret not in logged
    assert urllib.parse.quote(secret, safe="") not in logged


def test_null_pools_are_refused_plainly() -> None:
    pool: NullConnectionPool[Any] = NullConnectionPool("", open=False)
    with pytest.raises(TypeError, match="null pools"):
        poolbudget_client.follow(pool, allotment_file="/nonexistent", pod_uid=new_pod()[0])
