"""``unmanaged`` in SPEC.md's budget: client connections that no opted-in Deployment owns.

The operator injects ``PGAPPNAME=<namespace>/<deployment>`` into every opted-in container, so libpq-based
drivers (psycopg 2 and 3, anything over libpq) report that name as ``application_name`` in
``pg_stat_activity``. Backends under any other name (a psql session, a cron job, an app outside the budget)
are unmanaged: they take slots the budget cannot give out. Drivers that do not read ``PGAPPNAME`` (asyncpg,
pgjdbc/HikariCP) show up as unmanaged unless the app sets ``application_name`` itself: their connections
are then counted twice, once allocated and once unmanaged; safe, but wasteful (``docs/database.md``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from poolbudget.api.allotment import parse_tag
from poolbudget.api.annotations import OPERATOR_APPLICATION_NAME

# PostgreSQL keeps at most NAMEDATALEN - 1 bytes of application_name in pg_stat_activity.
APPLICATION_NAME_MAX_BYTES = 63


class ObservedBackends(Protocol):
    """Client backends seen under one application_name (``adapters.postgres.BackendCount`` is one)."""

    @property
    def application_name(self) -> str: ...

    @property
    def count(self) -> int: ...


def reported_application_name(name: str) -> str:
    """``name`` as ``pg_stat_activity`` reports it: cut to 63 bytes, never inside a character."""
    encoded = name.encode("utf-8")
    if len(encoded) <= APPLICATION_NAME_MAX_BYTES:
        return name
    return encoded[:APPLICATION_NAME_MAX_BYTES].decode("utf-8", errors="ignore")


def managed_application_name(namespace: str, deployment: str) -> str:
    """The ``PGAPPNAME`` the operator injects into an opted-in Deployment's containers."""
    return f"{namespace}/{deployment}"


def unmanaged_connections(
    backends: Iterable[ObservedBackends],
    managed_application_names: set[str],
    margin: int,
    managed_pods: frozenset[str] = frozenset(),
) -> int:
    """Client backends no managed app owns, plus ``margin``.

    A backend is managed when its ``application_name`` is one of ``managed_application_names`` (compared as
    PostgreSQL reports them, cut to 63 bytes), or carries the live-delivery tag of one of ``managed_pods``
    (their 12-hex tag ids: the app's name in front of the tag may be cut); the operator's own connections are
    never counted. ``margin``
    (>= 0) is added as is, for connections that come and go between two reads of ``pg_stat_activity``.
    """
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    managed = {reported_application_name(name) for name in managed_application_names}
    managed.add(OPERATOR_APPLICATION_NAME)
    return margin + sum(
        b.count
        for b in backends
        if b.application_name not in managed and not _tagged_by(b.application_name, managed_pods)
    )


def _tagged_by(application_name: str, pods: frozenset[str]) -> bool:
    if not pods:
        return False
    tag = parse_tag(application_name)
    return tag is not None and tag.pod in pods
