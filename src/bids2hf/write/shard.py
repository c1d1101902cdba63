"""Write one planned shard, row group by row group, with the source files embedded verbatim.

Memory holds one row group: the files of a row group are read straight into one reusable buffer
per column (hashing each chunk as it arrives), wrapped as Arrow arrays without copying, and
handed to ``pyarrow.parquet.ParquetWriter``. The shard is written under a temporary name and
renamed into place only when complete.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

# [issue 15] reading the source (local folder or fsspec URL) is the Source's job; the error
# moved to bids2hf.errors and is re-exported here for existing imports.
from bids2hf.errors import SourceChangedError as SourceChangedError
from bids2hf.model.format import FOOTER_KEY, EmbeddedFile
from bids2hf.model.ranges import FileRange, Key
from bids2hf.model.rows import ColumnSpec, FileRef, Role, RowPlan, ShardPlan
from bids2hf.model.source import Source
from bids2hf.write.arrays import bool_array, int32_array, string_array, typed_array
from bids2hf.write.beside_cells import (
    beside_hashes,
    beside_location,
    beside_validity,
    cell_path,
    embedded_size,
)
from bids2hf.write.previews import ThumbnailJobs
from bids2hf.write.ranges import Verbatim, locate_written, record_offsets
from bids2hf.write.reader import FileReader, Progress

__all__ = [
    "Progress",
    "ShardResult",
    "SourceChangedError",
    "fsync_file",
    "parquet_options",
    "write_shard",
]

#: Most bytes one Arrow binary array (int32 offsets) holds.
MAX_BINARY_CHUNK = 2**31 - 1


@dataclass
class ShardResult:
    """A finished shard: its size and the files it holds.

    The shard's own sha256 is computed only where it is needed (publishing), off the writer's
    critical path.
    """

    path: str
    size: int
    sha256: str | None
    files: list[EmbeddedFile] = field(default_factory=list)
    # [issue 13] relpath → PNG (None: none could be made) of the chosen files it holds
    thumbnails: dict[str, bytes | None] = field(default_factory=dict)


#: In a worker process, the pid of the run that started it (set by init_worker); else None.
PARENT_PID: int | None = None


def _row_group_rows(shard: ShardPlan) -> list[list[RowPlan]]:
    groups, start = [], 0
    for count in shard.row_groups:
        groups.append(shard.rows[start : start + count])
        start += count
    return groups


def _advise(source: Source, rows: Sequence[RowPlan]) -> None:
    """Readahead hint for the files of some rows (see :meth:`Source.will_need`)."""
    source.will_need(ref for row in rows for refs in row.files.values() for ref in refs)


def _start_writeback(path: Path) -> None:
    # POSIX_FADV_DONTNEED makes Linux start writing dirty pages back without waiting for them.
    if not hasattr(os, "POSIX_FADV_DONTNEED"):
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def parquet_options(schema: pa.Schema, columns: Sequence[ColumnSpec]) -> dict[str, Any]:
    """ParquetWriter options: embedded bytes uncompressed and without dictionaries or stats."""
    buf = io.BytesIO()
    # No rows: a file with the schema alone (writing an empty table would import pandas).
    with pq.ParquetWriter(buf, schema):
        pass
    parquet_schema = pq.ParquetFile(io.BytesIO(buf.getvalue())).schema
    nifti_cols = {c.name for c in columns if c.role is Role.FILE and c.nifti}
    file_cols = {c.name for c in columns if c.role is Role.FILE}
    paths = [parquet_schema.column(i).path for i in range(len(parquet_schema))]
    raw = [p for p in paths if p.split(".")[0] in file_cols and p.endswith(".bytes")]
    compression = {
        p: ("none" if p.split(".")[0] in nifti_cols and p in raw else "zstd") for p in paths
    }
    return {
        "compression": compression,
        "use_dictionary": [p for p in paths if p not in raw],
        "write_statistics": [p for p in paths if p not in raw],
        # The writer buffers `write_batch_size` values before it checks the page size; with the
        # default (1024) a whole column chunk of file bytes would be copied into one page buffer.
        "write_batch_size": 1,
    }


def _cells(rows: Sequence[RowPlan], column: str) -> list[list[FileRef]]:
    return [row.files.get(column, []) for row in rows]


@dataclass
class _FileColumn:
    """[issue 15] Where a FILE column's files go in its slice of the row group's buffer."""

    spec: ColumnSpec
    cells: list[list[FileRef]]
    slots: list[FileRef | None]  # one per embedded file; single-valued: one per row (or None)
    offsets: np.ndarray
    arena: np.ndarray
    # [issue 11] files stored beside the shards: relpath → the URL their cell holds (no bytes)
    beside: dict[str, str] = field(default_factory=dict)

    def reads(self) -> list[tuple[FileRef, memoryview]]:
        view = memoryview(self.arena.data)
        return [
            (ref, view[int(self.offsets[i]) : int(self.offsets[i + 1])])
            for i, ref in enumerate(self.slots)
            if ref is not None and ref.relpath not in self.beside
        ]


def _file_column(spec: ColumnSpec, rows: Sequence[RowPlan], arena: np.ndarray) -> _FileColumn:
    cells = _cells(rows, spec.name)
    slots: list[FileRef | None] = (
        [cell[0] if cell else None for cell in cells]
        if spec.single
        else [r for c in cells for r in c]
    )
    beside = {k: v for row in rows for k, v in row.beside.items()}
    sizes = np.array(
        [r.size if r and r.relpath not in beside else 0 for r in slots], dtype=np.int64
    )
    offsets = np.zeros(len(slots) + 1, dtype=np.int64)
    np.cumsum(sizes, out=offsets[1:])
    return _FileColumn(spec, cells, slots, offsets, arena, beside)


def _file_array(column: _FileColumn, typ: pa.DataType) -> pa.Array:
    """The column's files, already read into its slice of the row group's buffer, zero-copy."""
    spec, cells, slots, offsets = column.spec, column.cells, column.slots, column.offsets
    total = int(offsets[-1])
    if total > MAX_BINARY_CHUNK:  # plan/beside.py keeps cells smaller: int32 offsets would wrap
        raise RuntimeError(f"column {spec.name}: {total} bytes in one row group, over int32")
    data = pa.py_buffer(column.arena[:total])
    bytes_arr = pa.Array.from_buffers(
        pa.binary(),
        len(slots),
        [beside_validity(slots, column.beside), pa.py_buffer(offsets.astype(np.int32)), data],
    )
    children = {
        "bytes": bytes_arr,
        "path": string_array([cell_path(r, column.beside) for r in slots]),
    }
    item_fields = list(typ if spec.single else typ.value_type)
    arrays = [children[f.name] for f in item_fields]
    if spec.single:
        mask = bool_array([r is None for r in slots])
        return pa.StructArray.from_arrays(arrays, fields=item_fields, mask=mask)
    struct = pa.StructArray.from_arrays(arrays, fields=item_fields)
    list_offsets = np.zeros(len(cells) + 1, dtype=np.int32)
    np.cumsum([len(c) for c in cells], out=list_offsets[1:])
    return pa.ListArray.from_arrays(int32_array(list_offsets), struct, type=typ)


def _sha_array(
    spec: ColumnSpec, typ: pa.DataType, rows: Sequence[RowPlan], reader: FileReader
) -> pa.Array:
    cells = _cells(rows, spec.name)
    if spec.single:
        return string_array([reader.sha256(c[0]) if c else None for c in cells])
    offsets = np.zeros(len(cells) + 1, dtype=np.int32)
    np.cumsum([len(c) for c in cells], out=offsets[1:])
    values = string_array([reader.sha256(r) for c in cells for r in c])
    return pa.ListArray.from_arrays(int32_array(offsets), values, type=typ)


def _embedded(
    rows: Sequence[RowPlan], first_row: int, columns: Sequence[ColumnSpec], hashes: dict[str, str]
) -> list[EmbeddedFile]:
    """The footer index entries of a row group's files, in row then column order."""
    out = []
    for i, row in enumerate(rows, start=first_row):
        for spec in columns:
            if spec.role is not Role.FILE:
                continue
            for j, ref in enumerate(row.files.get(spec.name, [])):
                index = -1 if spec.single else j
                location = beside_location(row, ref)  # [issue 11] stored beside the shards
                out.append(
                    EmbeddedFile(
                        ref.relpath, ref.size, hashes[ref.relpath], i, spec.name, index, location=location
                    )
                )
    return out


