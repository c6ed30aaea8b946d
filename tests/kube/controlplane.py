"""A real Kubernetes control plane for the ``kube`` tests: etcd, kube-apiserver, kube-controller-manager,
kube-scheduler and kwok (fake nodes: pods become Running and Ready, and stay Terminating for their grace period).

The binaries are the pinned ones ``scripts/build-kube.sh`` builds into a cache and links into ``.tools/bin``.
Everything listens on 127.0.0.1 on free ports, in one temporary directory: certificates made with openssl, an admin
token, and an audit policy that logs every write to ``audit.log`` (the honest count of who wrote what).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
TOOLS_BIN = ROOT / ".tools" / "bin"
STAGES = Path(__file__).with_name("stages.yaml")
NODE_NAME = "kwok-node-0"
START_TIMEOUT = (
    90.0  # seconds for one component to answer; a cold apiserver on a loaded 2-core machine takes ~20 s
)
STOP_TIMEOUT = 15.0
ADMIN_USER = "poolbudget-test-admin"
PR_SET_PDEATHSIG = 1  # prctl(2)

AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived"],
    "rules": [
        # Every write (who, what, when, the answer), so tests count writes per user; bodies are left out: with
        # thousands of pods they would be gigabytes.
        {"level": "Metadata", "verbs": ["create", "update", "patch", "delete", "deletecollection"]},
        # Reads too, but only by ServiceAccounts outside kube-system (the operator run with the chart's): an RBAC
        # test sees every request it made and its answer. The controllers' own reads would only fill the file.
        {"level": "None", "userGroups": ["system:serviceaccounts:kube-system"]},
        {"level": "Metadata", "userGroups": ["system:serviceaccounts"]},
        {"level": "None"},
    ],
}


class ControlPlaneError(RuntimeError):
    """A component did not start or answer in time; the message carries the log tails."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def binary(name: str) -> str:
    """A pinned binary from .tools/bin (built by scripts/build-kube.sh); never one from PATH by accident."""
    path = TOOLS_BIN / name
    if not os.access(path, os.X_OK):
        raise ControlPlaneError(
            f"{path} is missing: run scripts/build-kube.sh (the README's test command does)"
        )
    return str(path)


