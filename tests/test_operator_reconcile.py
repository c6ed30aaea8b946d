"""One reconcile round, with the Kubernetes calls answered in memory (no cluster, no emulator): what a round
writes, and what it does not, in the cases the emulator tests do not reach cheaply."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Mapping
from typing import Any

import pytest

from poolbudget.adapters.errors import NotFound, SecretError
from poolbudget.api.models import SizingSpec
from poolbudget.controller import reconcile
from poolbudget.controller.demand import DemandReading
from poolbudget.controller.state import Context, RoundResult, View
from poolbudget.observe.pods import PodFacts
from poolbudget.observe.refused import refused_footprint
from poolbudget.runtime.metrics import OperatorMetrics
from tests.emulator.defaults import default_deployment
from tests.emulator.patching import strategic_merge_patch
from tests.operator_harness import budget_manifest, deployment_manifest


class FakeCluster:
    """Answers the operator's calls as the API server would, keeping the objects in memory."""

    def __init__(self, deployments: list[dict[str, Any]], budget: dict[str, Any]) -> None:
        self.deployments = {(d["metadata"]["namespace"], d["metadata"]["name"]): d for d in deployments}
        self.budget = budget
        self.calls: list[tuple[str, str]] = []
        self.secrets: dict[tuple[str, str], str] = {}

    async def patch_deployment(self, namespace: str, name: str, patch: Mapping[str, Any]) -> dict[str, Any]:
        self.calls.append(("deployment", name))
        current = self.deployments.get((namespace, name))
        if current is None:
            raise NotFound(f"Deployment {namespace}/{name} not found", 404)
        body = {k: v for k, v in patch.items() if k != "metadata"}
        metadata = {k: v for k, v in (patch.get("metadata") or {}).items() if k != "resourceVersion"}
        updated = strategic_merge_patch(current, body)
        updated["metadata"] = strategic_merge_patch(
            {"metadata": current["metadata"]}, {"metadata": metadata}
        )["metadata"]
        updated["metadata"]["resourceVersion"] = str(int(current["metadata"]["resourceVersion"]) + 100)
        self.deployments[(namespace, name)] = updated
        return copy.deepcopy(updated)

    async def patch_budget_status(self, name: str, status: Mapping[str, Any]) -> dict[str, Any]:
        self.calls.append(("status", name))
        merged = {**(self.budget.get("status") or {}), **status}
        self.budget["status"] = {k: v for k, v in merged.items() if v is not None}
        return self.budget

    async def read_secret_value(self, namespace: str, name: str, key: str) -> str:
        if (namespace, name) not in self.secrets:
            raise SecretError(f"Secret {namespace}/{name} not found", 404)
        return self.secrets[(namespace, name)]


class Events:
    def __init__(self) -> None:
        self.posted: list[tuple[str, str, str]] = []

    def normal(self, obj: Mapping[str, Any], reason: str, message: str) -> None:
        self.posted.append(("Normal", reason, message))

    def warning(self, obj: Mapping[str, Any], reason: str, message: str) -> None:
        self.posted.append(("Warning", reason, message))


def stored(manifest: dict[str, Any], version: int) -> dict[str, Any]:
    obj = copy.deepcopy(manifest)
    if obj["kind"] == "Deployment":
        default_deployment(obj)
        replicas = obj["spec"]["replicas"]
        obj["status"] = {"observedGeneration": 1, "replicas": replicas, "updatedReplicas": replicas}
    obj["metadata"].update(resourceVersion=str(version), generation=1, uid=f"uid-{version}")
    return obj


def world(**spec: Any) -> tuple[FakeCluster, Context, Events]:
    budget = stored(budget_manifest(max_connections=60, **spec), 1)
    deployments = [stored(deployment_manifest(n), i + 2) for i, n in enumerate("ab")]
    cluster = FakeCluster(deployments, budget)
    events = Events()
    context = Context(
        cluster=cluster, events=events, metrics=OperatorMetrics(), operator_namespace="poolbudget"
    )
    return cluster, context, events


def view(cluster: FakeCluster, pods: dict[tuple[str, str], list[PodFacts]] | None = None) -> View:
    return View({"main": list(cluster.deployments.values())}, {}, pods or {}, {})


