"""``export``: rebuild the BIDS folder from a converted dataset, byte for byte.

Everything that can be checked without reading the embedded bytes is checked before the first
file is written: every index entry (types, ranges, safe paths), the manifest against each
shard's own footer index, every row/column/list position against the shard's structure, and
the stored path of every wanted cell (a small read of the ``path`` fields only). Files with a
recorded ``offset`` (stored verbatim) are then fetched as byte ranges, neighbours coalesced and
several in flight, each checked against its sha256 before it is written: an export of a few
files costs about their bytes plus the index. The other files are streamed one row group at a
time (only the columns that hold wanted files). Every file's size and sha256 are checked before
it is renamed into place.

Exit codes (through the CLI): 2 when the index is refused (damaged or crafted, or a path that
would land outside the output folder) or the output folder is in the way, always before the
first write; 1 when published files are missing, a shard's pages cannot be read, or bytes do not
match the recorded size/sha256.

A manifest that parses says what the dataset holds: only the shards it references are read,
and what else the shards, ``bids/`` or ``data/`` hold (stale copies, foreign files, which bids2hf
never deletes) is not exported, with one warning. Without a manifest, embedded files come from
the shards' footer indexes and dataset-level files from ``bids/``, where conversion stores them
verbatim; what cannot be restored that way is named and the export refused.
"""

from __future__ import annotations

import fnmatch
import os
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from bids2hf.errors import InputError, VerificationError
from bids2hf.model.format import BESIDE_PREFIX, DATASET_FILES_PREFIX, MANIFEST_PATH
from bids2hf.model.manifest import ManifestEntry
from bids2hf.progress import ProgressBar
from bids2hf.readback.export_entries import (
    Shard,
    by_row_group,
    check_row_entries,
    entries_to_restore,
    offset_in_shard,
    read_shards,
)
from bids2hf.readback.export_folder import (
    OutputFile,
    already_there,
    refuse_blocked,
    refuse_clashes,
    refuse_inside_source,
    run_folder,
)
from bids2hf.readback.published import PublishedDataset, open_dataset
from bids2hf.readback.ranges import fetch_ranges
from bids2hf.readback.shard_cells import (
    REFUSED,
    chunks,
    file_item,
    missing_file,
    open_published,
    parquet_file,
    read_group,
    stored_path,
)

__all__ = ["ExportReport", "export"]

#: Dataset-level files every converted dataset has (scan refuses a folder without it).
_REQUIRED = ("dataset_description.json",)

#: Byte-range requests in flight per shard when fetching files by their recorded offset.
_RANGE_WORKERS = 4
#: Gap bytes fetched between two wanted files, at most this fraction of the file brought in:
#: an export downloads at most 1.05x the bytes of its files (plus the index).
_RANGE_WASTE = 0.05


@dataclass
class ExportReport:
    """What ``export`` wrote."""

    output: str
    files: int = 0
    bytes: int = 0
    skipped: list[str] = field(default_factory=list)  # left out at conversion time
    present: int = 0  # already in the output folder with their sha256 (an earlier export)


@dataclass
class _Run:
    """Where this run writes (``out``, through its own temporary folder ``tmp``) and what it
    has written so far."""

    out: Path
    tmp: Path
    report: ExportReport
    bar: ProgressBar

    def write(self, e: ManifestEntry, data: Iterable[memoryview | bytes]) -> None:
        """Write ``e``'s file from ``data`` (see :meth:`OutputFile.write`) and count it.

        Raises:
            VerificationError: the bytes differ from the recorded size or sha256.
            DestinationError: the file cannot be put in place.
        """
        self.report.bytes += OutputFile(self.out, self.tmp, e).write(data)
        self.report.files += 1
        self.bar.update(e.size, 1)


def _wanted(path: str, include: Sequence[str], exclude: Sequence[str]) -> bool:
    if include and not any(fnmatch.fnmatchcase(path, p) for p in include):
        return False
    return not any(fnmatch.fnmatchcase(path, p) for p in exclude)


