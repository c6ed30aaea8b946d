"""The chart's `watch.clusterWide: false` runs an operator that serves only the listed namespaces.

The operator is started exactly as the chart's Deployment starts it (the image's entrypoint `poolbudget run`
with the rendered args and env) against the Kubernetes API emulator, a test double with no RBAC. Every request
it makes is then checked against the Roles and the ClusterRole the same render grants, by the rules of RBAC
(a small authorizer here, not the API server's): the arguments and the grants fit. That a real API server
denies the rest is for a real control plane.
"""

from __future__ import annotations

import subprocess
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart import container_command, container_env, find, granted, objects
from tests.helm import Helm, helm_fixture  # noqa: F401
from tests.operator_harness import (
    FAST,
    KubernetesEmulator,
    apply,
    budget_manifest,
    budget_status,
    deployment,
    deployment_manifest,
    free_port,
    operator_writes,
    start_cluster,
    wait_until,
)
from tests.operator_harness import container_env as deployment_env

pytestmark = [pytest.mark.emulator, pytest.mark.timeout(120)]

OPERATOR_NAMESPACE = "poolbudget-system"


@pytest.fixture
def emulator(tmp_path: Path) -> Iterator[KubernetesEmulator]:
    cluster = start_cluster(tmp_path, peering=True)
    try:
        for namespace in ("apps", "other", OPERATOR_NAMESPACE):
            cluster.create_namespace(namespace)
        yield cluster
    finally:
        cluster.stop()


def _as_the_user_wrote_it(obj: dict[str, Any]) -> tuple[Any, ...]:
    """A Deployment without what the controller (the emulator's pod simulator) writes: its status."""
    metadata = obj["metadata"]
    return obj["spec"], metadata.get("annotations"), metadata.get("labels"), metadata.get("generation")


class ChartOperator:
    """`poolbudget run` with the args and env of the chart's Deployment, rendered with these values; its kubeconfig
    in the operator's namespace, as the in-cluster service account is."""

    def __init__(self, helm: Helm, emulator: KubernetesEmulator, workdir: Path, *values: str) -> None:
        self.health = free_port()
        flags = [f"operator.healthPort={self.health}", f"operator.metricsPort={free_port()}", *values]
        self.rendered = objects(
            helm.template(*[a for flag in flags for a in ("--set", flag)], "--namespace", OPERATOR_NAMESPACE)
        )
        self.deployment = find(self.rendered, "Deployment")
        self.command = container_command(self.deployment, ["poolbudget", "run"])
        kubeconfig = yaml.safe_load(Path(emulator.env()["KUBECONFIG"]).read_text())
        for context in kubeconfig["contexts"]:
            context["context"]["namespace"] = OPERATOR_NAMESPACE
        (workdir / "kubeconfig").write_text(yaml.safe_dump(kubeconfig))
        self.env = {
            **emulator.env(),
            **container_env(self.deployment),
            "KUBECONFIG": str(workdir / "kubeconfig"),
            "PYTHONUNBUFFERED": "1",
        }
        self.log = workdir / "operator.log"
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> ChartOperator:
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(self.command, env=self.env, stdout=out, stderr=subprocess.STDOUT)
        return self

    def __exit__(self, *_: Any) -> None:
        assert self.process is not None
        self.process.terminate()  # SIGTERM, as the kubelet stops a pod
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=20)

    def running(self) -> bool:
        assert self.process is not None
        assert self.process.poll() is None, f"the operator exited:\n{self.log.read_text()}"
        return True


Request = tuple[str, str, str, str | None]  # (verb, API group, resource, namespace or None)


def rbac_request(method: str, path_qs: str) -> Request | None:
    """What RBAC authorizes for one API request; None for discovery (/api, /apis/g/v: every user may)."""
    url = urllib.parse.urlsplit(path_qs)
    parts = url.path.strip("/").split("/")
    if parts[0] == "api" and len(parts) > 2:
        group, rest = "", parts[2:]
    elif parts[0] == "apis" and len(parts) > 3:
        group, rest = parts[1], parts[3:]
    else:
        return None
    namespace = None
    if rest[0] == "namespaces" and len(rest) >= 3:
        namespace, rest = rest[1], rest[2:]
    resource = rest[0] + (f"/{rest[2]}" if len(rest) > 2 else "")
    named = len(rest) > 1
    watch = "watch=true" in url.query or "watch=1" in url.query
    verb = {
        "GET": "get" if named else ("watch" if watch else "list"),
        "POST": "create",
        "PATCH": "patch",
        "PUT": "update",
        "DELETE": "delete" if named else "deletecollection",
    }[method]
    return verb, group, resource, namespace


def allowed(rendered: list[dict[str, Any]], request: Request) -> bool:
    """RBAC's rule: a ClusterRole bound cluster-wide allows anywhere, a Role only in its own namespace."""
    verb, group, resource, namespace = request
    if (group, resource, verb) in granted(find(rendered, "ClusterRole")):
        return True
    roles = [o for o in rendered if o["kind"] == "Role" and o["metadata"]["namespace"] == namespace]
    return namespace is not None and any((group, resource, verb) in granted(role) for role in roles)


