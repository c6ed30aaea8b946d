"""HTTP front of the Kubernetes API test emulator: discovery, CRUD, patches, subresources, watches, tables.

This is a test double for kopf, kubectl and the ``kubernetes`` client, not a real API server: plain HTTP,
no authentication or authorization, JSON only (no protobuf), no OpenAPI documents (so ``kubectl apply``
needs ``--validate=false``), no aggregated discovery (clients fall back to the classic endpoints).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import re
import traceback
from collections import deque
from collections.abc import Mapping
from typing import Any

import yaml
from aiohttp import web

from . import patching
from .selectors import SelectorError, parse_field_selector, parse_label_selector, selector_from_match_labels
from .store import ApiError, Obj, Store, WriteContext, bad_request, invalid
from .tables import render_table

logger = logging.getLogger(__name__)

_WRITE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}
_VERSION_RE = re.compile(r"^v(\d+)(?:(alpha|beta)(\d+))?$")
SERVER_VERSION = {
    "major": "1",
    "minor": "32",
    "gitVersion": "v1.32.0-emulator",
    "gitCommit": "0000000000000000000000000000000000000000",
    "gitTreeState": "clean",
    "buildDate": "2025-01-01T00:00:00Z",
    "goVersion": "go1.23.0",
    "compiler": "gc",
    "platform": "linux/amd64",
}


def _version_priority(version: str) -> tuple[int, int, int]:
    """Kubernetes' version order: GA before beta before alpha, higher numbers first."""
    match = _VERSION_RE.match(version)
    if not match:
        return (3, 0, 0)
    major, stage, minor = match.groups()
    return ({None: 0, "beta": 1, "alpha": 2}[stage], -int(major), -int(minor or 0))


def _not_served() -> ApiError:
    return ApiError(404, "NotFound", "the server could not find the requested resource")


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=json.dumps(data).encode(), content_type="application/json")