def _refuse_lost_required(
    dataset: PublishedDataset,
    chosen: dict[str, ManifestEntry],
    include: Sequence[str],
    exclude: Sequence[str],
    has_bids_files: bool,
) -> None:
    """Without a manifest, the dataset-level files BIDS requires must be found in ``bids/``.

    Raises:
        VerificationError: one is missing (with the --exclude that exports the rest anyway).
    """
    lost = [p for p in _REQUIRED if p not in chosen and _wanted(p, include, exclude)]
    if lost:
        where = "not in bids/" if has_bids_files else "bids/ holds no dataset-level files"
        raise VerificationError(
            f"{dataset.url}: without {MANIFEST_PATH}, {', '.join(lost)} cannot be restored "
            f"({where}; an interrupted upload? re-run the convert or push to complete it); "
            f"to export the rest anyway, add --exclude {' --exclude '.join(lost)}"
        )


def _choose(
    dataset: PublishedDataset,
    include: Sequence[str],
    exclude: Sequence[str],
    report: ExportReport,
) -> tuple[dict[str, ManifestEntry], dict[str, Shard]]:
    """The entries to write, by path, all checked; and the shards they come from."""
    manifest = dataset.manifest()
    shards = read_shards(dataset, manifest)
    bids_files = dataset.files(DATASET_FILES_PREFIX.rstrip("/"))
    beside_files = dataset.files(BESIDE_PREFIX.rstrip("/"))  # [issue 11]
    entries, extra, listed = entries_to_restore(dataset, manifest, shards, bids_files)
    chosen: dict[str, ManifestEntry] = {}
    for e in entries:
        if e.placement == "left_out":
            # Never written, so its path is only reported. Left-out version-control folders are
            # listed with a trailing slash (``.git/``), which safe_relpath rightly refuses.
            report.skipped.append(e.path)
        elif _wanted(e.path, include, exclude) and e.path not in chosen:
            chosen[e.path] = e
    for e in extra:  # only without a manifest
        if not _wanted(e.path, include, exclude):
            continue
        other = chosen.setdefault(e.path, e)
        if (other.size, other.sha256) != (e.size, e.sha256):
            raise InputError(
                f"{dataset.url}: {e.path!r} is held twice, with different contents, in "
                f"{other.location} and {e.location}, and no manifest says which is current; "
                "remove the stale copy or restore the manifest"
            )
    if not listed:
        _refuse_lost_required(dataset, chosen, include, exclude, bool(bids_files))
    refuse_clashes(dataset, chosen)
    by_shard: dict[str, list[ManifestEntry]] = defaultdict(list)
    for e in chosen.values():
        assert e.location is not None
        if e.placement in ("dataset_file", "beside"):
            size = (bids_files if e.placement == "dataset_file" else beside_files).get(e.location)
            if size is None:
                raise missing_file(dataset, e.location)
            if size != e.size:
                raise VerificationError(
                    f"{dataset.url}/{e.location}: {size} bytes where the manifest records "
                    f"{e.size}; the published copy is damaged"
                )
        elif e.location in shards:
            by_shard[e.location].append(e)
        elif dataset.exists(e.location):
            raise InputError(
                f"{dataset.url}/{MANIFEST_PATH}: puts {e.path!r} in {e.location!r}, which is no "
                f"shard (data/*.parquet); {REFUSED}"
            )
        else:
            raise missing_file(dataset, e.location)
    for path, wanted in by_shard.items():
        check_row_entries(dataset, shards[path], wanted)
    return chosen, {path: shards[path] for path in by_shard}


def export(
    source: str,
    bids_out: str | os.PathLike[str],
    *,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    overwrite: bool = False,
    progress: bool = True,
) -> ExportReport:
    """Rebuild the BIDS tree of a converted dataset.

    Args:
        source: a local output folder, ``hf://datasets/ORG/NAME[@REV]`` or an fsspec URL.
        bids_out: folder to write the BIDS tree into.
        include: glob patterns on BIDS paths; only matching files are written (all if empty).
        exclude: glob patterns of files not to write.
        overwrite: replace files that already exist in ``bids_out``. Files already there
            with their recorded size and sha256 (an interrupted or earlier export) are kept
            either way, so re-running the same export completes it.
        progress: show a progress bar.

    Raises:
        InputError: the source is no bids2hf dataset, or its index is damaged or crafted
            (refused before anything is written).
        DestinationError: ``bids_out`` is a local ``source`` or inside it, a file would be
            replaced without ``overwrite``, or something in ``bids_out`` stands where a folder
            or file goes (refused before anything is written).
        VerificationError: published files are missing, a shard's pages cannot be read,
            files differ from their recorded size or sha256, or (without a manifest)
            dataset-level files cannot be restored.
    """
    out = Path(bids_out)
    refuse_inside_source(source, out)
    dataset = open_dataset(source)
    report = ExportReport(str(out))
    chosen, shards = _choose(dataset, include, exclude, report)
    candidates = [e.size for p, e in chosen.items() if (out / p).is_file()]
    with ProgressBar(
        sum(candidates), len(candidates), enabled=progress and bool(candidates), desc="check"
    ) as bar:
        present = already_there(out, chosen, bar.update)  # files an interrupted run wrote
    report.present = len(present)
    chosen = {path: e for path, e in chosen.items() if path not in present}
    refuse_blocked(out, chosen, overwrite)
    tmp = run_folder(out)
    total = sum(e.size for e in chosen.values())
    try:
        with ProgressBar(total, len(chosen), enabled=progress, desc="export") as bar:
            _write_chosen(dataset, chosen, shards, _Run(out, tmp.path, report, bar))
    finally:
        # Each write removes its own temporary file: the folder is empty unless someone else
        # put something there, which is then kept.
        tmp.close()
    return report


