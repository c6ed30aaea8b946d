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

from poolbudget.api.annotations import (
    ALLOTMENT,
    ALLOTMENT_ITEM,
    ALLOTMENT_MOUNT_PATH,
    ALLOTMENT_VOLUME,
    APPLICATION_NAME_ENV,
    DEPLOYMENT_ANNOTATIONS,
    MANAGED_BY,
    ORIGINAL_ENV,
    ROLLED_AT,
    STAMP_BUDGET,
    STAMP_CONNECTIONS,
    STAMP_DELIVERY,
    TEMPLATE_ANNOTATIONS,
)
from poolbudget.api.objects import Obj
from poolbudget.observe.objects import (
    annotations_of,
    env_entry,
    metadata_of,
    spec_of,
    template_containers,
    template_of,
)

Patch = dict[str, Any]  # a strategic-merge patch, or a piece of one


@dataclass(frozen=True, slots=True)
class OwnedEntry:
    """One env entry poolbudget owns: what was there before it (None: nothing) and the value it wrote."""

    original: Patch | None
    written: str | Patch  # a literal value, or {"valueFrom": ...}
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
            if isinstance(entry, dict) and isinstance(entry.get("written"), str | dict):
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


def _ours(entry: Patch | None, owned: OwnedEntry) -> bool:
    """Whether an env entry still holds what poolbudget wrote (not changed by someone since)."""
    if entry is None:
        return False
    if isinstance(owned.written, dict):
        return "value" not in entry and entry.get("valueFrom") == owned.written.get("valueFrom")
    return "valueFrom" not in entry and entry.get("value", "") == owned.written


def _written_item(name: str, value: str | Patch, current: Patch | None) -> Patch:
    """The env patch item that writes ``value`` over ``current``."""
    if isinstance(value, dict):
        item: Patch = {"name": name, **copy.deepcopy(value)}
        if current is not None and "value" in current:
            item["value"] = None
        return item
    item = {"name": name, "value": value}
    if current is not None and "valueFrom" in current:
        item["valueFrom"] = None  # a value and a valueFrom together are invalid
    return item


Desired = Mapping[
    str, Mapping[str, "str | Patch"]
]  # container -> env name -> literal value or {"valueFrom": ...}


def with_application_name(
    desired: Desired, deployment: Obj, application_name: str
) -> dict[str, dict[str, str | Patch]]:
    """``desired`` plus ``PGAPPNAME`` in each container where the user has not set it (or where it is ours)."""
    return unless_set(desired, deployment, {APPLICATION_NAME_ENV: application_name})


def unless_set(
    desired: Desired, deployment: Obj, defaults: Mapping[str, str | Patch]
) -> dict[str, dict[str, str | Patch]]:
    """``desired`` plus each of ``defaults`` in each container where the user has not set it (or where the
    entry there is the one poolbudget wrote)."""
    record = read_record(annotations_of(deployment))
    containers = template_containers(deployment)
    out: dict[str, dict[str, str | Patch]] = {}
    for name, entries in desired.items():
        out[name] = dict(entries)
        stored = record.get(name)
        for env_name, value in defaults.items():
            if env_name in entries:
                continue
            found = env_entry(containers.get(name, {}), env_name)
            owned = stored.entries.get(env_name) if stored is not None else None
            if found is None or (owned is not None and _ours(found[1], owned)):
                out[name][env_name] = value
    return out


def _restore_entry(name: str, current: Patch | None, owned: OwnedEntry) -> Patch | None:
    """The env patch item that puts back what was there before poolbudget; None when nothing to do."""
    if current is None or not _ours(current, owned):
        return None  # someone changed or removed it since: their choice is the truth now
    if owned.original is None:
        return {"name": name, "$patch": "delete"}
    item: Patch = copy.deepcopy(owned.original)
    for key in current or {}:
        if key not in item:
            item[key] = None  # e.g. the original had valueFrom, poolbudget wrote value
    return item if item != current else None


def _restore_items(container: Mapping[str, Any], entries: Mapping[str, OwnedEntry]) -> list[Patch]:
    """The env patch items that put back what these owned entries overwrote (those still as poolbudget wrote)."""
    items: list[Patch] = []
    for env_name, entry in entries.items():
        found = env_entry(container, env_name)
        restored = _restore_entry(env_name, found[1] if found else None, entry)
        if restored is not None:
            items.append(restored)
    return items


