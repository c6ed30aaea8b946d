"""The status conditions of a PoolBudget: their types, their statuses and every reason a condition can give.

The one home of these strings: the status model (``api.models.Condition``), the CRD generated from it, the status
the controller writes and the events it posts all take them from here.
"""

from __future__ import annotations

from typing import Literal

ConditionType = Literal[
    "Ready", "Overcommitted", "DatabaseReachable", "MetricsAvailable", "AllotmentsConfirmed", "Invalid"
]
ConditionStatus = Literal["True", "False", "Unknown"]

READY: ConditionType = "Ready"
OVERCOMMITTED: ConditionType = "Overcommitted"
DATABASE_REACHABLE: ConditionType = "DatabaseReachable"
METRICS_AVAILABLE: ConditionType = "MetricsAvailable"
ALLOTMENTS_CONFIRMED: ConditionType = "AllotmentsConfirmed"  # live delivery: every pod applied its allotment
INVALID: ConditionType = "Invalid"
CONDITION_ORDER: tuple[ConditionType, ...] = (
    READY,
    OVERCOMMITTED,
    DATABASE_REACHABLE,
    METRICS_AVAILABLE,
    ALLOTMENTS_CONFIRMED,
    INVALID,
)


class Reason:
    """Condition reasons (CamelCase, as Kubernetes writes them)."""

    BALANCED = "Balanced"
    REBALANCING = "Rebalancing"
    OVERCOMMITTED = "Overcommitted"
    FITS = "Fits"
    INVALID = "InvalidSpec"
    VALID = "Valid"
    CONNECTED = "Connected"
    NOT_CONFIGURED = "NoConnectionSecret"
    LIMITS_UNKNOWN = "LimitsUnknown"
    STATIC = "StaticWeights"
    # AllotmentsConfirmed
    CONFIRMED = "Confirmed"
    PENDING = "Pending"
    UNCONFIRMED = "Unconfirmed"
    NO_LIVE = "NoLiveDeployments"
    # DatabaseReachable=False, and Ready=False while the database cannot be asked.
    DATABASE_UNREACHABLE = "DatabaseUnreachable"
    SECRET_UNAVAILABLE = "SecretUnavailable"
    AUTHENTICATION_FAILED = "AuthenticationFailed"
    UNREACHABLE = "Unreachable"


# MetricsAvailable reasons, most telling first: when several sources fail, the first one here names the condition.
MEASURED = "DemandMeasured"
PARTIAL = "PartialData"
RECOVERING = "Recovering"
NO_DEPLOYMENTS = "NoDeployments"
PROMETHEUS_UNREACHABLE = "PrometheusUnreachable"
PROMETHEUS_URL_INVALID = "PrometheusURLInvalid"
QUERY_FAILED = "QueryFailed"
QUERY_INVALID = "QueryInvalid"
DATABASE_UNREACHABLE = "DatabaseUnreachable"
NO_DATABASE_URL = "NoDatabaseURL"
NO_DATA = "NoData"
DEMAND_FAILURE_ORDER = (
    PROMETHEUS_UNREACHABLE,
    PROMETHEUS_URL_INVALID,
    QUERY_FAILED,
    QUERY_INVALID,
    DATABASE_UNREACHABLE,
    NO_DATABASE_URL,
)
