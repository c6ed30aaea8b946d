"""Code blocks of the docs, as the doc tests read them (see tests/test_docs.py for the conventions)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Block:
    page: str
    line: int
    language: str
    text: str

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"


def code_blocks(page: Path) -> list[Block]:
    blocks: list[Block] = []
    lines = page.read_text().splitlines()
    start, language = 0, None
    body: list[str] = []
    for number, line in enumerate(lines, 1):
        fence = re.match(r"^```(\S*)\s*$", line)
        if fence and language is None:
            start, language, body = number, fence[1] or "text", []
        elif line.strip() == "```" and language is not None:
            blocks.append(Block(page.name, start, language, "\n".join(body) + "\n"))
            language = None
        elif language is not None:
            body.append(line)
    assert language is None, f"{page.name}:{start}: unclosed code block"
    return blocks


@dataclass(frozen=True)
class Session:
    commands: list[str]
    expected: str


def console_session(block: Block) -> Session:
    commands: list[str] = []
    expected: list[str] = []
    for line in block.text.splitlines():
        if line.startswith("$ "):
            commands.append(line[2:])
        else:
            expected.append(line)
    return Session(commands, "\n".join(expected))


def output_matches(expected: str, actual: str) -> bool:
    """Line by line, trailing spaces ignored; a line `...` matches any number of lines."""
    pattern = ""
    for line in expected.splitlines():
        pattern += r"(?:[^\n]*\n)*?" if line.strip() == "..." else re.escape(line.rstrip()) + r"\n"
    normalized = "".join(line.rstrip() + "\n" for line in actual.splitlines())
    return re.fullmatch(pattern, normalized) is not None


def console_steps(block: Block) -> list[tuple[str, str]]:
    """Each command of a console block with the output shown under it."""
    steps: list[tuple[str, list[str]]] = []
    for line in block.text.splitlines():
        if line.startswith("$ "):
            steps.append((line[2:], []))
        else:
            assert steps, f"{block.where}: output before the first command"
            steps[-1][1].append(line)
    return [(command, "\n".join(output)) for command, output in steps]
