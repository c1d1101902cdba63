"""The staging folder of a remote destination: where it is, and emptying it after a run."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from pathlib import Path

from bids2hf.model.format import BESIDE_PREFIX, OWNED_PREFIXES
from bids2hf.write.output_folder import OutputFolder

__all__ = ["default_staging", "empty_staging"]


def default_staging(url: str) -> Path:
    """Per-destination staging folder that survives interruptions (it holds the resume state).

    Its name is the URL made safe for a file name, plus a digest of the URL itself: making it
    safe maps several URLs to one name (``org/a_b`` and ``org_a/b``), the digest does not.
    """
    base = Path(os.environ.get("BIDS2HF_CACHE", Path.home() / ".cache" / "bids2hf"))
    canonical = url.rstrip("/")
    slug = re.sub(r"[^0-9A-Za-z_.@-]+", "_", canonical).strip("_")[:80]
    digest = hashlib.sha256(canonical.encode()).hexdigest()[:16]
    return base / "staging" / f"{slug}-{digest}"


def empty_staging(out: OutputFolder) -> None:
    """Remove what a finished run staged, keeping only the resume state.

    Only files bids2hf recorded writing are removed; a folder that still holds someone else's
    files stays.
    """
    out.remove_owned([p for p in out.owned if p.startswith(OWNED_PREFIXES)] + ["README.md"])
    beside_dir = out.root / BESIDE_PREFIX.rstrip("/")
    # [issue 11] the uploader deleted the copies, not their folders: the empty ones go
    for folder in sorted(beside_dir.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):  # a file, or a folder holding someone's files
            folder.rmdir()
    for name in ("data", "bids", "bids2hf", "images", "previews", BESIDE_PREFIX.rstrip("/")):
        with contextlib.suppress(OSError):  # not empty: holds files bids2hf did not write
            (out.root / name).rmdir()
