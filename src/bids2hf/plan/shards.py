"""Cut rows into shards and row groups, deterministically and with stable boundaries.

Shard boundaries are content-defined: whether a shard may start at a row depends only on that
row's key and size, so adding, removing or changing one subject moves at most the boundaries next
to it and leaves every other shard byte-identical (only changed shards are rewritten and uploaded).
Shard names come from their first row's key, never from a shard count.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bids2hf.model.rows import RowPlan
from bids2hf.model.rows import ShardPlan

__all__ = ["plan_shards", "row_groups"]


def _cut_point(key: str, size: int, gap: int) -> bool:
    """Whether a shard may start at this row: true with probability size/gap, fixed by the key."""
    h = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big")
    return h < min(1.0, size / gap) * 2**64


def _slug(key: str) -> str:
    slug = re.sub(r"[^0-9A-Za-z_.-]+", "_", key).strip("_.") or "rows"
    if len(slug) > 80:
        slug = slug[:64] + "-" + hashlib.sha256(key.encode()).hexdigest()[:12]
    return slug


def row_groups(sizes: Sequence[int], row_group_bytes: int) -> list[int]:
    """Greedy row groups of at most ``row_group_bytes``; a larger row gets one of its own."""
    groups: list[int] = []
    count = total = 0
    for size in sizes:
        if count and total + size > row_group_bytes:
            groups.append(count)
            count = total = 0
        count += 1
        total += size
    if count:
        groups.append(count)
    return groups


def _content_id(schema_id: str, rows: Sequence[RowPlan], groups: Sequence[int]) -> str:
    h = hashlib.sha256(schema_id.encode())
    h.update(json.dumps(list(groups)).encode())
    for row in rows:
        h.update(row.key.encode() + b"\0")
        h.update(json.dumps(row.values, sort_keys=True, default=str).encode())
        for col in sorted(row.files):
            for ref in row.files[col]:
                # [issue 15] the version only when set (remote): local ids stay as they were.
                version = f"\0{ref.version}" if ref.version else ""
                h.update(f"{col}\0{ref.relpath}\0{ref.size}\0{ref.mtime_ns}{version}\n".encode())
        if row.beside:  # the cells' URLs are in the shard (only then: other ids stay as they were)
            h.update(json.dumps(row.beside, sort_keys=True).encode())
    return h.hexdigest()


def plan_shards(
    rows: Sequence[RowPlan],
    *,
    schema_id: str,
    max_shard_bytes: int,
    row_group_bytes: int,
    split: str = "train",
) -> list[ShardPlan]:
    """Group rows (already in output order) into shards.

    A shard ends before a row when adding it would exceed ``max_shard_bytes``, or when the shard
    holds at least a quarter of it and the row is a content-defined cut point. Expected shard
    size is about three quarters of the maximum.
    """
    minimum = max_shard_bytes // 4
    gap = max(1, max_shard_bytes // 2)
    groups: list[list[RowPlan]] = []
    current: list[RowPlan] = []
    total = 0
    for row in rows:
        size = row.nbytes
        if current and (
            total + size > max_shard_bytes or (total >= minimum and _cut_point(row.key, size, gap))
        ):
            groups.append(current)
            current, total = [], 0
        current.append(row)
        total += size
    if current:
        groups.append(current)
    shards = []
    for members in groups:
        sizes = [r.nbytes for r in members]
        rg = row_groups(sizes, row_group_bytes)
        shards.append(
            ShardPlan(
                path=f"data/{split}-{_slug(members[0].key)}.parquet",
                rows=members,
                row_groups=rg,
                content_id=_content_id(schema_id, members, rg),
                nbytes=sum(sizes),
            )
        )
    return shards
