"""Inventory → columns, rows and shards. Pure: no file is opened here.

The plan fixes everything about the output except the bytes of the embedded files: the schema
(with the Hugging Face ``features``), which file goes into which row and column, how rows are
cut into shards and row groups, and where every other file goes.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import pyarrow as pa

from bids2hf.model.inventory import Inventory, Placement, Problem, Severity, SourceFile
from bids2hf.model.rows import ColumnSpec, Role, ShardPlan
from bids2hf.plan.beside import place_beside
from bids2hf.plan.builder import KindSummary, RowBuilder, kind_sort
from bids2hf.plan.features import Features
from bids2hf.plan.layouts.scan import ScanLayout
from bids2hf.plan.layouts.session import SessionLayout
from bids2hf.plan.options import PlanOptions
from bids2hf.plan.shards import plan_shards

__all__ = ["ConversionPlan", "make_plan"]


@dataclass
class ConversionPlan:
    """Everything about the output that does not need the embedded bytes."""

    options: PlanOptions
    columns: list[ColumnSpec]
    features: Features
    shards: list[ShardPlan]
    dataset_files: list[SourceFile]
    left_out: list[SourceFile]
    kinds: list[KindSummary]
    problems: list[Problem]
    plan_id: str = ""

    @property
    def rows(self) -> int:
        return sum(len(s.rows) for s in self.shards)

    @property
    def embedded_bytes(self) -> int:
        return sum(s.nbytes for s in self.shards)

    @property
    def embedded_files(self) -> int:
        return sum(
            len(
                {
                    f.relpath
                    for row in s.rows
                    for refs in row.files.values()
                    for f in refs
                    if f.relpath not in row.beside
                }
            )
            for s in self.shards
        )

    @property
    def beside(self) -> list[tuple[str, str, str]]:
        """Files stored beside the shards: (row key, relpath, reason), in row order."""
        return [
            (row.key, relpath, reason)
            for s in self.shards
            for row in s.rows
            for relpath, reason in row.beside_reasons.items()
        ]

    @property
    def arrow_schema(self) -> pa.Schema:
        return self.features.arrow_schema

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity is Severity.ERROR]


def make_plan(inventory: Inventory, options: PlanOptions | None = None) -> ConversionPlan:
    """Plan the conversion of a scanned BIDS folder. Pure: reads no file."""
    options = options or PlanOptions()
    layout = SessionLayout if options.layout == "session" else ScanLayout
    builder: RowBuilder = layout(inventory, options)
    rows = builder.rows()
    columns = builder.columns
    features = Features({c.name: c.feature for c in columns})
    problems = list(inventory.problems) + builder.problems
    file_columns = [c.name for c in columns if c.role is Role.FILE]
    # Files too large for their cell are stored beside the shards, never refused.
    place_beside(rows, file_columns, options.max_row_bytes, options.files_url)
    shards = plan_shards(
        rows,
        schema_id=_schema_id(features),
        max_shard_bytes=options.max_shard_bytes,
        row_group_bytes=options.row_group_bytes,
        split=options.split,
    )
    dataset_files = [f for f in inventory.files if f.placement is Placement.DATASET_FILE]
    left_out = sorted(builder.left_out, key=lambda f: f.relpath)
    kinds = sorted(builder.kinds.values(), key=lambda k: kind_sort(k.kind))
    plan = ConversionPlan(
        options=options,
        columns=columns,
        features=features,
        shards=shards,
        dataset_files=dataset_files,
        left_out=left_out,
        kinds=kinds,
        problems=problems,
    )
    plan.plan_id = _plan_id(plan)
    return plan


def _schema_id(features: Features) -> str:
    return hashlib.sha256(json.dumps(features.to_json(), sort_keys=True).encode()).hexdigest()


def _plan_id(plan: ConversionPlan) -> str:
    h = hashlib.sha256()
    for shard in plan.shards:
        h.update(f"{shard.path}\0{shard.content_id}\n".encode())
    for f in plan.dataset_files:
        version = f"\0{f.version}" if f.version else ""  # [issue 15] remote sources only
        h.update(f"D\0{f.relpath}\0{f.size}\0{f.mtime_ns}{version}\n".encode())
    for f in plan.left_out:
        h.update(f"L\0{f.relpath}\0{f.reason}\n".encode())
    return h.hexdigest()[:32]
