"""An engine made before a fork (gunicorn ``--preload``) keeps following in the forked worker.

SQLAlchemy's advice for forked workers is ``engine.dispose(close=False)`` in the child; the child's follower
thread is restarted there, and the worker's connections carry the worker's own process id.
"""

from __future__ import annotations

import textwrap

import pytest
from poolbudget_client import parse_tag

from tests.client_fixtures import Pod, Server, read_line, start_app, tagged_names, wait_for

pytestmark = pytest.mark.postgres

SCRIPT = textwrap.dedent(
    """
    import os, sys
    from sqlalchemy import text
    import poolbudget_client
    engine = poolbudget_client.create_engine(
        os.environ["APP_DATABASE_URL"].replace("postgresql://", "postgresql+psycopg://", 1),
        pool_size=1, max_overflow=0, poll_interval=0.05,
    )
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
    child = os.fork()
    if child == 0:
        engine.dispose(close=False)  # SQLAlchemy's advice for a forked worker
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        print("worker", os.getpid(), flush=True)
        ok = poolbudget_client.follower_of(engine).wait_applied(2, timeout=10)
        print("applied" if ok else "timeout", flush=True)
        sys.stdin.read()
        os._exit(0)
    os.waitpid(child, 0)
    """
)


def test_a_forked_worker_follows_and_tags_with_its_own_pid(pod: Pod, server: Server) -> None:
    pod.kubelet.write_allotment(1, 2, 0)
    proc = start_app(SCRIPT, pod, server)
    try:
        word, worker = read_line(proc).split()
        assert word == "worker"
        pod.kubelet.write_allotment(2, 1, 0)
        assert read_line(proc) == "applied"

        def worker_generations() -> list[int]:
            tags = [parse_tag(name) for name in tagged_names(server, pod.tag)]
            return [t.generation for t in tags if t is not None and t.process == int(worker)]

        assert wait_for(worker_generations, lambda g: g == [2]) == [2]  # the worker re-tagged its idle one
    finally:
        assert proc.stdin is not None
        proc.stdin.close()  # the worker exits, then the parent
        try:
            proc.wait(timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()
