"""The Kubernetes API emulator (a test double) behaves as kopf, kubectl and the kubernetes client need.

Every test drives the emulator with a real client over HTTP; every wait has a timeout.
"""

from __future__ import annotations

import json
import queue
import textwrap
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import kubernetes
import pytest
from kopf.testing import KopfRunner

from tests.emulator import KubernetesEmulator, ManualClock, fixtures, patching, wait_until
from tests.emulator.pods import template_hash

# The fixture, served from here too in case no conftest registers it.
emulator = fixtures.emulator

pytestmark = pytest.mark.emulator

CRD_YAML = textwrap.dedent("""\
    apiVersion: apiextensions.k8s.io/v1
    kind: CustomResourceDefinition
    metadata:
      name: poolbudgets.poolbudget.io
    spec:
      group: poolbudget.io
      scope: Cluster
      names: {plural: poolbudgets, singular: poolbudget, kind: PoolBudget, shortNames: [pb]}
      versions:
      - name: v1alpha1
        served: true
        storage: true
        subresources: {status: {}}
        additionalPrinterColumns:
        - {name: Max, type: integer, jsonPath: .spec.maxConnections}
        - {name: Available, type: integer, jsonPath: .status.available}
        - {name: Ready, type: string, jsonPath: '.status.conditions[?(@.type=="Ready")].status'}
        - {name: Age, type: date, jsonPath: .metadata.creationTimestamp}
        schema:
          openAPIV3Schema:
            type: object
            properties:
              spec:
                type: object
                required: [maxConnections]
                properties:
                  maxConnections: {type: integer, minimum: 1}
                  reserved: {type: integer, default: 0}
              status:
                type: object
                x-kubernetes-preserve-unknown-fields: true
    """)

DEPLOYMENT_YAML = textwrap.dedent("""\
    apiVersion: apps/v1
    kind: Deployment
    metadata:
      name: web
      namespace: default
    spec:
      replicas: 2
      selector: {matchLabels: {app: web}}
      template:
        metadata:
          labels: {app: web}
        spec:
          containers:
          - name: app
            image: example/app:1.0
            env:
            - {name: DB_POOL_SIZE, value: "5"}
          - name: sidecar
            image: example/sidecar:1.0
    """)


def deployment(
    name: str = "web", *, replicas: int = 2, strategy: dict[str, Any] | None = None, env: str = "1"
) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            **({"strategy": strategy} if strategy else {}),
            "template": {
                "metadata": {"labels": {"app": name}, "annotations": {"revision": env}},
                "spec": {
                    "containers": [
                        {"name": "app", "image": "example/app:1", "env": [{"name": "POOL", "value": env}]}
                    ]
                },
            },
        },
    }


def http(
    emulator: KubernetesEmulator,
    method: str,
    path: str,
    body: Any = None,
    content_type: str = "application/json",
) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        emulator.url + path, data=data, method=method, headers={"Content-Type": content_type}
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


# ------------------------------------------------------------------------------------------ patches


def test_strategic_merge_merges_containers_and_env_by_name_and_honours_directives() -> None:
    live = {
        "containers": [
            {
                "name": "app",
                "image": "a:1",
                "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
            },
            {"name": "side", "image": "s:1"},
        ],
        "tolerations": [{"key": "x"}],
    }
    patch = {
        "$setElementOrder/containers": [{"name": "side"}, {"name": "app"}],
        "containers": [
            {"name": "app", "env": [{"name": "B", "$patch": "delete"}, {"name": "C", "value": "3"}]}
        ],
        "tolerations": [{"key": "y"}],
    }

    merged = patching.strategic_merge_patch(live, patch)

    assert [c["name"] for c in merged["containers"]] == ["side", "app"]
    assert merged["containers"][1] == {
        "name": "app",
        "image": "a:1",
        "env": [{"name": "A", "value": "1"}, {"name": "C", "value": "3"}],
    }
    assert merged["tolerations"] == [{"key": "y"}]  # Lists without a merge key are replaced.


