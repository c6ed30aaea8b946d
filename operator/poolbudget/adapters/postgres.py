"""Read a PostgreSQL server's connection limits and its client backends with psycopg's async API.

Facts only: this module knows nothing of budgets or plans. Every read opens one short connection, named
:data:`OPERATOR_APPLICATION_NAME` in ``pg_stat_activity``, bounded by ``timeout`` from the first packet to the
last row, and closed before returning. Everything read here is visible to a plain LOGIN role without grants
(see ``docs/database.md``). Errors are typed (:class:`DatabaseError` and its subclasses) and their messages
name host, port, database and user, never the URL or the password.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import re
import urllib.parse
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
import psycopg.conninfo
import psycopg.errors

from poolbudget.api.annotations import OPERATOR_APPLICATION_NAME
from poolbudget.api.limits import DatabaseLimits

__all__ = [
    "OPERATOR_APPLICATION_NAME",
    "BackendCount",
    "DatabaseAuthFailed",
    "DatabaseError",
    "DatabaseQueryFailed",
    "DatabaseURLInvalid",
    "DatabaseUnreachable",
    "read_client_backends",
    "read_limits",
    "redact_url",
    "sanitise",
]

logger = logging.getLogger(__name__)

# libpq counts connect_timeout in whole seconds, at least 2; asyncio.timeout bounds the rest.
_MIN_CONNECT_TIMEOUT = 2

# Connection parameters whose values are secrets and never leave this module.
_SECRET_PARAMS = ("password", "sslpassword")
_SHORT_SECRET = 4  # below this length a secret is masked only where it stands alone

# Server messages that mean "who you are was refused", as opposed to "the server is not there".
_AUTH_FAILURE = re.compile(
    r"password authentication failed|no password supplied|pg_hba\.conf|authentication failed"
    r'|role "[^"]*" (does not exist|is not permitted to log in)|permission denied for database',
    re.IGNORECASE,
)
# Connected and authenticated, but the URL names something the server does not have.
_MISCONFIGURED = re.compile(r'database "[^"]*" does not exist', re.IGNORECASE)

_SETTINGS_SQL = """
SELECT name, setting FROM pg_settings
WHERE name IN ('max_connections', 'superuser_reserved_connections', 'reserved_connections')
"""
_DATABASE_SQL = "SELECT datconnlimit FROM pg_database WHERE datname = current_database()"
_ROLE_SQL = "SELECT rolconnlimit, rolsuper FROM pg_roles WHERE rolname = coalesce(%s, session_user)"
# Without pg_read_all_stats, other roles' backend_type and state read NULL: a row with a user and a database
# counts as a client backend then (it may be a parallel or logical-replication worker), and as in use: both err
# on the safe side.
_BACKENDS_SQL = """
SELECT usename, application_name, count(*) AS backends,
       count(*) FILTER (WHERE state IS DISTINCT FROM 'idle') AS in_use,
       bool_or(backend_type IS NULL) AS inferred
FROM pg_stat_activity
WHERE pid <> pg_backend_pid()
  AND (backend_type = 'client backend'
       OR (backend_type IS NULL AND usename IS NOT NULL AND datname IS NOT NULL))
