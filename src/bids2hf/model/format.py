"""The output's on-disk contract: well-known paths, owned prefixes, the Parquet footer index and file hashing.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, BinaryIO

import pyarrow.parquet as pq

__all__ = [
    "BESIDE_PREFIX", "CHECKSUMS_PATH", "DATASET_FILES_PREFIX", "FOOTER_KEY", "JOURNAL_NAME",
    "LEGACY_NAME", "LOCK_NAME", "MANIFEST_PATH", "OWNED_PREFIXES", "PREVIEW_PREFIXES",
    "REPO_PLACEHOLDER", "STATE_DIR", "USER_END", "USER_PLACEHOLDER", "USER_START", "VCS_DIRS",
    "EmbeddedFile", "UserSectionError", "read_footer_index", "sha256_file", "user_section_span",
    "write_chunk",
]

MANIFEST_PATH = "bids2hf/manifest.jsonl"

#: The card's section that belongs to its readers: kept across re-runs, and edits inside it do
#: not make the card someone else's.
USER_START = "<!-- bids2hf:user-section:start -->"
USER_END = "<!-- bids2hf:user-section:end -->"
#: The repository a card's code samples name until it is known: a conversion to a local folder
#: writes it; ``push`` to a Hub repository puts the repository's name in its place.
REPO_PLACEHOLDER = "ORG/NAME"
#: What the user section holds until someone writes in it.
USER_PLACEHOLDER = (
    "\n<!-- Write your own text here (usage notes, known issues, ...): bids2hf keeps everything "
    "between these two markers when it rewrites this card. -->\n"
)


class UserSectionError(ValueError):
    """A card's user-section markers are unusable (the message says how to fix)."""


def user_section_span(text: str, where: str) -> tuple[int, int] | None:
    """Where the user section's content starts and ends in the card ``text``; None if it has
    none. The one reading of the markers: the card's rewrite, ``push``'s and the record of a
    published card (:func:`~bids2hf.publish.compare.card_frame`) share it.

    Raises:
        UserSectionError: a marker is missing, repeated, or the end comes before the start
            (the section's limits are then unknown: rewriting the card could lose text); the
            message begins with ``where``.
    """
    starts, ends = text.count(USER_START), text.count(USER_END)
    if starts == 0 and ends == 0:
        return None
    if starts != 1 or ends != 1 or text.index(USER_END) < text.index(USER_START):
        raise UserSectionError(
            f"{where}: the user section needs exactly one {USER_START} followed by one "
            f"{USER_END} (found {starts} and {ends}); fix the markers so bids2hf keeps your text"
        )
    return text.index(USER_START) + len(USER_START), text.index(USER_END)


DATASET_FILES_PREFIX = "bids/"
#: Files too large for a Parquet value (or for their cell's list) are stored verbatim at
#: ``files/<BIDS path>`` beside the shards; their cell holds ``{"bytes": None, "path": URL}``.
BESIDE_PREFIX = "files/"

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
    #: For a file stored beside the shards: its path in the output (``files/<path>``). The
    #: cell then holds no bytes, only a URL: bids2hf's readers use this path instead.
    location: str | None = None

    @property
    def key(self) -> tuple[str, int, int]:
        """Where the file sits in its shard: ``(column, row, index)``."""
        return (self.column, self.row, self.index)

    def record(self) -> dict[str, Any]:
        """The footer index entry: the fields in order, ``offset``/``location`` only when set.

        Leaving out None keeps footers written without them byte-identical.
        """
        d = dict(self.__dict__)
        for key in ("offset", "location"):
            if d[key] is None:
                del d[key]
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


#: A block of zeros that :func:`write_chunk` leaves as a hole (the copy's 8 MiB chunks).
_HOLE = 8 << 20
_zeros: bytes | None = None


def write_chunk(f: BinaryIO, chunk: bytes | memoryview) -> int:
    """Write ``chunk`` to ``f``; return its length. A whole 8 MiB chunk of zeros becomes a hole
    (a seek): a sparse source (a multi-GB file with unwritten regions) stays sparse when copied,
    costing no disk. The caller must ``f.truncate()`` after the last chunk (a trailing hole)."""
    global _zeros
    n = len(chunk)
    if n == _HOLE and isinstance(chunk, bytes):
        if _zeros is None:
            _zeros = bytes(_HOLE)  # calloc'd: untouched pages cost no memory
        if chunk == _zeros:  # memcmp: stops at the first byte that is not zero
            f.seek(n, os.SEEK_CUR)
            return n
    f.write(chunk)
    return n


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
OWNED_PREFIXES = ("data/", DATASET_FILES_PREFIX, "bids2hf/", BESIDE_PREFIX, *PREVIEW_PREFIXES)


# -- fsspec file systems (s3://, gs://, file://, ...) -----------------------------------------
CHECKSUMS_PATH = "bids2hf/checksums.json"
