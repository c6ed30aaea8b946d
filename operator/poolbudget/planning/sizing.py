"""How many pods and processes a Deployment can run at once: the multipliers of its pool settings."""

from __future__ import annotations

import math
from collections.abc import Mapping

from poolbudget.api.annotations import PROCESSES

# Kubernetes' default RollingUpdate maxSurge.
DEFAULT_MAX_SURGE = "25%"

# Env variables through which apps declare their worker processes, in the order they are consulted.
WORKER_ENV = ("WEB_CONCURRENCY", "LANGFLOW_WORKERS", "LETTA_UVICORN_WORKERS")


def surge_of(replicas: int, max_surge: int | str | None) -> int:
    """maxSurge as a pod count: a percent of replicas rounded up (as the Deployment controller does)."""
    value = DEFAULT_MAX_SURGE if max_surge is None else max_surge
    if isinstance(value, int):
        return value
    text = value.strip()
    if text.endswith("%"):
        return math.ceil(replicas * int(text[:-1]) / 100)
    return int(text)


def peak_pods(
    replicas: int | None,
    strategy: str | None = "RollingUpdate",
    max_surge: int | str | None = None,
    hpa_max_replicas: int | None = None,
    count_surge: bool = True,
    overlap: bool = False,
) -> tuple[int, str]:
    """The most pods the Deployment can run at once, and why: R + maxSurge(R) for RollingUpdate, R for
    Recreate, where R is spec.replicas (default 1) or the maxReplicas of an HPA that targets it.

    With ``overlap``, a RollingUpdate is sized for R + max(maxSurge, R): every old pod still holding its
    connections while terminating, plus the whole new ReplicaSet (which never exceeds R)."""
    if hpa_max_replicas is not None:
        base, why = hpa_max_replicas, f"HPA maxReplicas {hpa_max_replicas}"
    else:
        base = 1 if replicas is None else replicas
        why = f"{base} replicas"
    if (strategy or "RollingUpdate") == "Recreate" or not count_surge or base == 0:
        return base, why
    surge = surge_of(base, max_surge)
    shown = DEFAULT_MAX_SURGE + " (default)" if max_surge is None else str(max_surge)
    if overlap and surge < base:
        return (
            base + base,
            f"{why} + {base} overlapping old pods (rolloutOverlap; maxSurge {shown} = {surge})",
        )
    return base + surge, f"{why} + maxSurge {shown} = {surge}"


def processes_from_env(env: Mapping[str, str]) -> tuple[int, str] | None:
    """The worker count an app's own env declares, if any literal value does."""
    for name in WORKER_ENV:
        raw = env.get(name)
        if raw is not None and raw.strip().isdigit() and int(raw) > 0:
            return int(raw), name
    return None


def processes_of(declared: int | None, env: Mapping[str, str]) -> tuple[int, str]:
    """A container's worker processes, and why: the ``poolbudget.io/processes`` annotation, else what the
    app's own env declares, else 1."""
    if declared is not None:
        return declared, f"annotation {PROCESSES}"
    return processes_from_env(env) or (1, "default")


def hpa_replicas(
    mode: str, max_replicas: int | None, current_replicas: int | None, replicas: int | None = None
) -> int | None:
    """The replicas an HPA sizes its Deployment for: its ``maxReplicas`` (sizing.hpa: maxReplicas, the peak, so
    scale-ups need no restart), else its ``currentReplicas``, falling back to the Deployment's ``replicas``."""
    if mode == "maxReplicas":
        return max_replicas
    return current_replicas or replicas
