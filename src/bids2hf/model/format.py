"""The output's on-disk contract: well-known paths, owned prefixes, the Parquet footer index and file hashing.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

__all__ = [
    "CHECKSUMS_PATH", "DATASET_FILES_PREFIX", "FOOTER_KEY", "JOURNAL_NAME", "LEGACY_NAME",
    "LOCK_NAME", "MANIFEST_PATH", "OWNED_PREFIXES", "PREVIEW_PREFIXES", "STATE_DIR", "USER_END",
    "USER_START", "VCS_DIRS", "EmbeddedFile",
    "read_footer_index", "sha256_file",
]

MANIFEST_PATH = "bids2hf/manifest.jsonl"

#: The card's section that belongs to its readers: kept across re-runs, and edits inside it do
#: not make the card someone else's.
USER_START = "<!-- bids2hf:user-section:start -->"
USER_END = "<!-- bids2hf:user-section:end -->"
DATASET_FILES_PREFIX = "bids/"

JOURNAL_NAME = "state.jsonl"
LEGACY_NAME = "state.json"  # written by bids2hf up to 0.x: migrated on the first write

#: Folders that hold version-control bookkeeping, never data.
VCS_DIRS = frozenset({".git", ".datalad", ".svn", ".hg"})

#: Key of the shard's Parquet footer metadata that lists the files embedded in it.
FOOTER_KEY = b"bids2hf"


@dataclass(frozen=True)
class EmbeddedFile:
    """Where one source file sits inside a shard."""

    path: str
    size: int
    sha256: str
    row: int
    column: str
    index: int  # position in the cell's list; -1 for single-valued columns
    #: Byte position in the shard of the file's first byte, for files stored verbatim (an
    #: uncompressed PLAIN chunk): the file is ``[offset, offset + size)``. None otherwise.
    offset: int | None = None

    def record(self) -> dict[str, Any]:
        """The footer index entry: the fields in order, ``offset`` only when there is one.

        Leaving out a None offset keeps footers written without offsets byte-identical.
        """
        d = dict(self.__dict__)
        if d["offset"] is None:
            del d["offset"]
        return d

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> EmbeddedFile:
        """An entry of a footer index; keys a newer bids2hf may add are ignored.

        Raises:
            TypeError: a required field is missing (or ``record`` is no mapping).
        """
        return cls(**{k: v for k, v in record.items() if k in _EMBEDDED_FIELDS})


_EMBEDDED_FIELDS = frozenset(f.name for f in fields(EmbeddedFile))


def sha256_file(
    path: Path, chunk: int = 8 << 20, on_bytes: Callable[[int], object] | None = None
) -> str:
    """sha256 of a file, read in chunks into one reused buffer; ``on_bytes`` reports progress."""
    sha = hashlib.sha256()
    buf = bytearray(chunk)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            sha.update(view[:n])
            if on_bytes is not None:
                on_bytes(n)
    return sha.hexdigest()


def read_footer_index(metadata: pq.FileMetaData) -> list[EmbeddedFile]:
    """The embedded-file index a shard carries in its footer (empty for foreign files).

    Raises:
        ValueError: the index is no valid JSON.
        TypeError: an entry is no object or lacks a required field.
    """
    kv = metadata.metadata or {}
    raw = kv.get(FOOTER_KEY)
    if raw is None:
        return []
    entries = json.loads(raw)
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise TypeError("the index is no list of objects")
    return [EmbeddedFile.from_record(e) for e in entries]

STATE_DIR = ".bids2hf"
LOCK_NAME = "lock"

#: Remote folders bids2hf writes. A file there that the new output lacks is deleted only if a
#: bids2hf run recorded writing it (see :func:`recorded_paths`); others are kept.
#: [issue 13] The folders of the ``previews`` config and the card's pictures (plan/previews.py):
#: bids2hf's too, and never part of the BIDS data (export leaves them out).
PREVIEW_PREFIXES = ("images/", "previews/")
OWNED_PREFIXES = ("data/", DATASET_FILES_PREFIX, "bids2hf/", *PREVIEW_PREFIXES)


# -- fsspec file systems (s3://, gs://, file://, ...) -----------------------------------------
CHECKSUMS_PATH = "bids2hf/checksums.json"