def run(context: Context, cluster: FakeCluster) -> RoundResult:
    return asyncio.run(reconcile.reconcile_budget(context, cluster.budget, view(cluster)))


def test_a_second_round_over_the_same_objects_writes_nothing() -> None:
    cluster, context, _ = world()
    first = run(context, cluster)
    assert first.writes == 3  # two Deployments and the status
    cluster.calls.clear()
    assert run(context, cluster).writes == 0
    assert cluster.calls == []


def test_a_missing_secret_without_a_fallback_plans_nothing_and_says_why() -> None:
    cluster, context, events = world(database={"connectionSecretRef": {"name": "db"}})
    result = run(context, cluster)
    assert [c for c in cluster.calls if c[0] == "deployment"] == []
    conditions = {c["type"]: c for c in cluster.budget["status"]["conditions"]}
    assert conditions["DatabaseReachable"]["status"] == "False"
    assert conditions["DatabaseReachable"]["reason"] == "SecretUnavailable"
    assert (
        "Secret poolbudget/db not found" in conditions["DatabaseReachable"]["message"]
    )  # operator's namespace
    assert conditions["Ready"]["reason"] == "LimitsUnknown"
    assert ("Warning", "DatabaseUnreachable") in [(t, r) for t, r, _ in events.posted]
    assert result.next_round_in is not None


def test_demand_mode_falls_back_to_weights_and_says_so() -> None:
    cluster, context, _ = world(rebalance={"mode": "demand"}, metrics={"prometheusUrl": "http://127.0.0.1:1"})
    run(context, cluster)
    conditions = {c["type"]: c for c in cluster.budget["status"]["conditions"]}
    # Nothing listens on port 1: no demand can be measured.
    assert conditions["MetricsAvailable"]["status"] == "False"
    assert "static weights" in conditions["MetricsAvailable"]["message"]
    assert {name for kind, name in cluster.calls if kind == "deployment"} == {"a", "b"}


def test_an_invalid_budget_touches_no_deployment() -> None:
    cluster, context, events = world(defaults={"minConnectionsPerProcess": 9, "maxConnectionsPerProcess": 3})
    run(context, cluster)
    assert cluster.calls == [("status", "main")]
    invalid = next(c for c in cluster.budget["status"]["conditions"] if c["type"] == "Invalid")
    assert invalid["status"] == "True"
    assert "spec.defaults" in invalid["message"]
    assert ("Warning", "InvalidSpec") in [(t, r) for t, r, _ in events.posted]


def test_a_deployment_deleted_meanwhile_is_skipped() -> None:
    cluster, context, _ = world()
    snapshot = view(cluster)
    del cluster.deployments[("default", "a")]
    result = asyncio.run(reconcile.reconcile_budget(context, cluster.budget, snapshot))
    assert ("deployment", "b") in cluster.calls
    assert result.writes == 2


def refuse(cluster: FakeCluster, key: tuple[str, str], annotations: dict[str, str]) -> None:
    """A user edits the Deployment's annotations (a new version of it, as the API server would store it)."""
    deployment = copy.deepcopy(cluster.deployments[key])
    deployment["metadata"]["annotations"].update(annotations)
    deployment["metadata"]["resourceVersion"] = str(int(deployment["metadata"]["resourceVersion"]) + 1)
    cluster.deployments[key] = deployment


def stamp_of(deployment: Mapping[str, Any]) -> int:
    return int(deployment["spec"]["template"]["metadata"]["annotations"]["poolbudget.io/connections-per-pod"])


