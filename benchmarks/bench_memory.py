#!/usr/bin/env python
"""Peak memory of ``bids2hf convert`` against the size of one session (one row).

Run from the repository root::

    .venv/bin/python benchmarks/bench_memory.py --session-sizes 250M,1G,3G \
        --out benchmarks/results/MEMORY.md

For each size, a synthetic ARC-shaped dataset of two subjects with one session each is generated
(sessions of about that size: the images are scaled), then converted by the CLI with one worker
(``-q -j 1``, default options otherwise) in a child process. The peak RSS is the kernel's
``ru_maxrss`` of the converting process (through GNU ``time`` when present, see
``bench_convert.run_child``). Each line also gives the largest row's embedded bytes, the largest
file, the row-group size and the goal of issue 11 (300 MB + row-group size + largest file).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

from bench_convert import BIDS2HF, fresh_scratch, human, machine, run_child, src_fingerprint
from bids2hf.units import parse_size

MB = 1e6


def _dataset(root: Path, session_bytes: int) -> None:
    from bids2hf.testing.spec import SyntheticSpec
    from bids2hf.testing.synthetic import generate_bids

    spec = SyntheticSpec(
        n_subjects=2,
        sessions=("1",),
        arc_shaped=True,
        derivatives=False,
        missing_modalities=False,
        participant_without_folder=False,
        # target_bytes is the dataset's: with these two subjects the larger session (the
        # largest row) holds about 0.59 of it
        target_bytes=int(1.7 * session_bytes),
    )
    generate_bids(root, spec)


def _shape(root: Path, row_group: int, max_row: int | None) -> dict[str, int]:
    """Rows, largest row (all its files; and only those embedded), largest file and the bytes
    stored beside the shards, as the plan of this conversion has them."""
    import bids2hf
    from bids2hf.model.rows import Role
    from bids2hf.plan.options import PlanOptions

    options = PlanOptions(row_group_bytes=row_group)
    if max_row is not None:
        options = PlanOptions(row_group_bytes=row_group, max_row_bytes=max_row)
    _, plan = bids2hf.inspect(root, None, options)
    rows = [row for shard in plan.shards for row in shard.rows]
    # FILE columns only: a SHA256 column lists the same files again
    file_columns = [c.name for c in plan.columns if c.role is Role.FILE]
    refs = [[r for c in file_columns for r in row.files.get(c, [])] for row in rows]
    sizes = [sum(r.size for r in row_refs) for row_refs in refs]
    embedded = [
        sum(r.size for r in row_refs if r.relpath not in getattr(row, "beside", {}))
        for row, row_refs in zip(rows, refs, strict=True)
    ]
    return {
        "rows": len(rows),
        "largest_row": max(sizes),
        "largest_embedded_row": max(embedded),
        "largest_file": max(r.size for row_refs in refs for r in row_refs),
        "beside": sum(sizes) - sum(embedded),
        "total": sum(sizes),
    }


def measure(
    label: str, session_bytes: int, scratch: Path, row_group: int, max_row: int | None
) -> dict[str, Any]:
    bids, out = scratch / f"{label}-v2" / "bids", scratch / label / "out"
    if not bids.exists():
        _dataset(bids, session_bytes)
    shutil.rmtree(out, ignore_errors=True)
    cmd = [BIDS2HF, "convert", str(bids), str(out), "-q", "-j", "1",
           "--row-group-size", str(row_group)]
    if max_row is not None:
        cmd += ["--max-row-size", str(max_row)]
    run = run_child(cmd, timeout=3600)
    if not run.ok:
        raise SystemExit(f"{label}: {run.reason()}")
    shape = _shape(bids, row_group, max_row)
    goal = 300 * MB + row_group + shape["largest_file"]
    shutil.rmtree(out, ignore_errors=True)
    return {
        "session": label,
        **shape,
        "row_group": row_group,
        "max_row": max_row,
        "peak_rss": run.maxrss_single,
        "goal": goal,
        "seconds": run.seconds,
    }


def render(results: list[dict[str, Any]], info: dict[str, str], flags: str) -> str:
    lines = [
        "# Peak memory against session size",
        "",
        f"{info['date']}, {info['cpu']}, {info['cores']} cores, bids2hf {info['source']}; "
        f"`bids2hf convert -q -j 1{flags}` (one process), ARC-shaped sessions. "
        "'Embedded' is the largest row's bytes inside the shards; 'beside' is the share of all "
        "bytes stored as files beside the shards (`--max-row-size`).",
        "",
        "| session | largest row | embedded | largest file | beside | row group | peak RSS | goal (300 MB + row group + largest file) | time |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        beside = 100 * r["beside"] / r["total"]
        lines.append(
            f"| {r['session']} | {human(r['largest_row'])} | {human(r['largest_embedded_row'])} | "
            f"{human(r['largest_file'])} | {beside:.0f} % | {human(r['row_group'])} | "
            f"**{human(r['peak_rss'])}** | {human(r['goal'])} | {r['seconds']:.1f} s |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--session-sizes", default="250M,1G,3G")
    p.add_argument("--row-group-size", default="128MiB")
    p.add_argument("--max-row-size", default=None, help="passed to convert (default: its own)")
    p.add_argument("--tmp", default="/tmp/bids2hf-bench-memory")
    p.add_argument("--out", default="benchmarks/results/MEMORY.md")
    a = p.parse_args(argv)
    scratch = Path(a.tmp)
    fresh_scratch(scratch, Path(__file__).resolve().parent.parent, ".bids2hf-bench-memory", "bench_memory")
    results = []
    max_row = None if a.max_row_size is None else parse_size(a.max_row_size)
    for label in a.session_sizes.split(","):
        results.append(
            measure(label, parse_size(label), scratch, parse_size(a.row_group_size), max_row)
        )
        print(json.dumps(results[-1]), flush=True)
    info = {**machine(), "source": src_fingerprint()}
    out = Path(a.out)
    flags = "" if a.max_row_size is None else f" --max-row-size {a.max_row_size}"
    out.write_text(render(results, info, flags))
    out.with_suffix(".json").write_text(json.dumps({"machine": info, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
