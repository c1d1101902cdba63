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

import bisect
import contextlib
import fnmatch
import hashlib
import logging
import os
import posixpath
import tempfile
import uuid
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import pyarrow as pa
import pyarrow.parquet as pq

from bids2hf.errors import DestinationError, InputError, VerificationError
from bids2hf.model.format import (
    BESIDE_PREFIX,
    DATASET_FILES_PREFIX,
    MANIFEST_PATH,
    EmbeddedFile,
    write_chunk,
)
from bids2hf.model.manifest import ManifestEntry
from bids2hf.progress import ProgressBar
from bids2hf.readback.published import PublishedDataset, open_dataset, safe_relpath
from bids2hf.readback.ranges import fetch_ranges

__all__ = ["ExportReport", "export"]

log = logging.getLogger(__name__)

#: Each run writes into a temporary folder of its own in the output folder, named with this prefix.
_TMP_PREFIX = ".bids2hf-export-"
_REFUSED = (
    "the index is damaged or crafted, so it is refused (download or convert the dataset again)"
)
#: Dataset-level files every converted dataset has (scan refuses a folder without it).
_REQUIRED = ("dataset_description.json",)

#: Byte-range requests in flight per shard when fetching files by their recorded offset.
_RANGE_WORKERS = 4
#: Gap bytes fetched between two wanted files, at most this fraction of the file brought in:
#: an export downloads at most 1.05x the bytes of its files (plus the index).
_RANGE_WASTE = 0.05

#: (column, row, index) of a file inside one shard; index -1 for single-valued columns.
_Slot = tuple[str, int, int]


@dataclass
class ExportReport:
    """What ``export`` wrote."""

    output: str
    files: int = 0
    bytes: int = 0
    skipped: list[str] = field(default_factory=list)  # left out at conversion time


def _wanted(path: str, include: Sequence[str], exclude: Sequence[str]) -> bool:
    if include and not any(fnmatch.fnmatchcase(path, p) for p in include):
        return False
    return not any(fnmatch.fnmatchcase(path, p) for p in exclude)


def _slot(e: ManifestEntry | EmbeddedFile) -> _Slot:
    assert e.column is not None and e.row is not None
    return (e.column, e.row, -1 if e.index is None else e.index)


@dataclass
class _Shard:
    """What a shard's footer says: its row groups, file columns and bids2hf index."""

    path: str
    meta: pq.FileMetaData
    index: dict[_Slot, EmbeddedFile]

    @property
    def starts(self) -> list[int]:
        out, n = [], 0
        for i in range(self.meta.num_row_groups):
            out.append(n)
            n += self.meta.row_group(i).num_rows
        return out

    def file_column(self, name: str, where: str) -> _FileColumn | None:
        """How column ``name`` stores files, or None if it is no file column.

        Raises:
            InputError: the shard has two columns named ``name`` (crafted).
        """
        schema = self.meta.schema.to_arrow_schema()
        found = schema.get_all_field_indices(name)
        if not found:
            return None
        if len(found) > 1:
            raise InputError(f"{where}: has a column named {name!r} twice; {_REFUSED}")
        kind = schema.field(found[0]).type
        is_list = pa.types.is_list(kind) or pa.types.is_large_list(kind)
        item = kind.value_type if is_list else kind
        if not pa.types.is_struct(item):
            return None
        types = {item.field(i).name: item.field(i).type for i in range(item.num_fields)}
        path_type, bytes_type = types.get("path", pa.null()), types.get("bytes", pa.null())
        if not (pa.types.is_string(path_type) or pa.types.is_large_string(path_type)):
            return None
        if not (pa.types.is_binary(bytes_type) or pa.types.is_large_binary(bytes_type)):
            return None
        depth = 4 if is_list else 2  # NAME.list.element.FIELD or NAME.FIELD
        leaves: dict[str, tuple[int, str]] = {}
        for i in range(len(self.meta.schema)):
            parts = self.meta.schema.column(i).path.split(".")
            if len(parts) == depth and parts[0] == name and parts[-1] in ("path", "bytes"):
                leaves[parts[-1]] = (i, ".".join(parts))
        if len(leaves) != 2:
            return None
        return _FileColumn(is_list, leaves["path"][1], leaves["bytes"][0])

    def max_bytes(self, column: _FileColumn, group: int) -> int:
        """An upper bound of one file's size in ``column`` within row group ``group``.

        Embedded bytes are stored uncompressed or compressed (other files use zstd), so the
        shard's size is no bound; the uncompressed size of the column chunk is.
        """
        return int(self.meta.row_group(group).column(column.bytes_leaf).total_uncompressed_size)


