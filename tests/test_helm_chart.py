"""The Helm chart: lint, render, validate against Kubernetes 1.29 to 1.35, CRDs identical to crds/, RBAC exact."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

import poolbudget
from tests.chart import CUSTOM_KINDS, KUBERNETES_VERSIONS, find, objects, validate_strict
from tests.helm import CHART, REPO, Helm, helm_fixture  # noqa: F401

# Every optional part turned on, for the renders that must cover the whole chart.
EVERYTHING = [
    "--set",
    "replicaCount=2",
    "--set",
    "metrics.serviceMonitor.enabled=true",
    "--set",
    "metrics.prometheusRule.enabled=true",
    "--set",
    "metrics.grafanaDashboard.create=true",
]


@pytest.fixture(scope="module")
def default_render(helm: Helm) -> list[dict[str, Any]]:
    return objects(helm.template())


@pytest.fixture(scope="module")
def full_render(helm: Helm) -> list[dict[str, Any]]:
    return objects(helm.template(*EVERYTHING))


def _operator_container(rendered: list[dict[str, Any]]) -> dict[str, Any]:
    pod = find(rendered, "Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    return dict(container)


def test_app_version_is_the_package_version() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["appVersion"] == poolbudget.__version__


def test_lint_strict_is_clean(helm: Helm) -> None:
    result = helm.run("lint", "--strict", str(CHART))
    assert "0 chart(s) failed" in result.stdout
    assert "[WARNING]" not in result.stdout
    assert "[ERROR]" not in result.stdout
    full = helm.run("lint", "--strict", str(CHART), *EVERYTHING)
    assert "0 chart(s) failed" in full.stdout


# --- CRDs --------------------------------------------------------------------------------------------


def test_chart_crds_are_byte_identical_to_crds_dir() -> None:
    source = {p.name: p.read_bytes() for p in (REPO / "crds").glob("*.yaml")}
    packaged = {p.name: p.read_bytes() for p in (CHART / "files" / "crds").glob("*.yaml")}
    fix = "run: cp crds/*.yaml helm/poolbudget/files/crds/"
    assert sorted(packaged) == sorted(source), f"the chart's CRD files differ from crds/; {fix}"
    for name, content in source.items():
        assert packaged[name] == content, f"helm/poolbudget/files/crds/{name} is stale; {fix}"


def test_rendered_crds_are_the_files_kept_on_uninstall(default_render: list[dict[str, Any]]) -> None:
    rendered = {o["metadata"]["name"]: o for o in default_render if o["kind"] == "CustomResourceDefinition"}
    documents = [d for p in (REPO / "crds").glob("*.yaml") for d in yaml.safe_load_all(p.read_text()) if d]
    files = [d for d in documents if d["kind"] == "CustomResourceDefinition"]
    # Other objects in crds/ (kopf's peering object) are not rendered: the operator creates them.
    assert not [
        o
        for o in default_render
        if o["kind"] in {d["kind"] for d in documents} - {"CustomResourceDefinition"}
    ]
    assert sorted(rendered) == sorted(f["metadata"]["name"] for f in files)
    for crd in files:
        got = rendered[crd["metadata"]["name"]]
        assert got["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
        assert got["metadata"]["labels"]["app.kubernetes.io/name"] == "poolbudget"
        assert got["spec"] == crd["spec"]


def test_crds_create_false_renders_no_crd(helm: Helm) -> None:
    kinds = {o["kind"] for o in objects(helm.template("--set", "crds.create=false"))}
    assert "CustomResourceDefinition" not in kinds
    assert "Deployment" in kinds


# --- Kubernetes schemas --------------------------------------------------------------------------------


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_rendered_objects_validate_strictly(
    helm: Helm, version: str, full_render: list[dict[str, Any]]
) -> None:
    for rendered in (objects(helm.template("--kube-version", f"{version}.0")), full_render):
        built_in = [o for o in rendered if o["kind"] not in CUSTOM_KINDS]
        assert {o["kind"] for o in built_in} >= {
            "CustomResourceDefinition",
            "Deployment",
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "Role",
            "RoleBinding",
            "Service",
        }
        for obj in built_in:
            validate_strict(obj, version)


def test_chart_refuses_kubernetes_older_than_1_29(helm: Helm) -> None:
    result = helm.run("template", "x", str(CHART), "--kube-version", "1.28.0", check=False)
    assert result.returncode != 0
    assert "kubeVersion" in result.stderr or "incompatible" in result.stderr


def test_service_monitor_scrapes_the_metrics_service(full_render: list[dict[str, Any]]) -> None:
    monitor = find(full_render, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    service = find(full_render, "Service", "-metrics")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()


# --- the operator's pod ----------------------------------------------------------------------------------


def test_operator_runs_restricted(default_render: list[dict[str, Any]]) -> None:
    pod = find(default_render, "Deployment")["spec"]["template"]["spec"]
    container = _operator_container(default_render)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert container["resources"]["requests"]
    assert container["resources"]["limits"]["memory"]


def test_probes_hit_kopfs_liveness_endpoint(default_render: list[dict[str, Any]]) -> None:
    container = _operator_container(default_render)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"health": 8080, "metrics": 9090}
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert "--liveness=http://0.0.0.0:8080/healthz" in container["args"]


def test_operator_knows_its_namespace_from_the_downward_api(default_render: list[dict[str, Any]]) -> None:
    env = {e["name"]: e for e in _operator_container(default_render)["env"]}
    assert env["POOLBUDGET_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}


def test_one_replica_runs_standalone_and_is_never_doubled(default_render: list[dict[str, Any]]) -> None:
    deployment = find(default_render, "Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    assert "--standalone" in _operator_container(default_render)["args"]
    assert "POOLBUDGET_PEERING_LIFETIME" not in {
        e["name"] for e in _operator_container(default_render)["env"]
    }


def test_several_replicas_peer(full_render: list[dict[str, Any]]) -> None:
    deployment = find(full_render, "Deployment")
    assert deployment["spec"]["replicas"] == 2
    assert "strategy" not in deployment["spec"]
    args = _operator_container(full_render)["args"]
    assert "--standalone" not in args
    assert not [a for a in args if a.startswith("--peering")], "the operator's peering name is fixed"
    env = {e["name"]: e.get("value") for e in _operator_container(full_render)["env"]}
    assert env["POOLBUDGET_PEERING_LIFETIME"] == "60"  # how long a killed replica holds the others back


def test_metrics_service_selects_the_operator_pods(default_render: list[dict[str, Any]]) -> None:
    service = find(default_render, "Service", "-metrics")
    labels = find(default_render, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert service["spec"]["ports"] == [
        {"name": "metrics", "port": 9090, "targetPort": "metrics", "protocol": "TCP"}
    ]


def test_every_object_has_the_standard_labels(full_render: list[dict[str, Any]]) -> None:
    for obj in full_render:
        labels = obj["metadata"]["labels"]
        for key in ("app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/version"):
            assert key in labels, f"{obj['kind']} {obj['metadata']['name']} lacks {key}"
        assert labels["app.kubernetes.io/managed-by"] == "Helm"


def test_image_defaults_to_the_app_version_and_takes_a_digest(helm: Helm) -> None:
    default = _operator_container(objects(helm.template()))
    assert default["image"].endswith(f":{poolbudget.__version__}")
    digest = "sha256:" + "a" * 64
    pinned = _operator_container(objects(helm.template("--set", f"image.digest={digest}")))
    assert pinned["image"].endswith(f"@{digest}")


# --- values ----------------------------------------------------------------------------------------------


def _undocumented(node: yaml.MappingNode, lines: list[str], path: str = "") -> list[str]:
    """Keys with no `# --` comment right above them, unless every key below them has one."""
    missing = []
    for key, value in node.value:
        line = key.start_mark.line
        above = []
        while line > 0 and lines[line - 1].strip().startswith("#"):
            line -= 1
            above.append(lines[line])
        documented = any("# --" in comment for comment in above)
        name = f"{path}.{key.value}" if path else key.value
        if documented:
            continue
        if isinstance(value, yaml.MappingNode) and value.value:
            missing += _undocumented(value, lines, name)
        else:
            missing.append(name)
    return missing


def test_every_value_is_documented() -> None:
    text = (CHART / "values.yaml").read_text()
    root = yaml.compose(text)
    assert isinstance(root, yaml.MappingNode)
    assert _undocumented(root, text.splitlines()) == []


def _paths(values: dict[str, Any], schema: dict[str, Any], path: str = "") -> list[str]:
    """Value paths the schema does not describe (free-form objects such as resources are leaves)."""
    unknown = []
    for key, value in values.items():
        name = f"{path}.{key}" if path else key
        properties = schema.get("properties", {})
        if key not in properties:
            unknown.append(name)
        elif isinstance(value, dict) and "properties" in properties[key]:
            unknown += _paths(value, properties[key], name)
    return unknown


def test_schema_describes_every_value() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert _paths(values, schema) == []


@pytest.mark.parametrize(
    ("flag", "complaint"),
    [
        ("replicaCount=0", "replicaCount"),
        ("image.pullPolicy=Sometimes", "pullPolicy"),
        ("operator.metricsPort=70000", "metricsPort"),
        ("rbac.creat=true", "creat"),
        ("metrics.prometheusRule.nearExhaustionRatio=2", "nearExhaustionRatio"),
    ],
)
def test_schema_rejects_bad_values(helm: Helm, flag: str, complaint: str) -> None:
    result = helm.run("template", "x", str(CHART), "--set", flag, check=False)
    assert result.returncode != 0
    assert complaint in result.stderr


def test_notes_tell_how_to_start(helm: Helm) -> None:
    result = helm.run("install", "poolbudget", str(CHART), "--dry-run=client", "-n", "poolbudget-system")
    assert "kubectl get pb" in result.stdout
    assert "poolbudget.io/budget=main-db" in result.stdout


def test_chart_files_exist() -> None:
    for name in (
        "Chart.yaml",
        "values.yaml",
        "values.schema.json",
        "templates/NOTES.txt",
        "templates/_helpers.tpl",
    ):
        assert (CHART / name).is_file(), name
    helpers = (CHART / "templates" / "_helpers.tpl").read_text()
    for name in ("name", "fullname", "labels", "selectorLabels", "serviceAccountName"):
        assert f'define "poolbudget.{name}"' in helpers


# --- namespaceOverride -------------------------------------------------------------------------------------

CLUSTER_SCOPED_KINDS = {"CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding"}


def test_namespace_override_moves_every_namespaced_object(helm: Helm) -> None:
    rendered = objects(helm.template(*EVERYTHING, "--set", "namespaceOverride=ops"))
    namespaced = [o for o in rendered if o["kind"] not in CLUSTER_SCOPED_KINDS]
    assert {o["kind"] for o in namespaced} >= {
        "Deployment",
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "Service",
    }
    assert {(o["kind"], o["metadata"].get("namespace")) for o in namespaced} == {
        (o["kind"], "ops") for o in namespaced
    }
    for obj in rendered:
        for subject in obj.get("subjects", []):
            assert subject["namespace"] == "ops", f"{obj['kind']} {obj['metadata']['name']}"
    assert find(rendered, "ServiceMonitor")["spec"]["namespaceSelector"] == {"matchNames": ["ops"]}
    down = next(
        r
        for g in find(rendered, "PrometheusRule")["spec"]["groups"]
        for r in g["rules"]
        if r["alert"] == "PoolBudgetOperatorDown"
    )
    assert 'namespace="ops"' in down["expr"]
    for version in KUBERNETES_VERSIONS:
        for obj in rendered:
            if obj["kind"] not in CUSTOM_KINDS:
                validate_strict(obj, version)


def test_namespace_override_is_in_the_notes(helm: Helm) -> None:
    result = helm.run(
        "install",
        "poolbudget",
        str(CHART),
        "--dry-run=client",
        "-n",
        "default",
        "--set",
        "namespaceOverride=ops",
    )
    assert "kubectl -n ops rollout status deployment/poolbudget" in result.stdout
    assert "poolbudget-metrics.ops.svc" in result.stdout


def test_namespace_override_must_be_a_namespace_name(helm: Helm) -> None:
    result = helm.run("template", "x", str(CHART), "--set", "namespaceOverride=Not_A_Namespace", check=False)
    assert result.returncode != 0
    assert "namespaceOverride" in result.stderr


# --- PodDisruptionBudget -----------------------------------------------------------------------------------


def test_one_replica_gets_no_disruption_budget(default_render: list[dict[str, Any]]) -> None:
    # A PDB that never lets the only pod go would block every node drain.
    assert "PodDisruptionBudget" not in {o["kind"] for o in default_render}


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_peers_are_drained_one_at_a_time(helm: Helm, version: str) -> None:
    rendered = objects(helm.template("--set", "replicaCount=3", "--kube-version", f"{version}.0"))
    pdb = find(rendered, "PodDisruptionBudget")
    validate_strict(pdb, version)
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    pod_labels = find(rendered, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert pdb["metadata"]["namespace"] == "poolbudget-system"


def test_disruption_budget_takes_a_percentage_and_can_be_turned_off(helm: Helm) -> None:
    peers = ["--set", "replicaCount=2"]
    percent = objects(helm.template(*peers, "--set-string", "podDisruptionBudget.maxUnavailable=50%"))
    assert find(percent, "PodDisruptionBudget")["spec"]["maxUnavailable"] == "50%"
    validate_strict(find(percent, "PodDisruptionBudget"), KUBERNETES_VERSIONS[0])
    kubernetes_default = objects(
        helm.template(*peers, "--set", "podDisruptionBudget.unhealthyPodEvictionPolicy=")
    )
    assert "unhealthyPodEvictionPolicy" not in find(kubernetes_default, "PodDisruptionBudget")["spec"]
    off = objects(helm.template(*peers, "--set", "podDisruptionBudget.enabled=false"))
    assert "PodDisruptionBudget" not in {o["kind"] for o in off}


@pytest.mark.parametrize(
    "flag", ["podDisruptionBudget.maxUnavailable=0", "podDisruptionBudget.maxUnavailable=most"]
)
def test_disruption_budget_refuses_what_would_block_or_mean_nothing(helm: Helm, flag: str) -> None:
    result = helm.run("template", "x", str(CHART), "--set", "replicaCount=2", "--set", flag, check=False)
    assert result.returncode != 0
    assert "maxUnavailable" in result.stderr
