"""Locating embedded files' byte ranges in a written shard and recording them in its footer."""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import io
import json
import mmap
import os
import struct
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
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

__all__ = [
    "Verbatim",
    "index_with_offsets",
    "locate_ranges",
    "locate_written",
    "record_offsets",
    "replace_footer_value",
]

#: How many candidate positions of a value's length prefix are hashed before giving up. The
#: first candidate after the previous value is the right one unless the page header or the
#: levels between them happen to hold the same 4 bytes.
_MAX_CANDIDATES = 64

_MAGIC = b"PAR1"

#: Bytes compared at a time when checking a candidate against the expected bytes: bounds the
#: temporary comparison array and the mapped pages resident at once.
_COMPARE_CHUNK = 8 << 20

#: A file expected verbatim in a just-written row group: its key, its path (for messages) and
#: the bytes that were handed to the Parquet writer, in the order they are stored.
Verbatim = tuple[Key, str, memoryview]


def _find(
    data: mmap.mmap,
    cursor: int,
    end: int,
    size: int,
    accept: Callable[[int], bool],
    max_candidates: int | None = None,
) -> int | None:
    """Offset of the first ``size``-byte value in ``data[cursor:end]`` that ``accept``s.

    A PLAIN value is its 4-byte length and its bytes: each place the length occurs is a
    candidate, and ``accept(offset)`` decides whether the bytes at ``offset`` are the file.
    """
    prefix = struct.pack("<I", size)
    pos, tried = cursor, 0
    while max_candidates is None or tried < max_candidates:
        pos = data.find(prefix, pos, end)
        if pos < 0 or pos + 4 + size > end:
            return None
        if accept(pos + 4):
            return pos + 4
        pos, tried = pos + 1, tried + 1
    return None


def _find_value(
    data: mmap.mmap, cursor: int, end: int, size: int, sha256: str, known: int | None = None
) -> int | None:
    """Offset of the first value in ``data[cursor:end]`` holding the file of ``size`` bytes.

    A candidate is the file if its bytes hash to ``sha256``, or, when the file's bytes are
    already ``known`` to sit at an offset of ``data``, if they equal the bytes there.
    """
    view = memoryview(data)

    def accept(at: int) -> bool:
        if known is None:
            return hashlib.sha256(view[at : at + size]).hexdigest() == sha256
        return at == known or _holds(data, at, view[known : known + size])

    try:
        return _find(data, cursor, end, size, accept, _MAX_CANDIDATES)
    finally:
        view.release()


@contextlib.contextmanager
def _mapped(fh: BinaryIO, length: int, offset: int) -> Iterator[mmap.mmap]:
    """A read-only map of ``fh`` (``length`` 0: to the end), closed on exit when it can be.

    The comparisons look at the map through numpy arrays. If one of them is still referenced
    when the map is done with (a sampling profiler, such as Dask's, can hold a frame's locals
    for a moment), ``close`` raises BufferError; the map is then unmapped when it is freed.
    """
    data = mmap.mmap(fh.fileno(), length, access=mmap.ACCESS_READ, offset=offset)
    try:
        yield data
    finally:
        with contextlib.suppress(BufferError):
            data.close()


