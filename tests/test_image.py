"""The operator image, built with podman by scripts/build-image.sh and run for real.

No image registry is reachable on these machines: the script makes the base image locally (Debian bookworm by
debootstrap, Debian's python3 3.11) and builds the Dockerfile on it. Every container runs the way the chart runs
the pod: a read-only root file system, no capabilities, the image's own non-root user.

The operator in the image runs against the real control plane (``kube``), reached over the host's network, with
the chart's ServiceAccount token.
"""

from __future__ import annotations

import base64
import glob
import json
import os
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.kube.fixtures import KubeCluster, wait_for
from tests.kube.release import Release
from tests.operator_harness import FAST, budget_manifest, deployment_manifest, free_port, write_manifests

REPO = Path(__file__).resolve().parent.parent
BUILD_SCRIPT = REPO / "scripts" / "build-image.sh"
CACHE = Path(os.environ.get("POOLBUDGET_CACHE_DIR", Path.home() / ".cache" / "poolbudget"))
PODMAN = ["podman", "--storage-driver", "vfs", "--runtime", "runc"]
# The chart's securityContext as podman flags: read-only root (podman mounts a tmpfs on /tmp, where the chart
# mounts an emptyDir), no capabilities, no privilege escalation; the uid is the image's own.
RESTRICTED = ["--read-only", "--cap-drop", "ALL", "--security-opt", "no-new-privileges"]
UID = 10001
EXIT_NO_ENGINE = 3  # scripts/build-image.sh: podman, runc or debootstrap cannot be installed
BUILD_TIMEOUT = 1500  # a cold build (debootstrap and pip included) took 4.5 min on a busy 2-core machine
RUN_TIMEOUT = 120  # with vfs storage every container starts from a full copy of the image: ~13 s here

# The whole build may run inside the first test's timeout (pytest-timeout counts fixture setup).
pytestmark = [pytest.mark.image, pytest.mark.timeout(BUILD_TIMEOUT + 300)]


@dataclass(frozen=True)
class Image:
    ref: str
    build_seconds: float
    config: dict[str, Any]


def podman(*args: str, timeout: float = RUN_TIMEOUT, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([*PODMAN, *args], capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(
            f"podman {' '.join(args)} failed ({result.returncode}):\n{result.stderr[-4000:]}"
        )
    return result


@pytest.fixture(scope="session")
def image() -> Image:
    """localhost/poolbudget:<version>, built (or found up to date) by scripts/build-image.sh."""
    started = time.monotonic()
    result = subprocess.run(
        ["bash", str(BUILD_SCRIPT)], capture_output=True, text=True, timeout=BUILD_TIMEOUT, cwd=REPO
    )
    if result.returncode == EXIT_NO_ENGINE:
        pytest.skip(f"podman cannot be installed on this machine: {result.stderr.strip().splitlines()[-1]}")
    assert result.returncode == 0, (
        f"scripts/build-image.sh failed ({result.returncode}):\n{result.stderr[-6000:]}"
    )
    ref = result.stdout.strip().splitlines()[-1]
    (inspected,) = json.loads(podman("image", "inspect", ref).stdout)
    return Image(ref, time.monotonic() - started, inspected["Config"])


@pytest.fixture(scope="module")
def pip_wheel() -> Path:
    """A pip wheel from the host, to run ``pip check`` in the image without pip being part of it."""
    found = sorted(glob.glob("/usr/share/python-wheels/pip-*.whl"))  # Debian's python3-pip-whl
    if found:
        return Path(found[-1])
    wheels = CACHE / "wheels"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--only-binary=:all:",
            "-d",
            str(wheels),
            "pip",
        ],
        check=True,
        timeout=300,
    )
    return Path(sorted(glob.glob(str(wheels / "pip-*.whl")))[-1])


@pytest.fixture(scope="module")
def inside(image: Image, pip_wheel: Path) -> Iterator[str]:
    """One container of the image, restricted as the chart runs it and without a network, for `podman exec`:
    starting a container copies the whole image with vfs storage, so the checks share one."""
    name = f"poolbudget-image-test-{uuid.uuid4().hex[:8]}"
    podman(
        "run", "--detach", "--name", name, *RESTRICTED, "--network", "none",
        "--volume", f"{pip_wheel}:/run/pip.whl:ro",
        "--entrypoint", "/opt/poolbudget/bin/python", image.ref,
        "-c", "import signal; signal.pause()",
    )  # fmt: skip
    try:
        yield name
    finally:
        podman("rm", "--force", "--time", "0", name, check=False)


