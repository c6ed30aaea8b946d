"""What a database can give: SPEC.md's `available`, with every term that went into it."""

from __future__ import annotations

from dataclasses import dataclass, field

from poolbudget.api.limits import DatabaseLimits


@dataclass(frozen=True, slots=True)
class Availability:
    """`available` and the terms it was computed from, in the order SPEC.md writes them."""

    max_connections: int
    available: int
    terms: tuple[tuple[str, int], ...] = field(default_factory=tuple)
    bound_by: str = "max_connections"

    @property
    def reason(self) -> str:
        """One line that shows the arithmetic, e.g. `100 max_connections - 3 superuser_reserved - 10 reserved`."""
        parts = [f"{self.max_connections} max_connections"]
        parts += [f"- {value} {label}" for label, value in self.terms if value]
        text = " ".join(parts)
        if self.bound_by != "max_connections":
            text += f"; bound by {self.bound_by}"
        return f"{text} = {self.available}"


def compute_available(limits: DatabaseLimits, reserved: int = 0, unmanaged: int = 0) -> Availability:
    """SPEC.md: min(max - superuser_reserved - reserved_connections - spec.reserved - unmanaged, datconnlimit,
    rolconnlimit), where a -1 limit means none. Never negative."""
    terms = (
        ("superuser_reserved", limits.superuser_reserved),
        ("reserved_connections", limits.reserved_connections),
        ("spec.reserved", reserved),
        ("unmanaged", unmanaged),
    )
    server = limits.max_connections - sum(value for _, value in terms)
    available, bound_by = server, "max_connections"
    for label, limit in (("datconnlimit", limits.datconnlimit), ("rolconnlimit", limits.rolconnlimit)):
        if 0 <= limit < available:
            available, bound_by = limit, f"{label} {limit}"
    return Availability(limits.max_connections, max(0, available), terms, bound_by)
