"""Live delivery's two messages: the allotment the operator writes on a pod, and the tag a process answers with.

The allotment is the pod annotation ``poolbudget.io/allotment``, projected into the pod by a downward-API volume::

    {"generation": 7, "perProcess": {"poolSize": 4, "maxOverflow": 2},
     "ceilingPerProcess": 6, "budget": "main", "check": "1f0c9a2e"}

``generation`` and ``perProcess`` are what ``poolbudget_client`` reads (it ignores the other keys).
``ceilingPerProcess`` is the most one pool of one process may still hold until this generation is confirmed (the
old size after a shrink), so that an operator restarted meanwhile counts the pod as safely as the one that wrote
it. ``check`` is a digest of the rest: an annotation edited by hand no longer matches it.

The tag is the suffix ``~pb1.<pod>.<pid>.<generation>`` the helper puts on its connections' ``application_name``
(grammar: ``client/README.md``, "Acknowledgement protocol"); the operator reads it from ``pg_stat_activity``.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass

_MAX_SIZE = 262143  # the client's bound on a pool size (PostgreSQL's max_connections bound)
_MAX_GENERATION = 10**19 - 1


@dataclass(frozen=True, slots=True)
class PodAllotment:
    """One pod's allotment: per pool of each of its processes."""

    generation: int
    pool_size: int
    max_overflow: int
    ceiling: int  # per-pool total the pod may hold until this generation is confirmed
    budget: str

    @property
    def total(self) -> int:
        return self.pool_size + self.max_overflow


@dataclass(frozen=True, slots=True)
class ReadAllotment:
    """An allotment as found on a pod: what it says, and whether the operator wrote it as it stands."""

    allotment: PodAllotment | None  # None: absent, or not readable at all
    intact: bool  # False: edited by hand (or unreadable); the operator rewrites it


def _check(body: dict[str, object]) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:8]


def _body(a: PodAllotment) -> dict[str, object]:
    return {
        "generation": a.generation,
        "perProcess": {"poolSize": a.pool_size, "maxOverflow": a.max_overflow},
        "ceilingPerProcess": a.ceiling,
        "budget": a.budget,
    }


def format_allotment(allotment: PodAllotment) -> str:
    """The annotation's value: compact JSON with its check."""
    body = _body(allotment)
    return json.dumps({**body, "check": _check(body)}, separators=(",", ":"))


def _whole(value: object, low: int, high: int) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        return None
    return value


def parse_allotment(text: str | None) -> ReadAllotment:
    """The annotation's value read back. A hand edit that the client would still apply is returned (so that it
    is counted at its size) with ``intact`` False."""
    if text is None:
        return ReadAllotment(None, True)
    try:
        raw = json.loads(text)
    except ValueError:
        return ReadAllotment(None, False)
    if not isinstance(raw, dict):
        return ReadAllotment(None, False)
    per_process = raw.get("perProcess")
    per_process = per_process if isinstance(per_process, dict) else {}
    generation = _whole(raw.get("generation"), 0, _MAX_GENERATION)
    pool_size = _whole(per_process.get("poolSize"), 1, _MAX_SIZE)
    max_overflow = _whole(per_process.get("maxOverflow"), 0, _MAX_SIZE)
    if generation is None or pool_size is None or max_overflow is None:
        return ReadAllotment(None, False)
    ceiling = _whole(raw.get("ceilingPerProcess"), 1, 2 * _MAX_SIZE) or 0
    budget = raw.get("budget")
    allotment = PodAllotment(
        generation,
        pool_size,
        max_overflow,
        max(ceiling, pool_size + max_overflow),
        budget if isinstance(budget, str) else "",
    )
    intact = raw.get("check") == _check(_body(allotment)) and ceiling >= allotment.total
    return ReadAllotment(allotment, intact)


# client/README.md, "Acknowledgement protocol": the suffix is the last "~pb1." after which the rest matches.
_TAG = re.compile(
    r"^(?P<app>.*)~pb1\.(?P<pod>[0-9a-f]{12})\.(?P<process>[1-9][0-9]{0,9})\.(?P<generation>0|[1-9][0-9]{0,18})$"
)


@dataclass(frozen=True, slots=True)
class Tag:
    """A tagged connection: the pod it belongs to, its process, the generation that process applied."""

    pod: str
    process: int
    generation: int


def parse_tag(application_name: str) -> Tag | None:
    """The tag at the end of an ``application_name``; None when it carries none."""
    found = _TAG.match(application_name)
    if found is None:
        return None
    return Tag(found["pod"], int(found["process"]), int(found["generation"]))


def pod_tag_id(uid: str) -> str:
    """The 12-hex pod field of the tags of a pod with this ``metadata.uid``."""
    return uid.replace("-", "").lower()[:12]
