"""Reading what export restores from a published dataset: its files, a shard's footer and row
groups, and the file cells in them (a ``{path, bytes}`` struct, or a list of them).

A page that cannot be read is a damaged copy (:class:`~bids2hf.errors.VerificationError`); a cell
that is not where the index says is a damaged or crafted index (:class:`~bids2hf.errors.InputError`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import BinaryIO

import pyarrow as pa
import pyarrow.parquet as pq

from bids2hf.errors import InputError, VerificationError
from bids2hf.model.manifest import ManifestEntry
from bids2hf.readback.published import PublishedDataset

__all__ = [
    "REFUSED",
    "chunks",
    "file_item",
    "missing_file",
    "open_published",
    "parquet_file",
    "read_group",
    "stored_path",
]

#: How a damaged or crafted index is refused: the end of each such error.
REFUSED = (
    "the index is damaged or crafted, so it is refused (download or convert the dataset again)"
)


def parquet_file(f: BinaryIO, where: str, meta: pq.FileMetaData | None = None) -> pq.ParquetFile:
    """``f`` opened as Parquet; with ``meta`` (read already), its footer is not read again.

    Raises:
        VerificationError: its footer cannot be read (a damaged copy).
    """
    try:
        return pq.ParquetFile(f, metadata=meta)
    except (pa.ArrowException, OSError) as exc:
        raise _unreadable(where, exc) from None


def read_group(pf: pq.ParquetFile, group: int, columns: list[str], where: str) -> pa.Table:
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


def stored_path(item: pa.StructScalar) -> str | bytes | None:
    """The path stored in a file's struct; its raw bytes if they are no UTF-8 (damaged)."""
    if not item.is_valid:
        return None
    path = item["path"]
    try:
        return path.as_py()
    except UnicodeDecodeError:  # Parquet readers do not check UTF-8: a damaged page
        return path.as_buffer().to_pybytes()


def file_item(cell: pa.Scalar, e: ManifestEntry, where: str) -> pa.StructScalar:
    """The struct of ``e`` inside its cell (a struct, or a list of them).

    Raises:
        InputError: the cell holds no struct at ``e``'s index (a damaged or crafted index).
    """
    if e.index is None or e.index < 0:
        item = cell
    else:
        values = cell.values if cell.is_valid else None
        if values is None or e.index >= len(values):
            n = 0 if values is None else len(values)
            raise InputError(
                f"{where}: row {e.row} column {e.column} holds {n} file(s), no index {e.index} "
                f"where {e.path!r} is said to be; {REFUSED}"
            )
        item = values[e.index]
    assert isinstance(item, pa.StructScalar)
    return item


def chunks(f: BinaryIO) -> Iterator[bytes]:
    """``f`` read to its end, 8 MiB at a time."""
    while chunk := f.read(8 << 20):
        yield chunk


def open_published(dataset: PublishedDataset, relpath: str, whole: bool = True) -> BinaryIO:
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
        raise missing_file(dataset, relpath) from None
    return f


def missing_file(dataset: PublishedDataset, relpath: str) -> VerificationError:
    """The error for ``relpath``, listed but missing from the published dataset."""
    return VerificationError(
        f"{dataset.url}/{relpath}: listed in the manifest but missing from the published "
        "dataset (an incomplete upload?)"
    )
