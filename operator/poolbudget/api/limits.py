"""A database's connection limits, as the PostgreSQL adapter reads them and the planner uses them."""

from __future__ import annotations

from dataclasses import dataclass

# PostgreSQL's default superuser_reserved_connections, assumed when the server cannot be asked.
DEFAULT_SUPERUSER_RESERVED = 3


@dataclass(frozen=True, slots=True)
class DatabaseLimits:
    """The connection limits of one database as read from the server (or declared when it cannot be)."""

    max_connections: int
    superuser_reserved: int = DEFAULT_SUPERUSER_RESERVED
    reserved_connections: int = 0  # PostgreSQL 16+ `reserved_connections`; 0 before 16
    datconnlimit: int = -1  # -1 means no limit, as in pg_database
    rolconnlimit: int = -1  # -1 means no limit, as in pg_roles
    source: str = "spec"  # "database", "spec" (spec.database.maxConnections) or "flag" (--max-connections)