def test_json_patch_applies_ops_and_a_failing_test_op_raises() -> None:
    doc = {"metadata": {"resourceVersion": "7", "finalizers": ["a"]}}
    ops = [
        {"op": "test", "path": "/metadata/resourceVersion", "value": "7"},
        {"op": "add", "path": "/metadata/finalizers/-", "value": "b"},
        {"op": "remove", "path": "/metadata/finalizers/0"},
    ]

    assert patching.json_patch(doc, ops)["metadata"]["finalizers"] == ["b"]
    with pytest.raises(patching.PatchError):
        patching.json_patch(doc, [{"op": "test", "path": "/metadata/resourceVersion", "value": "6"}])


def test_merge_patch_removes_keys_set_to_null() -> None:
    assert patching.merge_patch({"a": {"b": 1, "c": 2}}, {"a": {"b": None, "d": 3}}) == {
        "a": {"c": 2, "d": 3}
    }


# ------------------------------------------------------------------------------------------ client


def test_client_crud_with_selectors_is_recorded_in_the_history(emulator: KubernetesEmulator) -> None:
    core: Any = kubernetes.client.CoreV1Api(emulator.api_client())
    start = emulator.mark()
    for name, app in (("one", "x"), ("two", "y")):
        core.create_namespaced_config_map(
            "default", {"metadata": {"name": name, "labels": {"app": app}}, "data": {"k": name}}
        )

    assert [
        cm.metadata.name for cm in core.list_namespaced_config_map("default", label_selector="app=x").items
    ] == ["one"]
    assert [
        cm.metadata.name
        for cm in core.list_config_map_for_all_namespaces(field_selector="metadata.name=two").items
    ] == ["two"]
    core.patch_namespaced_config_map("one", "default", {"data": {"k": "patched"}})
    replaced = core.read_namespaced_config_map("one", "default")
    replaced.data = {"k": "replaced"}
    core.replace_namespaced_config_map("one", "default", replaced)
    core.delete_namespaced_config_map("two", "default")
    with pytest.raises(kubernetes.client.ApiException) as missing:
        core.read_namespaced_config_map("two", "default")

    assert missing.value.status == 404
    writes = emulator.writes(since=start, plural="configmaps")
    assert [(w.verb, w.name, w.event) for w in writes] == [
        ("create", "one", "ADDED"),
        ("create", "two", "ADDED"),
        ("patch", "one", "MODIFIED"),
        ("update", "one", "MODIFIED"),
        ("delete", "two", "DELETED"),
    ]
    assert writes[2].body == {"data": {"k": "patched"}}
    assert writes[3].object["data"] == {"k": "replaced"}
    versions = [w.resource_version for w in writes]
    assert versions == sorted(versions)
    assert len(set(versions)) == len(versions)
    assert all(w.actor.startswith("OpenAPI-Generator") for w in writes)


def test_client_watch_streams_every_write_namespaced_and_cluster_wide(emulator: KubernetesEmulator) -> None:
    core: Any = kubernetes.client.CoreV1Api(emulator.api_client())
    emulator.create_namespace("other")
    listed = core.list_namespaced_config_map("default")
    events: dict[str, queue.Queue[tuple[str, str]]] = {"ns": queue.Queue(), "all": queue.Queue()}

    def watch(key: str, func: Any, *args: Any) -> None:
        watcher: Any = kubernetes.watch.Watch()  # type: ignore[no-untyped-call]
        for event in watcher.stream(
            func, *args, resource_version=listed.metadata.resource_version, timeout_seconds=5
        ):
            events[key].put((event["type"], event["object"].metadata.name))

    threads = [
        threading.Thread(target=watch, args=("ns", core.list_namespaced_config_map, "default"), daemon=True),
        threading.Thread(target=watch, args=("all", core.list_config_map_for_all_namespaces), daemon=True),
    ]
    for thread in threads:
        thread.start()
    wait_until(lambda: emulator.store.open_watches == 2, message="both watches to open")

    core.create_namespaced_config_map("default", {"metadata": {"name": "cm"}})
    core.patch_namespaced_config_map("cm", "default", {"metadata": {"annotations": {"only": "metadata"}}})
    core.patch_namespaced_config_map(
        "cm", "default", {"metadata": {"annotations": {"only": "metadata"}}}
    )  # No-op.
    core.create_namespaced_config_map("other", {"metadata": {"name": "elsewhere"}})
    core.delete_namespaced_config_map("cm", "default")

    def drain(key: str, count: int) -> list[tuple[str, str]]:
        return [events[key].get(timeout=5) for _ in range(count)]

    assert drain("ns", 3) == [("ADDED", "cm"), ("MODIFIED", "cm"), ("DELETED", "cm")]
    assert drain("all", 4) == [("ADDED", "cm"), ("MODIFIED", "cm"), ("ADDED", "elsewhere"), ("DELETED", "cm")]
    assert not emulator.writes(plural="configmaps")[2].changed  # The no-op patch: recorded, no event.


