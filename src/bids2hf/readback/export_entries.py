"""Which files export restores, and from where: the manifest's entries checked against each
shard's own footer index, or without a manifest, the footer indexes and ``bids/``; then each
wanted row entry checked against its shard's structure and the path stored in its cell.

All of it runs before the first file is written, reading the footers and the ``path`` fields
only, never the embedded bytes: a damaged or crafted index is refused
(:class:`~bids2hf.errors.InputError`) with nothing written.
"""

from __future__ import annotations

import bisect
import logging
from collections import defaultdict
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from bids2hf.errors import InputError
from bids2hf.model.format import DATASET_FILES_PREFIX, MANIFEST_PATH, EmbeddedFile
from bids2hf.model.manifest import ManifestEntry
from bids2hf.readback.published import PublishedDataset, safe_relpath
from bids2hf.readback.shard_cells import (
    REFUSED,
    file_item,
    open_published,
    parquet_file,
    read_group,
    stored_path,
)

__all__ = [
    "FileColumn",
    "Shard",
    "Slot",
    "by_row_group",
    "check_row_entries",
    "entries_to_restore",
    "offset_in_shard",
    "read_shards",
    "slot_of",
]

# The verb's logger: its warnings are named ``bids2hf.readback.export`` on the command line, as
# they were before this module was split out of it.
log = logging.getLogger("bids2hf.readback.export")

Slot = tuple[str, int, int]


def slot_of(e: ManifestEntry | EmbeddedFile) -> Slot:
    assert e.column is not None and e.row is not None
    return (e.column, e.row, -1 if e.index is None else e.index)


@dataclass
class Shard:
    """What a shard's footer says: its row groups, file columns and bids2hf index."""

    path: str
    meta: pq.FileMetaData
    index: dict[Slot, EmbeddedFile]

    @property
    def starts(self) -> list[int]:
        out, n = [], 0
        for i in range(self.meta.num_row_groups):
            out.append(n)
            n += self.meta.row_group(i).num_rows
        return out

    def file_column(self, name: str, where: str) -> FileColumn | None:
        """How column ``name`` stores files, or None if it is no file column.

        Raises:
            InputError: the shard has two columns named ``name`` (crafted).
        """
        schema = self.meta.schema.to_arrow_schema()
        found = schema.get_all_field_indices(name)
        if not found:
            return None
        if len(found) > 1:
            raise InputError(f"{where}: has a column named {name!r} twice; {REFUSED}")
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
        return FileColumn(is_list, leaves["path"][1], leaves["bytes"][0])

    def max_bytes(self, column: FileColumn, group: int) -> int:
        """An upper bound of one file's size in ``column`` within row group ``group``.

        Embedded bytes are stored uncompressed or compressed (other files use zstd), so the
        shard's size is no bound; the uncompressed size of the column chunk is.
        """
        return int(self.meta.row_group(group).column(column.bytes_leaf).total_uncompressed_size)


@dataclass(frozen=True)
class FileColumn:
    """A column of files: a list of {path, bytes} structs per row, or one struct."""

    is_list: bool
    path_leaf: str  # Parquet column path of the ``path`` field, to read paths alone
    bytes_leaf: int  # Parquet column index of the ``bytes`` field


def read_shards(
    dataset: PublishedDataset, manifest: list[ManifestEntry] | None
) -> dict[str, Shard]:
    """The shards of the dataset (see :meth:`PublishedDataset.footers`), each index checked.

    Raises:
        InputError: a shard's index lists one cell twice, or is otherwise damaged or crafted.
        VerificationError: a shard the manifest references is no readable Parquet file.
    """
    shards = {}
    for path, (meta, files) in dataset.footers(manifest).items():
        index: dict[Slot, EmbeddedFile] = {}
        for e in files:
            if slot_of(e) in index:
                raise InputError(
                    f"{dataset.url}/{path}: its bids2hf index lists row {e.row} column "
                    f"{e.column} index {e.index} twice; {REFUSED}"
                )
            index[slot_of(e)] = e
        shards[path] = Shard(path, meta, index)
    return shards


def _from_footer(shard: str, e: EmbeddedFile) -> ManifestEntry:
    if e.location is not None:  # [issue 11] stored beside the shards
        return ManifestEntry(
            e.path, e.size, "beside", e.sha256, e.location, e.column, e.row, e.index, shard=shard
        )
    return ManifestEntry(
        e.path, e.size, "row", e.sha256, shard, e.column, e.row, e.index, offset=e.offset
    )


def offset_in_shard(shard: Shard, e: ManifestEntry) -> int | None:
    """Where ``e``'s bytes start in its shard: the manifest's offset, else the footer index's."""
    if e.offset is not None:
        return e.offset
    found = shard.index.get(slot_of(e))
    return found.offset if found is not None else None


