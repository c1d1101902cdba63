"""The resume state of a conversion: typed records, kept in an append-only journal.

``OUT/.bids2hf/state.jsonl`` holds one JSON object per line, each a change: a run began (plan,
source, destination), a shard was written (with the files it embeds), a shard's checksum became
known, a dataset-level file was copied, paths are about to be written (ownership), paths were
deleted, the run completed. Loading replays the lines in order.

Why a journal: a run appends each record once, as it happens, so the state I/O of a run is
linear in its size (the single ``state.json`` it replaces was rewritten whole after every shard:
O(files x shards) bytes). Each append is one ``write`` followed by ``fsync``, so a kill can tear
only the last line: loading ignores a line without its newline (or that does not parse) and what
follows it, and the next append cuts that tail off first. When more than half of the journal is
superseded records, it is compacted: rewritten as one record per live item under a temporary
name, then renamed over the journal — so its size stays within twice the state's and compaction
costs at most as much again as the appends that made it necessary.

Ownership: ``owned`` lists every path of the folder bids2hf wrote (or is about to write: paths
are recorded *before* the file appears), ``remote_owned`` the same on the destination a staging
folder publishes to. Only these are ever deleted or replaced.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import DestinationError
from .manifest import DATASET_FILES_PREFIX, MANIFEST_PATH
from .write import EmbeddedFile

JOURNAL_NAME = "state.jsonl"
LEGACY_NAME = "state.json"  # written by bids2hf up to 0.x: migrated on the first write


@dataclass(frozen=True)
class ShardRecord:
    """A complete shard: what it was written from, its size, checksum and embedded files."""

    path: str
    content_id: str
    size: int
    sha256: str | None  # None until hashed (only publishing needs it)
    files: tuple[EmbeddedFile, ...] = ()


@dataclass(frozen=True)
class DatasetFileRecord:
    """A dataset-level file copied to ``bids/``: the source's size and mtime then, and its sha256."""

    relpath: str
    size: int
    mtime_ns: int
    sha256: str


@dataclass
class ResumeState:
    """Everything a later run needs to resume, update or clean up after this one."""

    plan_id: str | None = None
    source: str | None = None
    version: str | None = None
    destination: str | None = None  # the remote URL a staging folder publishes to
    complete: bool = False
    shards: dict[str, ShardRecord] = field(default_factory=dict)
    dataset_files: dict[str, DatasetFileRecord] = field(default_factory=dict)
    owned: set[str] = field(default_factory=set)
    remote_owned: set[str] = field(default_factory=set)


# -- records ------------------------------------------------------------------------------------
def _shard_record(rec: ShardRecord) -> dict[str, Any]:
    # Embedded files as arrays, not objects: they are most of the journal's bytes.
    files = [[e.path, e.size, e.sha256, e.row, e.column, e.index] for e in rec.files]
    return {
        "op": "shard",
        "path": rec.path,
        "content_id": rec.content_id,
        "size": rec.size,
        "sha256": rec.sha256,
        "files": files,
    }


def _dataset_file_record(rec: DatasetFileRecord) -> dict[str, Any]:
    return {
        "op": "dataset_file",
        "relpath": rec.relpath,
        "size": rec.size,
        "mtime_ns": rec.mtime_ns,
        "sha256": rec.sha256,
    }


def _apply(state: ResumeState, r: dict[str, Any]) -> None:
    """Apply one journal record (raises KeyError/TypeError/ValueError on a malformed one)."""
    op = r["op"]
    if op == "run":
        if r.get("destination") != state.destination:
            state.remote_owned = set()  # what we wrote on another destination is not ours here
        state.plan_id, state.source = str(r["plan_id"]), str(r["source"])
        state.version, state.destination = r.get("version"), r.get("destination")
        state.complete = False
    elif op == "shard":
        files = tuple(
            EmbeddedFile(str(p), int(s), str(h), int(row), str(c), int(i))
            for p, s, h, row, c, i in r["files"]
        )
        sha = r.get("sha256")
        state.shards[r["path"]] = ShardRecord(
            str(r["path"]), str(r["content_id"]), int(r["size"]), sha and str(sha), files
        )
    elif op == "sha256":
        old = state.shards.get(r["path"])
        if old is not None:
            state.shards[old.path] = ShardRecord(
                old.path, old.content_id, old.size, str(r["sha256"]), old.files
            )
    elif op == "drop_shards":
        for path in r["paths"]:
            state.shards.pop(path, None)
    elif op == "dataset_file":
        state.dataset_files[r["relpath"]] = DatasetFileRecord(
            str(r["relpath"]), int(r["size"]), int(r["mtime_ns"]), str(r["sha256"])
        )
    elif op == "drop_dataset_files":
        for relpath in r["relpaths"]:
            state.dataset_files.pop(relpath, None)
    elif op == "own":
        state.owned.update(map(str, r["paths"]))
    elif op == "disown":
        state.owned.difference_update(r["paths"])
    elif op == "remote_own":
        state.remote_owned.update(map(str, r["paths"]))
    elif op == "remote_disown":
        state.remote_owned.difference_update(r["paths"])
    elif op == "complete":
        state.complete = True
    else:
        raise ValueError(f"unknown record {op!r}")


