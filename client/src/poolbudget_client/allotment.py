"""The allotment file: what it holds, how it is parsed, and a reader that never raises.

The operator writes each pod's allotment into the pod annotation ``poolbudget.io/allotment``; the kubelet projects
it into a file (downward API) whose path the pod gets in ``POOLBUDGET_ALLOTMENT_FILE``. The kubelet replaces the
file atomically (a new timestamped directory, then a ``..data`` symlink swapped by rename), so the reader opens the
visible path afresh on every poll and never holds an inode.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger("poolbudget_client")

ALLOTMENT_FILE_ENV = "POOLBUDGET_ALLOTMENT_FILE"
FIRST_WAIT_ENV = "POOLBUDGET_FIRST_WAIT_SECONDS"
DEFAULT_FIRST_WAIT = 5.0  # seconds to wait at start for a first allotment, running at the floor meanwhile
DEFAULT_INTERVAL = 1.0  # seconds between polls of the file; a change is applied within about this long
MISSING = "the file does not exist"
MAX_FILE_BYTES = 64 * 1024  # an annotation is far smaller; anything larger is not an allotment
MAX_GENERATION = 10**19 - 1  # what the confirmation tag can carry (19 digits)
MAX_CONNECTIONS = 262_143  # PostgreSQL's own ceiling for max_connections: a larger size is not an allotment


@dataclass(frozen=True)
class Allotment:
    """One pod's per-process allotment: ``poolSize`` persistent connections plus ``maxOverflow`` more."""

    generation: int
    pool_size: int
    max_overflow: int

    @property
    def total(self) -> int:
        """The most connections one process may hold at once."""
        return self.pool_size + self.max_overflow


class AllotmentError(ValueError):
    """The file is missing or does not hold a valid allotment; ``problem`` says why (never the content)."""

    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.problem = problem


def _integer(value: object, name: str, minimum: int, maximum: int) -> int:
    # JSON true/false are bools, which Python counts as ints: refuse them.
    if isinstance(value, bool) or not isinstance(value, int):
        if value is None:
            raise AllotmentError(f"{name} is missing")
        raise AllotmentError(f"{name} is not an integer")
    if value < minimum:
        raise AllotmentError(f"{name} is {value}, below {minimum}")
    if value > maximum:
        raise AllotmentError(f"{name} is {value}, above {maximum}")
    return value


def parse_allotment(text: str) -> Allotment:
    """Parse the file's JSON; extra keys are allowed. Raises :class:`AllotmentError`.

    Valid: ``generation`` an integer 0..10**19-1, ``perProcess.poolSize`` an integer >= 1 (SQLAlchemy reads 0
    as "no limit", so 0 is refused), ``perProcess.maxOverflow`` an integer >= 0; sizes at most 262143.
    """
    if not text.strip():
        raise AllotmentError("the file is empty (no allotment annotation yet?)")
    try:
        document = json.loads(text)
    except ValueError:
        raise AllotmentError("the file is not valid JSON") from None
    if not isinstance(document, dict):
        raise AllotmentError("the file's JSON is not an object")
    per_process = document.get("perProcess")
    if per_process is None:
        raise AllotmentError("perProcess is missing")
    if not isinstance(per_process, dict):
        raise AllotmentError("perProcess is not an object")
    return Allotment(
        generation=_integer(document.get("generation"), "generation", 0, MAX_GENERATION),
        pool_size=_integer(per_process.get("poolSize"), "perProcess.poolSize", 1, MAX_CONNECTIONS),
        max_overflow=_integer(per_process.get("maxOverflow"), "perProcess.maxOverflow", 0, MAX_CONNECTIONS),
    )


def read_allotment(path: str | os.PathLike[str]) -> Allotment:
    """Read and parse the file at its visible path (symlinks followed afresh). Raises :class:`AllotmentError`."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise AllotmentError(MISSING) from None
    except OSError as error:
        raise AllotmentError(f"the file cannot be read ({type(error).__name__})") from None
    if len(raw) > MAX_FILE_BYTES:
        raise AllotmentError(f"the file is larger than {MAX_FILE_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise AllotmentError("the file is not UTF-8") from None
    return parse_allotment(text)


def allotment_path_from_env() -> Path | None:
    """``POOLBUDGET_ALLOTMENT_FILE``, or None when the pod is not in live delivery."""
    value = os.environ.get(ALLOTMENT_FILE_ENV, "").strip()
    return Path(value) if value else None


def first_wait_from_env(default: float = DEFAULT_FIRST_WAIT) -> float:
    """``POOLBUDGET_FIRST_WAIT_SECONDS`` when it is a number >= 0, else ``default``."""
    value = os.environ.get(FIRST_WAIT_ENV, "").strip()
    try:
        seconds = float(value) if value else default
    except ValueError:
        return default
    return seconds if seconds >= 0 else default


class AllotmentFile:
    """Polls one allotment file. :meth:`poll` returns a *new* valid allotment, else None; it never raises.

    Bad input (no file, empty, malformed JSON, missing or negative numbers) is logged as ONE warning per
    distinct problem; the caller keeps what it had. A valid file clears the memory, so a problem that comes back
    after a valid file is told again (a file flapping between two bad states is told twice, not each time).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.current: Allotment | None = None  # the last valid allotment read
        self._problems: set[str] = set()  # told since the last valid file
        self.warnings = 0  # how many warnings were logged (for tests and metrics)
        self.polls = 0  # how many times the file was read: a definite signal that a write was seen

    def poll(self) -> Allotment | None:
        try:
            return self._poll()
        finally:
            self.polls += 1  # counted once the read is over

    def _poll(self) -> Allotment | None:
        try:
            try:
                allotment = read_allotment(self.path)
            except AllotmentError as error:
                if error.problem != MISSING:
                    raise
                # The kubelet removes the previous timestamped directory right after the swap: a read that
                # resolved ..data just before it can miss. Resolve once more before calling the file missing.
                allotment = read_allotment(self.path)
        except AllotmentError as error:
            self._warn(error.problem)
            return None
        except Exception as error:  # never raise into the app, whatever the file system does
            self._warn(f"reading the file failed ({type(error).__name__})")
            return None
        self._problems.clear()
        if allotment == self.current:
            return None
        self.current = allotment
        return allotment

    def _warn(self, problem: str) -> None:
        if problem in self._problems:
            return
        self._problems.add(problem)
        self.warnings += 1
        kept = (
            f"keeping generation {self.current.generation} (poolSize {self.current.pool_size}, "
            f"maxOverflow {self.current.max_overflow})"
            if self.current is not None
            else "keeping the pool's own size"
        )
        logger.warning("poolbudget allotment %s: %s; %s", self.path, problem, kept)