def wait_until(
    predicate: Callable[[], Any], *, timeout: float, interval: float = 0.2, message: Callable[[], str]
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise ControlPlaneError(f"timed out after {timeout:.0f} s: {message()}")
        time.sleep(interval)


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the test process dies, so a killed run leaves no server behind."""
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class Component:
    """One control-plane process with its log file."""

    name: str
    argv: list[str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        if not self.running():
            return
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=STOP_TIMEOUT)

    def tail(self, lines: int = 25) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return f"--- {self.name}: no log"
        exit_note = (
            f" (exited {self.process.returncode})" if self.process and self.process.poll() is not None else ""
        )
        return f"--- {self.name}{exit_note}, last {lines} lines of {self.log_path}:\n" + "\n".join(
            text[-lines:]
        )


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_certificates(pki: Path) -> None:
    """A CA, a serving certificate for 127.0.0.1/localhost, and the service-account signing key."""
    pki.mkdir(parents=True, exist_ok=True)
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
             "-days", "2", "-subj", "/CN=poolbudget-test-ca", cwd=pki)  # fmt: skip
    (pki / "san.cnf").write_text(
        "[req]\ndistinguished_name=dn\n[dn]\n[ext]\n"
        "subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default.svc\n"
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n"
    )
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "apiserver.key", "-out", "apiserver.csr",
             "-subj", "/CN=kube-apiserver", cwd=pki)  # fmt: skip
    _openssl("x509", "-req", "-in", "apiserver.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", "apiserver.crt", "-days", "2", "-extfile", "san.cnf", "-extensions", "ext", cwd=pki)  # fmt: skip
    _openssl("genrsa", "-out", "sa.key", "2048", cwd=pki)
    _openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=pki)


def kubeconfig(server: str, ca: Path, token: str, user: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "test", "cluster": {"server": server, "certificate-authority": str(ca)}}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": user}}],
        "current-context": "test",
    }


@dataclass
class ControlPlane:
    """The started control plane. ``kubeconfig`` is an admin's (system:masters); see ``tests/kube/fixtures.py``."""

    workdir: Path
    components: dict[str, Component] = field(default_factory=dict)
    controller_qps: int = 200  # the controller-manager's and scheduler's API rate (burst twice that)
    apiserver_port: int = 0
    etcd_url: str = ""
    admin_token: str = ""

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.apiserver_port}"

    @property
    def kubeconfig(self) -> Path:
        return self.workdir / "admin.kubeconfig"

    @property
    def ca(self) -> Path:
        return self.workdir / "pki" / "ca.crt"

    @property
    def audit_log(self) -> Path:
        return self.workdir / "audit.log"

    # -- starting -------------------------------------------------------------------------------------------

    def start(self) -> ControlPlane:
        self.workdir.mkdir(parents=True, exist_ok=True)
        pki = self.workdir / "pki"
        make_certificates(pki)
        self.admin_token = os.urandom(16).hex()
        (pki / "tokens.csv").write_text(f'{self.admin_token},{ADMIN_USER},{ADMIN_USER},"system:masters"\n')
        (self.workdir / "audit-policy.yaml").write_text(yaml.safe_dump(AUDIT_POLICY))
        self.apiserver_port = free_port()
        self.kubeconfig.write_text(
            yaml.safe_dump(kubeconfig(self.server, self.ca, self.admin_token, ADMIN_USER))
        )
        try:
            self._start_etcd()
            self.start_apiserver()
            self._start_controllers()
            self._add_node()
        except BaseException:
            failure = self.tails()
            self.stop()
            raise ControlPlaneError(f"the control plane did not start\n{failure}") from None
        return self

    def _component(self, name: str, argv: Sequence[str]) -> Component:
        component = Component(name, list(argv), self.workdir / f"{name}.log")
        self.components[name] = component
        component.start()
        return component

    def _start_etcd(self) -> None:
        client, peer = free_port(), free_port()
        self.etcd_url = f"http://127.0.0.1:{client}"
        etcd = self._component("etcd", [
            binary("etcd"), "--name", "test", "--data-dir", str(self.workdir / "etcd"),
            "--listen-client-urls", self.etcd_url, "--advertise-client-urls", self.etcd_url,
            "--listen-peer-urls", f"http://127.0.0.1:{peer}", "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
            "--initial-cluster", f"test=http://127.0.0.1:{peer}", "--unsafe-no-fsync", "--log-level", "warn",
        ])  # fmt: skip
        wait_until(lambda: self._http_ok(f"{self.etcd_url}/health", etcd), timeout=START_TIMEOUT,
                   message=lambda: etcd.tail())  # fmt: skip

    def apiserver_argv(self) -> list[str]:
        pki = self.workdir / "pki"
        return [
            binary("kube-apiserver"), "--etcd-servers", self.etcd_url,
            "--bind-address", "127.0.0.1", "--advertise-address", "127.0.0.1",
            "--secure-port", str(self.apiserver_port),
            "--tls-cert-file", str(pki / "apiserver.crt"), "--tls-private-key-file", str(pki / "apiserver.key"),
            "--client-ca-file", str(pki / "ca.crt"), "--token-auth-file", str(pki / "tokens.csv"),
            "--authorization-mode", "Node,RBAC",
            "--service-account-issuer", "https://kubernetes.default.svc.cluster.local",
            "--service-account-key-file", str(pki / "sa.pub"),
            "--service-account-signing-key-file", str(pki / "sa.key"),
            "--service-cluster-ip-range", "10.96.0.0/16",
            "--audit-policy-file", str(self.workdir / "audit-policy.yaml"),
            "--audit-log-path", str(self.audit_log), "--audit-log-format", "json",
            "--audit-log-mode", "blocking",  # every write is in the file before its answer: counts are exact
            "--audit-log-maxsize", "1000000",  # MB: never rotate (the default, 100 MB, breaks reading from an offset)
            "--cert-dir", str(pki / "generated"),
            "--max-requests-inflight", "800", "--max-mutating-requests-inflight", "400",
        ]  # fmt: skip

    def start_apiserver(self) -> None:
        """(Re)start kube-apiserver on the same port and etcd: what a control-plane upgrade or crash looks like."""
        apiserver = self._component("kube-apiserver", self.apiserver_argv())
        wait_until(lambda: self._readyz(apiserver), timeout=START_TIMEOUT, interval=0.3,
                   message=lambda: apiserver.tail())  # fmt: skip

    def stop_apiserver(self) -> None:
        self.components["kube-apiserver"].stop()

    def _start_controllers(self) -> None:
        kubeconfig_path = str(self.kubeconfig)
        pki = self.workdir / "pki"
        self._component("kube-controller-manager", [
            binary("kube-controller-manager"), "--kubeconfig", kubeconfig_path,
            "--authentication-kubeconfig", kubeconfig_path, "--authorization-kubeconfig", kubeconfig_path,
            "--bind-address", "127.0.0.1", "--secure-port", str(free_port()), "--leader-elect=false",
            "--service-account-private-key-file", str(pki / "sa.key"), "--root-ca-file", str(pki / "ca.crt"),
            "--use-service-account-credentials=true", "--controllers", "*,-node-ipam-controller,-cloud-node-lifecycle-controller,-service-lb-controller,-node-route-controller",
            "--kube-api-qps", str(self.controller_qps), "--kube-api-burst", str(2 * self.controller_qps),
            "--concurrent-deployment-syncs", "10",
            "--concurrent-replicaset-syncs", "10",
        ])  # fmt: skip
        self._component("kube-scheduler", [
            binary("kube-scheduler"), "--kubeconfig", kubeconfig_path,
            "--authentication-kubeconfig", kubeconfig_path, "--authorization-kubeconfig", kubeconfig_path,
            "--bind-address", "127.0.0.1", "--secure-port", str(free_port()), "--leader-elect=false",
            "--kube-api-qps", str(self.controller_qps), "--kube-api-burst", str(2 * self.controller_qps),
        ])  # fmt: skip
        self._component("kwok", [
            binary("kwok"), "--kubeconfig", kubeconfig_path, "--manage-all-nodes", "--config", str(STAGES),
            "--node-lease-duration-seconds", "40", "--server-address", f"127.0.0.1:{free_port()}",
            "--cidr", "10.244.0.0/16", "--node-ip", "10.1.0.1",
        ])  # fmt: skip

    def _add_node(self) -> None:
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": NODE_NAME, "labels": {"kubernetes.io/hostname": NODE_NAME, "type": "kwok"}},
            "spec": {},
        }
        self.kubectl("apply", "-f", "-", input=json.dumps(node))
        wait_until(self._node_ready, timeout=START_TIMEOUT, interval=0.3,
                   message=lambda: f"node {NODE_NAME} Ready\n{self.tails()}")  # fmt: skip
        # Pods can only be created once the controller-manager made the namespace's default ServiceAccount.
        wait_until(
            lambda: self.kubectl("get", "serviceaccount", "default", "-n", "default", check=False).returncode == 0,
            timeout=START_TIMEOUT, message=lambda: f"default ServiceAccount\n{self.tails()}",
        )  # fmt: skip

    def _node_ready(self) -> bool:
        result = self.kubectl("get", "node", NODE_NAME, "-o", "json", check=False)
        if result.returncode != 0:
            return False
        node = json.loads(result.stdout)
        if node.get("spec", {}).get(
            "taints"
        ):  # node.kubernetes.io/not-ready until the node controller saw it Ready
            return False
        conditions = node.get("status", {}).get("conditions", [])
        return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)

    def _http_ok(self, url: str, component: Component) -> bool:
        if not component.running():
            raise ControlPlaneError(f"{component.name} exited\n{component.tail()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                return bool(answer.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def _readyz(self, component: Component) -> bool:
        if not component.running():
            raise ControlPlaneError(f"{component.name} exited\n{component.tail()}")
        context = ssl.create_default_context(cafile=str(self.ca))
        request = urllib.request.Request(
            f"{self.server}/readyz", headers={"Authorization": f"Bearer {self.admin_token}"}
        )
        try:
            with urllib.request.urlopen(request, timeout=2, context=context) as answer:
                return bool(answer.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    # -- using ------------------------------------------------------------------------------------------------

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, kubeconfig: Path | None = None
    ) -> subprocess.CompletedProcess[str]:
        """The real kubectl of the pinned release, as the admin unless another kubeconfig is given."""
        result = subprocess.run(
            [binary("kubectl"), "--kubeconfig", str(kubeconfig or self.kubeconfig), *args],
            input=input, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        if check and result.returncode != 0:
            raise AssertionError(
                f"kubectl {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}"
            )
        return result

    def tails(self) -> str:
        return "\n".join(component.tail() for component in self.components.values())

    def stop(self) -> None:
        for name in ("kwok", "kube-scheduler", "kube-controller-manager", "kube-apiserver", "etcd"):
            component = self.components.get(name)
            if component is not None:
                with contextlib.suppress(Exception):
                    component.stop()


@contextlib.contextmanager
def control_plane(workdir: Path) -> Iterator[ControlPlane]:
    plane = ControlPlane(workdir).start()
    try:
        yield plane
    finally:
        plane.stop()
        if os.environ.get("POOLBUDGET_KEEP_CONTROL_PLANE_DIR") != "1":
            shutil.rmtree(workdir, ignore_errors=True)
