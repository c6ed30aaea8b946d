"""Finding a profile by name: the built-ins, then a budget's custom ones."""

from __future__ import annotations

from collections.abc import Sequence

from poolbudget.api.models import CustomProfile
from poolbudget.profiles import langflow, table
from poolbudget.profiles.base import Profile, ProfileError
from poolbudget.profiles.custom import custom_profile

_BUILTIN = {
    p.name: p
    for p in (
        table.SQLALCHEMY,
        langflow.PROFILE,
        table.LETTA,
        table.AIRFLOW,
        table.HIKARI,
        table.PSYCOPG_POOL,
    )
}


def builtin_profiles() -> dict[str, Profile]:
    return dict(_BUILTIN)


def resolve_profile(name: str, custom: Sequence[CustomProfile] = ()) -> Profile:
    """The profile called ``name``; ProfileError naming the known ones when there is none."""
    if name in _BUILTIN:
        return _BUILTIN[name]
    for spec in custom:
        if spec.name == name:
            return custom_profile(spec)
    known = ", ".join([*_BUILTIN, *(c.name for c in custom)])
    raise ProfileError(f"unknown profile {name!r} (known: {known})")
