"""The docs stay true: the generated reference is current, code blocks parse, manifests validate, commands run."""

from __future__ import annotations

from pathlib import Path

from poolbudget.api import reference, workloads

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"


def test_reference_is_current() -> None:
    committed = (DOCS / "reference.md").read_text()
    assert committed == reference.reference_markdown(), (
        "docs/reference.md is stale: python -m poolbudget.api.reference > docs/reference.md"
    )


def test_reference_covers_every_annotation() -> None:
    annotations = {
        value
        for name, value in vars(workloads).items()
        if name.isupper()
        and isinstance(value, str)
        and value.startswith(workloads.ANNOTATION_PREFIX)
        and value != workloads.ANNOTATION_PREFIX
    }
    assert set(reference.ANNOTATIONS) == annotations