@dataclass(frozen=True)
class _FileColumn:
    """A column of files: a list of {path, bytes} structs per row, or one struct."""

    is_list: bool
    path_leaf: str  # Parquet column path of the ``path`` field, to read paths alone
    bytes_leaf: int  # Parquet column index of the ``bytes`` field


def _read_shards(
    dataset: PublishedDataset, manifest: list[ManifestEntry] | None
) -> dict[str, _Shard]:
    """The shards of the dataset (see :meth:`PublishedDataset.footers`), each index checked."""
    shards = {}
    for path, (meta, files) in dataset.footers(manifest).items():
        index: dict[_Slot, EmbeddedFile] = {}
        for e in files:
            if _slot(e) in index:
                raise InputError(
                    f"{dataset.url}/{path}: its bids2hf index lists row {e.row} column "
                    f"{e.column} index {e.index} twice; {_REFUSED}"
                )
            index[_slot(e)] = e
        shards[path] = _Shard(path, meta, index)
    return shards


def _from_footer(shard: str, e: EmbeddedFile) -> ManifestEntry:
    if e.location is not None:  # [issue 11] stored beside the shards
        return ManifestEntry(
            e.path, e.size, "beside", e.sha256, e.location, e.column, e.row, e.index, shard=shard
        )
    return ManifestEntry(
        e.path, e.size, "row", e.sha256, shard, e.column, e.row, e.index, offset=e.offset
    )


def _offset(shard: _Shard, e: ManifestEntry) -> int | None:
    """Where ``e``'s bytes start in its shard: the manifest's offset, else the footer index's."""
    if e.offset is not None:
        return e.offset
    found = shard.index.get(_slot(e))
    return found.offset if found is not None else None


def _entries(
    dataset: PublishedDataset,
    manifest: list[ManifestEntry] | None,
    shards: dict[str, _Shard],
    bids_files: dict[str, int],
) -> tuple[list[ManifestEntry], list[ManifestEntry], bool]:
    """The manifest's entries, the files to restore without it, and whether there is one.

    The manifest is checked against each shard's own index and trusted: files it does not list
    are not exported (one warning says how many). Only without a manifest are the files the
    shards' indexes and ``bids/`` hold restored.
    """
    entries = list(manifest or [])
    in_rows: set[tuple[str, _Slot]] = set()
    in_bids: set[str] = set()
    for e in entries:
        if e.placement == "dataset_file":
            assert e.location is not None
            in_bids.add(e.location)
        elif e.placement == "beside":  # [issue 11]
            _check_beside(dataset, shards, e)
            in_rows.add((e.shard or "", _slot(e)))
        elif e.placement == "row":
            assert e.location is not None
            in_rows.add((e.location, _slot(e)))
            shard = shards.get(e.location)
            if shard is None or not shard.index:
                continue  # a missing shard is reported if its files are wanted
            found = shard.index.get(_slot(e))
            if found is None or (found.path, found.size, found.sha256) != (
                e.path,
                e.size,
                e.sha256,
            ):
                theirs = f"{found.path!r} ({found.size} bytes)" if found else "nothing"
                raise InputError(
                    f"{dataset.url}/{MANIFEST_PATH}: puts {e.path!r} ({e.size} bytes) at row "
                    f"{e.row}, column {e.column}, index {e.index} of {e.location}, where that "
                    f"shard's own index has {theirs}; {_REFUSED}"
                )
    if manifest is not None:
        _warn_unlisted(dataset, manifest, shards, bids_files, in_rows, in_bids)
        return entries, [], True
    extra = [_from_footer(path, e) for path, shard in shards.items() for e in shard.index.values()]
    for location, size in sorted(bids_files.items()):
        path = safe_relpath(location[len(DATASET_FILES_PREFIX) :], f"{dataset.url}/{location}")
        # No sha256 is recorded for these: their size is checked, and the copy is verbatim.
        extra.append(ManifestEntry(path, size, "dataset_file", None, location))
    log.warning(
        "%s has no %s: embedded files are restored from the shards' own index (sha256 "
        "checked), dataset-level files from bids/ (size checked); files left out at "
        "conversion time are not known",
        dataset.url,
        MANIFEST_PATH,
    )
    return entries, extra, False


