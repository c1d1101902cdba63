"""The resume state's journal on disk: append-only, fsynced, compacted."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from bids2hf._version import __version__
from bids2hf.errors import DestinationError
from bids2hf.model.format import (
    JOURNAL_NAME,
    LEGACY_NAME,
)
from bids2hf.model.state import (
    DatasetFileRecord,
    ResumeState,
    ShardRecord,
    UnknownRecordError,
    _apply,
    _dataset_file_record,
    _from_legacy,
    _line,
    _shard_record,
    _snapshot,
)

__all__ = ["CARDS_NAME", "StateStore"]

#: Beside the journal: the identities of the card last published to each destination.
CARDS_NAME = "published_cards.json"


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
        """Read the state; None when the folder holds none (no journal, or one without a run).

        Raises:
            DestinationError: the journal cannot be read, or holds a record of a newer bids2hf.
        """
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
                except UnknownRecordError as exc:
                    # Complete, but of a newer version: not a torn line, never cut off.
                    raise DestinationError(
                        f"{self.path}: holds a record bids2hf {__version__} does not know "
                        f"({exc}); it was written by a newer bids2hf: use that version, or "
                        "choose another folder"
                    ) from None
                except (ValueError, KeyError, TypeError):
                    break  # only the last append can be torn; nothing after it is trusted
                good = end + 1
            self._good = self._size = good
        else:
            try:
                legacy = json.loads(self.legacy_path.read_text())
                state = _from_legacy(legacy)
                # Its shards in data/, recorded or not (an interrupted run's last ones are not).
                shards = self.state_dir.parent / "data"
                if shards.is_dir():
                    state.owned.update(f"data/{p.name}" for p in shards.glob("*.parquet"))
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

    def put_beside(self, rec: DatasetFileRecord) -> None:
        """Record a file copied beside the shards (``files/<relpath>``) with its sha256."""
        self._append(_dataset_file_record(rec, "beside_file"))

    def drop_beside(self, relpaths: Iterable[str]) -> None:
        if relpaths := sorted(set(relpaths)):
            self._append({"op": "drop_beside_files", "relpaths": relpaths})

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

    # -- the published card ---------------------------------------------------------------------
    def published_card(self, destination: str) -> set[str]:
        """What the card bids2hf last published to ``destination`` may be, as the remote lists
        it (``git:<blob oid>``, ``sha256:<hex>``); empty when no run recorded publishing one.

        Kept beside the journal (``published_cards.json``): a card edited on the Hub since then
        is someone else's. An unreadable record is no record. Raises nothing.
        """
        try:
            data = json.loads((self.state_dir / CARDS_NAME).read_text())
            return {str(i) for i in data.get(destination, [])}
        except (OSError, ValueError, TypeError, AttributeError):
            return set()

    def record_published_card(self, destination: str, identities: Iterable[str]) -> None:
        """Record the identities the card on ``destination`` may have (replacing the earlier
        ones). Written atomically (temporary file, fsync, rename).

        Raises :class:`OSError` when the record cannot be written.
        """
        path = self.state_dir / CARDS_NAME
        with self._lock:
            try:
                data = json.loads(path.read_text())
                if not isinstance(data, dict):
                    data = {}
            except (OSError, ValueError):
                data = {}
            data[destination] = sorted(set(identities))
            self.tmp_dir.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix="cards.", suffix=".tmp", dir=self.tmp_dir)
            try:
                _write_all(fd, json.dumps(data, sort_keys=True).encode())
                os.fsync(fd)
            except BaseException:
                os.close(fd)
                os.unlink(tmp)
                raise
            os.close(fd)
            os.replace(tmp, path)
            _fsync_dir(self.state_dir)

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
            try:
                _write_all(fd, line)
                os.fsync(fd)
            except BaseException:
                # A partial write (a full disk) must not leave the next append glued to torn
                # bytes: cut the journal back to its last complete record.
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, self._size)
                    os.lseek(fd, self._size, os.SEEK_SET)
                raise
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
