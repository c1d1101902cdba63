"""What a BIDS folder holds: the data model produced by :mod:`bids2hf.scan`.

Plain dataclasses with no I/O, so that planning can be tested on inventories built in memory.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bids2hf.model.image_header import HeaderFacts

if TYPE_CHECKING:
    from bids2hf.model.source import Source

__all__ = [
    "NIFTI_EXTENSIONS", "Inventory", "ParsedName", "Placement", "Problem", "Severity",
    "SourceFile", "Table",
]


class Placement(str, enum.Enum):
    """Where a source file goes in the output."""

    ROW = "row"  # embedded in a row of a Parquet shard
    BESIDE = "beside"  # a row's file stored beside the shards, at ``files/<path>`` (too large)
    DATASET_FILE = "dataset_file"  # copied verbatim under ``bids/`` in the output
    LEFT_OUT = "left_out"  # not in the output; ``reason`` says why


class Severity(str, enum.Enum):
    ERROR = "error"
    WARNING = "warning"


@dataclass(frozen=True)
class Problem:
    """Something wrong with the input, with the file it concerns and what to do about it."""

    severity: Severity
    code: str
    path: str
    message: str
    hint: str = ""

    def one_line(self) -> str:
        from bids2hf.errors import one_line

        where = f"{self.path}: " if self.path else ""
        hint = f" ({self.hint})" if self.hint else ""
        return one_line(f"{where}{self.message}{hint}")


@dataclass
class SourceFile:
    """One file of the BIDS folder."""

    relpath: str  # POSIX path relative to the BIDS root
    size: int
    mtime_ns: int
    placement: Placement
    reason: str = ""
    parsed: ParsedName | None = None
    subject: str | None = None  # row-unit folder: ``sub-01`` (or ``tpl-X`` in template datasets)
    session: str | None = None  # session folder, ``ses-1``
    derivative: str | None = None  # pipeline folder name for files under derivatives/NAME/
    nifti_version: int | None = None  # 1 or 2 once the header was read
    is_symlink: bool = False
    version: str = ""  # [issue 15] remote sources: the listing's version (ETag); "" locally
    header: HeaderFacts | None = None  # NIfTI files: what the scan's header check read

    @property
    def is_nifti(self) -> bool:
        return self.relpath.endswith((".nii.gz", ".nii"))

    @property
    def row_key(self) -> tuple[str, str] | None:
        """(subject, session) of the row this file belongs to; session is "" when absent."""
        if self.placement is not Placement.ROW or self.subject is None:
            return None
        return (self.subject, self.session or "")


@dataclass
class Table:
    """A typed TSV table (participants.tsv, sessions.tsv) keyed by its id column."""

    columns: list[str]
    types: dict[str, str]  # column → "string" | "int64" | "float64"
    rows: dict[str, dict[str, Any]]  # id → {column: typed value or None}
    descriptions: dict[str, str] = field(default_factory=dict)


@dataclass
class Inventory:
    """Everything :mod:`bids2hf.scan` learned about a BIDS folder."""

    root: Path | str  # the local folder (resolved), or the URL of a remote source [issue 15]
    files: list[SourceFile]
    description: dict[str, Any]
    participants: Table | None = None
    sessions: dict[str, Table] = field(default_factory=dict)  # "sub-01" → its sessions.tsv
    sidecars: dict[str, dict[str, Any]] = field(default_factory=dict)  # relpath → parsed JSON
    texts: dict[str, str] = field(default_factory=dict)  # relpath → text of .bval/.bvec files
    problems: list[Problem] = field(default_factory=list)
    source: Source | None = None  # [issue 15] where files are read from (None: the local root)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity is Severity.ERROR]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity is Severity.WARNING]

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

#: Extensions this package embeds as NIfTI images.
NIFTI_EXTENSIONS = (".nii.gz", ".nii")


@dataclass(frozen=True)
class ParsedName:
    """Entities and naming parts of one BIDS path (long entity names, as in the schema)."""

    entities: dict[str, str] = field(default_factory=dict)
    datatype: str | None = None
    suffix: str | None = None
    extension: str = ""
