"""The confirmation tag: how a process tells the operator, through ``application_name``, what it applied.

Grammar (README "Acknowledgement protocol" is the reference; the operator re-implements :func:`parse_tag`)::

    tag        = app "~pb1." pod "." process "." generation
    pod        = 12 lowercase hex digits
    process    = the OS process id, decimal, no leading zero (1 to 10 digits)
    generation = decimal, "0" or no leading zero (1 to 19 digits); 0 = no allotment applied yet
    app        = the app's own application_name, every character outside printable ASCII (0x20-0x7E) replaced
                 by "?", an earlier tag's suffix removed, then cut to 63 - len(suffix) characters (may be empty)

The whole tag is printable ASCII and at most 63 bytes, so PostgreSQL stores it unchanged.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass

MAX_APPLICATION_NAME = 63  # PostgreSQL keeps NAMEDATALEN - 1 bytes of application_name
MARKER = "~pb1."
POD_UID_ENV = "POD_UID"
POD_NAME_ENV = "POD_NAME"
MAX_PROCESS = 10**10 - 1
MAX_GENERATION = 10**19 - 1

TAG_PATTERN = re.compile(
    r"^(?P<app>.*)~pb1\.(?P<pod>[0-9a-f]{12})\.(?P<process>[1-9][0-9]{0,9})\.(?P<generation>0|[1-9][0-9]{0,18})$",
    re.DOTALL,
)
_NOT_PRINTABLE_ASCII = re.compile(r"[^\x20-\x7e]")
_UID_HEX = re.compile(r"^[0-9a-f]{12,}$")


@dataclass(frozen=True)
class Tag:
    """A parsed confirmation tag."""

    app: str  # the app's own application_name (sanitised and possibly cut), "" when it set none
    pod: str  # 12 hex digits: the pod's identity (see :func:`pod_id`)
    process: int  # the OS process id within the pod
    generation: int  # the allotment generation this process applied; 0 = none yet


def pod_id(pod_uid: str | None, pod_name: str | None = None) -> str | None:
    """The pod field: the first 12 hex digits of the pod UID (hyphens dropped, lower case).

    When the UID is absent or has fewer than 12 hex digits: the first 12 hex digits of SHA-256 of the pod name
    (UTF-8). None when neither is usable (then no connection is tagged).
    """
    if pod_uid:
        digits = pod_uid.strip().replace("-", "").lower()
        if _UID_HEX.match(digits):
            return digits[:12]
    if pod_name and pod_name.strip():
        return hashlib.sha256(pod_name.strip().encode("utf-8")).hexdigest()[:12]
    return None


def pod_id_from_env() -> str | None:
    """:func:`pod_id` of ``POD_UID`` / ``POD_NAME`` (the operator sets both from fieldRefs in live mode)."""
    return pod_id(os.environ.get(POD_UID_ENV), os.environ.get(POD_NAME_ENV))


def clean_app_name(app: str | None) -> str:
    """The app's own name as the tag keeps it: printable ASCII only, without an earlier tag's suffix."""
    if not app:
        return ""
    cleaned = _NOT_PRINTABLE_ASCII.sub("?", app)
    earlier = TAG_PATTERN.match(cleaned)
    return earlier.group("app") if earlier else cleaned


def format_tag(app: str | None, pod: str, process: int, generation: int) -> str:
    """The ``application_name`` for a connection: at most 63 bytes, printable ASCII."""
    if not re.fullmatch(r"[0-9a-f]{12}", pod):
        raise ValueError("pod must be 12 lowercase hex digits")
    if not 1 <= process <= MAX_PROCESS:
        raise ValueError(f"process must be within 1..{MAX_PROCESS}")
    if not 0 <= generation <= MAX_GENERATION:
        raise ValueError(f"generation must be within 0..{MAX_GENERATION}")
    suffix = f"{MARKER}{pod}.{process}.{generation}"
    return clean_app_name(app)[: MAX_APPLICATION_NAME - len(suffix)] + suffix


def parse_tag(application_name: str) -> Tag | None:
    """The tag in an ``application_name``, or None when it carries none."""
    match = TAG_PATTERN.match(application_name)
    if match is None:
        return None
    return Tag(
        app=match.group("app"),
        pod=match.group("pod"),
        process=int(match.group("process")),
        generation=int(match.group("generation")),
    )
