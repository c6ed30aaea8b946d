"""The Dockerfile's structure, its pins, and its entrypoint run outside a container; tests/test_image.py builds the
image with podman and runs it."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import tomllib
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.chart import container_command, container_env, find, objects
from tests.emulator import KubernetesEmulator, wait_until
from tests.helm import Helm, helm_fixture  # noqa: F401
from tests.lockfile import LOCK, installed_closure, read_lock, runtime_requirements

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO / "Dockerfile"


@dataclass(frozen=True)
class Instruction:
    keyword: str
    arguments: str


@dataclass(frozen=True)
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction]

    def all(self, keyword: str) -> list[str]:
        return [i.arguments for i in self.instructions if i.keyword == keyword]


def parse_dockerfile(text: str) -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults and the stages, with continuation lines joined and comments dropped."""
    logical: list[str] = []
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        logical.append(pending + stripped)
        pending = ""
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            match = re.fullmatch(r"(\S+)(?:\s+AS\s+(\S+))?", rest.strip(), re.IGNORECASE)
            assert match, f"cannot read FROM {rest}"
            base = re.sub(r"\$\{(\w+)\}", lambda m: args[m[1]], match[1])
            stages.append(Stage(base, match[2], []))
        elif not stages and keyword == "ARG":
            name, _, default = rest.partition("=")
            args[name.strip()] = default.strip()
        else:
            stages[-1].instructions.append(Instruction(keyword, rest.strip()))
    return args, stages


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return parse_dockerfile(DOCKERFILE.read_text())[1]


def entrypoint(stages: list[Stage]) -> list[str]:
    """The final stage's exec-form ENTRYPOINT."""
    (raw,) = stages[-1].all("ENTRYPOINT")
    command = json.loads(raw)
    assert isinstance(command, list), "ENTRYPOINT must be in exec form (a JSON list)"
    return [str(part) for part in command]


def test_multi_stage_on_slim_python_3_11(stages: list[Stage]) -> None:
    assert len(stages) >= 2
    for stage in stages:
        assert re.fullmatch(r"python:3\.11\.\d+-slim(-bookworm)?(@sha256:[0-9a-f]{64})?", stage.base), (
            stage.base
        )
    assert stages[0].name, "the build stage is named, so the final stage can copy from it"


def test_base_image_is_one_argument_for_every_stage() -> None:
    """The tests build on a locally made Debian base (no registry here): one ARG swaps it, in every stage alike, so
    the virtualenv's interpreter (a symlink to the base's python3) exists where the final stage runs it."""
    bases = re.findall(r"^FROM\s+(\S+)", DOCKERFILE.read_text(), re.MULTILINE)
    assert bases
    assert set(bases) == {"${PYTHON_IMAGE}"}


def test_pip_ca_bundle_is_a_build_secret_only(stages: list[Stage]) -> None:
    """A CA bundle for pip comes in as a build secret, mounted for the steps that download: never COPY'd, never
    in the final stage's environment. The operator's own install reads no index, so a code change needs none."""
    build, final = stages[0], stages[-1]
    assert "PIP_CERT" in build.all("ARG")
    for run in build.all("RUN"):
        installs = [c for c in run_commands(run) if "pip install" in c]
        if any("--no-index" not in c for c in installs):
            assert run.startswith("--mount=type=secret,id=pip-ca"), run
    (local,) = [c for r in build.all("RUN") for c in run_commands(r) if c.endswith(" .")]
    assert "--no-index" in local
    text = " ".join(
        i.arguments for stage in stages for i in stage.instructions if i.keyword in ("COPY", "ADD")
    )
    assert "ca-certificates" not in text
    assert "pip-ca" not in text
    assert not any("PIP_CERT" in i.arguments for i in final.instructions)


def test_final_stage_runs_as_numeric_non_root_user(stages: list[Stage]) -> None:
    users = stages[-1].all("USER")
    assert users, "the final stage sets USER"
    user, _, group = users[-1].partition(":")
    assert user.isdigit(), "a numeric uid lets runAsNonRoot verify it"
    assert int(user) != 0
    assert not group or int(group) != 0


def test_chart_runs_as_the_images_user(stages: list[Stage]) -> None:
    import yaml

    values = yaml.safe_load((REPO / "helm" / "poolbudget" / "values.yaml").read_text())
    uid = int(stages[-1].all("USER")[-1].partition(":")[0])
    assert values["podSecurityContext"]["runAsUser"] == uid


def test_final_stage_has_no_build_tools(stages: list[Stage]) -> None:
    final = " ".join(stages[-1].all("RUN"))
    for tool in ("apt-get install", "apk add", "gcc", "build-essential", "pip install"):
        assert tool not in final, f"the final stage runs {tool!r}"
    copies = stages[-1].all("COPY")
    assert copies, "the final stage copies the built virtualenv"
    assert all(c.startswith(f"--from={stages[0].name}") for c in copies), "only built artifacts are copied"


