"""Write one planned shard, row group by row group, with the source files embedded verbatim.

Memory holds one row group: the files of a row group are read straight into one reusable buffer
per column (hashing each chunk as it arrives), wrapped as Arrow arrays without copying, and
handed to ``pyarrow.parquet.ParquetWriter``. The shard is written under a temporary name and
renamed into place only when complete.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
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
from bids2hf.model.rows import ColumnSpec, FileRef, Role, RowPlan, ShardPlan
from bids2hf.model.source import Source
from bids2hf.write.arrays import bool_array, int32_array, string_array, typed_array
from bids2hf.write.previews import ThumbnailJobs
from bids2hf.write.ranges import record_offsets

__all__ = [
    "Progress", "ShardResult", "SourceChangedError", "fsync_file", "parquet_options",
    "write_shard",
]

Progress = Callable[[int, int], None]  # (bytes, files) just written


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


class _Reader:
    """Reads source files into one reusable buffer per row group, hashing as it goes.

    Hashing runs on a second thread (``hashlib`` releases the GIL), chunk by chunk right behind
    the reads, so sha256 costs no time on the read/write path; :meth:`flush` waits for it.
    """

    def __init__(self, source: Source, progress: Progress | None) -> None:
        self.source = source
        self.progress = progress
        self._arena = np.empty(0, dtype=np.uint8)
        self.hashes: dict[str, str] = {}
        self._hasher = ThreadPoolExecutor(1, thread_name_prefix="bids2hf-sha256")
        self._pending: list[Future[None]] = []

    def close(self) -> None:
        self._hasher.shutdown(wait=True)

    def flush(self) -> None:
        """Wait until every chunk read so far is hashed (before the buffer is reused)."""
        for fut in self._pending:
            fut.result()
        self._pending.clear()

    def _finish(self, relpath: str, sha: Any) -> None:
        self.hashes[relpath] = sha.hexdigest()

    def arena(self, size: int) -> np.ndarray:
        """One buffer for all the files of a row group, reused from one row group to the next.

        Reuse spares the kernel from faulting in fresh pages for every row group; the buffer only
        grows when a row group is larger than any before it.
        """
        if self._arena.nbytes < size:
            self._arena = np.empty(0, dtype=np.uint8)  # release the old one before allocating
            self._arena = np.empty(size, dtype=np.uint8)
        return self._arena

    def read_files(self, items: Sequence[tuple[FileRef, memoryview]]) -> None:
        """Read each file into its buffer, hashing each chunk as it arrives.

        Raises :class:`SourceChangedError` (the file is not the planned one) or
        :class:`~bids2hf.errors.InputError` (it cannot be read).
        """
        shas = [hashlib.sha256() for _ in items]

        def on_chunk(i: int, chunk: memoryview) -> None:
            # One hashing thread: updates run in submission order (the source calls this in
            # order for each file).
            self._pending.append(self._hasher.submit(shas[i].update, chunk))
            if self.progress:
                self.progress(len(chunk), 0)

        def on_file(i: int) -> None:
            self._pending.append(self._hasher.submit(self._finish, items[i][0].relpath, shas[i]))
            if self.progress:
                self.progress(0, 1)

        self.source.read_files(items, on_chunk, on_file)

    def read_into(self, ref: FileRef, out: memoryview) -> None:
        self.read_files([(ref, out)])

    def sha256(self, ref: FileRef) -> str:
        if ref.relpath not in self.hashes:
            self.flush()
        if ref.relpath not in self.hashes:
            scratch = np.empty(ref.size, dtype=np.uint8)
            self.read_into(ref, memoryview(scratch.data))
            self.flush()
        return self.hashes[ref.relpath]


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

    def reads(self) -> list[tuple[FileRef, memoryview]]:
        view = memoryview(self.arena.data)
        return [
            (ref, view[int(self.offsets[i]) : int(self.offsets[i + 1])])
            for i, ref in enumerate(self.slots)
            if ref is not None
        ]


def _file_column(spec: ColumnSpec, rows: Sequence[RowPlan], arena: np.ndarray) -> _FileColumn:
    cells = _cells(rows, spec.name)
    slots: list[FileRef | None] = (
        [cell[0] if cell else None for cell in cells]
        if spec.single
        else [r for c in cells for r in c]
    )
    sizes = np.array([r.size if r else 0 for r in slots], dtype=np.int64)
    offsets = np.zeros(len(slots) + 1, dtype=np.int64)
    np.cumsum(sizes, out=offsets[1:])
    return _FileColumn(spec, cells, slots, offsets, arena)


def _file_array(column: _FileColumn, typ: pa.DataType) -> pa.Array:
    """The column's files, already read into its slice of the row group's buffer, zero-copy."""
    spec, cells, slots, offsets = column.spec, column.cells, column.slots, column.offsets
    total = int(offsets[-1])
    data = pa.py_buffer(column.arena[:total])
    bytes_arr = pa.Array.from_buffers(
        pa.binary(), len(slots), [None, pa.py_buffer(offsets.astype(np.int32)), data]
    )
    children = {
        "bytes": bytes_arr,
        "path": string_array([r.relpath if r else None for r in slots]),
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
    spec: ColumnSpec, typ: pa.DataType, rows: Sequence[RowPlan], reader: _Reader
) -> pa.Array:
    cells = _cells(rows, spec.name)
    if spec.single:
        return string_array([reader.sha256(c[0]) if c else None for c in cells])
    offsets = np.zeros(len(cells) + 1, dtype=np.int32)
    np.cumsum([len(c) for c in cells], out=offsets[1:])
    values = string_array([reader.sha256(r) for c in cells for r in c])
    return pa.ListArray.from_arrays(int32_array(offsets), values, type=typ)


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

    ``source`` is where the files are read: a :class:`~bids2hf.bids.source.LocalSource` or an
    fsspec one (``write/`` never opens a source itself: it takes the object) [issue 15].

    ``thumbnails``: relpaths of the files to make thumbnails of, from the bytes in memory
    (:class:`~bids2hf.write.previews.ThumbnailJobs`), returned in ``ShardResult.thumbnails``.

    Raises :class:`SourceChangedError` if a source file differs from the plan; the temporary
    file is removed on any failure, so no partial shard is ever visible.
    """
    reader = _Reader(source, progress)
    thumbs = ThumbnailJobs(thumbnails)  # [issue 13]
    options = parquet_options(schema, columns)
    embedded: list[EmbeddedFile] = []
    try:
        # A native sink: a Python file object would copy every page into a bytes object.
        with pq.ParquetWriter(str(tmp_path), schema, **options) as writer:
            start = 0
            groups = _row_group_rows(shard)
            for index, count in enumerate(shard.row_groups):
                rows = shard.rows[start : start + count]
                if index + 1 < len(groups):
                    # The kernel reads the next row group's files while this one is encoded
                    # and written: reading and writing overlap without holding more memory.
                    _advise(source, groups[index + 1])
                sizes = {
                    spec.name: sum(r.size for row in rows for r in row.files.get(spec.name, []))
                    for spec in columns
                    if spec.role is Role.FILE
                }
                arena = reader.arena(sum(sizes.values()))
                at = 0
                file_columns: dict[str, _FileColumn] = {}
                for spec in columns:
                    if spec.role is Role.FILE:
                        part = arena[at : at + sizes[spec.name]]
                        file_columns[spec.name] = _file_column(spec, rows, part)
                        at += sizes[spec.name]
                # [issue 15] every file of the row group in one call, in column order: a remote
                # source keeps several of them in flight.
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
                reader.flush()  # all hashes known, and the buffer free for the next row group
                for i, row in enumerate(rows, start=start):
                    for spec in columns:
                        if spec.role is not Role.FILE:
                            continue
                        for j, ref in enumerate(row.files.get(spec.name, [])):
                            embedded.append(
                                EmbeddedFile(
                                    ref.relpath,
                                    ref.size,
                                    reader.hashes[ref.relpath],
                                    i,
                                    spec.name,
                                    -1 if spec.single else j,
                                )
                            )
                table = pa.Table.from_arrays(arrays, schema=schema)
                writer.write_table(table, row_group_size=max(1, count))
                del table, arrays
                # Hand the encoder's freed page buffers back to the system: the allocator would
                # keep them, and peak RSS would exceed row group + page buffers by ~45 MB.
                pa.default_memory_pool().release_unused()
                start += count
                thumbs.wait()  # [issue 13] before the next row group reuses the buffer
                # Start writing back what is already on its way to disk, so that the fsync at
                # the end does not stall the pipeline for a whole shard's worth of dirty pages.
                _start_writeback(tmp_path)
            writer.add_key_value_metadata(
                {FOOTER_KEY: json.dumps([e.record() for e in embedded], separators=(",", ":"))}
            )
        # Where each verbatim file sits, checked against its sha256 and stored in the footer, so
        # readers can fetch one file by its byte range. A RangeError means the shard disagrees
        # with its index: the except below deletes it, nothing wrong is published.
        ranges = record_offsets(tmp_path, embedded, FOOTER_KEY)
        embedded = [
            dataclasses.replace(e, offset=r.offset)
            if (r := ranges.get((e.column, e.row, e.index)))
            else e
            for e in embedded
        ]
        fsync_file(tmp_path)
        size = tmp_path.stat().st_size  # after record_offsets: the footer grew
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
