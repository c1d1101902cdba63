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

import contextlib
import errno
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from .errors import DestinationError
from .units import human_bytes

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
        self._created: list[Path] = []  # folders prepare() made, parents first

    # -- state ----------------------------------------------------------------------------
    def load_state(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self.state_path.read_text())
        except (FileNotFoundError, NotADirectoryError, ValueError):
            return None
        except PermissionError:
            raise DestinationError(
                f"{self.state_path}: cannot be read (permission denied); fix the permissions "
                "of the output folder or choose another one"
            ) from None
        return data if isinstance(data, dict) else None

    def save_state(self, state: dict[str, Any]) -> None:
        self.write_bytes(self.state_path, json.dumps(state, indent=1, sort_keys=True).encode())

    # -- preparation ----------------------------------------------------------------------
    def is_empty(self) -> bool:
        """Whether the destination is absent or an empty folder (refuses anything but a folder)."""
        if not os.path.lexists(self.root):
            return True
        if not self.root.is_dir():
            raise DestinationError(
                f"{self.root}: exists and is not a folder; give the path of a folder to create "
                "(or of an empty one)"
            )
        try:
            return not any(self.root.iterdir())
        except PermissionError:
            raise DestinationError(
                f"{self.root}: cannot be listed (permission denied); choose a folder you can write"
            ) from None

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

    def _mkdir(self, path: Path) -> None:
        missing = []
        parent = path
        while not os.path.lexists(parent) and parent != parent.parent:
            missing.append(parent)
            parent = parent.parent
        path.mkdir(parents=True, exist_ok=True)
        self._created.extend(reversed(missing))

    def prepare(self) -> None:
        """Create the output folder and its working folders (remembered, see :meth:`abandon`)."""
        self._mkdir(self.root)
        # Temporary files of an interrupted run are never complete: start them afresh.
        if self.tmp_dir.exists():
            shutil.rmtree(self.tmp_dir)
        self._mkdir(self.tmp_dir)
        self._mkdir(self.root / "data")

    def abandon(self) -> None:
        """Remove the folders :meth:`prepare` created, if still empty: a run refused before
        writing leaves the destination as it found it."""
        for path in reversed(self._created):
            with contextlib.suppress(OSError):  # not empty (or already gone): keep it
                path.rmdir()
        self._created.clear()

    def finish(self) -> None:
        shutil.rmtree(self.tmp_dir, ignore_errors=True)

    def free_space(self) -> int:
        """Free bytes where the output goes (on the nearest existing folder if not created yet)."""
        probe = self.root
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        return shutil.disk_usage(probe).free

    def check_space(self, needed: int) -> None:
        """Refuse a run that needs more than the free space; nothing written stays behind."""
        free = self.free_space()
        if needed > free:
            self.abandon()
            raise DestinationError(
                f"{self.root}: {human_bytes(needed)} needed but only {human_bytes(free)} free; "
                "free some space or choose another output folder"
            )

    # -- atomic writes --------------------------------------------------------------------
    def tmp_path(self, relpath: str) -> Path:
        return self.tmp_dir / (relpath.replace("/", "__") + f".{os.getpid()}.tmp")

    def write_bytes(self, path: Path, data: bytes) -> None:
        # Temporary files live in tmp/, which every run starts by clearing: a kill at any moment
        # leaves nothing behind that a later run would not remove.
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        with atomic_file(self.tmp_path(path.relative_to(self.root).as_posix()), path) as f:
            f.write(data)

    def copy_in(
        self, source: Path, relpath: str, on_bytes: Callable[[int], None] | None = None
    ) -> str:
        """Copy ``source`` to ``relpath`` in the output atomically; return its sha256."""
        sha = hashlib.sha256()
        with (
            open(source, "rb") as src,
            atomic_file(self.tmp_path(relpath), self.root / relpath) as out,
        ):
            while chunk := src.read(8 << 20):
                sha.update(chunk)
                out.write(chunk)
                if on_bytes:
                    on_bytes(len(chunk))
        return sha.hexdigest()


@contextmanager
def atomic_file(tmp: Path, dest: Path) -> Iterator[BinaryIO]:
    """Write to ``tmp``, then fsync and rename it to ``dest``; on any error remove ``tmp``."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)
