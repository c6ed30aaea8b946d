"""The object store of the Kubernetes API test emulator (an in-memory stand-in, not a real API server).

It keeps what the operator's correctness depends on: a global resourceVersion, generation counting spec
changes only, status subresources, finalizers holding deleted objects, owner-reference garbage collection,
watch events for every change (none for writes that change nothing, as in Kubernetes), and an ordered
history of every accepted write so tests can replay it and check invariants at every step.
All methods are thread-safe: the HTTP server, the pod simulator and tests call them from their own threads.
"""

from __future__ import annotations

import bisect
import copy
import datetime
import itertools
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from . import crds
from .defaults import default_object
from .resources import (
    BUILTIN_TYPES,
    CRD_KEY,
    NAMESPACES_KEY,
    PODS_KEY,
    ResourceType,
)
from .selectors import Predicate

Obj = dict[str, Any]
ObjectKey = tuple[str, str, str, str]  # group, plural, namespace ("" if cluster-scoped), name
INITIAL_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
_SERVER_MANAGED_METADATA = (
    "name",
    "namespace",
    "uid",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "generation",
    "resourceVersion",
)


@dataclass(frozen=True)
class WriteContext:
    """Who asked for a write and how: recorded with it in the history."""

    actor: str = "emulator"  # The HTTP User-Agent, or "pod-simulator", "garbage-collector", "test".
    method: str = "INTERNAL"
    path: str = ""
    content_type: str | None = None
    body: Any = None
    dry_run: bool = False


@dataclass(frozen=True)
class WriteRecord:
    """One accepted write. ``event`` is None when the write changed nothing (no new resourceVersion)."""

    seq: int
    timestamp: float
    actor: str
    method: str
    path: str
    verb: str  # create, update, patch, delete
    subresource: str | None
    group: str
    version: str
    plural: str
    kind: str
    namespace: str | None
    name: str
    content_type: str | None
    body: Any  # The request body or patch as sent (parsed).
    object: Mapping[str, Any]  # The object after the write; for DELETED, its last state.
    event: str | None  # ADDED, MODIFIED, DELETED, or None for a no-op.
    resource_version: int

    @property
    def changed(self) -> bool:
        return self.event is not None

    @property
    def key(self) -> ObjectKey:
        return (self.group, self.plural, self.namespace or "", self.name)


@dataclass(frozen=True)
class RejectedWrite:
    """A write the emulator refused (4xx), kept apart from the history of accepted writes."""

    timestamp: float
    actor: str
    method: str
    path: str
    content_type: str | None
    body: Any
    code: int
    reason: str
    message: str


@dataclass(frozen=True)
class ChangeEvent:
    """A change as the watch machinery sees it; ``previous`` decides selector transitions."""

    resource_version: int
    type: str
    group: str
    plural: str
    object: Mapping[str, Any]
    previous: Mapping[str, Any] | None


