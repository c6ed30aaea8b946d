"""A real app process killed (SIGKILL) in the middle of a shrink leaves no connection behind on the server.

The process is a real Python interpreter with the pod's env (POOLBUDGET_ALLOTMENT_FILE, POD_UID) building a real
pool through the helper; the server's pg_stat_activity is the judge.
"""

from __future__ import annotations

import signal
import subprocess
import textwrap

import pytest

from tests.client_fixtures import Pod, Server, read_line, start_app, tagged_count, wait_for

pytestmark = pytest.mark.postgres

APPS = {
    "psycopg_pool": """
        from psycopg_pool import ConnectionPool
        pool = ConnectionPool(os.environ["APP_DATABASE_URL"], min_size=1, max_size=1, timeout=10)
        pool.wait(10)
        follower = poolbudget_client.follow(pool, interval=0.05)
        assert follower.applied is not None and follower.applied.generation == 1
        held = [pool.getconn() for _ in range(5)]  # 6 open (min_size 6): 5 in use, 1 idle
    """,
    "sqlalchemy": """
        engine = poolbudget_client.create_engine(
            os.environ["APP_DATABASE_URL"].replace("postgresql://", "postgresql+psycopg://", 1),
            pool_size=1, max_overflow=0, poll_interval=0.05,
        )
        follower = poolbudget_client.follower_of(engine)
        held = [engine.connect() for _ in range(6)]
        held.pop().close()  # 6 open: 5 in use, 1 idle
    """,
}
COMMON_END = """
    print("held", flush=True)
    assert follower.wait_applied(2, timeout=10)  # the shrink: the idle one goes, the 5 in use stay until returned
    print("applied", flush=True)
    sys.stdin.read()  # in the middle of the shrink until killed
"""


def expect_line(proc: subprocess.Popen[str], word: str) -> None:
    line = read_line(proc)
    assert line == word, (line, proc.stderr.read() if proc.stderr and proc.poll() is not None else "")


@pytest.mark.parametrize("app", sorted(APPS))
def test_killed_mid_shrink_leaves_no_connection(pod: Pod, server: Server, app: str) -> None:
    pod.kubelet.write_allotment(1, 6, 0)
    script = (
        "import os, sys\nimport poolbudget_client\n"
        + textwrap.dedent(APPS[app])
        + textwrap.dedent(COMMON_END)
    )
    proc = start_app(script, pod, server, POD_NAME="web-0")
    try:
        expect_line(proc, "held")
        assert wait_for(lambda: tagged_count(server, pod.tag), lambda n: n == 6) == 6
        pod.kubelet.write_allotment(2, 1, 0)
        expect_line(proc, "applied")
        assert (
            wait_for(lambda: tagged_count(server, pod.tag), lambda n: n == 5) == 5
        )  # mid-shrink: 5 in use, limit 1
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=10) == -signal.SIGKILL
        assert wait_for(lambda: tagged_count(server, pod.tag), lambda n: n == 0, timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
