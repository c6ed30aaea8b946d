"""The operator at fleet scale on the real control plane: 2,000 opted-in Deployments (about 6,000 pods on kwok
nodes) across 50 namespaces and 3 budgets, with the chart's ServiceAccount, measured from the API server's audit log.

- peak RSS of the operator process (VmHWM, and VmRSS sampled every 0.5 s);
- first convergence: from the operator's start to every budget Ready and every Deployment sized and rolled out;
- steady state: the requests the operator sends per minute when nothing changes (its reads are in the audit log
  because it runs as a ServiceAccount outside kube-system; watches count once, when they are opened);
- a burst of 200 scale events (replicas 3 -> 4): from each event to the operator's first write for its budget
  (status or Deployment patch) and to its first Deployment patch, p50/p99; API writes per event;
- restart on the full fleet: from the new process's start to a round of every budget, and the writes it made.

Run from the repository root (the control plane comes from scripts/build-kube.sh):
``python -m bench.kube_fleet`` (``--deployments``, ``--events``, ``--json``, ``--plot``). About 15 minutes.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kubernetes
import yaml

from tests.helm import CHART, Helm, find_helm
from tests.kube.controlplane import ControlPlane
from tests.kube.fixtures import KubeCluster, install_crds
from tests.kube.operator import KubeOperator

OPERATOR_NAMESPACE = "poolbudget-system"
SERVICE_ACCOUNT = "poolbudget"
USER = f"system:serviceaccount:{OPERATOR_NAMESPACE}:{SERVICE_ACCOUNT}"


@dataclass
class RssSampler:
    """VmRSS of one process every half second, in a thread; VmHWM (the kernel's peak) at the end."""

    pid: int
    samples: list[tuple[float, float]] = field(default_factory=list)  # (monotonic, MB)
    peak_mb: float = 0.0
    _stop: threading.Event = field(default_factory=threading.Event)

    def _read(self, key: str) -> float | None:
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024
        except OSError:
            return None
        return None

    def run(self) -> None:
        while not self._stop.wait(0.5):
            rss = self._read("VmRSS")
            if rss is None:
                return
            self.samples.append((time.monotonic(), rss))
            self.peak_mb = max(self.peak_mb, self._read("VmHWM") or 0.0)

    def __enter__(self) -> RssSampler:
        threading.Thread(target=self.run, daemon=True).start()
        return self

    def __exit__(self, *_: object) -> None:
        self.peak_mb = max(self.peak_mb, self._read("VmHWM") or 0.0)
        self._stop.set()


def timestamp(text: str) -> float:
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def audit_entries(path: Path, since: int) -> Iterator[dict[str, Any]]:
    with path.open("rb") as log:
        log.seek(since)
        for line in log:
            yield json.loads(line)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summary(latencies: list[float]) -> dict[str, float] | None:
    if not latencies:
        return None
    return {"p50": round(percentile(latencies, 0.5), 3), "p99": round(percentile(latencies, 0.99), 3),
            "max": round(max(latencies), 3), "events": len(latencies)}  # fmt: skip


class Fleet:
    def __init__(
        self, kube: KubeCluster, deployments: int, namespaces: int, budgets: int, replicas: int
    ) -> None:
        self.kube, self.count, self.namespaces, self.budgets, self.replicas = (
            kube, deployments, namespaces, budgets, replicas,
        )  # fmt: skip
        client = kubernetes.config.new_client_from_config(config_file=str(kube.kubeconfig))
        self.core, self.apps = kubernetes.client.CoreV1Api(client), kubernetes.client.AppsV1Api(client)

    def name(self, i: int) -> tuple[str, str, str]:
        """(namespace, name, budget) of Deployment i."""
        return f"fleet-{i % self.namespaces:02d}", f"app-{i:04d}", f"fleet-{i % self.budgets}"

    def create(self) -> None:
        per_budget = -(-self.count // self.budgets)
        pods = self.replicas + -(-self.replicas // 4)  # replicas + 25% surge, rounded up
        # Room for about 5 connections per process: the fill is below everyone's maximum, so events move it.
        budgets = [{"apiVersion": "poolbudget.io/v1alpha1", "kind": "PoolBudget", "metadata": {"name": f"fleet-{b}"},
                    "spec": {"database": {"maxConnections": per_budget * pods * 5 + 3}}} for b in range(self.budgets)]  # fmt: skip
        namespaces = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": f"fleet-{n:02d}"}}
                      for n in range(self.namespaces)]  # fmt: skip
        self.kube.kubectl("create", "-f", "-", input=yaml.safe_dump_all(budgets + namespaces))
        for start in range(0, self.count, 100):
            documents = []
            for i in range(start, min(start + 100, self.count)):
                namespace, name, budget = self.name(i)
                documents.append({
                    "apiVersion": "apps/v1", "kind": "Deployment",
                    "metadata": {"name": name, "namespace": namespace, "annotations": {"poolbudget.io/budget": budget}},
                    "spec": {"replicas": self.replicas, "selector": {"matchLabels": {"app": name}},
                             "template": {"metadata": {"labels": {"app": name}},
                                          "spec": {"terminationGracePeriodSeconds": 2,
                                                   "containers": [{"name": "app", "image": "example.com/app:1.0"}]}}},
                })  # fmt: skip
            self.kube.kubectl("create", "-f", "-", input=yaml.safe_dump_all(documents))

    def deployments(self) -> list[Any]:
        items, token = [], None
        while True:
            page = self.apps.list_deployment_for_all_namespaces(
                limit=500, _continue=token, _request_timeout=60
            )
            items += [d for d in page.items if d.metadata.namespace.startswith("fleet-")]
            token = page.metadata._continue
            if not token:
                return items

    def settled(self, sized: bool) -> tuple[bool, str]:
        """Every Deployment rolled out (and sized, when asked) and every budget Ready."""
        waiting = 0
        for d in self.deployments():
            status, env = d.status, d.spec.template.spec.containers[0].env or []
            done = (status.observed_generation == d.metadata.generation
                    and (status.updated_replicas, status.ready_replicas, status.replicas) == (d.spec.replicas,) * 3)  # fmt: skip
            if not done or (sized and not any(e.name == "DB_POOL_SIZE" for e in env)):
                waiting += 1
        ready = 0
        for b in range(self.budgets):
            budget = self.kube.get("poolbudget", f"fleet-{b}") or {}
            conditions = (budget.get("status") or {}).get("conditions") or []
            ready += any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)
        return waiting == 0 and (
            not sized or ready == self.budgets
        ), f"{waiting} Deployments waiting, {ready} Ready"

    def wait(self, sized: bool, timeout: float) -> float:
        started = time.monotonic()
        while True:
            done, state = self.settled(sized)
            if done:
                return time.monotonic() - started
            if time.monotonic() - started > timeout:
                raise TimeoutError(f"not settled after {timeout:.0f} s: {state}")
            time.sleep(2)


def install_chart(kube: KubeCluster, workdir: Path) -> Path:
    helm = Helm(find_helm(), workdir / "helm-home")
    helm.run("install", "poolbudget", str(CHART), "-n", OPERATOR_NAMESPACE, "--create-namespace",
             "--kubeconfig", str(kube.kubeconfig), "--set", "crds.create=false", "--wait=false")  # fmt: skip
    config_path = kube.service_account_kubeconfig(
        OPERATOR_NAMESPACE, SERVICE_ACCOUNT, workdir / "sa.kubeconfig"
    )
    config = yaml.safe_load(config_path.read_text())
    config["contexts"][0]["context"]["namespace"] = OPERATOR_NAMESPACE
    config_path.write_text(yaml.safe_dump(config))
    return config_path


def operator_requests(audit: Path, since: int) -> list[dict[str, Any]]:
    """The operator's requests since an offset, once each (a watch logs a start and, later, a completion)."""
    seen: dict[str, dict[str, Any]] = {}
    for entry in audit_entries(audit, since):
        if (entry.get("user") or {}).get("username") == USER:
            seen.setdefault(entry["auditID"], entry)
    return list(seen.values())


def burst(fleet: Fleet, plane: ControlPlane, events: int) -> dict[str, Any]:
    mark = plane.audit_log.stat().st_size
    chosen = [i * (fleet.count // events) for i in range(events)]
    for i in chosen:
        namespace, name, _ = fleet.name(i)
        fleet.apps.patch_namespaced_deployment_scale(
            name, namespace, {"spec": {"replicas": fleet.replicas + 1}}
        )
    settle = fleet.wait(sized=True, timeout=900)
    budget_of = {fleet.name(i)[1]: fleet.name(i)[2] for i in range(fleet.count)}
    scale_at: dict[str, float] = {}
    writes: list[tuple[float, str, str]] = []  # (time, budget, resource)
    for entry in audit_entries(plane.audit_log, mark):
        if entry.get("stage") != "ResponseComplete" or entry.get("verb") not in ("patch", "update", "create"):
            continue
        ref, user = entry.get("objectRef") or {}, (entry.get("user") or {}).get("username")
        at = timestamp(entry["requestReceivedTimestamp"])
        if ref.get("subresource") == "scale" and user != USER:
            scale_at[ref["name"]] = at
        elif user == USER and ref.get("resource") == "deployments":
            writes.append((at, budget_of.get(ref.get("name", ""), ""), "deployments"))
        elif user == USER and ref.get("resource") == "poolbudgets":
            writes.append((at, ref.get("name", ""), "poolbudgets"))
    first_write, first_patch = [], []
    for name, at in scale_at.items():
        after = [(t, r) for t, b, r in writes if b == budget_of[name] and t >= at]
        if after:
            first_write.append(min(t for t, _ in after) - at)
        patches = [t for t, r in after if r == "deployments"]
        if patches:
            first_patch.append(min(patches) - at)
    posts = sum(
        1
        for e in operator_requests(plane.audit_log, mark)
        if (e.get("objectRef") or {}).get("resource") == "events"
    )
    return {
        "events": len(scale_at),
        "settled_s": round(settle, 1),
        "event_to_first_write_s": summary(first_write),
        "event_to_first_patch_s": summary(first_patch),
        "operator_writes": len(writes),
        "deployment_patches": sum(1 for _, _, r in writes if r == "deployments"),
        "status_writes": sum(1 for _, _, r in writes if r == "poolbudgets"),
        "event_posts": posts,
        "writes_per_event": round(len(writes) / max(1, len(scale_at)), 2),
        "latencies": sorted(round(x, 3) for x in first_write),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--deployments", type=int, default=2000)
    parser.add_argument("--namespaces", type=int, default=50)
    parser.add_argument("--budgets", type=int, default=3)
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--events", type=int, default=200)
    parser.add_argument("--steady-seconds", type=float, default=60.0)
    parser.add_argument("--json", type=Path, default=Path("bench/results/kube_fleet.json"))
    parser.add_argument("--plot", type=Path, default=Path("bench/results/kube_fleet.png"))
    args = parser.parse_args()

    result: dict[str, Any] = {"deployments": args.deployments, "namespaces": args.namespaces, "budgets": args.budgets,
                              "replicas": args.replicas}  # fmt: skip
    rss: dict[str, list[tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="poolbudget-fleet-") as tmp:
        workdir = Path(tmp)
        plane = ControlPlane(workdir / "control-plane", controller_qps=500).start()
        try:
            kube = KubeCluster(plane.kubeconfig, workdir, plane)
            install_crds(kube)
            kubeconfig = install_chart(kube, workdir)
            fleet = Fleet(kube, args.deployments, args.namespaces, args.budgets, args.replicas)
            started = time.monotonic()
            fleet.create()
            fleet.wait(sized=False, timeout=1800)
            result["fleet_up_s"] = round(time.monotonic() - started, 1)
            print(f"fleet of {args.deployments} Deployments up in {result['fleet_up_s']} s", flush=True)

            env = {"POOLBUDGET_NAMESPACE": OPERATOR_NAMESPACE}
            operator = KubeOperator(kubeconfig, workdir, env=env, name="first")
            started = time.monotonic()
            operator.start()
            with RssSampler(operator.pid) as first:
                fleet.wait(sized=True, timeout=1800)
                result["first_convergence_s"] = round(time.monotonic() - started, 1)
                print(f"first convergence {result['first_convergence_s']} s", flush=True)

                mark = plane.audit_log.stat().st_size
                time.sleep(args.steady_seconds)  # a measurement window, not a wait for something to happen
                steady = operator_requests(plane.audit_log, mark)
                per_minute = 60.0 / args.steady_seconds
                result["steady_state_per_minute"] = {
                    "requests": round(len(steady) * per_minute, 1),
                    "writes": round(
                        sum(e["verb"] in ("create", "update", "patch", "delete") for e in steady)
                        * per_minute,
                        1,
                    ),
                    "watches_opened": round(sum(e["verb"] == "watch" for e in steady) * per_minute, 1),
                }
                print(f"steady state {result['steady_state_per_minute']}", flush=True)

                result["burst"] = burst(fleet, plane, args.events)
                print(
                    f"burst { ({k: v for k, v in result['burst'].items() if k != 'latencies'}) }", flush=True
                )
            rss["first run"] = first.samples
            result["first_run_peak_rss_mb"] = round(first.peak_mb, 1)
            operator.stop()

            mark = plane.audit_log.stat().st_size
            second = KubeOperator(kubeconfig, workdir, env=env, name="second")
            started = time.monotonic()
            second.start()
            with RssSampler(second.pid) as restart:
                while not all(second.rounds(f"fleet-{b}") >= 1 for b in range(args.budgets)):
                    if time.monotonic() - started > 600:
                        raise TimeoutError("no round of every budget within 600 s after the restart")
                    time.sleep(0.2)
                result["restart_to_converged_s"] = round(time.monotonic() - started, 1)
                writes = [e for e in operator_requests(plane.audit_log, mark)
                          if e["verb"] in ("create", "update", "patch", "delete")]  # fmt: skip
                result["restart_writes"] = len(writes)
                result["restart_write_kinds"] = sorted(
                    {(e.get("objectRef") or {}).get("resource", "") for e in writes}
                )
            rss["restart"] = restart.samples
            result["restart_peak_rss_mb"] = round(restart.peak_mb, 1)
            second.stop()
            print(
                f"restart {result['restart_to_converged_s']} s, {result['restart_writes']} writes", flush=True
            )
        finally:
            plane.stop()

    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1) + "\n")
    plot(result, rss, args.plot)
    print(json.dumps({k: v for k, v in result.items() if k != "burst"}, indent=1))


def plot(result: dict[str, Any], rss: dict[str, list[tuple[float, float]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (memory, latency) = plt.subplots(1, 2, figsize=(12, 4.5))
    for label, samples in rss.items():
        if samples:
            t0 = samples[0][0]
            memory.plot([t - t0 for t, _ in samples], [mb for _, mb in samples], label=label)
    memory.axhline(300, color="grey", linestyle="--", label="goal 300 MB")
    memory.set(
        title=f"operator RSS, {result['deployments']} Deployments", xlabel="seconds since start", ylabel="MB"
    )
    memory.legend()
    latencies = result["burst"]["latencies"]
    latency.plot(latencies, [(i + 1) / len(latencies) for i in range(len(latencies))])
    latency.axvline(2.0, color="grey", linestyle="--", label="goal p99 2 s")
    latency.set(
        title=f"{result['burst']['events']} scale events: event to the operator's first write",
        xlabel="seconds",
        ylabel="fraction of events",
    )
    latency.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    print(f"plot: {path} ({statistics.median(latencies):.2f} s median)")


if __name__ == "__main__":
    main()
