"""Finishing an output folder: dataset-level files, the manifest and the card, in that order."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

from bids2hf.model.format import DATASET_FILES_PREFIX, MANIFEST_PATH
from bids2hf.model.inventory import Placement, SourceFile
from bids2hf.model.manifest import ManifestEntry, dumps
from bids2hf.model.rows import FileRef, ShardPlan
from bids2hf.model.source import Source
from bids2hf.model.state import DatasetFileRecord, ResumeState
from bids2hf.write.output_folder import OutputFolder, atomic_file

__all__ = ["copy_in", "finish_output"]


def finish_output(
    out: OutputFolder,
    source: Source,  # [issue 15] a Source, not a path
    shards: Sequence[ShardPlan],
    dataset_files: Sequence[SourceFile],
    left_out: Sequence[SourceFile],
    progress: Callable[[int, int], None],
    card: Callable[[bytes], bytes],
) -> list[ManifestEntry]:
    """Copy dataset-level files, then write the manifest and, last, the card: ``card`` gets the
    manifest's bytes (the card names their sha256) once the dataset-level files are in place.

    Raises :class:`~bids2hf.write.SourceChangedError` if a dataset-level file changed since
    planning (nothing of it is copied; re-running converts the new version).
    """
    store = out.store
    state = store.state
    wanted = {DATASET_FILES_PREFIX + f.relpath for f in dataset_files}
    # Dataset-level files removed from the source since an earlier run must not linger (those
    # bids2hf wrote: anything else under bids/ is not ours to delete).
    out.remove_owned(
        [p for p in state.owned if p.startswith(DATASET_FILES_PREFIX) and p not in wanted]
    )
    store.drop_dataset_files(
        [r for r in state.dataset_files if DATASET_FILES_PREFIX + r not in wanted]
    )
    entries: list[ManifestEntry] = []
    for f in dataset_files:
        rel = DATASET_FILES_PREFIX + f.relpath
        rec = state.dataset_files.get(f.relpath)
        dest = out.root / rel
        if not (rec and _same_file(rec, f) and dest.is_file()):  # [issue 15] _same_file
            ref = FileRef(f.relpath, f.size, f.mtime_ns, f.version)
            sha = copy_in(out, source, ref, rel, lambda n: progress(n, 0))
            rec = DatasetFileRecord(f.relpath, f.size, f.mtime_ns, sha, f.version)
            store.put_dataset_file(rec)
        progress(0, 1)
        entries.append(
            ManifestEntry(f.relpath, f.size, Placement.DATASET_FILE.value, rec.sha256, rel)
        )
    for f in left_out:
        entries.append(ManifestEntry(f.relpath, f.size, Placement.LEFT_OUT.value, reason=f.reason))
    entries += _row_entries(state, shards)
    manifest = dumps(entries)
    out.write_bytes(out.root / MANIFEST_PATH, manifest)
    out.write_bytes(out.root / "README.md", card(manifest))
    return entries


def _row_entries(state: ResumeState, shards: Sequence[ShardPlan]) -> list[ManifestEntry]:
    """The manifest entries of the files the shards' rows hold (or store beside [issue 11])."""
    entries: list[ManifestEntry] = []
    for shard in shards:
        for ef in state.shards[shard.path].files:
            if ef.location is not None:  # [issue 11] stored beside: the cell points at it
                entries.append(
                    ManifestEntry(
                        ef.path,
                        ef.size,
                        Placement.BESIDE.value,
                        ef.sha256,
                        ef.location,
                        ef.column,
                        ef.row,
                        ef.index,
                        shard=shard.path,
                    )
                )
                continue
            entries.append(
                ManifestEntry(
                    ef.path,
                    ef.size,
                    Placement.ROW.value,
                    ef.sha256,
                    shard.path,
                    ef.column,
                    ef.row,
                    ef.index,
                    offset=ef.offset,
                )
            )
    return entries


# -- [issue 15] ------------------------------------------------------------------------------
def _same_file(rec: DatasetFileRecord, f: SourceFile) -> bool:
    """The copy recorded is of this source file (the version too: remote sources)."""
    return rec.size == f.size and rec.mtime_ns == f.mtime_ns and rec.version == f.version


def copy_in(
    out: OutputFolder, source: Source, ref: FileRef, rel: str, on_bytes: Callable[[int], None]
) -> str:
    """Copy a source file to ``rel`` in the output atomically, in 8 MiB chunks (never whole in
    memory: also files stored beside the shards, of any size); return its sha256.

    A local file is copied by :meth:`OutputFolder.copy_in` as before; a remote one is streamed
    (checked against its planned size and version).

    Raises:
        SourceChangedError: the file is not the planned one (nothing is renamed into place).
    """
    local = source.local_path(ref.relpath)
    if local is not None:
        return out.copy_in(local, rel, ref.size, ref.mtime_ns, on_bytes)
    sha = hashlib.sha256()
    # Raised inside atomic_file, a change removes the copy: it is never renamed into place.
    with atomic_file(out.tmp_path(rel), out.root / rel) as dest:
        for chunk in source.read_chunks(ref):
            sha.update(chunk)
            dest.write(chunk)
            on_bytes(len(chunk))
    return sha.hexdigest()
