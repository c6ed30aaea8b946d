"""The PoolBudget resource (poolbudget.io/v1alpha1): spec and status as pydantic models.

These models are the single source of truth: the CRD's OpenAPI schema is generated from them (`poolbudget crd`),
and every PoolBudget is validated through them before anything else reads it.
"""

from __future__ import annotations

import re
import string
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

from poolbudget.api.conditions import ConditionStatus, ConditionType

GROUP = "poolbudget.io"
VERSION = "v1alpha1"
KIND = "PoolBudget"
PLURAL = "poolbudgets"
SHORT_NAMES = ("pb",)

# Names the custom-profile templates may use, e.g. "{poolSize}".
TEMPLATE_FIELDS = frozenset({"poolSize", "maxOverflow", "total", "poolTimeout", "poolRecycle"})


class ProfileName:
    """The built-in profiles' names (``profiles/`` implements them)."""

    SQLALCHEMY = "sqlalchemy"
    LANGFLOW = "langflow"
    LETTA = "letta"
    AIRFLOW = "airflow"
    HIKARI = "hikari"
    PSYCOPG_POOL = "psycopg-pool"


BUILTIN_PROFILES = (
    ProfileName.SQLALCHEMY,
    ProfileName.LANGFLOW,
    ProfileName.LETTA,
    ProfileName.AIRFLOW,
    ProfileName.HIKARI,
    ProfileName.PSYCOPG_POOL,
)
DEFAULT_PROFILE = ProfileName.SQLALCHEMY
_DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
_ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
_DURATION = re.compile(r"^[0-9]+[smhd]$")


