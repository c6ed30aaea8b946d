"""A stand-in for the kubelet projecting a pod annotation into a downward-API volume (not the kubelet).

It writes exactly the way the kubelet's AtomicWriter (``pkg/volume/util/atomic_writer.go``) does, which is what
the client helper must cope with: the payload goes into a new timestamped directory
``..2026_12_03_07_40_00.123456789``, a symlink ``..data_tmp -> <that directory>`` is renamed over ``..data`` (the
atomic step), the visible name is a symlink ``allotment -> ..data/allotment`` (made once), and the previous
timestamped directory is removed. A file never changes in place, so a reader holding an inode would miss updates.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

DATA_DIR_NAME = "..data"
DATA_DIR_TMP_NAME = "..data_tmp"


class KubeletFileStandIn:
    """One downward-API volume directory holding one projected item (default name ``allotment``)."""

    def __init__(self, volume_dir: str | os.PathLike[str], item: str = "allotment") -> None:
        self.volume_dir = Path(volume_dir)
        self.volume_dir.mkdir(parents=True, exist_ok=True)
        self.item = item
        self.writes = 0

    @property
    def path(self) -> Path:
        """The visible path the pod is given in ``POOLBUDGET_ALLOTMENT_FILE``."""
        return self.volume_dir / self.item

    def write_allotment(self, generation: int, pool_size: int, max_overflow: int, **extra: object) -> None:
        self.write(
            json.dumps(
                {"generation": generation, "perProcess": {"poolSize": pool_size, "maxOverflow": max_overflow}}
                | extra
            )
        )

    def write(self, content: str | None) -> None:
        """Project ``content`` (None: the item leaves the payload, so its visible symlink is removed)."""
        data_link = self.volume_dir / DATA_DIR_NAME
        old_ts_dir = os.readlink(data_link) if data_link.is_symlink() else None
        stamp = time.strftime("..%Y_%m_%d_%H_%M_%S.", time.gmtime())
        ts_dir = Path(
            tempfile.mkdtemp(prefix=stamp, dir=self.volume_dir)
        )  # e.g. ..2026_12_03_07_40_00.123456789
        ts_dir.chmod(0o755)
        if content is not None:
            (ts_dir / self.item).write_text(content)
            (ts_dir / self.item).chmod(0o644)
        tmp_link = self.volume_dir / DATA_DIR_TMP_NAME
        tmp_link.unlink(missing_ok=True)
        tmp_link.symlink_to(ts_dir.name)
        os.rename(tmp_link, data_link)  # the atomic swap
        visible = self.path
        if content is not None and not visible.is_symlink():
            visible.symlink_to(f"{DATA_DIR_NAME}/{self.item}")
        elif content is None and visible.is_symlink():
            visible.unlink()
        if old_ts_dir is not None:
            shutil.rmtree(self.volume_dir / old_ts_dir, ignore_errors=True)
        self.writes += 1
