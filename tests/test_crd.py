"""The committed CRD is what the models generate, and it is a structural schema Kubernetes accepts."""

from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from poolbudget.api.crd import crd, crd_yaml
from poolbudget.api.models import PoolBudget

ROOT = Path(__file__).resolve().parent.parent
COMMITTED = ROOT / "crds" / "poolbudget.io_poolbudgets.yaml"


def test_committed_crd_is_not_stale() -> None:
    assert COMMITTED.read_text() == crd_yaml(), "run `poolbudget crd -o crds/poolbudget.io_poolbudgets.yaml`"


def _walk(node: Any, path: str) -> list[str]:
    problems: list[str] = []
    if isinstance(node, dict):
        for banned in ("$ref", "anyOf", "oneOf", "allOf", "$defs", "title"):
            if banned in node:
                problems.append(f"{path}: {banned}")
        if "additionalProperties" in node and node["additionalProperties"] is False:
            problems.append(f"{path}: additionalProperties false")
        for name, prop in node.get("properties", {}).items():
            if "type" not in prop and not prop.get("x-kubernetes-int-or-string"):
                problems.append(f"{path}.{name}: untyped")
            problems += _walk(prop, f"{path}.{name}")
        if "items" in node:
            if "type" not in node["items"]:
                problems.append(f"{path}[]: untyped")
            problems += _walk(node["items"], f"{path}[]")
        if isinstance(node.get("additionalProperties"), dict):
            problems += _walk(node["additionalProperties"], f"{path}{{}}")
    return problems


def test_schema_is_structural() -> None:
    version = crd()["spec"]["versions"][0]
    assert _walk(version["schema"]["openAPIV3Schema"], "") == []
    assert version["subresources"] == {"status": {}}
    assert [c["name"] for c in version["additionalPrinterColumns"]] == [
        "Max",
        "Available",
        "Allocated",
        "Deployments",
        "Ready",
        "Age",
    ]
    assert crd()["spec"]["names"]["shortNames"] == ["pb"]
    assert crd()["spec"]["scope"] == "Cluster"


def _openapi_to_jsonschema(node: Any) -> Any:
    """OpenAPI v3.0 `nullable`/boolean exclusive bounds, as draft-4 JSON Schema understands them."""
    if isinstance(node, list):
        return [_openapi_to_jsonschema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _openapi_to_jsonschema(v) for k, v in node.items() if not k.startswith("x-kubernetes")}
    if out.pop("nullable", False) and "type" in out:
        out["type"] = [out["type"], "null"]
    return out


def _example_budgets() -> list[tuple[str, dict[str, Any]]]:
    """Every PoolBudget in the examples users copy (examples/ and docs/examples/), by file and name."""
    found = []
    for path in sorted([*(ROOT / "examples").glob("*.yaml"), *(ROOT / "docs" / "examples").rglob("*.yaml")]):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == "PoolBudget":
                found.append((f"{path.relative_to(ROOT)}:{doc['metadata']['name']}", doc))
    return found


EXAMPLE_BUDGETS = _example_budgets()


def test_the_examples_hold_budgets_to_check() -> None:
    files = {where.split(":")[0] for where, _ in EXAMPLE_BUDGETS}
    assert {"examples/budget.yaml", "docs/examples/quickstart/budget.yaml"} <= files


@pytest.mark.parametrize(
    "doc", [doc for _, doc in EXAMPLE_BUDGETS], ids=[where for where, _ in EXAMPLE_BUDGETS]
)
def test_example_budgets_validate_against_the_crd_and_the_models(doc: dict[str, Any]) -> None:
    schema = _openapi_to_jsonschema(crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"])
    errors = [e.message for e in jsonschema.Draft4Validator(schema).iter_errors(doc)]
    assert errors == []
    assert PoolBudget.model_validate(doc).name == doc["metadata"]["name"]


def test_crd_rejects_what_the_models_reject() -> None:
    schema = _openapi_to_jsonschema(crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"])
    bad = {
        "apiVersion": "poolbudget.io/v1alpha1",
        "kind": "PoolBudget",
        "metadata": {"name": "x"},
        "spec": {"database": {"maxConnections": 0}, "rebalance": {"mode": "sometimes"}},
    }
    errors = sorted(e.message for e in jsonschema.Draft4Validator(schema).iter_errors(bad))
    assert any("0 is less than the minimum of 1" in e for e in errors)
    assert any("'sometimes' is not one of" in e for e in errors)
