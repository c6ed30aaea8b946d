"""The PostgreSQL adapter against a real server: the limits and backends it reads, and how it fails.

Every server fact is checked on a real PostgreSQL started by ``tests/pg.py`` (no mocks); the pure parts
(``unmanaged_connections``, ``redact_url``, ``sanitise``) are checked on their own at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from poolbudget.adapters.postgres import (
    BackendCount,
    DatabaseAuthFailed,
    DatabaseError,
    DatabaseQueryFailed,
    DatabaseUnreachable,
    DatabaseURLInvalid,
    read_client_backends,
    read_limits,
    redact_url,
    sanitise,
)
from poolbudget.api.annotations import OPERATOR_APPLICATION_NAME
from poolbudget.api.limits import DatabaseLimits
from poolbudget.planning.limits import compute_available
from poolbudget.planning.unmanaged import reported_application_name, unmanaged_connections
from tests.pg import PostgresServer, free_port

needs_postgres = pytest.mark.postgres

ROLE_PASSWORD = "role-Pa55word-c0ffee"  # recognisable, so a leak into a message or a log is easy to catch


@dataclass(frozen=True)
class Role:
    """A LOGIN role created for one test, with no grants at all."""

    name: str
    password: str
    server: PostgresServer

    def url(self, dbname: str = "postgres", password: str | None = None) -> str:
        return self.server.url(self.name, self.password if password is None else password, dbname)


def _unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


@pytest.fixture
def role(pg100: PostgresServer) -> Iterator[Role]:
    """A fresh plain role on the 100-connection server, dropped (and its sessions ended) afterwards."""
    name = _unique("app")
    pg100.create_role(name, password=ROLE_PASSWORD)
    yield Role(name, ROLE_PASSWORD, pg100)
    pg100.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", [name])
    pg100.execute(psycopg.sql.SQL("DROP ROLE {}").format(psycopg.sql.Identifier(name)))


@pytest.fixture
def database(pg100: PostgresServer) -> Iterator[str]:
    """A fresh database on the 100-connection server, dropped afterwards."""
    name = _unique("db")
    pg100.execute(psycopg.sql.SQL("CREATE DATABASE {}").format(psycopg.sql.Identifier(name)))
    yield name
    pg100.execute(psycopg.sql.SQL("DROP DATABASE {} WITH (FORCE)").format(psycopg.sql.Identifier(name)))


@contextlib.asynccontextmanager
async def connections(url: str, application_name: str, count: int) -> AsyncIterator[None]:
    """Hold ``count`` open connections named ``application_name`` for the duration of the block."""
    async with contextlib.AsyncExitStack() as stack:
        for _ in range(count):
            conn = psycopg.AsyncConnection.connect(url, application_name=application_name, connect_timeout=5)
            await stack.enter_async_context(await conn)
        yield


async def until_active(server: PostgresServer, application_name: str) -> None:
    """Wait (up to 10 s) until a query of ``application_name`` is running (``state = 'active'``)."""
    sql = "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s AND state = 'active'"
    for _ in range(500):
        if server.execute(sql, [application_name]) != [(0,)]:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"no query of {application_name!r} became active in 10 s")


def by_user(backends: list[BackendCount], usename: str) -> dict[str, int]:
    """{application_name: count} of one user's rows: each test has its own role, so this isolates it."""
    return {b.application_name: b.count for b in backends if b.usename == usename}


def assert_no_secret(err: DatabaseError, secret: str, caplog: pytest.LogCaptureFixture) -> None:
    assert secret not in str(err)
    assert secret not in repr(err)
    assert secret not in err.reason
    assert secret not in caplog.text
    assert err.__cause__ is None  # the driver's raw text is not chained to it
    assert err.__suppress_context__


# --- limits -------------------------------------------------------------------------------------------


@needs_postgres
async def test_reads_max_connections_and_superuser_reserved(
    pg60: PostgresServer, pg100: PostgresServer
) -> None:
    limits60 = await read_limits(pg60.url())
    limits100 = await read_limits(pg100.url())

    assert (limits60.max_connections, limits60.superuser_reserved, limits60.source) == (60, 3, "database")
    assert limits100.max_connections == 100


