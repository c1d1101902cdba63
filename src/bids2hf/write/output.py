"""Finishing an output folder: dataset-level files, the manifest and the card, in that order."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from bids2hf.model.format import DATASET_FILES_PREFIX, MANIFEST_PATH
from bids2hf.model.inventory import Placement, SourceFile
from bids2hf.model.manifest import ManifestEntry, dumps
from bids2hf.model.rows import ShardPlan
from bids2hf.model.state import DatasetFileRecord
from bids2hf.write.output_folder import OutputFolder

__all__ = ["finish_output"]


def finish_output(
    out: OutputFolder,
    source_root: Path,
    shards: Sequence[ShardPlan],
    dataset_files: Sequence[SourceFile],
    left_out: Sequence[SourceFile],
    progress: Callable[[int, int], None],
    card: bytes,
) -> list[ManifestEntry]:
    """Copy dataset-level files, then write the manifest and, last, the card (``card``'s bytes).

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
        if not (rec and rec.size == f.size and rec.mtime_ns == f.mtime_ns and dest.is_file()):
            sha = out.copy_in(
                source_root / f.relpath, rel, f.size, f.mtime_ns, lambda n: progress(n, 0)
            )
            rec = DatasetFileRecord(f.relpath, f.size, f.mtime_ns, sha)
            store.put_dataset_file(rec)
        progress(0, 1)
        entries.append(
            ManifestEntry(f.relpath, f.size, Placement.DATASET_FILE.value, rec.sha256, rel)
        )
    for f in left_out:
        entries.append(ManifestEntry(f.relpath, f.size, Placement.LEFT_OUT.value, reason=f.reason))
    for shard in shards:
        for ef in state.shards[shard.path].files:
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
    out.write_bytes(out.root / MANIFEST_PATH, dumps(entries))
    out.write_bytes(out.root / "README.md", card)
    return entries
