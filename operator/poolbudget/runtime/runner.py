"""Starting the operator: `poolbudget run` and `python -m poolbudget` come here.

Builds the process-wide runtime (the Kubernetes adapter, the metrics, the budgets' loop context), serves the
metrics, and hands over to kopf: cluster-wide or for a list of namespaces, with peering (one active replica)
unless ``--standalone``.
"""

from __future__ import annotations

import logging
import os
import random
import socket
from collections.abc import Sequence
from pathlib import Path

import kopf

from poolbudget import __version__
from poolbudget.adapters.kubernetes import Cluster
from poolbudget.controller.state import Context
from poolbudget.runtime import index_readiness
from poolbudget.runtime.handlers import registry
from poolbudget.runtime.memo import DEFAULT_PEERING_LIFETIME, KopfEvents, Runtime
from poolbudget.runtime.metrics import DEFAULT_PORT, OperatorMetrics

logger = logging.getLogger(__name__)

NAMESPACE_ENV = "POOLBUDGET_NAMESPACE"
METRICS_PORT_ENV = "POOLBUDGET_METRICS_PORT"
PRIORITY_ENV = "POOLBUDGET_PEERING_PRIORITY"
LIFETIME_ENV = "POOLBUDGET_PEERING_LIFETIME"
_SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def operator_namespace() -> str:
    """Where the operator runs (default namespace of connectionSecretRef): env, else the pod's, else default."""
    if os.environ.get(NAMESPACE_ENV):
        return os.environ[NAMESPACE_ENV]
    try:
        return _SERVICE_ACCOUNT_NAMESPACE.read_text().strip() or "default"
    except OSError:
        return "default"


def peering_priority() -> int:
    """kopf pauses every peer that sees another with the same priority: each replica draws its own."""
    configured = os.environ.get(PRIORITY_ENV)
    if configured:
        return int(configured)
    return random.SystemRandom().randint(1, 1_000_000)  # not a secret, only distinct


def peering_lifetime() -> int:
    """How long this replica's peering record stays valid: after a crash, the others take over once it expires."""
    configured = os.environ.get(LIFETIME_ENV)
    if not configured:
        return DEFAULT_PEERING_LIFETIME
    lifetime = int(configured)
    if lifetime < 1:
        raise ValueError(f"{LIFETIME_ENV} must be a positive number of seconds, got {configured!r}")
    return lifetime


def build_runtime(standalone: bool, metrics: OperatorMetrics, priority: int) -> Runtime:
    identity = f"{socket.gethostname()}/{os.getpid()}"
    cluster = Cluster.from_environment(user_agent=f"poolbudget/{__version__} ({identity})")
    context = Context(
        cluster=cluster, events=KopfEvents(), metrics=metrics, operator_namespace=operator_namespace()
    )
    return Runtime(
        cluster=cluster,
        context=context,
        standalone=standalone,
        priority=priority,
        peering_lifetime=peering_lifetime(),
    )


def run_operator(
    namespaces: Sequence[str] = (),
    standalone: bool = False,
    liveness: str | None = None,
    metrics_port: int | None = None,
    verbose: bool = False,
) -> int:
    """Run the operator until it is stopped (SIGINT/SIGTERM). Returns the exit code."""
    kopf.configure(verbose=verbose, log_format=kopf.LogFormat.PLAIN)
    if not verbose:
        # kopf logs every handler call at INFO ("Handler 'pod_changed' succeeded."): one per pod event.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    metrics = OperatorMetrics()
    port = metrics_port if metrics_port is not None else int(os.environ.get(METRICS_PORT_ENV, DEFAULT_PORT))
    if port > 0:
        metrics.serve(port)
    runtime = build_runtime(standalone, metrics, peering_priority())
    logger.info(
        "poolbudget %s: %s, %s",
        __version__,
        "namespaces " + ", ".join(namespaces) if namespaces else "cluster-wide",
        "standalone" if standalone else f"peering {runtime.priority}, lifetime {runtime.peering_lifetime} s",
    )
    index_readiness.install()  # kopf's own startup gate is cubic in the objects: thousands of pods stall it
    kopf.run(
        clusterwide=not namespaces,
        namespaces=list(namespaces),
        standalone=standalone,
        liveness_endpoint=liveness or None,
        memo=kopf.Memo(poolbudget=runtime),
        registry=registry,
    )
    return 0
