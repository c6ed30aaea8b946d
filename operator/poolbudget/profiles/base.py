"""What every profile is: how an app's pool settings are written to, and read back from, its env."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass


class ProfileError(ValueError):
    """A profile name that no built-in or custom profile answers to."""


@dataclass(frozen=True, slots=True)
class PoolSettings:
    """One pool of one process, as an app configures it."""

    pool_size: int
    max_overflow: int
    pool_timeout: int = 30
    pool_recycle: int = 1800
    pool_pre_ping: bool = True

    @property
    def total(self) -> int:
        """The most connections this pool opens."""
        return self.pool_size + self.max_overflow


Render = Callable[[PoolSettings, Mapping[str, str]], dict[str, str]]
Read = Callable[[Mapping[str, str]], PoolSettings | None]


@dataclass(frozen=True, slots=True)
class Profile:
    """An app's env format.

    ``render`` takes the settings and the container's current env (literal values) and returns the entries to
    write, in a stable order. ``read`` parses env back exactly as the app would (its own defaults included);
    None when the app's pool size cannot be known from env (e.g. a pool that is off).
    """

    name: str
    render: Render
    read: Read
    pools_per_process: int = 1
    has_overflow: bool = True
    live: bool = False  # the app can follow live allotments (poolbudget_client serves it)

    def owned_names(self, current_env: Mapping[str, str]) -> list[str]:
        """Names of the env entries this profile writes for this container."""
        return list(self.render(PoolSettings(1, 0), current_env))


def parse_int(env: Mapping[str, str], name: str, default: int) -> int:
    """An integer setting as the app parses it, falling back to its default when unset or unparsable."""
    raw = env.get(name)
    try:
        return int(raw) if raw is not None else default
    except ValueError:
        return default
