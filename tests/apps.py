"""Simulated apps: how each real app builds its pools from its env, written out independently of the profiles.

The proof test and `bench/scale_trace.py` build real SQLAlchemy / psycopg_pool pools from these shapes, so the
numbers poolbudget writes are checked the way the apps themselves would read them (defaults included), not by
poolbudget's own `Profile.read`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class PoolShape:
    """One pool an app process builds: a SQLAlchemy QueuePool engine or a psycopg_pool.ConnectionPool."""

    kind: str  # "queuepool" or "psycopg_pool"
    size: int  # pool_size, or min_size
    overflow: int  # max_overflow, or max_size - min_size
    timeout: float

    @property
    def most(self) -> int:
        """The most connections this pool opens."""
        return self.size + self.overflow


def sqlalchemy_app(env: Mapping[str, str]) -> list[PoolShape]:
    """Seed 001's backend: ``create_engine(pool_size=int(os.getenv("DB_POOL_SIZE", 5)), ...)``."""
    size, overflow = int(env.get("DB_POOL_SIZE", "5")), int(env.get("DB_MAX_OVERFLOW", "10"))
    return [PoolShape("queuepool", size, overflow, float(env.get("DB_POOL_TIMEOUT", "30")))]


def langflow_app(env: Mapping[str, str]) -> list[PoolShape]:
    """Langflow: its JSON replaces the whole default dict (keys it leaves out fall to SQLAlchemy's own
    defaults); the deprecated variables override the JSON."""
    defaults = {"pool_size": 20, "max_overflow": 30, "pool_timeout": 30}
    raw = env.get("LANGFLOW_DB_CONNECTION_SETTINGS")
    settings = json.loads(raw) if raw else defaults
    size = int(env.get("LANGFLOW_POOL_SIZE", settings.get("pool_size", 5)))
    overflow = int(env.get("LANGFLOW_MAX_OVERFLOW", settings.get("max_overflow", 10)))
    return [PoolShape("queuepool", size, overflow, float(settings.get("pool_timeout", 30)))]


def letta_app(env: Mapping[str, str]) -> list[PoolShape]:
    """Letta (seed 003): ``pg_pool_size`` 25, ``pg_max_overflow`` 10 unless set; a NullPool unless pooling is on."""
    if env.get("LETTA_DISABLE_SQLALCHEMY_POOLING", "true").lower() != "false":
        raise ValueError("Letta runs a NullPool here: no pool size bounds it")
    size, overflow = int(env.get("LETTA_PG_POOL_SIZE", "25")), int(env.get("LETTA_PG_MAX_OVERFLOW", "10"))
    return [PoolShape("queuepool", size, overflow, float(env.get("LETTA_PG_POOL_TIMEOUT", "30")))]


def airflow_app(env: Mapping[str, str]) -> list[PoolShape]:
    """Airflow 3: [database] sql_alchemy_pool_size / max_overflow, for a sync and an async engine per process."""
    size = int(env.get("AIRFLOW__DATABASE__SQL_ALCHEMY_POOL_SIZE", "5"))
    overflow = int(env.get("AIRFLOW__DATABASE__SQL_ALCHEMY_MAX_OVERFLOW", "10"))
    return [PoolShape("queuepool", size, overflow, 30.0)] * 2


def psycopg_pool_app(env: Mapping[str, str]) -> list[PoolShape]:
    """Seed 002: ``ConnectionPool(min_size, max_size, timeout)``; max_size defaults to min_size (4)."""
    min_size = int(env.get("DB_POOL_MIN_SIZE", "4"))
    max_size = int(env.get("DB_POOL_MAX_SIZE", str(min_size)))
    return [
        PoolShape(
            "psycopg_pool", min_size, max(0, max_size - min_size), float(env.get("DB_POOL_TIMEOUT", "30"))
        )
    ]


APPS: dict[str, Callable[[Mapping[str, str]], list[PoolShape]]] = {
    "sqlalchemy": sqlalchemy_app,
    "langflow": langflow_app,
    "letta": letta_app,
    "airflow": airflow_app,
    "psycopg-pool": psycopg_pool_app,
}