def _container_patch(
    name: str, container: Mapping[str, Any], items: list[Patch], had_env: bool
) -> Patch | None:
    """One container's entry in the patch's container list; None when its env does not change."""
    if not items:
        return None
    patch: Patch = {"name": name, "env": items}
    if _empty_after(container, items, had_env):
        patch["env"] = None  # an empty list would stay behind where the original had no env at all
    return patch


def _empty_after(container: Mapping[str, Any], items: list[Patch], had_env: bool) -> bool:
    """Whether the patch leaves no env entry in a container that had no env list before poolbudget."""
    if had_env:
        return False
    deleted = {item["name"] for item in items if item.get("$patch") == "delete"}
    remaining = [
        e for e in container.get("env") or [] if not (isinstance(e, dict) and e.get("name") in deleted)
    ]
    return bool(deleted) and not remaining


def allotment_volume() -> Patch:
    """Live delivery's downward-API volume: the pod's ``poolbudget.io/allotment`` annotation as a file. With
    the defaults the API server fills in, so that the stored volume compares equal to it."""
    field_ref = {"apiVersion": "v1", "fieldPath": f"metadata.annotations['{ALLOTMENT}']"}
    return {
        "name": ALLOTMENT_VOLUME,
        "downwardAPI": {"defaultMode": 420, "items": [{"path": ALLOTMENT_ITEM, "fieldRef": field_ref}]},
    }


def _named(items: Any, name: str) -> list[Mapping[str, Any]]:
    return [i for i in items or [] if isinstance(i, dict) and i.get("name") == name]


def _volume_patch(deployment: Obj, live: bool) -> list[Patch] | None:
    """The pod's volume list items: the allotment volume added (live) or deleted (not live, or restored); None
    when deleting it leaves no volume (the list goes, as it was before)."""
    volumes = spec_of(template_of(deployment)).get("volumes") or []
    present = _named(volumes, ALLOTMENT_VOLUME)
    wanted = allotment_volume()
    if live:
        return [] if present and dict(present[0]) == wanted else [wanted]
    if not present:
        return []
    return None if len(present) == len(volumes) else [{"name": ALLOTMENT_VOLUME, "$patch": "delete"}]


def _mount_patch(container: Mapping[str, Any], live: bool) -> list[Patch] | None:
    """A container's volumeMounts items (merge key mountPath): the allotment mount added or deleted; None when
    deleting it leaves no mount."""
    mounts = container.get("volumeMounts") or []
    present = _named(mounts, ALLOTMENT_VOLUME)
    wanted = {"name": ALLOTMENT_VOLUME, "mountPath": ALLOTMENT_MOUNT_PATH, "readOnly": True}
    if live:
        return [] if any(dict(m) == wanted for m in present) else [wanted]
    if present and len(present) == len(mounts):
        return None
    return [{"mountPath": m.get("mountPath"), "$patch": "delete"} for m in present]


def _with_mounts(
    patches: list[Patch], containers: Mapping[str, Mapping[str, Any]], live: set[str]
) -> list[Patch]:
    """The container patches, with each container's mount items (live containers get it, others lose it)."""
    by_name = {p["name"]: p for p in patches}
    for name, container in containers.items():
        mounts = _mount_patch(container, name in live)
        if mounts != []:
            by_name.setdefault(name, {"name": name})["volumeMounts"] = mounts
    return [by_name[name] for name in containers if name in by_name]


