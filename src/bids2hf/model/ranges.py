"""Byte ranges of embedded files inside a shard: the records and Parquet-metadata helpers both sides share.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

import pyarrow.parquet as pq

from bids2hf.errors import VerificationError

__all__ = [
    "EmbeddedLike", "FileRange", "Key", "RangeError", "addressable_chunk", "bytes_leaf",
    "row_group_of",
]

#: Key of a file inside a shard: (column, row in the shard, index in the cell's list; -1 for
#: single-valued columns). Paths are not keys: one path may be embedded in two columns.
Key = tuple[str, int, int]

#: Encodings of an addressable column chunk: PLAIN values, RLE/bit-packed levels.
_PLAIN_ENCODINGS = frozenset({"PLAIN", "RLE", "BIT_PACKED"})


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