def run_inside(container: str, *command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return podman("exec", container, *command, check=check)


# ------------------------------------------------------------------------------------------------ the image


def test_the_image_builds_with_the_entrypoint_and_user_the_dockerfile_promises(image: Image) -> None:
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert image.ref == f"localhost/poolbudget:{version}"
    assert image.config["Entrypoint"] == ["poolbudget", "run"]
    assert image.config["User"] == f"{UID}:{UID}"
    assert image.config["Labels"]["org.opencontainers.image.version"] == version
    env = dict(item.partition("=")[::2] for item in image.config["Env"])
    assert env["PATH"].startswith("/opt/poolbudget/bin:")
    assert not any(key.startswith("PIP_") for key in env), (
        "pip's build settings (its CA bundle) stay in the build"
    )
    print(f"\nimage {image.ref} ready in {image.build_seconds:.1f} s")


def test_pip_check_passes_inside(inside: str) -> None:
    """The virtualenv's installed distributions have every requirement they declare, at compatible versions."""
    result = run_inside(
        inside, "env", "PIP_NO_CACHE_DIR=1", "/opt/poolbudget/bin/python", "/run/pip.whl/pip", "check"
    )
    assert result.stdout.strip() == "No broken requirements found.", result.stdout + result.stderr


def test_the_image_has_no_pip_compilers_or_build_backend(inside: str) -> None:
    script = (
        "import glob, importlib.util, json, shutil\n"
        "print(json.dumps({\n"
        "    'modules': [m for m in ('pip', 'setuptools', 'wheel') if importlib.util.find_spec(m)],\n"
        "    'tools': [t for t in ('gcc', 'cc', 'c++', 'make', 'pip', 'pip3') if shutil.which(t)],\n"
        "    'wheels': glob.glob('/usr/share/python-wheels/*.whl'),\n"
        "}))\n"
    )
    for python in ("/opt/poolbudget/bin/python", "python3"):  # the virtualenv's, and the base's own
        found = json.loads(run_inside(inside, python, "-c", script).stdout)
        assert found == {"modules": [], "tools": [], "wheels": []}, python


def test_it_runs_as_uid_10001_and_cannot_write_its_own_code(inside: str) -> None:
    assert run_inside(inside, "id", "-u").stdout.strip() == str(UID)
    assert run_inside(inside, "id", "-g").stdout.strip() == str(UID)
    probe = (
        "import os\n"
        "for path in ('/', '/etc', '/opt/poolbudget/bin', '/opt/poolbudget/lib/python3.11/site-packages/poolbudget',"
        " '/tmp'):\n"
        "    print(path, os.access(path, os.W_OK))\n"
    )
    writable = dict(line.split() for line in run_inside(inside, "python3", "-c", probe).stdout.splitlines())
    # A read-only root and root-owned code; /tmp is podman's tmpfs, as the chart mounts an emptyDir there.
    assert writable == {
        "/": "False",
        "/etc": "False",
        "/opt/poolbudget/bin": "False",
        "/opt/poolbudget/lib/python3.11/site-packages/poolbudget": "False",
        "/tmp": "True",
    }


# ------------------------------------------------------------------------------------------------ its commands


def test_plan_in_the_image_prints_exactly_what_it_prints_outside(image: Image) -> None:
    outside = subprocess.run(
        [sys.executable, "-m", "poolbudget", "plan", "-f", str(REPO / "examples"), "-o", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO / "operator")},
    )
    assert outside.returncode == 0, outside.stderr
    inside = podman(
        "run", "--rm", "--read-only", "--user", str(UID), "--cap-drop", "ALL", "--network", "host",
        "--volume", f"{REPO / 'examples'}:/examples:ro",
        "--entrypoint", "poolbudget", image.ref, "plan", "-f", "/examples", "-o", "json",
    )  # fmt: skip
    assert json.loads(outside.stdout)["budgets"], "the examples plan at least one budget"
    assert inside.stdout == outside.stdout
    assert outside.stderr == ""
    # podman's own warnings (WARN[0000] ...) would go to stderr too; nothing else may.
    assert [line for line in inside.stderr.splitlines() if not line.startswith("WARN[")] == []


# ------------------------------------------------------------------------------------------------ the operator


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            return int(answer.status), answer.read().decode()
    except urllib.error.HTTPError as error:
        return int(error.code), ""
    except (urllib.error.URLError, OSError):
        return 0, ""


def manifests(budget: str, namespace: str) -> list[dict[str, Any]]:
    return [
        budget_manifest(budget, 60, reserved=5, rebalance=FAST),
        deployment_manifest("api", namespace, budget=budget, env=[{"name": "WEB_CONCURRENCY", "value": "3"}]),
        deployment_manifest(
            "worker", namespace, budget=budget, replicas=1, annotations={"poolbudget.io/weight": "2"}
        ),
    ]


def _sized(kube: KubeCluster, namespace: str) -> dict[str, Any] | None:
    """What the operator wrote into both opted-in Deployments (containers' env, pod-template annotations), once
    both carry the per-pod stamp; else None."""
    sized = {}
    for name in ("api", "worker"):
        template = (kube.get("deployment", name, namespace) or {})["spec"]["template"]
        annotations = (template.get("metadata") or {}).get("annotations") or {}
        if "poolbudget.io/connections-per-pod" not in annotations:
            return None
        sized[name] = {
            "env": [c.get("env") or [] for c in template["spec"]["containers"]],
            "annotations": annotations,
        }
    return sized


