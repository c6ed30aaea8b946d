"""What kopf's handlers share in one operator process (kept in kopf's memo), and the events they post through kopf."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import kopf

from poolbudget.adapters.kubernetes import Cluster
from poolbudget.controller.state import Context
from poolbudget.runtime.wakeups import WatchMemory

DEFAULT_PEERING_LIFETIME = 60  # kopf's own default, in seconds


class KopfEvents:
    """Kubernetes Events through kopf's poster (posted in the background, never blocking a round)."""

    def normal(self, obj: Mapping[str, Any], reason: str, message: str) -> None:
        kopf.event(obj, type="Normal", reason=reason, message=message[:1024])  # type: ignore[arg-type]

    def warning(self, obj: Mapping[str, Any], reason: str, message: str) -> None:
        kopf.event(obj, type="Warning", reason=reason, message=message[:1024])  # type: ignore[arg-type]


@dataclass
class Runtime:
    """Everything the handlers share in one operator process (kept in kopf's memo)."""

    cluster: Cluster
    context: Context
    standalone: bool
    priority: int
    peering_lifetime: int = DEFAULT_PEERING_LIFETIME  # seconds a peer's record holds the others back
    watch: WatchMemory = field(default_factory=WatchMemory)  # what the event handlers saw

    def close(self) -> None:
        self.cluster.close()
