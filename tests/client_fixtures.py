"""Helpers for the client helper's tests (tests/test_client_*.py): pod identities, counting tagged backends.

Plain functions, not fixtures, so nothing needs registering in conftest.py. The servers come from the suite's
``pg100`` fixture (tests/pg.py); only its public methods are used (``url``, ``execute``, ``password``).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

T = TypeVar("T")


class Server(Protocol):
    """What these tests use of tests/pg.py's PostgresServer."""

    password: str

    def url(self, user: str = ..., password: str | None = ..., dbname: str = ...) -> str: ...

    def execute(self, sql: Any, params: Any = ..., *, dbname: str = ...) -> list[tuple[Any, ...]]: ...


def new_pod() -> tuple[str, str]:
    """A fresh pod UID and the 12-hex pod field the tags carry for it."""
    uid = str(uuid.uuid4())
    return uid, uid.replace("-", "")[:12]


def tagged_names(server: Server, pod: str) -> list[str]:
    """application_name of every client backend tagged for ``pod``."""
    rows = server.execute(
        "SELECT application_name FROM pg_stat_activity"
        " WHERE backend_type = 'client backend' AND application_name LIKE %s",
        [f"%~pb1.{pod}.%"],
    )
    return [str(row[0]) for row in rows]


def tagged_count(server: Server, pod: str) -> int:
    return len(tagged_names(server, pod))


def wait_for(
    probe: Callable[[], T], done: Callable[[T], bool], timeout: float = 10.0, every: float = 0.02
) -> T:
    """Call ``probe`` until ``done(value)`` holds or ``timeout`` passes; return the last value either way."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if done(value) or time.monotonic() >= deadline:
            return value
        time.sleep(every)
