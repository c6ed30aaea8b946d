"""What is really running: pods' connections (stamped or read from their env) and finished rollouts. Pure."""

from __future__ import annotations

from typing import Any

from poolbudget.api.annotations import MANAGED_BY, ROLLED_AT, STAMP_CONNECTIONS
from poolbudget.api.models import PoolBudget
from poolbudget.api.workloads import Deployment
from poolbudget.observe.footprint import (
    observed_footprint,
    rollout_settled,
    seconds_since_roll,
    template_per_pod,
)
from poolbudget.observe.objects import budgets_of, hpa_target, parse_time
from poolbudget.observe.pods import PodFacts, deployment_of, pod_facts
from poolbudget.planning.budget import manage

BUDGET = PoolBudget.model_validate(
    {"metadata": {"name": "main"}, "spec": {"database": {"maxConnections": 100}}}
)


def deployment_body(
    env: dict[str, str],
    *,
    generation: int = 2,
    status: dict[str, Any] | None = None,
    annotations: dict[str, str] | None = None,
    stamp: int | None = None,
) -> dict[str, Any]:
    template_annotations = {STAMP_CONNECTIONS: str(stamp)} if stamp is not None else {}
    return {
        "metadata": {
            "name": "web",
            "namespace": "shop",
            "generation": generation,
            "annotations": {"poolbudget.io/budget": "main", **(annotations or {})},
        },
        "spec": {
            "replicas": 2,
            "template": {
                "metadata": {"labels": {"app": "web"}, "annotations": template_annotations},
                "spec": {
                    "containers": [{"name": "app", "env": [{"name": k, "value": v} for k, v in env.items()]}]
                },
            },
        },
        "status": status
        if status is not None
        else {"observedGeneration": generation, "replicas": 2, "updatedReplicas": 2, "readyReplicas": 2},
    }


def managed_for(body: dict[str, Any]) -> Any:
    return manage(BUDGET, Deployment.model_validate(body))


def pod(
    name: str,
    *,
    stamp: int | None = None,
    env: dict[str, str] | None = None,
    terminating: bool = False,
    owner: str = "web-5d8f7",
    template_hash: str = "5d8f7",
) -> dict[str, Any]:
    metadata: dict[str, Any] = {
        "name": name,
        "namespace": "shop",
        "labels": {"app": "web", "pod-template-hash": template_hash},
        "ownerReferences": [{"kind": "ReplicaSet", "name": owner, "controller": True}],
    }
    if stamp is not None:
        metadata["annotations"] = {STAMP_CONNECTIONS: str(stamp)}
    if terminating:
        metadata["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return {
        "metadata": metadata,
        "spec": {
            "containers": [{"name": "app", "env": [{"name": k, "value": v} for k, v in (env or {}).items()]}]
        },
    }


def facts(body: dict[str, Any]) -> PodFacts:
    found = pod_facts(body)
    assert found is not None
    return found


def test_a_pod_belongs_to_the_deployment_named_by_its_replicaset() -> None:
    assert deployment_of(pod("p")["metadata"]) == "web"
    assert deployment_of({"name": "job-x", "ownerReferences": [{"kind": "Job", "name": "job"}]}) is None
    assert pod_facts({"metadata": {"name": "bare", "namespace": "shop"}}) is None


def test_stamped_pods_count_their_stamp_and_unstamped_ones_their_own_env() -> None:
    body = deployment_body({"WEB_CONCURRENCY": "2", "DB_POOL_SIZE": "4", "DB_MAX_OVERFLOW": "2"})
    managed = managed_for(body)
    assert template_per_pod(managed, body) == 12  # 2 processes x (4 + 2)
    pods = [
        facts(pod("new-1", stamp=12)),
        facts(
            pod("old-1", env={"WEB_CONCURRENCY": "2"}, terminating=True, owner="web-aaa", template_hash="aaa")
        ),
    ]
    # the unstamped pod runs SQLAlchemy's defaults: 2 processes x (5 + 10)
    assert observed_footprint(managed, pods) == 12 + 30


def test_a_rollout_is_settled_only_when_the_controller_caught_up_and_no_old_pod_is_left() -> None:
    body = deployment_body({"DB_POOL_SIZE": "4", "DB_MAX_OVERFLOW": "2"}, stamp=6)
    managed = managed_for(body)
    current = [facts(pod("a", stamp=6)), facts(pod("b", stamp=6))]
    assert rollout_settled(body, current, managed)
    terminating = facts(pod("c", stamp=10, terminating=True))
    assert not rollout_settled(body, [*current, terminating], managed)
    assert not rollout_settled(body, [facts(pod("d", stamp=10))], managed)
    lagging = deployment_body({"DB_POOL_SIZE": "4"}, status={"observedGeneration": 1, "replicas": 2})
    assert not rollout_settled(lagging, [], managed)


def test_seconds_since_poolbudget_last_rolled_it() -> None:
    now = parse_time("2026-01-01T00:10:00Z")
    assert now is not None
    rolled = deployment_body({}, annotations={ROLLED_AT: "2026-01-01T00:05:00Z"})
    assert seconds_since_roll(rolled, now) == 300
    assert seconds_since_roll(deployment_body({}), now) is None


def test_an_hpa_targets_a_deployment_by_namespace_and_name_and_nothing_else() -> None:
    def hpa(kind: str) -> dict[str, Any]:
        return {
            "metadata": {"namespace": "shop", "name": "web-hpa"},
            "spec": {"scaleTargetRef": {"kind": kind, "name": "web"}, "maxReplicas": 5},
        }

    assert hpa_target(hpa("Deployment")) == ("shop", "web")
    assert hpa_target(hpa("StatefulSet")) is None
    assert hpa_target({"metadata": {"namespace": "shop"}, "spec": {}}) is None


def test_a_deployment_concerns_the_budget_it_names_and_the_one_whose_settings_it_carries() -> None:
    moving = {"metadata": {"annotations": {"poolbudget.io/budget": "new", MANAGED_BY: "old"}}}
    assert budgets_of(moving) == {"new", "old"}
    assert budgets_of({"metadata": {"annotations": {"poolbudget.io/budget": " "}}}) == frozenset()
