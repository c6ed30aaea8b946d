"""The docs stay true: the generated reference is current, code blocks parse, manifests validate, commands run.

Conventions the docs follow (and these tests rely on):
- ```yaml blocks parse; PoolBudgets in them validate against the CRD's schema and the pydantic model, built-in
  objects against Kubernetes' own schema (strict). A block whose first line is `# <path>` is that file, verbatim.
- ```console blocks show commands after `$ ` and their output below; `...` on a line of its own stands for
  any number of lines. Blocks whose commands are all `poolbudget ...` or `echo $?` are run here, from the
  repository root, and must print what they show (the emulator test runs the kubectl ones).
"""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from poolbudget.api import reference, workloads
from poolbudget.api.crd import crd
from poolbudget.api.models import PoolBudget
from tests.chart import validate_strict
from tests.docblocks import Block, Session, code_blocks, console_session, output_matches

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"
# Pages other engineers write; links to them are checked once they exist.
PENDING_PAGES = {"database.md", "demand.md"}
BUILT_IN_KINDS = {"Deployment", "HorizontalPodAutoscaler", "Secret", "Namespace", "ConfigMap", "Service"}
VERSIONS = ("1.29", "1.35")


PAGES = sorted(DOCS.glob("*.md"))
BLOCKS = [b for page in PAGES for b in code_blocks(page)]
YAML_BLOCKS = [b for b in BLOCKS if b.language == "yaml"]
CONSOLE_BLOCKS = [b for b in BLOCKS if b.language == "console"]


def _ids(blocks: list[Block]) -> list[str]:
    return [b.where for b in blocks]


# --- the reference ---------------------------------------------------------------------------------------


def test_reference_is_current() -> None:
    committed = (DOCS / "reference.md").read_text()
    assert committed == reference.reference_markdown(), (
        "docs/reference.md is stale: python -m poolbudget.api.reference > docs/reference.md"
    )


def test_reference_covers_every_annotation() -> None:
    """The reference lists exactly the opt-in annotations the parser reads, each with its field."""
    assert reference.ANNOTATIONS.keys() == workloads.OPT_IN_FIELDS.keys()
    assert {key: field for key, (field, _) in reference.ANNOTATIONS.items()} == workloads.OPT_IN_FIELDS


# --- manifests -------------------------------------------------------------------------------------------