def _portable(kubeconfig: Path) -> Path:
    """The ServiceAccount kubeconfig with the CA inline (the container cannot see the host's file), readable by
    uid 10001."""
    config = yaml.safe_load(kubeconfig.read_text())
    cluster = config["clusters"][0]["cluster"]
    ca = Path(cluster.pop("certificate-authority")).read_bytes()
    cluster["certificate-authority-data"] = base64.b64encode(ca).decode()
    kubeconfig.write_text(yaml.safe_dump(config))
    kubeconfig.chmod(0o644)
    return kubeconfig


@pytest.mark.kube
def test_the_operator_in_the_image_sizes_like_the_operator_outside(
    image: Image, kube: KubeCluster, release: Release, budget_name: str, namespaces: Callable[[str], str],
    tmp_path: Path,
) -> None:  # fmt: skip
    """`podman run --read-only --user 10001 --cap-drop ALL --network host` of the image on the real control plane,
    with a kubeconfig of the chart's ServiceAccount token mounted read-only and the chart's arguments: /healthz and
    /metrics answer, and it sizes the opted-in Deployments exactly as the operator outside the image does (that
    one, started after it on the same objects, finds nothing to write)."""
    apps = namespaces("apps")
    release.run("install")
    kube.apply(*manifests(budget_name, apps))
    kubeconfig = _portable(release.kubeconfig(tmp_path / "sa.kubeconfig"))
    health, metrics = free_port(), free_port()
    name = f"poolbudget-image-operator-{uuid.uuid4().hex[:8]}"
    podman(
        "run", "--detach", "--name", name,
        "--read-only", "--user", str(UID), "--cap-drop", "ALL", "--network", "host",
        "--security-opt", "no-new-privileges",
        "--volume", f"{kubeconfig}:/etc/poolbudget/kubeconfig:ro",
        "--env", "KUBECONFIG=/etc/poolbudget/kubeconfig",
        "--env", f"POOLBUDGET_NAMESPACE={release.namespace}",
        "--env", f"POOLBUDGET_METRICS_PORT={metrics}",
        image.ref, "--standalone", "--liveness", f"http://127.0.0.1:{health}/healthz", *release.operator_args(),
    )  # fmt: skip
    try:

        def healthy() -> bool:
            state = json.loads(podman("inspect", "--format", "{{json .State}}", name).stdout)
            assert state["Running"], f"the operator exited with {state['ExitCode']}:\n{logs(name)}"
            return _get(f"http://127.0.0.1:{health}/healthz")[0] == 200

        wait_for(
            healthy,
            timeout=90,
            interval=0.5,
            message=lambda: f"/healthz of the operator in the image\n{logs(name)}",
        )
        in_image = wait_for(
            lambda: _sized(kube, apps), timeout=90, message=lambda: f"both sized\n{logs(name)}"
        )
        status, body = _get(f"http://127.0.0.1:{metrics}/metrics")
        assert status == 200
        assert f'poolbudget_reconcile_duration_seconds_count{{budget="{budget_name}"}}' in body
    finally:
        stopped = podman("stop", "--time", "20", name, check=False, timeout=60)
        code = podman("inspect", "--format", "{{.State.ExitCode}}", name, check=False).stdout.strip()
        log = logs(name)
        podman("rm", "--force", name, check=False)
    assert stopped.returncode == 0, stopped.stderr
    assert code == "0", log
    assert "Traceback" not in log, log
    assert release.forbidden(0, apps) == [], log

    # The operator of this checkout, outside any container, on the same objects: nothing to change.
    mark = kube.audit.mark()
    with release.operator(tmp_path, env={"PYTHONPATH": str(REPO / "operator")}) as outside:
        rounds = outside.rounds(budget_name)
        wait_for(
            lambda: outside.rounds(budget_name) > rounds, timeout=60, message="a round outside the image"
        )
    assert _sized(kube, apps) == in_image
    assert [w for w in kube.audit.writes(mark, user=release.user) if w.resource == "deployments"] == []
    planned = json.loads(
        subprocess.run(
            [sys.executable, "-m", "poolbudget", "plan", "-f",
             str(write_manifests(tmp_path / "m.yaml", *manifests(budget_name, apps))), "-o", "json"],
            capture_output=True, text=True, check=True, timeout=60,
            env={**os.environ, "PYTHONPATH": str(REPO / "operator")},
        ).stdout
    )["budgets"][0]  # fmt: skip
    assert sorted(entry["name"] for entry in planned["deployments"]) == ["api", "worker"]
    for entry in planned["deployments"]:
        written = {e["name"]: e.get("value") for e in in_image[entry["name"]]["env"][0]}
        assert {e["name"]: e["value"] for e in entry["env"]}.items() <= written.items()


def logs(container: str) -> str:
    result = podman("logs", container, check=False)
    return (result.stdout + result.stderr)[-6000:]
