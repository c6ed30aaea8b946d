"""Profiles whose app reads one env variable per setting: each is a table of names and the app's defaults."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from poolbudget.api.models import ProfileName
from poolbudget.profiles.base import PoolSettings, Profile, parse_int

# SQLAlchemy's create_engine defaults: pool_size 5, max_overflow 10, pool_timeout 30, no recycle.
ENGINE_DEFAULTS = PoolSettings(5, 10, 30, -1)


@dataclass(frozen=True, slots=True)
class EnvTable:
    """Which env variable carries which setting, and what the app assumes when it is unset.

    ``max_size`` names the variable for pools without overflow (max_size = pool_size + max_overflow); then
    ``pool_size`` names the persistent part (minimum idle / min size) and there is no overflow variable.
    """

    pool_size: str
    max_overflow: str | None = None
    max_size: str | None = None
    pool_timeout: str | None = None
    pool_recycle: str | None = None
    fixed: Mapping[str, str] = field(default_factory=dict)  # written as is (e.g. turning a NullPool off)
    defaults: PoolSettings = ENGINE_DEFAULTS

    def render(self, settings: PoolSettings, env: Mapping[str, str]) -> dict[str, str]:
        values: dict[str, str] = {self.pool_size: str(settings.pool_size)}
        if self.max_overflow:
            values[self.max_overflow] = str(settings.max_overflow)
        if self.max_size:
            values[self.max_size] = str(settings.total)
        if self.pool_timeout:
            values[self.pool_timeout] = str(settings.pool_timeout)
        if self.pool_recycle:
            values[self.pool_recycle] = str(settings.pool_recycle)
        return {**values, **self.fixed}

    def read(self, env: Mapping[str, str]) -> PoolSettings | None:
        if any(env.get(name) != value for name, value in self.fixed.items()):
            return None  # the app's pooling is off (Letta's default NullPool): pool sizes say nothing
        d = self.defaults
        size = parse_int(env, self.pool_size, d.pool_size)
        if self.max_size:
            total = parse_int(env, self.max_size, max(size, d.total))
            return PoolSettings(min(size, total), max(0, total - size), self._timeout(env), d.pool_recycle)
        overflow = parse_int(env, self.max_overflow, d.max_overflow) if self.max_overflow else 0
        recycle = parse_int(env, self.pool_recycle, d.pool_recycle) if self.pool_recycle else d.pool_recycle
        return PoolSettings(size, overflow, self._timeout(env), recycle)

    def _timeout(self, env: Mapping[str, str]) -> int:
        return parse_int(env, self.pool_timeout, self.defaults.pool_timeout) if self.pool_timeout else 30

    def profile(self, name: str, pools_per_process: int = 1, live: bool = False) -> Profile:
        return Profile(
            name, self.render, self.read, pools_per_process, has_overflow=self.max_size is None, live=live
        )


SQLALCHEMY = EnvTable(
    "DB_POOL_SIZE", "DB_MAX_OVERFLOW", pool_timeout="DB_POOL_TIMEOUT", pool_recycle="DB_POOL_RECYCLE"
).profile(ProfileName.SQLALCHEMY, live=True)

# Recent Letta defaults to NullPool (LETTA_DISABLE_SQLALCHEMY_POOLING), which ignores pool sizes: turn it off.
LETTA = EnvTable(
    "LETTA_PG_POOL_SIZE",
    "LETTA_PG_MAX_OVERFLOW",
    pool_timeout="LETTA_PG_POOL_TIMEOUT",
    pool_recycle="LETTA_PG_POOL_RECYCLE",
    fixed={"LETTA_DISABLE_SQLALCHEMY_POOLING": "false"},
    defaults=PoolSettings(25, 10, 30, 1800),
).profile(ProfileName.LETTA)

# Airflow 3 builds a sync and an async engine per process, each with these sizes.
AIRFLOW = EnvTable(
    "AIRFLOW__DATABASE__SQL_ALCHEMY_POOL_SIZE",
    "AIRFLOW__DATABASE__SQL_ALCHEMY_MAX_OVERFLOW",
    pool_recycle="AIRFLOW__DATABASE__SQL_ALCHEMY_POOL_RECYCLE",
    defaults=PoolSettings(5, 10, 30, 1800),
).profile(ProfileName.AIRFLOW, pools_per_process=2)

# HikariCP: maximumPoolSize is the whole pool, minimumIdle the part it keeps open. Default 10 and 10.
HIKARI = EnvTable(
    "SPRING_DATASOURCE_HIKARI_MINIMUMIDLE",
    max_size="SPRING_DATASOURCE_HIKARI_MAXIMUMPOOLSIZE",
    defaults=PoolSettings(10, 0, 30, 1800),
).profile(ProfileName.HIKARI)

# psycopg_pool.ConnectionPool(min_size, max_size, timeout): max_size defaults to min_size, min_size to 4.
PSYCOPG_POOL = EnvTable(
    "DB_POOL_MIN_SIZE",
    max_size="DB_POOL_MAX_SIZE",
    pool_timeout="DB_POOL_TIMEOUT",
    defaults=PoolSettings(4, 0, 30, 1800),
).profile(ProfileName.PSYCOPG_POOL, live=True)