@needs_postgres
async def test_reserved_connections_reads_zero_where_the_server_has_no_such_setting(
    pg100: PostgresServer,
) -> None:
    has_setting = pg100.execute("SELECT count(*) FROM pg_settings WHERE name = 'reserved_connections'")[0][0]
    version = int(pg100.execute("SHOW server_version_num")[0][0])

    limits = await read_limits(pg100.url())

    if version < 160000:
        assert has_setting == 0  # PostgreSQL 15: the setting does not exist, and the adapter did not guess it
        assert limits.reserved_connections == 0
    else:
        expected = int(pg100.execute("SHOW reserved_connections")[0][0])
        assert limits.reserved_connections == expected


@needs_postgres
async def test_role_connection_limit_of_the_connecting_role_and_of_a_named_role(role: Role) -> None:
    server = role.server
    assert (await read_limits(role.url())).rolconnlimit == -1

    server.execute(f'ALTER ROLE "{role.name}" CONNECTION LIMIT 7')

    assert (await read_limits(role.url())).rolconnlimit == 7
    # The operator may connect as its own role and ask about the apps' role.
    assert (await read_limits(server.url(), role=role.name)).rolconnlimit == 7


@needs_postgres
async def test_database_connection_limit_of_the_connected_database(role: Role, database: str) -> None:
    server = role.server
    server.execute(f'ALTER DATABASE "{database}" CONNECTION LIMIT 12')

    assert (await read_limits(role.url(dbname=database))).datconnlimit == 12
    assert (await read_limits(role.url(dbname="postgres"))).datconnlimit == -1


@needs_postgres
async def test_limits_that_do_not_bind_a_superuser_read_as_none(pg100: PostgresServer, database: str) -> None:
    boss = _unique("boss")
    pg100.create_role(boss, password=ROLE_PASSWORD, connection_limit=1, superuser=True)
    pg100.execute(f'ALTER DATABASE "{database}" CONNECTION LIMIT 1')
    url = pg100.url(boss, ROLE_PASSWORD, database)
    try:
        limits = await read_limits(url)
        # PostgreSQL agrees: a superuser opens more connections than either limit says.
        async with connections(url, "boss", 3):
            pass
    finally:
        pg100.execute(f'DROP ROLE "{boss}"')
    assert (limits.datconnlimit, limits.rolconnlimit) == (-1, -1)


@needs_postgres
async def test_compute_available_on_the_read_facts_equals_the_hand_computation(
    role: Role, database: str
) -> None:
    server = role.server
    free = await read_limits(role.url(dbname=database))
    assert compute_available(free, reserved=5, unmanaged=2).available == 100 - 3 - 0 - 5 - 2  # 90

    server.execute(f'ALTER DATABASE "{database}" CONNECTION LIMIT 40')
    by_database = compute_available(await read_limits(role.url(dbname=database)), reserved=5, unmanaged=2)
    assert (by_database.available, by_database.bound_by) == (40, "datconnlimit 40")

    server.execute(f'ALTER ROLE "{role.name}" CONNECTION LIMIT 25')
    by_role = compute_available(await read_limits(role.url(dbname=database)), reserved=5, unmanaged=2)
    assert (by_role.available, by_role.bound_by) == (25, "rolconnlimit 25")
    assert by_role.reason == "100 max_connections - 3 superuser_reserved - 5 spec.reserved - 2 unmanaged" + (
        "; bound by rolconnlimit 25 = 25"
    )


@needs_postgres
async def test_the_adapter_names_its_own_connection(role: Role) -> None:
    await read_limits(role.url())
    # The test server runs with log_connections=on: the log names each session's user and application_name.
    authorized = f"connection authorized: user={role.name} database=postgres"
    assert f"{authorized} application_name={OPERATOR_APPLICATION_NAME}" in role.server.log_tail(lines=10_000)


PG_DATABASE_OID = 1262  # pg_database's fixed OID: a lock on it holds up every new session's start-up


@contextlib.contextmanager
def catalog_locked(server: PostgresServer) -> Iterator[Callable[[], int]]:
    """Hold pg_database in ACCESS EXCLUSIVE mode; yield a probe counting sessions waiting for it."""
    # Opened before the lock: a new session could not even start, and pg_locks needs no catalog to read.
    with psycopg.connect(server.url(), autocommit=True, connect_timeout=5) as observer:
        observer.execute("SET statement_timeout = 5000")
        with psycopg.connect(server.url(), connect_timeout=5) as locker:
            locker.execute("SET statement_timeout = 5000")
            locker.execute("LOCK TABLE pg_database IN ACCESS EXCLUSIVE MODE")
            sql = "SELECT count(*) FROM pg_locks WHERE relation = %s AND NOT granted"
            yield lambda: int(observer.execute(sql, [PG_DATABASE_OID]).fetchone()[0])  # type: ignore[index]
            locker.rollback()


