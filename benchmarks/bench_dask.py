#!/usr/bin/env python
"""Throughput of ``--engine local`` against ``--engine dask`` with 1 and 2 workers (issue 14).

Run from the repository root::

    .venv/bin/python benchmarks/bench_dask.py --size 1G --repeats 3 --out benchmarks/results/DASK.md

One synthetic BIDS dataset is generated (not timed) and converted to a local folder by:

* the CLI, as a child process (wall time: Python start-up, scan, plan, writing; for Dask also
  starting and stopping the ``LocalCluster`` of ``--scheduler local:N``):
  ``bids2hf convert -q -j 1``, ``-j 2``, ``--engine dask --scheduler local:1`` and ``local:2``;
* the API in a child process, timing ``bids2hf.convert(...)`` alone: with ``workers=1`` and 2,
  and with ``client=`` a ``LocalCluster`` of 1 and 2 worker processes (one thread each) started,
  and their imports done, before the clock starts: the engine's steady-state throughput. (The
  local engine's pool of ``workers=2`` is started inside the call, as it always is.)

Every output must be byte-identical to the first one (checked). The source stays in the page
cache (warm runs; ``--drop-caches`` drops it before every run, as root), so the numbers compare
the engines' CPU and coordination costs rather than the disk. The machine's load average is
recorded with each run: other processes share its cores.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench_convert import drop_caches
from bids2hf.units import parse_size

HERE = Path(__file__).resolve()
REPO = HERE.parent.parent
PY = sys.executable
MB = 1e6

API_SCRIPT = r"""
import importlib, json, sys, time
from pathlib import Path

def main() -> None:
    import bids2hf
    from bids2hf.plan.options import PlanOptions
    bids, out, mode, n, shard = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
    options = dict(plan_options=PlanOptions(max_shard_bytes=shard), progress=False)
    if mode == "dask":
        from distributed import Client, LocalCluster
        with LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                          dashboard_address=None) as cluster, Client(cluster) as client:
            client.wait_for_workers(n)
            # Workers import what a task needs before the clock starts (in a CLI run they do so
            # while the driver scans and plans).
            client.run(importlib.import_module, "bids2hf.scale.dask_tasks")
            started = time.perf_counter()
            bids2hf.convert(bids, out, client=client, **options)
            seconds = time.perf_counter() - started
    else:
        started = time.perf_counter()
        bids2hf.convert(bids, out, workers=n, **options)
        seconds = time.perf_counter() - started
    print(json.dumps({"seconds": seconds}))

if __name__ == "__main__":
    main()