def test_status_subresource_generation_and_resource_versions(emulator: KubernetesEmulator) -> None:
    apps: Any = kubernetes.client.AppsV1Api(emulator.api_client())
    created = apps.create_namespaced_deployment("default", deployment())
    version = int(created.metadata.resource_version)

    def current() -> Any:
        return apps.read_namespaced_deployment("web", "default")

    apps.patch_namespaced_deployment(
        "web", "default", {"metadata": {"labels": {"team": "a"}}, "status": {"replicas": 99}}
    )
    after_labels = current()
    apps.patch_namespaced_deployment("web", "default", {"spec": {"replicas": 3}})
    after_spec = current()
    apps.patch_namespaced_deployment_status(
        "web", "default", {"status": {"replicas": 3}, "spec": {"replicas": 9}}
    )
    after_status = current()

    assert created.metadata.generation == 1
    assert created.spec.replicas == 2
    assert after_labels.metadata.generation == 1
    assert after_labels.status.replicas is None
    assert int(after_labels.metadata.resource_version) > version
    assert after_spec.metadata.generation == 2
    assert after_status.metadata.generation == 2
    assert after_status.status.replicas == 3
    assert after_status.spec.replicas == 3  # The spec is ignored on /status.
    assert int(after_status.metadata.resource_version) > int(after_spec.metadata.resource_version)
    assert created.spec.strategy.rolling_update.max_surge == "25%"  # Defaulted like a real API server.


def test_json_patch_with_failing_test_op_is_422_and_conflicts_are_409(emulator: KubernetesEmulator) -> None:
    emulator.create(deployment())
    path = "/apis/apps/v1/namespaces/default/deployments/web"
    version = emulator.get("apps/v1", "Deployment", "web", "default")["metadata"]["resourceVersion"]  # type: ignore[index]

    stale, stale_body = http(
        emulator,
        "PATCH",
        path,
        [
            {"op": "test", "path": "/metadata/resourceVersion", "value": "1"},
            {"op": "add", "path": "/metadata/finalizers", "value": ["x"]},
        ],
        "application/json-patch+json",
    )
    fresh, fresh_body = http(
        emulator,
        "PATCH",
        path,
        [
            {"op": "test", "path": "/metadata/resourceVersion", "value": version},
            {"op": "add", "path": "/metadata/finalizers", "value": ["x"]},
        ],
        "application/json-patch+json",
    )
    conflict, conflict_body = http(
        emulator,
        "PATCH",
        path,
        {"metadata": {"resourceVersion": version, "labels": {"a": "b"}}},
        "application/merge-patch+json",
    )

    assert (stale, stale_body["kind"], stale_body["code"]) == (422, "Status", 422)
    assert fresh == 200
    assert fresh_body["metadata"]["finalizers"] == ["x"]
    assert conflict == 409
    assert conflict_body["reason"] == "Conflict"
    assert [rejected.code for rejected in emulator.rejected] == [422, 409]


