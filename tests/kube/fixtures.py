"""pytest fixtures for the ``kube`` tests: one real control plane per session, or any cluster given by
``POOLBUDGET_E2E_KUBECONFIG`` (a kind or k3d cluster on a laptop) instead of the built-in one.

Each test takes its own namespaces (``namespaces``) and budget names, so tests share the session's cluster safely.
Writes are counted from the API server's audit log, which only the built-in control plane has.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.kube.controlplane import ROOT, ControlPlane, binary, control_plane, wait_until

BUDGET_CRD = ROOT / "crds" / "poolbudget.io_poolbudgets.yaml"
PEERING_CRD = ROOT / "crds" / "kopf-peering.yaml"
EXTERNAL_KUBECONFIG_ENV = "POOLBUDGET_E2E_KUBECONFIG"
WRITE_VERBS = frozenset({"create", "update", "patch", "delete", "deletecollection"})


@dataclass(frozen=True)
class AuditEvent:
    """One write the API server accepted or refused, from its audit log."""

    user: str
    user_agent: str
    verb: str
    resource: str
    subresource: str
    namespace: str
    name: str
    code: int
    received: str  # requestReceivedTimestamp, RFC 3339 with microseconds
    completed: str  # stageTimestamp of ResponseComplete
    audit_id: str

    @classmethod
    def parse(cls, entry: Mapping[str, Any]) -> AuditEvent:
        ref = entry.get("objectRef") or {}
        return cls(
            user=(entry.get("user") or {}).get("username", ""),
            user_agent=entry.get("userAgent", ""),
            verb=entry.get("verb", ""),
            resource=ref.get("resource", ""),
            subresource=ref.get("subresource", ""),
            namespace=ref.get("namespace", ""),
            name=ref.get("name", ""),
            code=int((entry.get("responseStatus") or {}).get("code", 0)),
            received=entry.get("requestReceivedTimestamp", ""),
            completed=entry.get("stageTimestamp", ""),
            audit_id=entry.get("auditID", ""),
        )


class AuditLog:
    """The API server's audit log of writes (level Request, stage ResponseComplete), read from an offset."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def mark(self) -> int:
        """An offset: ``writes(since=mark)`` sees only what was written after this call."""
        return self.path.stat().st_size if self.path.exists() else 0

    def writes(self, since: int = 0, *, user: str | None = None) -> list[AuditEvent]:
        """The writes (create, update, patch, delete) since an offset, of one user or of everyone."""
        return [e for e in self.requests(since, user=user) if e.verb in WRITE_VERBS]

    def requests(self, since: int = 0, *, user: str | None = None) -> list[AuditEvent]:
        """Every request logged since an offset: all writes, and reads by ServiceAccounts outside kube-system."""
        if not self.path.exists():
            return []
        with self.path.open("rb") as log:
            log.seek(since)
            lines = log.read().splitlines()
        events = []
        for line in lines:
            entry = json.loads(line)
            if entry.get("stage") != "ResponseComplete":
                continue
            event = AuditEvent.parse(entry)
            if user is None or event.user == user:
                events.append(event)
        return events


