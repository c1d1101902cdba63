"""The text files of a synthetic dataset: JSON sidecars, TSV tables, bval/bvec."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

import numpy as np

_BIDS_VERSION = "1.9.0"
_TOP_REST_TR = 2.0
_OVERRIDE_REST_TR = 2.5


def _file_rng(seed: int, rel: str, salt: str = "") -> np.random.Generator:
    """Random generator seeded from the seed, a relative path and a salt."""
    digest = hashlib.sha256(f"{seed}\x00{salt}\x00{rel}".encode()).digest()
    return np.random.default_rng(np.random.SeedSequence(int.from_bytes(digest, "little")))


def _json_bytes(obj: object) -> bytes:
    return (json.dumps(obj, indent=2) + "\n").encode()


def _tsv_bytes(
    header: Sequence[str], rows: Sequence[Sequence[object]], newline: bool = True
) -> bytes:
    lines = ["\t".join(header)] + ["\t".join(str(v) for v in row) for row in rows]
    return ("\n".join(lines) + ("\n" if newline else "")).encode()
