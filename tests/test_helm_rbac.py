"""The chart's RBAC grants exactly what the operator calls: its Kubernetes adapter's calls, read from the code,
plus what kopf does for the handlers in handlers.py (list and watch what it serves, patch what it keeps
finalizers and progress on, post Events, scan CRDs, keep peering)."""

from __future__ import annotations

import ast
import inspect
import re
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import pytest
import yaml

from poolbudget.adapters import kubernetes as adapter
from poolbudget.cli import build_parser
from poolbudget.runtime import handlers
from tests.chart import KUBERNETES_VERSIONS, Grant, find, granted, objects, validate_strict
from tests.helm import REPO, Helm, helm_fixture  # noqa: F401

# The kubernetes client's API classes, by the attribute the adapter keeps them in.
API_GROUPS = {"_apps": "apps", "_core": ""}
VERBS = {
    "read": "get",
    "get": "get",
    "patch": "patch",
    "create": "create",
    "list": "list",
    "delete": "delete",
    "replace": "update",
}
# kopf's decorators that make it keep a finalizer or progress on the objects (so it patches them).
CHANGING = {"on.create", "on.update", "on.delete", "on.resume", "on.field", "daemon", "timer"}


def _value(node: ast.expr, module: ModuleType) -> Any:
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        return getattr(module, node.id)
    raise AssertionError(f"cannot evaluate {ast.unparse(node)} in {module.__name__}")


def adapter_calls(module: ModuleType = adapter) -> Iterator[tuple[Grant, bool]]:
    """Every (group, resource, verb) the adapter calls, and whether it is namespaced, from its source."""
    for node in ast.walk(ast.parse(inspect.getsource(module))):
        if not (isinstance(node, ast.Call) and ast.unparse(node.func) == "self._call"):
            continue
        target = node.args[1]
        assert isinstance(target, ast.Attribute), ast.unparse(node)
        api, method = ast.unparse(target.value).removeprefix("self."), target.attr
        verb = VERBS[method.split("_", 1)[0]]
        args = node.args[2:]
        if api == "_custom":
            group, plural = _value(args[0], module), _value(args[2], module)
            resource = plural + ("/status" if method.endswith("_status") else "")
            yield (group, resource, verb), "namespaced" in method
        else:
            kind = re.fullmatch(r"[a-z]+_namespaced_([a-z_]+)", method)
            assert kind, f"add {method} to this test's mapping"
            yield (API_GROUPS[api], kind[1] + "s", verb), True


def kopf_needs(module: ModuleType = handlers) -> set[Grant]:
    """What kopf calls for the handlers registered in handlers.py, and for itself."""
    needs: set[Grant] = {
        ("apiextensions.k8s.io", "customresourcedefinitions", "list"),
        ("apiextensions.k8s.io", "customresourcedefinitions", "watch"),
        ("", "events", "create"),  # kopf.event() and kopf's own Warning events: POST core v1 Events
        # peering between replicas: kopf watches the peering object and patches its own entry in it
        ("kopf.dev", "clusterkopfpeerings", "list"),
        ("kopf.dev", "clusterkopfpeerings", "watch"),
        ("kopf.dev", "clusterkopfpeerings", "patch"),
    }
    for node in ast.walk(ast.parse(inspect.getsource(module))):
        if not isinstance(node, ast.AsyncFunctionDef | ast.FunctionDef):
            continue
        for decorator in node.decorator_list:
            if not isinstance(decorator, ast.Call):
                continue
            name = ast.unparse(decorator.func).removeprefix("kopf.")
            if not decorator.args or name in ("on.startup", "on.cleanup", "on.probe"):
                continue
            parts = [_value(a, module) for a in decorator.args]
            group = "" if len(parts) == 2 else parts[0]
            plural = parts[-1]
            needs |= {(group, plural, "list"), (group, plural, "watch")}
            if name in CHANGING:
                needs.add((group, plural, "patch"))
    return needs


@pytest.fixture(scope="module")
def rendered(helm: Helm) -> list[dict[str, Any]]:
    return objects(helm.template("--set", "replicaCount=2"))


def test_the_adapter_is_read_as_expected() -> None:
    calls = dict(adapter_calls())
    assert ("apps", "deployments", "patch") in calls
    assert ("", "secrets", "get") in calls