def _release(data: mmap.mmap, upto: int) -> None:
    """Drop the mapped pages before ``upto`` from this process's resident memory.

    Hashing through the map touches every page of the shard; without this, each page would
    count in the writer's RSS until the map closes (a whole shard). They stay in the page cache.
    """
    end = upto - upto % mmap.PAGESIZE
    if end > 0 and hasattr(data, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
        data.madvise(mmap.MADV_DONTNEED, 0, end)


def _locate_in_chunk(
    data: mmap.mmap,
    chunk: tuple[int, int],
    members: Sequence[EmbeddedLike],
    known: Mapping[Key, int],
    path: Path,
) -> dict[Key, FileRange]:
    """The ranges of one column chunk's files, walking its values in row and list order."""
    out: dict[Key, FileRange] = {}
    cursor, end = chunk
    for f in sorted(members, key=lambda f: (f.row, f.index)):
        key = (f.column, f.row, f.index)
        found = _find_value(data, cursor, end, f.size, f.sha256, known.get(key))
        if found is None:
            raise RangeError(
                f"{path}: {f.path!r} (row {f.row}, column {f.column}) is not stored "
                f"verbatim in its column chunk; the shard and its index disagree"
            )
        out[key] = FileRange(found, f.size)
        cursor = found + f.size
        _release(data, cursor)
    return out


def locate_ranges(
    shard: str | os.PathLike[str],
    files: Sequence[EmbeddedLike],
    *,
    metadata: pq.FileMetaData | None = None,
    known: Mapping[Key, int] | None = None,
) -> dict[Key, FileRange]:
    """Byte range of every file of ``files`` (the shard's embedded index) stored verbatim.

    Reads the footer (or takes ``metadata``), maps the file, and for each PLAIN uncompressed
    column chunk walks its values in order; each candidate is checked by one sha256 of its
    bytes, or, given ``known`` offsets (from :func:`locate_written`), compared with the bytes
    there. Files of compressed chunks are absent from the result (readers go through the
    column chunk). Returns ``{(column, row, index): FileRange}``.

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
            raise RangeError(
                f"{path}: index puts {f.path!r} in row {f.row}, the shard has {total_rows}"
            )
        groups[(row_group_of(starts, f.row), f.column)].append(f)
    out: dict[Key, FileRange] = {}
    if not groups:
        return out
    with open(path, "rb") as fh:
        if os.fstat(fh.fileno()).st_size == 0:
            raise RangeError(f"{path}: empty file")
        with _mapped(fh, 0, 0) as data:
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
                out.update(_locate_in_chunk(data, (cursor, end), members, known or {}, path))
    return out


def _holds(data: mmap.mmap, at: int, want: memoryview) -> bool:
    """Whether ``data[at : at + len(want)]`` equals ``want``, compared a chunk at a time."""
    have = np.frombuffer(data, dtype=np.uint8, count=len(want), offset=at)
    ref = np.frombuffer(want, dtype=np.uint8)
    try:
        for i in range(0, len(want), _COMPARE_CHUNK):
            if not np.array_equal(have[i : i + _COMPARE_CHUNK], ref[i : i + _COMPARE_CHUNK]):
                return False
            _release(data, at + i)
        return True
    finally:
        del have, ref  # the map cannot close while an array still points into it


def locate_written(
    shard: str | os.PathLike[str], start: int, end: int, expected: Sequence[Verbatim]
) -> dict[Key, FileRange]:
    """Where each file of a row group just written at ``shard[start:end]`` landed.

    The writer's step right after each row group: ``expected`` lists the files of the row
    group's uncompressed PLAIN chunks in storage order (column by column, then row and list
    order), each with the bytes the writer was given. A PLAIN value is a 4-byte length and the
    bytes, so each file is searched from the end of the previous one, and a candidate is
    accepted only if the shard's bytes there *equal* the expected bytes: the recorded range
    then holds exactly the file, whatever the page headers between values look like. Comparing
    against memory costs a fraction of hashing the shard again (the expected bytes were hashed
    as they were read).

    Raises:
        RangeError: a file is not stored verbatim in ``shard[start:end]`` (the Parquet writer did
            not lay the values out as planned): the shard must not be published.
    """
    out: dict[Key, FileRange] = {}
    if not expected:
        return out
    base = start - start % mmap.ALLOCATIONGRANULARITY
    with open(shard, "rb") as fh, _mapped(fh, end - base, base) as data:
        cursor = start - base
        for key, path, want in expected:
            accept = functools.partial(_holds, data, want=want)
            found = _find(data, cursor, len(data), len(want), accept)
            if found is None:
                raise RangeError(
                    f"{shard}: {path!r} (row {key[1]}, column {key[0]}) is not stored verbatim "
                    f"in its row group; the shard and its index disagree"
                )
            out[key] = FileRange(base + found, len(want))
            cursor = found + len(want)
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
    extra = {
        k: v for k, v in kv.items() if k != b"ARROW:schema" and k not in (schema.metadata or {})
    }
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
    shard: str | os.PathLike[str],
    files: Sequence[EmbeddedLike],
    footer_key: bytes,
    found: Mapping[Key, FileRange],
) -> dict[Key, FileRange]:
    """Settle the offsets :func:`locate_written` found in a just-closed shard; fix its footer.

    The writer's step between closing the Parquet writer (whose footer index under
    ``footer_key`` already holds the ``found`` offsets) and renaming the shard into place.
    :func:`locate_written` searches from the start of each row group, so a file whose bytes also
    occur before its own column chunk (an empty file: any four zero bytes) may be found there;
    those bytes are the same, but the canonical offset is the first match in the file's own
    chunk, after the previous value, as :func:`locate_ranges` finds it. That pass costs next to
    nothing (candidates are compared with the known bytes, not hashed), and only when an offset
    moves is the footer rewritten. Returns the settled ranges, for the manifest.

    Raises:
        RangeError: a file is not in its column chunk (see :func:`locate_ranges`).
        ValueError: the footer cannot be rewritten (see :func:`replace_footer_value`).
    """
    meta = pq.read_metadata(shard)
    known = {key: r.offset for key, r in found.items()}
    ranges = locate_ranges(shard, files, metadata=meta, known=known)
    if ranges != dict(found):
        index = index_with_offsets(files, ranges)
        replace_footer_value(shard, footer_key, json.dumps(index, separators=(",", ":")).encode())
    return ranges
