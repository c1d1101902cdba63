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
