"""Pods, reduced to the connections they hold: what the operator's pod index keeps of each.

Pure: a pod as the API returns it in, :class:`PodFacts` out.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from poolbudget.api.annotations import ALLOTMENT, STAMP_BUDGET, STAMP_CONNECTIONS, STAMP_DELIVERY
from poolbudget.api.objects import Key, Obj
from poolbudget.observe.objects import env_by_container, mapping, metadata_of, spec_of, stamp_of


@dataclass(frozen=True, slots=True)
class PodFacts:
    """One pod of a Deployment, reduced to what its connections are.

    ``stamp`` is its ``poolbudget.io/connections-per-pod`` annotation (None when it has none); ``env`` holds the
    literal env of each container, kept only for unstamped pods (the stamp says it all otherwise).
    """

    namespace: str
    name: str
    deployment: str
    terminating: bool
    stamp: int | None = None
    budget: str | None = None
    env: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    uid: str = ""
    live: bool = False  # started from a live template: its processes follow the allotment file
    allotment: str | None = None  # its poolbudget.io/allotment annotation, as written

    @property
    def key(self) -> Key:
        return self.namespace, self.deployment


def deployment_of(metadata: Mapping[str, Any]) -> str | None:
    """The Deployment that owns a pod: its ReplicaSet owner's name without the ``-<pod-template-hash>``."""
    template_hash = mapping(metadata.get("labels")).get("pod-template-hash")
    for owner in metadata.get("ownerReferences") or []:
        if owner.get("kind") == "ReplicaSet" and owner.get("controller", True):
            name = str(owner.get("name", ""))
            if template_hash and name.endswith("-" + template_hash):
                return name[: -len(template_hash) - 1]
            return None
    return None


def pod_facts(pod: Obj) -> PodFacts | None:
    """The facts of a pod owned by a Deployment (through its ReplicaSet); None for any other pod."""
    metadata = metadata_of(pod)
    deployment = deployment_of(metadata)
    if deployment is None:
        return None
    annotations = mapping(metadata.get("annotations"))
    stamp = stamp_of(annotations, STAMP_CONNECTIONS)
    return PodFacts(
        namespace=str(metadata.get("namespace", "")),
        name=str(metadata.get("name", "")),
        deployment=deployment,
        terminating=bool(metadata.get("deletionTimestamp")),
        stamp=stamp,
        budget=annotations.get(STAMP_BUDGET),
        env={} if stamp is not None else env_by_container(spec_of(pod)),
        uid=str(metadata.get("uid", "")),
        live=annotations.get(STAMP_DELIVERY) == "live",
        allotment=annotations.get(ALLOTMENT),
    )
