"""A watcher that records every pod event of some namespaces on the real API server and checks the invariant at
each one: the connections every live or terminating pod may open (from its own env) sum to at most ``available``.

It runs in a thread with the ``kubernetes`` client, and survives an API server restart by listing again (a
resumed watch after a restart may get 410 Gone: then the list is the truth).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kubernetes
import urllib3


@dataclass
class Breach:
    at: float
    total: int
    pods: dict[str, int]


@dataclass
class PodWatch:
    kubeconfig: Path
    namespace: str
    available: int
    connections: Callable[[Mapping[str, Any]], int]
    pods: dict[str, int] = field(default_factory=dict)  # pod name -> connections it may open
    events: int = 0
    peak: int = 0
    breaches: list[Breach] = field(default_factory=list)
    restarts: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> PodWatch:
        self._thread = threading.Thread(target=self._run, name=f"pod-watch-{self.namespace}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=15)

    def __enter__(self) -> PodWatch:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def total(self) -> int:
        with self._lock:
            return sum(self.pods.values())

    def _record(self, kind: str, pod: Mapping[str, Any]) -> None:
        name = pod["metadata"]["name"]
        with self._lock:
            self.events += 1
            if kind == "DELETED":
                self.pods.pop(name, None)
            else:
                self.pods[name] = self.connections(pod)
            total = sum(self.pods.values())
            self.peak = max(self.peak, total)
            if total > self.available:
                self.breaches.append(Breach(time.monotonic(), total, dict(self.pods)))

    def _run(self) -> None:
        api = kubernetes.client.CoreV1Api(
            kubernetes.config.new_client_from_config(config_file=str(self.kubeconfig))
        )
        while not self._stop.is_set():
            try:
                listed = api.list_namespaced_pod(self.namespace, _request_timeout=10)
                with self._lock:
                    self.pods.clear()
                for pod in listed.items:
                    self._record("ADDED", api.api_client.sanitize_for_serialization(pod))
                watch = kubernetes.watch.Watch()
                for event in watch.stream(
                    api.list_namespaced_pod,
                    self.namespace,
                    resource_version=listed.metadata.resource_version,
                    timeout_seconds=5,
                    _request_timeout=10,
                ):
                    self._record(event["type"], api.api_client.sanitize_for_serialization(event["object"]))
                    if self._stop.is_set():
                        return
            except (kubernetes.client.ApiException, urllib3.exceptions.HTTPError, OSError, ValueError):
                self.restarts += 1
                self._stop.wait(0.3)