class ApiError(Exception):
    """An error answered as a Kubernetes ``Status`` object."""

    def __init__(
        self, code: int, reason: str, message: str, details: Mapping[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, dict(details or {})

    def status(self) -> Obj:
        return {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "details": self.details,
            "code": self.code,
        }


def not_found(rtype: ResourceType, name: str) -> ApiError:
    return ApiError(
        404,
        "NotFound",
        f'{rtype.qualified} "{name}" not found',
        {"name": name, "group": rtype.group, "kind": rtype.plural},
    )


def conflict(rtype: ResourceType, name: str, why: str) -> ApiError:
    return ApiError(
        409,
        "Conflict",
        f'Operation cannot be fulfilled on {rtype.qualified} "{name}": {why}',
        {"name": name, "group": rtype.group, "kind": rtype.plural},
    )


def invalid(rtype: ResourceType, name: str, causes: list[dict[str, str]]) -> ApiError:
    summary = ", ".join(f"{cause['field']}: {cause['message']}" for cause in causes)
    kind = f"{rtype.kind}.{rtype.group}" if rtype.group else rtype.kind  # As in "PoolBudget.poolbudget.io".
    return ApiError(
        422,
        "Invalid",
        f'{kind} "{name}" is invalid: {summary}',
        {"name": name, "group": rtype.group, "kind": rtype.kind, "causes": causes},
    )


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


def gone(message: str) -> ApiError:
    return ApiError(410, "Expired", message)


class Watcher:
    """One open watch: filters changes by scope and selectors and hands them to ``deliver``.

    ``deliver`` receives ``("event", rv, (type, object))``, ``("progress", rv, None)`` for changes the
    watch does not show (so bookmarks never run ahead of undelivered events), or ``("close", 0, error)``.
    """

    def __init__(
        self,
        *,
        group: str,
        plural: str,
        namespace: str | None,
        label_selector: Predicate,
        field_selector: Predicate,
        deliver: Callable[[tuple[str, int, Any]], None],
    ) -> None:
        self.group, self.plural, self.namespace = group, plural, namespace
        self._labels, self._fields, self._deliver = label_selector, field_selector, deliver

    def _selected(self, obj: Mapping[str, Any] | None) -> bool:
        if obj is None:
            return False
        if self.namespace is not None and obj.get("metadata", {}).get("namespace") != self.namespace:
            return False
        return self._labels(obj) and self._fields(obj)

    def translate(self, change: ChangeEvent) -> tuple[str, Mapping[str, Any]] | None:
        """The event this watch shows for a change, if any (objects entering/leaving selectors included)."""
        if (change.group, change.plural) != (self.group, self.plural):
            return None
        now, before = self._selected(change.object), self._selected(change.previous)
        if change.type == "ADDED":
            return ("ADDED", change.object) if now else None
        if change.type == "DELETED":
            return ("DELETED", change.object) if now or before else None
        if now and before:
            return ("MODIFIED", change.object)
        if now:
            return ("ADDED", change.object)
        if before:
            return ("DELETED", change.object)
        return None

    def offer(self, change: ChangeEvent) -> None:
        shown = self.translate(change)
        if shown is None:
            self._deliver(("progress", change.resource_version, None))
        else:
            self._deliver(("event", change.resource_version, shown))

    def close(self, error: Obj | None = None) -> None:
        self._deliver(("close", 0, error))


def iso_timestamp(seconds: float) -> str:
    """RFC 3339 with second precision, as Kubernetes writes metadata timestamps."""
    return datetime.datetime.fromtimestamp(seconds, tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _spec_part(obj: Mapping[str, Any], rtype: ResourceType) -> dict[str, Any]:
    # What counts for metadata.generation: everything but metadata (and status when it is a subresource).
    skipped = {"metadata", "apiVersion", "kind"} | ({"status"} if rtype.status_subresource else set())
    return {key: value for key, value in obj.items() if key not in skipped}


def _without_version(obj: Mapping[str, Any]) -> dict[str, Any]:
    metadata = {key: value for key, value in obj.get("metadata", {}).items() if key != "resourceVersion"}
    return {**obj, "metadata": metadata}


def _same_content(left: Mapping[str, Any], right: Mapping[str, Any]) -> bool:
    return _without_version(left) == _without_version(right)


class Store:
    """In-memory objects, resource types, watches and the write history of the emulator."""

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self.lock = threading.RLock()
        self.clock = clock
        self.history: list[WriteRecord] = []
        self.rejected: list[RejectedWrite] = []
        # Called (under the lock, keep them quick) after each accepted change, e.g. to wake the pod simulator.
        self.listeners: list[Callable[[WriteRecord], None]] = []
        # When the pod simulator runs, deleted pods stay Terminating until it removes them (as a kubelet would).
        self.graceful_pod_deletion = False
        self._types: dict[tuple[str, str, str], ResourceType] = {}
        self._objects: dict[tuple[str, str], dict[tuple[str, str], Obj]] = {}
        self._uids: set[str] = set()
        self._resource_version = 0
        self._sequence = itertools.count(1)
        self._names = itertools.count(1)
        self._log: list[ChangeEvent] = []
        self._log_versions: list[int] = []
        self._compacted = 0
        self._watchers: set[Watcher] = set()
        self._terminating_containers: set[ObjectKey] = set()  # Namespaces and CRDs waiting to be empty.
        for rtype in BUILTIN_TYPES:
            self._types[(rtype.group, rtype.version, rtype.plural)] = rtype
        namespaces = self.find_type("", "v1", "namespaces")
        assert namespaces is not None
        for name in INITIAL_NAMESPACES:
            self.create(namespaces, None, {"metadata": {"name": name}})

    # ------------------------------------------------------------------ resource types

    @property
    def resource_version(self) -> int:
        return self._resource_version

    def find_type(self, group: str, version: str, plural: str) -> ResourceType | None:
        return self._types.get((group, version, plural))

    def types_for(self, group: str, plural: str) -> list[ResourceType]:
        with self.lock:
            return [t for t in self._types.values() if (t.group, t.plural) == (group, plural)]

    def types_in(self, group: str, version: str) -> list[ResourceType]:
        with self.lock:
            return [t for t in self._types.values() if (t.group, t.version) == (group, version)]

    def group_versions(self) -> dict[str, list[str]]:
        """Served groups (core as "") and their versions, in registration order."""
        with self.lock:
            groups: dict[str, list[str]] = {}
            for rtype in self._types.values():
                versions = groups.setdefault(rtype.group, [])
                if rtype.version not in versions:
                    versions.append(rtype.version)
            return groups

    def _serve_crd(self, crd: Mapping[str, Any]) -> None:
        name = crd["metadata"]["name"]
        for key in [key for key, rtype in self._types.items() if rtype.crd_name == name]:
            del self._types[key]
        for rtype in crds.resource_types_from_crd(crd):
            self._types[(rtype.group, rtype.version, rtype.plural)] = rtype

    def _unserve_crd(self, name: str) -> None:
        for key in [key for key, rtype in self._types.items() if rtype.crd_name == name]:
            del self._types[key]

    # ------------------------------------------------------------------ reads

    def _bucket(self, rtype: ResourceType) -> dict[tuple[str, str], Obj]:
        return self._objects.setdefault(rtype.storage_key, {})

    def _current(self, rtype: ResourceType, namespace: str | None, name: str) -> Obj:
        obj = self._bucket(rtype).get(((namespace or "") if rtype.namespaced else "", name))
        if obj is None:
            raise not_found(rtype, name)
        return obj

    def get(self, rtype: ResourceType, namespace: str | None, name: str) -> Obj:
        """The stored object (a shared snapshot: callers must not mutate it); raises 404."""
        with self.lock:
            return self._current(rtype, namespace, name)

    def list_objects(
        self,
        rtype: ResourceType,
        namespace: str | None,
        label_selector: Predicate | None = None,
        field_selector: Predicate | None = None,
    ) -> tuple[list[Obj], int]:
        """Matching objects sorted by namespace and name, and the list's resourceVersion."""
        with self.lock:
            items = [
                obj
                for (ns, _), obj in sorted(self._bucket(rtype).items())
                if (namespace is None or ns == namespace)
                and (label_selector is None or label_selector(obj))
                and (field_selector is None or field_selector(obj))
            ]
            return items, self._resource_version

    def all_objects(self) -> Iterator[Obj]:
        with self.lock:
            snapshot = [obj for bucket in self._objects.values() for obj in bucket.values()]
        return iter(snapshot)

    # ------------------------------------------------------------------ writes

    def _now(self) -> str:
        return iso_timestamp(self.clock())

    def _check_namespace_writable(self, namespace: str) -> None:
        namespaces = self._objects.get(NAMESPACES_KEY, {})
        found = namespaces.get(("", namespace))
        if found is None:
            raise ApiError(
                404,
                "NotFound",
                f'namespaces "{namespace}" not found',
                {"name": namespace, "kind": "namespaces"},
            )
        if found["metadata"].get("deletionTimestamp"):
            raise ApiError(
                403,
                "Forbidden",
                f"unable to create new content in namespace {namespace} because it is being terminated",
                {"name": namespace, "kind": "namespaces"},
            )

    def create(
        self,
        rtype: ResourceType,
        namespace: str | None,
        body: Any,
        context: WriteContext = WriteContext(),
    ) -> Obj:
        """Create an object (uid, timestamps, generation, defaults); 409 if it exists."""
        if not isinstance(body, dict):
            raise bad_request("the body of the request is not a JSON object")
        obj = copy.deepcopy(body)
        metadata = obj.get("metadata")
        if not isinstance(metadata, dict):
            metadata = obj["metadata"] = {}
        with self.lock:
            if rtype.namespaced:
                sent = metadata.get("namespace")
                namespace = namespace or sent
                if not namespace:
                    raise bad_request("the namespace of the object is required")
                if sent and sent != namespace:
                    raise bad_request(
                        "the namespace of the provided object does not match the namespace "
                        "sent on the request"
                    )
                metadata["namespace"] = namespace
                self._check_namespace_writable(namespace)
            else:
                metadata.pop("namespace", None)
                namespace = None
            name = metadata.get("name")
            if not name and metadata.get("generateName"):
                name = f"{metadata['generateName']}{next(self._names):05d}"
            if not name:
                raise invalid(
                    rtype,
                    "",
                    [
                        {
                            "reason": "FieldValueRequired",
                            "field": "metadata.name",
                            "message": "Required value: name or generateName is required",
                        }
                    ],
                )
            if (namespace or "", name) in self._bucket(rtype):
                raise ApiError(
                    409,
                    "AlreadyExists",
                    f'{rtype.qualified} "{name}" already exists',
                    {"name": name, "group": rtype.group, "kind": rtype.plural},
                )
            for key in (*_SERVER_MANAGED_METADATA[2:], "managedFields", "selfLink"):
                metadata.pop(key, None)
            metadata["name"] = name
            metadata["uid"] = str(uuid.uuid4())
            metadata["creationTimestamp"] = self._now()
            if rtype.tracks_generation:
                metadata["generation"] = 1
            obj["apiVersion"], obj["kind"] = rtype.api_version, rtype.kind
            if rtype.status_subresource:
                obj.pop("status", None)  # Status is written through /status only, as in Kubernetes.
            self._admit(rtype, obj, None)
            return self._commit(rtype, None, obj, "create", context, None)

    def update(
        self,
        rtype: ResourceType,
        namespace: str | None,
        name: str,
        mutate: Callable[[Obj], Any],
        context: WriteContext = WriteContext(),
        *,
        subresource: str | None = None,
        verb: str = "patch",
    ) -> Obj:
        """Replace or patch an object: ``mutate`` gets a private copy and returns the desired object.

        The server-managed metadata is kept, status only changes through the status subresource,
        a stale ``metadata.resourceVersion`` in the result is a 409, and ``PatchError`` becomes a 422.
        """
        from .patching import PatchError  # Local: patching is pure and knows nothing of the store.

        with self.lock:
            current = self._current(rtype, namespace, name)
            try:
                candidate = mutate(copy.deepcopy(current))
            except PatchError as error:
                raise ApiError(
                    422, "Invalid", str(error), {"name": name, "group": rtype.group, "kind": rtype.plural}
                ) from error
            if not isinstance(candidate, dict):
                raise bad_request("the result of the patch is not a JSON object")
            new = self._merge_update(rtype, current, candidate, subresource)
            if _same_content(new, current):
                return self._record_noop(rtype, current, verb, context, subresource)
            metadata = new["metadata"]
            if (
                metadata.get("deletionTimestamp")
                and not metadata.get("finalizers")
                and not self._grace_pending(rtype, new)
            ):
                # Emptied finalizers of a deleted object: the update turns into the removal (one DELETED event).
                return self._commit(rtype, current, new, verb, context, subresource, remove=True)
            return self._commit(rtype, current, new, verb, context, subresource)

    def _merge_update(
        self, rtype: ResourceType, current: Obj, candidate: Obj, subresource: str | None
    ) -> Obj:
        name = current["metadata"]["name"]
        sent = candidate.get("metadata")
        sent_metadata: dict[str, Any] = sent if isinstance(sent, dict) else {}
        sent_version = sent_metadata.get("resourceVersion")
        if sent_version not in (None, "") and str(sent_version) != current["metadata"]["resourceVersion"]:
            raise conflict(
                rtype,
                name,
                "the object has been modified; please apply your changes to the latest version and try again",
            )
        if sent_metadata.get("name") not in (None, name):
            raise bad_request(
                f"the name of the object ({sent_metadata['name']}) does not match the name on "
                f"the URL ({name})"
            )
        if subresource == "status":
            new = copy.deepcopy(current)
            if "status" in candidate:
                new["status"] = candidate["status"]
            else:
                new.pop("status", None)
        else:
            new = candidate
            metadata = new["metadata"] = dict(sent_metadata)
            for key in _SERVER_MANAGED_METADATA:
                if key in current["metadata"]:
                    metadata[key] = current["metadata"][key]
                else:
                    metadata.pop(key, None)
            new["apiVersion"], new["kind"] = current["apiVersion"], current["kind"]
            if rtype.status_subresource:
                if "status" in current:
                    new["status"] = current["status"]
                else:
                    new.pop("status", None)
            if current["metadata"].get("deletionTimestamp"):
                added = set(metadata.get("finalizers") or []) - set(
                    current["metadata"].get("finalizers") or []
                )
                if added:
                    raise invalid(
                        rtype,
                        name,
                        [
                            {
                                "reason": "FieldValueForbidden",
                                "field": "metadata.finalizers",
                                "message": "Forbidden: no new finalizers can be added if the "
                                "object is being deleted",
                            }
                        ],
                    )
        self._admit(rtype, new, current)
        if rtype.tracks_generation and _spec_part(new, rtype) != _spec_part(current, rtype):
            new["metadata"]["generation"] = int(current["metadata"].get("generation", 1)) + 1
        return new

    def _admit(self, rtype: ResourceType, obj: Obj, current: Obj | None) -> None:
        """Defaults, schema pruning and validation, and type-specific server-side behaviour."""
        name = obj["metadata"].get("name", "")
        default_object(rtype.group, rtype.plural, obj)
        if rtype.storage_key == NAMESPACES_KEY:
            obj.setdefault("spec", {"finalizers": ["kubernetes"]})
            # The API server always sets this label; namespaceSelectors match on it.
            obj["metadata"].setdefault("labels", {})["kubernetes.io/metadata.name"] = name
            if current is None:
                obj["status"] = {"phase": "Active"}
        elif rtype.storage_key == PODS_KEY and current is None:
            obj["status"] = {"phase": "Pending"}
        elif rtype.storage_key == ("", "services") and current is None:
            obj["status"] = {"loadBalancer": {}}
        elif rtype.storage_key in (("apps", "deployments"), ("apps", "replicasets")):
            if rtype.plural == "deployments":
                self._validate_deployment(rtype, obj)
            if current is None:
                obj["status"] = {}  # What a real server returns before the controller reports.
        elif rtype.storage_key == CRD_KEY:
            try:
                crds.resource_types_from_crd(obj)
            except crds.CrdError as error:
                raise invalid(
                    rtype, name, [{"reason": "FieldValueInvalid", "field": "spec", "message": str(error)}]
                ) from error
            obj["status"] = crds.crd_status(obj)  # Accepted and established at once: no CRD controller here.
        if rtype.crd_name is not None and rtype.schema is not None:
            pruned = crds.prune_object(obj, rtype.schema)
            obj.clear()
            obj.update(pruned)
            causes = crds.validate_object(obj, rtype.schema)
            if causes:
                raise invalid(rtype, name, causes)

    def _validate_deployment(self, rtype: ResourceType, obj: Obj) -> None:
        spec = obj.get("spec") or {}
        selector = (spec.get("selector") or {}).get("matchLabels")
        labels = ((spec.get("template") or {}).get("metadata") or {}).get("labels") or {}
        name = obj["metadata"].get("name", "")
        if not selector:
            raise invalid(
                rtype,
                name,
                [{"reason": "FieldValueRequired", "field": "spec.selector", "message": "Required value"}],
            )
        if any(labels.get(key) != value for key, value in selector.items()):
            raise invalid(
                rtype,
                name,
                [
                    {
                        "reason": "FieldValueInvalid",
                        "field": "spec.template.metadata.labels",
                        "message": "Invalid value: `selector` does not match template `labels`",
                    }
                ],
            )
        replicas = spec.get("replicas")
        if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0:
            raise invalid(
                rtype,
                name,
                [
                    {
                        "reason": "FieldValueInvalid",
                        "field": "spec.replicas",
                        "message": "Invalid value: must be greater than or equal to 0",
                    }
                ],
            )

    def _grace_pending(self, rtype: ResourceType, obj: Mapping[str, Any]) -> bool:
        return (
            rtype.storage_key == PODS_KEY
            and self.graceful_pod_deletion
            and int(obj["metadata"].get("deletionGracePeriodSeconds") or 0) > 0
        )

    def delete(
        self,
        rtype: ResourceType,
        namespace: str | None,
        name: str,
        context: WriteContext = WriteContext(),
        *,
        options: Mapping[str, Any] | None = None,
    ) -> Obj:
        """Delete: remove at once, or mark with deletionTimestamp while finalizers (or a pod's grace) hold it."""
        options = options or {}
        with self.lock:
            current = self._current(rtype, namespace, name)
            preconditions = options.get("preconditions") or {}
            for key in ("uid", "resourceVersion"):
                if preconditions.get(key) and preconditions[key] != current["metadata"].get(key):
                    raise conflict(
                        rtype,
                        name,
                        f"Precondition failed: {key} in precondition: "
                        f"{preconditions[key]}, {key} in object meta: {current['metadata'].get(key)}",
                    )
            if context.dry_run:
                return current  # Nothing cascades from a dry run.
            grace = options.get("gracePeriodSeconds")
            metadata = current["metadata"]
            if metadata.get("deletionTimestamp"):
                if grace == 0 and self._grace_pending(rtype, current):
                    return self.finish_pod_deletion(namespace, name, context)
                return self._record_noop(rtype, current, "delete", context, None)
            graceful = rtype.storage_key == PODS_KEY and self.graceful_pod_deletion and grace != 0
            has_contents = self._has_contents(rtype, current)
            if metadata.get("finalizers") or graceful or has_contents:
                new = copy.deepcopy(current)
                new["metadata"]["deletionTimestamp"] = self._now()
                pod_grace = (new.get("spec") or {}).get("terminationGracePeriodSeconds", 30)
                new["metadata"]["deletionGracePeriodSeconds"] = (
                    int(grace if grace is not None else pod_grace) if graceful else 0
                )
                if rtype.tracks_generation:
                    new["metadata"]["generation"] = int(metadata.get("generation", 1)) + 1
                if rtype.storage_key == NAMESPACES_KEY:
                    new["status"] = {"phase": "Terminating"}
                result = self._commit(rtype, current, new, "delete", context, None)
                if has_contents or rtype.storage_key in (NAMESPACES_KEY, CRD_KEY):
                    self._terminating_containers.add(self._key(rtype, result))
                    self._delete_contents(rtype, result)
                    self._reap()
                    return self._bucket(rtype).get((namespace or "", name), result)
                return result
            return self._commit(
                rtype,
                current,
                current,
                "delete",
                context,
                None,
                remove=True,
                orphan=options.get("propagationPolicy") == "Orphan",
            )

    def finish_pod_deletion(self, namespace: str | None, name: str, context: WriteContext) -> Obj:
        """End a pod's grace period (the kubelet's final delete): remove it unless finalizers remain."""
        rtype = self.find_type("", "v1", "pods")
        assert rtype is not None
        with self.lock:
            current = self._current(rtype, namespace, name)
            new = copy.deepcopy(current)
            new["metadata"]["deletionGracePeriodSeconds"] = 0
            new["metadata"].setdefault("deletionTimestamp", self._now())
            return self._commit(
                rtype, current, new, "delete", context, None, remove=not new["metadata"].get("finalizers")
            )

    def _key(self, rtype: ResourceType, obj: Mapping[str, Any]) -> ObjectKey:
        return (rtype.group, rtype.plural, obj["metadata"].get("namespace") or "", obj["metadata"]["name"])

    def _has_contents(self, rtype: ResourceType, obj: Mapping[str, Any]) -> bool:
        if rtype.storage_key == NAMESPACES_KEY:
            name = obj["metadata"]["name"]
            return any(ns == name for bucket in self._objects.values() for ns, _ in bucket)
        if rtype.storage_key == CRD_KEY:
            spec = obj.get("spec") or {}
            return bool(
                self._objects.get((spec.get("group", ""), (spec.get("names") or {}).get("plural", "")))
            )
        return False

    def _delete_contents(self, rtype: ResourceType, obj: Mapping[str, Any]) -> None:
        """Namespace and CRD deletion deletes what they contain (finalizers still hold each object)."""
        context = WriteContext(
            actor="namespace-controller"
            if rtype.storage_key == NAMESPACES_KEY
            else "apiextensions-controller",
            method="DELETE",
        )
        if rtype.storage_key == NAMESPACES_KEY:
            victims = [
                (key, ns, name)
                for key, bucket in self._objects.items()
                for ns, name in list(bucket)
                if ns == obj["metadata"]["name"]
            ]
        else:
            spec = obj.get("spec") or {}
            key = (spec.get("group", ""), (spec.get("names") or {}).get("plural", ""))
            victims = [(key, ns, name) for ns, name in list(self._objects.get(key, {}))]
        for (group, plural), ns, name in victims:
            victim_types = self.types_for(group, plural)
            if victim_types and (ns, name) in self._objects.get((group, plural), {}):
                self.delete(victim_types[0], ns or None, name, context)

    def _reap(self) -> None:
        """Remove terminating namespaces and CRDs once nothing is left in them."""
        for key in list(self._terminating_containers):
            group, plural, _, name = key
            rtype = self.types_for(group, plural)[0]
            obj = self._bucket(rtype).get(("", name))
            if obj is None:
                self._terminating_containers.discard(key)
            elif not self._has_contents(rtype, obj) and not obj["metadata"].get("finalizers"):
                self._terminating_containers.discard(key)
                self._commit(
                    rtype, obj, obj, "delete", WriteContext(actor="namespace-controller"), None, remove=True
                )

    def _collect_garbage(self, removed_uid: str) -> None:
        """Background cascading deletion: dependents whose owners are all gone are deleted."""
        context = WriteContext(actor="garbage-collector", method="DELETE")
        for (group, plural), bucket in list(self._objects.items()):
            for (ns, name), obj in list(bucket.items()):
                owners = obj["metadata"].get("ownerReferences") or []
                uids = {owner.get("uid") for owner in owners}
                if (
                    removed_uid in uids
                    and not (uids & self._uids)
                    and not obj["metadata"].get("deletionTimestamp")
                ):
                    types = self.types_for(group, plural)
                    if types and (ns, name) in bucket:
                        self.delete(types[0], ns or None, name, context)

    # ------------------------------------------------------------------ commit & history

    def _record_noop(
        self, rtype: ResourceType, current: Obj, verb: str, context: WriteContext, subresource: str | None
    ) -> Obj:
        if not context.dry_run:
            self.history.append(self._record(rtype, current, verb, context, subresource, None))
        return current

    def _record(
        self,
        rtype: ResourceType,
        obj: Obj,
        verb: str,
        context: WriteContext,
        subresource: str | None,
        event: str | None,
    ) -> WriteRecord:
        return WriteRecord(
            seq=next(self._sequence),
            timestamp=self.clock(),
            actor=context.actor,
            method=context.method,
            path=context.path,
            verb=verb,
            subresource=subresource,
            group=rtype.group,
            version=rtype.version,
            plural=rtype.plural,
            kind=rtype.kind,
            namespace=obj["metadata"].get("namespace"),
            name=obj["metadata"]["name"],
            content_type=context.content_type,
            body=context.body,
            object=obj,
            event=event,
            resource_version=int(obj["metadata"].get("resourceVersion") or self._resource_version),
        )

    def _commit(
        self,
        rtype: ResourceType,
        current: Obj | None,
        new: Obj,
        verb: str,
        context: WriteContext,
        subresource: str | None,
        *,
        remove: bool = False,
        orphan: bool = False,
    ) -> Obj:
        """Store a change under a new resourceVersion, record it, and tell the watchers."""
        if context.dry_run:
            return new
        self._resource_version += 1
        version = self._resource_version
        snapshot = {**new, "metadata": {**new["metadata"], "resourceVersion": str(version)}}
        bucket = self._bucket(rtype)
        key = (snapshot["metadata"].get("namespace") or "", snapshot["metadata"]["name"])
        if remove:
            bucket.pop(key, None)
            self._uids.discard(snapshot["metadata"]["uid"])
            event = "DELETED"
        else:
            bucket[key] = snapshot
            self._uids.add(snapshot["metadata"]["uid"])
            event = "ADDED" if current is None else "MODIFIED"
        record = self._record(rtype, snapshot, verb, context, subresource, event)
        self.history.append(record)
        change = ChangeEvent(version, event, rtype.group, rtype.plural, snapshot, current)
        self._log.append(change)
        self._log_versions.append(version)
        for watcher in list(self._watchers):
            watcher.offer(change)
        if rtype.storage_key == CRD_KEY:
            if remove:
                self._unserve_crd(snapshot["metadata"]["name"])
            else:
                self._serve_crd(snapshot)
        for listener in list(self.listeners):
            listener(record)
        if remove:
            if not orphan:
                self._collect_garbage(snapshot["metadata"]["uid"])
            if self._terminating_containers:
                self._reap()
        return snapshot

    def reject(self, context: WriteContext, error: ApiError) -> None:
        """Keep a refused write for the tests (e.g. kopf's optimistic-concurrency 422s)."""
        with self.lock:
            self.rejected.append(
                RejectedWrite(
                    timestamp=self.clock(),
                    actor=context.actor,
                    method=context.method,
                    path=context.path,
                    content_type=context.content_type,
                    body=context.body,
                    code=error.code,
                    reason=error.reason,
                    message=error.message,
                )
            )

    # ------------------------------------------------------------------ watches

    def watch(
        self,
        rtype: ResourceType,
        namespace: str | None,
        label_selector: Predicate,
        field_selector: Predicate,
        since: str | None,
        deliver: Callable[[tuple[str, int, Any]], None],
    ) -> tuple[list[tuple[int, tuple[str, Mapping[str, Any]]]], Watcher, int]:
        """Open a watch: returns the backlog to send first, the watcher, and the starting resourceVersion.

        Without a resourceVersion (or "0") the backlog is an ADDED event per matching object; with one,
        it is every change after it, or :func:`gone` if that version was compacted away.
        """
        watcher = Watcher(
            group=rtype.group,
            plural=rtype.plural,
            namespace=namespace,
            label_selector=label_selector,
            field_selector=field_selector,
            deliver=deliver,
        )
        with self.lock:
            backlog: list[tuple[int, tuple[str, Mapping[str, Any]]]] = []
            if since in (None, "", "0"):
                items, _ = self.list_objects(rtype, namespace, label_selector, field_selector)
                items.sort(key=lambda obj: int(obj["metadata"]["resourceVersion"]))
                backlog = [(int(obj["metadata"]["resourceVersion"]), ("ADDED", obj)) for obj in items]
            else:
                try:
                    start = int(since)
                except ValueError as error:
                    raise bad_request(f"invalid resource version {since!r}") from error
                if start < self._compacted:
                    raise gone(f"too old resource version: {start} ({self._compacted})")
                for change in self._log[bisect.bisect_right(self._log_versions, start) :]:
                    shown = watcher.translate(change)
                    if shown is not None:
                        backlog.append((change.resource_version, shown))
            self._watchers.add(watcher)
            return backlog, watcher, self._resource_version

    def unwatch(self, watcher: Watcher) -> None:
        with self.lock:
            self._watchers.discard(watcher)

    def expire_watches(self, group: str | None = None, plural: str | None = None) -> int:
        """Force ``410 Gone``: open watches get an ERROR event and end; older versions cannot be resumed.

        Clients must re-list, as after an etcd compaction. Returns how many watches were ended.
        """
        with self.lock:
            # A fresh revision marks the compaction, so a re-list's version is still watchable.
            self._resource_version += 1
            self._compacted = self._resource_version
            error = gone(f"too old resource version: {self._compacted - 1} ({self._compacted})").status()
            ended = [
                w
                for w in self._watchers
                if (group is None or w.group == group) and (plural is None or w.plural == plural)
            ]
            for watcher in ended:
                self._watchers.discard(watcher)
                watcher.close(error)
            return len(ended)

    def close_watches(self) -> None:
        """End every open watch without an error (the server is stopping)."""
        with self.lock:
            for watcher in list(self._watchers):
                watcher.close(None)
            self._watchers.clear()

    @property
    def open_watches(self) -> int:
        with self.lock:
            return len(self._watchers)


def replay(history: list[WriteRecord]) -> Iterator[tuple[WriteRecord, dict[ObjectKey, Mapping[str, Any]]]]:
    """Walk the history: after each accepted change, yield it with the whole state at that point.

    The state maps (group, plural, namespace, name) to the object; it is one dict updated in place,
    so copy it if you keep it beyond the iteration step.
    """
    state: dict[ObjectKey, Mapping[str, Any]] = {}
    for record in history:
        if not record.changed:
            continue
        if record.event == "DELETED":
            state.pop(record.key, None)
        else:
            state[record.key] = record.object
        yield record, state
