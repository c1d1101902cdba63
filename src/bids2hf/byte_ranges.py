"""Where each embedded file's bytes sit inside its shard, and reading them back by byte range.

bids2hf writes the ``bytes`` leaf of NIfTI columns PLAIN and uncompressed (see
``write.parquet_options``), so each such file is stored verbatim and contiguously: a Parquet
PLAIN ``BYTE_ARRAY`` value is a 4-byte little-endian length followed by the bytes, and a page
never splits a value. Any reader can then fetch one file with a single HTTP range request.

:func:`locate_ranges` finds those ranges right after a shard is written. It needs no Thrift
parser: the footer's column-chunk metadata (``data_page_offset``, ``total_compressed_size``)
bounds the search to the one chunk that holds the file, values appear in the chunk in row order
and list order, and a candidate is accepted only if the range hashes to the file's sha256. The
hash check makes the result exact whatever the page layout: a range whose bytes hash to the
file's sha256 *is* the file. Page headers and definition/repetition levels only decide where
the search looks first (right after the previous value), never whether a range is accepted.

Files of compressed columns (the zstd ``files`` column: sidecars, bval/bvec, events, ...) get no
range; readers fall back to reading that row group's column chunk with pyarrow.

The read side (:func:`read_range`, :func:`fetch_ranges`) re-checks every sha256 before it hands
any byte over: a wrong recorded offset is refused, never returned.
"""

from __future__ import annotations

import base64
import bisect
import hashlib
import io
import json
import mmap
import os
import struct
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from .errors import VerificationError

#: Key of a file inside a shard: (column, row in the shard, index in the cell's list; -1 for
#: single-valued columns). Paths are not keys: one path may be embedded in two columns.
Key = tuple[str, int, int]

#: How many candidate positions of a value's length prefix are hashed before giving up. The
#: first candidate after the previous value is the right one unless the page header or the
#: levels between them happen to hold the same 4 bytes.
_MAX_CANDIDATES = 64

#: Encodings of an addressable column chunk: PLAIN values, RLE/bit-packed levels.
_PLAIN_ENCODINGS = frozenset({"PLAIN", "RLE", "BIT_PACKED"})

_MAGIC = b"PAR1"


class RangeError(VerificationError):
    """Bytes at a recorded range do not hash to the file's sha256 (or cannot be found)."""


class EmbeddedLike(Protocol):
    """What :func:`locate_ranges` needs of an entry of a shard's embedded-file index."""

    @property
    def path(self) -> str: ...
    @property
    def size(self) -> int: ...
    @property
    def sha256(self) -> str: ...
    @property
    def row(self) -> int: ...
    @property
    def column(self) -> str: ...
    @property
    def index(self) -> int: ...


@dataclass(frozen=True)
class FileRange:
    """A file's bytes are ``shard[offset : offset + length]``."""

    offset: int
    length: int


def bytes_leaf(column: str, leaf_paths: Iterable[str]) -> str | None:
    """The Parquet leaf path that holds the bytes of file column ``column`` (None if absent).

    A single-valued column's struct is ``COL.bytes``; a list column's is
    ``COL.list.element.bytes`` (``item`` with non-compliant nested names).
    """
    wanted = {f"{column}.bytes", f"{column}.list.element.bytes", f"{column}.list.item.bytes"}
    return next((p for p in leaf_paths if p in wanted), None)


def _row_group_starts(meta: pq.FileMetaData) -> list[int]:
    starts, n = [], 0
    for i in range(meta.num_row_groups):
        starts.append(n)
        n += meta.row_group(i).num_rows
    return starts


def row_group_of(starts: Sequence[int], row: int) -> int:
    """Index of the row group holding shard row ``row``, given each row group's first row."""
    return bisect.bisect_right(starts, row) - 1


def addressable_chunk(chunk: pq.ColumnChunkMetaData) -> tuple[int, int] | None:
    """``(start, end)`` of a column chunk whose values are stored verbatim, else None."""
    if chunk.compression != "UNCOMPRESSED" or chunk.has_dictionary_page:
        return None
    encodings = set(chunk.encodings)
    if "PLAIN" not in encodings or not encodings <= _PLAIN_ENCODINGS:
        return None
    start = int(chunk.data_page_offset)
    return start, start + int(chunk.total_compressed_size)


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
    return out