class Model(BaseModel):
    """camelCase on the wire, snake_case in Python; unknown fields are an error, not silently dropped."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)


class SecretKeyRef(Model):
    name: str = Field(min_length=1, description="Name of the Secret that holds the database URL.")
    namespace: str | None = Field(
        None, description="Namespace of the Secret; defaults to the operator's own namespace."
    )
    key: str = Field("url", min_length=1, description="Key in the Secret whose value is a libpq URL.")


class DatabaseSpec(Model):
    max_connections: Annotated[int, Field(ge=1, le=262143)] | None = Field(
        None,
        description="max_connections to assume when the database cannot be reached (or no secret is given).",
    )
    connection_secret_ref: SecretKeyRef | None = Field(
        None, description="Secret with a URL the operator uses to read the real limits (read-only role)."
    )
    role: str | None = Field(
        None, description="Role whose rolconnlimit also bounds the budget; defaults to the connecting role."
    )
    refresh_seconds: int = Field(60, ge=5, le=86400, description="How often the limits are read again.")

    @model_validator(mode="after")
    def _needs_a_limit(self) -> DatabaseSpec:
        if self.max_connections is None and self.connection_secret_ref is None:
            raise ValueError("set maxConnections, connectionSecretRef, or both")
        return self


class UnmanagedSpec(Model):
    subtract: bool = Field(
        False, description="Subtract client backends that no opted-in Deployment owns (by application_name)."
    )
    margin: int = Field(5, ge=0, description="Connections kept aside on top of the unmanaged ones seen.")


class LabelSelectorRequirement(Model):
    model_config = ConfigDict(populate_by_name=True, extra="forbid", frozen=True)
    key: str = Field(min_length=1)
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    values: list[str] = Field(default_factory=list)


class LabelSelector(Model):
    match_labels: dict[str, str] = Field(default_factory=dict)
    match_expressions: list[LabelSelectorRequirement] = Field(default_factory=list)

    def matches(self, labels: dict[str, str]) -> bool:
        """Kubernetes label-selector semantics (an empty selector matches everything)."""
        if any(labels.get(k) != v for k, v in self.match_labels.items()):
            return False
        for req in self.match_expressions:
            present = req.key in labels
            if req.operator == "In" and labels.get(req.key) not in req.values:
                return False
            if req.operator == "NotIn" and present and labels[req.key] in req.values:
                return False
            if req.operator == "Exists" and not present:
                return False
            if req.operator == "DoesNotExist" and present:
                return False
        return True


class PoolDefaults(Model):
    profile: str = Field(DEFAULT_PROFILE, description="Profile of Deployments without poolbudget.io/profile.")
    min_connections_per_process: int = Field(
        2, ge=1, description="Fewest connections (pool_size + max_overflow) one pool of one process gets."
    )
    max_connections_per_process: int = Field(
        50, ge=1, description="Most connections (pool_size + max_overflow) one pool of one process gets."
    )
    overflow_ratio: float = Field(
        0.5, ge=0, lt=1, description="Share of a process's connections given as max_overflow, not pool_size."
    )
    pool_timeout: int = Field(30, ge=1, description="Seconds an app waits for a pooled connection.")
    pool_recycle: int = Field(1800, ge=-1, description="Seconds after which a pooled connection is replaced.")
    pool_pre_ping: bool = Field(True, description="Test connections before use (profiles that support it).")
    weight: int = Field(
        1, ge=1, le=1000, description="Share weight of Deployments without poolbudget.io/weight."
    )

    @model_validator(mode="after")
    def _min_below_max(self) -> PoolDefaults:
        if self.min_connections_per_process > self.max_connections_per_process:
            raise ValueError("minConnectionsPerProcess must not exceed maxConnectionsPerProcess")
        return self


class SizingSpec(Model):
    count_surge: bool = Field(
        True, description="Count RollingUpdate maxSurge pods (true keeps the invariant during rollouts)."
    )
    hpa: Literal["maxReplicas", "currentReplicas"] = Field(
        "maxReplicas", description="Size HPA-scaled Deployments for maxReplicas (safe) or current replicas."
    )
    rollout_overlap: bool = Field(
        False,
        description="For apps whose terminating pods keep their connections: size RollingUpdate Deployments for "
        "every old and every new pod at once (replicas + max(maxSurge, replicas)), and grow only into room for "
        "all new pods. Off: replicas + maxSurge, safe when pods release their connections as they terminate.",
    )


class EnvTemplate(Model):
    name: str = Field(pattern=_ENV_NAME, description="Env variable to write.")
    value: str = Field(
        description="Template over {poolSize}, {maxOverflow}, {total}, {poolTimeout}, {poolRecycle}."
    )

    @field_validator("value")
    @classmethod
    def _known_fields(cls, value: str) -> str:
        for _, field, spec, conversion in string.Formatter().parse(value):
            if field is None:
                continue
            if field not in TEMPLATE_FIELDS or spec or conversion:
                raise ValueError(
                    f"unknown template field {{{field}}}; use one of "
                    + ", ".join("{" + f + "}" for f in sorted(TEMPLATE_FIELDS))
                )
        return value


class CustomProfile(Model):
    name: str = Field(pattern=_DNS_LABEL, max_length=63, description="Name used in poolbudget.io/profile.")
    env: list[EnvTemplate] = Field(min_length=1, description="Env variables the app reads its pool from.")
    pools_per_process: int = Field(1, ge=1, le=16, description="Pools the app builds per process from these.")
    overflow: bool = Field(True, description="Whether the pool has an overflow (false: one max size).")
    live: bool = Field(
        False,
        description="Whether the app follows live allotments with poolbudget_client (delivery mode live).",
    )

    @field_validator("name")
    @classmethod
    def _not_builtin(cls, name: str) -> str:
        if name in BUILTIN_PROFILES:
            raise ValueError(f"{name!r} is a built-in profile; choose another name")
        return name


class RebalanceSpec(Model):
    mode: Literal["static", "demand"] = Field(
        "static", description="static: shares by weight; demand: shares by demand measured in Prometheus."
    )
    debounce_seconds: float = Field(1.0, ge=0, le=60, description="Events within this window make one plan.")
    min_interval_seconds: int = Field(
        300, ge=0, description="A Deployment is not rolled to grow more often than this."
    )
    min_change_ratio: float = Field(
        0.2, ge=0, le=10, description="Growth smaller than this share of the current setting waits."
    )
    min_change_connections: int = Field(
        2, ge=0, description="Growth smaller than this many per process waits."
    )


class SecretItemRef(Model):
    name: str = Field(min_length=1, description="Name of the Secret.")
    namespace: str | None = Field(
        None, description="Namespace of the Secret; defaults to the operator's own."
    )
    key: str = Field(min_length=1, description="Key in the Secret.")


class BasicAuthSecretRef(Model):
    name: str = Field(min_length=1, description="Name of the Secret with the user name and password.")
    namespace: str | None = Field(
        None, description="Namespace of the Secret; defaults to the operator's own."
    )
    username_key: str = Field("username", min_length=1, description="Key of the user name.")
    password_key: str = Field("password", min_length=1, description="Key of the password.")


class PrometheusAccessSpec(Model):
    """How to reach Prometheus: certificates are verified (by default against the system CAs)."""

    ca_secret_ref: SecretItemRef | None = Field(
        None, description="PEM CA bundle to verify the server's certificate against (e.g. key ca.crt)."
    )
    insecure_skip_verify: bool = Field(
        False, description="Do not verify the server's certificate (for tests only: anyone can answer)."
    )
    bearer_token_secret_ref: SecretItemRef | None = Field(
        None, description="A token sent as 'Authorization: Bearer ...' (e.g. key token)."
    )
    basic_auth_secret_ref: BasicAuthSecretRef | None = Field(None, description="HTTP basic auth credentials.")
    headers: dict[str, str] = Field(
        default_factory=dict,
        description="Extra HTTP headers, not secret (e.g. X-Scope-OrgID for a multi-tenant back end).",
    )

    @model_validator(mode="after")
    def _one_credential(self) -> PrometheusAccessSpec:
        if self.bearer_token_secret_ref is not None and self.basic_auth_secret_ref is not None:
            raise ValueError("set bearerTokenSecretRef or basicAuthSecretRef, not both")
        if self.insecure_skip_verify and self.ca_secret_ref is not None:
            raise ValueError("caSecretRef and insecureSkipVerify contradict each other")
        for header in self.headers:
            if header.lower() in ("authorization", "proxy-authorization"):
                raise ValueError(
                    f"headers: {header} is a credential: use bearerTokenSecretRef or basicAuthSecretRef"
                )
        return self


class MetricsSpec(Model):
    prometheus_url: str | None = Field(None, description="Prometheus to read demand from (demand mode).")
    prometheus: PrometheusAccessSpec = Field(
        default_factory=PrometheusAccessSpec, description="TLS, credentials and headers for prometheusUrl."
    )
    window: str = Field("5m", description="Range over which demand is measured, e.g. 5m.")
    quantile: float = Field(0.95, gt=0, le=1, description="Quantile of in-use connections taken as demand.")
    query: str | None = Field(
        None,
        description="PromQL template overriding the profile's default; {namespace}, {deployment}, {window}.",
    )
    pg_stat_activity: bool = Field(
        False,
        description="Also sample connections in use (not idle) in pg_stat_activity by application_name (no app instrumentation needed).",
    )

    @field_validator("window")
    @classmethod
    def _duration(cls, window: str) -> str:
        if not _DURATION.match(window):
            raise ValueError("must be a Prometheus duration such as 30s, 5m or 1h")
        return window


class DeliverySpec(Model):
    mode: Literal["env", "live"] = Field(
        "env",
        description="env: pool settings as env vars (a change rolls the pods); live: running pools are "
        "resized through the pod annotation poolbudget.io/allotment and poolbudget_client, without restarts.",
    )
    floor_per_process: int = Field(
        1,
        ge=1,
        le=1000,
        description="Live: connections per pool of one process before its first allotment (the env it starts "
        "with), and what is reserved for each pod that may appear before the operator reacts.",
    )
    confirm_timeout_seconds: int = Field(
        60,
        ge=5,
        le=3600,
        description="Live: seconds a pod may take to confirm an allotment before a Warning; a Deployment none "
        "of whose pods ever confirms falls back to env after this long.",
    )


class PoolBudgetSpec(Model):
    database: DatabaseSpec = Field(description="The database whose connections are shared.")
    reserved: int = Field(
        0, ge=0, description="Connections kept free for everything poolbudget does not manage."
    )
    unmanaged: UnmanagedSpec = Field(default_factory=UnmanagedSpec)
    namespace_selector: LabelSelector | None = Field(
        None, description="Namespaces whose Deployments may draw on this budget; all when unset."
    )
    defaults: PoolDefaults = Field(default_factory=PoolDefaults)
    sizing: SizingSpec = Field(default_factory=SizingSpec)
    profiles: list[CustomProfile] = Field(default_factory=list, description="Custom env formats.")
    rebalance: RebalanceSpec = Field(default_factory=RebalanceSpec)
    metrics: MetricsSpec = Field(default_factory=MetricsSpec)
    delivery: DeliverySpec = Field(default_factory=DeliverySpec)

    @model_validator(mode="after")
    def _consistent(self) -> PoolBudgetSpec:
        names = [p.name for p in self.profiles]
        if len(names) != len(set(names)):
            raise ValueError("profiles: names must be unique")
        if self.defaults.profile not in (*BUILTIN_PROFILES, *names):
            raise ValueError(f"defaults.profile: unknown profile {self.defaults.profile!r}")
        if self.rebalance.mode == "demand" and not (
            self.metrics.prometheus_url or self.metrics.pg_stat_activity
        ):
            raise ValueError("rebalance.mode demand needs metrics.prometheusUrl or metrics.pgStatActivity")
        return self


class Condition(Model):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True)
    type: ConditionType
    status: ConditionStatus
    reason: str
    message: str = ""
    last_transition_time: str | None = None
    observed_generation: int | None = None


class DeploymentAllocation(Model):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True)
    namespace: str
    name: str
    profile: str
    pods: int
    processes_per_pod: int
    pools_per_process: int = 1
    pool_size: int
    max_overflow: int
    connections: int
    observed_connections: int | None = None
    reason: str = ""
    delivery: Literal["live"] | None = None  # live delivery (absent: env)
    confirmed_pods: int | None = None  # live: pods whose every process applied its allotment


class PoolBudgetStatus(Model):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True)
    max_connections: int | None = None
    available: int | None = None
    allocated: int | None = None
    live_held: int | None = None
    deployment_count: int | None = None
    ready: ConditionStatus | None = None
    limits_source: str | None = None
    available_reason: str | None = None
    shortfall: int | None = None
    allocations: list[DeploymentAllocation] = Field(default_factory=list)
    conditions: list[Condition] = Field(default_factory=list)
    observed_generation: int | None = None


class PoolBudget(Model):
    """A whole PoolBudget object as `kubectl get pb NAME -o yaml` shows it (metadata kept loose)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True)
    api_version: Literal["poolbudget.io/v1alpha1"] = "poolbudget.io/v1alpha1"
    kind: Literal["PoolBudget"] = "PoolBudget"
    metadata: dict[str, object] = Field(default_factory=dict)
    spec: PoolBudgetSpec
    status: PoolBudgetStatus | None = None

    @property
    def name(self) -> str:
        return str(self.metadata.get("name", ""))