@needs_postgres
async def test_a_server_slow_to_answer_is_waited_for_within_the_timeout(role: Role) -> None:
    with catalog_locked(role.server) as waiting:
        read = asyncio.create_task(read_limits(role.url(), timeout=10))
        assert await _eventually(lambda: waiting() == 1)
        assert not read.done()
    limits = await asyncio.wait_for(read, timeout=10)  # the lock is gone: the same read now answers
    assert limits.max_connections == 100


async def _eventually(condition: Callable[[], bool], within: float = 5.0) -> bool:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


# --- least privilege and pg_stat_activity ------------------------------------------------------------


@needs_postgres
async def test_a_plain_login_role_without_grants_reads_everything(role: Role) -> None:
    server = role.server
    memberships = server.execute(
        "SELECT count(*) FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.member WHERE r.rolname = %s",
        [role.name],
    )
    assert memberships == [(0,)]  # no pg_monitor, no pg_read_all_stats, nothing

    limits = await read_limits(role.url())
    async with connections(server.url(), "someone-else", 2):
        seen = await read_client_backends(role.url())

    assert limits == DatabaseLimits(100, 3, 0, -1, -1, "database")
    # Another role's sessions: user and application_name visible, backend_type and state hidden, so `inferred`
    # and counted in use (they are idle: the safe side of not knowing).
    assert BackendCount("postgres", "someone-else", 2, in_use=2, inferred=True) in seen


DOCS_DATABASE = Path(__file__).resolve().parent.parent / "docs" / "database.md"


def docs_role_recipe() -> str:
    """The ```sql block of docs/database.md that creates the operator's role."""
    blocks = re.findall(r"^```sql\n(.*?)^```$", DOCS_DATABASE.read_text(), flags=re.MULTILINE | re.DOTALL)
    recipes = [block for block in blocks if block.startswith("-- the operator's role")]
    assert len(recipes) == 1, "docs/database.md: one ```sql block must start with -- the operator's role"
    return str(recipes[0])


@needs_postgres
async def test_the_role_recipe_in_the_docs_reads_everything(pg100: PostgresServer) -> None:
    recipe = docs_role_recipe()
    name = _unique("poolbudget")
    pg100.execute(recipe.replace("ROLE poolbudget", f'ROLE "{name}"'))
    url = pg100.url(name, re.findall(r"PASSWORD '([^']*)'", recipe)[0])
    try:
        limits = await read_limits(url)
        async with connections(pg100.url(), "someone-else", 1):
            seen = await read_client_backends(url)
    finally:
        pg100.execute(f'DROP ROLE "{name}"')
    assert limits.max_connections == 100
    assert BackendCount("postgres", "someone-else", 1, in_use=1, inferred=True) in seen


@needs_postgres
async def test_client_backends_are_grouped_by_user_and_application_name(role: Role) -> None:
    server = role.server
    async with connections(role.url(), "shop/web", 3), connections(role.url(), "shop/worker", 2):
        as_superuser = await read_client_backends(server.url())
        as_the_role = await read_client_backends(role.url())

    expected = {"shop/web": 3, "shop/worker": 2}
    assert by_user(as_superuser, role.name) == expected
    assert by_user(as_the_role, role.name) == expected  # a role always sees its own sessions in full
    assert all(not b.inferred for b in as_superuser)
    # The adapter's own connection is never in what it reports.
    assert all(b.application_name != OPERATOR_APPLICATION_NAME for b in as_superuser + as_the_role)


