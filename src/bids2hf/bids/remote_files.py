"""[issue 15] The pieces of an fsspec source that hold no state: the file system's options,
what a listing says (size, modification time, version; the walk it gives), the AWS credentials
question and the hint for a refused access, and range-read files for the NIfTI header check
(:class:`RemoteNifti` over :class:`RangeFile`). The reads of the files themselves are planned in
:mod:`bids2hf.bids.remote_reads`.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, BinaryIO

from bids2hf.errors import InputError
from bids2hf.model.format import VCS_DIRS
from bids2hf.model.source import CHUNK, Walked

if TYPE_CHECKING:
    from bids2hf.bids.source_fsspec import FsspecSource

__all__ = [
    "Listed",
    "RangeFile",
    "RemoteNifti",
    "access_hint",
    "as_os_error",
    "aws_credentials_configured",
    "listing_from_find",
    "mtime_ns",
    "storage_options_for",
    "version_of",
    "walked_from_listing",
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


def storage_options_for(
    url: str, storage_options: dict[str, Any] | None, anon: bool | None, connections: int
) -> dict[str, Any]:
    """The fsspec options a source opens ``url`` with: no listing or instance cache, and for S3
    anonymous access when asked or when no credentials are configured, and ``connections``
    connections in the pool; ``storage_options`` override them.

    Raises:
        InputError: the AWS configuration is broken (S3 only, when ``anon`` is not given).
    """
    protocol = url.split("://", 1)[0]
    options: dict[str, Any] = {
        # Each call must see the remote as it is now: a cached listing would hide a change.
        "use_listings_cache": False,
        "skip_instance_cache": True,
    }
    if protocol in ("s3", "s3a"):
        import fsspec.config

        configured = fsspec.config.conf.get(protocol, {})
        if "anon" not in configured and "anon" not in (storage_options or {}):
            options["anon"] = anon if anon is not None else not aws_credentials_configured()
        # Enough connections for the requests this source keeps in flight.
        options["config_kwargs"] = {"max_pool_connections": connections}
    options.update(storage_options or {})
    return options


def access_hint(anonymous: bool, anon_asked: bool) -> str:
    """What to try when a remote source refuses access, given how it was read."""
    if anonymous and anon_asked:
        return "read anonymously (--source-anon): drop it if the bucket is not public"
    if anonymous:
        return (
            "read anonymously (no AWS credentials configured): configure credentials "
            "(AWS_PROFILE, AWS_ACCESS_KEY_ID, ...) if the bucket is not public"
        )
    return "check the credentials and the URL, or pass --source-anon for a public bucket"


@dataclass(frozen=True)
class Listed:
    """A file as the listing shows it."""

    size: int
    mtime_ns: int
    version: str


def listing_from_find(found: dict[str, Any], root: str) -> dict[str, Listed]:
    """The files of a recursive ``find(root, detail=True)`` by path relative to ``root``."""
    prefix = root + "/"
    listing: dict[str, Listed] = {}
    for name, info in found.items():
        name = str(name)
        # Folder placeholders ("folder/" keys written by consoles) hold nothing.
        if not name.startswith(prefix) or name.endswith("/"):
            continue
        if info.get("type", "file") != "file":
            continue
        listing[name[len(prefix) :]] = Listed(int(info["size"]), mtime_ns(info), version_of(info))
    return listing


def walked_from_listing(listing: dict[str, Listed]) -> list[Walked]:
    """A listing as a walk sees it, sorted by path: version-control folders not entered."""
    out: list[Walked] = []
    vcs: set[str] = set()
    for rel, info in listing.items():
        parts = rel.split("/")
        # Version-control folders are not read, as in a local walk: one entry per folder.
        at = next((i for i, p in enumerate(parts[:-1]) if p in VCS_DIRS), None)
        if at is not None:
            folder = "/".join(parts[: at + 1]) + "/"
            if folder not in vcs:
                vcs.add(folder)
                out.append(Walked(folder, vcs_dir=True))
            continue
        out.append(Walked(rel, info.size, info.mtime_ns, version=info.version))
    out.sort(key=lambda w: w.relpath)
    return out


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
