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

from poolbudget.adapters import kubernetes as adapter
from poolbudget.runtime import handlers
from tests.chart import find, objects
from tests.helm import REPO, Helm, helm_fixture  # noqa: F401

Grant = tuple[str, str, str]  # (API group, resource, verb); "" is the core group

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


def granted(role: dict[str, Any]) -> set[Grant]:
    return {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


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
