"""Copying the files stored beside the shards into ``files/<BIDS path>`` [issue 11].

The run copies them before writing the shards whose cells point at them (a cell's row lists the
file's sha256, known only once it is copied). Each copy streams the source in 8 MiB chunks to a
temporary name, hashing as it goes, and is renamed into place when complete; it is then recorded
in the state journal (``beside_file``) with its sha256, so that a re-run after a kill skips the
copies already made. Paths are recorded as bids2hf's before they are written (the run's
``own``), and only recorded ones are ever replaced or removed.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from bids2hf.model.format import BESIDE_PREFIX
from bids2hf.model.rows import FileRef, ShardPlan
from bids2hf.model.source import Source
from bids2hf.model.state import DatasetFileRecord
from bids2hf.write.output import copy_in
from bids2hf.write.output_folder import OutputFolder

__all__ = [
    "BesideCopy",
    "beside_files",
    "beside_paths",
    "copy_beside",
    "copy_in_place",
    "remove_stale_beside",
]


@dataclass(frozen=True)
class BesideCopy:
    """A file stored beside: its path in the output and the record of its copy."""

    path: str  # files/<relpath>
    record: DatasetFileRecord
    copied: bool  # by this run (False: an earlier run's copy, reused)


def beside_files(shards: Iterable[ShardPlan]) -> dict[str, FileRef]:
    """Every file the shards' rows store beside, by relpath, sorted."""
    found: dict[str, FileRef] = {}
    for shard in shards:
        found.update(shard.beside)
    return dict(sorted(found.items()))


def beside_paths(shards: Iterable[ShardPlan]) -> list[str]:
    """Their paths in the output (``files/<relpath>``)."""
    return [BESIDE_PREFIX + relpath for relpath in beside_files(shards)]


def _current(rec: DatasetFileRecord | None, ref: FileRef) -> bool:
    return rec is not None and (rec.size, rec.mtime_ns, rec.version) == (
        ref.size,
        ref.mtime_ns,
        ref.version,
    )


def copy_in_place(out: OutputFolder, path: str, rec: DatasetFileRecord) -> bool:
    """Whether the recorded copy ``path`` is still in ``out`` (a file of the recorded size)."""
    local = out.root / path
    return local.is_file() and local.stat().st_size == rec.size


def copy_beside(
    out: OutputFolder,
    source: Source,
    shards: Sequence[ShardPlan],
    progress: Callable[[int, int], None],
    done: Callable[[str, DatasetFileRecord], bool] | None = None,
    on_copy: Callable[[BesideCopy], None] | None = None,
    before_copy: Callable[[], None] | None = None,
) -> list[BesideCopy]:
    """Copy the shards' files stored beside into ``out`` (those not already there) and give each
    shard their sha256 (:attr:`ShardPlan.beside_sha256`).

    A file is already there when the journal records a copy of this very source file (size,
    mtime, version) and ``done(path, record)`` says the copy is still where it goes (default:
    the local file has the recorded size; a publication asks the destination). ``on_copy`` gets
    every file, copied or reused, in order (a publication uploads the copies); ``before_copy``
    is called before each copy is made (a publication waits there for room in its staging).

    Raises:
        SourceChangedError: a source file is not the planned one (its copy is not kept).
        InputError: a source file cannot be read.
        OSError: the output cannot be written (a full disk, ...).
    """
    store = out.store
    if done is None:
        done = functools.partial(copy_in_place, out)
    hashes: dict[str, str] = {}
    copies = []
    for relpath, ref in beside_files(shards).items():
        path = BESIDE_PREFIX + relpath
        rec = store.state.beside.get(relpath)
        copied = not (rec is not None and _current(rec, ref) and done(path, rec))
        if copied:
            if before_copy is not None:
                before_copy()
            sha = copy_in(out, source, ref, path, lambda n: progress(n, 0))
            rec = DatasetFileRecord(relpath, ref.size, ref.mtime_ns, sha, ref.version)
            store.put_beside(rec)
        assert rec is not None
        progress(0, 1)
        hashes[relpath] = rec.sha256
        copy = BesideCopy(path, rec, copied)
        copies.append(copy)
        if on_copy is not None:
            on_copy(copy)
    for shard in shards:
        shard.beside_sha256 = {r: hashes[r] for r in shard.beside}
    return copies


def remove_stale_beside(out: OutputFolder, wanted: Mapping[str, FileRef], local: bool) -> None:
    """Forget the copies of files the plan no longer stores beside; in a local output, delete
    them too (only those bids2hf recorded writing)."""
    state = out.store.state
    stale = [r for r in state.beside if r not in wanted]
    if local:
        gone = [
            p
            for p in state.owned
            if p.startswith(BESIDE_PREFIX) and p[len(BESIDE_PREFIX) :] not in wanted
        ]
        if out.remove_owned(gone):
            # files/ is bids2hf's then; emptied, it goes too (an output without copies has
            # none). Not empty: copies still wanted, or files bids2hf did not write.
            with contextlib.suppress(OSError):
                (out.root / BESIDE_PREFIX).rmdir()
    out.store.drop_beside(stale)