"""


def digest(root: Path) -> str:
    """One sha256 over every output file but the resume state (paths and bytes)."""
    sha = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file() and ".bids2hf" not in p.relative_to(root).parts:
            sha.update(p.relative_to(root).as_posix().encode() + b"\0")
            sha.update(hashlib.sha256(p.read_bytes()).digest())
    return sha.hexdigest()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", default="1G", help="dataset size, e.g. 1G")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--max-shard-size", default="100MB", help="shards (the unit of distribution)")
    p.add_argument("--tmp", default="/work/bench-tmp/dask", help="work dir (not in the repo)")
    p.add_argument("--drop-caches", action="store_true", help="cold runs (root; system-wide)")
    p.add_argument("--keep", action="store_true", help="keep the generated dataset")
    p.add_argument(
        "--wait-idle",
        type=float,
        default=None,
        metavar="LOAD",
        help="before each run, wait (up to 10 min) until the 1-minute load average is below LOAD",
    )
    p.add_argument("--out", default=str(REPO / "benchmarks/results/DASK.md"))
    args = p.parse_args()

    from bids2hf.testing.synthetic import SyntheticSpec, generate_bids

    tmp = Path(args.tmp)
    tmp.mkdir(parents=True, exist_ok=True)
    nbytes = parse_size(args.size)
    bids = tmp / f"bids-{args.size}"
    if not bids.is_dir():
        generate_bids(
            bids, SyntheticSpec(n_subjects=max(1, nbytes // 80_000_000), target_bytes=nbytes)
        )
    data = sum(f.stat().st_size for f in bids.rglob("*") if f.is_file())
    shard = parse_size(args.max_shard_size)
    api = tmp / "api.py"
    api.write_text(API_SCRIPT)

    cli = [
        PY,
        "-m",
        "bids2hf",
        "convert",
        str(bids),
        "OUT",
        "-q",
        "--max-shard-size",
        args.max_shard_size,
    ]
    configs: list[tuple[str, str, list[str]]] = [
        ("local -j 1", "cli", [*cli, "-j", "1"]),
        ("local -j 2", "cli", [*cli, "-j", "2"]),
        ("dask local:1", "cli", [*cli, "--engine", "dask", "--scheduler", "local:1"]),
        ("dask local:2", "cli", [*cli, "--engine", "dask", "--scheduler", "local:2"]),
        ("local, workers=1", "api", [PY, str(api), str(bids), "OUT", "local", "1", str(shard)]),
        ("local, workers=2", "api", [PY, str(api), str(bids), "OUT", "local", "2", str(shard)]),
        ("dask, 1 worker", "api", [PY, str(api), str(bids), "OUT", "dask", "1", str(shard)]),
        ("dask, 2 workers", "api", [PY, str(api), str(bids), "OUT", "dask", "2", str(shard)]),
    ]
    results: dict[str, Any] = {
        "date": _dt.datetime.now().isoformat(timespec="seconds"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "python": platform.python_version(),
        "data_bytes": data,
        "max_shard_size": args.max_shard_size,
        "cold": args.drop_caches,
        "runs": {},
    }
    reference: str | None = None
    for repeat in range(args.repeats):
        for label, kind, command in configs:
            out = tmp / "out"
            shutil.rmtree(out, ignore_errors=True)
            command = [str(out) if c == "OUT" else c for c in command]
            if args.drop_caches:
                drop_caches()
            if args.wait_idle is not None:
                deadline = time.monotonic() + 600
                while os.getloadavg()[0] >= args.wait_idle and time.monotonic() < deadline:
                    time.sleep(5)
            load = os.getloadavg()[0]
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            started = time.perf_counter()
            proc = subprocess.run(command, capture_output=True, text=True, timeout=3600)
            wall = time.perf_counter() - started
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            # CPU of the whole process tree (every process is reaped by its parent): what the
            # run costs, less sensitive than wall time to other processes on the machine.
            cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
            if proc.returncode != 0:
                sys.exit(f"{label} failed: {proc.stderr[-2000:]}")
            seconds = (
                json.loads(proc.stdout.strip().splitlines()[-1])["seconds"]
                if kind == "api"
                else wall
            )
            got = digest(out)
            reference = reference or got
            if got != reference:
                sys.exit(f"{label}: output differs from the first run's")
            results["runs"].setdefault(label, []).append(
                {"seconds": seconds, "wall": wall, "cpu": cpu, "load": load}
            )
            print(
                f"[{repeat + 1}/{args.repeats}] {label}: {seconds:.2f} s ({data / MB / seconds:.0f} MB/s), load {load:.1f}",
                flush=True,
            )
    shutil.rmtree(tmp / "out", ignore_errors=True)
    if not args.keep:
        shutil.rmtree(bids, ignore_errors=True)
    Path(args.out).with_suffix(".json").write_text(json.dumps(results, indent=1))
    Path(args.out).write_text(render(results, configs))
    print(Path(args.out).read_text())


def render(results: dict[str, Any], configs: list[tuple[str, str, list[str]]]) -> str:
    data = results["data_bytes"]
    lines = [
        "# `--engine local` vs `--engine dask` (benchmarks/bench_dask.py)",
        "",
        f"{results['date']}; {results['machine']}; Python {results['python']}; "
        f"{data / 1e9:.2f} GB of synthetic BIDS, shards of at most {results['max_shard_size']}, "
        f"{'cold' if results['cold'] else 'warm'} page cache; medians of "
        f"{len(next(iter(results['runs'].values())))} runs; outputs byte-identical (checked).",
        "",
        "| what | engine | seconds | MB/s | vs local -j 1 | CPU s (process tree) | load avg |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for kind, title in (("cli", "CLI, wall"), ("api", "convert() alone")):
        base = None
        for label, k, _ in configs:
            if k != kind:
                continue
            runs = results["runs"][label]
            med = statistics.median(r["seconds"] for r in runs)
            base = base or med
            load = statistics.median(r["load"] for r in runs)
            cpu = statistics.median(r["cpu"] for r in runs)
            lines.append(
                f"| {title} | {label} | {med:.2f} | {data / MB / med:.0f} | {base / med:.2f}x "
                f"| {cpu:.2f} | {load:.1f} |"
            )
    lines += [
        "",
        "CLI, wall: `bids2hf convert` as a child process (start-up, scan, plan, writing; Dask rows",
        "also start and stop the LocalCluster of `--scheduler local:N`). convert() alone: the call",
        "timed inside a child process, the LocalCluster started (and its workers' imports done)",
        "beforehand; the local engine's pool of 2 processes starts inside the call, as always.",
        "CPU s: user + system time of the child process and all its descendants for the whole",
        "child (for the convert() rows that includes starting the Python process and the cluster).",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