def test_cluster_role_grants_exactly_the_operators_calls(rendered: list[dict[str, Any]]) -> None:
    cluster_wide = {grant for grant, _ in adapter_calls() if grant[1] != "secrets"}
    expected = cluster_wide | kopf_needs()
    role = granted(find(rendered, "ClusterRole"))
    assert sorted(role - expected) == [], "granted but never called"
    assert sorted(expected - role) == [], "called but not granted"


def test_secrets_are_read_only_in_the_operators_namespace(rendered: list[dict[str, Any]]) -> None:
    assert not any(resource == "secrets" for _, resource, _ in granted(find(rendered, "ClusterRole")))
    role = find(rendered, "Role", "-secrets")
    assert role["metadata"]["namespace"] == "poolbudget-system"
    assert (
        granted(role)
        == {grant for grant, _ in adapter_calls() if grant[1] == "secrets"}
        == {("", "secrets", "get")}
    )
    binding = find(rendered, "RoleBinding", "-secrets")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    (subject,) = binding["subjects"]
    assert subject["namespace"] == "poolbudget-system"


def test_bindings_name_the_operators_service_account(rendered: list[dict[str, Any]]) -> None:
    account = find(rendered, "ServiceAccount")["metadata"]["name"]
    pod = find(rendered, "Deployment")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == account
    for kind in ("ClusterRoleBinding", "RoleBinding"):
        (subject,) = find(rendered, kind)["subjects"]
        assert subject == {"kind": "ServiceAccount", "name": account, "namespace": "poolbudget-system"}


def test_no_wildcards_and_no_writes_beyond_patch(rendered: list[dict[str, Any]]) -> None:
    for group, resource, verb in granted(find(rendered, "ClusterRole")):
        assert "*" not in (group, resource, verb)
        assert verb not in ("delete", "deletecollection", "update", "escalate", "bind", "impersonate")
        if verb == "create":
            assert resource in ("events", "clusterkopfpeerings"), f"creates {resource}"


