"""Custom profiles declared in a PoolBudget: env names with templates over the settings."""

from __future__ import annotations

from collections.abc import Mapping

from poolbudget.api.models import CustomProfile
from poolbudget.profiles.base import PoolSettings, Profile


def _fields(settings: PoolSettings) -> dict[str, int]:
    return {
        "poolSize": settings.pool_size,
        "maxOverflow": settings.max_overflow,
        "total": settings.total,
        "poolTimeout": settings.pool_timeout,
        "poolRecycle": settings.pool_recycle,
    }


def custom_profile(spec: CustomProfile) -> Profile:
    """A Profile from a PoolBudget's `spec.profiles[]` entry (templates already validated by the model)."""

    def render(settings: PoolSettings, env: Mapping[str, str]) -> dict[str, str]:
        fields = _fields(settings)
        return {entry.name: entry.value.format_map(fields) for entry in spec.env}

    def read(env: Mapping[str, str]) -> PoolSettings | None:
        # Only a variable that is exactly one template field can be read back.
        found: dict[str, int] = {}
        for entry in spec.env:
            raw = env.get(entry.name)
            field = entry.value.strip("{}")
            if raw is not None and entry.value == "{" + field + "}" and raw.isdigit():
                found[field] = int(raw)
        if "total" in found:
            size = found.get("poolSize", found["total"])
            return PoolSettings(size, found["total"] - size)
        if "poolSize" in found:
            return PoolSettings(found["poolSize"], found.get("maxOverflow", 0))
        return None

    return Profile(spec.name, render, read, spec.pools_per_process, spec.overflow, live=spec.live)
