"""A helm release of the chart in the real cluster, and the operator run as its pod would be: with the chart's
ServiceAccount (a TokenRequest token), args and namespace. kwok runs no containers: this is the kubelet's part."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helm import CHART, Helm
from tests.helm import helm_fixture as helm_fixture  # the `helm` fixture, for `release`
from tests.kube.fixtures import KubeCluster
from tests.kube.operator import KubeOperator, operator_on

SERVICE_ACCOUNT = "poolbudget"  # the chart's fullname for release "poolbudget"


class Release:
    """One helm release of the chart in the cluster (helm talks to it with the admin kubeconfig)."""

    def __init__(self, helm: Helm, kube: KubeCluster, namespace: str) -> None:
        self.helm, self.kube, self.namespace = helm, kube, namespace
        self.user = f"system:serviceaccount:{namespace}:{SERVICE_ACCOUNT}"

    def run(self, verb: str, *values: str) -> str:
        # The CRDs were installed from crds/ by the session fixture: the chart must not fight over them here.
        args = [verb, "poolbudget", str(CHART), "-n", self.namespace, "--kubeconfig", str(self.kube.kubeconfig),
                "--set", "crds.create=false", "--wait=false", *values]  # fmt: skip
        return self.helm.run(*args).stdout

    def operator_args(self) -> list[str]:
        """The arguments the chart gives `poolbudget run` (its own liveness address aside)."""
        deployment = self.kube.get("deployment", SERVICE_ACCOUNT, self.namespace) or {}
        args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
        return [a for a in args if not a.startswith("--liveness") and a != "--standalone"]

    def kubeconfig(self, path: Path) -> Path:
        """A kubeconfig as the chart's ServiceAccount, with the operator's namespace as the context's (where kopf
        posts the PoolBudget's events, as in the pod)."""
        made = self.kube.service_account_kubeconfig(self.namespace, SERVICE_ACCOUNT, path)
        config = yaml.safe_load(made.read_text())
        config["contexts"][0]["context"]["namespace"] = self.namespace
        made.write_text(yaml.safe_dump(config))
        return made

    @contextlib.contextmanager
    def operator(self, workdir: Path, **options: Any) -> Iterator[KubeOperator]:
        """``poolbudget run`` as the chart's pod: its ServiceAccount, its namespace, its arguments."""
        kubeconfig = self.kubeconfig(workdir / f"{self.namespace}.kubeconfig")
        env = {"POOLBUDGET_NAMESPACE": self.namespace, **options.pop("env", {})}
        with operator_on(
            self.kube, workdir, kubeconfig=kubeconfig, env=env, args=self.operator_args(), **options
        ) as running:
            yield running

    def can(self, verb: str, resource: str, namespace: str | None) -> bool:
        args = ["auth", "can-i", verb, resource, "--as", self.user] + (["-n", namespace] if namespace else [])
        return str(self.kube.kubectl(*args, check=False).stdout.strip()) == "yes"

    def forbidden(self, since: int, *namespaces: str) -> list[tuple[str, str, str]]:
        """Requests of the ServiceAccount the server refused with 403 (reads and writes alike), cluster-scoped or
        in ``namespaces`` and the release's own: other tests' namespaces may still be terminating, and posting
        events there is refused for that reason, not for RBAC."""
        mine = {"", self.namespace, *namespaces}
        return [
            (r.verb, r.resource, r.namespace)
            for r in self.kube.audit.requests(since, user=self.user)
            if r.code == 403 and r.namespace in mine
        ]


@pytest.fixture
def release(helm: Helm, kube: KubeCluster, namespaces: Callable[[str], str]) -> Iterator[Release]:
    """The chart's release in a namespace of this test's (install it with ``release.run("install")``)."""
    installed = Release(helm, kube, namespaces("operator"))
    yield installed
    helm.run(
        "uninstall",
        "poolbudget",
        "-n",
        installed.namespace,
        "--kubeconfig",
        str(kube.kubeconfig),
        check=False,
    )
