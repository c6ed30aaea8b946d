"""Live delivery's confirmations, read from ``pg_stat_activity``: per pod, what each of its processes applied.

Pure: client backends (``application_name`` and count) in, per pod tag id what it has confirmed out. The tag
grammar and the rules are ``client/README.md``'s "Acknowledgement protocol": a process's generation is the
highest on any of its connections (tags of checked-out connections lag, none runs ahead); a pod has confirmed
generation G when at least as many processes as it runs are seen and every one seen is at G or later.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from poolbudget.api.allotment import parse_tag
from poolbudget.planning.unmanaged import ObservedBackends


@dataclass
class PodTags:
    """One pod's tagged connections: per process id, the generation it applied; and how many there are."""

    processes: dict[int, int] = field(default_factory=dict)
    connections: int = 0

    def confirmed(self, processes: int) -> int | None:
        """The generation every process of the pod applied; None while fewer than ``processes`` are seen."""
        if len(self.processes) < max(1, processes):
            return None
        return min(self.processes.values())


def tags_by_pod(backends: Iterable[ObservedBackends]) -> dict[str, PodTags]:
    """Tagged client backends, by the pod's 12-hex tag id."""
    pods: dict[str, PodTags] = {}
    for backend in backends:
        tag = parse_tag(backend.application_name)
        if tag is None:
            continue
        pod = pods.setdefault(tag.pod, PodTags())
        pod.processes[tag.process] = max(pod.processes.get(tag.process, 0), tag.generation)
        pod.connections += backend.count
    return pods
