"""A local output (or staging) folder: its lock, what bids2hf owns in it, atomic writes, state.

Layout::

    OUT/README.md                 dataset card (written last)
    OUT/data/<split>-*.parquet    shards
    OUT/bids/...                  dataset-level BIDS files, verbatim
    OUT/bids2hf/manifest.jsonl    every source file and where it went
    OUT/.bids2hf/state.jsonl      resume state journal (never published; see bids2hf.state)
    OUT/.bids2hf/lock             locked (flock) by the run using the folder, removed after it
    OUT/.bids2hf/tmp/             files being written (renamed into place when complete)

Ownership: a folder is a bids2hf output only if its state says so, and bids2hf deletes or
replaces only the paths that state records it wrote (``ResumeState.owned``); paths are recorded
before they are written, so a kill never leaves a file bids2hf wrote without a record of it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import itertools
import os
import shutil
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from bids2hf.errors import RERUN_HINT, DestinationError, InputError
from bids2hf.model.format import LOCK_NAME, STATE_DIR, write_chunk
from bids2hf.model.state import ResumeState
from bids2hf.units import human_bytes
from bids2hf.write.shard import SourceChangedError
from bids2hf.write.state_store import StateStore

__all__ = ["OutputFolder", "atomic_file", "disk_full"]

# Temporary names are unique per write within a process (and the pid separates processes), so
# no two writers, threads or processes, ever share one.
_tmp_counter = itertools.count()


class OutputFolder:
    """The destination folder of a conversion (or the staging folder of a publication)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.state_dir = self.root / STATE_DIR
        self.tmp_dir = self.state_dir / "tmp"
        self.lock_path = self.state_dir / LOCK_NAME
        self.store = StateStore(self.state_dir, self.tmp_dir)
        self._created: list[Path] = []  # folders this run made, parents first
        self._lock_fd: int | None = None
        self._prepared = False

    # -- the lock -------------------------------------------------------------------------------
    def lock(self) -> None:
        """Take the folder for this run (creating it if needed).

        Raises :class:`DestinationError` if another run holds it, or the folder cannot be made.
        The lock is an ``flock`` on ``.bids2hf/lock``: the kernel drops it when its holder dies,
        even by SIGKILL, so a stale file never blocks a later run.
        """
        self._check_is_folder()
        try:
            self._mkdir(self.state_dir)
        except PermissionError:
            raise DestinationError(
                f"{self.root}: cannot be written (permission denied); choose a folder you can write"
            ) from None
        while True:
            try:
                fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError as exc:
                if exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
                    raise
                raise DestinationError(
                    f"{self.lock_path}: cannot be opened for writing ({exc.strerror}); fix the "
                    "permissions of the folder or choose another one"
                ) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise DestinationError(
                    f"{self.root}: another run is using this folder (pid {holder}); wait for it "
                    "to end, or choose another folder"
                ) from None
            # The holder before us removes the file when it ends: a lock taken on a file that
            # is no longer at this path locks nothing, so take the one that is there now.
            try:
                current = os.stat(self.lock_path)
            except FileNotFoundError:
                current = None
            opened = os.fstat(fd)
            if current is not None and (current.st_ino, current.st_dev) == (
                opened.st_ino,
                opened.st_dev,
            ):
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def unlock(self) -> None:
        if self._lock_fd is None:
            return
        # Removed while still locked, so that no other run can lock it in between and lose it.
        with contextlib.suppress(OSError):
            self.lock_path.unlink()
        os.close(self._lock_fd)
        self._lock_fd = None

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the lock for the block; then stop recording state, and if the run never got as far
        as :meth:`prepare`, remove what :meth:`lock` created (a refused run leaves no trace)."""
        self.lock()
        try:
            yield
        finally:
            self.store.close()
            self.unlock()
            if not self._prepared:
                self.abandon()

    # -- state and ownership --------------------------------------------------------------------
    def load_state(self) -> ResumeState | None:
        """The folder's resume state, or None if it holds none (it is then no bids2hf output)."""
        return self.store.load()

    @property
    def owned(self) -> set[str]:
        return self.store.state.owned

    def foreign_entries(self) -> list[str]:
        """Names in the folder other than bids2hf's state folder.

        Raises:
            DestinationError: the path is not a folder, or cannot be listed.
        """
        if not os.path.lexists(self.root):
            return []
        self._check_is_folder()
        try:
            return sorted(p.name for p in self.root.iterdir() if p.name != STATE_DIR)
        except PermissionError:
            raise DestinationError(
                f"{self.root}: cannot be listed (permission denied); choose a folder you can write"
            ) from None

    def _check_is_folder(self) -> None:
        if os.path.lexists(self.root) and not self.root.is_dir():
            raise DestinationError(
                f"{self.root}: exists and is not a folder; give the path of a folder to create "
                "(or of an empty one)"
            )

    def conflicts(self, relpaths: Iterable[str]) -> list[str]:
        """Paths that exist in the folder although bids2hf did not write them."""
        owned = self.owned
        return sorted(p for p in relpaths if p not in owned and os.path.lexists(self.root / p))

    def remove_owned(self, relpaths: Iterable[str]) -> list[str]:
        """Delete these paths if bids2hf wrote them (others are left alone); return those that
        existed. Folders left empty by a deletion go too, except the top-level ones (``data/``
        stays for the shards to come)."""
        owned = self.owned
        targets = sorted(p for p in set(relpaths) if p in owned)
        removed = []
        for rel in targets:
            path = self.root / rel
            try:
                path.unlink()
                removed.append(rel)
            except FileNotFoundError:
                continue
            parent = path.parent
            while parent.parent != self.root and self.root in parent.parents:
                try:
                    parent.rmdir()
                except OSError:  # not empty: holds other files
                    break
                parent = parent.parent
        self.store.disown(targets)
        return removed

    def unowned_files(self, folder: str) -> list[str]:
        """Files under ``folder`` that bids2hf did not write."""
        base = self.root / folder
        if not base.is_dir():
            return []
        owned = self.owned
        found = (p.relative_to(self.root).as_posix() for p in base.rglob("*") if p.is_file())
        return sorted(p for p in found if p not in owned)

    # -- preparation ----------------------------------------------------------------------------
    def _mkdir(self, path: Path) -> None:
        missing = []
        parent = path
        while not os.path.lexists(parent) and parent != parent.parent:
            missing.append(parent)
            parent = parent.parent
        path.mkdir(parents=True, exist_ok=True)
        self._created.extend(reversed(missing))

    def prepare(self) -> None:
        """Create the working folders; from here on the run writes (see :meth:`abandon`).

        Call it while holding the lock: it clears the temporary files of an earlier run, which
        are never complete, and no other run may be writing there.
        """
        self._mkdir(self.root)
        self.clean_tmp()
        self._mkdir(self.tmp_dir)
        self._mkdir(self.root / "data")
        self._prepared = True

    def abandon(self) -> None:
        """Remove the folders this run created, if still empty: a run refused before writing
        leaves the destination as it found it."""
        for path in reversed(self._created):
            with contextlib.suppress(OSError):  # not empty (or already gone): keep it
                path.rmdir()
        self._created.clear()

    def clean_tmp(self) -> None:
        """Remove the temporary folder. Only while holding the lock, and only where no writer
        of this run is still active (at the start, or once every thread has joined)."""
        shutil.rmtree(self.tmp_dir, ignore_errors=True)

    def free_space(self) -> int:
        """Free bytes where the output goes (on the nearest existing folder if not created yet)."""
        probe = self.root
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        return shutil.disk_usage(probe).free

    def check_space(self, needed: int) -> None:
        """Refuse a run that needs more than the free space.

        Raises:
            DestinationError: ``needed`` exceeds the free space.
        """
        free = self.free_space()
        if needed > free:
            raise DestinationError(
                f"{self.root}: {human_bytes(needed)} needed but only {human_bytes(free)} free; "
                "free some space or choose another output folder"
            )

    # -- atomic writes --------------------------------------------------------------------------
    def tmp_path(self, relpath: str) -> Path:
        """A fresh temporary name for writing ``relpath`` (never handed out twice)."""
        name = relpath.rsplit("/", 1)[-1][-100:]
        return self.tmp_dir / f"{name}.{os.getpid()}.{next(_tmp_counter)}.tmp"

    def write_bytes(self, path: Path, data: bytes) -> None:
        """Write ``data`` to ``path`` (in the folder) atomically."""
        with atomic_file(self.tmp_path(path.relative_to(self.root).as_posix()), path) as f:
            f.write(data)

    def copy_in(
        self,
        source: Path,
        relpath: str,
        size: int,
        mtime_ns: int,
        on_bytes: Callable[[int], None] | None = None,
    ) -> str:
        """Copy ``source`` to ``relpath`` in the output atomically; return its sha256.

        Raises :class:`~bids2hf.write.SourceChangedError` if the source is not the file that was
        planned (``size`` and ``mtime_ns``) before or after reading it; nothing is copied then.
        """
        try:
            src = open(source, "rb")  # noqa: SIM115 - closed below, after the last fstat
        except FileNotFoundError:
            raise SourceChangedError(f"{source}: removed after planning; {RERUN_HINT}") from None
        except PermissionError:
            raise InputError(
                f"{source}: cannot be read (permission denied); fix its permissions (chmod a+r) "
                "or --exclude it"
            ) from None
        sha = hashlib.sha256()
        with src:
            st = os.fstat(src.fileno())
            if st.st_size != size or st.st_mtime_ns != mtime_ns:
                raise SourceChangedError(
                    f"{source}: changed after planning (size or modification time); {RERUN_HINT}"
                )
            copied = 0
            with atomic_file(self.tmp_path(relpath), self.root / relpath) as out:
                while chunk := src.read(8 << 20):
                    sha.update(chunk)
                    copied += write_chunk(out, chunk)  # a hole stays a hole [issue 11]
                    if on_bytes:
                        on_bytes(len(chunk))
                out.truncate()  # the size, if it ends with a hole
                after = os.fstat(src.fileno())
                if copied != size or after.st_mtime_ns != mtime_ns or after.st_size != size:
                    # Raised inside atomic_file: the copy is removed, never renamed into place.
                    raise SourceChangedError(f"{source}: modified while being read; {RERUN_HINT}")
        return sha.hexdigest()


@contextmanager
def atomic_file(tmp: Path, dest: Path) -> Iterator[BinaryIO]:
    """Write to ``tmp`` (which must not exist), then fsync and rename it to ``dest``; on any
    error remove ``tmp`` and re-raise."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    # "x": a name shared by two writers would fail here rather than mix their bytes (and the
    # other writer's file is not ours to remove).
    f = open(tmp, "xb")  # noqa: SIM115 - closed below
    try:
        with f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)
