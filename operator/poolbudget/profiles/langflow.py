"""Langflow: LANGFLOW_DB_CONNECTION_SETTINGS (JSON), plus the deprecated LANGFLOW_POOL_SIZE / _MAX_OVERFLOW.

The JSON replaces Langflow's whole default dict, so every pool key is written; keys the user set that are not
pool sizes (``echo``, ``connect_args`` ...) are kept. The deprecated variables override the JSON when present,
so when the user has them they are rewritten too, to the same numbers.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from poolbudget.api.models import ProfileName
from poolbudget.profiles.base import PoolSettings, Profile, parse_int

SETTINGS = "LANGFLOW_DB_CONNECTION_SETTINGS"
DEPRECATED_POOL_SIZE = "LANGFLOW_POOL_SIZE"
DEPRECATED_MAX_OVERFLOW = "LANGFLOW_MAX_OVERFLOW"

# Langflow's own default dict (seed 000): what a process uses when nothing is set.
DEFAULTS: dict[str, object] = {
    "pool_size": 20,
    "max_overflow": 30,
    "pool_timeout": 30,
    "pool_pre_ping": True,
    "pool_recycle": 1800,
    "echo": False,
}


def _user_settings(env: Mapping[str, str]) -> dict[str, object]:
    try:
        parsed = json.loads(env.get(SETTINGS, "{}"))
    except json.JSONDecodeError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def render(settings: PoolSettings, env: Mapping[str, str]) -> dict[str, str]:
    merged = {**DEFAULTS, **_user_settings(env)}
    merged.update(
        pool_size=settings.pool_size,
        max_overflow=settings.max_overflow,
        pool_timeout=settings.pool_timeout,
        pool_pre_ping=settings.pool_pre_ping,
        pool_recycle=settings.pool_recycle,
    )
    out = {SETTINGS: json.dumps(merged, sort_keys=True, separators=(",", ":"))}
    if DEPRECATED_POOL_SIZE in env:
        out[DEPRECATED_POOL_SIZE] = str(settings.pool_size)
    if DEPRECATED_MAX_OVERFLOW in env:
        out[DEPRECATED_MAX_OVERFLOW] = str(settings.max_overflow)
    return out


# What SQLAlchemy's create_engine uses for keys a user's JSON leaves out (it replaced Langflow's dict).
ENGINE_DEFAULTS: dict[str, object] = {
    "pool_size": 5,
    "max_overflow": 10,
    "pool_timeout": 30,
    "pool_recycle": -1,
}


def read(env: Mapping[str, str]) -> PoolSettings:
    base = ENGINE_DEFAULTS if SETTINGS in env else DEFAULTS
    settings = {**base, **_user_settings(env)}

    def number(key: str) -> int:
        value = settings.get(key, base.get(key, 0))
        return int(value) if isinstance(value, int | float | str) else 0

    return PoolSettings(
        pool_size=parse_int(env, DEPRECATED_POOL_SIZE, number("pool_size")),
        max_overflow=parse_int(env, DEPRECATED_MAX_OVERFLOW, number("max_overflow")),
        pool_timeout=number("pool_timeout"),
        pool_recycle=number("pool_recycle"),
        pool_pre_ping=bool(settings.get("pool_pre_ping", True)),
    )


PROFILE = Profile(ProfileName.LANGFLOW, render, read)
