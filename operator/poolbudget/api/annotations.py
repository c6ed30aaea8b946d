"""Every name poolbudget reads or writes on Kubernetes objects, and the application names it uses in PostgreSQL.

The one home of these strings: the opt-in annotations users write on a Deployment, the ones poolbudget writes on
it and on its pod template, the env entry that names a Deployment's connections in ``pg_stat_activity``, and the
name of the operator's own connections.
"""

from __future__ import annotations

ANNOTATION_PREFIX = "poolbudget.io/"

# Written by users on a Deployment: the opt-in and its settings.
BUDGET = ANNOTATION_PREFIX + "budget"
PROFILE = ANNOTATION_PREFIX + "profile"
CONTAINER = ANNOTATION_PREFIX + "container"
PROCESSES = ANNOTATION_PREFIX + "processes"
WEIGHT = ANNOTATION_PREFIX + "weight"
MIN_CONNECTIONS = ANNOTATION_PREFIX + "min-connections"
MAX_CONNECTIONS = ANNOTATION_PREFIX + "max-connections"
DEMAND_QUERY = ANNOTATION_PREFIX + "demand-query"
DELIVERY = ANNOTATION_PREFIX + "delivery"  # live | env: overrides the budget's spec.delivery.mode

# Written by poolbudget on the Deployment (metadata): which budget manages it, what it overwrote, when it last
# rolled it.
MANAGED_BY = ANNOTATION_PREFIX + "managed-by"
ORIGINAL_ENV = ANNOTATION_PREFIX + "original-env"
ROLLED_AT = ANNOTATION_PREFIX + "rolled-at"
# Live delivery fell back to env for this Deployment, and why (removed by hand to try live again).
LIVE_FALLBACK = ANNOTATION_PREFIX + "live-fallback"
# On the pod template, hence on every pod: the allotment the pod starts with, and from which budget.
STAMP_CONNECTIONS = ANNOTATION_PREFIX + "connections-per-pod"
STAMP_BUDGET = ANNOTATION_PREFIX + "budget"
# On the pod template in live mode ("live"): the pod's processes follow their allotment file.
STAMP_DELIVERY = ANNOTATION_PREFIX + "delivery"
# On each pod in live mode: its allotment (JSON), projected into the pod by a downward-API volume.
ALLOTMENT = ANNOTATION_PREFIX + "allotment"

DEPLOYMENT_ANNOTATIONS = (MANAGED_BY, ORIGINAL_ENV, ROLLED_AT)
TEMPLATE_ANNOTATIONS = (STAMP_CONNECTIONS, STAMP_BUDGET, STAMP_DELIVERY)

# Live delivery's additions to the pod template: the volume, where it is mounted, and the env the helper reads.
ALLOTMENT_VOLUME = "poolbudget-allotment"
ALLOTMENT_MOUNT_PATH = "/var/run/poolbudget"
ALLOTMENT_ITEM = "allotment"
ALLOTMENT_FILE_ENV = "POOLBUDGET_ALLOTMENT_FILE"
POD_NAME_ENV = "POD_NAME"
POD_UID_ENV = "POD_UID"

# kopf's finalizer on PoolBudgets (the only objects kopf marks).
FINALIZER = ANNOTATION_PREFIX + "finalizer"

# libpq reads it as application_name: pg_stat_activity then says which Deployment holds which connection.
APPLICATION_NAME_ENV = "PGAPPNAME"
# What the operator's own short-lived connections are called; they are never counted as unmanaged.
OPERATOR_APPLICATION_NAME = "poolbudget-operator"
