"""The export's output folder: what is refused before the first write (two paths that clash, a
path outside the folder, a file or folder in the way) and how each file is written (atomically,
from this run's own temporary folder, its size and sha256 checked).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import posixpath
import re
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from bids2hf.errors import DestinationError, InputError, VerificationError
from bids2hf.model.format import sha256_file, write_chunk
from bids2hf.model.manifest import ManifestEntry
from bids2hf.readback.published import PublishedDataset
from bids2hf.readback.shard_cells import REFUSED

__all__ = [
    "OutputFile",
    "RunFolder",
    "already_there",
    "parent_folders",
    "refuse_blocked",
    "refuse_clashes",
    "refuse_inside_source",
    "run_folder",
]

#: Each run writes into a temporary folder of its own in the output folder, named with this prefix.
_TMP_PREFIX = ".bids2hf-export-"
#: The names :func:`run_folder` gives (``tempfile.mkdtemp``) and :class:`OutputFile` gives.
_TMP_FOLDER = re.compile(re.escape(_TMP_PREFIX) + r"[a-z0-9_]{8}")
_TMP_FILE = re.compile(r"[0-9a-f]{32}")


class OutputFile:
    """Writes one output file atomically and checks its checksum."""

    def __init__(self, out: Path, tmp: Path, entry: ManifestEntry) -> None:
        self.entry = entry
        self.final = out / entry.path
        # A name of its own in this run's own folder (O_EXCL below): no other run, and no other
        # file of this run, can write or remove it.
        self.tmp = tmp / uuid.uuid4().hex

    def write(self, chunks: Iterable[memoryview | bytes]) -> int:
        """Write ``chunks``, check them and rename the file into place.

        Raises:
            VerificationError: the bytes differ from the recorded size or sha256.
            DestinationError: the file cannot be put in place (its folder became a file).
        """
        sha = hashlib.sha256()
        size = 0
        fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            with open(fd, "wb") as f:
                for chunk in chunks:
                    sha.update(chunk)
                    size += write_chunk(f, chunk)  # a hole stays a hole [issue 11]
                    if size > self.entry.size:
                        break  # already wrong: do not fill the disk with a crafted stream
                f.truncate()  # the size, if it ends with a hole
                f.flush()
                os.fsync(f.fileno())
            if size != self.entry.size or (
                self.entry.sha256 and sha.hexdigest() != self.entry.sha256
            ):
                raise VerificationError(
                    f"{self.entry.path}: stored bytes do not match the recorded size/sha256; "
                    "the published copy is damaged"
                )
            try:
                self.final.parent.mkdir(parents=True, exist_ok=True)
                os.replace(self.tmp, self.final)
            except OSError as exc:  # checked before writing began: changed since
                raise DestinationError(
                    f"{self.final}: cannot be written ({exc.strerror or exc}); something in the "
                    "output folder is in the way"
                ) from None
        except BaseException:
            self.tmp.unlink(missing_ok=True)
            raise
        return size


def parent_folders(path: str) -> Iterator[str]:
    """The folders ``path`` sits in, innermost first (``a/b/c`` → ``a/b``, ``a``)."""
    while path := posixpath.dirname(path):
        yield path


def refuse_clashes(dataset: PublishedDataset, chosen: dict[str, ManifestEntry]) -> None:
    """Refuse a path that is also a folder of another chosen path: both cannot be written.

    Raises:
        InputError: naming both paths (a crafted or damaged dataset).
    """
    for path in sorted(chosen):
        for folder in parent_folders(path):
            if folder in chosen:
                raise InputError(
                    f"{dataset.url}: {folder!r} is both a file and the folder of {path!r}; "
                    f"{REFUSED}"
                )


def refuse_inside_source(source: str, out: Path) -> None:
    """Refuse an export folder that is a local converted dataset's own folder or lies inside it:
    the BIDS tree would mix with the shards, ``bids/`` and the card, and a later run on that
    output would find files it did not write.

    Raises:
        DestinationError: one line naming the folder and the fix.
    """
    source = os.fspath(source)
    if "://" in source and not source.startswith("file://"):
        return  # a remote dataset: nothing of it is on this disk
    root = Path(source.removeprefix("file://")).resolve()
    target = out.resolve()
    if target == root or target.is_relative_to(root):
        raise DestinationError(
            f"{out}: is inside the converted dataset {root}; export into a folder outside it"
        )


def already_there(
    out: Path,
    chosen: dict[str, ManifestEntry],
    on_bytes: Callable[[int, int], None] | None = None,
) -> set[str]:
    """The chosen paths whose file is in ``out`` already, with the recorded size and sha256.

    An interrupted export leaves such files behind (each was checked before it was renamed
    into place): the re-run keeps them instead of refusing them as files in the way. Only a
    regular file (no symlink) with a recorded sha256 counts; anything else is left to
    :func:`refuse_blocked`. ``on_bytes(bytes, files)`` follows the hashing (a re-run of a
    large export reads what is there once).
    """
    found: set[str] = set()
    resolved_out = out.resolve()
    counted = None if on_bytes is None else (lambda n: on_bytes(n, 0))
    for path, e in chosen.items():
        target = out / path
        try:
            if target.is_symlink() or not target.is_file() or e.sha256 is None:
                continue
            if not target.resolve().is_relative_to(resolved_out):  # via a symlinked folder
                continue  # (refuse_blocked refuses it)
            if target.stat().st_size != e.size:
                continue
            if sha256_file(target, on_bytes=counted) == e.sha256:
                found.add(path)
        except OSError:  # unreadable: not ours to judge here; refuse_blocked names it
            continue
    return found


def refuse_blocked(out: Path, chosen: Iterable[str], overwrite: bool) -> None:
    """Refuse before writing when ``out`` holds something no file can be written over.

    Raises:
        InputError: a path resolves outside ``out`` (a symlinked folder inside it).
        DestinationError: a file would be replaced without ``overwrite``; a folder stands where
            a file goes; a file (or anything but a folder) stands where a folder goes.
    """
    if out.exists() and not out.is_dir():
        raise DestinationError(f"{out}: exists and is no folder; choose another output folder")
    resolved_out = out.resolve()
    folders: set[str] = set()
    for path in chosen:
        if not (resolved_out / path).resolve().is_relative_to(resolved_out):
            raise InputError(f"refusing stored path {path!r}: it resolves outside {out}")
        target = out / path
        if target.is_dir():
            raise DestinationError(
                f"{target}: is a folder where export writes a file; move it away"
            )
        if target.exists() and not overwrite:
            raise DestinationError(f"{target}: already exists; pass --overwrite to replace it")
        folders.update(parent_folders(path))
    for folder in sorted(folders):
        where = out / folder
        if os.path.lexists(where) and not where.is_dir():
            raise DestinationError(
                f"{where}: is no folder, where export writes files into a folder; move it away"
            )


class RunFolder:
    """This run's own temporary folder in the output folder, with a lock file in it held
    (``flock``) while the run lasts.

    The kernel drops the lock when the run ends, even by SIGKILL: a later run that can take it
    knows the folder's run is dead and removes what it left (see :func:`_remove_dead_runs`).
    The lock is on a regular file, not on the folder: on NFS a folder's flock is seen by its
    own machine only, a regular file's by every machine.
    """

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd = fd

    def close(self) -> None:
        """Remove this run's temporary files (a write cut short by Ctrl-C leaves one), then
        the lock file and the folder, and unlock. A file someone else put there keeps the
        folder, and the lock file with it: a later run's cleanup then finds it unlocked."""
        with contextlib.suppress(OSError):
            for name in os.listdir(self.path):
                if _TMP_FILE.fullmatch(name):
                    os.unlink(self.path / name)
            if os.listdir(self.path) == [_LOCK]:
                os.unlink(self.path / _LOCK)
                self.path.rmdir()
        os.close(self._fd)


