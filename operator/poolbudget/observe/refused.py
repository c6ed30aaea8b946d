"""A refused Deployment (its annotations or spec do not parse, its profile is unknown...) that still carries
poolbudget's settings keeps its pools: what it can hold, read from the object as it is, and how its refusal reads.

Pure: the round passes in the raw objects and the pods' facts.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from poolbudget.api.annotations import STAMP_CONNECTIONS
from poolbudget.api.models import SizingSpec
from poolbudget.api.objects import Obj
from poolbudget.observe.objects import annotations_of, mapping, spec_of, stamp_of, status_of, template_of
from poolbudget.observe.pods import PodFacts
from poolbudget.planning.budget import Refusal
from poolbudget.planning.sizing import hpa_replicas, peak_pods


def template_stamp(deployment: Obj) -> int | None:
    """Connections per pod the pod template's stamp declares (what poolbudget last wrote), if any."""
    return stamp_of(annotations_of(template_of(deployment)), STAMP_CONNECTIONS)


def raw_peak_pods(deployment: Obj, hpa_replicas: int | None, sizing: SizingSpec) -> int:
    """The most pods a Deployment can run at once, read from the object as it is (it may not parse: that can
    be why it was refused), with the same rule as the plan's; a maxSurge that does not parse counts as 25%."""
    spec = spec_of(deployment)
    replicas = spec.get("replicas")
    strategy = mapping(spec.get("strategy"))
    max_surge = mapping(strategy.get("rollingUpdate")).get("maxSurge")
    if not isinstance(max_surge, int | str) or isinstance(max_surge, bool):
        max_surge = None
    arguments = (
        replicas if isinstance(replicas, int) and not isinstance(replicas, bool) and replicas >= 0 else None,
        str(strategy.get("type") or "RollingUpdate"),
    )
    try:
        pods, _ = peak_pods(*arguments, max_surge, hpa_replicas, sizing.count_surge, sizing.rollout_overlap)
    except ValueError:
        pods, _ = peak_pods(*arguments, None, hpa_replicas, sizing.count_surge, sizing.rollout_overlap)
    return pods


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def replicas_from_hpa(hpas: Iterable[Obj], mode: str) -> int | None:
    """The replicas an HPA targeting the Deployment sizes it for (the rule ``manage`` uses), if one does."""
    for hpa in hpas:
        max_replicas = _count(spec_of(hpa).get("maxReplicas"))
        replicas = hpa_replicas(mode, max_replicas, _count(status_of(hpa).get("currentReplicas")))
        if replicas is not None:
            return replicas
    return None


def refused_footprint(
    deployment: Obj, pods: Iterable[PodFacts], hpa_replicas: int | None, sizing: SizingSpec
) -> int:
    """Connections a refused Deployment still at poolbudget's settings can hold: the larger of what its pods hold
    now and its stamp times its peak pods (a rollout of its own may surge it while poolbudget cannot act).

    Its pods carry the stamp; one that does not (started before poolbudget's first write) is counted at the
    template's stamp, as its env cannot be read without a profile, and the profile may be what is wrong.
    """
    per_pod = template_stamp(deployment)
    observed = sum(p.stamp if p.stamp is not None else (per_pod or 0) for p in pods)
    peak = per_pod * raw_peak_pods(deployment, hpa_replicas, sizing) if per_pod is not None else 0
    return max(observed, peak)


def still_counted(refusal: Refusal, deployment: Obj) -> Refusal:
    """The refusal of a Deployment that keeps poolbudget's settings: say it still counts and stays as it is."""
    per_pod = template_stamp(deployment)
    settings = f" ({per_pod} connections per pod)" if per_pod is not None else ""
    return Refusal(
        refusal.namespace,
        refusal.name,
        f"{refusal.message}; it is still counted at its current settings{settings}, and poolbudget will not "
        "change it until the annotation is fixed",
    )