def test_rbac_create_false_renders_none(helm: Helm) -> None:
    kinds = {o["kind"] for o in objects(helm.template("--set", "rbac.create=false"))}
    assert not kinds & {"ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}


def _documented(section: str) -> set[Grant]:
    """The grants a table of docs/security.md lists (the section's first table)."""
    text = (REPO / "docs" / "security.md").read_text().split(section, 1)[1]
    grants: set[Grant] = set()
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 3 or not cells[1].startswith("`"):
            if grants:
                break
            continue
        group = "" if cells[0] == "(core)" else cells[0].strip("`")
        grants |= {(group, cells[1].strip("`"), verb.strip()) for verb in cells[2].split(",")}
    return grants


def test_security_docs_list_exactly_the_grants(rendered: list[dict[str, Any]]) -> None:
    assert _documented("## Kubernetes RBAC") == granted(find(rendered, "ClusterRole"))
    assert _documented("The Role, in the operator's namespace only") == granted(find(rendered, "Role"))


# --- watch.clusterWide false: a Role per watched namespace -------------------------------------------------

# Built-in resources the operator's grants name, by scope. A resource in neither set fails the test: say here
# where it lives before granting it.
CLUSTER_SCOPED_BUILT_INS = {("", "namespaces"), ("apiextensions.k8s.io", "customresourcedefinitions")}
NAMESPACED_BUILT_INS = {
    ("", "pods"),
    ("", "events"),
    ("", "secrets"),
    ("apps", "deployments"),
    ("autoscaling", "horizontalpodautoscalers"),
}
WATCHED = ["apps", "billing"]
OPERATOR_NAMESPACE = "poolbudget-system"


def _crd_scopes() -> dict[tuple[str, str], str]:
    """(group, plural) -> Namespaced or Cluster, for every CRD in crds/."""
    scopes = {}
    for path in (REPO / "crds").glob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc["kind"] == "CustomResourceDefinition":
                spec = doc["spec"]
                scopes[(spec["group"], spec["names"]["plural"])] = spec["scope"]
    return scopes


def is_cluster_scoped(grant: Grant) -> bool:
    group, resource, _ = grant
    key = (group, resource.split("/", 1)[0])  # a subresource lives where its resource does
    crds = _crd_scopes()
    if key in crds:
        return crds[key] == "Cluster"
    assert key in CLUSTER_SCOPED_BUILT_INS | NAMESPACED_BUILT_INS, f"say where {key} lives in this test"
    return key in CLUSTER_SCOPED_BUILT_INS


def every_grant() -> set[Grant]:
    """Everything the operator calls, in either mode."""
    return {grant for grant, _ in adapter_calls()} | kopf_needs()


def _namespaced_render(helm: Helm, *namespaces: str, extra: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    return objects(
        helm.template(
            "--set", "replicaCount=2", "--set", "watch.clusterWide=false",
            "--set", "watch.namespaces={" + ",".join(namespaces) + "}", *extra,
        )
    )  # fmt: skip


def _by_namespace(rendered: list[dict[str, Any]], kind: str) -> dict[tuple[str, str], dict[str, Any]]:
    return {(o["metadata"]["namespace"], o["metadata"]["name"]): o for o in rendered if o["kind"] == kind}


@pytest.fixture(scope="module")
def namespaced(helm: Helm) -> list[dict[str, Any]]:
    return _namespaced_render(helm, *WATCHED)


def test_every_grant_has_a_known_scope() -> None:
    cluster = {g for g in every_grant() if is_cluster_scoped(g)}
    assert ("poolbudget.io", "poolbudgets", "list") in cluster
    assert ("apps", "deployments", "patch") not in cluster
    # The adapter's own calls say their scope too (patch_cluster_custom_object_status, *_namespaced_*).
    for grant, namespaced in adapter_calls():
        assert is_cluster_scoped(grant) is not namespaced, grant


def test_namespaced_mode_cluster_role_holds_only_cluster_scoped_grants(
    namespaced: list[dict[str, Any]],
) -> None:
    role = granted(find(namespaced, "ClusterRole"))
    assert role == {g for g in every_grant() if is_cluster_scoped(g)}
    binding = find(namespaced, "ClusterRoleBinding")
    assert binding["roleRef"]["name"] == find(namespaced, "ClusterRole")["metadata"]["name"]


def test_namespaced_mode_grants_the_apps_resources_in_each_watched_namespace_only(
    namespaced: list[dict[str, Any]],
) -> None:
    app_grants = {g for g in every_grant() if not is_cluster_scoped(g) and g[1] != "secrets"}
    roles = _by_namespace(namespaced, "Role")
    watched_roles = {ns: role for (ns, name), role in roles.items() if name == "poolbudget"}
    assert sorted(watched_roles) == WATCHED
    for role in watched_roles.values():
        assert granted(role) == app_grants
    # Nothing else anywhere: the Secrets Role and the Events Role in the operator's namespace.
    others = {key: granted(role) for key, role in roles.items() if key[1] != "poolbudget"}
    assert others == {
        (OPERATOR_NAMESPACE, "poolbudget-secrets"): {("", "secrets", "get")},
        (OPERATOR_NAMESPACE, "poolbudget-events"): {("", "events", "create")},
    }


def test_namespaced_mode_splits_the_cluster_wide_grants_exactly(
    rendered: list[dict[str, Any]], namespaced: list[dict[str, Any]]
) -> None:
    """The same calls are allowed in both modes, only where they are allowed differs."""
    cluster_wide = granted(find(rendered, "ClusterRole")) | granted(find(rendered, "Role", "-secrets"))
    split = granted(find(namespaced, "ClusterRole")) | {
        grant for role in _by_namespace(namespaced, "Role").values() for grant in granted(role)
    }
    assert split == cluster_wide == every_grant()


def test_namespaced_mode_binds_each_role_to_the_service_account(namespaced: list[dict[str, Any]]) -> None:
    account = find(namespaced, "ServiceAccount")["metadata"]["name"]
    roles, bindings = _by_namespace(namespaced, "Role"), _by_namespace(namespaced, "RoleBinding")
    assert sorted(bindings) == sorted(roles)
    for (namespace, name), binding in bindings.items():
        assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name}
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": account, "namespace": OPERATOR_NAMESPACE}
        ], namespace