def apply_patch(
    deployment: Obj,
    budget: str,
    desired: Desired,
    per_pod: int,
    now: str,
    live: bool = False,
) -> Patch | None:
    """The patch that gives ``deployment`` the env entries ``desired`` (container -> name -> value).

    Records what each entry overwrote the first time poolbudget owns it (and again whenever someone changed the
    entry since poolbudget wrote it: their value becomes the one to restore); entries it owned but no longer
    writes (another profile, another container) are restored. Stamps the pod template with ``per_pod``
    connections and the budget. ``live``: the named containers also get the allotment volume mounted (and the
    template the live stamp); without it, they are taken out. None when the Deployment already carries all of it.
    """
    containers = template_containers(deployment)
    old_record = read_record(annotations_of(deployment))
    record: Record = {}
    container_patches: list[Patch] = []
    for container_name in sorted(set(desired) | set(old_record)):
        container = containers.get(container_name)
        if container is None:
            continue  # gone from the template: nothing to write or restore there
        wanted = desired.get(container_name, {})
        previous_record = old_record.get(container_name)
        previous = previous_record.entries if previous_record is not None else {}
        had_env = previous_record.had_env if previous_record is not None else "env" in container
        owned: dict[str, OwnedEntry] = {}
        items: list[Patch] = []
        for env_name, value in wanted.items():
            found = env_entry(container, env_name)
            position, current = found if found else (None, None)
            before = previous.get(env_name)
            if before is not None and (current is None or _ours(current, before)):
                original, position = before.original, before.position
            else:
                original = copy.deepcopy(current)  # first time, or changed by someone since
            owned[env_name] = OwnedEntry(original, value, position)
            if not _ours(current, owned[env_name]):
                items.append(_written_item(env_name, value, current))
        items += _restore_items(container, {n: e for n, e in previous.items() if n not in wanted})
        if owned:
            record[container_name] = ContainerRecord(owned, had_env)
        patch = _container_patch(container_name, container, items, had_env)
        if patch is not None:
            container_patches.append(patch)

    container_patches = _with_mounts(container_patches, containers, set(desired) if live else set())
    volumes = _volume_patch(deployment, live)
    template_annotations = annotations_of(template_of(deployment))
    stamps: dict[str, str | None] = {STAMP_CONNECTIONS: str(per_pod), STAMP_BUDGET: budget}
    stamps[STAMP_DELIVERY] = "live" if live else None
    stamp_patch = {k: v for k, v in stamps.items() if template_annotations.get(k) != v}
    annotations = annotations_of(deployment)
    meta_patch: Patch = {}
    if annotations.get(MANAGED_BY) != budget:
        meta_patch[MANAGED_BY] = budget
    dumped = dump_record(record)
    if annotations.get(ORIGINAL_ENV) != dumped:
        meta_patch[ORIGINAL_ENV] = dumped
    if not (container_patches or stamp_patch or meta_patch or volumes != []):
        return None
    template_patch: Patch = {}
    if container_patches or stamp_patch or volumes != []:
        meta_patch[ROLLED_AT] = now  # the template changes: every pod restarts
    if stamp_patch:
        template_patch["metadata"] = {"annotations": stamp_patch}
    template_patch.update(_spec_patch(container_patches, volumes))
    return _deployment_patch(deployment, meta_patch, template_patch)


def _spec_patch(containers: list[Patch], volumes: list[Patch] | None) -> Patch:
    spec: Patch = {}
    if containers:
        spec["containers"] = containers
    if volumes != []:
        spec["volumes"] = volumes
    return {"spec": spec} if spec else {}


def restore_patch(deployment: Obj) -> Patch | None:
    """The patch that takes back everything poolbudget wrote into ``deployment``; None when there is nothing.

    Entries it added are deleted, entries it overwrote get their original back (in place, so the order is the
    original one), entries someone changed since are left alone; the stamps and poolbudget's annotations go.
    """
    annotations = annotations_of(deployment)
    template_annotations = annotations_of(template_of(deployment))
    if not any(k in annotations for k in DEPLOYMENT_ANNOTATIONS) and not any(
        k in template_annotations for k in TEMPLATE_ANNOTATIONS
    ):
        return None
    containers = template_containers(deployment)
    container_patches: list[Patch] = []
    for container_name, stored in sorted(read_record(annotations).items()):
        container = containers.get(container_name)
        if container is None:
            continue
        patch = _container_patch(
            container_name, container, _restore_items(container, stored.entries), stored.had_env
        )
        if patch is not None:
            container_patches.append(patch)
    container_patches = _with_mounts(container_patches, containers, set())
    template_patch: Patch = {}
    ours = [k for k in TEMPLATE_ANNOTATIONS if k in template_annotations]
    if ours:
        # An emptied map would stay behind as `annotations: {}` where the original had none.
        emptied = set(template_annotations) <= set(ours)
        template_patch["metadata"] = {"annotations": None if emptied else dict.fromkeys(ours)}
    template_patch.update(_spec_patch(container_patches, _volume_patch(deployment, live=False)))
    meta_patch: Patch = {k: None for k in DEPLOYMENT_ANNOTATIONS if k in annotations}
    return _deployment_patch(deployment, meta_patch, template_patch, drop_empty=True)


def _deployment_patch(
    deployment: Obj, annotations: Patch, template: Patch, drop_empty: bool = False
) -> Patch:
    metadata: Patch = {}
    version = metadata_of(deployment).get("resourceVersion")
    if version:
        metadata["resourceVersion"] = version  # optimistic concurrency: a stale read is a 409, not a clobber
    if annotations:
        current = annotations_of(deployment)
        removed = {k for k, v in annotations.items() if v is None}
        emptied = drop_empty and set(current) <= removed
        metadata["annotations"] = None if emptied else annotations
    patch: Patch = {"metadata": metadata}
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
    current = template_containers(deployment)
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
