"""The shard writer's side of files stored beside the shards [issue 11]: their cells.

A file the plan put beside (:mod:`bids2hf.plan.beside`) has no bytes in its shard: its cell is
``{"bytes": None, "path": URL}``, its sha256 comes from the copy the run made before the shard
(:mod:`bids2hf.write.beside`), and its footer index entry names its location in the output.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from bids2hf.model.format import BESIDE_PREFIX
from bids2hf.model.rows import FileRef, RowPlan, ShardPlan

__all__ = ["beside_hashes", "beside_location", "beside_validity", "cell_path", "embedded_size"]


def beside_hashes(shard: ShardPlan) -> dict[str, str]:
    """The sha256 of the shard's files stored beside, as the run recorded them.

    Raises:
        RuntimeError: one is missing (the run must copy them before writing the shard).
    """
    missing = sorted(set(shard.beside) - set(shard.beside_sha256))
    if missing:
        raise RuntimeError(f"{shard.path}: {missing[0]} is stored beside but was not copied")
    return dict(shard.beside_sha256)


def beside_location(row: RowPlan, ref: FileRef) -> str | None:
    """``files/<relpath>`` for a file of ``row`` stored beside, else None."""
    return BESIDE_PREFIX + ref.relpath if ref.relpath in row.beside else None


def embedded_size(rows: Sequence[RowPlan], column: str) -> int:
    """Bytes of the files of ``column`` that these rows embed (not those stored beside)."""
    return sum(
        r.size for row in rows for r in row.files.get(column, []) if r.relpath not in row.beside
    )


def cell_path(ref: FileRef | None, beside: dict[str, str]) -> str | None:
    """The ``path`` field of a cell: the BIDS path, or for a file stored beside its URL."""
    if ref is None:
        return None
    return beside.get(ref.relpath, ref.relpath)


def beside_validity(slots: Sequence[FileRef | None], beside: dict[str, str]) -> pa.Buffer | None:
    """Validity bitmap of a ``bytes`` child: null for files stored beside; None if there are none
    (so that shards without them are written exactly as before)."""
    if not beside:
        return None
    valid = np.array([r is None or r.relpath not in beside for r in slots], dtype=bool)
    if valid.all():
        return None
    return pa.py_buffer(np.packbits(valid, bitorder="little"))
