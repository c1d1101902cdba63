"""Plan options (light: the command line imports them without datasets)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from bids2hf.plan.config import Config

__all__ = ["Layout", "PlanOptions"]

Layout = Literal["session", "scan"]


@dataclass
class PlanOptions:
    """Choices that shape the output."""

    layout: Layout = "session"
    max_shard_bytes: int = 500_000_000
    row_group_bytes: int = 128 * 1024 * 1024
    split: str = "train"
    config: Config = field(default_factory=Config)
    #: Most NIfTI bytes one row embeds; files beyond it are stored beside the shards (see
    #: :mod:`bids2hf.plan.beside`). It bounds a worker's memory whatever the session size: the
    #: default, one row group's worth, keeps a worker within 300 MB + row group + largest file
    #: (benchmarks/results/MEMORY.md). At most 2 GiB - 1 MiB (one row's list in one column
    #: must stay under 2 GiB).
    max_row_bytes: int = 128 * 2**20
    #: Base of the URLs the cells of files stored beside hold (see
    #: :func:`bids2hf.plan.beside.files_url_of`); set by the run from its destination. Empty:
    #: paths relative to the dataset root (``files/...``), as ``inspect`` shows them.
    files_url: str = ""