class ApiServer:
    """The aiohttp application; every handler delegates state changes to the :class:`Store`."""

    def __init__(self, store: Store, *, bookmark_interval: float = 5.0) -> None:
        self.store = store
        self.bookmark_interval = bookmark_interval
        # Recent requests (method, path with query, status, user agent) for debugging failed tests.
        self.requests: deque[tuple[str, str, int, str]] = deque(maxlen=20000)

    def application(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.StreamResponse:
        context = WriteContext(
            actor=request.headers.get("User-Agent", "unknown"),
            method=request.method,
            path=request.path_qs,
            content_type=request.content_type,
            dry_run=request.query.get("dryRun") == "All",
        )
        try:
            response = await self._dispatch(request, context)
        except ApiError as error:
            if request.method in _WRITE_METHODS:
                self.store.reject(context, error)
            response = _json(error.status(), error.code)
        except Exception as error:  # A bug in the emulator must show in the test output, not hang a client.
            logger.error(
                "emulator failed on %s %s:\n%s", request.method, request.path_qs, traceback.format_exc()
            )
            response = _json(ApiError(500, "InternalError", f"emulator error: {error!r}").status(), 500)
        self.requests.append((request.method, request.path_qs, response.status, context.actor))
        return response

    # ------------------------------------------------------------------ routing

    async def _dispatch(self, request: web.Request, context: WriteContext) -> web.StreamResponse:
        parts = [part for part in request.path.split("/") if part]
        if parts == ["version"]:
            return _json(SERVER_VERSION)
        if parts in (["healthz"], ["readyz"], ["livez"]):
            return web.Response(text="ok")
        if parts == ["api"]:
            return _json(
                {
                    "kind": "APIVersions",
                    "versions": ["v1"],
                    "serverAddressByClientCIDRs": [
                        {"clientCIDR": "0.0.0.0/0", "serverAddress": request.host}
                    ],
                }
            )
        if parts == ["apis"]:
            return _json(self._group_list())
        if len(parts) >= 2 and parts[0] == "api":
            group, version, rest = "", parts[1], parts[2:]
        elif len(parts) == 2 and parts[0] == "apis":
            return _json(self._group(parts[1]))
        elif len(parts) >= 3 and parts[0] == "apis":
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            raise _not_served()
        if not rest:
            return _json(self._resource_list(group, version))

        namespace: str | None = None
        if rest[0] == "namespaces" and len(rest) >= 3:
            inner = self.store.find_type(group, version, rest[2])
            if inner is not None and inner.namespaced:
                namespace, rest = rest[1], rest[2:]
        if len(rest) > 3:
            raise _not_served()
        rtype = self.store.find_type(group, version, rest[0])
        if rtype is None or (namespace is not None and not rtype.namespaced):
            raise _not_served()
        name = rest[1] if len(rest) > 1 else None
        subresource = rest[2] if len(rest) > 2 else None
        if (
            subresource not in (None, "status", "scale")
            or (subresource == "status" and not rtype.status_subresource)
            or (subresource == "scale" and not rtype.scale_subresource)
        ):
            raise _not_served()
        if rtype.namespaced and namespace is None and name is not None and rtype.plural != "namespaces":
            raise _not_served()
        method = request.method
        if name is None:
            if method == "GET":
                if request.query.get("watch") in ("true", "1"):
                    return await self._watch(request, rtype, namespace)
                return self._list(request, rtype, namespace)
            if method == "POST":
                if rtype.namespaced and namespace is None:
                    raise ApiError(
                        405,
                        "MethodNotAllowed",
                        "the server does not allow this method on the requested resource",
                    )
                body = await self._body(request)
                context = _with_body(context, body)
                return _json(self._present(rtype, self.store.create(rtype, namespace, body, context)), 201)
            if method == "DELETE":
                return self._delete_collection(request, rtype, namespace, context)
        else:
            if method == "GET":
                obj = self.store.get(rtype, namespace, name)
                return _json(self._scale(obj) if subresource == "scale" else self._present(rtype, obj))
            if method in ("PUT", "PATCH"):
                body = await self._body(request)
                context = _with_body(context, body)
                return await self._write(request, rtype, namespace, name, subresource, body, context)
            if method == "DELETE":
                options = await self._delete_options(request)
                context = _with_body(context, options or None)
                return _json(
                    self._present(rtype, self.store.delete(rtype, namespace, name, context, options=options))
                )
        raise ApiError(
            405, "MethodNotAllowed", "the server does not allow this method on the requested resource"
        )

    # ------------------------------------------------------------------ discovery

    def _group_list(self) -> Obj:
        groups = []
        for group, versions in self.store.group_versions().items():
            if group:
                groups.append(self._group(group, versions))
        return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}

    def _group(self, group: str, versions: list[str] | None = None) -> Obj:
        versions = versions if versions is not None else self.store.group_versions().get(group)
        if not versions:
            raise _not_served()
        ordered = sorted(versions, key=_version_priority)
        entries = [{"groupVersion": f"{group}/{version}", "version": version} for version in ordered]
        return {
            "kind": "APIGroup",
            "apiVersion": "v1",
            "name": group,
            "versions": entries,
            "preferredVersion": entries[0],
        }

    def _resource_list(self, group: str, version: str) -> Obj:
        types = self.store.types_in(group, version)
        if not types:
            raise _not_served()
        resources = [entry for rtype in types for entry in rtype.discovery_entries()]
        return {
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": f"{group}/{version}" if group else version,
            "resources": resources,
        }

    # ------------------------------------------------------------------ reads

    @staticmethod
    def _present(rtype: Any, obj: Mapping[str, Any]) -> Obj:
        # One storage serves every version: answer in the version asked for (no schema conversion).
        return {**obj, "apiVersion": rtype.api_version, "kind": rtype.kind}

    @staticmethod
    def _selectors(request: web.Request) -> tuple[Any, Any]:
        try:
            return (
                parse_label_selector(request.query.get("labelSelector")),
                parse_field_selector(request.query.get("fieldSelector")),
            )
        except SelectorError as error:
            raise bad_request(str(error)) from error

    def _list(self, request: web.Request, rtype: Any, namespace: str | None) -> web.Response:
        labels, fields = self._selectors(request)
        items, version = self.store.list_objects(rtype, namespace, labels, fields)
        offset = 0
        if request.query.get("continue"):
            try:
                token = json.loads(base64.urlsafe_b64decode(request.query["continue"]))
                offset, version = int(token["offset"]), int(token["rv"])
            except (ValueError, KeyError) as error:
                raise bad_request("invalid continue token") from error
        limit = int(request.query.get("limit") or 0)
        page = items[offset : offset + limit] if limit else items[offset:]
        continue_token = ""
        if limit and offset + limit < len(items):
            continue_token = base64.urlsafe_b64encode(
                json.dumps({"offset": offset + limit, "rv": version}).encode()
            ).decode()
        if "as=Table" in request.headers.get("Accept", ""):
            return _json(
                render_table(
                    rtype,
                    page,
                    resource_version=str(version),
                    now=self.store.clock(),
                    include_object=request.query.get("includeObject", "Metadata"),
                    continue_token=continue_token,
                )
            )
        metadata: Obj = {"resourceVersion": str(version)}
        if continue_token:
            metadata["continue"] = continue_token
        return _json(
            {
                "kind": f"{rtype.kind}List",
                "apiVersion": rtype.api_version,
                "metadata": metadata,
                "items": [self._present(rtype, obj) for obj in page],
            }
        )

    def _scale(self, obj: Mapping[str, Any]) -> Obj:
        metadata = obj["metadata"]
        match_labels = ((obj.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
        return {
            "kind": "Scale",
            "apiVersion": "autoscaling/v1",
            "metadata": {
                key: metadata[key]
                for key in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp")
                if key in metadata
            },
            "spec": {"replicas": (obj.get("spec") or {}).get("replicas", 1)},
            "status": {
                "replicas": (obj.get("status") or {}).get("replicas", 0),
                "selector": selector_from_match_labels(match_labels),
            },
        }

    # ------------------------------------------------------------------ writes

    @staticmethod
    async def _body(request: web.Request) -> Any:
        raw = await request.read()
        if not raw:
            raise bad_request("the request body is empty")
        try:
            return json.loads(raw)
        except ValueError:
            pass
        try:
            return yaml.safe_load(raw)  # application/apply-patch+yaml and hand-written YAML bodies.
        except yaml.YAMLError as error:
            raise bad_request(f"cannot parse the request body: {error}") from error

    @staticmethod
    async def _delete_options(request: web.Request) -> Obj:
        options: Obj = {}
        if request.can_read_body:
            raw = await request.read()
            if raw.strip():
                try:
                    options = dict(json.loads(raw))
                except ValueError as error:
                    raise bad_request("cannot parse DeleteOptions") from error
        if "gracePeriodSeconds" in request.query:
            options["gracePeriodSeconds"] = int(request.query["gracePeriodSeconds"])
        if "propagationPolicy" in request.query:
            options["propagationPolicy"] = request.query["propagationPolicy"]
        return options

    def _patch_function(self, request: web.Request, rtype: Any, body: Any) -> Any:
        content_type = request.content_type
        if content_type == "application/json-patch+json":
            return lambda obj: patching.json_patch(obj, body)
        if content_type == "application/merge-patch+json":
            return lambda obj: patching.merge_patch(obj, body)
        if content_type == "application/strategic-merge-patch+json":
            if rtype.crd_name is not None:
                # As in Kubernetes: custom resources have no patch strategies to merge by.
                raise ApiError(
                    415,
                    "UnsupportedMediaType",
                    "the body of the request was in an unknown format - "
                    "accepted media types include: application/json-patch+json, "
                    "application/merge-patch+json, application/apply-patch+yaml",
                )
            return lambda obj: patching.strategic_merge_patch(obj, body)
        if content_type == "application/apply-patch+yaml":
            # A simplification of server-side apply: no field ownership, just a merge of the intent.
            return lambda obj: patching.strategic_merge_patch(obj, body)
        raise ApiError(
            415, "UnsupportedMediaType", f"the body of the request was in an unknown format: {content_type}"
        )

    async def _write(
        self,
        request: web.Request,
        rtype: Any,
        namespace: str | None,
        name: str,
        subresource: str | None,
        body: Any,
        context: WriteContext,
    ) -> web.Response:
        if request.method == "PUT":
            if not isinstance(body, dict):
                raise bad_request("the body of the request is not a JSON object")
            mutate = lambda obj: body  # noqa: E731
            verb = "update"
        else:
            if request.content_type == "application/apply-patch+yaml":
                # Server-side apply creates what does not exist yet.
                try:
                    self.store.get(rtype, namespace, name)
                except ApiError:
                    created = self.store.create(
                        rtype,
                        namespace,
                        {**body, "metadata": {**(body.get("metadata") or {}), "name": name}},
                        context,
                    )
                    return _json(self._present(rtype, created), 201)
            mutate = self._patch_function(request, rtype, body)
            verb = "patch"
        if subresource == "scale":
            return _json(self._scale(self._write_scale(rtype, namespace, name, mutate, verb, context)))
        result = self.store.update(
            rtype, namespace, name, mutate, context, subresource=subresource, verb=verb
        )
        return _json(self._present(rtype, result))

    def _write_scale(
        self, rtype: Any, namespace: str | None, name: str, mutate: Any, verb: str, context: WriteContext
    ) -> Obj:
        def to_deployment(obj: Obj) -> Obj:
            scale = mutate(self._scale(obj))
            sent_version = (scale.get("metadata") or {}).get("resourceVersion")
            replicas = (scale.get("spec") or {}).get("replicas")
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
            obj.setdefault("spec", {})["replicas"] = replicas
            if sent_version:
                obj["metadata"]["resourceVersion"] = sent_version  # The store turns a stale one into a 409.
            return obj

        return self.store.update(
            rtype, namespace, name, to_deployment, context, subresource="scale", verb=verb
        )

    def _delete_collection(
        self, request: web.Request, rtype: Any, namespace: str | None, context: WriteContext
    ) -> web.Response:
        labels, fields = self._selectors(request)
        items, version = self.store.list_objects(rtype, namespace, labels, fields)
        deleted = []
        for obj in items:
            try:
                deleted.append(
                    self.store.delete(
                        rtype, obj["metadata"].get("namespace"), obj["metadata"]["name"], context
                    )
                )
            except ApiError as error:
                if error.code != 404:  # Gone meanwhile (e.g. garbage-collected): nothing left to do.
                    raise
        return _json(
            {
                "kind": f"{rtype.kind}List",
                "apiVersion": rtype.api_version,
                "metadata": {"resourceVersion": str(version)},
                "items": [self._present(rtype, obj) for obj in deleted],
            }
        )

    # ------------------------------------------------------------------ watches

    async def _watch(self, request: web.Request, rtype: Any, namespace: str | None) -> web.StreamResponse:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, int, Any]] = asyncio.Queue()

        def deliver(item: tuple[str, int, Any]) -> None:
            # Called from whichever thread wrote; the queue belongs to this loop.
            with contextlib.suppress(RuntimeError):  # A closed loop: the server is gone, nobody listens.
                loop.call_soon_threadsafe(queue.put_nowait, item)

        labels, fields = self._selectors(request)
        query = request.query
        initial_events = query.get("sendInitialEvents") == "true"
        bookmarks = query.get("allowWatchBookmarks") in ("true", "1")
        timeout = float(query["timeoutSeconds"]) if query.get("timeoutSeconds") else None
        since = None if initial_events else query.get("resourceVersion")

        response = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)

        async def send(event_type: str, obj: Mapping[str, Any]) -> None:
            line = json.dumps({"type": event_type, "object": obj}) + "\n"
            await response.write(line.encode())

        def bookmark(version: int, initial_end: bool = False) -> Obj:
            metadata: Obj = {"resourceVersion": str(version)}
            if initial_end:
                metadata["annotations"] = {"k8s.io/initial-events-end": "true"}
            return {"kind": rtype.kind, "apiVersion": rtype.api_version, "metadata": metadata}

        try:
            backlog, watcher, progress = self.store.watch(rtype, namespace, labels, fields, since, deliver)
        except ApiError as error:
            # Kubernetes answers a watch from a compacted version with 200 and an ERROR event.
            await send("ERROR", error.status())
            await response.write_eof()
            return response
        try:
            for _, (event_type, obj) in backlog:
                await send(event_type, self._present(rtype, obj))
            if initial_events and bookmarks:
                await send("BOOKMARK", bookmark(progress, initial_end=True))
            deadline = loop.time() + timeout if timeout else None
            last_bookmark = loop.time()
            while True:
                now = loop.time()
                wait = 1.0
                if deadline is not None:
                    if now >= deadline:
                        break
                    wait = min(wait, deadline - now)
                try:
                    kind, version, payload = await asyncio.wait_for(queue.get(), wait)
                except TimeoutError:
                    if request.transport is None or request.transport.is_closing():
                        break  # The client went away; aiohttp does not cancel idle handlers.
                    if bookmarks and loop.time() - last_bookmark >= self.bookmark_interval:
                        await send("BOOKMARK", bookmark(progress))
                        last_bookmark = loop.time()
                    continue
                if kind == "close":
                    if payload is not None:
                        await send("ERROR", payload)
                    break
                progress = max(progress, version)
                if kind == "event":
                    event_type, obj = payload
                    await send(event_type, self._present(rtype, obj))
        except (ConnectionResetError, ConnectionError):
            pass
        finally:
            self.store.unwatch(watcher)
        with contextlib.suppress(ConnectionResetError, ConnectionError):
            await response.write_eof()
        return response


def _with_body(context: WriteContext, body: Any) -> WriteContext:
    return WriteContext(
        actor=context.actor,
        method=context.method,
        path=context.path,
        content_type=context.content_type,
        body=body,
        dry_run=context.dry_run,
    )
