"""Env formats: pure functions from a Deployment's pool settings to the env entries its app reads."""

from poolbudget.profiles.base import PoolSettings, Profile, ProfileError
from poolbudget.profiles.registry import builtin_profiles, resolve_profile

__all__ = ["PoolSettings", "Profile", "ProfileError", "builtin_profiles", "resolve_profile"]
