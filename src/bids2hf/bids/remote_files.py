"""[issue 15] The pieces of an fsspec source that hold no state: what a listing entry says
(modification time, version), the AWS credentials question, and range-read files for the NIfTI
header check (:class:`RemoteNifti` over :class:`RangeFile`).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any, BinaryIO

from bids2hf.errors import InputError
from bids2hf.model.source import CHUNK

if TYPE_CHECKING:
    from bids2hf.bids.source_fsspec import FsspecSource

__all__ = [
    "RangeFile",
    "RemoteNifti",
    "as_os_error",
    "aws_credentials_configured",
    "mtime_ns",
    "version_of",
]

#: Bytes fetched at least per range request of a NIfTI check (header and extensions).
_HEADER_BLOCK = 64 * 1024
#: Keys of an fsspec ``info`` dict that identify a version of a file, most specific first.
_VERSION_KEYS = ("ETag", "etag", "generation", "md5Hash", "content_md5", "checksum")
#: Keys holding the modification time (a datetime, an ISO string or seconds).
_TIME_KEYS = ("LastModified", "last_modified", "mtime", "updated", "modified", "created")


def mtime_ns(info: dict[str, Any]) -> int:
    for key in _TIME_KEYS:
        value = info.get(key)
        if isinstance(value, str):
            try:
                value = datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                continue
        if isinstance(value, datetime):
            # Integer arithmetic: float seconds would round differently from one call to the next.
            return (int(value.timestamp()) * 1_000_000 + value.microsecond) * 1000
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return int(value * 1_000_000_000)
    return 0


def version_of(info: dict[str, Any]) -> str:
    for key in _VERSION_KEYS:
        value = info.get(key)
        if value not in (None, ""):
            return str(value)
    return f"mtime:{mtime_ns(info)}"


def aws_credentials_configured() -> bool:
    """Whether the standard AWS configuration (env, profile, files, ...) yields credentials.

    Raises:
        InputError: the configuration is broken (e.g. ``AWS_PROFILE`` names no profile).
    """
    try:
        import botocore.session
    except ImportError:  # s3fs brings botocore; without it s3:// fails later with the hint
        return False
    try:
        return botocore.session.Session().get_credentials() is not None
    except Exception as exc:  # botocore's ProfileNotFound, a bad config file, ...
        raise InputError(f"AWS configuration: {exc}; fix it, or pass --source-anon") from None


def as_os_error(exc: Exception) -> OSError:
    """fsspec implementations raise OSError subclasses mostly, botocore its own exceptions."""
    return exc if isinstance(exc, OSError) else OSError(f"{type(exc).__name__}: {exc}")


class RangeFile(io.RawIOBase):
    """A seekable read-only file over range reads, fetching at least ``block`` bytes at a time."""

    def __init__(self, fetch: Callable[[int, int], bytes], size: int, block: int) -> None:
        super().__init__()
        self._fetch = fetch
        self._size = size
        self._block = block
        self._pos = 0
        self._start = 0
        self._data = b""

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        if base + offset < 0:
            raise OSError("negative seek position")
        self._pos = base + offset
        return self._pos

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        n = min(len(view), self._size - self._pos)
        if n <= 0:
            return 0
        end = self._start + len(self._data)
        if not (self._start <= self._pos and self._pos + n <= end):
            self._start = self._pos
            self._data = self._fetch(self._pos, min(self._size, self._pos + max(n, self._block)))
            if not self._data:
                raise OSError(f"no bytes at {self._pos} of {self._size} (the file shrank?)")
            n = min(n, len(self._data))
        at = self._pos - self._start
        view[:n] = self._data[at : at + n]
        self._pos += n
        return n


class RemoteNifti:
    """A remote file for the NIfTI check: range reads of the header and of the gzip trailer."""

    def __init__(self, source: FsspecSource, relpath: str, size: int) -> None:
        self.name = relpath
        self._source = source
        self._key = source.key(relpath)
        self._size = size

    def size(self) -> int:
        return self._size

    def open(self, whole: bool = False) -> BinaryIO:
        return RangeFile(  # type: ignore[return-value]
            self._fetch, self._size, CHUNK if whole else _HEADER_BLOCK
        )

    def _fetch(self, start: int, end: int) -> bytes:
        try:
            return bytes(self._source.fs.cat_file(self._key, start=start, end=end))
        except Exception as exc:
            raise as_os_error(exc) from None
