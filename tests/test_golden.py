"""Behaviour pinned byte for byte: what `poolbudget plan` prints for the examples, the plans of the planner
bench's fleets, and every write of reconcile rounds over the reconcile bench's fleet, compared with the files
saved in ``tests/golden/`` before the operator was restructured (issue 11).

A difference here is a change of behaviour. When one is intended, regenerate the files and review the diff:
``PYTHONPATH=operator python -m tests.test_golden --write``.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import hashlib
import io
import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from bench.planner import BUDGET_DOC, make_fleet
from bench.reconcile import fleet_manifests, fleet_names
from poolbudget.api.models import PoolBudget
from poolbudget.cli import main as poolbudget_main
from poolbudget.controller import reconcile
from poolbudget.controller.state import Context, View
from poolbudget.planning.budget import plan_for_budget
from poolbudget.planning.plan import BudgetPlan, plan_budget
from poolbudget.runtime.metrics import OperatorMetrics
from tests.test_operator_reconcile import Events, FakeCluster, stored

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = Path(__file__).resolve().parent / "golden"
PLANNER_SIZES = (10, 100, 1_000, 10_000)
PLANNER_IN_FULL = (10, 100)  # larger plans are pinned by their digest (the full JSON would be megabytes)
RECONCILE_DEPLOYMENTS = 200
FIXED_NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def _cli(*argv: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        code = poolbudget_main(list(argv))
    return f"{out.getvalue()}exit {code}\n"


def plan_document(plan: BudgetPlan) -> dict[str, Any]:
    """Every field of a plan (dataclasses all the way down), plus its derived figures."""
    document: dict[str, Any] = dataclasses.asdict(plan)
    document["derived"] = {
        "available": plan.available,
        "allocated": plan.allocated,
        "feasible": plan.feasible,
        "shortfall": plan.shortfall,
    }
    return document


def _canonical(value: Any) -> str:
    return json.dumps(value, indent=1, sort_keys=True, default=str) + "\n"


def planner_fleets() -> str:
    """Both timed paths of bench/planner.py, at every size it runs."""
    budget = PoolBudget.model_validate(BUDGET_DOC)
    out: dict[str, Any] = {}
    for count in PLANNER_SIZES:
        fleet = make_fleet(count)
        paths: dict[str, Callable[[], BudgetPlan]] = {
            "plan_budget": lambda f=fleet: plan_budget("bench", f.availability, f.workloads),
            "plan_for_budget": lambda f=fleet: (
                plan_for_budget(budget, f.limits, f.deployments, f.hpas, demand=f.demand).plan
            ),
        }
        for path, run in paths.items():
            document = plan_document(run())
            text = _canonical(document)
            entry: dict[str, Any] = {
                "sha256": hashlib.sha256(text.encode()).hexdigest(),
                **document["derived"],
            }
            if count in PLANNER_IN_FULL:
                entry["plan"] = document
            out[f"{path}/{count}"] = entry
    return _canonical(out)


def reconcile_fleet() -> str:
    """Two reconcile rounds over bench/reconcile.py's fleet (the first plan, then one Deployment scaled up):
    every patch and status write the operator makes, and the events it posts, in order."""
    manifests = fleet_manifests(RECONCILE_DEPLOYMENTS)
    budget = stored(manifests[0], 1)
    deployments = [stored(m, i + 2) for i, m in enumerate(manifests[1:])]
    cluster = FakeCluster(deployments, budget)
    writes: list[dict[str, Any]] = []
    patch_deployment, patch_status = cluster.patch_deployment, cluster.patch_budget_status

    async def record_deployment(namespace: str, name: str, patch: Any) -> dict[str, Any]:
        writes.append({"deployment": f"{namespace}/{name}", "patch": copy.deepcopy(patch)})
        return await patch_deployment(namespace, name, patch)

    async def record_status(name: str, status: Any) -> dict[str, Any]:
        writes.append({"status": name, "patch": copy.deepcopy(status)})
        return await patch_status(name, status)

    cluster.patch_deployment = record_deployment  # type: ignore[method-assign]
    cluster.patch_budget_status = record_status  # type: ignore[method-assign]
    events = Events()
    ticks = iter(range(1_000_000))
    context = Context(
        cluster=cluster,
        events=events,
        metrics=OperatorMetrics(),
        operator_namespace="poolbudget",
        clock=lambda: FIXED_NOW,
        monotonic=lambda: float(next(ticks)),
    )
    rounds: list[dict[str, Any]] = []
    for step in ("first plan", "scaled up"):
        if step == "scaled up":
            namespace, name = fleet_names(RECONCILE_DEPLOYMENTS)[0]
            scaled = cluster.deployments[(namespace, name)]
            scaled["spec"]["replicas"] += 1
            scaled["metadata"]["resourceVersion"] = str(int(scaled["metadata"]["resourceVersion"]) + 1)
        writes.clear()
        events.posted.clear()
        view = View({"main": list(cluster.deployments.values())}, {}, {}, {})
        result = asyncio.run(reconcile.reconcile_budget(context, cluster.budget, view))
        rounds.append(
            {
                "step": step,
                "next_round_in": result.next_round_in,
                "writes": list(writes),
                "events": [list(e) for e in events.posted],
            }
        )
    return _canonical(rounds)


def golden_documents() -> dict[str, str]:
    examples = str(ROOT / "examples")
    return {
        "plan_examples.json": _cli("plan", "-f", examples, "-o", "json"),
        "plan_examples.yaml": _cli("plan", "-f", examples, "-o", "yaml"),
        "plan_examples.txt": _cli("plan", "-f", examples),
        "bench_planner.json": planner_fleets(),
        "bench_reconcile.json": reconcile_fleet(),
    }


@pytest.fixture(scope="module")
def documents() -> dict[str, str]:
    return golden_documents()


@pytest.mark.parametrize(
    "name",
    [
        "plan_examples.json",
        "plan_examples.yaml",
        "plan_examples.txt",
        "bench_planner.json",
        "bench_reconcile.json",
    ],
)
def test_output_is_byte_identical_to_the_saved_golden_file(documents: dict[str, str], name: str) -> None:
    saved = (GOLDEN / name).read_text()
    assert documents[name] == saved, f"tests/golden/{name} differs: behaviour changed"


def test_the_golden_files_pin_real_work() -> None:
    """The files are not empty shells: the examples fit, and the reconcile fleet's first round writes."""
    plan = json.loads((GOLDEN / "plan_examples.json").read_text().rsplit("exit", 1)[0])
    assert [b["name"] for b in plan["budgets"]] == ["main-db"]
    assert len(plan["budgets"][0]["deployments"]) == 4
    rounds = json.loads((GOLDEN / "bench_reconcile.json").read_text())
    assert len(rounds[0]["writes"]) == RECONCILE_DEPLOYMENTS + 1  # every Deployment, then the status
    assert rounds[1]["writes"], "the scale-up changed nothing"


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python -m tests.test_golden --write")
    GOLDEN.mkdir(exist_ok=True)
    for file_name, text in golden_documents().items():
        (GOLDEN / file_name).write_text(text)
        print(f"wrote tests/golden/{file_name} ({len(text):,} bytes)")