def test_finalizers_hold_a_deleted_object_until_they_are_removed(emulator: KubernetesEmulator) -> None:
    emulator.create(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "held", "namespace": "default", "finalizers": ["example.com/x"]},
        }
    )

    emulator.delete("v1", "configmaps", "held", "default")
    terminating = emulator.get("v1", "configmaps", "held", "default")
    emulator.patch("v1", "configmaps", "held", {"metadata": {"finalizers": None}}, "default")

    assert terminating is not None
    assert terminating["metadata"]["deletionTimestamp"]
    assert emulator.get("v1", "configmaps", "held", "default") is None
    assert [w.event for w in emulator.writes(plural="configmaps")] == ["ADDED", "MODIFIED", "DELETED"]


def test_writes_into_a_missing_namespace_are_refused(emulator: KubernetesEmulator) -> None:
    status, body = http(
        emulator, "POST", "/api/v1/namespaces/nowhere/configmaps", {"metadata": {"name": "x"}}
    )

    assert status == 404
    assert body["message"] == 'namespaces "nowhere" not found'


def test_expired_watches_get_410_and_clients_must_relist(emulator: KubernetesEmulator) -> None:
    _, listed = http(emulator, "GET", "/api/v1/namespaces/default/configmaps")
    old_version = listed["metadata"]["resourceVersion"]
    stream = urllib.request.urlopen(
        f"{emulator.url}/api/v1/namespaces/default/configmaps?watch=true&resourceVersion={old_version}",
        timeout=5,
    )
    wait_until(lambda: emulator.store.open_watches == 1, message="the watch to open")

    assert emulator.expire_watches(plural="configmaps") == 1
    error = json.loads(stream.readline())
    resumed = urllib.request.urlopen(
        f"{emulator.url}/api/v1/namespaces/default/configmaps?watch=true&resourceVersion={old_version}",
        timeout=5,
    )
    resumed_error = json.loads(resumed.readline())
    _, relisted = http(emulator, "GET", "/api/v1/namespaces/default/configmaps")
    fresh = urllib.request.urlopen(
        f"{emulator.url}/api/v1/namespaces/default/configmaps?watch=true&"
        f"resourceVersion={relisted['metadata']['resourceVersion']}",
        timeout=5,
    )
    emulator.create(
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "after", "namespace": "default"}}
    )
    added = json.loads(fresh.readline())

    assert (error["type"], error["object"]["code"]) == ("ERROR", 410)
    assert (resumed_error["type"], resumed_error["object"]["code"]) == ("ERROR", 410)
    assert (added["type"], added["object"]["metadata"]["name"]) == ("ADDED", "after")
    for response in (stream, resumed, fresh):
        response.close()


def test_discovery_lists_the_scale_subresource_as_autoscaling_v1(emulator: KubernetesEmulator) -> None:
    _, resources = http(emulator, "GET", "/apis/apps/v1")
    _, groups = http(emulator, "GET", "/apis")

    scale = next(r for r in resources["resources"] if r["name"] == "deployments/scale")
    assert (scale["group"], scale["version"], scale["kind"]) == ("autoscaling", "v1", "Scale")
    assert {"apps", "autoscaling", "coordination.k8s.io", "apiextensions.k8s.io", "events.k8s.io"} <= {
        group["name"] for group in groups["groups"]
    }


# ------------------------------------------------------------------------------------------ kubectl


