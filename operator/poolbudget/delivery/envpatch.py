"""Delivery by env, as patches: the strategic-merge patches that write a plan into a Deployment and take it back.

Pure: every function takes the Deployment as the API returned it (a plain dict) and returns a patch (or None when
nothing would change). The operator owns only the env entries it writes, in the named containers; everything it
overwrote is recorded in an annotation on the Deployment, so that :func:`restore_patch` gives the pod template back
exactly as it was (same entries, same order, same values) and removes every trace of poolbudget.

Patches are keyed by container name and env name (Kubernetes' merge keys), so a container list is never replaced.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from poolbudget.api.workloads import ANNOTATION_PREFIX

# On the Deployment (metadata): which budget manages it, what it overwrote, and when it last rolled it.
MANAGED_BY = ANNOTATION_PREFIX + "managed-by"
ORIGINAL_ENV = ANNOTATION_PREFIX + "original-env"
ROLLED_AT = ANNOTATION_PREFIX + "rolled-at"
# On the pod template, hence on every pod: the allotment the pod starts with, and from which budget.
STAMP_CONNECTIONS = ANNOTATION_PREFIX + "connections-per-pod"
STAMP_BUDGET = ANNOTATION_PREFIX + "budget"

DEPLOYMENT_ANNOTATIONS = (MANAGED_BY, ORIGINAL_ENV, ROLLED_AT)
TEMPLATE_ANNOTATIONS = (STAMP_CONNECTIONS, STAMP_BUDGET)

# libpq reads it as application_name: pg_stat_activity then says which Deployment holds which connection.
APPLICATION_NAME_ENV = "PGAPPNAME"

Obj = dict[str, Any]


@dataclass(frozen=True, slots=True)
class OwnedEntry:
    """One env entry poolbudget owns: what was there before it (None: nothing) and the value it wrote."""

    original: Obj | None
    written: str
    position: int | None = None  # where the original stood in the container's env, for the record


@dataclass(frozen=True, slots=True)
class ContainerRecord:
    """What poolbudget owns in one container, and whether the container had an env list before it came."""

    entries: dict[str, OwnedEntry]
    had_env: bool = True


Record = dict[str, ContainerRecord]  # by container name


def read_record(annotations: Mapping[str, str]) -> Record:
    """The ``poolbudget.io/original-env`` record; empty when absent or unreadable."""
    raw = annotations.get(ORIGINAL_ENV)
    if not raw:
        return {}
    try:
        parsed = json.loads(raw)
    except ValueError:
        return {}
    if not isinstance(parsed, dict):
        return {}
    record: Record = {}
    for container, stored in parsed.items():
        if not isinstance(stored, dict) or not isinstance(stored.get("env"), dict):
            continue
        owned: dict[str, OwnedEntry] = {}
        for name, entry in stored["env"].items():
            if isinstance(entry, dict) and isinstance(entry.get("written"), str):
                original = entry.get("original")
                position = entry.get("position")
                owned[name] = OwnedEntry(
                    original if isinstance(original, dict) else None,
                    entry["written"],
                    position if isinstance(position, int) else None,
                )
        record[str(container)] = ContainerRecord(owned, stored.get("hadEnv") is not False)
    return record


def dump_record(record: Record) -> str:
    """The record as the annotation stores it: compact, sorted, so equal records are equal strings."""
    return json.dumps(
        {
            container: {
                "env": {
                    name: {"original": entry.original, "written": entry.written, "position": entry.position}
                    for name, entry in stored.entries.items()
                },
                "hadEnv": stored.had_env,
            }
            for container, stored in record.items()
            if stored.entries
        },
        sort_keys=True,
        separators=(",", ":"),
    )


def _annotations(obj: Mapping[str, Any]) -> Mapping[str, str]:
    return (obj.get("metadata") or {}).get("annotations") or {}


def _template(deployment: Mapping[str, Any]) -> Mapping[str, Any]:
    return (deployment.get("spec") or {}).get("template") or {}


def _containers(deployment: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    containers = (_template(deployment).get("spec") or {}).get("containers") or []
    return {c.get("name", ""): c for c in containers if isinstance(c, dict)}


def _env_entry(container: Mapping[str, Any], name: str) -> tuple[int, Obj] | None:
    for index, entry in enumerate(container.get("env") or []):
        if isinstance(entry, dict) and entry.get("name") == name:
            return index, entry
    return None


def _ours(entry: Obj | None, owned: OwnedEntry) -> bool:
    """Whether an env entry still holds what poolbudget wrote (not changed by someone since)."""
    return entry is not None and "valueFrom" not in entry and entry.get("value", "") == owned.written


def managed_by(deployment: Mapping[str, Any]) -> str | None:
    """The budget whose settings the Deployment carries, or None."""
    return _annotations(deployment).get(MANAGED_BY) or None


def with_application_name(
    desired: Mapping[str, Mapping[str, str]], deployment: Mapping[str, Any], application_name: str
) -> dict[str, dict[str, str]]:
    """``desired`` plus ``PGAPPNAME`` in each container where the user has not set it (or where it is ours)."""
    record = read_record(_annotations(deployment))
    containers = _containers(deployment)
    out: dict[str, dict[str, str]] = {}
    for name, entries in desired.items():
        out[name] = dict(entries)
        if APPLICATION_NAME_ENV in entries:
            continue
        found = _env_entry(containers.get(name, {}), APPLICATION_NAME_ENV)
        stored = record.get(name)
        owned = stored.entries.get(APPLICATION_NAME_ENV) if stored is not None else None
        if found is None or (owned is not None and _ours(found[1], owned)):
            out[name][APPLICATION_NAME_ENV] = application_name
    return out


def _restore_entry(name: str, current: Obj | None, owned: OwnedEntry) -> Obj | None:
    """The env patch item that puts back what was there before poolbudget; None when nothing to do."""
    if current is None or not _ours(current, owned):
        return None  # someone changed or removed it since: their choice is the truth now
    if owned.original is None:
        return {"name": name, "$patch": "delete"}
    item: Obj = copy.deepcopy(owned.original)
    for key in current or {}:
        if key not in item:
            item[key] = None  # e.g. the original had valueFrom, poolbudget wrote value
    return item if item != current else None


def _empty_after(container: Mapping[str, Any], items: list[Obj], had_env: bool) -> bool:
    """Whether the patch leaves no env entry in a container that had no env list before poolbudget."""
    if had_env:
        return False
    deleted = {item["name"] for item in items if item.get("$patch") == "delete"}
    remaining = [
        e for e in container.get("env") or [] if not (isinstance(e, dict) and e.get("name") in deleted)
    ]
    return bool(deleted) and not remaining


def apply_patch(
    deployment: Mapping[str, Any],
    budget: str,
    desired: Mapping[str, Mapping[str, str]],
    per_pod: int,
    now: str,
) -> Obj | None:
    """The patch that gives ``deployment`` the env entries ``desired`` (container -> name -> value).

    Records what each entry overwrote the first time poolbudget owns it (and again whenever someone changed the
    entry since poolbudget wrote it: their value becomes the one to restore); entries it owned but no longer
    writes (another profile, another container) are restored. Stamps the pod template with ``per_pod``
    connections and the budget. None when the Deployment already carries all of it.
    """
    containers = _containers(deployment)
    old_record = read_record(_annotations(deployment))
    record: Record = {}
    container_patches: list[Obj] = []
    for container_name in sorted(set(desired) | set(old_record)):
        container = containers.get(container_name)
        if container is None:
            continue  # gone from the template: nothing to write or restore there
        wanted = desired.get(container_name, {})
        previous_record = old_record.get(container_name)
        previous = previous_record.entries if previous_record is not None else {}
        had_env = previous_record.had_env if previous_record is not None else "env" in container
        owned: dict[str, OwnedEntry] = {}
        items: list[Obj] = []
        for env_name, value in wanted.items():
            found = _env_entry(container, env_name)
            position, current = found if found else (None, None)
            before = previous.get(env_name)
            if before is not None and (current is None or _ours(current, before)):
                original, position = before.original, before.position
            else:
                original = copy.deepcopy(current)  # first time, or changed by someone since
            owned[env_name] = OwnedEntry(original, value, position)
            if not _ours(current, owned[env_name]):
                item: Obj = {"name": env_name, "value": value}
                if current is not None and "valueFrom" in current:
                    item["valueFrom"] = None  # a value and a valueFrom together are invalid
                items.append(item)
        for env_name, before in previous.items():
            if env_name not in wanted:
                found = _env_entry(container, env_name)
                restored = _restore_entry(env_name, found[1] if found else None, before)
                if restored is not None:
                    items.append(restored)
        if owned:
            record[container_name] = ContainerRecord(owned, had_env)
        if items:
            patch: Obj = {"name": container_name, "env": items}
            if _empty_after(container, items, had_env):
                patch["env"] = None  # an empty list would stay behind where the original had no env at all
            container_patches.append(patch)

    template_annotations = _annotations(_template(deployment))
    stamps = {STAMP_CONNECTIONS: str(per_pod), STAMP_BUDGET: budget}
    stamp_patch = {k: v for k, v in stamps.items() if template_annotations.get(k) != v}
    annotations = _annotations(deployment)
    meta_patch: Obj = {}
    if annotations.get(MANAGED_BY) != budget:
        meta_patch[MANAGED_BY] = budget
    dumped = dump_record(record)
    if annotations.get(ORIGINAL_ENV) != dumped:
        meta_patch[ORIGINAL_ENV] = dumped
    if not (container_patches or stamp_patch or meta_patch):
        return None
    template_patch: Obj = {}
    if container_patches or stamp_patch:
        meta_patch[ROLLED_AT] = now  # the template changes: every pod restarts
    if stamp_patch:
        template_patch["metadata"] = {"annotations": stamp_patch}
    if container_patches:
        template_patch["spec"] = {"containers": container_patches}
    return _deployment_patch(deployment, meta_patch, template_patch)


def restore_patch(deployment: Mapping[str, Any]) -> Obj | None:
    """The patch that takes back everything poolbudget wrote into ``deployment``; None when there is nothing.

    Entries it added are deleted, entries it overwrote get their original back (in place, so the order is the
    original one), entries someone changed since are left alone; the stamps and poolbudget's annotations go.
    """
    annotations = _annotations(deployment)
    template_annotations = _annotations(_template(deployment))
    if not any(k in annotations for k in DEPLOYMENT_ANNOTATIONS) and not any(
        k in template_annotations for k in TEMPLATE_ANNOTATIONS
    ):
        return None
    containers = _containers(deployment)
    container_patches: list[Obj] = []
    for container_name, stored in sorted(read_record(annotations).items()):
        container = containers.get(container_name)
        if container is None:
            continue
        items: list[Obj] = []
        for env_name, entry in stored.entries.items():
            found = _env_entry(container, env_name)
            restored = _restore_entry(env_name, found[1] if found else None, entry)
            if restored is not None:
                items.append(restored)
        if items:
            patch: Obj = {"name": container_name, "env": items}
            if _empty_after(container, items, stored.had_env):
                patch["env"] = None  # an empty list would stay behind where the original had no env at all
            container_patches.append(patch)
    template_patch: Obj = {}
    ours = [k for k in TEMPLATE_ANNOTATIONS if k in template_annotations]
    if ours:
        # An emptied map would stay behind as `annotations: {}` where the original had none.
        emptied = set(template_annotations) <= set(ours)
        template_patch["metadata"] = {"annotations": None if emptied else dict.fromkeys(ours)}
    if container_patches:
        template_patch["spec"] = {"containers": container_patches}
    meta_patch: Obj = {k: None for k in DEPLOYMENT_ANNOTATIONS if k in annotations}
    return _deployment_patch(deployment, meta_patch, template_patch, drop_empty=True)


def _deployment_patch(
    deployment: Mapping[str, Any], annotations: Obj, template: Obj, drop_empty: bool = False
) -> Obj:
    metadata: Obj = {}
    version = (deployment.get("metadata") or {}).get("resourceVersion")
    if version:
        metadata["resourceVersion"] = version  # optimistic concurrency: a stale read is a 409, not a clobber
    if annotations:
        current = _annotations(deployment)
        removed = {k for k, v in annotations.items() if v is None}
        emptied = drop_empty and set(current) <= removed
        metadata["annotations"] = None if emptied else annotations
    patch: Obj = {"metadata": metadata}
    if template:
        patch["spec"] = {"template": _in_place(deployment, template)}
    return patch


def _in_place(deployment: Mapping[str, Any], template: Obj) -> Obj:
    """The template patch with ``$setElementOrder`` for the lists it touches: a real API server puts patched
    items of a merge-keyed list in the patch's order, so without it a restore would reorder env or containers.
    Kept: the current order, minus the entries this patch deletes, plus new ones at the end."""
    spec = template.get("spec") or {}
    if "containers" not in spec:
        return template
    current = _containers(deployment)
    patched = []
    for container_patch in spec["containers"]:
        env = container_patch.get("env")
        if env is not None:
            deleted = {item["name"] for item in env if item.get("$patch") == "delete"}
            before = [
                e["name"]
                for e in current.get(container_patch["name"], {}).get("env") or []
                if isinstance(e, dict)
            ]
            added = [
                item["name"] for item in env if item["name"] not in before and item["name"] not in deleted
            ]
            order = [name for name in before if name not in deleted] + added
            # The server also wants the patch's own items in that order (deletions last).
            rank = {name: i for i, name in enumerate(order)}
            items = sorted(env, key=lambda item: rank.get(item["name"], len(rank)))
            container_patch = {
                **container_patch,
                "env": items,
                "$setElementOrder/env": [{"name": n} for n in order],
            }
        patched.append(container_patch)
    containers_order = [{"name": name} for name in current]
    return {
        **template,
        "spec": {**spec, "$setElementOrder/containers": containers_order, "containers": patched},
    }
