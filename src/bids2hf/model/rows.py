"""The row model shared by the planner and the shard writer: columns, file references, rows.

Kept apart from :mod:`bids2hf.plan` so that shard-writing worker processes import only pyarrow
and numpy, not ``datasets`` (which costs about 70 MB of memory per process).
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ColumnSpec", "FileRef", "Role", "RowPlan", "ShardPlan"]


class Role(str, enum.Enum):
    """How the writer fills a column."""

    VALUE = "value"  # values fixed at plan time
    FILE = "file"  # embedded file bytes, read while writing
    SHA256 = "sha256"  # sha256 of files, computed while writing


@dataclass(frozen=True)
class FileRef:
    """A source file as the plan saw it (size and mtime detect changes during the run)."""

    relpath: str
    size: int
    mtime_ns: int
    # [issue 15] Remote sources: the version the listing gave (ETag). Empty for local files,
    # whose mtime is their version; ids hash it only when set, so local ids do not change.
    version: str = ""


@dataclass(frozen=True)
class ColumnSpec:
    """One output column."""

    name: str
    role: Role
    feature: Any  # a `datasets` feature type
    single: bool = False  # one value per row instead of a list
    nifti: bool = False  # FILE columns: Nifti struct (bytes, path) vs generic (path, bytes)
    description: str = ""


@dataclass
class RowPlan:
    """One row: plain values, and the files its FILE and SHA256 columns hold."""

    key: str
    values: dict[str, Any]
    files: dict[str, list[FileRef]] = field(default_factory=dict)
    #: Files of this row stored beside the shards (too large for their cell): relpath → the
    #: URL the cell's ``path`` holds. Set by the planner; their bytes are not in the shard.
    beside: dict[str, str] = field(default_factory=dict)
    #: Why each file is beside (relpath → reason), for ``inspect`` and the summary.
    beside_reasons: dict[str, str] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        embedded = {
            f.relpath: f.size
            for refs in self.files.values()
            for f in refs
            if f.relpath not in self.beside
        }
        # Rows without files still cost something; count their metadata so planning stays sane.
        return sum(embedded.values()) + 256 + len(json.dumps(self.values, default=str))


@dataclass
class ShardPlan:
    """One Parquet file of the output."""

    path: str  # relative to the output root, e.g. "data/train-sub-01_ses-1.parquet"
    rows: list[RowPlan]
    row_groups: list[int]  # rows per row group, in order
    content_id: str  # changes whenever any input of this shard changes
    nbytes: int  # embedded bytes (source file sizes)
    #: sha256 of the files of these rows stored beside (relpath → sha256). Not planned: filled
    #: by the run once it has copied them, before the shard is written (its cells list them).
    beside_sha256: dict[str, str] = field(default_factory=dict)

    @property
    def beside(self) -> dict[str, FileRef]:
        """The files of this shard's rows stored beside the shards, by relpath."""
        return {
            ref.relpath: ref
            for row in self.rows
            for refs in row.files.values()
            for ref in refs
            if ref.relpath in row.beside
        }