@pytest.mark.parametrize("replicas", [1, 2], ids=["standalone", "peering"])
def test_a_namespaced_install_serves_only_its_namespaces_within_its_grants(
    helm: Helm, emulator: KubernetesEmulator, tmp_path: Path, replicas: int
) -> None:
    apply(emulator, budget_manifest(max_connections=100, reserved=10, rebalance=FAST))
    apply(emulator, deployment_manifest("web", "apps"), deployment_manifest("web", "other"))
    outside = _as_the_user_wrote_it(deployment(emulator, "web", "other"))
    mark = emulator.mark()

    values = ["watch.clusterWide=false", "watch.namespaces={apps}", f"replicaCount={replicas}"]
    operator = ChartOperator(helm, emulator, tmp_path, *values)
    liveness = f"--liveness=http://0.0.0.0:{operator.health}/healthz"
    standalone = ["--standalone"] if replicas == 1 else []
    assert operator.command[2:] == [liveness, *standalone, "--namespace=apps"]
    with operator:

        def sized() -> bool:
            allocations = budget_status(emulator).get("allocations") or []
            return (
                operator.running()
                and "PGAPPNAME" in deployment_env(emulator, "web", "apps")
                and bool(allocations)
            )

        wait_until(sized, timeout=30, interval=0.2, message=f"apps/web sized ({operator.log})")
        (allocation,) = budget_status(emulator)["allocations"]  # other/web is not in the plan
        assert (allocation["namespace"], allocation["name"]) == ("apps", "web")
        assert deployment_env(emulator, "web", "apps")["PGAPPNAME"] == "apps/web"

        def budget_event_posted() -> bool:
            return operator.running() and any(
                (e.get("involvedObject") or {}).get("kind") == "PoolBudget"
                for e in emulator.list_objects("v1", "events", OPERATOR_NAMESPACE)
            )

        wait_until(budget_event_posted, timeout=10, interval=0.2, message="a PoolBudget event")

    # The Deployment outside the watched namespaces was never written.
    assert _as_the_user_wrote_it(deployment(emulator, "web", "other")) == outside
    assert ("other", "deployments") not in {
        (r.namespace, r.plural) for r in operator_writes(emulator, since=mark)
    }
    # Every request of the operator's (kopf's and its own client's) is one the chart's RBAC allows: none is made
    # in a namespace it does not serve, none lists a namespaced resource cluster-wide.
    requests = [
        (method, path)
        for method, path, _, actor in list(emulator.server.requests)
        if actor.startswith(("kopf/", "poolbudget/"))
    ]
    authorized = [(m, p, rbac_request(m, p)) for m, p in requests]
    checked = [(m, p, r) for m, p, r in authorized if r is not None]
    assert {r[2] for _, _, r in checked} >= {"deployments", "pods", "horizontalpodautoscalers", "events"}
    if replicas > 1:  # the peers' ClusterKopfPeering, created and kept by the operator
        assert ("create", "kopf.dev", "clusterkopfpeerings", None) in {r for _, _, r in checked}
    denied = [(m, p) for m, p, r in checked if not allowed(operator.rendered, r)]
    assert denied == []
    assert not [p for _, p in requests if "/namespaces/other" in p]
    assert "Traceback" not in operator.log.read_text()


def test_the_authorizer_here_denies_what_rbac_denies(helm: Helm) -> None:
    """The check above could pass by allowing everything: it does not."""
    rendered = objects(
        helm.template(
            "--set", "watch.clusterWide=false", "--set", "watch.namespaces={apps}",
            "--namespace", OPERATOR_NAMESPACE,
        )
    )  # fmt: skip
    for method, path, verdict in [
        ("PATCH", "/apis/apps/v1/namespaces/apps/deployments/web", True),
        ("PATCH", "/apis/apps/v1/namespaces/other/deployments/web", False),
        ("GET", "/apis/apps/v1/deployments?watch=true", False),  # namespaced resources, cluster-wide
        ("GET", "/api/v1/namespaces/apps/pods?watch=true&resourceVersion=1", True),
        ("GET", "/api/v1/namespaces/apps/pods/web-1", False),  # list and watch only, never get
        ("POST", f"/api/v1/namespaces/{OPERATOR_NAMESPACE}/events", True),
        ("POST", "/api/v1/namespaces/other/events", False),
        ("GET", f"/api/v1/namespaces/{OPERATOR_NAMESPACE}/secrets/db", True),
        ("GET", "/api/v1/namespaces/apps/secrets/db", False),
        ("GET", "/api/v1/namespaces", True),  # Namespaces are cluster-scoped: the ClusterRole
        ("PATCH", "/apis/poolbudget.io/v1alpha1/poolbudgets/main/status", True),
        ("DELETE", "/apis/poolbudget.io/v1alpha1/poolbudgets/main", False),
    ]:
        request = rbac_request(method, path)
        assert request is not None
        assert allowed(rendered, request) is verdict, (method, path, request)