def _check_beside(dataset: PublishedDataset, shards: dict[str, _Shard], e: ManifestEntry) -> None:
    """[issue 11] The shard whose cell points at a file stored beside agrees with the manifest.

    Raises:
        InputError: its index says otherwise (a damaged or crafted index).
    """
    shard = shards.get(e.shard or "")
    if shard is None or not shard.index:
        return  # the file itself is read from files/, checked against its sha256
    found = shard.index.get(_slot(e))
    if found is None or (found.path, found.size, found.sha256, found.location) != (
        e.path,
        e.size,
        e.sha256,
        e.location,
    ):
        raise InputError(
            f"{dataset.url}/{MANIFEST_PATH}: stores {e.path!r} beside the shards at "
            f"{e.location!r} for row {e.row}, column {e.column}, index {e.index} of {e.shard}, "
            f"where that shard's own index disagrees; {_REFUSED}"
        )


def _warn_unlisted(
    dataset: PublishedDataset,
    manifest: list[ManifestEntry],
    shards: dict[str, _Shard],
    bids_files: dict[str, int],
    in_rows: set[tuple[str, _Slot]],
    in_bids: set[str],
) -> None:
    """One warning naming how many files the manifest does not list, which are not exported.

    A manifest that parses says what the dataset holds: bids2hf never deletes files it did not
    write, so what else the shards, ``bids/`` or ``data/`` hold is a stale copy or a foreign
    file, and restoring it would bring back files that are no part of the dataset.
    """
    referenced = {e.location for e in manifest if e.placement == "row"}
    ignored = [
        f"{e.path} in {path}"
        for path, shard in sorted(shards.items())
        for slot, e in shard.index.items()
        if (path, slot) not in in_rows
    ]
    ignored += [location for location in sorted(bids_files) if location not in in_bids]
    ignored += [shard for shard in dataset.shards() if shard not in referenced]
    if ignored:
        log.warning(
            "%s/%s does not list %d file(s) that the shards, bids/ or data/ hold (e.g. %s): "
            "ignored, not exported (the manifest says what the dataset holds)",
            dataset.url,
            MANIFEST_PATH,
            len(ignored),
            ignored[0],
        )


def _by_group(starts: list[int], entries: list[ManifestEntry]) -> dict[int, list[ManifestEntry]]:
    """Entries by the row group that holds their row (rows already checked to be in range)."""
    by_group: dict[int, list[ManifestEntry]] = defaultdict(list)
    for e in entries:
        assert e.row is not None
        by_group[bisect.bisect_right(starts, e.row) - 1].append(e)
    return by_group


