"""Delivery by live allotments: what a live Deployment's pod template carries, and the allotment of each pod.

The template gets, in the named containers, the profile's env at the **floor** (what a pod runs at before its
first allotment), ``POOLBUDGET_ALLOTMENT_FILE`` pointing at the projected annotation, and ``POD_NAME`` /
``POD_UID`` from the downward API where the app has not set them; ``envpatch`` adds the volume and its mount.
After that one rollout, each pod's size is a patch of its own annotation.
"""

from __future__ import annotations

from poolbudget.api.allotment import PodAllotment, format_allotment
from poolbudget.api.annotations import (
    ALLOTMENT,
    ALLOTMENT_FILE_ENV,
    ALLOTMENT_ITEM,
    ALLOTMENT_MOUNT_PATH,
    POD_NAME_ENV,
    POD_UID_ENV,
)
from poolbudget.api.models import PoolBudget
from poolbudget.api.objects import Obj
from poolbudget.delivery.envpatch import Patch, unless_set
from poolbudget.planning.budget import Managed
from poolbudget.profiles import PoolSettings

ALLOTMENT_FILE = f"{ALLOTMENT_MOUNT_PATH}/{ALLOTMENT_ITEM}"

_POD_FIELDS: dict[str, str | Patch] = {
    POD_NAME_ENV: {"valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}}},
    POD_UID_ENV: {"valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.uid"}}},
}


def floor_settings(budget: PoolBudget) -> PoolSettings:
    """One pool at the floor: ``floorPerProcess`` connections, no overflow."""
    d = budget.spec.defaults
    return PoolSettings(
        budget.spec.delivery.floor_per_process, 0, d.pool_timeout, d.pool_recycle, d.pool_pre_ping
    )


def floor_per_pod(budget: PoolBudget, managed: Managed) -> int:
    """Connections one pod opens at the floor: every process and pool of it."""
    w = managed.workload
    return w.processes_per_pod * w.pools_per_process * budget.spec.delivery.floor_per_process


def live_env(budget: PoolBudget, managed: Managed, deployment: Obj) -> dict[str, dict[str, str | Patch]]:
    """Per named container, the env entries of a live template."""
    settings = floor_settings(budget)
    desired: dict[str, dict[str, str | Patch]] = {
        c.name: {**managed.profile.render(settings, c.literal_env()), ALLOTMENT_FILE_ENV: ALLOTMENT_FILE}
        for c in managed.containers
    }
    return unless_set(desired, deployment, _POD_FIELDS)


def allotment_patch(allotment: PodAllotment) -> Patch:
    """The pod patch that writes an allotment (a merge of one annotation: nothing else of the pod is touched)."""
    return {"metadata": {"annotations": {ALLOTMENT: format_allotment(allotment)}}}
