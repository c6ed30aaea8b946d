"""A real, throwaway PostgreSQL server for tests, and the pytest fixtures that start it.

Register from ``tests/conftest.py`` with ``pytest_plugins = ["tests.pg"]``. The server is the machine's own
PostgreSQL (``pg_config --bindir``; ``scripts/install-test-deps.sh`` installs it): a fresh cluster in a
temporary directory, run as the ``postgres`` user because PostgreSQL refuses to run as root, listening on
127.0.0.1 with password (SCRAM) authentication and on a private Unix socket with trust for the set-up.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import pwd
import shlex
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import psycopg
import psycopg.sql
import pytest

SUPERUSER = "postgres"
SUPERUSER_PASSWORD = "pg-superuser-Secret-7f3a"  # a recognisable value, so tests can assert it never leaks
SERVER_USER = "postgres"  # the OS user that owns the cluster: PostgreSQL refuses to run as root
START_ATTEMPTS = 5  # a free port can be taken between choosing it and binding it: retry on another
COMMAND_TIMEOUT = 60.0  # seconds for any initdb / pg_ctl call; nothing here should come close


class PostgresServerError(RuntimeError):
    """The test server could not be created or started; the message carries the server log's tail."""


def postgres_bindir() -> Path:
    """Where initdb and pg_ctl are: ``pg_config --bindir``, else the newest ``/usr/lib/postgresql/*/bin``."""
    pg_config = shutil.which("pg_config")
    if pg_config:
        bindir = Path(
            subprocess.run(
                [pg_config, "--bindir"], check=True, capture_output=True, text=True, timeout=COMMAND_TIMEOUT
            ).stdout.strip()
        )
        if (bindir / "initdb").exists():
            return bindir
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if not candidates:
        raise PostgresServerError(
            "no PostgreSQL binaries: run scripts/install-test-deps.sh (apt-get install postgresql)"
        )
    return Path(candidates[-1]).parent


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _as_server_user(argv: Sequence[str]) -> list[str]:
    # Root must hand over to the postgres user; any other user runs the cluster as itself.
    if os.geteuid() == 0:
        return ["runuser", "-u", SERVER_USER, "--", *argv]
    return list(argv)


def _give_to_server_user(path: Path) -> None:
    if os.geteuid() == 0:
        entry = pwd.getpwnam(SERVER_USER)
        os.chown(path, entry.pw_uid, entry.pw_gid)