#: The lock file in a run folder.
_LOCK = "lock"
#: A run folder without a lock file is a run starting (or one of an older bids2hf): it is a
#: dead run's only when nothing in it changed for this long.
_STALE_AFTER = 3600.0
#: flock errors that say the file system has no such locks (Lustre mounted noflock, ...)
_NO_LOCKS = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)


def _stale(fd: int, now: float) -> bool:
    """Nothing in the folder open as ``fd`` changed for :data:`_STALE_AFTER` (nor the folder)."""
    times = [os.fstat(fd).st_mtime]
    for name in os.listdir(fd):
        with contextlib.suppress(FileNotFoundError):
            times.append(os.stat(name, dir_fd=fd, follow_symlinks=False).st_mtime)
    return now - max(times) > _STALE_AFTER


def _remove_dead_run(folder: Path, fd: int, now: float) -> None:
    """Remove a dead run's files and folder (``fd``: the folder, open); keep a live run's.

    Raises:
        OSError: the lock is held (a live run), cannot be taken, or the folder holds files that
            are not bids2hf's (it is kept).
    """
    try:
        lock: int | None = os.open(_LOCK, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
    except FileNotFoundError:
        if not _stale(fd, now):
            return  # a run starting
        lock = None
    try:
        if lock is not None:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held: a live run's folder
        for name in os.listdir(fd):
            if _TMP_FILE.fullmatch(name) or name == _LOCK:
                os.unlink(name, dir_fd=fd)
        folder.rmdir()
    finally:
        if lock is not None:
            os.close(lock)


def _remove_dead_runs(out: Path) -> None:
    """Remove the temporary files of export runs that died (SIGKILL, power loss) in ``out``.

    Only folders named as :func:`run_folder` names them whose lock no run holds (or, without a
    lock file, in which nothing changed for :data:`_STALE_AFTER`), and in them only files named
    as :class:`OutputFile` names them and the lock file; a folder that then still holds
    something (a file of someone else) is kept. Any doubt (a lock the file system cannot take,
    an error) keeps the folder.
    """
    now = time.time()
    for folder in out.glob(_TMP_PREFIX + "*"):
        if not _TMP_FOLDER.fullmatch(folder.name):
            continue
        try:
            fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:  # a symlink, or gone
            continue
        try:
            _remove_dead_run(folder, fd, now)
        except OSError:  # a live run's, someone else's files in it, no locks: keep it
            pass
        finally:
            os.close(fd)


def run_folder(out: Path) -> RunFolder:
    """Create ``out`` and, in it, this run's own temporary folder (no other run shares it),
    after removing the temporary files of runs that died.

    Raises:
        DestinationError: ``out`` cannot be created or written to.
    """
    try:
        out.mkdir(parents=True, exist_ok=True)
        _remove_dead_runs(out)
        path = Path(tempfile.mkdtemp(dir=out, prefix=_TMP_PREFIX))
        fd = os.open(path / _LOCK, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in _NO_LOCKS:
                os.close(fd)
                raise
            # No locks on this file system: the run goes on; a later run keeps this folder
            # (it cannot take the lock to know the run is dead).
        return RunFolder(path, fd)
    except OSError as exc:  # a file on its path, no permission, ...
        raise DestinationError(f"{out}: cannot be written to ({exc.strerror or exc})") from None
