"""Label and field selectors of list/watch requests, for the Kubernetes API test emulator."""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Mapping
from typing import Any

Predicate = Callable[[Mapping[str, Any]], bool]
LabelCheck = Callable[[Mapping[str, str]], bool]

_SET_RE = re.compile(r"^\s*([A-Za-z0-9_./-]+)\s+(in|notin)\s+\(([^)]*)\)\s*$")
_EQ_RE = re.compile(r"^\s*([A-Za-z0-9_./-]+)\s*(==|!=|=)\s*([A-Za-z0-9_./-]*)\s*$")
_EXISTS_RE = re.compile(r"^\s*(!?)\s*([A-Za-z0-9_./-]+)\s*$")


class SelectorError(ValueError):
    """An unparseable selector; the server answers 400 Bad Request."""


def _split_terms(selector: str) -> list[str]:
    # Commas separate terms, except inside the parentheses of "in (a,b)".
    terms, depth, current = [], 0, ""
    for char in selector:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            terms.append(current)
            current = ""
        else:
            current += char
    terms.append(current)
    return [term for term in terms if term.strip()]


def _label_in(key: str, values: Collection[str], wanted: bool) -> LabelCheck:
    return lambda labels: (labels.get(key) in values) == wanted


def _label_equals(key: str, value: str, wanted: bool) -> LabelCheck:
    return lambda labels: (labels.get(key) == value) == wanted


def _label_exists(key: str, wanted: bool) -> LabelCheck:
    return lambda labels: (key in labels) == wanted


def parse_label_selector(selector: str | None) -> Predicate:
    """Compile ``a=b,c!=d,e in (x,y),!f`` into a predicate over an object's labels."""
    checks: list[LabelCheck] = []
    for term in _split_terms(selector or ""):
        if match := _SET_RE.match(term):
            key, operator, raw_values = match.groups()
            values = {value.strip() for value in raw_values.split(",") if value.strip()}
            checks.append(_label_in(key, values, operator == "in"))
        elif match := _EQ_RE.match(term):
            key, operator, value = match.groups()
            checks.append(_label_equals(key, value, operator != "!="))
        elif match := _EXISTS_RE.match(term):
            negated, key = match.groups()
            checks.append(_label_exists(key, not negated))
        else:
            raise SelectorError(f"unable to parse requirement: {term!r}")

    def predicate(obj: Mapping[str, Any]) -> bool:
        labels = obj.get("metadata", {}).get("labels") or {}
        return all(check(labels) for check in checks)

    return predicate


def _field_value(obj: Mapping[str, Any], path: str) -> str:
    node: Any = obj
    for part in path.split("."):
        node = node.get(part) if isinstance(node, Mapping) else None
    # Field selectors compare strings; absent fields compare as empty strings, as in Kubernetes.
    if node is None:
        return ""
    if isinstance(node, bool):
        return "true" if node else "false"
    return str(node)


def _field_equals(path: str, value: str, wanted: bool) -> Predicate:
    return lambda obj: (_field_value(obj, path) == value) == wanted


def parse_field_selector(selector: str | None) -> Predicate:
    """Compile ``metadata.name=x,status.phase!=Failed`` into a predicate over whole objects."""
    checks: list[Predicate] = []
    for term in _split_terms(selector or ""):
        match = _EQ_RE.match(term)
        if not match:
            raise SelectorError(f"invalid field selector: {term!r}")
        path, operator, value = match.groups()
        checks.append(_field_equals(path, value, operator != "!="))
    return lambda obj: all(check(obj) for check in checks)


def selector_from_match_labels(match_labels: Mapping[str, str]) -> str:
    """Render a ``matchLabels`` map as a selector string (for ``Scale.status.selector``)."""
    return ",".join(f"{key}={value}" for key, value in sorted(match_labels.items()))
