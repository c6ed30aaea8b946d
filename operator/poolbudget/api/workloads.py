"""The Kubernetes objects poolbudget reads (Deployments, HPAs) and its opt-in annotations, validated at the edge.

Only the fields the planner needs are modelled; everything else in the object is ignored.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic.alias_generators import to_camel

from poolbudget.api.annotations import (
    BUDGET,
    CONTAINER,
    DELIVERY,
    DEMAND_QUERY,
    MAX_CONNECTIONS,
    MIN_CONNECTIONS,
    PROCESSES,
    PROFILE,
    WEIGHT,
)


def literal_env(entries: Iterable[tuple[str, str | None, bool]]) -> dict[str, str]:
    """Env entries ``(name, value, from another source)`` with literal values: an entry whose value comes from
    ``valueFrom`` (a Secret, a ConfigMap, a field) cannot be read without the cluster, and is left out."""
    return {name: value or "" for name, value, indirect in entries if not indirect}


class _Loose(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True)


class EnvVar(_Loose):
    name: str
    value: str | None = None
    value_from: dict[str, Any] | None = None


class Container(_Loose):
    name: str
    env: list[EnvVar] = Field(default_factory=list)

    def literal_env(self) -> dict[str, str]:
        """Env entries with literal values (valueFrom entries cannot be read without the cluster)."""
        return literal_env((e.name, e.value, e.value_from is not None) for e in self.env)


class ObjectMeta(_Loose):
    name: str = Field(min_length=1)
    namespace: str = "default"
    annotations: dict[str, str] = Field(default_factory=dict)
    labels: dict[str, str] = Field(default_factory=dict)
    generation: int | None = None


class RollingUpdate(_Loose):
    max_surge: int | str | None = None
    max_unavailable: int | str | None = None


class Strategy(_Loose):
    type: str = "RollingUpdate"
    rolling_update: RollingUpdate | None = None


class PodSpec(_Loose):
    containers: list[Container] = Field(min_length=1)


class PodTemplate(_Loose):
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: PodSpec


class DeploymentSpec(_Loose):
    replicas: int | None = Field(None, ge=0)
    strategy: Strategy = Field(default_factory=Strategy)
    template: PodTemplate


class Deployment(_Loose):
    """An apps/v1 Deployment, reduced to what poolbudget reads."""

    metadata: ObjectMeta
    spec: DeploymentSpec

    @property
    def key(self) -> tuple[str, str]:
        return self.metadata.namespace, self.metadata.name

    @property
    def max_surge(self) -> int | str | None:
        rolling = self.spec.strategy.rolling_update
        return rolling.max_surge if rolling else None


class ScaleTargetRef(_Loose):
    kind: str
    name: str
    api_version: str | None = None


class HpaSpec(_Loose):
    scale_target_ref: ScaleTargetRef
    min_replicas: int | None = None
    max_replicas: int = Field(ge=1)


class HpaStatus(_Loose):
    current_replicas: int | None = None


class HorizontalPodAutoscaler(_Loose):
    metadata: ObjectMeta
    spec: HpaSpec
    status: HpaStatus | None = None

    def targets(self, deployment: Deployment) -> bool:
        ref = self.spec.scale_target_ref
        return (
            ref.kind == "Deployment"
            and ref.name == deployment.metadata.name
            and (self.metadata.namespace == deployment.metadata.namespace)
        )


class OptIn(BaseModel):
    """A Deployment's poolbudget.io/* annotations, parsed; errors name the annotation."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    budget: str = Field(min_length=1)
    profile: str | None = None
    containers: tuple[str, ...] = ()
    processes: int | None = Field(None, ge=1, le=1024)
    weight: int | None = Field(None, ge=1, le=1000)
    min_connections: int | None = Field(None, ge=1)
    max_connections: int | None = Field(None, ge=1)
    demand_query: str | None = None
    delivery: Literal["env", "live"] | None = None

    @field_validator("containers", mode="before")
    @classmethod
    def _split(cls, raw: object) -> object:
        if isinstance(raw, str):
            return tuple(name.strip() for name in raw.split(",") if name.strip())
        return raw


OPT_IN_FIELDS = {
    BUDGET: "budget",
    PROFILE: "profile",
    CONTAINER: "containers",
    PROCESSES: "processes",
    WEIGHT: "weight",
    MIN_CONNECTIONS: "min_connections",
    MAX_CONNECTIONS: "max_connections",
    DEMAND_QUERY: "demand_query",
    DELIVERY: "delivery",
}


class AnnotationError(ValueError):
    """An opt-in annotation with a value poolbudget cannot use; the message names the annotation."""


def budget_of(annotations: Mapping[str, str]) -> str | None:
    """The budget a Deployment opted into, or None."""
    name = annotations.get(BUDGET, "").strip()
    return name or None


def parse_opt_in(annotations: dict[str, str]) -> OptIn:
    """Parse the poolbudget.io/* annotations; AnnotationError names the first bad one."""
    values = {field: annotations[key] for key, field in OPT_IN_FIELDS.items() if key in annotations}
    try:
        opt_in = OptIn.model_validate(values)
    except ValidationError as exc:
        error = exc.errors()[0]
        field = str(error["loc"][0]) if error["loc"] else "budget"
        annotation = next(key for key, name in OPT_IN_FIELDS.items() if name == field)
        raise AnnotationError(f"annotation {annotation}: {error['msg']}") from None
    if (
        opt_in.min_connections is not None
        and opt_in.max_connections is not None
        and opt_in.min_connections > opt_in.max_connections
    ):
        raise AnnotationError(f"annotation {MIN_CONNECTIONS} must not exceed {MAX_CONNECTIONS}")
    return opt_in