def check_range(data: bytes | bytearray | memoryview, sha256: str, what: str) -> None:
    """Raise :class:`RangeError` unless ``data`` hashes to ``sha256``."""
    if hashlib.sha256(data).hexdigest() != sha256:
        raise RangeError(
            f"{what}: the bytes at its recorded offset do not match its sha256; refusing them "
            "(the index or the shard is damaged)"
        )


def read_range(f: BinaryIO, offset: int, length: int, sha256: str, what: str = "file") -> bytes:
    """Read ``length`` bytes at ``offset`` of an open file and return them if they hash right.

    Raises:
        RangeError: short read, or the bytes do not hash to ``sha256`` (nothing is returned).
    """
    f.seek(offset)
    data = f.read(length)
    if len(data) != length:
        raise RangeError(f"{what}: {len(data)} of {length} bytes at offset {offset}")
    check_range(data, sha256, what)
    return bytes(data)


def cat_range(fs: fsspec.AbstractFileSystem, path: str, start: int, end: int) -> bytes:
    """Exactly ``path[start:end]`` of a file of ``fs``, in one request where the fs allows it.

    Filesystems that keep fsspec's generic ``cat_file`` (``hf://`` among them) would read
    through a read-ahead cache and fetch a block more than asked, so their file is opened
    without cache instead.
    """
    if end <= start:
        return b""
    # Async filesystems (s3fs, http) mirror their ``_cat_file`` as an instance attribute.
    if getattr(fs, "async_impl", False) or type(fs).cat_file is not fsspec.AbstractFileSystem.cat_file:
        data = fs.cat_file(path, start=start, end=end)
    else:
        with fs.open(path, "rb", cache_type="none") as f:
            f.seek(start)
            data = f.read(end - start)
    if len(data) != end - start:
        raise RangeError(f"{path}: got {len(data)} of {end - start} bytes at {start}")
    return bytes(data)


@dataclass(frozen=True)
class Span:
    """One request covering several neighbouring ranges (``members``: their input positions)."""

    start: int
    end: int
    members: tuple[int, ...]


def coalesce(
    ranges: Sequence[tuple[int, int]], gap: int = 64 << 10, max_span: int = 64 << 20
) -> list[Span]:
    """Merge ``(offset, length)`` ranges whose gap is at most ``gap`` bytes into fewer requests.

    A span grows past ``max_span`` only with a single range (memory stays bounded by the largest
    file or ``max_span``). The extra bytes read are the gaps, at most ``gap`` per merge.
    """
    order = sorted(range(len(ranges)), key=lambda i: ranges[i][0])
    spans: list[Span] = []
    start = end = 0
    members: list[int] = []
    for i in order:
        off, length = ranges[i]
        if members and off - end <= gap and max(end, off + length) - start <= max_span:
            end = max(end, off + length)
            members.append(i)
            continue
        if members:
            spans.append(Span(start, end, tuple(members)))
        start, end, members = off, off + length, [i]
    if members:
        spans.append(Span(start, end, tuple(members)))
    return spans


def fetch_ranges(
    fs: fsspec.AbstractFileSystem,
    path: str,
    items: Sequence[tuple[int, int, str]],
    *,
    gap: int = 64 << 10,
    max_span: int = 64 << 20,
    workers: int = 4,
) -> Iterator[tuple[int, bytes]]:
    """Fetch ``(offset, length, sha256)`` ranges of one object, verified, several in flight.

    Neighbours are coalesced (:func:`coalesce`); up to ``workers`` requests run at once, and at
    most ``2 * workers`` spans are held in memory. Yields ``(position in items, bytes)``, in span
    order, each only after its sha256 matched.

    Raises:
        RangeError: a range's bytes do not hash to its sha256 (nothing of it is yielded).
    """
    spans = coalesce([(o, n) for o, n, _ in items], gap, max_span)

    def get(span: Span) -> bytes:
        return cat_range(fs, path, span.start, span.end)

    with ThreadPoolExecutor(max(1, workers), thread_name_prefix="bids2hf-range") as pool:
        pending: list[tuple[Span, Future[bytes]]] = []
        next_span = 0
        while next_span < len(spans) or pending:
            while next_span < len(spans) and len(pending) < 2 * max(1, workers):
                pending.append((spans[next_span], pool.submit(get, spans[next_span])))
                next_span += 1
            span, fut = pending.pop(0)
            data = fut.result()
            for i in span.members:
                off, length, sha = items[i]
                piece = data[off - span.start : off - span.start + length]
                check_range(piece, sha, f"{path} [{off}, {off + length})")
                yield i, piece


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