class KubeCluster:
    """What a ``kube`` test sees of the cluster: kubectl as the admin, the audit log, ServiceAccount kubeconfigs."""

    def __init__(self, kubeconfig: Path, workdir: Path, plane: ControlPlane | None) -> None:
        self.kubeconfig = kubeconfig
        self.workdir = workdir
        self.plane = plane  # None for an external cluster

    @property
    def audit(self) -> AuditLog:
        if self.plane is None:
            pytest.skip(
                "write counts need the API server's audit log: only the built-in control plane has one"
            )
        return AuditLog(self.plane.audit_log)

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, kubeconfig: Path | None = None
    ) -> Any:
        if self.plane is not None:
            return self.plane.kubectl(*args, input=input, check=check, kubeconfig=kubeconfig)
        import subprocess  # an external cluster: the same pinned kubectl

        result = subprocess.run(
            [binary("kubectl"), "--kubeconfig", str(kubeconfig or self.kubeconfig), *args],
            input=input, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed: {result.stderr.strip()}")
        return result

    def apply(self, *documents: Mapping[str, Any], kubeconfig: Path | None = None) -> None:
        """``kubectl apply`` of manifests, validated by the real server against its OpenAPI schemas."""
        self.kubectl(
            "apply", "-f", "-", input=yaml.safe_dump_all([dict(d) for d in documents]), kubeconfig=kubeconfig
        )

    def get(self, kind: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        args = ["get", kind, name, "-o", "json"] + (["-n", namespace] if namespace else [])
        result = self.kubectl(*args, check=False)
        if result.returncode != 0:
            if "NotFound" in result.stderr or "not found" in result.stderr:
                return None
            raise AssertionError(f"kubectl get {kind} {name}: {result.stderr.strip()}")
        return dict(json.loads(result.stdout))

    def list(
        self, kind: str, namespace: str | None = None, selector: str | None = None
    ) -> list[dict[str, Any]]:
        args = ["get", kind, "-o", "json"] + (["-n", namespace] if namespace else ["-A"])
        if selector:
            args += ["-l", selector]
        return list(json.loads(self.kubectl(*args).stdout)["items"])

    def namespace(self, prefix: str) -> str:
        name = f"{prefix[:40]}-{uuid.uuid4().hex[:6]}"
        self.kubectl("create", "namespace", name)
        wait_until(
            lambda: self.kubectl("get", "serviceaccount", "default", "-n", name, check=False).returncode == 0,
            timeout=30, message=lambda: f"default ServiceAccount in {name}",
        )  # fmt: skip
        return name

    def service_account_kubeconfig(self, namespace: str, name: str, path: Path) -> Path:
        """A kubeconfig holding a TokenRequest token of the ServiceAccount: requests carry exactly its rights."""
        token = self.kubectl("create", "token", name, "-n", namespace, "--duration", "2h").stdout.strip()
        config = yaml.safe_load(self.kubeconfig.read_text())
        user = f"system:serviceaccount:{namespace}:{name}"
        config["users"] = [{"name": user, "user": {"token": token}}]
        config["contexts"] = [
            {"name": "test", "context": {"cluster": config["clusters"][0]["name"], "user": user}}
        ]
        config["current-context"] = "test"
        path.write_text(yaml.safe_dump(config))
        path.chmod(0o600)
        return path


def wait_for(
    predicate: Callable[[], Any], *, timeout: float, message: str | Callable[[], str], interval: float = 0.2
) -> Any:
    """Poll until the predicate is truthy; fail with the message (a string or a callable for late detail)."""
    return wait_until(predicate, timeout=timeout, interval=interval,
                      message=message if callable(message) else (lambda: message))  # fmt: skip


@pytest.fixture(scope="session")
def kube() -> Iterator[KubeCluster]:
    """The session's cluster, with the PoolBudget and kopf peering CRDs installed and established."""
    external = os.environ.get(EXTERNAL_KUBECONFIG_ENV)
    with tempfile.TemporaryDirectory(prefix="poolbudget-kube-") as tmp:
        workdir = Path(tmp)
        if external:
            cluster = KubeCluster(Path(external), workdir, None)
            install_crds(cluster)
            yield cluster
            return
        started = time.monotonic()
        with control_plane(workdir / "control-plane") as plane:
            print(f"\ncontrol plane ready in {time.monotonic() - started:.1f} s at {plane.server}")
            cluster = KubeCluster(plane.kubeconfig, workdir, plane)
            install_crds(cluster)
            yield cluster


def install_crds(cluster: KubeCluster) -> None:
    """The CRDs from crds/ as a user installs them; the peering file also holds the shared peering object,
    which the server accepts only once its CRD is established: apply, wait, apply again."""
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(BUDGET_CRD))
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(PEERING_CRD), check=False)
    cluster.kubectl("wait", "--for", "condition=Established", "--timeout", "60s",
                    "crd/poolbudgets.poolbudget.io", "crd/clusterkopfpeerings.kopf.dev")  # fmt: skip
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(PEERING_CRD))


@pytest.fixture
def namespaces(kube: KubeCluster, request: pytest.FixtureRequest) -> Iterator[Callable[[str], str]]:
    """Make namespaces for this test (``ns = namespaces("api")``); deleted at the end without waiting."""
    made: list[str] = []

    def make(prefix: str) -> str:
        test = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")
        name = kube.namespace(f"{test[:24].strip('-')}-{prefix}")
        made.append(name)
        return name

    yield make
    for name in made:
        # Deployments first (gone at once, their pods collected after): no later test's cluster-wide operator
        # should meet an opted-in Deployment of this one in a namespace that is still terminating.
        kube.kubectl(
            "delete",
            "deployments,horizontalpodautoscalers",
            "--all",
            "-n",
            name,
            "--timeout=60s",
            check=False,
        )
        kube.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture
def budget_name(kube: KubeCluster) -> Iterator[str]:
    """A PoolBudget name of this test's own (budgets are cluster-scoped); the budget is deleted at the end."""
    name = f"pb-{uuid.uuid4().hex[:8]}"
    yield name
    kube.kubectl("delete", "poolbudget", name, "--ignore-not-found", "--wait=false", check=False)