def _verbatim(file_columns: dict[str, _FileColumn], first_row: int) -> list[Verbatim]:
    """The files a row group stores verbatim (NIfTI columns), in the order they are stored."""
    out: list[Verbatim] = []
    for column in file_columns.values():
        if not column.spec.nifti:
            continue  # zstd-compressed: readers go through the column chunk
        name, view, offsets = column.spec.name, memoryview(column.arena.data), column.offsets
        keys: list[Key] = []
        for row, cell in enumerate(column.cells, start=first_row):
            # One slot per row for a single-valued column (empty when the row has no file).
            keys.extend(
                [(name, row, -1)]
                if column.spec.single
                else [(name, row, j) for j in range(len(cell))]
            )
        for slot, (key, ref) in enumerate(zip(keys, column.slots, strict=True)):
            if ref is not None and ref.relpath not in column.beside:  # [issue 11] no bytes here
                out.append((key, ref.relpath, view[int(offsets[slot]) : int(offsets[slot + 1])]))
    return out


def _file_columns(
    columns: Sequence[ColumnSpec], rows: Sequence[RowPlan], reader: FileReader
) -> dict[str, _FileColumn]:
    """Each FILE column of a row group with its slice of the reader's one buffer."""
    sizes = {
        spec.name: embedded_size(rows, spec.name)  # [issue 11] not those beside
        for spec in columns
        if spec.role is Role.FILE
    }
    arena = reader.arena(sum(sizes.values()))
    out, at = {}, 0
    for spec in columns:
        if spec.role is Role.FILE:
            out[spec.name] = _file_column(spec, rows, arena[at : at + sizes[spec.name]])
            at += sizes[spec.name]
    return out


