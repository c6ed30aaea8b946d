"""pytest fixtures for the Kubernetes API emulator (a test double, not a real API server).

Register them from a conftest with ``from tests.emulator.fixtures import emulator  # noqa: F401``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .emulator import KubernetesEmulator


@pytest.fixture
def emulator(tmp_path: Path) -> Iterator[KubernetesEmulator]:
    """A fresh emulator per test: ``.url``, ``.kubeconfig_path``, ``.history``, ``.expire_watches()``,
    ``.pod_simulator()``, ``.kubectl(...)``, ``.env()`` (with ``KUBECONFIG``)."""
    with KubernetesEmulator(tmp_path / "k8s-emulator") as running:
        yield running