def test_kubectl_apply_get_scale_annotate_and_delete(emulator: KubernetesEmulator, tmp_path: Path) -> None:
    manifest = tmp_path / "web.yaml"
    manifest.write_text(DEPLOYMENT_YAML)
    created = emulator.kubectl("apply", "--validate=false", "-f", str(manifest))
    manifest.write_text(DEPLOYMENT_YAML.replace('value: "5"', 'value: "7"'))
    configured = emulator.kubectl("apply", "--validate=false", "-f", str(manifest))
    emulator.kubectl("scale", "deployment", "web", "--replicas=4")
    emulator.kubectl("annotate", "deployment", "web", "poolbudget.io/budget=main")
    annotated = json.loads(emulator.kubectl("get", "deploy", "web", "-o", "json").stdout)
    emulator.kubectl("annotate", "deployment", "web", "poolbudget.io/budget-")
    unannotated = json.loads(emulator.kubectl("get", "deploy", "web", "-o", "json").stdout)
    table = emulator.kubectl("get", "deploy").stdout
    deleted = emulator.kubectl("delete", "deployment", "web")

    assert "created" in created.stdout
    assert "configured" in configured.stdout
    containers = annotated["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["app", "sidecar"]
    assert containers[0]["env"] == [{"name": "DB_POOL_SIZE", "value": "7"}]
    assert annotated["spec"]["replicas"] == 4
    assert annotated["metadata"]["annotations"]["poolbudget.io/budget"] == "main"
    assert "poolbudget.io/budget" not in unannotated["metadata"].get("annotations", {})
    assert table.split()[:5] == ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"]
    assert '"web" deleted' in deleted.stdout
    assert emulator.get("apps/v1", "deployments", "web", "default") is None
    kinds = [(w.verb, w.subresource, w.content_type) for w in emulator.writes(plural="deployments")]
    assert ("patch", None, "application/strategic-merge-patch+json") in kinds
    assert ("patch", "scale", "application/merge-patch+json") in kinds


def test_crd_applied_with_kubectl_is_served_with_its_printer_columns(
    emulator: KubernetesEmulator, tmp_path: Path
) -> None:
    (tmp_path / "crd.yaml").write_text(CRD_YAML)
    (tmp_path / "pb.yaml").write_text(
        "apiVersion: poolbudget.io/v1alpha1\nkind: PoolBudget\n"
        "metadata: {name: main}\nspec: {maxConnections: 100, unknown: 1}\n"
    )
    (tmp_path / "bad.yaml").write_text(
        "apiVersion: poolbudget.io/v1alpha1\nkind: PoolBudget\n"
        "metadata: {name: bad}\nspec: {maxConnections: many}\n"
    )

    emulator.kubectl("apply", "--validate=false", "-f", str(tmp_path / "crd.yaml"))
    emulator.kubectl("apply", "--validate=false", "-f", str(tmp_path / "pb.yaml"))
    emulator.patch(
        "poolbudget.io/v1alpha1",
        "poolbudgets",
        "main",
        {"status": {"available": 97, "conditions": [{"type": "Ready", "status": "True"}]}},
        subresource="status",
    )
    table = emulator.kubectl("get", "pb").stdout.splitlines()
    stored = json.loads(emulator.kubectl("get", "poolbudget", "main", "-o", "json").stdout)
    refused = emulator.kubectl("apply", "--validate=false", "-f", str(tmp_path / "bad.yaml"), check=False)
    resources = emulator.kubectl("api-resources", "--api-group=poolbudget.io").stdout

    assert table[0].split() == ["NAME", "MAX", "AVAILABLE", "READY", "AGE"]
    assert table[1].split()[:4] == ["main", "100", "97", "True"]
    assert stored["spec"] == {"maxConnections": 100, "reserved": 0}  # Pruned and defaulted by the schema.
    assert refused.returncode != 0
    assert "spec.maxConnections" in refused.stderr
    assert "pb" in resources
    assert "PoolBudget" in resources


# ------------------------------------------------------------------------------------------ kopf

OPERATOR = textwrap.dedent("""\
    import kopf

    @kopf.on.login()
    def login(**kwargs):
        # The kubernetes package reads KUBECONFIG when imported, often before the test sets it.
        return kopf.login_with_kubeconfig(**kwargs)

    @kopf.on.create("poolbudget.io", "v1alpha1", "poolbudgets")
    @kopf.on.update("poolbudget.io", "v1alpha1", "poolbudgets")
    def reconcile(spec, patch, **_):
        patch.status["available"] = spec["maxConnections"] - 3

    @kopf.on.delete("poolbudget.io", "v1alpha1", "poolbudgets")
    def release(**_):
        pass
    """)


def test_kopf_operator_reacts_to_objects_and_survives_410(
    emulator: KubernetesEmulator, tmp_path: Path
) -> None:
    emulator.register_crd(CRD_YAML)
    operator = tmp_path / "operator.py"
    operator.write_text(OPERATOR)
    custom: Any = kubernetes.client.CustomObjectsApi(emulator.api_client())
    group = ("poolbudget.io", "v1alpha1", "poolbudgets")

    def status_available() -> Any:
        obj = emulator.get("poolbudget.io/v1alpha1", "poolbudgets", "main")
        return obj and (obj.get("status") or {}).get("available")

    with KopfRunner(
        ["run", "--standalone", "-A", str(operator)],
        env={"KUBECONFIG": str(emulator.kubeconfig_path)},
        timeout=30,
    ) as runner:
        wait_until(lambda: emulator.store.open_watches >= 2, timeout=10, message="kopf's watches")
        custom.create_cluster_custom_object(
            *group,
            {
                "apiVersion": "poolbudget.io/v1alpha1",
                "kind": "PoolBudget",
                "metadata": {"name": "main"},
                "spec": {"maxConnections": 100},
            },
        )
        wait_until(lambda: status_available() == 97, timeout=5, message="kopf to write the status")

        emulator.expire_watches()
        wait_until(
            lambda: emulator.store.open_watches >= 2, timeout=10, message="kopf to re-list and re-watch"
        )
        custom.patch_cluster_custom_object(*group, "main", {"spec": {"maxConnections": 50}})
        wait_until(
            lambda: status_available() == 47, timeout=5, message="kopf to handle the update after a 410"
        )

        custom.delete_cluster_custom_object(*group, "main")
        wait_until(
            lambda: emulator.get("poolbudget.io/v1alpha1", "poolbudgets", "main") is None,
            timeout=5,
            message="kopf to release its finalizer",
        )

    assert runner.exit_code == 0, runner.output
    kopf_writes = emulator.writes(actor="kopf", plural="poolbudgets")
    assert any(w.subresource == "status" for w in kopf_writes)
    assert any(
        w.content_type == "application/json-patch+json" and w.body[0]["op"] == "test" for w in kopf_writes
    )
    assert kopf_writes[-1].event == "DELETED"  # Removing the last finalizer removed the object.


# ------------------------------------------------------------------------------------------ pods


def terminating_pods(emulator: KubernetesEmulator) -> list[str]:
    pods = emulator.list_objects("v1", "pods", "default")
    return [pod["metadata"]["name"] for pod in pods if pod["metadata"].get("deletionTimestamp")]


def test_pod_simulator_rolls_with_surge_and_shows_terminating_pods(emulator: KubernetesEmulator) -> None:
    clock = ManualClock()
    simulator = emulator.pod_simulator(start_delay=1.0, termination_delay=2.0, clock=clock)
    strategy = {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    emulator.create(deployment(replicas=3, strategy=strategy, env="1"))
    simulator.settle()
    clock.advance(1.0)
    simulator.settle()
    ready = emulator.get("apps/v1", "deployments", "web", "default")
    start = emulator.mark()

    new_template = deployment(env="2")["spec"]["template"]
    emulator.patch("apps/v1", "deployments", "web", {"spec": {"template": new_template}}, "default")
    simulator.settle()
    surged_before_ready = terminating_pods(emulator)
    clock.advance(1.0)  # The surge pod is ready: one old pod goes.
    simulator.settle()
    first_terminating = terminating_pods(emulator)
    clock.advance(1.0)  # Still within the 2 s termination delay.
    simulator.settle()
    still_terminating = terminating_pods(emulator)
    clock.advance(1.0)
    simulator.settle()
    after_delay = terminating_pods(emulator)
    for _ in range(20):
        clock.advance(1.0)
        simulator.settle()
    done = emulator.get("apps/v1", "deployments", "web", "default")
    pods = emulator.list_objects("v1", "pods", "default")
    new_hash = template_hash(done["spec"]["template"]) if done else ""

    assert ready is not None
    assert (ready["status"]["readyReplicas"], ready["status"]["observedGeneration"]) == (3, 1)
    assert surged_before_ready == []  # maxUnavailable=0: nothing goes before the new pod is ready.
    assert len(first_terminating) == 1
    assert first_terminating[0] in still_terminating
    assert first_terminating[0] not in after_delay
    assert done is not None
    assert done["status"]["observedGeneration"] == 2
    assert (done["status"]["updatedReplicas"], done["status"]["availableReplicas"]) == (3, 3)
    assert sorted(p["metadata"]["labels"]["pod-template-hash"] for p in pods) == [new_hash] * 3
    assert all(p["metadata"]["name"].startswith(f"web-{new_hash}-") for p in pods)
    assert all(p["spec"]["containers"][0]["env"] == [{"name": "POOL", "value": "2"}] for p in pods)
    assert all(p["metadata"]["annotations"] == {"revision": "2"} for p in pods)
    most_active = most_present = 0
    for record, state in emulator.replay():
        if record.seq > start:
            pods_now = [obj for (_, plural, _, _), obj in state.items() if plural == "pods"]
            active = [pod for pod in pods_now if not pod["metadata"].get("deletionTimestamp")]
            most_active, most_present = max(most_active, len(active)), max(most_present, len(pods_now))
    assert most_active == 4  # replicas + maxSurge, never more ...
    assert most_present > 4  # ... but terminating pods linger on top of the surge, as on a real cluster.


def test_pod_simulator_recreate_starts_new_pods_only_after_old_ones_are_gone(
    emulator: KubernetesEmulator,
) -> None:
    clock = ManualClock()
    simulator = emulator.pod_simulator(termination_delay=2.0, clock=clock)
    emulator.create(deployment(replicas=2, strategy={"type": "Recreate"}, env="1"))
    simulator.settle()
    start = emulator.mark()

    emulator.patch(
        "apps/v1",
        "deployments",
        "web",
        {"spec": {"template": deployment(env="2")["spec"]["template"]}},
        "default",
    )
    simulator.settle()
    while_terminating = emulator.list_objects("v1", "pods", "default")
    clock.advance(2.0)
    simulator.settle()
    after = emulator.list_objects("v1", "pods", "default")

    assert [bool(p["metadata"].get("deletionTimestamp")) for p in while_terminating] == [True, True]
    assert len(after) == 2
    assert all(p["spec"]["containers"][0]["env"][0]["value"] == "2" for p in after)
    creations = [w.seq for w in emulator.writes(since=start, plural="pods") if w.event == "ADDED"]
    removals = [w.seq for w in emulator.writes(since=start, plural="pods") if w.event == "DELETED"]
    assert min(creations) > max(removals)


def test_pod_simulator_in_the_background_follows_kubectl_scale(emulator: KubernetesEmulator) -> None:
    simulator = emulator.pod_simulator(termination_delay=1.5).start(period=0.02)
    emulator.create(deployment(replicas=1))
    wait_until(
        lambda: (
            (emulator.get("apps/v1", "deployments", "web", "default") or {})
            .get("status", {})
            .get("readyReplicas")
            == 1
        ),
        message="the first pod to be ready",
    )

    emulator.kubectl("scale", "deployment", "web", "--replicas=3")
    wait_until(lambda: len(emulator.list_objects("v1", "pods", "default")) == 3, message="three pods")
    emulator.kubectl("scale", "deployment", "web", "--replicas=1")

    def terminating_table() -> str | None:
        table = emulator.kubectl("get", "pods").stdout
        return table if "Terminating" in table else None

    table = wait_until(terminating_table, message="kubectl to show Terminating pods")
    wait_until(
        lambda: len(emulator.list_objects("v1", "pods", "default")) == 1, message="terminated pods to go"
    )
    simulator.stop()

    assert "Terminating" in table
