"""The quick start, followed as a new user would, against the Kubernetes API emulator (a test double).

Every `$ ` command of docs/quickstart.md runs in order and must print what the page shows. Two stand-ins,
because the emulator is not a cluster: `helm install` becomes `helm template | kubectl apply` (the emulator
has no Helm release storage), and the kubelet's part, starting the chart's operator pod, is done here by
running the image's ENTRYPOINT with the rendered Deployment's args and env. The emulator's pod simulator plays
the Deployment controller, so `kubectl rollout status` and the app's rollout behave as on a cluster.
"""

from __future__ import annotations

import re
import shlex
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.chart import container_command, container_env, find, objects
from tests.docblocks import code_blocks, console_steps, output_matches
from tests.emulator import KubernetesEmulator, wait_until
from tests.helm import REPO, Helm, helm_fixture  # noqa: F401
from tests.test_dockerfile import DOCKERFILE, entrypoint, parse_dockerfile

pytestmark = [pytest.mark.emulator, pytest.mark.timeout(90)]

QUICKSTART = REPO / "docs" / "quickstart.md"
# Commands that only read: retried until they print what the page shows (a user waits and looks again).
READ_ONLY = re.compile(r"^kubectl (.* )?(get|rollout status|describe)\b")
WAIT = 30.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _ages(text: str) -> str:
    """`kubectl get`'s AGE column, which no page can know."""
    return re.sub(r"\b\d+(ms|s|m|h|d)(\d+s)?$", "<age>", text, flags=re.MULTILINE)


class NewUser:
    """Runs the page's commands: kubectl against the emulator, helm install as template | apply."""

    def __init__(self, emulator: KubernetesEmulator, helm: Helm, workdir: Path) -> None:
        self.emulator = emulator
        self.helm = helm
        self.workdir = workdir
        self.operator: subprocess.Popen[bytes] | None = None
        self.log = workdir / "operator.log"
        self.health = _free_port()

    def run(self, command: str) -> str:
        words = shlex.split(command)
        if words[:2] == ["helm", "install"]:
            return self._helm_install(words[2:])
        assert words[0] == "kubectl", f"the quick start runs {words[0]}: teach this test"
        args = words[1:]
        if "apply" in args:
            args.append("--validate=false")  # the emulator serves no OpenAPI document
        result = self.emulator.kubectl(*args, check=False)
        assert result.returncode == 0 or READ_ONLY.match(command), f"$ {command}\n{result.stderr}"
        return result.stdout

    def _helm_install(self, words: list[str]) -> str:
        release, chart, *flags = words
        namespace = flags[flags.index("--namespace") + 1]
        assert "--create-namespace" in flags
        self.emulator.kubectl(
            "apply",
            "--validate=false",
            "-f",
            "-",
            input=f"apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {namespace}\n",
        )
        rendered = self.helm.template(
            "--set", f"operator.healthPort={self.health}", "--set", f"operator.metricsPort={_free_port()}",
            chart=REPO / chart, release=release,
        )  # fmt: skip
        assert f"--namespace {namespace}" in " ".join(flags)
        self.emulator.kubectl("apply", "--validate=false", "-f", "-", input=rendered)
        self._start_operator_pod(find(objects(rendered), "Deployment"))
        return ""

    def _start_operator_pod(self, deployment: dict[str, Any]) -> None:
        stages = parse_dockerfile(DOCKERFILE.read_text())[1]
        command = container_command(deployment, entrypoint(stages))
        env = {**self.emulator.env(), **container_env(deployment)}
        with self.log.open("wb") as out:
            self.operator = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
        wait_until(self._healthy, timeout=WAIT, interval=0.1, message="the operator's liveness endpoint")

    def _healthy(self) -> bool:
        import urllib.error
        import urllib.request

        assert self.operator is not None
        assert self.operator.poll() is None, f"the operator exited:\n{self.log.read_text()}"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.health}/healthz", timeout=1) as answer:
                return bool(answer.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def stop(self) -> None:
        if self.operator is not None and self.operator.poll() is None:
            self.operator.send_signal(signal.SIGTERM)
            try:
                self.operator.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.operator.kill()
                self.operator.wait(timeout=5)


@pytest.fixture
def user(emulator: KubernetesEmulator, helm: Helm, tmp_path: Path) -> Iterator[NewUser]:
    emulator.pod_simulator(start_delay=0.1, termination_delay=0.2).start(0.05)
    new_user = NewUser(emulator, helm, tmp_path)
    try:
        yield new_user
    finally:
        new_user.stop()


def test_quick_start_gives_the_documented_result(user: NewUser, emulator: KubernetesEmulator) -> None:
    steps = [
        step
        for block in code_blocks(QUICKSTART)
        if block.language == "console"
        for step in console_steps(block)
        if not step[0].startswith(("poolbudget ", "echo "))  # the offline preview: tests/test_docs.py runs it
    ]
    assert [c for c, _ in steps][:2] == [
        "helm install poolbudget helm/poolbudget --namespace poolbudget-system --create-namespace",
        "kubectl -n poolbudget-system rollout status deployment/poolbudget",
    ]
    original = emulator.kubectl(
        "get", "-f", str(REPO / "docs/examples/quickstart/web.yaml"), "-o", "json", check=False
    )
    assert original.returncode != 0  # nothing there before the user starts
    for command, shown in steps:
        deadline = time.monotonic() + (WAIT if READ_ONLY.match(command) else 0)
        while True:
            printed = user.run(command)
            if output_matches(_ages(shown), _ages(printed)):
                break
            assert time.monotonic() < deadline, (
                f"$ {command}\n--- the page shows\n{shown}\n--- it printed\n{printed}\n"
                f"--- operator log\n{user.log.read_text()[-3000:]}"
            )
            time.sleep(0.3)

    # Step 5 promised the app's env back exactly as it was.
    def env_restored() -> bool:
        template = emulator.get("apps/v1", "deployments", "web", "default")
        assert template is not None
        env = template["spec"]["template"]["spec"]["containers"][0]["env"]
        return bool(
            env
            == [
                {"name": "WEB_CONCURRENCY", "value": "2"},
                {"name": "DB_POOL_SIZE", "value": "20"},
                {"name": "DB_MAX_OVERFLOW", "value": "30"},
            ]
        )

    wait_until(env_restored, timeout=WAIT, interval=0.2, message="the app's own env back")