def test_watching_the_operators_own_namespace_needs_no_events_role(helm: Helm) -> None:
    rendered = _namespaced_render(helm, "apps", OPERATOR_NAMESPACE)
    roles = _by_namespace(rendered, "Role")
    assert sorted(roles) == [
        ("apps", "poolbudget"),
        (OPERATOR_NAMESPACE, "poolbudget"),
        (OPERATOR_NAMESPACE, "poolbudget-secrets"),
    ]
    assert ("", "events", "create") in granted(roles[(OPERATOR_NAMESPACE, "poolbudget")])


def _run_args(rendered: list[dict[str, Any]]) -> Any:
    """The Deployment's container args as `poolbudget run` parses them (the image's entrypoint)."""
    (container,) = find(rendered, "Deployment")["spec"]["template"]["spec"]["containers"]
    return build_parser().parse_args(["run", *container["args"]])


def test_the_operator_serves_exactly_the_watched_namespaces(
    rendered: list[dict[str, Any]], namespaced: list[dict[str, Any]]
) -> None:
    assert _run_args(namespaced).namespace == WATCHED
    assert _run_args(rendered).namespace == []  # cluster-wide


def test_namespaced_mode_lints_strictly(helm: Helm) -> None:
    chart = str(REPO / "helm" / "poolbudget")
    namespaced = ["--set", "watch.clusterWide=false", "--set", "watch.namespaces={apps,billing}"]
    result = helm.run("lint", "--strict", chart, "--set", "replicaCount=2", *namespaced)
    assert "0 chart(s) failed" in result.stdout
    assert "[WARNING]" not in result.stdout


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_namespaced_mode_validates_strictly(helm: Helm, version: str) -> None:
    rendered = _namespaced_render(helm, *WATCHED, extra=("--kube-version", f"{version}.0"))
    assert {o["kind"] for o in rendered} >= {"ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}
    for obj in rendered:
        validate_strict(obj, version)


def test_namespaced_mode_with_rbac_create_false_renders_no_rbac(helm: Helm) -> None:
    rendered = _namespaced_render(helm, *WATCHED, extra=("--set", "rbac.create=false"))
    assert not {o["kind"] for o in rendered} & {"ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}
    assert _run_args(rendered).namespace == WATCHED  # the operator still serves only them


@pytest.mark.parametrize(
    ("flags", "complaint"),
    [
        (["watch.clusterWide=false"], "/watch/namespaces"),
        (["watch.clusterWide=false", "watch.namespaces={}"], "/watch/namespaces"),
        (["watch.namespaces={apps}"], "/watch/namespaces"),  # a list with clusterWide true would be ignored
        (
            ["watch.clusterWide=false", "watch.namespaces={apps-*}"],
            "/watch/namespaces/0",
        ),  # no Role for a pattern
        (["watch.clusterWide=false", "watch.namespaces={apps,apps}"], "/watch/namespaces"),
    ],
    ids=["no-list", "empty-list", "list-but-cluster-wide", "pattern", "duplicate"],
)
def test_watch_values_that_cannot_be_granted_are_refused(
    helm: Helm, flags: list[str], complaint: str
) -> None:
    args = [a for flag in flags for a in ("--set", flag)]
    result = helm.run("template", "x", str(REPO / "helm" / "poolbudget"), *args, check=False)
    assert result.returncode != 0
    assert complaint in result.stderr


def test_renders_without_the_schema_still_refuse_an_empty_watch_list(helm: Helm) -> None:
    chart = str(REPO / "helm" / "poolbudget")
    flags = ["--skip-schema-validation", "--set", "watch.clusterWide=false"]
    result = helm.run("template", "x", chart, *flags, check=False)
    assert result.returncode != 0
    assert "list the namespaces to watch in watch.namespaces" in result.stderr


def test_notes_say_which_namespaces_are_served(helm: Helm) -> None:
    chart = str(REPO / "helm" / "poolbudget")
    namespaced = ["--set", "watch.clusterWide=false", "--set", "watch.namespaces={apps,billing}"]
    notes = helm.run("install", "p", chart, "--dry-run=client", "-n", "ops", *namespaced).stdout
    assert "in these namespaces only: apps, billing." in notes
    assert "in every namespace" in helm.run("install", "p", chart, "--dry-run=client", "-n", "ops").stdout
