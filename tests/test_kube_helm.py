"""The chart installed with helm into the real control plane, and the operator run with the chart's own
ServiceAccount (a TokenRequest token): RBAC is enforced by the real server, so the chart's rights are shown to be
enough (no 403 for anything the operator does) and no more (what it does not grant is denied)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.helm import helm_fixture as helm_fixture  # the `helm` fixture
from tests.kube.fixtures import KubeCluster, wait_for
from tests.kube.operator import condition, template_env
from tests.kube.release import SERVICE_ACCOUNT, Release
from tests.operator_harness import FAST, budget_manifest, deployment_manifest

pytestmark = [pytest.mark.kube, pytest.mark.timeout(300)]


def sized(kube: KubeCluster, name: str, namespace: str) -> bool:
    return "DB_POOL_SIZE" in template_env(kube.get("deployment", name, namespace) or {})


def test_the_operator_works_with_exactly_the_charts_rights(
    kube: KubeCluster, release: Release, budget_name: str, namespaces: Callable[[str], str], tmp_path: Path
) -> None:
    apps = namespaces("apps")
    release.run("install")
    kube.apply(
        budget_manifest(budget_name, 60, rebalance=FAST), deployment_manifest("web", apps, budget=budget_name)
    )
    mark = kube.audit.mark()
    with release.operator(tmp_path) as operator:
        wait_for(lambda: sized(kube, "web", apps) and condition(kube, budget_name, "Ready").get("status") == "True",
                 timeout=90, message=lambda: f"sized with the chart's rights\n{operator.log()}")  # fmt: skip
        kube.kubectl("scale", "deployment/web", "-n", apps, "--replicas=4")
        wait_for(lambda: _allocation_pods(kube, budget_name, "web") == 5, timeout=60,
                 message=lambda: f"a rebalance with the chart's rights\n{operator.log()}")  # fmt: skip
        assert release.forbidden(mark, apps) == [], operator.log()
    writes = {(w.verb, w.resource, w.subresource) for w in kube.audit.writes(mark, user=release.user)}
    assert ("patch", "deployments", "") in writes
    assert ("patch", "poolbudgets", "status") in writes

    # No more than that: what the chart does not grant is denied by the real server with 403.
    assert not release.can("delete", "deployments", apps)
    assert not release.can("get", "secrets", apps)
    assert not release.can("create", "pods", apps)
    assert not release.can("update", "clusterroles", None)
    denied = kube.kubectl(
        "delete",
        "deployment",
        "web",
        "-n",
        apps,
        kubeconfig=tmp_path / f"{release.namespace}.kubeconfig",
        check=False,
    )
    assert denied.returncode != 0
    assert "Forbidden" in denied.stderr, denied.stderr
    assert "cannot delete resource" in denied.stderr, denied.stderr
    assert kube.get("deployment", "web", apps) is not None
    assert ("delete", "deployments", apps) in release.forbidden(mark, apps)


def _allocation_pods(kube: KubeCluster, budget: str, name: str) -> int | None:
    status = (kube.get("poolbudget", budget) or {}).get("status") or {}
    return next((a["pods"] for a in status.get("allocations") or [] if a["name"] == name), None)


def test_namespaced_mode_is_denied_outside_its_namespaces(
    kube: KubeCluster, release: Release, budget_name: str, namespaces: Callable[[str], str], tmp_path: Path
) -> None:
    apps, other = namespaces("apps"), namespaces("other")
    release.run("install", "--set", "watch.clusterWide=false", "--set", f"watch.namespaces={{{apps}}}")
    kube.apply(
        budget_manifest(budget_name, 60, rebalance=FAST),
        deployment_manifest("web", apps, budget=budget_name),
        deployment_manifest("web", other, budget=budget_name),
    )
    untouched = kube.get("deployment", "web", other) or {}
    assert release.operator_args() == [f"--namespace={apps}"]
    assert release.can("patch", "deployments", apps)
    for verb, resource in (
        ("get", "deployments"),
        ("patch", "deployments"),
        ("list", "pods"),
        ("create", "events"),
    ):
        assert not release.can(verb, resource, other), f"{verb} {resource} in {other}"
    assert not release.can("list", "deployments", None)  # no cluster-wide Deployment access at all

    mark = kube.audit.mark()
    with release.operator(tmp_path) as operator:
        wait_for(lambda: sized(kube, "web", apps) and condition(kube, budget_name, "Ready").get("status") == "True",
                 timeout=90, message=lambda: f"sized in {apps}\n{operator.log()}")  # fmt: skip
        status: dict[str, Any] = (kube.get("poolbudget", budget_name) or {})["status"]
        assert [(a["namespace"], a["name"]) for a in status["allocations"]] == [(apps, "web")]
        assert release.forbidden(mark, apps, other) == [], operator.log()
    now = kube.get("deployment", "web", other) or {}
    assert now["metadata"]["generation"] == untouched["metadata"]["generation"]
    assert not [
        k
        for k in now["metadata"].get("annotations") or {}
        if k.startswith("poolbudget.io/") and k != "poolbudget.io/budget"
    ]
    assert {
        w.namespace for w in kube.audit.writes(mark, user=release.user) if w.resource == "deployments"
    } == {apps}


def test_upgrade_keeps_the_budgets_and_uninstall_keeps_crd_and_budgets(
    kube: KubeCluster, release: Release, budget_name: str, namespaces: Callable[[str], str], tmp_path: Path
) -> None:
    apps = namespaces("apps")
    release.run("install")
    kube.apply(
        budget_manifest(budget_name, 60, rebalance=FAST), deployment_manifest("web", apps, budget=budget_name)
    )
    operator_pod_template = json.dumps(
        (kube.get("deployment", SERVICE_ACCOUNT, release.namespace) or {})["spec"]["template"]
    )
    release.run(
        "upgrade", "--set", "commonLabels.team=platform"
    )  # a chart-level change, nothing about the pod
    after = json.dumps((kube.get("deployment", SERVICE_ACCOUNT, release.namespace) or {})["spec"]["template"])
    assert after == operator_pod_template, "an upgrade that changes nothing about the operator restarted it"
    with release.operator(tmp_path) as operator:
        wait_for(lambda: sized(kube, "web", apps) and condition(kube, budget_name, "Ready").get("status") == "True",
                 timeout=90, message=lambda: f"sized after the upgrade\n{operator.log()}")  # fmt: skip
    sized_env = template_env(kube.get("deployment", "web", apps) or {})
    release.helm.run("uninstall", "poolbudget", "-n", release.namespace, "--kubeconfig", str(kube.kubeconfig))
    assert kube.get("crd", "poolbudgets.poolbudget.io") is not None
    assert kube.get("poolbudget", budget_name) is not None
    assert (
        template_env(kube.get("deployment", "web", apps) or {}) == sized_env
    )  # as last written, not restored
    assert kube.get("clusterrole", SERVICE_ACCOUNT) is None