@needs_postgres
async def test_in_use_counts_what_is_not_idle(role: Role) -> None:
    # A pool's checked-out connection holds a transaction ("idle in transaction"), a query runs ("active"),
    # a connection back in its pool is "idle": open, not in use.
    async with (
        connections(role.url(), "shop/web", 3),
        await psycopg.AsyncConnection.connect(role.url(), application_name="shop/web") as checked_out,
        await psycopg.AsyncConnection.connect(role.url(), application_name="shop/web") as querying,
    ):
        await checked_out.execute("SELECT 1")  # and the transaction stays open
        running = asyncio.create_task(querying.execute("SELECT pg_sleep(30)"))
        try:
            await until_active(role.server, "shop/web")
            seen = await read_client_backends(role.url())
        finally:
            await querying.cancel_safe()
            with contextlib.suppress(psycopg.errors.QueryCanceled):
                await running
    assert [b for b in seen if b.usename == role.name] == [BackendCount(role.name, "shop/web", 5, in_use=2)]


@needs_postgres
async def test_pg_monitor_gives_exact_counts_of_other_roles(role: Role) -> None:
    server = role.server
    server.execute(f'GRANT pg_monitor TO "{role.name}"')
    async with connections(server.url(), "someone-else", 2):
        seen = await read_client_backends(role.url())
    assert BackendCount("postgres", "someone-else", 2, in_use=0, inferred=False) in seen  # idle, and seen so


@needs_postgres
async def test_unmanaged_connections_from_real_backends(role: Role) -> None:
    server = role.server
    long_name = f"{'n' * 40}/{'d' * 40}"  # 81 bytes: PostgreSQL keeps 63
    async with (
        connections(role.url(), "shop/web", 3),
        connections(role.url(), long_name, 2),
        connections(role.url(), "psql", 1),
        connections(role.url(), "", 2),
    ):
        seen = [b for b in await read_client_backends(server.url()) if b.usename == role.name]

    cut = reported_application_name(long_name)
    assert {b.application_name for b in seen} == {"shop/web", cut, "psql", ""}
    # psql's 1 and the 2 unnamed ones are unmanaged; the long name matches once cut as PostgreSQL cuts it.
    assert unmanaged_connections(seen, {"shop/web", long_name}, margin=2) == 1 + 2 + 2


# --- failures: typed, and never with the password ----------------------------------------------------


@pytest.fixture
def debug_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """Capture every logger at DEBUG (psycopg's included), so a leak anywhere would show."""
    caplog.set_level(logging.DEBUG)
    return caplog


@needs_postgres
async def test_nothing_listening_is_unreachable(debug_logs: pytest.LogCaptureFixture) -> None:
    port = free_port()
    url = f"postgresql://app:{ROLE_PASSWORD}@127.0.0.1:{port}/shop"

    with pytest.raises(DatabaseUnreachable) as caught:
        await read_limits(url, timeout=2)

    err = caught.value
    assert (err.host, err.port, err.dbname, err.user) == ("127.0.0.1", str(port), "shop", "app")
    assert f"app@127.0.0.1:{port}/shop" in str(err)
    assert "Connection refused" in str(err)
    assert_no_secret(err, ROLE_PASSWORD, debug_logs)


@needs_postgres
async def test_wrong_password_is_auth_failed(role: Role, debug_logs: pytest.LogCaptureFixture) -> None:
    wrong = "wrong-Pa55word-deadbeef"

    with pytest.raises(DatabaseAuthFailed) as caught:
        await read_limits(role.url(password=wrong))

    err = caught.value
    assert f'password authentication failed for user "{role.name}"' in str(err)
    assert_no_secret(err, wrong, debug_logs)
    assert_no_secret(err, role.password, debug_logs)