def _write_chosen(
    dataset: PublishedDataset,
    chosen: dict[str, ManifestEntry],
    shards: dict[str, Shard],
    run: _Run,
) -> None:
    """Write the dataset-level files, then the embedded files shard by shard."""
    for e in chosen.values():
        if e.placement in ("dataset_file", "beside"):  # [issue 11] beside: a copy of files/
            assert e.location is not None
            with open_published(dataset, e.location) as f:
                run.write(e, chunks(f))
    by_shard: dict[str, list[ManifestEntry]] = defaultdict(list)
    for e in chosen.values():
        if e.placement == "row":
            assert e.location is not None
            by_shard[e.location].append(e)
    for shard in sorted(by_shard):
        _export_shard(dataset, shards[shard], by_shard[shard], run)


def _export_shard(
    dataset: PublishedDataset,
    shard: Shard,
    entries: list[ManifestEntry],
    run: _Run,
) -> None:
    where = f"{dataset.url}/{shard.path}"
    ranged = [e for e in entries if offset_in_shard(shard, e) is not None]
    if ranged:
        _export_ranges(dataset, shard, ranged, run)
    rest = [e for e in entries if offset_in_shard(shard, e) is None]
    if not rest:
        return
    starts = shard.starts
    by_group = by_row_group(starts, rest)
    with open_published(dataset, shard.path, whole=False) as f:
        pf = parquet_file(f, where, shard.meta)
        for group in sorted(by_group):
            wanted = by_group[group]
            columns = sorted({e.column for e in wanted if e.column})
            table = read_group(pf, group, columns, where)
            for e in wanted:
                assert e.row is not None and e.column is not None
                # Checked before writing began, from the path pages alone; checked again, since
                # this is what is written. A difference now means the pages of the bytes
                # disagree with those of the paths (or the file changed while read): files
                # were written already, so this is no refusal of the index (exit 2) but a
                # damaged copy (exit 1).
                try:
                    item: pa.StructScalar | None = file_item(
                        table.column(e.column)[e.row - starts[group]], e, where
                    )
                except InputError:
                    item = None
                if item is None or stored_path(item) != e.path:
                    raise VerificationError(
                        f"{where}: row {e.row} column {e.column} no longer holds {e.path!r} when "
                        "read with its bytes; the published copy is damaged (or changed while "
                        "read)"
                    )
                data = item["bytes"]
                buffer = data.as_buffer() if data.is_valid else b""
                run.write(e, [memoryview(buffer)])
            del table


def _export_ranges(
    dataset: PublishedDataset,
    shard: Shard,
    entries: list[ManifestEntry],
    run: _Run,
) -> None:
    """Fetch files stored verbatim by their byte range and write them.

    Raises:
        RangeError: a range's bytes do not hash to the file's sha256 (the index or the shard is
            damaged); that file is never written.
    """
    items = []
    for e in entries:
        offset = offset_in_shard(shard, e)
        assert offset is not None and e.sha256 is not None
        items.append((offset, e.size, e.sha256))
    path = dataset.path(shard.path)
    for i, data in fetch_ranges(
        dataset.fs,
        path,
        items,
        workers=_RANGE_WORKERS,
        waste=_RANGE_WASTE,
        names=[e.path for e in entries],
    ):
        e = entries[i]
        # fetch_ranges checked the sha256 already; OutputFile checks again as it writes, which is
        # cheap next to the download and keeps one rule for every file written.
        run.write(e, [data])