def _check_row_entries(
    dataset: PublishedDataset, shard: _Shard, entries: list[ManifestEntry]
) -> None:
    """Check entries against the shard's structure and the paths stored in their cells.

    Reads only the ``path`` fields of the wanted cells, never the embedded bytes. Files with a
    recorded offset are checked too: their sha256 would catch a wrong range only after other
    files were written, and a crafted index is refused before the first write.
    """
    where = f"{dataset.url}/{shard.path}"
    starts = shard.starts
    rows = shard.meta.num_rows
    columns: dict[str, _FileColumn] = {}
    for e in entries:
        assert e.column is not None and e.row is not None
        column = columns.get(e.column) or shard.file_column(e.column, where)
        if column is None:
            raise InputError(
                f"{where}: has no file column {e.column!r}, where {e.path!r} is said to be; "
                f"{_REFUSED}"
            )
        columns[e.column] = column
        index = -1 if e.index is None else e.index
        if e.row >= rows or (index >= 0) != column.is_list:
            raise InputError(
                f"{where}: has no row {e.row} / index {e.index} in column {e.column!r} "
                f"({rows} rows, {'a list' if column.is_list else 'one file'} per row), where "
                f"{e.path!r} is said to be; {_REFUSED}"
            )
        limit = shard.max_bytes(column, bisect.bisect_right(starts, e.row) - 1)
        if e.size > limit:
            raise InputError(
                f"{where}: {e.path!r} is said to hold {e.size} bytes, more than all of column "
                f"{e.column!r} in its row group ({limit}); {_REFUSED}"
            )
    with _open(dataset, shard.path, whole=False) as f:
        pf = _parquet(f, where, shard.meta)
        for group, wanted in _by_group(starts, entries).items():
            leaves = sorted({columns[e.column].path_leaf for e in wanted if e.column})
            table = _read_group(pf, group, leaves, where)
            for e in wanted:
                assert e.column is not None and e.row is not None
                cell = table.column(e.column)[e.row - starts[group]]
                item = _item(cell, e, where)
                stored = _stored_path(item)
                if stored != e.path:
                    if isinstance(stored, str):
                        safe_relpath(stored, where)  # a crafted cell is named as such
                    raise InputError(
                        f"{where}: row {e.row} column {e.column} holds {stored!r}, where the "
                        f"index says {e.path!r}; {_REFUSED}"
                    )


def _parquet(f: BinaryIO, where: str, meta: pq.FileMetaData | None = None) -> pq.ParquetFile:
    """``f`` opened as Parquet; with ``meta`` (read already), its footer is not read again.

    Raises:
        VerificationError: its footer cannot be read (a damaged copy).
    """
    try:
        return pq.ParquetFile(f, metadata=meta)
    except (pa.ArrowException, OSError) as exc:
        raise _unreadable(where, exc) from None


def _read_group(pf: pq.ParquetFile, group: int, columns: list[str], where: str) -> pa.Table:
    """Row group ``group`` of ``pf``, only ``columns``.

    Raises:
        VerificationError: its pages cannot be read or decoded (a damaged copy).
    """
    try:
        return pf.read_row_group(group, columns=columns)
    except (pa.ArrowException, OSError) as exc:
        raise _unreadable(where, exc) from None


def _unreadable(where: str, exc: Exception) -> VerificationError:
    return VerificationError(f"{where}: not readable ({exc}); the published copy is damaged")


def _stored_path(item: pa.StructScalar) -> str | bytes | None:
    """The path stored in a file's struct; its raw bytes if they are no UTF-8 (damaged)."""
    if not item.is_valid:
        return None
    path = item["path"]
    try:
        return path.as_py()
    except UnicodeDecodeError:  # Parquet readers do not check UTF-8: a damaged page
        return path.as_buffer().to_pybytes()


def _item(cell: pa.Scalar, e: ManifestEntry, where: str) -> pa.StructScalar:
    """The struct of ``e`` inside its cell (a struct, or a list of them)."""
    if e.index is None or e.index < 0:
        item = cell
    else:
        values = cell.values if cell.is_valid else None
        if values is None or e.index >= len(values):
            n = 0 if values is None else len(values)
            raise InputError(
                f"{where}: row {e.row} column {e.column} holds {n} file(s), no index {e.index} "
                f"where {e.path!r} is said to be; {_REFUSED}"
            )
        item = values[e.index]
    assert isinstance(item, pa.StructScalar)
    return item


class _Target:
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


def _chunks(f: BinaryIO) -> Iterator[bytes]:
    while chunk := f.read(8 << 20):
        yield chunk


def _open(dataset: PublishedDataset, relpath: str, whole: bool = True) -> BinaryIO:
    """``relpath`` of the dataset, opened for reading.

    ``whole=False`` is for shards read in parts: no read-ahead, which would fetch a block (5 MB
    on ``hf://``) beyond each column chunk asked for.

    Raises:
        VerificationError: the file is missing.
    """
    kwargs = {} if whole else {"cache_type": "none"}
    try:
        f: BinaryIO = dataset.fs.open(dataset.path(relpath), "rb", **kwargs)
    except FileNotFoundError:
        raise _missing(dataset, relpath) from None
    return f


