"""Write one planned shard, row group by row group, with the source files embedded verbatim.

Memory holds one row group: the files of a row group are read straight into one reusable buffer
per column (hashing each chunk as it arrives), wrapped as Arrow arrays without copying, and
handed to ``pyarrow.parquet.ParquetWriter``. The shard is written under a temporary name, its
own sha256 computed as it is written, and renamed into place only when complete.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .errors import InputError
from .plan import ColumnSpec, FileRef, Role, RowPlan
from .shard_plan import ShardPlan

#: Key of the shard's Parquet footer metadata that lists the files embedded in it.
FOOTER_KEY = b"bids2hf"
_CHUNK = 8 * 1024 * 1024

Progress = Callable[[int, int], None]  # (bytes, files) just written


class SourceChangedError(InputError):
    """A source file changed between planning and reading."""


@dataclass(frozen=True)
class EmbeddedFile:
    """Where one source file sits inside a shard."""

    path: str
    size: int
    sha256: str
    row: int
    column: str
    index: int  # position in the cell's list; -1 for single-valued columns


@dataclass
class ShardResult:
    """A finished shard: its own checksum and the files it holds."""

    path: str
    size: int
    sha256: str
    files: list[EmbeddedFile] = field(default_factory=list)


class _HashingSink(io.RawIOBase):
    """Write-through file object that hashes what pyarrow writes (Parquet never seeks back)."""

    def __init__(self, path: Path) -> None:
        self._f = open(path, "wb")  # noqa: SIM115 - closed in close()
        self.sha = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        n = self._f.write(b)
        self.sha.update(b)
        self.size += n
        return n

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        if not self._f.closed:
            self._f.flush()

    def close(self) -> None:
        if not self._f.closed:
            self._f.flush()
            os.fsync(self._f.fileno())
            self._f.close()
        super().close()


def parquet_options(schema: pa.Schema, columns: Sequence[ColumnSpec]) -> dict[str, Any]:
    """ParquetWriter options: embedded bytes uncompressed and without dictionaries or stats."""
    buf = io.BytesIO()
    with pq.ParquetWriter(buf, schema) as w:
        w.write_table(schema.empty_table())
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
    }


class _Reader:
    """Reads source files into reusable per-column buffers, hashing as it goes."""

    def __init__(self, root: Path, progress: Progress | None) -> None:
        self.root = root
        self.progress = progress
        self.arenas: dict[str, np.ndarray] = {}
        self.hashes: dict[str, str] = {}

    def arena(self, column: str, size: int) -> np.ndarray:
        buf = self.arenas.get(column)
        if buf is None or buf.nbytes < size:
            # Grow with headroom, so that row groups of similar size reuse the pages.
            buf = np.empty(max(size, int(size * 1.25), 1), dtype=np.uint8)
            self.arenas[column] = buf
        return buf

    def read_into(self, ref: FileRef, out: memoryview) -> None:
        path = self.root / ref.relpath
        sha = hashlib.sha256()
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            raise SourceChangedError(
                f"{path}: removed after planning; re-run the same command to resume"
            ) from None
        except PermissionError:
            raise InputError(
                f"{path}: permission denied; fix its permissions or --exclude it"
            ) from None
        try:
            st = os.fstat(fd)
            if st.st_size != ref.size or st.st_mtime_ns != ref.mtime_ns:
                raise SourceChangedError(
                    f"{path}: changed after planning (size or mtime); re-run the same command "
                    "to convert the new version"
                )
            if hasattr(os, "posix_fadvise"):
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
            done = 0
            with os.fdopen(fd, "rb", buffering=0, closefd=False) as f:
                while done < ref.size:
                    n = f.readinto(out[done : min(ref.size, done + _CHUNK)])
                    if not n:
                        raise SourceChangedError(
                            f"{path}: shorter than planned ({done} of {ref.size} bytes); "
                            "re-run the same command"
                        )
                    sha.update(out[done : done + n])
                    done += n
                    if self.progress:
                        self.progress(n, 0)
            if os.fstat(fd).st_mtime_ns != ref.mtime_ns:
                raise SourceChangedError(
                    f"{path}: modified while being read; re-run the same command"
                )
        finally:
            os.close(fd)
        self.hashes[ref.relpath] = sha.hexdigest()
        if self.progress:
            self.progress(0, 1)

    def sha256(self, ref: FileRef) -> str:
        if ref.relpath not in self.hashes:
            scratch = np.empty(ref.size, dtype=np.uint8)
            self.read_into(ref, memoryview(scratch.data))
        return self.hashes[ref.relpath]


def _cells(rows: Sequence[RowPlan], column: str) -> list[list[FileRef]]:
    return [row.files.get(column, []) for row in rows]


def _file_array(
    spec: ColumnSpec, typ: pa.DataType, rows: Sequence[RowPlan], reader: _Reader
) -> pa.Array:
    cells = _cells(rows, spec.name)
    # One slot per embedded file; a single-valued column has one slot per row (None if absent).
    slots: list[FileRef | None] = (
        [cell[0] if cell else None for cell in cells]
        if spec.single
        else [r for c in cells for r in c]
    )
    sizes = np.array([r.size if r else 0 for r in slots], dtype=np.int64)
    offsets = np.zeros(len(slots) + 1, dtype=np.int64)
    np.cumsum(sizes, out=offsets[1:])
    total = int(offsets[-1])
    arena = reader.arena(spec.name, total)
    view = memoryview(arena.data)
    for i, ref in enumerate(slots):
        if ref is not None:
            reader.read_into(ref, view[int(offsets[i]) : int(offsets[i + 1])])
    data = pa.py_buffer(arena[:total])
    bytes_arr = pa.Array.from_buffers(
        pa.binary(), len(slots), [None, pa.py_buffer(offsets.astype(np.int32)), data]
    )
    children = {
        "bytes": bytes_arr,
        "path": pa.array([r.relpath if r else None for r in slots], type=pa.string()),
    }
    item_fields = list(typ if spec.single else typ.value_type)
    arrays = [children[f.name] for f in item_fields]
    if spec.single:
        mask = pa.array([r is None for r in slots], type=pa.bool_())
        return pa.StructArray.from_arrays(arrays, fields=item_fields, mask=mask)
    struct = pa.StructArray.from_arrays(arrays, fields=item_fields)
    list_offsets = np.zeros(len(cells) + 1, dtype=np.int32)
    np.cumsum([len(c) for c in cells], out=list_offsets[1:])
    return pa.ListArray.from_arrays(pa.array(list_offsets), struct, type=typ)


def _sha_array(
    spec: ColumnSpec, typ: pa.DataType, rows: Sequence[RowPlan], reader: _Reader
) -> pa.Array:
    cells = _cells(rows, spec.name)
    if spec.single:
        return pa.array([reader.sha256(c[0]) if c else None for c in cells], type=typ)
    return pa.array([[reader.sha256(r) for r in c] for c in cells], type=typ)


def write_shard(
    shard: ShardPlan,
    columns: Sequence[ColumnSpec],
    schema: pa.Schema,
    source_root: Path,
    final_path: Path,
    tmp_path: Path,
    progress: Progress | None = None,
) -> ShardResult:
    """Write ``shard`` to ``tmp_path``, then rename it to ``final_path``.

    Raises :class:`SourceChangedError` if a source file differs from the plan; the temporary
    file is removed on any failure, so no partial shard is ever visible.
    """
    reader = _Reader(source_root, progress)
    options = parquet_options(schema, columns)
    sink = _HashingSink(tmp_path)
    embedded: list[EmbeddedFile] = []
    try:
        with pq.ParquetWriter(pa.PythonFile(sink, mode="w"), schema, **options) as writer:
            start = 0
            for count in shard.row_groups:
                rows = shard.rows[start : start + count]
                arrays = []
                for spec in columns:
                    typ = schema.field(spec.name).type
                    if spec.role is Role.FILE:
                        arrays.append(_file_array(spec, typ, rows, reader))
                    elif spec.role is Role.SHA256:
                        arrays.append(_sha_array(spec, typ, rows, reader))
                    else:
                        arrays.append(pa.array([r.values.get(spec.name) for r in rows], type=typ))
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
                start += count
            writer.add_key_value_metadata(
                {FOOTER_KEY: json.dumps([e.__dict__ for e in embedded], separators=(",", ":"))}
            )
        sink.close()
        os.replace(tmp_path, final_path)
    except BaseException:
        sink.close()
        tmp_path.unlink(missing_ok=True)
        raise
    return ShardResult(str(shard.path), sink.size, sink.sha.hexdigest(), embedded)


def read_footer_index(metadata: pq.FileMetaData) -> list[EmbeddedFile]:
    """The embedded-file index a shard carries in its footer (empty for foreign files)."""
    kv = metadata.metadata or {}
    raw = kv.get(FOOTER_KEY)
    if raw is None:
        return []
    return [EmbeddedFile(**e) for e in json.loads(raw)]
