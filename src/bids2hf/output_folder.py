"""A local output folder: atomic writes, resume state, and cleanup of temporary files.

Layout::

    OUT/README.md                 dataset card (written last)
    OUT/data/<split>-*.parquet    shards
    OUT/bids/...                  dataset-level BIDS files, verbatim
    OUT/bids2hf/manifest.jsonl    every source file and where it went
    OUT/.bids2hf/state.json       resume state (never published)
    OUT/.bids2hf/tmp/             files being written (renamed into place when complete)
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import DestinationError

STATE_DIR = ".bids2hf"
OWNED = ("README.md", "data", "bids", "bids2hf", STATE_DIR)


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class OutputFolder:
    """The destination folder of a conversion."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.state_dir = self.root / STATE_DIR
        self.tmp_dir = self.state_dir / "tmp"
        self.state_path = self.state_dir / "state.json"

    # -- state ----------------------------------------------------------------------------
    def load_state(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self.state_path.read_text())
        except (FileNotFoundError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def save_state(self, state: dict[str, Any]) -> None:
        self.write_bytes(self.state_path, json.dumps(state, indent=1, sort_keys=True).encode())

    # -- preparation ----------------------------------------------------------------------
    def is_empty(self) -> bool:
        return not self.root.exists() or not any(self.root.iterdir())

    def looks_like_ours(self) -> bool:
        return self.state_path.is_file() or (
            (self.root / "README.md").is_file() and (self.root / "data").is_dir()
        )

    def clear(self) -> None:
        """Remove a previous bids2hf output (only the parts bids2hf writes)."""
        for name in OWNED:
            path = self.root / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()

    def prepare(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        # Temporary files of an interrupted run are never complete: start them afresh.
        if self.tmp_dir.exists():
            shutil.rmtree(self.tmp_dir)
        self.tmp_dir.mkdir(parents=True)
        (self.root / "data").mkdir(exist_ok=True)

    def finish(self) -> None:
        shutil.rmtree(self.tmp_dir, ignore_errors=True)

    def check_space(self, needed: int) -> None:
        free = shutil.disk_usage(self.root).free
        if needed > free:
            raise DestinationError(
                f"{self.root}: {needed / 1e9:.2f} GB needed but only {free / 1e9:.2f} GB free; "
                "free some space or choose another output folder"
            )

    # -- atomic writes --------------------------------------------------------------------
    def tmp_path(self, relpath: str) -> Path:
        return self.tmp_dir / (relpath.replace("/", "__") + f".{os.getpid()}.tmp")

    def write_bytes(self, path: Path, data: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def copy_in(
        self, source: Path, relpath: str, on_bytes: Callable[[int], None] | None = None
    ) -> str:
        """Copy ``source`` to ``relpath`` in the output atomically; return its sha256."""
        dest = self.root / relpath
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.tmp_path(relpath)
        sha = hashlib.sha256()
        try:
            with open(source, "rb") as src, open(tmp, "wb") as out:
                while chunk := src.read(8 << 20):
                    sha.update(chunk)
                    out.write(chunk)
                    if on_bytes:
                        on_bytes(len(chunk))
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, dest)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return sha.hexdigest()


def disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)
