"""poolbudget_client: follow poolbudget's live allotment from inside an app.

Two calls::

    follower = poolbudget_client.follow(pool)          # psycopg_pool.ConnectionPool
    follower = await poolbudget_client.follow(apool)   # psycopg_pool.AsyncConnectionPool
    engine = poolbudget_client.create_engine(url, pool_size=1, max_overflow=0)  # SQLAlchemy

The pool follows the file named by ``POOLBUDGET_ALLOTMENT_FILE`` and tags its connections' ``application_name``
so the operator can see what each process applied (README: "Acknowledgement protocol").
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, overload

from .allotment import (
    ALLOTMENT_FILE_ENV,
    DEFAULT_FIRST_WAIT,
    DEFAULT_INTERVAL,
    FIRST_WAIT_ENV,
    Allotment,
    AllotmentError,
    AllotmentFile,
    parse_allotment,
    read_allotment,
)
from .confirmation_tag import Tag, format_tag, parse_tag, pod_id, pod_id_from_env
from .follower import FollowerCore

if TYPE_CHECKING:
    from psycopg_pool import AsyncConnectionPool, ConnectionPool
    from sqlalchemy.engine import Engine
    from sqlalchemy.pool import Pool

    from .psycopg_pool_follower import AsyncPoolFollower, PoolFollower
    from .sqlalchemy_engine import EngineFollower

__version__ = "0.1.0"

__all__ = [
    "ALLOTMENT_FILE_ENV",
    "DEFAULT_FIRST_WAIT",
    "DEFAULT_INTERVAL",
    "FIRST_WAIT_ENV",
    "Allotment",
    "AllotmentError",
    "AllotmentFile",
    "Tag",
    "__version__",
    "create_engine",
    "follow",
    "follower_of",
    "format_tag",
    "parse_allotment",
    "parse_tag",
    "pod_id",
    "pod_id_from_env",
    "read_allotment",
]


@overload
def follow(
    pool: AsyncConnectionPool[Any],
    *,
    allotment_file: str | os.PathLike[str] | None = ...,
    first_wait: float | None = ...,
    interval: float = ...,
    pod_uid: str | None = ...,
    pod_name: str | None = ...,
) -> AsyncPoolFollower: ...


@overload
def follow(
    pool: ConnectionPool[Any],
    *,
    allotment_file: str | os.PathLike[str] | None = ...,
    first_wait: float | None = ...,
    interval: float = ...,
    pod_uid: str | None = ...,
    pod_name: str | None = ...,
) -> PoolFollower: ...


def follow(
    pool: ConnectionPool[Any] | AsyncConnectionPool[Any],
    *,
    allotment_file: str | os.PathLike[str] | None = None,
    first_wait: float | None = None,
    interval: float = DEFAULT_INTERVAL,
    pod_uid: str | None = None,
    pod_name: str | None = None,
) -> PoolFollower | AsyncPoolFollower:
    """Make a psycopg_pool pool follow the allotment file: ``min_size = poolSize``, ``max_size = poolSize +
    maxOverflow``, applied at once and on every change.

    For a ``ConnectionPool`` this blocks up to ``first_wait`` seconds (default ``POOLBUDGET_FIRST_WAIT_SECONDS``
    or 5) for the first allotment, the pool running at its own size meanwhile, and returns a
    :class:`PoolFollower`. For an ``AsyncConnectionPool`` (call it inside the running loop) it returns an
    :class:`AsyncPoolFollower` at once; ``await`` it to wait for the first allotment. Both have ``stop()`` and
    are context managers. ``allotment_file`` defaults to ``POOLBUDGET_ALLOTMENT_FILE`` (unset: nothing is
    resized), ``pod_uid`` / ``pod_name`` to ``POD_UID`` / ``POD_NAME``.
    """
    from .psycopg_pool_follower import follow_pool

    def make_core(secrets: list[str]) -> FollowerCore:
        return FollowerCore(
            allotment_file=allotment_file,
            first_wait=first_wait,
            interval=interval,
            pod_uid=pod_uid,
            pod_name=pod_name,
            secrets=secrets,
            what="psycopg pool",
        )

    return follow_pool(pool, make_core)


def create_engine(url: Any, **kw: Any) -> Engine:
    """A SQLAlchemy ``Engine`` whose pool follows the allotment file (see :mod:`.sqlalchemy_engine`)."""
    from .sqlalchemy_engine import create_engine as _create_engine

    return _create_engine(url, **kw)


def follower_of(target: Engine | Pool) -> EngineFollower | None:
    """The follower of an engine made by :func:`create_engine`; None for any other engine."""
    from .sqlalchemy_engine import follower_of as _follower_of

    return _follower_of(target)
