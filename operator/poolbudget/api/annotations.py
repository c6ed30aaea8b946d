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

# Written by poolbudget on the Deployment (metadata): which budget manages it, what it overwrote, when it last
# rolled it.
MANAGED_BY = ANNOTATION_PREFIX + "managed-by"
ORIGINAL_ENV = ANNOTATION_PREFIX + "original-env"
ROLLED_AT = ANNOTATION_PREFIX + "rolled-at"
# On the pod template, hence on every pod: the allotment the pod starts with, and from which budget.
STAMP_CONNECTIONS = ANNOTATION_PREFIX + "connections-per-pod"
STAMP_BUDGET = ANNOTATION_PREFIX + "budget"

DEPLOYMENT_ANNOTATIONS = (MANAGED_BY, ORIGINAL_ENV, ROLLED_AT)
TEMPLATE_ANNOTATIONS = (STAMP_CONNECTIONS, STAMP_BUDGET)

# kopf's finalizer on PoolBudgets (the only objects kopf marks).
FINALIZER = ANNOTATION_PREFIX + "finalizer"

# libpq reads it as application_name: pg_stat_activity then says which Deployment holds which connection.
APPLICATION_NAME_ENV = "PGAPPNAME"
# What the operator's own short-lived connections are called; they are never counted as unmanaged.
OPERATOR_APPLICATION_NAME = "poolbudget-operator"