def _missing(dataset: PublishedDataset, relpath: str) -> VerificationError:
    return VerificationError(
        f"{dataset.url}/{relpath}: listed in the manifest but missing from the published "
        "dataset (an incomplete upload?)"
    )


def _folders(path: str) -> Iterator[str]:
    """The folders ``path`` sits in, innermost first (``a/b/c`` → ``a/b``, ``a``)."""
    while path := posixpath.dirname(path):
        yield path


def _refuse_clashes(dataset: PublishedDataset, chosen: dict[str, ManifestEntry]) -> None:
    """Refuse a path that is also a folder of another chosen path: both cannot be written.

    Raises:
        InputError: naming both paths (a crafted or damaged dataset).
    """
    for path in sorted(chosen):
        for folder in _folders(path):
            if folder in chosen:
                raise InputError(
                    f"{dataset.url}: {folder!r} is both a file and the folder of {path!r}; "
                    f"{_REFUSED}"
                )


def _refuse_blocked(out: Path, chosen: Iterable[str], overwrite: bool) -> None:
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
        folders.update(_folders(path))
    for folder in sorted(folders):
        where = out / folder
        if os.path.lexists(where) and not where.is_dir():
            raise DestinationError(
                f"{where}: is no folder, where export writes files into a folder; move it away"
            )


