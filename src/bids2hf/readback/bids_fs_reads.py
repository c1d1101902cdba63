"""How a ``bids2hf://`` filesystem (:mod:`bids2hf.readback.bids_fs`) reads bytes, without its
state: exact range reads handed to pyarrow, a whole file fetched and checked against its sha256
before any of it is returned, the file cells of a column chunk checked, and the listings of
files and folders.
"""

from __future__ import annotations

import errno
import hashlib
import io
import tempfile
from collections.abc import Callable
from typing import IO, Any

import pyarrow as pa

from bids2hf.model.ranges import RangeError
from bids2hf.readback.bids_fs_index import IndexEntry
from bids2hf.readback.ranges import check_range

__all__ = [
    "RangeReader",
    "bids_paths",
    "cell_bytes",
    "dir_info",
    "file_info",
    "listing",
    "spool_checked",
    "wanted_range",
]

#: Bytes ``[start, end)`` of an object of the dataset: one request of the underlying filesystem.
Cat = Callable[[str, int, int], bytes]
_CHUNK = 8 << 20


class RangeReader(io.RawIOBase):
    """A remote object as a seekable file where every read is one exact range request.

    Handed to pyarrow to read a footer or one column chunk without read-ahead.
    """

    def __init__(self, cat: Cat, obj: str, size: int) -> None:
        super().__init__()
        self.cat, self.obj, self.size, self.pos = cat, obj, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        n = max(0, min(len(view), self.size - self.pos))
        if n:
            view[:n] = self.cat(self.obj, self.pos, self.pos + n)
            self.pos += n
        return n


def spool_checked(cat: Cat, entry: IndexEntry, offset: int, max_size: int, what: str) -> IO[bytes]:
    """``entry``'s bytes at ``offset`` of its object, in a temporary file spooled to disk past
    ``max_size`` bytes, fetched 8 MiB at a time; the caller closes it.

    Raises:
        RangeError: the bytes do not hash to the recorded sha256 (the file is closed).
    """
    # Handed to the caller, who closes it.
    spool: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=max_size)  # noqa: SIM115
    try:
        sha = hashlib.sha256()
        for start in range(0, entry.size, _CHUNK):
            piece = cat(entry.obj, offset + start, offset + min(entry.size, start + _CHUNK))
            sha.update(piece)
            spool.write(piece)
        if entry.sha256 is not None and sha.hexdigest() != entry.sha256:
            raise RangeError(
                f"{what}: the bytes at its recorded offset do not match its sha256; "
                "refusing them (the index or the shard is damaged)"
            )
    except BaseException:
        spool.close()
        raise
    return spool


def cell_bytes(cell: pa.Scalar, e: IndexEntry, where: str, fo: str) -> bytes:
    """The bytes of ``e`` in its ``cell`` (a file struct, or a list of them), checked.

    Raises:
        RangeError: the cell holds another path, or bytes of another size or sha256.
    """
    item = cell if e.index is None or e.index < 0 else cell.values[e.index]
    if item["path"].as_py() != e.path:
        raise RangeError(
            f"{where}: row {e.row} column {e.column} holds {item['path'].as_py()!r}, "
            f"the index says {e.path!r}"
        )
    value = item["bytes"]
    data: bytes = value.as_buffer().to_pybytes() if value.is_valid else b""
    if len(data) != e.size:
        raise RangeError(f"{fo}: {e.path}: {len(data)} bytes stored, {e.size} recorded")
    if e.sha256 is not None:
        check_range(data, e.sha256, f"{fo}: {e.path}")
    return data


def bids_paths(path: Any) -> Any:
    """A BIDS path (or a list of them) of ``path``: no ``bids2hf://``, no leading or trailing
    slash (fsspec's ``_strip_protocol``)."""
    if isinstance(path, list):
        return [bids_paths(p) for p in path]
    path = str(path)
    if path.startswith("bids2hf://"):
        path = path[len("bids2hf://") :]
    return path.strip("/")


def wanted_range(start: int | None, end: int | None, size: int) -> tuple[int, int]:
    """``[start, end)`` of fsspec's ``cat_file`` (None: the file's edge; negative: from its
    end) as offsets into a file of ``size`` bytes."""
    s = 0 if start is None else (start if start >= 0 else max(0, size + start))
    e = size if end is None else (end if end >= 0 else size + end)
    return s, e


def dir_info(path: str) -> dict[str, Any]:
    """fsspec's ``info`` of a folder."""
    return {"name": path, "size": 0, "type": "directory"}


def file_info(entry: IndexEntry) -> dict[str, Any]:
    """fsspec's ``info`` of a file."""
    return {"name": entry.path, "size": entry.size, "type": "file", "sha256": entry.sha256}


def listing(
    path: str, files: dict[str, IndexEntry], dirs: dict[str, list[str]]
) -> list[dict[str, Any]]:
    """fsspec's detailed ``ls`` of ``path``: the file itself, or a folder's children.

    Raises:
        FileNotFoundError: no such file or folder.
    """
    if path in files:
        return [file_info(files[path])]
    if path not in dirs:
        raise FileNotFoundError(errno.ENOENT, "no such file or folder in the dataset", path)
    out = []
    for name in dirs[path]:
        child = f"{path}/{name}" if path else name
        out.append(file_info(files[child]) if child in files else dir_info(child))
    return out