GROUP BY usename, application_name
ORDER BY usename, application_name
"""


class DatabaseError(Exception):
    """The database could not tell us what we asked. The message names host, port, database and user only."""

    def __init__(
        self,
        message: str,
        *,
        host: str = "",
        port: str = "",
        dbname: str = "",
        user: str = "",
        reason: str = "",
    ) -> None:
        super().__init__(message)
        self.host = host
        self.port = port
        self.dbname = dbname
        self.user = user
        self.reason = reason


class DatabaseUnreachable(DatabaseError):
    """No answer: connection refused, unknown host, no free connection slot, no reply within the timeout."""


class DatabaseAuthFailed(DatabaseError):
    """The server refused the credentials: wrong password, unknown role, no pg_hba.conf entry."""


class DatabaseQueryFailed(DatabaseError):
    """Connected, but a query failed or returned something unexpected (e.g. the named role does not exist)."""


class DatabaseURLInvalid(DatabaseError):
    """The URL (or key=value string) does not parse; its text is not repeated: it may hold a secret."""


@dataclass(frozen=True, slots=True)
class BackendCount:
    """Client backends in ``pg_stat_activity`` with one (user, application_name).

    ``count`` is every such backend, open; ``in_use`` those not ``idle`` (running a query, or holding a
    transaction open, as a pool's checked-out connection does). ``inferred`` is True when the server hid these
    rows' ``backend_type`` and ``state`` from us (another role's sessions and no ``pg_read_all_stats``): they
    were counted because they have a user and a database, and counted in use because nothing says otherwise.
    """

    usename: str
    application_name: str
    count: int
    in_use: int = 0
    inferred: bool = False


@dataclass(frozen=True, slots=True)
class _Target:
    """Where a URL points (what error messages may name) and the secrets it carries (what they must not)."""

    conninfo: str
    host: str
    port: str
    dbname: str
    user: str
    secrets: tuple[str, ...]

    def describe(self) -> str:
        return f"{self.user or '?'}@{self.host or 'localhost'}:{self.port or '5432'}/{self.dbname or '?'}"


def redact_url(url: str) -> str:
    """``url`` fit for a log line: the password (and sslpassword) replaced by ``***``, everything else kept.

    Accepts a ``postgresql://`` URL or a ``key=value`` connection string and returns a URL either way, or
    ``<invalid database URL>`` when it does not parse (its text is not repeated: it may hold a secret).
    """
    try:
        params = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.Error:
        return "<invalid database URL>"
    return _as_url({name: "***" if name in _SECRET_PARAMS else str(value) for name, value in params.items()})


def _as_url(params: Mapping[str, str]) -> str:
    rest = dict(params)
    user, password = rest.pop("user", ""), rest.pop("password", None)
    host, port, dbname = rest.pop("host", ""), rest.pop("port", ""), rest.pop("dbname", "")
    credentials = _quote(user) + (f":{password}" if password is not None else "")
    netloc = (credentials + "@" if credentials else "") + (_quote(host) if "/" in host else host)
    netloc += f":{port}" if port else ""
    query = urllib.parse.urlencode(sorted(rest.items()), safe="*")
    return f"postgresql://{netloc}/{_quote(dbname)}" + (f"?{query}" if query else "")


def _quote(text: str) -> str:
    return urllib.parse.quote(text, safe="")


def _target(url: str) -> _Target:
    try:
        params = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.Error:
        raise DatabaseURLInvalid("invalid database URL (not repeated: it may hold a password)") from None
    secrets = [str(params[name]) for name in _SECRET_PARAMS if params.get(name)]
    secrets += [os.environ[name] for name in ("PGPASSWORD", "PGSSLPASSWORD") if os.environ.get(name)]
    return _Target(
        conninfo=url,
        host=str(params.get("host") or os.environ.get("PGHOST", "")),
        port=str(params.get("port") or os.environ.get("PGPORT", "")),
        dbname=str(params.get("dbname") or os.environ.get("PGDATABASE", "")),
        user=str(params.get("user") or os.environ.get("PGUSER", "")),
        secrets=tuple(sorted(set(secrets), key=len, reverse=True)),
    )


def sanitise(text: str, secrets: tuple[str, ...] = ()) -> str:
    """``text`` with every secret, any ``password=...`` pair and any ``user:password@`` in a URL masked."""
    for secret in secrets:
        for form in {secret, urllib.parse.quote(secret, safe="")}:
            # A secret this short is no secret, and masking it everywhere would garble the message.
            if len(form) < _SHORT_SECRET:
                text = re.sub(rf"(?<!\w){re.escape(form)}(?!\w)", "***", text)
            else:
                text = text.replace(form, "***")
    text = re.sub(r"(?i)\b(ssl)?password\s*=\s*('(?:[^'\\]|\\.)*'|\S+)", r"\1password=***", text)
    return re.sub(r"(?i)(postgres(?:ql)?://[^:/@\s]*):[^@\s]*@", r"\1:***@", text)


def _reason(exc: BaseException, target: _Target) -> str:
    # libpq prefixes "connection failed: connection to server at ... failed: "; keep the server's own words.
    text = str(exc).strip() or type(exc).__name__
    text = re.sub(r"^connection failed: (connection to server at [^\n]*? failed: )?", "", text)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return sanitise(" ".join(lines), target.secrets)


def _error(kind: type[DatabaseError], what: str, target: _Target, reason: str) -> DatabaseError:
    return kind(
        f"{what} {target.describe()}: {reason}",
        host=target.host,
        port=target.port,
        dbname=target.dbname,
        user=target.user,
        reason=reason,
    )


def _classify_connect_failure(exc: psycopg.Error, target: _Target) -> DatabaseError:
    # Full servers ("too many clients", "too many connections for role") count as unreachable: no slot for us.
    reason = _reason(exc, target)
    if _AUTH_FAILURE.search(reason):
        return _error(DatabaseAuthFailed, "authentication failed for", target, reason)
    if _MISCONFIGURED.search(reason) or not isinstance(exc, psycopg.OperationalError):
        return _error(DatabaseQueryFailed, "cannot connect to", target, reason)
    return _error(DatabaseUnreachable, "cannot reach", target, reason)


@asynccontextmanager
async def _connection(target: _Target, seconds: float) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    """One short connection, named for pg_stat_activity; the server also caps statements at ``seconds``."""
    statement_ms = max(1, math.ceil(seconds * 1000))
    try:
        conn = await psycopg.AsyncConnection.connect(
            target.conninfo,
            autocommit=True,
            connect_timeout=max(_MIN_CONNECT_TIMEOUT, math.ceil(seconds)),
            application_name=OPERATOR_APPLICATION_NAME,
            options=f"-c statement_timeout={statement_ms}",
        )
    except psycopg.Error as exc:
        raise _classify_connect_failure(exc, target) from None
    try:
        yield conn
    finally:
        await conn.close()


@asynccontextmanager
async def _bounded(target: _Target, what: str, seconds: float) -> AsyncIterator[None]:
    """Turn timeouts and driver errors in the block into typed, sanitised errors, unchained (no raw text)."""
    try:
        async with asyncio.timeout(seconds):
            yield
    except DatabaseError:
        raise
    except TimeoutError:
        reason = f"timed out after {seconds:g} s"
        raise _error(DatabaseUnreachable, "no answer from", target, reason) from None
    except psycopg.errors.QueryCanceled as exc:
        # statement_timeout fired: the server is there but did not answer in time.
        raise _error(
            DatabaseUnreachable,
            "no answer within",
            target,
            f"timed out after {seconds:g} s ({_reason(exc, target)})",
        ) from None
    except psycopg.OperationalError as exc:
        raise _error(DatabaseUnreachable, "lost connection to", target, _reason(exc, target)) from None
    except psycopg.Error as exc:
        raise _error(DatabaseQueryFailed, f"{what} failed on", target, _reason(exc, target)) from None


# `timeout` is part of the adapter's contract (callers pass it), hence ASYNC109's noqa below.
async def read_limits(url: str, *, role: str | None = None, timeout: float = 5.0) -> DatabaseLimits:  # noqa: ASYNC109
    """The connection limits of the database ``url`` names, read from the server.

    ``max_connections``, ``superuser_reserved_connections`` and, when the server has it (PostgreSQL 16+),
    ``reserved_connections`` from ``pg_settings``; ``datconnlimit`` of the connected database;
    ``rolconnlimit`` of ``role`` (the apps' role), or of the connecting role when ``role`` is None.
    PostgreSQL applies neither connection limit to superusers: both read -1 (none) for a superuser role.

    Raises :class:`DatabaseUnreachable`, :class:`DatabaseAuthFailed`, :class:`DatabaseQueryFailed` or
    :class:`DatabaseURLInvalid`; ``timeout`` (seconds) bounds the whole read.
    """
    target = _target(url)
    async with _bounded(target, "reading limits", timeout), _connection(target, timeout) as conn:
        settings = {name: int(value) for name, value in await _fetch(conn, _SETTINGS_SQL)}
        database_rows = await _fetch(conn, _DATABASE_SQL)
        role_rows = await _fetch(conn, _ROLE_SQL, (role,))
    if "max_connections" not in settings or not database_rows:
        reason = "pg_settings or pg_database returned no row"
        raise _error(DatabaseQueryFailed, "reading limits failed on", target, reason)
    if not role_rows:
        raise _error(DatabaseQueryFailed, "reading limits failed on", target, f"role {role!r} does not exist")
    datconnlimit, (rolconnlimit, rolsuper) = int(database_rows[0][0]), role_rows[0]
    limits = DatabaseLimits(
        max_connections=settings["max_connections"],
        superuser_reserved=settings.get("superuser_reserved_connections", 0),
        reserved_connections=settings.get("reserved_connections", 0),  # absent before PostgreSQL 16
        datconnlimit=-1 if rolsuper else datconnlimit,
        rolconnlimit=-1 if rolsuper else int(rolconnlimit),
        source="database",
    )
    logger.debug("read limits from %s: %s", target.describe(), limits)
    return limits


async def read_client_backends(url: str, *, timeout: float = 5.0) -> list[BackendCount]:  # noqa: ASYNC109
    """Client backends now in ``pg_stat_activity``, grouped by (usename, application_name), sorted, with
    how many of them are in use.

    The adapter's own connection is left out. A plain role sees other roles' rows with their user and
    application_name but not their ``backend_type``: see :class:`BackendCount`'s ``inferred`` and
    ``docs/database.md`` (``pg_monitor`` gives exact counts). Raises like :func:`read_limits`.
    """
    target = _target(url)
    async with _bounded(target, "reading pg_stat_activity", timeout), _connection(target, timeout) as conn:
        rows = await _fetch(conn, _BACKENDS_SQL)
    return [
        BackendCount(str(user), str(app or ""), int(n), int(busy), bool(inferred))
        for user, app, n, busy, inferred in rows
    ]


async def _fetch(
    conn: psycopg.AsyncConnection[Any], sql: str, params: tuple[Any, ...] | None = None
) -> list[tuple[Any, ...]]:
    cursor = await conn.execute(sql, params)
    return list(await cursor.fetchall())