def _write_row_group(
    writer: pq.ParquetWriter,
    rows: Sequence[RowPlan],
    first_row: int,
    columns: Sequence[ColumnSpec],
    schema: pa.Schema,
    reader: FileReader,
    path: Path,
    thumbs: ThumbnailJobs,
) -> list[EmbeddedFile]:
    """Read one row group's files, write the row group, and find where its verbatim files are.

    Raises:
        SourceChangedError: a source file is not the planned one.
        RangeError: a file is not stored verbatim where it should be.
    """
    file_columns = _file_columns(columns, rows, reader)
    # [issue 15] every file of the row group in one call, in column order: a remote source
    # keeps several of them in flight.
    reads = [r for c in file_columns.values() for r in c.reads()]
    reader.read_files(reads)
    thumbs.submit(reads)  # [issue 13] on a thread, overlapping the encode and write
    arrays = []
    for spec in columns:
        typ = schema.field(spec.name).type
        if spec.role is Role.FILE:
            arrays.append(_file_array(file_columns[spec.name], typ))
        elif spec.role is Role.SHA256:
            arrays.append(_sha_array(spec, typ, rows, reader))
        else:
            arrays.append(typed_array([r.values.get(spec.name) for r in rows], typ))
    reader.flush()  # all hashes known
    embedded = _embedded(rows, first_row, columns, reader.hashes)
    start = path.stat().st_size
    writer.write_table(
        pa.Table.from_arrays(arrays, schema=schema), row_group_size=max(1, len(rows))
    )
    del arrays
    # The row group is on its way to disk once write_table returns (pyarrow writes it through
    # to the file): find each verbatim file in it while the buffer still holds the bytes, so
    # the check is a comparison, not a second sha256 of the shard. A RangeError means the shard
    # disagrees with its index: write_shard deletes it, nothing wrong is published.
    found = locate_written(path, start, path.stat().st_size, _verbatim(file_columns, first_row))
    # Hand the encoder's freed page buffers back to the system: the allocator would keep them,
    # and peak RSS would exceed row group + page buffers by ~45 MB.
    pa.default_memory_pool().release_unused()
    # Start writing back what is already on its way to disk, so that the fsync at the end does
    # not stall the pipeline for a whole shard's worth of dirty pages.
    _start_writeback(path)
    thumbs.wait()  # [issue 13] before the next row group reuses the buffer
    return [
        dataclasses.replace(e, offset=r.offset) if (r := found.get(e.key)) else e for e in embedded
    ]


