"""An open file of a ``bids2hf://`` filesystem (:mod:`bids2hf.readback.bids_fs`), and the
read-only half of that filesystem's fsspec interface: every write is refused with ``EROFS``.
"""

from __future__ import annotations

import errno
from typing import IO, TYPE_CHECKING, Any

import fsspec
from fsspec.spec import AbstractBufferedFile

from bids2hf.readback.bids_fs_index import IndexEntry

if TYPE_CHECKING:
    from bids2hf.readback.bids_fs import BidsHfFileSystem

__all__ = ["READ_ONLY", "BidsHfFile", "ReadOnlyFileSystem"]

#: The message of every refused write.
READ_ONLY = "bids2hf:// is read-only"


class ReadOnlyFileSystem(fsspec.AbstractFileSystem):
    """An fsspec filesystem that refuses every write and keeps no timestamps."""

    def created(self, path: str) -> Any:
        """Not kept: the dataset records no timestamps."""
        raise NotImplementedError("bids2hf:// keeps no timestamps")

    def modified(self, path: str) -> Any:
        """Not kept: the dataset records no timestamps."""
        raise NotImplementedError("bids2hf:// keeps no timestamps")

    def mkdir(self, path: str, create_parents: bool = True, **kwargs: Any) -> None:
        """Refused: the filesystem is read-only.

        Raises:
            OSError: always (EROFS).
        """
        raise OSError(errno.EROFS, READ_ONLY, path)

    def makedirs(self, path: str, exist_ok: bool = False) -> None:
        """Refused: the filesystem is read-only.

        Raises:
            OSError: always (EROFS).
        """
        raise OSError(errno.EROFS, READ_ONLY, path)

    def rm(self, path: Any, recursive: bool = False, maxdepth: int | None = None) -> None:
        """Refused: the filesystem is read-only.

        Raises:
            OSError: always (EROFS).
        """
        raise OSError(errno.EROFS, READ_ONLY, str(path))

    def pipe_file(self, path: str, value: bytes, mode: str = "overwrite", **kwargs: Any) -> None:
        """Refused: the filesystem is read-only.

        Raises:
            OSError: always (EROFS).
        """
        raise OSError(errno.EROFS, READ_ONLY, path)

    def cp_file(self, path1: str, path2: str, **kwargs: Any) -> None:
        """Refused: the filesystem is read-only.

        Raises:
            OSError: always (EROFS).
        """
        raise OSError(errno.EROFS, READ_ONLY, path2)


class BidsHfFile(AbstractBufferedFile):
    """An open BIDS file: buffered reads mapped to range reads of its shard or ``bids/`` copy.

    With verification pending, the first read fetches and checks the whole file and serves
    every read of this handle from that copy.
    """

    def __init__(
        self,
        fs: BidsHfFileSystem,
        entry: IndexEntry,
        block_size: int,
        cache_type: str = "readahead",
        cache_options: dict[str, Any] | None = None,
    ) -> None:
        self.entry = entry
        self._copy: bytes | IO[bytes] | None = None
        super().__init__(
            fs,
            entry.path,
            mode="rb",
            block_size=block_size,
            cache_type=cache_type,
            cache_options=cache_options,
            size=entry.size,
        )

    def _fetch_range(self, start: int, end: int) -> bytes:
        fs: BidsHfFileSystem = self.fs
        end = min(end, self.entry.size)
        if end <= start:
            return b""
        if (
            self._copy is None
            and not fs._trusted(self.entry)
            and fs._recall(self.entry.path) is None
        ):
            self._copy = fs._whole(self.entry)
        if self._copy is None:
            return fs._read(self.entry, start, end)
        if isinstance(self._copy, bytes):
            return self._copy[start:end]
        self._copy.seek(start)
        return self._copy.read(end - start)

    def close(self) -> None:
        if self._copy is not None and not isinstance(self._copy, bytes):
            self._copy.close()
        self._copy = None
        super().close()
