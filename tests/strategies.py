"""Hypothesis strategies for opted-in Deployments, HPAs and budgets, as raw Kubernetes dicts."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

PROFILES = ("sqlalchemy", "langflow", "letta", "airflow", "hikari", "psycopg-pool")


@st.composite
def deployment_docs(draw: st.DrawFn, index: int, budget: str = "db") -> dict[str, Any]:
    annotations: dict[str, str] = {"poolbudget.io/budget": budget}
    if draw(st.booleans()):
        annotations["poolbudget.io/profile"] = draw(st.sampled_from(PROFILES))
    if draw(st.booleans()):
        annotations["poolbudget.io/weight"] = str(draw(st.integers(1, 5)))
    if draw(st.booleans()):
        annotations["poolbudget.io/processes"] = str(draw(st.integers(1, 6)))
    lo = draw(st.integers(1, 6))
    if draw(st.booleans()):
        annotations["poolbudget.io/min-connections"] = str(lo)
        annotations["poolbudget.io/max-connections"] = str(lo + draw(st.integers(0, 40)))
    env = []
    if draw(st.booleans()):
        env.append({"name": "WEB_CONCURRENCY", "value": str(draw(st.integers(1, 8)))})
    strategy: dict[str, Any] = {"type": draw(st.sampled_from(["RollingUpdate", "Recreate"]))}
    if strategy["type"] == "RollingUpdate" and draw(st.booleans()):
        surge = draw(st.one_of(st.integers(0, 3), st.sampled_from(["10%", "25%", "50%", "100%"])))
        strategy["rollingUpdate"] = {"maxSurge": surge}
    spec: dict[str, Any] = {
        "strategy": strategy,
        "template": {"spec": {"containers": [{"name": "app", "env": env}]}},
    }
    replicas = draw(st.one_of(st.none(), st.integers(0, 12)))
    if replicas is not None:
        spec["replicas"] = replicas
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": f"app-{index}",
            "namespace": draw(st.sampled_from(["a", "b"])),
            "annotations": annotations,
        },
        "spec": spec,
    }


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]], int]:
    """(budget doc, deployment docs, hpa docs, max_connections)."""
    count = draw(st.integers(0, 10))
    deployments = [draw(deployment_docs(i)) for i in range(count)]
    hpas = []
    for d in deployments:
        if draw(st.integers(0, 3)) == 0:
            hpas.append(
                {
                    "apiVersion": "autoscaling/v2",
                    "kind": "HorizontalPodAutoscaler",
                    "metadata": {"name": d["metadata"]["name"], "namespace": d["metadata"]["namespace"]},
                    "spec": {
                        "scaleTargetRef": {"kind": "Deployment", "name": d["metadata"]["name"]},
                        "maxReplicas": draw(st.integers(1, 15)),
                    },
                }
            )
    low = draw(st.integers(1, 4))
    budget = {
        "apiVersion": "poolbudget.io/v1alpha1",
        "kind": "PoolBudget",
        "metadata": {"name": "db"},
        "spec": {
            "database": {"maxConnections": 100},
            "reserved": draw(st.integers(0, 20)),
            "defaults": {
                "minConnectionsPerProcess": low,
                "maxConnectionsPerProcess": low + draw(st.integers(0, 60)),
                "overflowRatio": draw(st.sampled_from([0.0, 0.3, 0.5, 0.6])),
            },
            "sizing": {
                "hpa": draw(st.sampled_from(["maxReplicas", "currentReplicas"])),
                "rolloutOverlap": draw(st.booleans()),
            },
        },
    }
    return budget, deployments, hpas, draw(st.integers(5, 3000))