@needs_postgres
async def test_unknown_role_is_auth_failed(
    pg100: PostgresServer, debug_logs: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(DatabaseAuthFailed) as caught:
        await read_client_backends(pg100.url("nobody", ROLE_PASSWORD))
    assert_no_secret(caught.value, ROLE_PASSWORD, debug_logs)


@needs_postgres
async def test_unknown_named_role_and_unknown_database_are_query_failures(
    role: Role, debug_logs: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(DatabaseQueryFailed, match="role 'nobody' does not exist"):
        await read_limits(role.url(), role="nobody")
    with pytest.raises(DatabaseQueryFailed, match='database "nowhere" does not exist') as caught:
        await read_limits(role.url(dbname="nowhere"))
    assert_no_secret(caught.value, role.password, debug_logs)


@needs_postgres
async def test_a_full_role_is_unreachable_with_the_servers_words(
    role: Role, debug_logs: pytest.LogCaptureFixture
) -> None:
    role.server.execute(f'ALTER ROLE "{role.name}" CONNECTION LIMIT 2')
    async with connections(role.url(), "shop/web", 2):
        with pytest.raises(DatabaseUnreachable) as caught:
            await read_limits(role.url())
    assert f'FATAL:  too many connections for role "{role.name}"' in str(caught.value)
    assert_no_secret(caught.value, role.password, debug_logs)


@needs_postgres
async def test_a_server_that_never_answers_times_out(debug_logs: pytest.LogCaptureFixture) -> None:
    # Accepts the TCP connection, then never says a word: the adapter must give up on its own.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        started = time.monotonic()
        with pytest.raises(DatabaseUnreachable, match=r"timed out after 0\.3 s") as caught:
            await read_limits(f"postgresql://app:{ROLE_PASSWORD}@127.0.0.1:{port}/shop", timeout=0.3)
        elapsed = time.monotonic() - started
    assert elapsed < 1.5
    assert_no_secret(caught.value, ROLE_PASSWORD, debug_logs)


@needs_postgres
async def test_a_server_that_does_not_answer_in_time_times_out(
    role: Role, debug_logs: pytest.LogCaptureFixture
) -> None:
    with catalog_locked(role.server):
        started = time.monotonic()
        with pytest.raises(DatabaseUnreachable, match=r"timed out after 0\.5 s") as caught:
            await read_limits(role.url(), timeout=0.5)
        elapsed = time.monotonic() - started
    assert elapsed < 1.5
    assert_no_secret(caught.value, role.password, debug_logs)


async def test_an_unparsable_url_is_invalid_and_not_repeated(debug_logs: pytest.LogCaptureFixture) -> None:
    url = f"host=db password={ROLE_PASSWORD} =broken"
    with pytest.raises(DatabaseURLInvalid) as caught:
        await read_limits(url)
    assert_no_secret(caught.value, ROLE_PASSWORD, debug_logs)


# --- pure helpers ----------------------------------------------------------------------------------


def test_redact_url_masks_the_password_and_keeps_the_rest() -> None:
    url = f"postgresql://app:{ROLE_PASSWORD}@db.shop.svc:5433/orders?sslmode=require&application_name=x"
    assert (
        redact_url(url) == "postgresql://app:***@db.shop.svc:5433/orders?application_name=x&sslmode=require"
    )
    assert redact_url(f"host=/run/pg user=app password={ROLE_PASSWORD} dbname=orders") == (
        "postgresql://app:***@%2Frun%2Fpg/orders"
    )
    assert redact_url("postgresql://app@db/orders") == "postgresql://app@db/orders"
    assert redact_url(f"not a url {ROLE_PASSWORD} = =") == "<invalid database URL>"


def test_sanitise_masks_secrets_password_pairs_and_url_credentials() -> None:
    text = f"failed: {ROLE_PASSWORD} password='x y' postgresql://app:hunter2@db/orders"
    assert sanitise(text, (ROLE_PASSWORD,)) == "failed: *** password=*** postgresql://app:***@db/orders"
    # A one-letter secret is masked where it stands alone, not inside every word.
    message = 'too many connections for role "app" a'
    assert sanitise(message, ("a",)) == 'too many connections for role "app" ***'


def test_unmanaged_counts_every_other_name_and_adds_the_margin() -> None:
    seen = [
        BackendCount("app", "shop/web", 10),
        BackendCount("app", "shop/worker", 4),
        BackendCount("app", "", 3),
        BackendCount("admin", "psql", 1),
        BackendCount("operator", OPERATOR_APPLICATION_NAME, 1),
    ]
    assert unmanaged_connections(seen, {"shop/web", "shop/worker"}, margin=0) == 4
    assert unmanaged_connections(seen, {"shop/web"}, margin=5) == 4 + 4 + 5
    assert unmanaged_connections([], set(), margin=2) == 2
    with pytest.raises(ValueError, match="margin"):
        unmanaged_connections(seen, set(), margin=-1)


def test_reported_application_name_is_cut_like_postgresql_cuts_it() -> None:
    assert reported_application_name("shop/web") == "shop/web"
    assert reported_application_name("x" * 80) == "x" * 63
    assert reported_application_name("é" * 40) == "é" * 31  # 62 bytes: never half a character