def _settled(path: Path, embedded: list[EmbeddedFile]) -> list[EmbeddedFile]:
    """The index with each offset settled by :func:`record_offsets` (which fixes the footer).

    Raises:
        RangeError: a file is not in its column chunk.
    """
    found = {e.key: FileRange(e.offset, e.size) for e in embedded if e.offset is not None}
    ranges = record_offsets(path, embedded, FOOTER_KEY, found)
    if ranges == found:
        return embedded
    return [
        dataclasses.replace(e, offset=r.offset if (r := ranges.get(e.key)) else None)
        for e in embedded
    ]


def write_shard(
    shard: ShardPlan,
    columns: Sequence[ColumnSpec],
    schema: pa.Schema,
    source: Source,
    final_path: Path,
    tmp_path: Path,
    progress: Progress | None = None,
    thumbnails: Collection[str] = frozenset(),
) -> ShardResult:
    """Write ``shard`` to ``tmp_path``, then rename it to ``final_path``.

    ``source`` is where the files are read (a local or fsspec Source) [issue 15]. The footer's
    index gives each file's row, column, sha256 and, stored verbatim, its byte offset. Thumbnails
    of ``thumbnails`` (relpaths) are made from the bytes in memory into ``ShardResult.thumbnails``.

    Raises:
        SourceChangedError: a source file differs from the plan.
        RangeError: a written file is not where its index says.
        RuntimeError: this worker's run ended (an orphaned worker never renames a shard).

    The temporary file is removed on any failure, so no partial shard is ever visible.
    """
    reader = FileReader(source, progress)
    # [issue 11] files stored beside were copied (and hashed) by the run before this shard
    reader.hashes.update(beside_hashes(shard))
    thumbs = ThumbnailJobs(thumbnails)  # [issue 13]
    embedded: list[EmbeddedFile] = []
    try:
        # A native sink: a Python file object would copy every page into a bytes object.
        with pq.ParquetWriter(str(tmp_path), schema, **parquet_options(schema, columns)) as writer:
            groups, first_row = _row_group_rows(shard), 0
            for index, rows in enumerate(groups):
                if index + 1 < len(groups):
                    # The kernel reads the next row group's files while this one is encoded
                    # and written: reading and writing overlap without holding more memory.
                    _advise(source, groups[index + 1])
                embedded += _write_row_group(
                    writer, rows, first_row, columns, schema, reader, tmp_path, thumbs
                )
                first_row += len(rows)
            writer.add_key_value_metadata(
                {FOOTER_KEY: json.dumps([e.record() for e in embedded], separators=(",", ":"))}
            )
        embedded = _settled(tmp_path, embedded)
        fsync_file(tmp_path)
        size = tmp_path.stat().st_size  # after record_offsets: the footer may have changed
        # An orphaned worker (its parent killed) must not publish: a new run may hold the lock.
        if PARENT_PID is not None and os.getppid() != PARENT_PID:
            raise RuntimeError(f"{final_path}: not written, the run that started this worker ended")
        os.replace(tmp_path, final_path)
    except BaseException:
        # The error being raised is the one to report; the partial file must not remain.
        tmp_path.unlink(missing_ok=True)
        raise
    finally:
        reader.close()
        thumbs.close()
    return ShardResult(str(shard.path), size, None, embedded, thumbs.results)
