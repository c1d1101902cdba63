"""Locating embedded files' byte ranges in a written shard and recording them in its footer."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import mmap
import os
import struct
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import pyarrow as pa
import pyarrow.parquet as pq

from bids2hf.model.ranges import (
    EmbeddedLike,
    FileRange,
    Key,
    RangeError,
    _row_group_starts,
    addressable_chunk,
    bytes_leaf,
    row_group_of,
)

__all__ = ["index_with_offsets", "locate_ranges", "record_offsets", "replace_footer_value"]

#: How many candidate positions of a value's length prefix are hashed before giving up. The
#: first candidate after the previous value is the right one unless the page header or the
#: levels between them happen to hold the same 4 bytes.
_MAX_CANDIDATES = 64

_MAGIC = b"PAR1"


def _find_value(
    data: mmap.mmap | bytes, cursor: int, end: int, size: int, sha256: str
) -> int | None:
    """Offset of the first value in ``data[cursor:end]`` with ``size`` bytes hashing to ``sha256``."""
    prefix = struct.pack("<I", size)
    view = memoryview(data)
    try:
        pos = cursor
        for _ in range(_MAX_CANDIDATES):
            pos = data.find(prefix, pos, end)
            if pos < 0 or pos + 4 + size > end:
                return None
            if hashlib.sha256(view[pos + 4 : pos + 4 + size]).hexdigest() == sha256:
                return pos + 4
            pos += 1
        return None
    finally:
        view.release()


def _release(data: mmap.mmap, upto: int) -> None:
    """Drop the mapped pages before ``upto`` from this process's resident memory.

    Hashing through the map touches every page of the shard; without this, each page would
    count in the writer's RSS until the map closes (a whole shard). They stay in the page cache.
    """
    end = upto - upto % mmap.PAGESIZE
    if end > 0 and hasattr(data, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
        data.madvise(mmap.MADV_DONTNEED, 0, end)


def locate_ranges(
    shard: str | os.PathLike[str],
    files: Sequence[EmbeddedLike],
    *,
    metadata: pq.FileMetaData | None = None,
) -> dict[Key, FileRange]:
    """Byte range of every file of ``files`` (the shard's embedded index) stored verbatim.

    Meant to run right after the writer closed the shard (it is in the page cache): reads the
    footer (or takes ``metadata``), maps the file, and for each PLAIN uncompressed column chunk
    walks its values in order. Cost: one sha256 over each located file's bytes.

    Files of compressed column chunks are simply absent from the result (readers fall back to
    the column chunk). Returns ``{(column, row, index): FileRange}``.

    Raises:
        RangeError: a file of an uncompressed PLAIN chunk is not where the index says (no range
            of its column chunk hashes to its sha256), or the index names a row or column the
            shard does not have: the shard and its index disagree and must not be published.
    """
    path = Path(shard)
    meta = metadata if metadata is not None else pq.read_metadata(path)
    starts = _row_group_starts(meta)
    total_rows = meta.num_rows
    leaves = [meta.schema.column(i).path for i in range(meta.num_columns)]
    groups: dict[tuple[int, str], list[EmbeddedLike]] = defaultdict(list)
    for f in files:
        if getattr(f, "location", None) is not None:
            continue  # [issue 11] stored beside the shards: no bytes in this one
        if not 0 <= f.row < total_rows:
            raise RangeError(f"{path}: index puts {f.path!r} in row {f.row}, the shard has {total_rows}")
        groups[(row_group_of(starts, f.row), f.column)].append(f)
    out: dict[Key, FileRange] = {}
    if not groups:
        return out
    with open(path, "rb") as fh:
        if os.fstat(fh.fileno()).st_size == 0:
            raise RangeError(f"{path}: empty file")
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as data:
            for (group, column), members in sorted(groups.items()):
                leaf = bytes_leaf(column, leaves)
                if leaf is None:
                    raise RangeError(f"{path}: index names column {column!r}, the shard has none")
                chunk = addressable_chunk(meta.row_group(group).column(leaves.index(leaf)))
                if chunk is None:
                    continue  # compressed: read through the column chunk
                cursor, end = chunk
                if end > len(data):
                    raise RangeError(f"{path}: column chunk {leaf} ends past the end of the file")
                for f in sorted(members, key=lambda f: (f.row, f.index)):
                    found = _find_value(data, cursor, end, f.size, f.sha256)
                    if found is None:
                        raise RangeError(
                            f"{path}: {f.path!r} (row {f.row}, column {column}) is not stored "
                            f"verbatim in its column chunk; the shard and its index disagree"
                        )
                    out[(column, f.row, f.index)] = FileRange(found, f.size)
                    cursor = found + f.size
                    _release(data, cursor)
    return out


# -- recording offsets in the footer ------------------------------------------------------------


def _footer_span(f: BinaryIO, size: int) -> tuple[int, int]:
    if size < 12:
        raise ValueError("not a Parquet file (too short)")
    f.seek(size - 8)
    tail = f.read(8)
    if tail[4:] != _MAGIC:
        raise ValueError("not a Parquet file (no PAR1 at the end)")
    length = struct.unpack("<I", tail[:4])[0]
    return size - 8 - length, length


def _rebuilt_footer(meta: pq.FileMetaData, updates: dict[bytes, bytes]) -> bytes:
    """The Thrift footer of ``meta`` with its key-value metadata updated by ``updates``.

    pyarrow has no API to change a footer's key-value metadata, so a footer with the wanted
    key-values and no row group is made by a writer of the same Arrow schema (recovered from
    ``ARROW:schema``, so that list field names and schema metadata are the original ones), and
    the shard's row groups are appended to it.
    """
    kv = dict(meta.metadata or {})
    serialized = kv.get(b"ARROW:schema")
    if serialized is None:
        raise ValueError("no ARROW:schema in the footer")
    schema = pa.ipc.read_schema(pa.py_buffer(base64.b64decode(serialized)))
    extra = {k: v for k, v in kv.items() if k != b"ARROW:schema" and k not in (schema.metadata or {})}
    extra.update(updates)
    sink = io.BytesIO()
    with pq.ParquetWriter(sink, schema) as writer:
        writer.add_key_value_metadata(extra)
    rebuilt = pq.read_metadata(io.BytesIO(sink.getvalue()))
    rebuilt.append_row_groups(meta)
    out = io.BytesIO()
    rebuilt.write_metadata_file(out)
    return out.getvalue()[4:-8]  # PAR1 + footer + length + PAR1


def replace_footer_value(shard: str | os.PathLike[str], key: bytes, value: bytes) -> None:
    """Set footer key-value ``key`` of a closed, not yet published shard to ``value``, in place.

    Data pages are not touched: only the footer after them is rewritten, so byte offsets found
    by :func:`locate_ranges` stay valid. As a guard against a pyarrow that would rebuild the
    footer differently, the footer is first rebuilt with the current value and must come out
    byte-identical to the one on disk; otherwise nothing is changed.

    Raises:
        ValueError: the file is not a Parquet file written by pyarrow with an Arrow schema, or
            its footer cannot be rebuilt identically (the file is left as it was).
    """
    path = Path(shard)
    with open(path, "r+b") as f:
        size = os.fstat(f.fileno()).st_size
        footer_start, length = _footer_span(f, size)
        f.seek(footer_start)
        current = f.read(length)
        meta = pq.read_metadata(path)
        if _rebuilt_footer(meta, {}) != current:
            raise ValueError(f"{path}: this pyarrow does not rebuild the footer identically")
        footer = _rebuilt_footer(meta, {key: value})
        f.seek(footer_start)
        f.write(footer + struct.pack("<I", len(footer)) + _MAGIC)
        f.truncate()
        f.flush()
        os.fsync(f.fileno())


def index_with_offsets(
    files: Iterable[EmbeddedLike], ranges: dict[Key, FileRange]
) -> list[dict[str, Any]]:
    """The footer index entries of ``files``, each with ``offset`` where a range was located."""
    out = []
    for f in files:
        entry: dict[str, Any] = {
            "path": f.path,
            "size": f.size,
            "sha256": f.sha256,
            "row": f.row,
            "column": f.column,
            "index": f.index,
        }
        found = ranges.get((f.column, f.row, f.index))
        if found is not None:
            entry["offset"] = found.offset
        if (location := getattr(f, "location", None)) is not None:
            entry["location"] = location  # [issue 11] stored beside the shards
        out.append(entry)
    return out


def record_offsets(
    shard: str | os.PathLike[str], files: Sequence[EmbeddedLike], footer_key: bytes
) -> dict[Key, FileRange]:
    """Locate every verbatim file of a just-written shard and store the offsets in its footer.

    The writer's step between closing the Parquet writer and renaming the shard into place:
    :func:`locate_ranges` (each range checked against the file's sha256), then the footer index
    under ``footer_key`` is rewritten as :func:`index_with_offsets`. Returns the ranges, for the
    manifest.

    Raises:
        RangeError: a file is not where the index says (see :func:`locate_ranges`).
        ValueError: the footer cannot be rewritten (see :func:`replace_footer_value`).
    """
    meta = pq.read_metadata(shard)
    ranges = locate_ranges(shard, files, metadata=meta)
    index = index_with_offsets(files, ranges)
    replace_footer_value(shard, footer_key, json.dumps(index, separators=(",", ":")).encode())
    return ranges
