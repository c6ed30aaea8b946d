"""`poolbudget plan`: the CLI contract of SPEC.md, run as a user runs it (a subprocess of the console script)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def plan(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "poolbudget.cli", "plan", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_plan_on_the_examples_fits_and_prints_the_spec_schema() -> None:
    result = plan("-f", EXAMPLES, "-o", "json")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    [budget] = document["budgets"]
    assert set(budget) >= {"name", "maxConnections", "available", "allocated", "feasible", "deployments"}
    assert budget["maxConnections"] == 100
    assert budget["available"] == 100 - 3 - 10
    assert budget["feasible"] is True
    assert budget["allocated"] <= budget["available"]
    assert budget["allocated"] == sum(d["connections"] for d in budget["deployments"])
    for d in budget["deployments"]:
        assert set(d) >= {
            "namespace",
            "name",
            "profile",
            "pods",
            "processesPerPod",
            "perProcess",
            "connections",
            "env",
        }
        assert set(d["perProcess"]) == {"poolSize", "maxOverflow"}
        per_pool = d["perProcess"]["poolSize"] + d["perProcess"]["maxOverflow"]
        assert d["connections"] == d["pods"] * d["processesPerPod"] * d.get("poolsPerProcess", 1) * per_pool
        assert all(set(e) == {"name", "value"} for e in d["env"])
    names = {(d["namespace"], d["name"]): d for d in budget["deployments"]}
    assert names[("api", "api")]["pods"] == 4 + 1  # HPA maxReplicas 4 + maxSurge 1
    assert names[("ai", "langflow")]["processesPerPod"] == 2  # LANGFLOW_WORKERS
    langflow_env = {e["name"]: e["value"] for e in names[("ai", "langflow")]["env"]}
    assert json.loads(langflow_env["LANGFLOW_DB_CONNECTION_SETTINGS"])["echo"] is False
    letta_env = {e["name"]: e["value"] for e in names[("ai", "letta")]["env"]}
    assert letta_env["LETTA_DISABLE_SQLALCHEMY_POOLING"] == "false"


def test_yaml_and_table_outputs_carry_the_same_plan() -> None:
    as_json = json.loads(plan("-f", EXAMPLES, "-o", "json").stdout)
    as_yaml = yaml.safe_load(plan("-f", EXAMPLES, "-o", "yaml").stdout)
    assert as_yaml == as_json
    table = plan("-f", EXAMPLES).stdout
    assert (
        "allocated 86 of 87: fits" in table
        or f"allocated {as_json['budgets'][0]['allocated']} of 87" in table
    )
    assert "report-worker" in table


def test_max_connections_flag_overrides_the_budget_and_overcommit_exits_3() -> None:
    result = plan("-f", EXAMPLES, "--max-connections", "40", "-o", "json")
    assert result.returncode == 3
    [budget] = json.loads(result.stdout)["budgets"]
    assert budget["feasible"] is False
    assert budget["available"] == 40 - 3 - 10
    assert "overcommitted" in result.stderr
    assert f"need {budget['shortfall']} more connections" in result.stderr


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "manifests.yaml"
    path.write_text(text)
    return path


BUDGET = """apiVersion: poolbudget.io/v1alpha1
kind: PoolBudget
metadata: {name: db}
spec:
  database: {maxConnections: 50}
"""


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            BUDGET.replace("maxConnections: 50", "maxConnections: -5"),
            "document 1 (PoolBudget db): spec.database.maxConnections: Input should be greater than or equal to 1",
        ),
        (
            BUDGET.replace("maxConnections: 50", "maxConections: 50"),
            "spec.database.maxConections: Extra inputs are not permitted",
        ),
        (BUDGET + "  reserved: lots\n", "spec.reserved: Input should be a valid integer"),
        (BUDGET + "  defaults: {profile: rails}\n", "defaults.profile: unknown profile 'rails'"),
        (
            "---\n"
            + BUDGET
            + "---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec: {template: {spec: {containers: []}}}\n",
            "document 2 (Deployment web): spec.template.spec.containers: List should have at least 1 item",
        ),
        ("kind: [unclosed", "not valid YAML"),
    ],
)
def test_invalid_input_exits_2_naming_file_document_and_field(
    tmp_path: Path, text: str, message: str
) -> None:
    path = write(tmp_path, text)
    result = plan("-f", path)
    assert result.returncode == 2
    assert str(path) in result.stderr
    assert message in result.stderr
    assert result.stdout == ""


def test_deployment_naming_an_unknown_budget_or_profile_is_refused_with_a_warning(tmp_path: Path) -> None:
    deployments = """
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: a, namespace: x, annotations: {poolbudget.io/budget: other}}
spec: {template: {spec: {containers: [{name: c}]}}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: b, namespace: x, annotations: {poolbudget.io/budget: db, poolbudget.io/profile: django}}
spec: {template: {spec: {containers: [{name: c}]}}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: c, namespace: x, annotations: {poolbudget.io/budget: db, poolbudget.io/processes: "0"}}
spec: {template: {spec: {containers: [{name: c}]}}}
"""
    result = plan("-f", write(tmp_path, BUDGET + deployments), "-o", "json")
    assert result.returncode == 0
    assert "Deployment x/a: annotation poolbudget.io/budget names PoolBudget 'other'" in result.stderr
    assert "Deployment x/b: unknown profile 'django'" in result.stderr
    assert (
        "Deployment x/c: annotation poolbudget.io/processes: Input should be greater than or equal to 1"
        in result.stderr
    )
    [budget] = json.loads(result.stdout)["budgets"]
    assert budget["deployments"] == []
    assert {r["name"] for r in budget["refused"]} == {"b", "c"}


def test_budget_without_max_connections_needs_a_flag(tmp_path: Path) -> None:
    text = BUDGET.replace("{maxConnections: 50}", "{connectionSecretRef: {name: db-url}}")
    result = plan("-f", write(tmp_path, text))
    assert result.returncode == 2
    assert (
        "spec.database.maxConnections is not set; pass --max-connections N or --database-url URL"
        in result.stderr
    )
    assert plan("-f", write(tmp_path, text), "--max-connections", "50").returncode == 0


def test_missing_path_exits_2() -> None:
    result = plan("-f", "/nonexistent/manifests")
    assert result.returncode == 2
    assert "/nonexistent/manifests: no such file or directory" in result.stderr
