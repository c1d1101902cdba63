"""[issue 15] The reads of a remote source's files, planned without its state: the ranges of a
file, which ranges of the next row group to fetch ahead, and whether what was read is the listed
version (by the MD5 of small files, or by the file's current details).
"""

from __future__ import annotations

import hashlib
import string
from collections.abc import Container, Iterable, Iterator
from typing import Any

from bids2hf.bids.remote_files import version_of
from bids2hf.model.rows import FileRef

__all__ = ["differs", "is_listed_version", "md5_for", "prefetch_ranges", "ranges"]

#: Files up to this size are checked against their ETag by MD5 (see md5_for).
_MD5_MAX = 16 * 1024 * 1024


def ranges(size: int, chunk: int) -> Iterator[tuple[int, int]]:
    """(start, end) of the ranges a file of ``size`` bytes is read in, ``chunk`` bytes each."""
    for start in range(0, size, chunk):
        yield start, min(size, start + chunk)


def prefetch_ranges(
    refs: Iterable[FileRef],
    ahead: Container[tuple[FileRef, int, int]],
    ahead_bytes: int,
    limit: int,
    chunk: int,
) -> list[tuple[FileRef, int, int]]:
    """The ranges of ``refs`` to fetch ahead, in order, each once and not already ``ahead``,
    stopping at the first that would take the bytes held ahead (``ahead_bytes``) over ``limit``."""
    out: list[tuple[FileRef, int, int]] = []
    chosen: set[tuple[FileRef, int, int]] = set()
    for ref in refs:
        for start, end in ranges(ref.size, chunk):
            key = (ref, start, end)
            if key in ahead or key in chosen:
                continue
            chosen.add(key)
            if ahead_bytes + end - start > limit:
                return out
            out.append(key)
            ahead_bytes += end - start
    return out


def md5_for(ref: FileRef) -> Any:
    """An MD5 to check a small file's bytes against its ETag, where the ETag is an MD5.

    An S3 object uploaded in one part (most BIDS files) has the MD5 of its bytes as its ETag:
    bytes with that MD5 are the listed version, which needs no further request. Large files
    (multipart ETags, and MD5 costs CPU) are checked with a request for the current ETag.
    """
    tag = ref.version.strip('"')
    if ref.size > _MD5_MAX or len(tag) != 32 or not all(c in string.hexdigits for c in tag):
        return None
    return hashlib.md5(usedforsecurity=False)


def is_listed_version(ref: FileRef, md5: Any) -> bool:
    """Whether the bytes hashed into ``md5`` (from :func:`md5_for`) are the listed version."""
    # A mismatch is no proof of a change (encrypted objects have other ETags): it is asked then.
    return md5 is not None and md5.hexdigest() == ref.version.strip('"').lower()


def differs(info: dict[str, Any], ref: FileRef) -> bool:
    """Whether a file's current details (fsspec ``info``) show another size or version."""
    return int(info["size"]) != ref.size or bool(ref.version and version_of(info) != ref.version)
