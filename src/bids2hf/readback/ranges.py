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

import hashlib
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import BinaryIO

import fsspec

from bids2hf.model.ranges import RangeError

__all__ = ["Span", "cat_range", "check_range", "coalesce", "fetch_ranges", "read_range"]


def check_range(data: bytes | bytearray | memoryview, sha256: str, what: str) -> None:
    """Check that ``data`` hashes to ``sha256``.

    Raises:
        RangeError: it does not (``what`` names the file in the message).
    """
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

    Raises:
        RangeError: the file holds fewer bytes there than asked.
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
    ranges: Sequence[tuple[int, int]],
    gap: int = 64 << 10,
    max_span: int = 64 << 20,
    waste: float | None = None,
) -> list[Span]:
    """Merge ``(offset, length)`` ranges whose gap is at most ``gap`` bytes into fewer requests.

    A span grows past ``max_span`` only with a single range (memory stays bounded by the largest
    file or ``max_span``). The extra bytes read are the gaps, at most ``gap`` per merge. With
    ``waste``, a gap is also merged only if it is at most ``waste`` times the range it brings
    in, so the bytes read stay within ``1 + waste`` times the bytes asked for (small files far
    apart are fetched one by one instead of with the data between them).
    """
    order = sorted(range(len(ranges)), key=lambda i: ranges[i][0])
    spans: list[Span] = []
    start = end = 0
    members: list[int] = []
    for i in order:
        off, length = ranges[i]
        fits = off - end <= gap and (waste is None or off - end <= waste * length)
        if members and fits and max(end, off + length) - start <= max_span:
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
    waste: float | None = None,
    names: Sequence[str] | None = None,
) -> Iterator[tuple[int, bytes]]:
    """Fetch ``(offset, length, sha256)`` ranges of one object, verified, several in flight.

    Neighbours are coalesced (:func:`coalesce`, ``gap``/``max_span``/``waste``); up to ``workers`` requests run at once, and at
    most ``2 * workers`` spans are held in memory. Yields ``(position in items, bytes)``, in span
    order, each only after its sha256 matched. ``names`` (one per item) name the files in
    errors.

    Raises:
        RangeError: a range's bytes do not hash to its sha256 (nothing of it is yielded).
    """
    spans = coalesce([(o, n) for o, n, _ in items], gap, max_span, waste)

    def get(span: Span) -> bytes:
        try:
            return cat_range(fs, path, span.start, span.end)
        except RangeError as exc:
            if not names:
                raise
            which = ", ".join(names[i] for i in span.members[:3])
            more = f" and {len(span.members) - 3} more" if len(span.members) > 3 else ""
            raise RangeError(
                f"{which}{more}: {exc} (the recorded offset is past the shard's end: the index "
                "or the shard is damaged)"
            ) from None

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
                where = f"{path} [{off}, {off + length})"
                check_range(piece, sha, f"{names[i]} (at {where})" if names else where)
                yield i, piece