def _choose(
    dataset: PublishedDataset,
    include: Sequence[str],
    exclude: Sequence[str],
    report: ExportReport,
) -> tuple[dict[str, ManifestEntry], dict[str, _Shard]]:
    """The entries to write, by path, all checked; and the shards they come from."""
    manifest = dataset.manifest()
    shards = _read_shards(dataset, manifest)
    bids_files = dataset.files(DATASET_FILES_PREFIX.rstrip("/"))
    beside_files = dataset.files(BESIDE_PREFIX.rstrip("/"))  # [issue 11]
    entries, extra, listed = _entries(dataset, manifest, shards, bids_files)
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
        lost = [p for p in _REQUIRED if p not in chosen and _wanted(p, include, exclude)]
        if lost:
            where = "bids/ holds no dataset-level files" if not bids_files else "not in bids/"
            raise VerificationError(
                f"{dataset.url}: without {MANIFEST_PATH}, {', '.join(lost)} cannot be restored "
                f"({where}; an interrupted upload? re-run the convert or push to complete it); "
                f"to export the rest anyway, add --exclude {' --exclude '.join(lost)}"
            )
    _refuse_clashes(dataset, chosen)
    by_shard: dict[str, list[ManifestEntry]] = defaultdict(list)
    for e in chosen.values():
        assert e.location is not None
        if e.placement in ("dataset_file", "beside"):
            size = (bids_files if e.placement == "dataset_file" else beside_files).get(e.location)
            if size is None:
                raise _missing(dataset, e.location)
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
                f"shard (data/*.parquet); {_REFUSED}"
            )
        else:
            raise _missing(dataset, e.location)
    for path, wanted in by_shard.items():
        _check_row_entries(dataset, shards[path], wanted)
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
        overwrite: replace files that already exist in ``bids_out``.
        progress: show a progress bar.

    Raises:
        InputError: the source is no bids2hf dataset, or its index is damaged or crafted
            (refused before anything is written).
        DestinationError: a file would be replaced without ``overwrite``, or something in
            ``bids_out`` stands where a folder or file goes (refused before anything is
            written).
        VerificationError: published files are missing, a shard's pages cannot be read,
            files differ from their recorded size or sha256, or (without a manifest)
            dataset-level files cannot be restored.
    """
    dataset = open_dataset(source)
    out = Path(bids_out)
    report = ExportReport(str(out))
    chosen, shards = _choose(dataset, include, exclude, report)
    _refuse_blocked(out, chosen, overwrite)
    tmp = _run_folder(out)
    total = sum(e.size for e in chosen.values())
    try:
        with ProgressBar(total, len(chosen), enabled=progress, desc="export") as bar:
            _write_chosen(dataset, chosen, shards, out, tmp, report, bar)
    finally:
        # Each write removes its own temporary file: the folder is empty unless someone else
        # put something there, which is then kept.
        with contextlib.suppress(OSError):
            tmp.rmdir()
    return report


def _run_folder(out: Path) -> Path:
    """Create ``out`` and, in it, this run's own temporary folder (no other run shares it).

    Raises:
        DestinationError: ``out`` cannot be created or written to.
    """
    try:
        out.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(dir=out, prefix=_TMP_PREFIX))
    except OSError as exc:  # a file on its path, no permission, ...
        raise DestinationError(f"{out}: cannot be written to ({exc.strerror or exc})") from None


def _write_chosen(
    dataset: PublishedDataset,
    chosen: dict[str, ManifestEntry],
    shards: dict[str, _Shard],
    out: Path,
    tmp: Path,
    report: ExportReport,
    bar: ProgressBar,
) -> None:
    """Write the dataset-level files, then the embedded files shard by shard."""
    for e in chosen.values():
        if e.placement in ("dataset_file", "beside"):  # [issue 11] beside: a copy of files/
            assert e.location is not None
            with _open(dataset, e.location) as f:
                report.bytes += _Target(out, tmp, e).write(_chunks(f))
            report.files += 1
            bar.update(e.size, 1)
    by_shard: dict[str, list[ManifestEntry]] = defaultdict(list)
    for e in chosen.values():
        if e.placement == "row":
            assert e.location is not None
            by_shard[e.location].append(e)
    for shard in sorted(by_shard):
        _export_shard(dataset, shards[shard], by_shard[shard], out, tmp, report, bar)


def _export_shard(
    dataset: PublishedDataset,
    shard: _Shard,
    entries: list[ManifestEntry],
    out: Path,
    tmp: Path,
    report: ExportReport,
    bar: ProgressBar,
) -> None:
    where = f"{dataset.url}/{shard.path}"
    ranged = [e for e in entries if _offset(shard, e) is not None]
    if ranged:
        _export_ranges(dataset, shard, ranged, out, tmp, report, bar)
    rest = [e for e in entries if _offset(shard, e) is None]
    if not rest:
        return
    starts = shard.starts
    by_group = _by_group(starts, rest)
    with _open(dataset, shard.path, whole=False) as f:
        pf = _parquet(f, where, shard.meta)
        for group in sorted(by_group):
            wanted = by_group[group]
            columns = sorted({e.column for e in wanted if e.column})
            table = _read_group(pf, group, columns, where)
            for e in wanted:
                assert e.row is not None and e.column is not None
                # Checked before writing began, from the path pages alone; checked again, since
                # this is what is written. A difference now means the pages of the bytes
                # disagree with those of the paths (or the file changed while read): files
                # were written already, so this is no refusal of the index (exit 2) but a
                # damaged copy (exit 1).
                try:
                    item: pa.StructScalar | None = _item(
                        table.column(e.column)[e.row - starts[group]], e, where
                    )
                except InputError:
                    item = None
                if item is None or _stored_path(item) != e.path:
                    raise VerificationError(
                        f"{where}: row {e.row} column {e.column} no longer holds {e.path!r} when "
                        "read with its bytes; the published copy is damaged (or changed while "
                        "read)"
                    )
                data = item["bytes"]
                buffer = data.as_buffer() if data.is_valid else b""
                report.bytes += _Target(out, tmp, e).write([memoryview(buffer)])
                report.files += 1
                bar.update(e.size, 1)
            del table


def _export_ranges(
    dataset: PublishedDataset,
    shard: _Shard,
    entries: list[ManifestEntry],
    out: Path,
    tmp: Path,
    report: ExportReport,
    bar: ProgressBar,
) -> None:
    """Fetch files stored verbatim by their byte range and write them.

    Raises:
        RangeError: a range's bytes do not hash to the file's sha256 (the index or the shard is
            damaged); that file is never written.
    """
    items = []
    for e in entries:
        offset = _offset(shard, e)
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
        # fetch_ranges checked the sha256 already; _Target checks again as it writes, which is
        # cheap next to the download and keeps one rule for every file written.
        report.bytes += _Target(out, tmp, e).write([data])
        report.files += 1
        bar.update(e.size, 1)
