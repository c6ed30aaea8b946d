"""The PoolBudget API on a real kube-apiserver: the CRD installs and is enforced, `kubectl explain`, `get` and
`describe` show what the docs promise, and events land on the budget and on the Deployments it sizes."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.kube.fixtures import KubeCluster, wait_for
from tests.kube.operator import condition, operator_on, template_env
from tests.operator_harness import FAST, budget_manifest, deployment_manifest, write_manifests

pytestmark = pytest.mark.kube


def test_the_crd_is_established_and_explained(kube: KubeCluster) -> None:
    crd = kube.get("crd", "poolbudgets.poolbudget.io")
    assert crd is not None
    established = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
    assert established["Established"] == "True"
    assert established["NamesAccepted"] == "True"
    explained = kube.kubectl("explain", "poolbudget.spec").stdout
    assert "KIND:       PoolBudget" in explained
    assert "database" in explained
    assert "reserved" in explained
    nested = kube.kubectl("explain", "pb.spec.database.maxConnections").stdout
    assert "integer" in nested


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"database": {"maxConnections": 0}}, "spec.database.maxConnections: Invalid value: 0"),
        (
            {"database": {"maxConnections": 100}, "rebalance": {"mode": "sometimes"}},
            'spec.rebalance.mode: Unsupported value: "sometimes"',
        ),
        ({"database": {"maxConnections": 100}, "reserved": -1}, "spec.reserved: Invalid value: -1"),
        ({"database": {"maxConnections": "many"}}, 'spec.database.maxConnections: Invalid value: "string"'),
    ],
)
def test_the_api_server_refuses_what_the_schema_expresses(
    kube: KubeCluster, budget_name: str, spec: dict[str, Any], message: str
) -> None:
    manifest = {**budget_manifest(budget_name), "spec": spec}
    refused = kube.kubectl("apply", "-f", "-", input=yaml.safe_dump(manifest), check=False)
    assert refused.returncode != 0
    assert message in refused.stderr, refused.stderr
    assert kube.get("poolbudget", budget_name) is None


def test_the_rest_is_invalid_with_the_field_named(
    kube: KubeCluster, budget_name: str, namespaces: Callable[[str], str], tmp_path: Path
) -> None:
    ns = namespaces("app")
    # Accepted by the schema (each field is fine alone), refused by the models: min above max.
    bad = budget_manifest(
        budget_name, defaults={"minConnectionsPerProcess": 9, "maxConnectionsPerProcess": 3}
    )
    kube.apply(bad, deployment_manifest("api", ns, budget=budget_name, replicas=1))
    with operator_on(kube, tmp_path):
        invalid = wait_for(lambda: condition(kube, budget_name, "Invalid").get("status") == "True"
                           and condition(kube, budget_name, "Invalid"), timeout=30,
                           message="the Invalid condition")  # fmt: skip
        assert "minConnectionsPerProcess must not exceed maxConnectionsPerProcess" in invalid["message"]
        assert "spec.defaults" in invalid["message"]
        # Bad input changes nothing: the Deployment keeps the env it had.
        assert template_env(kube.get("deployment", "api", ns) or {}) == {}
        events = kube.kubectl("get", "events", "-A", "--field-selector",
                              f"involvedObject.kind=PoolBudget,involvedObject.name={budget_name}", "-o", "json")  # fmt: skip
        assert '"reason": "InvalidSpec"' in events.stdout


def test_get_describe_and_events(
    kube: KubeCluster, budget_name: str, namespaces: Callable[[str], str], tmp_path: Path
) -> None:
    """The operator writes what `poolbudget plan` prints for the same manifests; get/describe/events show it."""
    ns = namespaces("app")
    settings = json.dumps({"echo": True, "pool_size": 40, "max_overflow": 40})
    manifests = [
        budget_manifest(budget_name, 50, reserved=5, rebalance=FAST),
        deployment_manifest("api", ns, budget=budget_name, replicas=2),
        deployment_manifest("flow", ns, budget=budget_name, replicas=1, annotations={"poolbudget.io/profile": "langflow"},
                            env=[{"name": "LANGFLOW_DB_CONNECTION_SETTINGS", "value": settings}]),
    ]  # fmt: skip
    kube.apply(*manifests)
    planned = json.loads(
        subprocess.run(["poolbudget", "plan", "-f", str(write_manifests(tmp_path / "m.yaml", *manifests)), "-o", "json"],
                       capture_output=True, text=True, check=True, timeout=60).stdout
    )["budgets"][0]  # fmt: skip
    with operator_on(kube, tmp_path):
        wait_for(lambda: condition(kube, budget_name, "Ready").get("status") == "True", timeout=60,
                 message=lambda: f"Ready\n{kube.get('poolbudget', budget_name)}")  # fmt: skip
        table = kube.kubectl("get", "pb", budget_name).stdout.splitlines()
        assert table[0].split() == ["NAME", "MAX", "AVAILABLE", "ALLOCATED", "DEPLOYMENTS", "READY", "AGE"]
        row = table[1].split()
        status = (kube.get("poolbudget", budget_name) or {})["status"]
        assert row[:6] == [budget_name, "50", "42", str(planned["allocated"]), "2", "True"]
        assert status["allocated"] == planned["allocated"] <= 42
        for entry in planned["deployments"]:
            env = template_env(kube.get("deployment", entry["name"], ns) or {})
            assert {e["name"]: env.get(e["name"]) for e in entry["env"]} == {
                e["name"]: e["value"] for e in entry["env"]
            }
        written = json.loads(
            template_env(kube.get("deployment", "flow", ns) or {})["LANGFLOW_DB_CONNECTION_SETTINGS"] or ""
        )
        assert written["echo"] is True  # Langflow's JSON keeps the user's own keys
        assert set(written) >= {"pool_size", "max_overflow", "pool_timeout", "pool_pre_ping", "pool_recycle"}

        described = kube.kubectl("describe", "pb", budget_name).stdout
        for kind in ("Ready", "Overcommitted", "DatabaseReachable", "MetricsAvailable", "Invalid"):
            assert kind in described, described
        wait_for(lambda: "Events:" in (text := kube.kubectl("describe", "pb", budget_name).stdout)
                 and "<none>" not in text.split("Events:")[1][:20], timeout=30,
                 message="events on the PoolBudget in kubectl describe")  # fmt: skip

        resized = wait_for(lambda: [e for e in kube.list("events", ns)
                                    if e["involvedObject"]["kind"] == "Deployment"
                                    and e["involvedObject"]["name"] == "api"], timeout=30,
                           message="an event on the resized Deployment")  # fmt: skip
        assert all(e["type"] == "Normal" for e in resized), resized
        assert template_env(kube.get("deployment", "api", ns) or {})["DB_POOL_SIZE"]
