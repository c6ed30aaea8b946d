"""A real Prometheus server for tests, scraping real ``prometheus_client`` exporters that play pods.

Every exporter (:class:`PodExporter`) is a ``prometheus_client`` registry served over HTTP on 127.0.0.1 by a
thread; Prometheus scrapes it every second with the target labels Kubernetes service discovery would give
the pod (``namespace``, ``pod``). The server is the machine's own ``prometheus`` binary
(``scripts/install-test-deps.sh`` installs it; TOOLING.md has the recipe), run on a free loopback port with
its data in a temporary directory that survives :meth:`PrometheusServer.restart`.

Prometheus is ready in under a second but scrapes its targets only ~6 s after start (its scrape manager
applies target updates every 5 s): start one server per test module, not per test. Every wait here has a
timeout and fails with the server's log tail.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import json
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, start_http_server

SCRAPE_INTERVAL = "1s"
READY_TIMEOUT = 15.0  # seconds for /-/ready after (re)start; it is well under 1 s on these machines
FIRST_SAMPLE_TIMEOUT = 20.0  # seconds for every target's first scrape (about 6 s observed)
STOP_TIMEOUT = 10.0
START_ATTEMPTS = 5  # a free port can be taken between choosing it and binding it: retry on another


class PrometheusServerError(RuntimeError):
    """The test Prometheus could not be started or did not become ready; the message has its log's tail."""


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def prometheus_binary() -> str:
    """The ``prometheus`` executable, or an error that says how to install it."""
    found = shutil.which("prometheus")
    if not found:
        raise PrometheusServerError(
            "no prometheus binary: run scripts/install-test-deps.sh (apt-get install prometheus, see TOOLING.md)"
        )
    return found


class PodExporter:
    """One pod's metrics endpoint: a registry of its own, served on a loopback port by a daemon thread."""

    def __init__(self, namespace: str, pod: str) -> None:
        self.namespace = namespace
        self.pod = pod
        self.registry = CollectorRegistry()
        self._gauges: dict[str, Gauge] = {}
        self._lock = threading.Lock()
        self.port = 0
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def start(self) -> PodExporter:
        """Serve ``/metrics`` on 127.0.0.1 (a free port)."""
        self._server, self._thread = start_http_server(0, addr="127.0.0.1", registry=self.registry)
        self.port = int(self._server.server_address[1])
        return self

    def stop(self) -> None:
        """Stop serving (the pod is gone); safe to call twice."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def target_labels(self) -> dict[str, str]:
        """The labels Kubernetes service discovery (relabelled as kube-prometheus does) gives the pod."""
        return {"namespace": self.namespace, "pod": self.pod}

    def gauge(self, name: str, documentation: str = "", labelnames: Iterable[str] = ()) -> Gauge:
        """The gauge called ``name`` in this pod's registry, created on first use."""
        with self._lock:
            if name not in self._gauges:
                self._gauges[name] = Gauge(
                    name, documentation or name, list(labelnames), registry=self.registry
                )
            return self._gauges[name]

    def set(self, metric: str, value: float, /, **labels: str) -> None:
        """Set a gauge (created with these label names on first use) to ``value``."""
        gauge = self.gauge(metric, labelnames=sorted(labels))
        (gauge.labels(**labels) if labels else gauge).set(value)