def _snapshot(state: ResumeState) -> Iterator[dict[str, Any]]:
    """The records that rebuild ``state`` from nothing (what compaction writes)."""
    if state.plan_id is not None:
        yield {
            "op": "run",
            "plan_id": state.plan_id,
            "source": state.source,
            "version": state.version,
            "destination": state.destination,
        }
    for path in sorted(state.shards):
        yield _shard_record(state.shards[path])
    for relpath in sorted(state.dataset_files):
        yield _dataset_file_record(state.dataset_files[relpath])
    if state.owned:
        yield {"op": "own", "paths": sorted(state.owned)}
    if state.remote_owned:
        yield {"op": "remote_own", "paths": sorted(state.remote_owned)}
    if state.complete:
        yield {"op": "complete"}


def _line(record: dict[str, Any]) -> bytes:
    return (json.dumps(record, separators=(",", ":"), ensure_ascii=False) + "\n").encode()


def _from_legacy(data: dict[str, Any]) -> ResumeState:
    """The state an older bids2hf kept in ``state.json`` (one JSON document, rewritten whole).

    Ownership was not recorded then: the files its records name are the files it wrote (the
    manifest and card only once it completed).
    """
    state = ResumeState(
        plan_id=str(data["plan_id"]),
        source=str(data["source"]),
        version=data.get("version"),
        complete=bool(data.get("complete")),
    )
    for path, rec in dict(data.get("shards", {})).items():
        files = tuple(EmbeddedFile(**e) for e in rec.get("files", []))
        state.shards[path] = ShardRecord(
            path, str(rec["content_id"]), int(rec["size"]), rec.get("sha256"), files
        )
        state.owned.add(path)
    for relpath, rec in dict(data.get("dataset_files", {})).items():
        state.dataset_files[relpath] = DatasetFileRecord(
            relpath, int(rec["size"]), int(rec["mtime_ns"]), str(rec["sha256"])
        )
        state.owned.add(DATASET_FILES_PREFIX + relpath)
    if state.complete:
        state.owned.update((MANIFEST_PATH, "README.md"))
    return state


