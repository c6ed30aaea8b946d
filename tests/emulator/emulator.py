"""``KubernetesEmulator``: an in-process emulator of the Kubernetes API over HTTP, for tests only.

It is a test double, not a real API server. Start it as a context manager (or through the ``emulator``
pytest fixture); point kopf, kubectl or the ``kubernetes`` client at ``kubeconfig_path``; read what
everyone wrote in ``history``; force ``410 Gone`` with ``expire_watches()``; turn on the pod simulator
with ``pod_simulator()``.
"""

from __future__ import annotations

import asyncio
import copy
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml
from aiohttp import web

from .pods import PodSimulator
from .resources import ResourceType
from .server import ApiServer
from .store import ApiError, ObjectKey, RejectedWrite, Store, WriteContext, WriteRecord, replay

TEST_CONTEXT = WriteContext(actor="test")


class KubernetesEmulator:
    """An emulator of the Kubernetes API on 127.0.0.1 (plain HTTP, no auth), run in a background thread."""

    def __init__(
        self,
        workdir: str | os.PathLike[str] | None = None,
        *,
        bookmark_interval: float = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._own_workdir = workdir is None
        self.workdir = (
            Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="k8s-emulator-"))
        )
        self.store = Store(clock=clock)
        self.server = ApiServer(self.store, bookmark_interval=bookmark_interval)
        self.url = ""
        self.kubeconfig_path = self.workdir / "kubeconfig"
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._simulator: PodSimulator | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> KubernetesEmulator:
        """Serve on a free port and write the kubeconfig; returns once the port accepts connections."""
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        port = listener.getsockname()[1]
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="k8s-emulator", daemon=True)
        self._thread.start()

        async def serve() -> web.AppRunner:
            runner = web.AppRunner(self.server.application(), access_log=None, shutdown_timeout=1.0)
            await runner.setup()
            await web.SockSite(runner, listener).start()
            return runner

        self._runner = asyncio.run_coroutine_threadsafe(serve(), self._loop).result(timeout=10)
        self.url = f"http://127.0.0.1:{port}"
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.kubeconfig_path.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": "emulator", "cluster": {"server": self.url}}],
                    "users": [{"name": "emulator", "user": {}}],
                    "contexts": [
                        {
                            "name": "emulator",
                            "context": {"cluster": "emulator", "user": "emulator", "namespace": "default"},
                        }
                    ],
                    "current-context": "emulator",
                }
            )
        )
        return self

    def stop(self) -> None:
        """End the watches, the pod simulator and the server; remove the work directory if it is ours."""
        if self._simulator is not None:
            self._simulator.stop()
        self.store.close_watches()
        if self._loop is not None and self._runner is not None:
            try:
                asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=10)
            finally:
                self._loop.call_soon_threadsafe(self._loop.stop)
                if self._thread is not None:
                    self._thread.join(timeout=10)
                self._loop.close()
        self._loop = self._runner = self._thread = None
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> KubernetesEmulator:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # ------------------------------------------------------------------ clients

    def env(self) -> dict[str, str]:
        """The process environment with ``KUBECONFIG`` pointing here (for kopf and subprocesses)."""
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig_path)}

    def kubectl(
        self, *args: str, check: bool = True, input: str | None = None, timeout: float = 30
    ) -> subprocess.CompletedProcess[str]:
        """Run the real kubectl against the emulator, with a private discovery cache."""
        command = [
            "kubectl",
            f"--kubeconfig={self.kubeconfig_path}",
            f"--cache-dir={self.workdir / 'kube-cache'}",
            *args,
        ]
        result = subprocess.run(
            command, input=input, capture_output=True, text=True, timeout=timeout, env=self.env()
        )
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(command)} failed ({result.returncode}):\n{result.stderr}")
        return result

    def api_client(self) -> Any:
        """A ``kubernetes.client.ApiClient`` for the emulator (the package is imported lazily)."""
        import kubernetes

        return kubernetes.config.new_client_from_config(  # type: ignore[no-untyped-call]
            config_file=str(self.kubeconfig_path)
        )

    # ------------------------------------------------------------------ history

    @property
    def history(self) -> list[WriteRecord]:
        """Every accepted write in order (no-ops included, with ``event=None``); a copy of the list."""
        with self.store.lock:
            return list(self.store.history)

    @property
    def rejected(self) -> list[RejectedWrite]:
        """Refused writes (409s, 422s ...), e.g. kopf's optimistic-concurrency JSON patches."""
        with self.store.lock:
            return list(self.store.rejected)

    def mark(self) -> int:
        """A position in the history; pass it to ``writes(since=...)`` to see only what came after."""
        with self.store.lock:
            return len(self.store.history)

    def writes(
        self,
        *,
        since: int = 0,
        plural: str | None = None,
        actor: str | None = None,
        changed_only: bool = False,
    ) -> list[WriteRecord]:
        """The history filtered: by resource plural, by actor prefix (e.g. ``"kopf"``), by effect."""
        return [
            record
            for record in self.history[since:]
            if (plural is None or record.plural == plural)
            and (actor is None or record.actor.startswith(actor))
            and (record.changed or not changed_only)
        ]

    def replay(self) -> Iterator[tuple[WriteRecord, dict[ObjectKey, Mapping[str, Any]]]]:
        """Each accepted change with the whole state right after it, for invariants at every step."""
        return replay(self.history)

    def expire_watches(self, plural: str | None = None, group: str | None = None) -> int:
        """Force ``410 Gone`` (ERROR event) on open watches so that clients re-list; returns how many."""
        return self.store.expire_watches(group=group, plural=plural)

    # ------------------------------------------------------------------ objects, from tests

    def resource(self, api_version: str, kind_or_plural: str) -> ResourceType:
        """The served type for ``("apps/v1", "Deployment")`` or ``("apps/v1", "deployments")``."""
        group, _, version = api_version.rpartition("/")
        for rtype in self.store.types_in(group, version):
            if kind_or_plural in (rtype.kind, rtype.plural):
                return rtype
        raise LookupError(f"{kind_or_plural} in {api_version} is not served")

    def create(self, obj: Mapping[str, Any], namespace: str | None = None) -> dict[str, Any]:
        """Create an object as a test would (actor ``"test"``); returns a private copy."""
        rtype = self.resource(obj["apiVersion"], obj["kind"])
        return copy.deepcopy(self.store.create(rtype, namespace, dict(obj), TEST_CONTEXT))

    def get(
        self, api_version: str, kind_or_plural: str, name: str, namespace: str | None = None
    ) -> dict[str, Any] | None:
        """A private copy of the object, or None if it does not exist."""
        rtype = self.resource(api_version, kind_or_plural)
        try:
            return copy.deepcopy(self.store.get(rtype, namespace, name))
        except ApiError as error:
            if error.code == 404:
                return None
            raise

    def list_objects(
        self,
        api_version: str,
        kind_or_plural: str,
        namespace: str | None = None,
        label_selector: str | None = None,
    ) -> list[dict[str, Any]]:
        from .selectors import parse_label_selector

        rtype = self.resource(api_version, kind_or_plural)
        items, _ = self.store.list_objects(rtype, namespace, parse_label_selector(label_selector))
        return copy.deepcopy(items)

    def patch(
        self,
        api_version: str,
        kind_or_plural: str,
        name: str,
        patch: Mapping[str, Any],
        namespace: str | None = None,
        subresource: str | None = None,
    ) -> dict[str, Any]:
        """Merge-patch (RFC 7386) an object, or its status with ``subresource="status"``."""
        from .patching import merge_patch

        rtype = self.resource(api_version, kind_or_plural)
        return copy.deepcopy(
            self.store.update(
                rtype,
                namespace,
                name,
                lambda obj: merge_patch(obj, patch),
                TEST_CONTEXT,
                subresource=subresource,
            )
        )

    def delete(
        self, api_version: str, kind_or_plural: str, name: str, namespace: str | None = None
    ) -> dict[str, Any]:
        rtype = self.resource(api_version, kind_or_plural)
        return copy.deepcopy(self.store.delete(rtype, namespace, name, TEST_CONTEXT))

    def create_namespace(self, name: str, labels: Mapping[str, str] | None = None) -> dict[str, Any]:
        return self.create(
            {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {"name": name, "labels": dict(labels or {})},
            }
        )

    def create_from_yaml(self, source: str | os.PathLike[str]) -> list[dict[str, Any]]:
        """Create every document of a YAML file (a path) or text; use kubectl to test kubectl itself."""
        text = Path(source).read_text() if _is_path(source) else str(source)
        return [self.create(doc) for doc in yaml.safe_load_all(text) if doc]

    def register_crd(self, source: str | os.PathLike[str] | Mapping[str, Any]) -> list[ResourceType]:
        """Serve the CRD(s) of a YAML path, YAML text or dict, as if ``kubectl apply``-ed; returns the types."""
        documents = (
            [source]
            if isinstance(source, Mapping)
            else [
                doc
                for doc in yaml.safe_load_all(Path(source).read_text() if _is_path(source) else str(source))
                if doc
            ]
        )
        served = []
        for crd in documents:
            if crd.get("kind") != "CustomResourceDefinition":
                continue
            spec = crd["spec"]
            if (
                self.get("apiextensions.k8s.io/v1", "customresourcedefinitions", crd["metadata"]["name"])
                is None
            ):
                self.create(crd)
            served += self.store.types_for(spec["group"], spec["names"]["plural"])
        return served

    # ------------------------------------------------------------------ pods

    def pod_simulator(
        self,
        *,
        start_delay: float = 0.0,
        termination_delay: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> PodSimulator:
        """Turn on the pod simulator (once); drive it with ``tick()`` or ``start(period)``."""
        if self._simulator is None:
            self._simulator = PodSimulator(
                self.store, start_delay=start_delay, termination_delay=termination_delay, clock=clock
            ).enable()
        return self._simulator


def _is_path(source: str | os.PathLike[str]) -> bool:
    return isinstance(source, os.PathLike) or ("\n" not in str(source) and Path(str(source)).exists())


def wait_until(
    predicate: Callable[[], Any], *, timeout: float = 5.0, interval: float = 0.02, message: str = "condition"
) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)