def run_commands(run: str) -> list[str]:
    """The shell commands of one RUN instruction, its --mount flags dropped."""
    return [c.strip() for c in re.sub(r"^(--mount=\S+\s+)+", "", run).split("&&")]


def test_dependencies_come_from_the_lock_only(stages: list[Stage]) -> None:
    commands = [c for r in stages[0].all("RUN") for c in run_commands(r)]
    installs = [c for c in commands if re.search(r"\bpip install\b", c)]
    assert any("-r requirements.lock" in c for c in installs)
    for command in installs:
        assert "--no-deps" in command, (
            f"every pip install is --no-deps, so nothing unpinned sneaks in: {command}"
        )
        words = command.split()
        arguments = words[words.index("install") + 1 :]
        packages = [w for w in arguments if not w.startswith("-") and w != "requirements.lock"]
        for package in packages:
            assert package == "." or re.fullmatch(r"[A-Za-z0-9_.-]+==[0-9][0-9A-Za-z.]*", package), package
        if packages == ["."]:
            assert "--no-build-isolation" in command, "the build backend comes pinned, not from the index"


def test_lock_pins_exactly_the_runtime_closure() -> None:
    pins = read_lock(LOCK.read_text())
    closure = installed_closure()
    assert sorted(pins) == sorted(closure), "regenerate: python -m tests.lockfile > requirements.lock"


def test_lock_satisfies_pyproject() -> None:
    pins = read_lock(LOCK.read_text())
    for requirement in runtime_requirements():
        version = pins[canonicalize_name(requirement.name)]
        assert requirement.specifier.contains(version, prereleases=True), f"{requirement} vs {version}"


def test_lock_has_no_dev_dependencies() -> None:
    pins = read_lock(LOCK.read_text())
    dev = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["dev"]
    runtime = set(installed_closure())
    for raw in dev:
        name = canonicalize_name(Requirement(raw).name)
        if name not in runtime:
            assert name not in pins, f"{name} is a dev dependency"


def test_dockerignore_sends_only_what_the_build_copies(stages: list[Stage]) -> None:
    ignore = (REPO / ".dockerignore").read_text().splitlines()
    assert "*" in ignore, "everything is excluded by default"
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    copied = {
        part.rstrip("/")
        for c in stages[0].all("COPY")
        if not c.startswith("--from")
        for part in c.split()[:-1]
    }
    assert copied <= allowed


def test_entrypoint_is_the_operator(stages: list[Stage]) -> None:
    assert entrypoint(stages) == ["poolbudget", "run"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as answer:
            return bool(answer.status == 200)
    except (urllib.error.URLError, OSError):
        return False


@pytest.mark.emulator
@pytest.mark.timeout(60)
@pytest.mark.parametrize("replicas", [1, 2], ids=["standalone", "peering"])
def test_entrypoint_runs_the_operator_against_the_emulator(
    stages: list[Stage], helm: Helm, emulator: KubernetesEmulator, tmp_path: Path, replicas: int
) -> None:
    """The image's ENTRYPOINT with the chart's args and env, as the kubelet would start it; the API is the
    emulator (a test double) instead of the in-cluster one."""
    health, metrics = _free_port(), _free_port()
    rendered = objects(
        helm.template(
            *("--set", f"operator.healthPort={health}", "--set", f"operator.metricsPort={metrics}"),
            *("--set", f"replicaCount={replicas}"),
        )
    )
    for crd in (o for o in rendered if o["kind"] == "CustomResourceDefinition"):
        emulator.register_crd(crd)
    deployment = find(rendered, "Deployment")
    command = container_command(deployment, entrypoint(stages))
    assert command[:2] == ["poolbudget", "run"]
    env = {**emulator.env(), **container_env(deployment)}
    log = tmp_path / "operator.log"
    with log.open("wb") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:

        def up() -> bool:
            assert process.poll() is None, (
                f"the operator exited with {process.returncode}:\n{log.read_text()}"
            )
            return _answers(f"http://127.0.0.1:{health}/healthz")

        wait_until(up, timeout=30, interval=0.1, message="the liveness endpoint")
        assert _answers(f"http://127.0.0.1:{metrics}/metrics")
        assert env["POOLBUDGET_NAMESPACE"] == "poolbudget-system"
    finally:
        process.send_signal(signal.SIGTERM)  # as the kubelet stops a pod
        try:
            code = process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
    assert code == 0, log.read_text()
    assert "Traceback" not in log.read_text()
    if replicas > 1:  # peering: the operator created the ClusterKopfPeering it coordinates through
        assert emulator.get("kopf.dev/v1", "clusterkopfpeerings", "poolbudget") is not None