class StateStore:
    """The resume state of one folder and its journal.

    Every change is applied in memory and appended to the journal (and fsynced) before the
    method returns; methods are safe to call from several threads. Nothing is written before the
    first change: loading a state (as a run that is then refused does) leaves the folder as it was.
    The methods that change the state raise :class:`OSError` when the journal cannot be written
    (a full disk, say).
    """

    def __init__(self, state_dir: Path, tmp_dir: Path) -> None:
        self.state_dir = state_dir
        self.tmp_dir = tmp_dir  # where compaction writes (cleared by every run under its lock)
        self.path = state_dir / JOURNAL_NAME
        self.legacy_path = state_dir / LEGACY_NAME
        self.state = ResumeState()
        self.bytes_written = 0  # journal bytes written by this process (appends and compactions)
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._good = 0  # length of the journal's valid prefix, as loaded
        self._size = 0  # current length of the journal
        self._migrate = False  # state came from a legacy state.json: rewrite it as a journal
        self._closed = False

    # -- loading --------------------------------------------------------------------------------
    def load(self) -> ResumeState | None:
        """Read the state; None when the folder holds none (no journal, or one without a run)."""
        state = ResumeState()
        try:
            data = self.path.read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            data = None
        except PermissionError:
            raise DestinationError(
                f"{self.path}: cannot be read (permission denied); fix the permissions of the "
                "folder or choose another one"
            ) from None
        if data is not None:
            good = 0
            while (end := data.find(b"\n", good)) >= 0:  # a line without its newline is torn
                try:
                    _apply(state, json.loads(data[good:end]))
                except (ValueError, KeyError, TypeError):
                    break  # only the last append can be torn; nothing after it is trusted
                good = end + 1
            self._good = self._size = good
        else:
            try:
                legacy = json.loads(self.legacy_path.read_text())
                state = _from_legacy(legacy)
                self._migrate = True
            except (FileNotFoundError, NotADirectoryError, ValueError, KeyError, TypeError):
                pass
            except PermissionError:
                raise DestinationError(
                    f"{self.legacy_path}: cannot be read (permission denied); fix the "
                    "permissions of the folder or choose another one"
                ) from None
        self.state = state
        return state if state.plan_id is not None else None

    # -- changes --------------------------------------------------------------------------------
    def begin(self, plan_id: str, source: str, version: str, destination: str | None) -> None:
        """A run starts (or resumes): the state now describes its plan; not complete."""
        self._append(
            {
                "op": "run",
                "plan_id": plan_id,
                "source": source,
                "version": version,
                "destination": destination,
            }
        )

    def put_shard(self, rec: ShardRecord) -> None:
        self._append(_shard_record(rec))

    def set_shard_sha256(self, path: str, sha256: str) -> None:
        self._append({"op": "sha256", "path": path, "sha256": sha256})

    def drop_shards(self, paths: Iterable[str]) -> None:
        if paths := sorted(set(paths)):
            self._append({"op": "drop_shards", "paths": paths})

    def put_dataset_file(self, rec: DatasetFileRecord) -> None:
        self._append(_dataset_file_record(rec))

    def drop_dataset_files(self, relpaths: Iterable[str]) -> None:
        if relpaths := sorted(set(relpaths)):
            self._append({"op": "drop_dataset_files", "relpaths": relpaths})

    def own(self, paths: Iterable[str]) -> None:
        """Record paths of the folder as bids2hf's, before writing them."""
        if new := sorted(set(paths) - self.state.owned):
            self._append({"op": "own", "paths": new})

    def disown(self, paths: Iterable[str]) -> None:
        """Record that paths of the folder are gone (after deleting them)."""
        if gone := sorted(set(paths) & self.state.owned):
            self._append({"op": "disown", "paths": gone})

    def remote_own(self, paths: Iterable[str]) -> None:
        """Record paths of the destination as bids2hf's, before uploading them."""
        if new := sorted(set(paths) - self.state.remote_owned):
            self._append({"op": "remote_own", "paths": new})

    def remote_disown(self, paths: Iterable[str]) -> None:
        if gone := sorted(set(paths) & self.state.remote_owned):
            self._append({"op": "remote_disown", "paths": gone})

    def mark_complete(self) -> None:
        self._append({"op": "complete"})

    def close(self) -> None:
        """Stop recording: later changes (from a thread outliving a failed run) are dropped."""
        with self._lock:
            self._closed = True
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    # -- the journal ----------------------------------------------------------------------------
    def _append(self, record: dict[str, Any]) -> None:
        line = _line(record)
        with self._lock:
            if self._closed:
                return
            if self._migrate:
                _apply(self.state, record)
                self._compact_locked(self._snapshot_bytes())  # the whole state, this included
                self._migrate = False
                self.legacy_path.unlink(missing_ok=True)
                return
            fd = self._open_locked()
            _write_all(fd, line)
            os.fsync(fd)
            self._size += len(line)
            self.bytes_written += len(line)
            _apply(self.state, record)  # after the write: memory never claims what disk lacks

    def _open_locked(self) -> int:
        if self._fd is None:
            created = not self.path.exists()
            if created and self._good:
                # Removed since it was loaded: write what is known again before appending.
                self._compact_locked(self._snapshot_bytes())
                created = False
            self.state_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
            # A torn last line (or anything after the valid prefix) goes before the next append.
            os.ftruncate(fd, self._good)
            os.lseek(fd, self._good, os.SEEK_SET)
            self._fd = fd
            if created:
                _fsync_dir(self.state_dir)
        return self._fd

    def _snapshot_bytes(self) -> bytes:
        return b"".join(_line(r) for r in _snapshot(self.state))

    def compact_if_wasteful(self) -> bool:
        """Rewrite the journal when more than half of it is superseded; True if it was.

        Raises OSError if the rewrite fails (the journal is then left as it was).
        """
        with self._lock:
            if self._closed:
                return False
            data = self._snapshot_bytes()
            if self._size <= 2 * max(len(data), 4096):
                return False
            self._compact_locked(data)
            return True

    def _compact_locked(self, data: bytes) -> None:
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        # A unique temporary name on the journal's file system, so that the rename is atomic.
        fd, tmp = tempfile.mkstemp(prefix="state.", suffix=".tmp", dir=self.tmp_dir)
        try:
            _write_all(fd, data)
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            os.unlink(tmp)
            raise
        os.close(fd)
        os.replace(tmp, self.path)
        _fsync_dir(self.state_dir)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._good = self._size = len(data)
        self.bytes_written += len(data)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
