"""A stand-in for the kubelet and the containers of kwok's pods (kwok runs none): real app processes per pod.

For every pod of one namespace that kwok runs, :class:`PodProcessStandIn` does what the kubelet and the app's
container would do, as far as connections go:

- it builds the first container's env (literal values, and the downward API's ``fieldRef`` values), and for
  each ``downwardAPI`` volume writes its items the way the kubelet's AtomicWriter does
  (``tests/kubelet_file_stand_in.py``), again whenever the pod's value changes; env values under the volume's
  mountPath point into that directory;
- it starts one real process per worker (``WEB_CONCURRENCY``, default 1) running ``stand_in_app.py``: a real
  pool on the real PostgreSQL, following the file through ``poolbudget_client`` where the app does;
- when the pod is deleted its processes keep running until the pod's ``deletionTimestamp`` (its grace
  period: kwok keeps the pod Terminating until then), then get SIGTERM (they close their pools), SIGKILL 2 s
  later.

It keeps what the processes report: refusals by PostgreSQL, the allotments applied, process starts.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import kubernetes

from tests.kubelet_file_stand_in import KubeletFileStandIn

APP = Path(__file__).with_name("stand_in_app.py")
CLIENT_SRC = Path(__file__).resolve().parents[2] / "client" / "src"
_FIELD = re.compile(r"metadata\.(annotations|labels)\['(.+)'\]")


def _die_with_parent() -> None:
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


@dataclass
class Process:
    index: int
    popen: subprocess.Popen[str]
    applied: list[tuple[float, int, int]] = field(default_factory=list)  # (time, generation, total)


@dataclass
class PodRun:
    """One pod's processes and projected volumes."""

    name: str
    uid: str
    env: dict[str, str]
    volumes: dict[str, tuple[KubeletFileStandIn, str]]  # item path -> (its file, the fieldRef it projects)
    processes: list[Process] = field(default_factory=list)
    stop_at: float | None = None  # wall-clock time of its deletionTimestamp
    stopped: bool = False
    started_at: float = field(default_factory=time.time)

    def floor_total(self) -> int:
        """What a process's pool allows from env alone (before any allotment)."""
        env = self.env
        if "DB_POOL_MAX_SIZE" in env:
            return int(env["DB_POOL_MAX_SIZE"])
        return int(env.get("DB_POOL_SIZE", 5)) + int(env.get("DB_MAX_OVERFLOW", 10))


def _field_value(pod: Mapping[str, Any], path: str) -> str | None:
    metadata = pod["metadata"]
    simple = {"metadata.name": "name", "metadata.namespace": "namespace", "metadata.uid": "uid"}
    if path in simple:
        return str(metadata.get(simple[path], ""))
    found = _FIELD.fullmatch(path)
    if found:
        return (metadata.get(found[1]) or {}).get(found[2])
    return None


