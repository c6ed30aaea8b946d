"""Live delivery on the real control plane: the one rollout at opt-in, allotments as pod annotations, a hand edit
rewritten, refusals, and the fall back to env when no pod ever answers.

These tests run no app processes (kwok runs no containers), so no pod confirms: what the operator does without
confirmations is what they check. ``tests/test_kube_live_apps.py`` runs real pools in the pods' stead.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from poolbudget.api.allotment import parse_allotment
from tests.kube.fixtures import KubeCluster, wait_for
from tests.kube.operator import differences, operator_on, template_env
from tests.operator_harness import FAST, budget_manifest, deployment_manifest

pytestmark = [pytest.mark.kube, pytest.mark.timeout(300)]

ALLOTMENT = "poolbudget.io/allotment"


def live_app(
    name: str, namespace: str, budget: str, *, replicas: int = 2, **annotations: str
) -> dict[str, Any]:
    manifest = deployment_manifest(
        name,
        namespace,
        budget=budget,
        replicas=replicas,
        env=[{"name": "WEB_CONCURRENCY", "value": "2"}, {"name": "LOG_LEVEL", "value": "info"}],
        annotations=annotations,
    )
    manifest["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = 2
    return manifest


def live_budget(name: str, max_connections: int, **delivery: Any) -> dict[str, Any]:
    return budget_manifest(name, max_connections, rebalance=FAST, delivery={"mode": "live", **delivery})


def pods(kube: KubeCluster, namespace: str, app: str) -> list[dict[str, Any]]:
    return [
        p for p in kube.list("pods", namespace, f"app={app}") if not p["metadata"].get("deletionTimestamp")
    ]


def allotments(kube: KubeCluster, namespace: str, app: str) -> dict[str, Any]:
    """Per running pod, its allotment as the operator wrote it (None: none yet)."""
    return {
        p["metadata"]["name"]: parse_allotment(
            (p["metadata"].get("annotations") or {}).get(ALLOTMENT)
        ).allotment
        for p in pods(kube, namespace, app)
    }


def revision(kube: KubeCluster, namespace: str, name: str) -> int:
    d = kube.get("deployment", name, namespace) or {}
    return int((d["metadata"].get("annotations") or {}).get("deployment.kubernetes.io/revision", 0))


def events(kube: KubeCluster, namespace: str, reason: str) -> list[str]:
    return [e.get("message", "") for e in kube.list("events", namespace) if e.get("reason") == reason]


def test_opt_in_rolls_once_then_scale_events_only_write_pod_annotations(
    kube: KubeCluster, budget_name: str, namespaces: Callable[[str], str], tmp_path: Path
) -> None:
    ns = namespaces("live-optin")
    kube.apply(live_budget(budget_name, 60))
    kube.apply(live_app("api", ns, None, replicas=2))  # type: ignore[arg-type]
    original = kube.get("deployment", "api", ns)
    assert original is not None
    with operator_on(kube, tmp_path) as operator:
        kube.kubectl("annotate", "deployment", "api", "-n", ns, f"poolbudget.io/budget={budget_name}")
        wait_for(
            lambda: len(found := allotments(kube, ns, "api")) == 2 and all(found.values()),
            timeout=60,
            message=lambda: f"both pods allotted\n{operator.log()}",
        )
        live = kube.get("deployment", "api", ns)
        assert live is not None
        template = live["spec"]["template"]
        env = {e["name"]: e for e in template["spec"]["containers"][0]["env"]}
        # The one rollout: the floor (1 per process), the file, the pod's identity, the volume and its mount.
        assert template_env(live)["DB_POOL_SIZE"] == "1"
        assert template_env(live)["DB_MAX_OVERFLOW"] == "0"
        assert env["POOLBUDGET_ALLOTMENT_FILE"]["value"] == "/var/run/poolbudget/allotment"
        assert env["POD_UID"]["valueFrom"] == {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.uid"}}
        assert template["spec"]["volumes"] == [
            {
                "name": "poolbudget-allotment",
                "downwardAPI": {
                    "defaultMode": 420,
                    "items": [
                        {
                            "path": "allotment",
                            "fieldRef": {
                                "apiVersion": "v1",
                                "fieldPath": f"metadata.annotations['{ALLOTMENT}']",
                            },
                        }
                    ],
                },
            }
        ]
        assert template["spec"]["containers"][0]["volumeMounts"] == [
            {"name": "poolbudget-allotment", "mountPath": "/var/run/poolbudget", "readOnly": True}
        ]
        assert template["metadata"]["annotations"]["poolbudget.io/delivery"] == "live"
        rolled = revision(kube, ns, "api")
        assert rolled == 2  # created, then the opt-in rollout

        # A scale-up: new pods get their allotment, the Deployment is not rolled again.
        kube.kubectl("scale", "deployment/api", "-n", ns, "--replicas=4")
        wait_for(
            lambda: len(found := allotments(kube, ns, "api")) == 4 and all(found.values()),
            timeout=30,
            message=lambda: f"the new pods allotted\n{operator.log()}",
        )
        assert revision(kube, ns, "api") == rolled
        # Every allotment fits: 4 pods x 2 processes x its ceiling, plus the reserve, within available.
        status = (kube.get("poolbudget", budget_name) or {})["status"]
        held = sum(2 * a.ceiling for a in allotments(kube, ns, "api").values())
        assert held <= status["available"]

        # Opting out gives the template back exactly, and rolls once more.
        kube.kubectl("annotate", "deployment", "api", "-n", ns, "poolbudget.io/budget-")
        wait_for(
            lambda: (
                not differences(
                    original["spec"]["template"],
                    (kube.get("deployment", "api", ns) or {})["spec"]["template"],
                )
            ),
            timeout=30,
            message=lambda: (
                "template restored: "
                + "; ".join(
                    differences(
                        original["spec"]["template"],
                        (kube.get("deployment", "api", ns) or {})["spec"]["template"],
                    )
                )
            ),
        )


def test_a_hand_edited_allotment_is_written_again_with_a_warning(
    kube: KubeCluster, budget_name: str, namespaces: Callable[[str], str], tmp_path: Path
) -> None:
    ns = namespaces("live-edit")
    kube.apply(live_budget(budget_name, 40))
    kube.apply(live_app("api", ns, budget_name, replicas=1))
    with operator_on(kube, tmp_path) as operator:
        found = wait_for(lambda: [a for a in allotments(kube, ns, "api").values() if a], timeout=60,
                         message=lambda: f"allotted\n{operator.log()}")  # fmt: skip
        before = found[0]
        (pod,) = pods(kube, ns, "api")
        edited = json.dumps(
            {"generation": before.generation, "perProcess": {"poolSize": 30, "maxOverflow": 0}}
        )
        kube.kubectl(
            "annotate", "pod", pod["metadata"]["name"], "-n", ns, "--overwrite", f"{ALLOTMENT}={edited}"
        )

        def rewritten() -> Any:
            current = (kube.get("pod", pod["metadata"]["name"], ns) or {})["metadata"]["annotations"][
                ALLOTMENT
            ]
            read = parse_allotment(current)
            return (
                read.intact
                and read.allotment is not None
                and read.allotment.generation > before.generation
                and read.allotment
            )

        after = wait_for(rewritten, timeout=30, message=lambda: f"rewritten\n{operator.log()}")
        # Until the pod confirms it, it is counted at what the edit allowed.
        assert after.ceiling >= 30
        assert after.total == before.total
        wait_for(lambda: events(kube, ns, "AllotmentEdited"), timeout=30, message="a Warning event")


def test_a_deployment_whose_pods_never_confirm_falls_back_to_env(
    kube: KubeCluster, budget_name: str, namespaces: Callable[[str], str], tmp_path: Path
) -> None:
    """The app does not use the helper: no pod ever shows a tag. After confirmTimeoutSeconds it goes back to env
    (one rollout, an event saying why), sized by the env plan."""
    ns = namespaces("live-fallback")
    kube.apply(live_budget(budget_name, 40, confirmTimeoutSeconds=5))
    kube.apply(live_app("api", ns, budget_name, replicas=2))
    with operator_on(kube, tmp_path) as operator:
        wait_for(lambda: events(kube, ns, "LiveFallback"), timeout=60,
                 message=lambda: f"fell back\n{operator.log()}")  # fmt: skip
        deployment = wait_for(
            lambda: (
                (d := kube.get("deployment", "api", ns))
                and "volumes" not in d["spec"]["template"]["spec"]
                and template_env(d).get("DB_POOL_SIZE") not in (None, "1")
                and d
            ),
            timeout=60,
            message=lambda: f"back on env\n{operator.log()}",
        )
        assert "poolbudget.io/live-fallback" in deployment["metadata"]["annotations"]
        assert "POOLBUDGET_ALLOTMENT_FILE" not in template_env(deployment)
        assert "does not use poolbudget_client" in events(kube, ns, "LiveFallback")[0]


def test_live_is_refused_for_a_profile_the_helper_does_not_serve(
    kube: KubeCluster, budget_name: str, namespaces: Callable[[str], str], tmp_path: Path
) -> None:
    ns = namespaces("live-refused")
    kube.apply(budget_manifest(budget_name, 40, rebalance=FAST))
    kube.apply(
        live_app(
            "flow",
            ns,
            budget_name,
            replicas=1,
            **{"poolbudget.io/profile": "langflow", "poolbudget.io/delivery": "live"},
        )
    )
    with operator_on(kube, tmp_path) as operator:
        message = wait_for(lambda: events(kube, ns, "LiveRefused"), timeout=60,
                           message=lambda: f"refused\n{operator.log()}")  # fmt: skip
        assert "langflow" in message[0]
        deployment = wait_for(
            lambda: (
                (d := kube.get("deployment", "flow", ns))
                and "LANGFLOW_DB_CONNECTION_SETTINGS" in template_env(d)
                and d
            ),
            timeout=60,
            message="sized by env",
        )
        assert "volumes" not in deployment["spec"]["template"]["spec"]


def test_a_restarted_operator_reads_the_allotments_back_and_writes_nothing(
    kube: KubeCluster, budget_name: str, namespaces: Callable[[str], str], tmp_path: Path
) -> None:
    ns = namespaces("live-restart")
    kube.apply(live_budget(budget_name, 60))
    kube.apply(live_app("a", ns, budget_name, replicas=3), live_app("b", ns, budget_name, replicas=1))
    with operator_on(kube, tmp_path, name="first") as first:
        wait_for(
            lambda: all(
                len(f := allotments(kube, ns, n)) == r and all(f.values()) for n, r in (("a", 3), ("b", 1))
            ),
            timeout=60,
            message=lambda: f"every pod allotted\n{first.log()}",
        )
        # The first allotments may be at the floor while the apps' first pods still terminate: let it finish.
        wait_for(lambda: not any(p["metadata"].get("deletionTimestamp") for p in kube.list("pods", ns)),
                 timeout=60, message="the first pods gone")  # fmt: skip
        rounds = first.rounds(budget_name)
        wait_for(lambda: first.rounds(budget_name) >= rounds + 2, timeout=30, message="two more rounds")
        written = {n: allotments(kube, ns, n) for n in "ab"}
    mark = kube.audit.mark()
    with operator_on(kube, tmp_path, name="second") as second:
        # Nothing is confirmed (no app runs): the second operator looks again every second, a definite signal.
        wait_for(lambda: second.rounds(budget_name) >= 3, timeout=30, message="three rounds of the second")
    assert {n: allotments(kube, ns, n) for n in "ab"} == written
    writes = [
        (w.verb, w.resource, w.name)
        for w in kube.audit.writes(mark)
        if w.namespace == ns and w.user_agent.startswith(("poolbudget", "kopf/"))
    ]
    assert writes == []
