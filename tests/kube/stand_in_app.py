"""One worker process of an app, run by the pod-process stand-in (``pod_process_stand_in.py``) for a kwok pod.

It builds a real pool from the pod's env exactly as an app would, follows the allotment file through
``poolbudget_client`` when the env names one, and keeps the pool saturated: ``STAND_IN_WORKERS`` threads (or
tasks) each check a connection out, hold it, give it back, again and again. It reports on stdout, one JSON line
each: ``started``, ``applied`` (the allotment its pool enforces now), ``refused`` (PostgreSQL refused a
connection: the invariant broke). It never prints the database URL. SIGTERM closes the pool and exits.

``STAND_IN_APP``: ``psycopg-sync``, ``psycopg-async`` (psycopg_pool from ``DB_POOL_MIN_SIZE`` /
``DB_POOL_MAX_SIZE``), ``sqlalchemy`` (``poolbudget_client.create_engine`` from ``DB_POOL_SIZE`` /
``DB_MAX_OVERFLOW``), ``no-helper`` (plain ``sqlalchemy.create_engine``, never follows).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import threading
import time
from typing import Any

import psycopg

REFUSED = "53300"  # too_many_connections: "sorry, too many clients already", "remaining connection slots"
HOLD = float(os.environ.get("STAND_IN_HOLD_SECONDS", "0.3"))
WORKERS = int(os.environ.get("STAND_IN_WORKERS", "12"))
stopping = threading.Event()
_out = threading.Lock()


def say(event: str, **fields: Any) -> None:
    with _out:
        sys.stdout.write(json.dumps({"event": event, "t": time.time(), **fields}) + "\n")
        sys.stdout.flush()


def refused(exc: BaseException) -> bool:
    while exc is not None:
        if getattr(exc, "sqlstate", None) == REFUSED or "too many clients" in str(exc):
            return True
        exc = exc.__cause__ or getattr(exc, "orig", None)  # type: ignore[assignment]
    return False


class ReportingConnection(psycopg.Connection[Any]):
    """psycopg_pool connects in its own threads: a refusal is reported where it happens."""

    @classmethod
    def connect(cls, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        try:
            return super().connect(*args, **kwargs)
        except psycopg.OperationalError as exc:
            if refused(exc):
                say("refused", sqlstate=REFUSED)
            raise


class AsyncReportingConnection(psycopg.AsyncConnection[Any]):
    @classmethod
    async def connect(cls, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        try:
            return await super().connect(*args, **kwargs)
        except psycopg.OperationalError as exc:
            if refused(exc):
                say("refused", sqlstate=REFUSED)
            raise


class Applied(threading.Thread):
    """Reports each new allotment the follower enforces."""

    def __init__(self, follower: Any) -> None:
        super().__init__(daemon=True)
        self.follower = follower

    def run(self) -> None:
        last = None
        while not stopping.is_set():
            applied = self.follower.applied if self.follower is not None else None
            if applied is not None and applied != last:
                say("applied", generation=applied.generation, total=applied.pool_size + applied.max_overflow)
                last = applied
            time.sleep(0.05)


def saturate(work: Any) -> None:
    """Run ``work`` in every worker thread until SIGTERM, then let each finish its checkout."""
    threads = [threading.Thread(target=work, daemon=True) for _ in range(WORKERS)]
    for t in threads:
        t.start()
    stopping.wait()
    for t in threads:
        t.join(HOLD + 3)


def env_int(name: str, default: int) -> int:
    return int(os.environ.get(name) or default)


def run_sqlalchemy(url: str, follow: bool) -> None:
    import poolbudget_client
    import sqlalchemy

    sa_url = url.replace("postgresql://", "postgresql+psycopg://", 1)
    sizes = {"pool_size": env_int("DB_POOL_SIZE", 5), "max_overflow": env_int("DB_MAX_OVERFLOW", 10)}
    if follow:
        engine = poolbudget_client.create_engine(sa_url, pool_timeout=2, **sizes)
        follower = poolbudget_client.follower_of(engine)
    else:
        engine = sqlalchemy.create_engine(sa_url, pool_timeout=2, **sizes)
        follower = None
    Applied(follower).start()

    def work() -> None:
        while not stopping.is_set():
            try:
                with engine.connect() as conn:
                    conn.exec_driver_sql("SELECT 1")
                    stopping.wait(HOLD)
            except sqlalchemy.exc.TimeoutError:
                continue  # every connection the pool allows is out: normal when saturated
            except sqlalchemy.exc.OperationalError as exc:
                if refused(exc):
                    say("refused", sqlstate=REFUSED)
                stopping.wait(0.1)

    saturate(work)
    engine.dispose()


def run_psycopg_sync(url: str, follow: bool) -> None:
    import poolbudget_client
    import psycopg_pool

    low = env_int("DB_POOL_MIN_SIZE", 4)
    pool = psycopg_pool.ConnectionPool(
        url, min_size=low, max_size=max(low, env_int("DB_POOL_MAX_SIZE", low)), timeout=2,
        connection_class=ReportingConnection, open=True,
    )  # fmt: skip
    follower = poolbudget_client.follow(pool) if follow else None
    Applied(follower).start()

    def work() -> None:
        while not stopping.is_set():
            try:
                with pool.connection() as conn:
                    conn.execute("SELECT 1")
                    stopping.wait(HOLD)
            except psycopg_pool.PoolTimeout:
                continue
            except psycopg.OperationalError:
                stopping.wait(0.1)

    saturate(work)
    if follower is not None:
        follower.stop()
    pool.close()


async def run_psycopg_async(url: str, follow: bool) -> None:
    import poolbudget_client
    import psycopg_pool

    low = env_int("DB_POOL_MIN_SIZE", 4)
    pool = psycopg_pool.AsyncConnectionPool(
        url, min_size=low, max_size=max(low, env_int("DB_POOL_MAX_SIZE", low)), timeout=2,
        connection_class=AsyncReportingConnection, open=False,
    )  # fmt: skip
    await pool.open()
    follower = await poolbudget_client.follow(pool) if follow else None
    Applied(follower).start()
    done = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, done.set)

    async def work() -> None:
        while not done.is_set():
            try:
                async with pool.connection() as conn:
                    await conn.execute("SELECT 1")
                    await asyncio.sleep(HOLD)
            except psycopg_pool.PoolTimeout:
                continue
            except psycopg.OperationalError:
                await asyncio.sleep(0.1)

    tasks = [asyncio.create_task(work()) for _ in range(WORKERS)]
    await done.wait()
    stopping.set()
    await asyncio.wait(tasks, timeout=HOLD + 3)
    if follower is not None:
        await follower.astop()
    await pool.close()


def main() -> None:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    logging.getLogger("psycopg.pool").setLevel(logging.CRITICAL)  # its connect retries are reported above
    url = os.environ.pop("STAND_IN_DATABASE_URL")
    kind = os.environ.get("STAND_IN_APP", "sqlalchemy")
    follow = kind != "no-helper" and bool(os.environ.get("POOLBUDGET_ALLOTMENT_FILE"))
    say("started", pid=os.getpid(), app=kind)
    if kind == "psycopg-async":
        asyncio.run(run_psycopg_async(url, follow))
        return
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    if kind == "psycopg-sync":
        run_psycopg_sync(url, follow)
    else:
        run_sqlalchemy(url, follow)


if __name__ == "__main__":
    main()
