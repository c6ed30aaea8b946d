"""Env patches: write only the owned entries, keep what was overwritten, and give the pod template back exactly.

Pure: the patches are applied with the emulator's strategic-merge implementation (what the API server does with
them), no cluster involved.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from poolbudget.api.annotations import MANAGED_BY, ORIGINAL_ENV, ROLLED_AT, STAMP_BUDGET, STAMP_CONNECTIONS
from poolbudget.delivery.envpatch import (
    apply_patch,
    read_record,
    restore_patch,
    with_application_name,
)
from poolbudget.observe.objects import managed_by
from tests.emulator.patching import strategic_merge_patch

NOW = "2026-01-01T00:00:00Z"


def deployment(env: list[dict[str, Any]] | None, **template_annotations: str) -> dict[str, Any]:
    container: dict[str, Any] = {"name": "app", "image": "example/app:1"}
    if env is not None:
        container["env"] = env
    template_metadata: dict[str, Any] = {"labels": {"app": "web"}}
    if template_annotations:
        template_metadata["annotations"] = dict(template_annotations)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": "web",
            "namespace": "shop",
            "resourceVersion": "7",
            "annotations": {"team": "a"},
        },
        "spec": {
            "replicas": 2,
            "template": {
                "metadata": template_metadata,
                "spec": {"containers": [container, {"name": "sidecar", "image": "example/proxy:1"}]},
            },
        },
    }


def patched(obj: dict[str, Any], patch: dict[str, Any] | None) -> dict[str, Any]:
    assert patch is not None
    result = strategic_merge_patch(obj, {k: v for k, v in patch.items() if k != "metadata"})
    metadata = {k: v for k, v in (patch.get("metadata") or {}).items() if k != "resourceVersion"}
    merged = strategic_merge_patch({"metadata": result["metadata"]}, {"metadata": metadata})
    result["metadata"] = merged.get("metadata", {})
    return result


def env_of(obj: dict[str, Any], container: str = "app") -> list[dict[str, Any]]:
    for c in obj["spec"]["template"]["spec"]["containers"]:
        if c["name"] == container:
            return list(c.get("env") or [])
    raise AssertionError(container)


def as_bytes(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, sort_keys=True).encode()


USER_ENV = [
    {"name": "WEB_CONCURRENCY", "value": "2"},
    {"name": "DB_POOL_SIZE", "value": "20"},
    {"name": "DATABASE_URL", "valueFrom": {"secretKeyRef": {"name": "db", "key": "url"}}},
    {"name": "DB_POOL_TIMEOUT", "valueFrom": {"configMapKeyRef": {"name": "tuning", "key": "timeout"}}},
]
DESIRED = {"app": {"DB_POOL_SIZE": "6", "DB_MAX_OVERFLOW": "3", "DB_POOL_TIMEOUT": "30"}}


def test_apply_writes_only_owned_entries_in_place_and_records_what_they_replaced() -> None:
    before = deployment(copy.deepcopy(USER_ENV))
    after = patched(before, apply_patch(before, "main", DESIRED, 18, NOW))
    assert env_of(after) == [
        {"name": "WEB_CONCURRENCY", "value": "2"},
        {"name": "DB_POOL_SIZE", "value": "6"},
        {"name": "DATABASE_URL", "valueFrom": {"secretKeyRef": {"name": "db", "key": "url"}}},
        {"name": "DB_POOL_TIMEOUT", "value": "30"},  # valueFrom replaced, not left beside the value
        {"name": "DB_MAX_OVERFLOW", "value": "3"},
    ]
    assert env_of(after, "sidecar") == []
    annotations = after["metadata"]["annotations"]
    assert annotations["team"] == "a"
    assert annotations[MANAGED_BY] == "main"
    assert annotations[ROLLED_AT] == NOW
    record = read_record(annotations)
    assert record["app"].entries["DB_POOL_SIZE"].original == {"name": "DB_POOL_SIZE", "value": "20"}
    assert record["app"].entries["DB_MAX_OVERFLOW"].original is None
    assert after["spec"]["template"]["metadata"]["annotations"] == {
        STAMP_CONNECTIONS: "18",
        STAMP_BUDGET: "main",
    }


def test_apply_is_idempotent_and_a_patch_carries_the_resource_version() -> None:
    before = deployment(copy.deepcopy(USER_ENV))
    patch = apply_patch(before, "main", DESIRED, 18, NOW)
    assert patch is not None
    assert patch["metadata"]["resourceVersion"] == "7"
    after = patched(before, patch)
    assert apply_patch(after, "main", DESIRED, 18, "2026-01-01T00:05:00Z") is None


def test_restore_gives_the_pod_template_back_byte_for_byte() -> None:
    for env in (copy.deepcopy(USER_ENV), [], None, [{"name": "OTHER", "value": ""}]):
        before = deployment(env)
        managed = patched(before, apply_patch(before, "main", DESIRED, 18, NOW))
        resized = patched(
            managed, apply_patch(managed, "main", {"app": {**DESIRED["app"], "DB_POOL_SIZE": "4"}}, 14, NOW)
        )
        restored = patched(resized, restore_patch(resized))
        assert as_bytes(restored["spec"]["template"]) == as_bytes(before["spec"]["template"]), env
        assert restored["metadata"]["annotations"] == {"team": "a"}
        assert restore_patch(restored) is None


def test_restore_removes_a_template_annotations_map_it_created_but_keeps_the_users() -> None:
    before = deployment([], owner="team-a")
    managed = patched(before, apply_patch(before, "main", DESIRED, 18, NOW))
    restored = patched(managed, restore_patch(managed))
    assert restored["spec"]["template"]["metadata"]["annotations"] == {"owner": "team-a"}


def test_a_value_the_user_changed_after_poolbudget_wrote_it_is_the_one_restored() -> None:
    before = deployment(copy.deepcopy(USER_ENV))
    managed = patched(before, apply_patch(before, "main", DESIRED, 18, NOW))
    # kubectl apply (or an edit) sets the user's new value over ours
    edited = strategic_merge_patch(
        managed,
        {
            "spec": {
                "template": {
                    "spec": {
                        "containers": [{"name": "app", "env": [{"name": "DB_POOL_SIZE", "value": "25"}]}]
                    }
                }
            }
        },
    )
    again = patched(edited, apply_patch(edited, "main", DESIRED, 18, NOW))
    assert {e["name"]: e.get("value") for e in env_of(again)}["DB_POOL_SIZE"] == "6"
    restored = patched(again, restore_patch(again))
    assert {e["name"]: e.get("value") for e in env_of(restored)}["DB_POOL_SIZE"] == "25"


def test_entries_no_longer_written_are_given_back_at_once() -> None:
    before = deployment(copy.deepcopy(USER_ENV))
    managed = patched(before, apply_patch(before, "main", DESIRED, 18, NOW))
    fewer = {"app": {"DB_POOL_SIZE": "6", "DB_MAX_OVERFLOW": "3"}}  # e.g. another profile
    after = patched(managed, apply_patch(managed, "main", fewer, 18, NOW))
    timeout = next(e for e in env_of(after) if e["name"] == "DB_POOL_TIMEOUT")
    assert timeout == USER_ENV[3]
    assert "DB_POOL_TIMEOUT" not in read_record(after["metadata"]["annotations"])["app"].entries


def test_application_name_is_added_unless_the_user_set_one() -> None:
    plain = deployment([])
    assert with_application_name(DESIRED, plain, "shop/web")["app"]["PGAPPNAME"] == "shop/web"
    users = deployment([{"name": "PGAPPNAME", "value": "checkout"}])
    assert "PGAPPNAME" not in with_application_name(DESIRED, users, "shop/web")["app"]
    managed = patched(
        plain, apply_patch(plain, "main", with_application_name(DESIRED, plain, "shop/web"), 18, NOW)
    )
    assert with_application_name(DESIRED, managed, "shop/web")["app"]["PGAPPNAME"] == "shop/web"  # still ours


def test_untouched_deployments_have_nothing_to_restore() -> None:
    assert restore_patch(deployment(copy.deepcopy(USER_ENV))) is None
    assert managed_by(deployment([])) is None


def test_an_unreadable_record_is_treated_as_none() -> None:
    assert read_record({ORIGINAL_ENV: "{not json"}) == {}
    assert read_record({ORIGINAL_ENV: "[1, 2]"}) == {}


LIVE_ENV: dict[str, dict[str, Any]] = {
    "app": {
        "DB_POOL_SIZE": "1",
        "DB_MAX_OVERFLOW": "0",
        "POOLBUDGET_ALLOTMENT_FILE": "/var/run/poolbudget/allotment",
        "POD_UID": {"valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.uid"}}},
    }
}


def test_live_adds_the_volume_mount_and_field_refs_and_restore_takes_all_of_it_back() -> None:
    original = deployment(
        [{"name": "DB_POOL_SIZE", "value": "20"}, {"name": "POD_UID", "value": "set-by-hand"}]
    )
    original["spec"]["template"]["spec"]["volumes"] = [{"name": "data", "emptyDir": {}}]
    live = patched(original, apply_patch(original, "main", LIVE_ENV, 2, NOW, live=True))
    pod = live["spec"]["template"]["spec"]
    app = pod["containers"][0]
    assert [v["name"] for v in pod["volumes"]] == ["data", "poolbudget-allotment"]
    assert app["volumeMounts"] == [
        {"name": "poolbudget-allotment", "mountPath": "/var/run/poolbudget", "readOnly": True}
    ]
    assert "volumeMounts" not in pod["containers"][1]  # only the named containers
    env = {e["name"]: e for e in app["env"]}
    assert env["POD_UID"] == {"name": "POD_UID", **LIVE_ENV["app"]["POD_UID"]}  # a valueFrom over a value
    assert live["spec"]["template"]["metadata"]["annotations"]["poolbudget.io/delivery"] == "live"
    assert apply_patch(live, "main", LIVE_ENV, 2, NOW, live=True) is None  # idempotent

    restored = patched(live, restore_patch(live))
    assert restored["spec"]["template"] == original["spec"]["template"]

    # Back to env delivery: the live parts go, the env stays poolbudget's.
    env_only = {"app": {"DB_POOL_SIZE": "4", "DB_MAX_OVERFLOW": "2"}}
    back = patched(live, apply_patch(live, "main", env_only, 12, NOW))
    spec = back["spec"]["template"]["spec"]
    assert [v["name"] for v in spec["volumes"]] == ["data"]
    assert "volumeMounts" not in spec["containers"][0] or spec["containers"][0]["volumeMounts"] == []
    names = {e["name"]: e.get("value") for e in spec["containers"][0]["env"]}
    assert names == {"DB_POOL_SIZE": "4", "POD_UID": "set-by-hand", "DB_MAX_OVERFLOW": "2"}
    assert "poolbudget.io/delivery" not in back["spec"]["template"]["metadata"]["annotations"]
