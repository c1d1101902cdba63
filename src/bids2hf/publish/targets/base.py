"""Where a dataset is published: the Hugging Face Hub, or any fsspec file system.

Both targets offer the same small interface used by :mod:`bids2hf.publish`: list what the remote
holds, stage one file (upload it without making it visible where that is possible), and commit a
batch atomically. Writes are idempotent, so a re-run after any interruption is safe.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from bids2hf.model.format import sha256_file

__all__ = ["RemoteFile", "StagedFile", "Target", "git_blob_oid"]


@dataclass(frozen=True)
class RemoteFile:
    """A file the destination holds."""

    path: str
    size: int
    sha256: str | None = None  # known for LFS files on the Hub and from our checksum record
    git_oid: str | None = None  # git blob sha1 (Hub regular files)


@dataclass
class StagedFile:
    """A local file handed to a target, with what we know of its content."""

    path: str  # path in the destination
    local: Path
    size: int
    sha256: str | None  # None until computed (the publisher hashes shards off the write path)
    handle: Any = None  # target-specific (a CommitOperationAdd for the Hub)
    uploaded: bool = False  # bytes are on the remote; the local copy may be deleted

    def checksum(self) -> str:
        """The sha256, computed from the local file the first time it is needed."""
        if self.sha256 is None:
            self.sha256 = sha256_file(self.local)
        return self.sha256


class Target(Protocol):
    url: str

    @property
    def repo_id(self) -> str | None:
        """A Hub repository's ``ORG/NAME``; None elsewhere."""

    def ensure(self) -> None: ...
    def files(self) -> dict[str, RemoteFile]: ...
    def stage(self, item: StagedFile) -> None: ...
    # [issue 14] a file a Dask worker already staged (uploaded): record what the commit needs.
    def adopt(self, item: StagedFile) -> None: ...
    def commit(
        self, items: Sequence[StagedFile], deletions: Sequence[str], message: str
    ) -> bool: ...


def git_blob_oid(path: Path) -> str:
    """The git blob sha1 of a file, as the Hub reports it for non-LFS files."""
    sha = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            sha.update(chunk)
    return sha.hexdigest()
