"""Reading PoolBudgets, Deployments, HPAs and Namespaces from YAML files, for `poolbudget plan`.

Every document is validated through the API models; an error names the file, the document and the field.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from poolbudget.api.models import PoolBudget
from poolbudget.api.workloads import Deployment, HorizontalPodAutoscaler

_SUFFIXES = (".yaml", ".yml", ".json")


class ManifestError(ValueError):
    """A document poolbudget cannot use; the message names the file, the document and the field."""


@dataclass
class Manifests:
    budgets: list[PoolBudget] = field(default_factory=list)
    deployments: list[Deployment] = field(default_factory=list)
    hpas: list[HorizontalPodAutoscaler] = field(default_factory=list)
    namespace_labels: dict[str, dict[str, str]] = field(default_factory=dict)


def format_validation_error(exc: ValidationError, prefix: str = "") -> str:
    """`field.path: message` for each error, with the wire (camelCase) names of the fields."""
    lines = []
    for error in exc.errors():
        path = ".".join(str(part) for part in error["loc"])
        where = f"{prefix}.{path}" if prefix and path else (prefix or path)
        message = error["msg"].removeprefix("Value error, ")
        lines.append(f"{where}: {message}" if where else message)
    return "; ".join(lines)


def _files(paths: Iterable[str | Path]) -> list[Path]:
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.suffix in _SUFFIXES and p.is_file())
        elif path.is_file():
            found.append(path)
        else:
            raise ManifestError(f"{path}: no such file or directory")
    return found


def _validate(model: type[BaseModel], doc: dict[str, Any], where: str) -> Any:
    try:
        return model.model_validate(doc)
    except ValidationError as exc:
        raise ManifestError(f"{where}: {format_validation_error(exc)}") from None


def load_manifests(paths: Iterable[str | Path]) -> Manifests:
    """Load every PoolBudget, Deployment, HorizontalPodAutoscaler and Namespace; other kinds are skipped."""
    out = Manifests()
    seen: dict[tuple[str, str, str], str] = {}
    for path in _files(paths):
        try:
            docs = list(yaml.safe_load_all(path.read_text()))
        except yaml.YAMLError as exc:
            raise ManifestError(f"{path}: not valid YAML: {exc}") from None
        for index, doc in enumerate(docs, start=1):
            if doc is None:
                continue
            name = doc.get("metadata", {}).get("name", "?") if isinstance(doc, dict) else "?"
            where = (
                f"{path}: document {index} ({doc.get('kind', '?') if isinstance(doc, dict) else '?'} {name})"
            )
            if not isinstance(doc, dict):
                raise ManifestError(f"{where}: a manifest must be a mapping")
            kind, api_version = doc.get("kind"), str(doc.get("apiVersion", ""))
            if kind == "PoolBudget" and api_version.startswith("poolbudget.io/"):
                if "spec" not in doc:
                    raise ManifestError(f"{where}: spec: Field required")
                if not doc.get("metadata", {}).get("name"):
                    raise ManifestError(f"{where}: metadata.name: Field required")
                budget = _validate(PoolBudget, doc, where)
                _unique(seen, ("PoolBudget", "", budget.name), where)
                out.budgets.append(budget)
            elif kind == "Deployment" and api_version == "apps/v1":
                deployment = _validate(Deployment, doc, where)
                _unique(seen, ("Deployment", *deployment.key), where)
                out.deployments.append(deployment)
            elif kind == "HorizontalPodAutoscaler":
                out.hpas.append(_validate(HorizontalPodAutoscaler, doc, where))
            elif kind == "Namespace":
                labels = dict(doc.get("metadata", {}).get("labels") or {})
                labels.setdefault("kubernetes.io/metadata.name", name)
                out.namespace_labels[name] = labels
    return out


def _unique(seen: dict[tuple[str, str, str], str], key: tuple[str, str, str], where: str) -> None:
    if key in seen:
        raise ManifestError(f"{where}: metadata.name: duplicate of {seen[key]}")
    seen[key] = where