def _draft4(node: Any) -> Any:
    """The CRD's OpenAPI v3.0 schema as JSON Schema draft 4 (`nullable: true` -> a null type)."""
    if isinstance(node, list):
        return [_draft4(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {k: _draft4(v) for k, v in node.items() if not k.startswith("x-kubernetes") and k != "nullable"}
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if node.get("x-kubernetes-int-or-string"):
        out["type"] = ["integer", "string"]
    return out


CRD_SCHEMA = _draft4(crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"])


def validate_manifest(doc: dict[str, Any], where: str) -> None:
    """A PoolBudget against the CRD schema and the model; a built-in object against Kubernetes' schema."""
    kind = doc.get("kind")
    if kind == "PoolBudget":
        try:
            jsonschema.Draft4Validator(CRD_SCHEMA).validate(doc)
        except jsonschema.ValidationError as exc:
            raise AssertionError(f"{where}: the CRD would reject this PoolBudget: {exc.message}") from None
        PoolBudget.model_validate(doc)
    elif kind in BUILT_IN_KINDS:
        for version in VERSIONS:
            validate_strict(doc, version)
    else:
        raise AssertionError(f"{where}: a {kind} in the docs: add a check for it")


def test_crd_schema_rejects_what_the_api_server_would() -> None:
    budget = yaml.safe_load((REPO / "examples" / "budget.yaml").read_text())
    validate_manifest(budget, "examples/budget.yaml")
    bad = copy.deepcopy(budget)
    bad["spec"]["database"]["maxConnections"] = 0
    with pytest.raises(AssertionError, match="CRD would reject"):
        validate_manifest(bad, "mutated")


@pytest.mark.parametrize("block", YAML_BLOCKS, ids=_ids(YAML_BLOCKS))
def test_yaml_blocks_are_valid(block: Block) -> None:
    docs = [d for d in yaml.safe_load_all(block.text) if d is not None]
    assert docs, f"{block.where}: empty YAML block"
    for doc in docs:
        if isinstance(doc, dict) and "apiVersion" in doc:
            validate_manifest(doc, block.where)
    first = block.text.splitlines()[0]
    if path := re.fullmatch(r"# (\S+\.ya?ml)", first):
        assert (REPO / path[1]).read_text() == block.text, f"{block.where} differs from {path[1]}"


EXAMPLE_FILES = sorted([*(REPO / "examples").glob("*.yaml"), *(DOCS / "examples").rglob("*.yaml")])


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=[str(p.relative_to(REPO)) for p in EXAMPLE_FILES])
def test_example_files_are_valid(path: Path) -> None:
    for doc in yaml.safe_load_all(path.read_text()):
        if doc:
            validate_manifest(doc, str(path.relative_to(REPO)))


# --- commands --------------------------------------------------------------------------------------------


def _runnable(session: Session) -> bool:
    return all(c.startswith("poolbudget ") or c == "echo $?" for c in session.commands)


RUNNABLE = [b for b in CONSOLE_BLOCKS if _runnable(console_session(b))]


def test_output_matching() -> None:
    assert output_matches("a\n...\nd", "a\nb\nc\nd\n")
    assert output_matches("a\n...", "a\nb\n")
    assert not output_matches("a\nd", "a\nb\nd\n")
    assert not output_matches("a\n...\ne", "a\nb\nd\n")


def test_docs_have_runnable_commands() -> None:
    pages = {b.page for b in RUNNABLE}
    assert {"quickstart.md", "concepts.md", "profiles.md"} <= pages


@pytest.mark.parametrize("block", RUNNABLE, ids=_ids(RUNNABLE))
def test_console_blocks_print_what_they_show(block: Block) -> None:
    session = console_session(block)
    prelude = (
        ""
        if shutil.which("poolbudget")
        else f'poolbudget() {{ "{sys.executable}" -m poolbudget.cli "$@"; }}\n'
    )
    script = prelude + "\n".join(session.commands) + "\n"
    result = subprocess.run(["bash", "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert output_matches(session.expected, result.stdout), (
        f"{block.where}: the commands print something else.\n--- shown\n{session.expected}\n--- printed\n"
        f"{result.stdout}\n--- stderr\n{result.stderr}"
    )


# --- links -----------------------------------------------------------------------------------------------


def test_relative_links_resolve() -> None:
    broken = []
    for page in PAGES:
        prose = re.sub(r"`[^`\n]*`", "", re.sub(r"```.*?```", "", page.read_text(), flags=re.DOTALL))
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", prose):
            if "://" in target or target.startswith("mailto:"):
                continue
            resolved = (page.parent / target).resolve()
            if not resolved.exists() and not (resolved.parent == DOCS and resolved.name in PENDING_PAGES):
                broken.append(f"{page.name}: {target}")
    assert broken == []


def test_every_page_is_linked_from_the_index() -> None:
    index = (DOCS / "index.md").read_text()
    for page in PAGES:
        if page.name != "index.md":
            assert f"({page.name})" in index, f"index.md does not link {page.name}"


def test_profiles_table_matches_the_profiles() -> None:
    from poolbudget.profiles import builtin_profiles
    from poolbudget.profiles.base import PoolSettings

    rows = {
        line.split("|")[1].strip().split()[0].strip("`"): [c.strip() for c in line.strip("|").split("|")]
        for line in (DOCS / "profiles.md").read_text().splitlines()
        if line.startswith("| `")
    }
    for name, profile in builtin_profiles().items():
        _, env, pools, overflow = rows[name]
        written = set(profile.render(PoolSettings(3, 2), {}))
        deprecated = {"LANGFLOW_POOL_SIZE": "0", "LANGFLOW_MAX_OVERFLOW": "0"}  # written only when present
        written |= set(profile.render(PoolSettings(3, 2), deprecated)) if name == "langflow" else set()
        assert set(re.findall(r"`([A-Z][A-Z0-9_]+)(?:=\w+)?`", env)) == written, name
        assert int(pools) == profile.pools_per_process, name
        assert (overflow == "yes") == profile.has_overflow, name