def entries_to_restore(
    dataset: PublishedDataset,
    manifest: list[ManifestEntry] | None,
    shards: dict[str, Shard],
    bids_files: dict[str, int],
) -> tuple[list[ManifestEntry], list[ManifestEntry], bool]:
    """The manifest's entries, the files to restore without it, and whether there is one.

    The manifest is checked against each shard's own index and trusted: files it does not list
    are not exported (one warning says how many). Only without a manifest are the files the
    shards' indexes and ``bids/`` hold restored.

    Raises:
        InputError: the manifest disagrees with a shard's own index, or a path under ``bids/``
            is unsafe (a damaged or crafted index).
    """
    entries = list(manifest or [])
    in_rows: set[tuple[str, Slot]] = set()
    in_bids: set[str] = set()
    for e in entries:
        if e.placement == "dataset_file":
            assert e.location is not None
            in_bids.add(e.location)
        elif e.placement == "beside":  # [issue 11]
            _check_beside(dataset, shards, e)
            in_rows.add((e.shard or "", slot_of(e)))
        elif e.placement == "row":
            assert e.location is not None
            in_rows.add((e.location, slot_of(e)))
            shard = shards.get(e.location)
            if shard is None or not shard.index:
                continue  # a missing shard is reported if its files are wanted
            found = shard.index.get(slot_of(e))
            if found is None or (found.path, found.size, found.sha256) != (
                e.path,
                e.size,
                e.sha256,
            ):
                theirs = f"{found.path!r} ({found.size} bytes)" if found else "nothing"
                raise InputError(
                    f"{dataset.url}/{MANIFEST_PATH}: puts {e.path!r} ({e.size} bytes) at row "
                    f"{e.row}, column {e.column}, index {e.index} of {e.location}, where that "
                    f"shard's own index has {theirs}; {REFUSED}"
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


def _check_beside(dataset: PublishedDataset, shards: dict[str, Shard], e: ManifestEntry) -> None:
    """[issue 11] The shard whose cell points at a file stored beside agrees with the manifest.

    Raises:
        InputError: its index says otherwise (a damaged or crafted index).
    """
    shard = shards.get(e.shard or "")
    if shard is None or not shard.index:
        return  # the file itself is read from files/, checked against its sha256
    found = shard.index.get(slot_of(e))
    if found is None or (found.path, found.size, found.sha256, found.location) != (
        e.path,
        e.size,
        e.sha256,
        e.location,
    ):
        raise InputError(
            f"{dataset.url}/{MANIFEST_PATH}: stores {e.path!r} beside the shards at "
            f"{e.location!r} for row {e.row}, column {e.column}, index {e.index} of {e.shard}, "
            f"where that shard's own index disagrees; {REFUSED}"
        )


def _warn_unlisted(
    dataset: PublishedDataset,
    manifest: list[ManifestEntry],
    shards: dict[str, Shard],
    bids_files: dict[str, int],
    in_rows: set[tuple[str, Slot]],
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


def by_row_group(starts: list[int], entries: list[ManifestEntry]) -> dict[int, list[ManifestEntry]]:
    """Entries by the row group that holds their row (rows already checked to be in range)."""
    by_group: dict[int, list[ManifestEntry]] = defaultdict(list)
    for e in entries:
        assert e.row is not None
        by_group[bisect.bisect_right(starts, e.row) - 1].append(e)
    return by_group


def check_row_entries(
    dataset: PublishedDataset, shard: Shard, entries: list[ManifestEntry]
) -> None:
    """Check entries against the shard's structure and the paths stored in their cells.

    Reads only the ``path`` fields of the wanted cells, never the embedded bytes. Files with a
    recorded offset are checked too: their sha256 would catch a wrong range only after other
    files were written, and a crafted index is refused before the first write.

    Raises:
        InputError: an entry's column, row, index or size does not fit the shard, or its cell
            holds another path (a damaged or crafted index).
        VerificationError: the shard is missing or its pages cannot be read.
    """
    where = f"{dataset.url}/{shard.path}"
    starts = shard.starts
    rows = shard.meta.num_rows
    columns: dict[str, FileColumn] = {}
    for e in entries:
        assert e.column is not None and e.row is not None
        column = columns.get(e.column) or shard.file_column(e.column, where)
        if column is None:
            raise InputError(
                f"{where}: has no file column {e.column!r}, where {e.path!r} is said to be; "
                f"{REFUSED}"
            )
        columns[e.column] = column
        index = -1 if e.index is None else e.index
        if e.row >= rows or (index >= 0) != column.is_list:
            raise InputError(
                f"{where}: has no row {e.row} / index {e.index} in column {e.column!r} "
                f"({rows} rows, {'a list' if column.is_list else 'one file'} per row), where "
                f"{e.path!r} is said to be; {REFUSED}"
            )
        limit = shard.max_bytes(column, bisect.bisect_right(starts, e.row) - 1)
        if e.size > limit:
            raise InputError(
                f"{where}: {e.path!r} is said to hold {e.size} bytes, more than all of column "
                f"{e.column!r} in its row group ({limit}); {REFUSED}"
            )
    with open_published(dataset, shard.path, whole=False) as f:
        pf = parquet_file(f, where, shard.meta)
        for group, wanted in by_row_group(starts, entries).items():
            leaves = sorted({columns[e.column].path_leaf for e in wanted if e.column})
            table = read_group(pf, group, leaves, where)
            for e in wanted:
                assert e.column is not None and e.row is not None
                cell = table.column(e.column)[e.row - starts[group]]
                item = file_item(cell, e, where)
                stored = stored_path(item)
                if stored != e.path:
                    if isinstance(stored, str):
                        safe_relpath(stored, where)  # a crafted cell is named as such
                    raise InputError(
                        f"{where}: row {e.row} column {e.column} holds {stored!r}, where the "
                        f"index says {e.path!r}; {REFUSED}"
                    )