@pytest.mark.parametrize(
    "annotations",
    [{"poolbudget.io/profile": "no-such-profile"}, {"poolbudget.io/processes": "many"}],
    ids=["unknown-profile", "bad-processes"],
)
def test_a_refused_deployment_with_our_settings_is_still_counted_and_left_alone(
    annotations: dict[str, str],
) -> None:
    cluster, context, events = world(defaults={"maxConnectionsPerProcess": 40})
    run(context, cluster)
    a, b = ("default", "a"), ("default", "b")
    per_pod = stamp_of(cluster.deployments[a])
    available = cluster.budget["status"]["available"]
    refuse(cluster, a, annotations)
    before = copy.deepcopy(cluster.deployments[a])
    # Its pods still hold their pools: two running at its settings, one older one terminating with more.
    pods = {
        a: [PodFacts("default", f"a-{i}", "a", False, per_pod, "main") for i in range(2)]
        + [PodFacts("default", "a-old", "a", True, per_pod + 5, "main")]
    }
    held = max(2 * per_pod + per_pod + 5, 3 * per_pod)  # observed, or its stamp x (2 replicas + 1 surge)
    cluster.calls.clear()
    asyncio.run(reconcile.reconcile_budget(context, cluster.budget, view(cluster, pods)))

    assert ("deployment", "a") not in cluster.calls
    assert cluster.deployments[a] == before
    status = cluster.budget["status"]
    assert status["available"] == available - held
    assert "refused Deployments" in status["availableReason"]
    assert f"default/a {held}" in status["availableReason"]
    assert [x["name"] for x in status["allocations"]] == ["b"]
    # b may take what a does not hold, and not one connection more (without the fix it grows into a's share).
    grown = stamp_of(cluster.deployments[b]) * 3
    assert grown + held <= available
    warnings = [m for t, r, m in events.posted if (t, r) == ("Warning", "Refused")]
    assert warnings
    assert all("still counted at its current settings" in m for m in warnings)
    assert all("will not change it until the annotation is fixed" in m for m in warnings)

    # Nothing changed: the next round writes nothing and posts no new Warning.
    cluster.calls.clear()
    posted = len(events.posted)
    again = asyncio.run(reconcile.reconcile_budget(context, cluster.budget, view(cluster, pods)))
    assert again.writes == 0
    assert cluster.calls == []
    assert len(events.posted) == posted


def test_demand_explanations_show_in_the_allocations_and_their_ages_do_not_rewrite_the_status(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cluster, context, _ = world(rebalance={"mode": "demand"}, metrics={"prometheusUrl": "http://127.0.0.1:1"})
    clock = [0.0]
    context.monotonic = lambda: clock[0]
    age = [40]

    async def measured(*_: Any, **__: Any) -> DemandReading:
        a, b = ("default", "a"), ("default", "b")
        return DemandReading(
            {a: 4, b: 6},
            True,
            "DemandMeasured",
            {
                a: "demand 4 kept: 5 is within the deadband of 2 around it [prometheus]",
                b: f"no measurement; holding demand 6 confirmed {age[0]}s ago",
            },
            "demand measured for 2 Deployments",
        )

    monkeypatch.setattr("poolbudget.controller.inputs.measure_demand", measured)
    run(context, cluster)
    reasons = {x["name"]: x["reason"] for x in cluster.budget["status"]["allocations"]}
    assert reasons["a"].endswith(
        "; demand: demand 4 kept: 5 is within the deadband of 2 around it [prometheus]"
    )
    assert "; demand: no measurement; holding demand 6 confirmed earlier" in reasons["b"]

    # Re-measured later: the same decisions, older: no write.
    clock[0], age[0] = 120.0, 160
    cluster.calls.clear()
    assert run(context, cluster).writes == 0
    assert cluster.calls == []


def test_a_refused_footprint_is_read_from_the_object_as_it_is() -> None:
    deployment = stored(deployment_manifest("a", replicas=4), 2)
    deployment["spec"]["template"]["metadata"]["annotations"] = {"poolbudget.io/connections-per-pod": "10"}
    sizing = SizingSpec()
    assert refused_footprint(deployment, [], None, sizing) == 10 * (4 + 1)  # 25% of 4
    deployment["spec"]["strategy"] = {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "lots"}}
    assert refused_footprint(deployment, [], 6, sizing) == 10 * (6 + 2)  # HPA max, surge as 25%
    # Pods holding more than that (old, terminating) count as they are; an unstamped one at the template's.
    pods = [PodFacts("default", f"a-{i}", "a", True, 30) for i in range(2)] + [
        PodFacts("default", "a-x", "a", False)
    ]
    assert refused_footprint(deployment, pods, 1, sizing) == 30 + 30 + 10
    del deployment["spec"]["template"]["metadata"]["annotations"]
    assert refused_footprint(deployment, [], None, sizing) == 0  # nothing poolbudget stamped