class PostgresServer:
    """One running PostgreSQL cluster on 127.0.0.1, created for tests and removed by :meth:`stop`."""

    def __init__(self, max_connections: int = 100, *, password: str = SUPERUSER_PASSWORD) -> None:
        self.max_connections = max_connections
        self.password = password
        self.host = "127.0.0.1"
        self.port = 0
        self.bindir = postgres_bindir()
        self.root = Path(tempfile.mkdtemp(prefix=f"poolbudget-pg{max_connections}-"))
        self.data_dir = self.root / "data"
        self.socket_dir = self.root / "sock"
        self.log_file = self.root / "server.log"
        self._running = False
        self._watcher: subprocess.Popen[bytes] | None = None

    @classmethod
    def start_new(cls, max_connections: int = 100, *, password: str = SUPERUSER_PASSWORD) -> PostgresServer:
        """Create and start a cluster; the caller must :meth:`stop` it (an atexit hook is the safety net)."""
        server = cls(max_connections, password=password)
        try:
            server._initdb()
            server._start()
        except BaseException:
            server.stop()
            raise
        atexit.register(server.stop)
        server._watch_parent()
        return server

    def _watch_parent(self) -> None:
        # A killed test run runs no atexit hook: a detached watcher stops the cluster once we are gone.
        stop = _as_server_user(
            [str(self.bindir / "pg_ctl"), "-D", str(self.data_dir), "-m", "immediate", "stop"]
        )
        script = (
            f"while kill -0 {os.getpid()} 2>/dev/null; do sleep 1; done; "
            f"{shlex.join(stop)} >/dev/null 2>&1; rm -rf {shlex.quote(str(self.root))}"
        )
        self._watcher = subprocess.Popen(
            ["sh", "-c", script],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    def _run(self, argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
        # The log goes to a file (-l) so the server never holds our pipes open.
        return subprocess.run(
            _as_server_user(argv),
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT,
            check=False,
            cwd=self.root,
        )

    def _initdb(self) -> None:
        for directory in (self.root, self.socket_dir):
            directory.mkdir(exist_ok=True)
            _give_to_server_user(directory)
        pwfile = self.root / "pwfile"
        pwfile.write_text(self.password + "\n")
        _give_to_server_user(pwfile)
        try:
            done = self._run(
                [
                    str(self.bindir / "initdb"),
                    "-D",
                    str(self.data_dir),
                    "-U",
                    SUPERUSER,
                    "--auth-local=trust",
                    "--auth-host=scram-sha-256",
                    f"--pwfile={pwfile}",
                    "--no-locale",
                    "-E",
                    "UTF8",
                    "--no-sync",
                ]
            )
        finally:
            pwfile.unlink(missing_ok=True)
        if done.returncode != 0:
            raise PostgresServerError(f"initdb failed ({done.returncode}): {done.stderr.strip()[-2000:]}")

    def _start(self) -> None:
        failure = ""
        for _ in range(START_ATTEMPTS):
            self.port = free_port()
            options = (
                f"-c listen_addresses={self.host} -p {self.port} -c max_connections={self.max_connections}"
                f" -c unix_socket_directories={self.socket_dir} -c fsync=off"
                " -c full_page_writes=off -c synchronous_commit=off"
                " -c log_connections=on"  # the log then names each session's user and application_name
            )
            done = self._run(
                [
                    str(self.bindir / "pg_ctl"),
                    "-D",
                    str(self.data_dir),
                    "-l",
                    str(self.log_file),
                    "-w",
                    "-t",
                    "30",
                    "-o",
                    options,
                    "start",
                ]
            )
            if done.returncode == 0:
                self._running = True
                return
            failure = f"pg_ctl start failed ({done.returncode}): {done.stderr.strip()}\n{self.log_tail()}"
        raise PostgresServerError(failure)

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of the server's log, for failure messages."""
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no server log)"

    def url(self, user: str = SUPERUSER, password: str | None = None, dbname: str = "postgres") -> str:
        """A ``postgresql://`` URL over TCP; with the superuser's password when ``user`` is the superuser."""
        if password is None and user == SUPERUSER:
            password = self.password
        credentials = urllib.parse.quote(user, safe="")
        if password is not None:
            credentials += ":" + urllib.parse.quote(password, safe="")
        return f"postgresql://{credentials}@{self.host}:{self.port}/{urllib.parse.quote(dbname, safe='')}"

    def superuser_conninfo(self, dbname: str = "postgres") -> str:
        """Connection string over the private Unix socket (trust), so set-up never needs the password."""
        return psycopg.conninfo.make_conninfo(
            host=str(self.socket_dir),
            port=self.port,
            user=SUPERUSER,
            dbname=dbname,
            application_name="poolbudget-tests-setup",
        )

    def execute(
        self,
        sql: str | psycopg.sql.Composable,
        params: Sequence[Any] | None = None,
        *,
        dbname: str = "postgres",
    ) -> list[tuple[Any, ...]]:
        """Run one statement as the superuser in autocommit and return its rows (none for DDL)."""
        with psycopg.connect(self.superuser_conninfo(dbname), autocommit=True, connect_timeout=10) as conn:
            cursor = conn.execute(sql, params)  # type: ignore[arg-type]  # tests pass plain SQL text
            return list(cursor.fetchall()) if cursor.description else []

    def create_role(
        self, name: str, *, password: str, connection_limit: int = -1, superuser: bool = False
    ) -> None:
        """A LOGIN role with a password and no grants; ``connection_limit`` as in ``CONNECTION LIMIT n``."""
        attributes = "SUPERUSER" if superuser else "NOSUPERUSER"
        # DDL takes no server-side parameters: compose the literal client-side.
        self.execute(
            psycopg.sql.SQL("CREATE ROLE {} LOGIN {} PASSWORD {} CONNECTION LIMIT {}").format(
                psycopg.sql.Identifier(name),
                psycopg.sql.SQL(attributes),
                psycopg.sql.Literal(password),
                psycopg.sql.Literal(int(connection_limit)),
            )
        )

    def wait_for_backends(
        self, predicate: Callable[[int], bool], *, usename: str | None = None, timeout: float = 10.0
    ) -> int:
        """Poll the count of client backends (optionally of one user) until ``predicate`` holds; return it."""
        sql = (
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
        )
        params: list[Any] = []
        if usename is not None:
            sql += " AND usename = %s"
            params.append(usename)
        deadline = time.monotonic() + timeout
        while True:
            count = int(self.execute(sql, params)[0][0])
            if predicate(count) or time.monotonic() > deadline:
                return count
            time.sleep(0.02)

    def stop(self) -> None:
        """Stop the server at once (its data is throwaway) and delete its directory; safe to call twice."""
        if self._watcher is not None:
            self._watcher.kill()
            self._watcher.wait(timeout=COMMAND_TIMEOUT)
            self._watcher = None
        if self._running:
            self._run(
                [
                    str(self.bindir / "pg_ctl"),
                    "-D",
                    str(self.data_dir),
                    "-m",
                    "immediate",
                    "-w",
                    "-t",
                    "30",
                    "stop",
                ]
            )
            self._running = False
        shutil.rmtree(self.root, ignore_errors=True)

    def __repr__(self) -> str:
        return f"PostgresServer(max_connections={self.max_connections}, port={self.port})"


PostgresServerFactory = Callable[[int], PostgresServer]


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServerFactory]:
    """A factory: ``postgres_server(max_connections)`` returns the session's one server for that value."""
    servers: dict[int, PostgresServer] = {}

    def get(max_connections: int = 100) -> PostgresServer:
        if max_connections not in servers:
            servers[max_connections] = PostgresServer.start_new(max_connections)
        return servers[max_connections]

    try:
        yield get
    finally:
        for server in servers.values():
            with contextlib.suppress(Exception):
                server.stop()


@pytest.fixture(scope="session")
def pg60(postgres_server: PostgresServerFactory) -> PostgresServer:
    """The session's PostgreSQL with ``max_connections=60``."""
    return postgres_server(60)


@pytest.fixture(scope="session")
def pg100(postgres_server: PostgresServerFactory) -> PostgresServer:
    """The session's PostgreSQL with ``max_connections=100``."""
    return postgres_server(100)
