"""``export``: rebuild the BIDS folder from a converted dataset, byte for byte.

Streams one row group at a time (only the columns that hold wanted files), checks every file's
sha256 before it is renamed into place, and refuses any stored path that would land outside the
output folder.
"""

from __future__ import annotations

import fnmatch
import hashlib
import logging
import os
import posixpath
import shutil
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import pyarrow.parquet as pq

from .errors import DestinationError, InputError, VerificationError
from .manifest import ManifestEntry
from .progress import ProgressBar
from .published import PublishedDataset, open_dataset

log = logging.getLogger(__name__)

_TMP = ".bids2hf-export-tmp"


@dataclass
class ExportReport:
    """What ``export`` wrote."""

    output: str
    files: int = 0
    bytes: int = 0
    skipped: list[str] = field(default_factory=list)  # left out at conversion time


def safe_relpath(path: str) -> str:
    """Return ``path`` if it is a plain relative path; raise for anything that could escape."""
    if (
        not path
        or "\\" in path
        or "\x00" in path
        or path.startswith("/")
        or posixpath.isabs(path)
        or (len(path) > 1 and path[1] == ":")
        or any(part in ("..", "", ".") for part in path.split("/"))
    ):
        raise InputError(f"refusing stored path {path!r}: absolute or escaping the output folder")
    return path


def _wanted(path: str, include: Sequence[str], exclude: Sequence[str]) -> bool:
    if include and not any(fnmatch.fnmatchcase(path, p) for p in include):
        return False
    return not any(fnmatch.fnmatchcase(path, p) for p in exclude)


def _entries(dataset: PublishedDataset) -> list[ManifestEntry]:
    manifest = dataset.manifest()
    if manifest is not None:
        return manifest
    # No manifest (an interrupted upload, or a dataset written by an older tool): the shard
    # footers still list every embedded file.
    return [
        ManifestEntry(e.path, e.size, "row", e.sha256, shard, e.column, e.row, e.index)
        for shard, files in dataset.embedded().items()
        for e in files
    ]


class _Target:
    """Writes one output file atomically and checks its checksum."""

    def __init__(self, out: Path, entry: ManifestEntry) -> None:
        self.entry = entry
        self.final = out / entry.path
        self.tmp = out / _TMP / hashlib.sha256(entry.path.encode()).hexdigest()

    def write(self, chunks: Iterable[memoryview | bytes]) -> int:
        sha = hashlib.sha256()
        size = 0
        with open(self.tmp, "wb") as f:
            for chunk in chunks:
                sha.update(chunk)
                size += f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        if size != self.entry.size or (self.entry.sha256 and sha.hexdigest() != self.entry.sha256):
            self.tmp.unlink()
            raise VerificationError(
                f"{self.entry.path}: stored bytes do not match the recorded size/sha256; "
                "the published copy is damaged"
            )
        self.final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self.tmp, self.final)
        return size


def _chunks(f: BinaryIO) -> Iterator[bytes]:
    while chunk := f.read(8 << 20):
        yield chunk


def _open(dataset: PublishedDataset, relpath: str) -> BinaryIO:
    try:
        f: BinaryIO = dataset.fs.open(dataset.path(relpath), "rb")
    except FileNotFoundError:
        raise VerificationError(
            f"{dataset.url}/{relpath}: listed in the manifest but missing from the published "
            "dataset (an incomplete upload?)"
        ) from None
    return f


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
        overwrite: replace files that already exist in ``bids_out``.
        progress: show a progress bar.
    """
    dataset = open_dataset(source)
    out = Path(bids_out)
    entries = _entries(dataset)
    report = ExportReport(str(out))
    chosen: dict[str, ManifestEntry] = {}
    for e in entries:
        if e.placement == "left_out":
            # Never written, so its path is only reported. Left-out version-control folders are
            # listed with a trailing slash (``.git/``), which safe_relpath rightly refuses.
            report.skipped.append(e.path)
            continue
        safe_relpath(e.path)
        if e.location is not None:
            safe_relpath(e.location)
        if _wanted(e.path, include, exclude) and e.path not in chosen:
            chosen[e.path] = e
    resolved_out = out.resolve()
    for path in chosen:
        if not (resolved_out / path).resolve().is_relative_to(resolved_out):
            raise InputError(f"refusing stored path {path!r}: it resolves outside {out}")
        if (out / path).exists() and not overwrite:
            raise DestinationError(f"{out / path}: already exists; pass --overwrite to replace it")
    out.mkdir(parents=True, exist_ok=True)
    (out / _TMP).mkdir(exist_ok=True)
    total = sum(e.size for e in chosen.values())
    try:
        with ProgressBar(total, len(chosen), enabled=progress, desc="export") as bar:
            by_shard: dict[str, list[ManifestEntry]] = defaultdict(list)
            for e in chosen.values():
                if e.placement == "row":
                    assert e.location is not None
                    by_shard[e.location].append(e)
                else:
                    assert e.location is not None
                    with _open(dataset, e.location) as f:
                        report.bytes += _Target(out, e).write(_chunks(f))
                    report.files += 1
                    bar.update(e.size, 1)
            for shard in sorted(by_shard):
                _export_shard(dataset, shard, by_shard[shard], out, report, bar)
    finally:
        shutil.rmtree(out / _TMP, ignore_errors=True)
    return report


def _export_shard(
    dataset: PublishedDataset,
    shard: str,
    entries: list[ManifestEntry],
    out: Path,
    report: ExportReport,
    bar: ProgressBar,
) -> None:
    with _open(dataset, shard) as f:
        pf = pq.ParquetFile(f)
        starts = []
        n = 0
        for i in range(pf.metadata.num_row_groups):
            starts.append(n)
            n += pf.metadata.row_group(i).num_rows
        names = set(pf.schema_arrow.names)
        by_group: dict[int, list[ManifestEntry]] = defaultdict(list)
        for e in entries:
            if e.row is None or not 0 <= e.row < n or e.column not in names:
                raise VerificationError(
                    f"{shard}: has no row {e.row} / column {e.column!r}, where the manifest "
                    f"puts {e.path!r}; the published copy is damaged"
                )
            group = max(i for i, s in enumerate(starts) if s <= e.row)
            by_group[group].append(e)
        for group in sorted(by_group):
            wanted = by_group[group]
            columns = sorted({e.column for e in wanted if e.column})
            table = pf.read_row_group(group, columns=columns)
            for e in wanted:
                assert e.row is not None and e.column is not None
                cell = table.column(e.column)[e.row - starts[group]]
                item = cell if e.index is None or e.index < 0 else cell.values[e.index]
                stored = item["path"].as_py()
                # A crafted shard is refused like a crafted manifest (exit 2), not as damage.
                if isinstance(stored, str):
                    safe_relpath(stored)
                if stored != e.path:
                    raise VerificationError(
                        f"{shard}: row {e.row} column {e.column} holds {stored!r}, "
                        f"the manifest says {e.path!r}"
                    )
                data = item["bytes"]
                buffer = data.as_buffer() if data.is_valid else b""
                report.bytes += _Target(out, e).write([memoryview(buffer)])
                report.files += 1
                bar.update(e.size, 1)
            del table
