"""Scan options (light: the command line imports them without nibabel or the BIDS schema)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

__all__ = ["CheckLevel", "OnInvalid", "ScanOptions"]

CheckLevel = Literal["none", "header", "full"]

OnInvalid = Literal["error", "skip", "keep"]


@dataclass
class ScanOptions:
    """What to include and how strictly to check.

    Attributes:
        derivatives: derivative pipelines (folder names under ``derivatives/``) whose files join
            the rows; ``("all",)`` selects every pipeline.
        include_sourcedata: store ``sourcedata/`` as dataset-level files instead of leaving it out.
        exclude: glob patterns (on paths relative to the BIDS root) of files to leave out.
        on_invalid: what to do with files whose names are not valid BIDS.
        check: how thoroughly to check NIfTI files.
    """

    derivatives: Sequence[str] = ()
    include_sourcedata: bool = False
    exclude: Sequence[str] = ()
    on_invalid: OnInvalid = "error"
    check: CheckLevel = "header"
