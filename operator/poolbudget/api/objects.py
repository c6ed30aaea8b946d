"""The two shapes every layer passes around: a namespaced object's key, and a Kubernetes object as plain JSON."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

Key = tuple[str, str]  # (namespace, name)
Obj = Mapping[str, Any]  # an object as the API returns it (only ``observe`` looks inside)
