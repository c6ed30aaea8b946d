"""Helpers for the client helper's tests (tests/test_client_*.py): pod identities, counting tagged backends.

Registered as a plugin in tests/conftest.py for the ``pod`` and ``server`` fixtures. The servers come from the
suite's ``pg100`` fixture (tests/pg.py); only its public methods are used (``url``, ``execute``, ``password``).
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import poolbudget_client
import pytest

from tests.kubelet_file_stand_in import KubeletFileStandIn

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


@dataclass
class Pod:
    kubelet: KubeletFileStandIn
    uid: str
    tag: str  # the 12-hex pod field of the tags


@pytest.fixture
def pod(tmp_path: Path) -> Pod:
    """A pod identity and its allotment file, written the kubelet's way."""
    uid, tag = new_pod()
    return Pod(KubeletFileStandIn(tmp_path / "podinfo"), uid, tag)


@pytest.fixture
def server(pg100: Any) -> Server:
    return pg100  # type: ignore[no-any-return]


def start_app(script: str, pod: Pod, server: Server, **env: str) -> subprocess.Popen[str]:
    """A real app process running ``script`` with the pod's env (the allotment file, POD_UID, the database URL in
    APP_DATABASE_URL), the client importable, talking on stdin/stdout."""
    client_src = str(Path(poolbudget_client.__file__).resolve().parent.parent)
    environment = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([client_src, os.environ.get("PYTHONPATH", "")]),
        POOLBUDGET_ALLOTMENT_FILE=str(pod.kubelet.path),
        POD_UID=pod.uid,
        APP_DATABASE_URL=server.url(),
        **env,
    )
    return subprocess.Popen(
        [sys.executable, "-c", script], env=environment, text=True,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip


def read_line(proc: subprocess.Popen[str], timeout: float = 15.0) -> str:
    """The app's next line on stdout, within ``timeout``."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, f"the app process said nothing within {timeout} s"
    return proc.stdout.readline().strip()