@dataclass
class PrometheusServer:
    """One Prometheus process on 127.0.0.1 scraping ``targets`` every second; data kept across restarts."""

    targets: list[PodExporter] = field(default_factory=list)
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="poolbudget-prometheus-")))
    port: int = 0
    # Prometheus' own --web.config.file (tls_server_config, basic_auth_users), and what this harness's requests
    # need to pass it: the CA of the server's certificate and the user and password.
    web_config: dict[str, Any] | None = None
    ca_file: Path | None = None
    basic_auth: tuple[str, str] | None = None
    _process: subprocess.Popen[bytes] | None = None
    _log: Any = None

    @property
    def url(self) -> str:
        scheme = "https" if (self.web_config or {}).get("tls_server_config") else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    def _get(self, path: str, timeout: float) -> Any:
        request = urllib.request.Request(self.url + path)
        if self.basic_auth is not None:
            token = base64.b64encode(":".join(self.basic_auth).encode()).decode()
            request.add_header("Authorization", f"Basic {token}")
        context = ssl.create_default_context(cafile=str(self.ca_file)) if self.ca_file else None
        return urllib.request.urlopen(request, timeout=timeout, context=context)

    @property
    def config_file(self) -> Path:
        return self.root / "prometheus.yml"

    @property
    def log_file(self) -> Path:
        return self.root / "prometheus.log"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def _write_config(self) -> None:
        # JSON is YAML: no YAML library needed to write the config.
        config = {
            "global": {"scrape_interval": SCRAPE_INTERVAL, "scrape_timeout": SCRAPE_INTERVAL},
            "scrape_configs": [
                {
                    "job_name": "pods",
                    "static_configs": [
                        {"targets": [t.address], "labels": t.target_labels} for t in self.targets
                    ],
                }
            ],
        }
        self.config_file.write_text(json.dumps(config, indent=2))

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def start(self) -> PrometheusServer:
        """Start the process (a new port the first time, the same port after :meth:`stop`) and wait for /-/ready."""
        self._write_config()
        failure = ""
        for _ in range(START_ATTEMPTS):
            if not self.port or failure:
                self.port = free_port()
            self._log = self.log_file.open("ab")
            # Its log goes to a file: a process that holds our pipes open can hang the test run.
            self._process = subprocess.Popen(
                [
                    prometheus_binary(),
                    f"--config.file={self.config_file}",
                    f"--storage.tsdb.path={self.root / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--log.level=warn",
                    *self._web_config_args(),
                ],
                stdout=self._log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.root,
            )
            try:
                self.wait_ready()
                return self
            except PrometheusServerError as exc:
                failure = str(exc)
                self.stop()
        raise PrometheusServerError(failure)

    def _web_config_args(self) -> list[str]:
        if self.web_config is None:
            return []
        path = self.root / "web.yml"
        path.write_text(json.dumps(self.web_config))  # JSON is YAML
        return [f"--web.config.file={path}"]

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        """Poll ``/-/ready`` until it answers 200, the process exits, or ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process is None or self._process.poll() is not None:
                raise PrometheusServerError(f"prometheus exited at start:\n{self.log_tail()}")
            with (
                contextlib.suppress(OSError),
                self._get("/-/ready", timeout=1.0) as answer,
            ):
                if answer.status == 200:
                    return
            time.sleep(0.05)
        raise PrometheusServerError(f"prometheus not ready within {timeout:g}s:\n{self.log_tail()}")

    def stop(self) -> None:
        """Stop the process (SIGTERM, then SIGKILL after a timeout); the data directory stays. Safe twice."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=STOP_TIMEOUT)
        if self._log is not None:
            self._log.close()
            self._log = None

    def restart(self) -> None:
        """Stop and start again on the same port with the same data (as a Prometheus pod that restarts)."""
        self.stop()
        self.start()

    def reload(self, targets: list[PodExporter]) -> None:
        """Scrape ``targets`` instead (SIGHUP re-reads the config; new targets need ~5 s to be scraped)."""
        self.targets = list(targets)
        self._write_config()
        if self._process is not None:
            self._process.send_signal(signal.SIGHUP)

    def close(self) -> None:
        """Stop and delete the data directory."""
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def query(self, promql: str, timeout: float = 5.0) -> list[dict[str, Any]]:
        """An instant query straight over HTTP (the fixture does not depend on the code under test)."""
        with self._get("/api/v1/query?" + urllib.parse.urlencode({"query": promql}), timeout) as answer:
            body: dict[str, Any] = json.loads(answer.read())
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def wait_for(
        self,
        promql: str,
        predicate: Callable[[list[dict[str, Any]]], bool],
        timeout: float = FIRST_SAMPLE_TIMEOUT,
    ) -> list[dict[str, Any]]:
        """Poll an instant query until ``predicate`` holds on its result; TimeoutError with the last result."""
        deadline = time.monotonic() + timeout
        result: list[dict[str, Any]] = []
        while True:
            with contextlib.suppress(OSError, urllib.error.URLError, ValueError, KeyError):
                result = self.query(promql)
                if predicate(result):
                    return result
            if time.monotonic() > deadline:
                raise TimeoutError(f"{promql!r} did not match within {timeout:g}s; last result {result}")
            time.sleep(0.2)

    def wait_for_targets(self, timeout: float = FIRST_SAMPLE_TIMEOUT) -> None:
        """Wait until every target has been scraped successfully at least once."""
        expected = len(self.targets)
        self.wait_for("up == 1", lambda result: len(result) >= expected, timeout)


def start_pods(namespace: str, deployment: str, count: int) -> list[PodExporter]:
    """``count`` exporters named like the pods of a Deployment (``<deployment>-<hash>-<suffix>``)."""
    return [PodExporter(namespace, f"{deployment}-7d9f8b6c5d-{i:05d}").start() for i in range(count)]


def start_prometheus(targets: list[PodExporter]) -> PrometheusServer:
    """A running server scraping ``targets``, every one scraped once; :meth:`PrometheusServer.close` it."""
    server = PrometheusServer(targets=list(targets)).start()
    atexit.register(server.close)
    try:
        server.wait_for_targets()
    except BaseException:
        server.close()
        raise
    return server


def stop_pods(pods: Iterable[PodExporter]) -> None:
    """Stop exporters in parallel: each waits up to half a second for its serving loop to notice."""
    stoppers = [threading.Thread(target=pod.stop, daemon=True) for pod in pods]
    for stopper in stoppers:
        stopper.start()
    for stopper in stoppers:
        stopper.join(timeout=STOP_TIMEOUT)


def labels_of(result: list[dict[str, Any]]) -> list[Mapping[str, str]]:
    """The label sets of an instant query's result, for assertions and messages."""
    return [item["metric"] for item in result]