class PodProcessStandIn:
    """Real app processes for the kwok pods of ``namespace`` (see the module doc)."""

    def __init__(self, kubeconfig: Path, namespace: str, database_url: str, root: Path) -> None:
        self.namespace = namespace
        self.database_url = database_url
        self.root = root
        self.runs: dict[str, PodRun] = {}  # by pod name
        self.refusals: list[dict[str, Any]] = []
        self.process_starts: dict[str, int] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        config = kubernetes.client.Configuration()
        kubernetes.config.load_kube_config(config_file=str(kubeconfig), client_configuration=config)
        self._core = kubernetes.client.CoreV1Api(kubernetes.client.ApiClient(config))

    # ------------------------------------------------------------------------------------------- lifecycle

    def __enter__(self) -> PodProcessStandIn:
        threading.Thread(target=self._watch, daemon=True).start()
        threading.Thread(target=self._reap, daemon=True).start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        with self._lock:
            runs = list(self.runs.values())
        for run in runs:
            self._stop_run(run)

    def _watch(self) -> None:
        while not self._stop.is_set():
            try:
                listed = self._core.list_namespaced_pod(self.namespace)
                for pod in listed.items:
                    self._sync(self._core.api_client.sanitize_for_serialization(pod))
                stream = kubernetes.watch.Watch().stream(
                    self._core.list_namespaced_pod, self.namespace,
                    resource_version=listed.metadata.resource_version, timeout_seconds=30,
                )  # fmt: skip
                for event in stream:
                    if self._stop.is_set():
                        return
                    pod = self._core.api_client.sanitize_for_serialization(event["object"])
                    if event["type"] == "DELETED":
                        self._gone(pod["metadata"]["name"])
                    else:
                        self._sync(pod)
            except kubernetes.client.exceptions.ApiException:
                time.sleep(0.2)  # e.g. 410 Gone: list again
            except Exception:
                time.sleep(0.2)

    def _reap(self) -> None:
        """Stop the processes of pods whose grace period is over."""
        while not self._stop.wait(0.1):
            now = time.time()
            with self._lock:
                due = [
                    r
                    for r in self.runs.values()
                    if r.stop_at is not None and r.stop_at <= now and not r.stopped
                ]
            for run in due:
                self._stop_run(run)

    # ---------------------------------------------------------------------------------------------- pods

    def _sync(self, pod: dict[str, Any]) -> None:
        name = pod["metadata"]["name"]
        deleting = pod["metadata"].get("deletionTimestamp")
        with self._lock:
            run = self.runs.get(name)
        if run is None:
            if deleting or (pod.get("status") or {}).get("phase") != "Running":
                return
            run = self._start(pod)
        else:
            self._project(run, pod)
        if deleting and run.stop_at is None:
            run.stop_at = datetime.fromisoformat(deleting.replace("Z", "+00:00")).timestamp()

    def _gone(self, name: str) -> None:
        with self._lock:
            run = self.runs.get(name)
        if run is not None:
            self._stop_run(run)

    def _start(self, pod: dict[str, Any]) -> PodRun:
        spec = pod["spec"]
        container = spec["containers"][0]
        directory = self.root / pod["metadata"]["uid"]
        mounts = {m["name"]: m["mountPath"] for m in container.get("volumeMounts") or []}
        volumes: dict[str, tuple[KubeletFileStandIn, str]] = {}
        rewrites: dict[str, str] = {}
        for volume in spec.get("volumes") or []:
            items = (volume.get("downwardAPI") or {}).get("items") or []
            if not items or volume["name"] not in mounts:
                continue
            target = directory / volume["name"]
            rewrites[mounts[volume["name"]]] = str(target)
            for item in items:
                writer = KubeletFileStandIn(target, item["path"])
                volumes[item["path"]] = (writer, item["fieldRef"]["fieldPath"])
        env: dict[str, str] = {}
        for entry in container.get("env") or []:
            if "value" in entry:
                env[entry["name"]] = str(entry["value"])
            elif (entry.get("valueFrom") or {}).get("fieldRef"):
                value = _field_value(pod, entry["valueFrom"]["fieldRef"]["fieldPath"])
                if value is not None:
                    env[entry["name"]] = value
        for key, value in env.items():
            for mount, target in rewrites.items():
                if value == mount or value.startswith(mount + "/"):
                    env[key] = target + value[len(mount) :]
        run = PodRun(pod["metadata"]["name"], pod["metadata"]["uid"], env, volumes)
        self._project(run, pod)
        with self._lock:
            self.runs[run.name] = run
        for index in range(int(env.get("WEB_CONCURRENCY") or 1)):
            self._spawn(run, index)
        return run

    def _project(self, run: PodRun, pod: Mapping[str, Any]) -> None:
        for writer, path in run.volumes.values():
            value = _field_value(pod, path) or ""  # an absent annotation is projected as an empty file
            current = writer.path.read_text() if writer.path.exists() else None
            if current != value:
                writer.write(value)

    def _spawn(self, run: PodRun, index: int) -> None:
        environment = {
            "PATH": os.environ.get("PATH", ""),
            "HOME": os.environ.get("HOME", "/tmp"),
            "PYTHONPATH": os.pathsep.join([str(CLIENT_SRC), os.environ.get("PYTHONPATH", "")]),
            **run.env,
            "STAND_IN_DATABASE_URL": self.database_url,
        }
        popen = subprocess.Popen(
            [sys.executable, str(APP)], env=environment, text=True, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, preexec_fn=_die_with_parent,
        )  # fmt: skip
        process = Process(index, popen)
        with self._lock:
            if index < len(run.processes):
                run.processes[index] = process
            else:
                run.processes.append(process)
            self.process_starts[run.name] = self.process_starts.get(run.name, 0) + 1
        threading.Thread(target=self._read, args=(run, process), daemon=True).start()

    def _read(self, run: PodRun, process: Process) -> None:
        assert process.popen.stdout is not None
        for line in process.popen.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if event.get("event") == "refused":
                with self._lock:
                    self.refusals.append({"pod": run.name, **event})
            elif event.get("event") == "applied":
                process.applied.append((event["t"], event["generation"], event["total"]))

    def _stop_run(self, run: PodRun) -> None:
        with self._lock:
            if run.stopped:
                return
            run.stopped = True
        for process in run.processes:
            if process.popen.poll() is None:
                process.popen.send_signal(signal.SIGCONT)
                process.popen.terminate()
        deadline = time.monotonic() + 2
        for process in run.processes:
            try:
                process.popen.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.popen.kill()
                process.popen.wait()

    # ------------------------------------------------------------------------------------------ for tests

    def pods(self) -> list[str]:
        """Pods whose processes run."""
        with self._lock:
            return sorted(n for n, r in self.runs.items() if not r.stopped)

    def run_of(self, pod: str) -> PodRun:
        with self._lock:
            return self.runs[pod]

    def processes(self, pod: str) -> list[int]:
        return [p.popen.pid for p in self.run_of(pod).processes]

    def limits(self) -> Iterator[tuple[str, int]]:
        """Per running process: its pod, and what its pool may open now (its allotment, else its env)."""
        with self._lock:
            runs = [r for r in self.runs.values() if not r.stopped]
        for run in runs:
            for process in run.processes:
                if process.popen.poll() is None:
                    yield run.name, process.applied[-1][2] if process.applied else run.floor_total()

    def applied(self, pod: str) -> list[int | None]:
        """Per process of the pod, the generation its pool enforces (None: none yet)."""
        return [p.applied[-1][1] if p.applied else None for p in self.run_of(pod).processes]

    def kill_process(self, pod: str, index: int, restart: bool = True) -> None:
        """SIGKILL one worker (an OOM kill), and start another in its place (its master forks a new one)."""
        run = self.run_of(pod)
        run.processes[index].popen.kill()
        run.processes[index].popen.wait()
        if restart:
            self._spawn(run, index)

    def freeze(self, pod: str, frozen: bool = True) -> None:
        """SIGSTOP (or SIGCONT) every process of the pod: it holds its connections and applies nothing."""
        for process in self.run_of(pod).processes:
            process.popen.send_signal(signal.SIGSTOP if frozen else signal.SIGCONT)
