#!/usr/bin/env python
"""Reading side: what one modality, one file or a whole-tree diff costs on the wire.

Run from the repository root::

    .venv/bin/python benchmarks/bench_read.py --size 300M --bandwidth 100MB/s \
        --tmp /work/bench-tmp-read --out benchmarks/results/READ.md

One ARC-shaped synthetic BIDS dataset is generated (``SyntheticSpec(arc_shaped=True)``, not
timed) and published with ``bids2hf convert BIDS hf://datasets/bench/arc --derivatives all`` to
the Hub emulator (``tests/hub_emulator.py``), run in this process (its threads serve the
children; this process only waits).  Then the emulator's *download* bandwidth is limited (one
budget shared by all connections, like one link; the emulator itself only limits uploads, so
this script adds the download limit in a subclass) and each reader runs as a child process with
a fresh ``HF_HOME`` (no cache), timed (wall clock) and counted (bytes of file bodies the
emulator served, requests by route):

* (a) ``bids2hf export hf://datasets/bench/arc OUT --include '*_T1w.nii.gz'``, against the T1w
  files' bytes; the exported files are compared with the originals;
* (b) one T1w read whole through ``fsspec.open("bids2hf://PATH::hf://datasets/bench/arc")``
  (sha256 compared with the original);
* (c) ``diff -r BIDS MOUNTPOINT`` against ``bids2hf mount hf://datasets/bench/arc MOUNTPOINT``
  (skipped with a note without FUSE); time to mount and time of the diff;
* (d) ``datasets.load_dataset("bench/arc", split="train", streaming=True, columns=[T1w column])``
  iterating every row (images decoded by ``datasets``), and the first row of
  ``load_dataset(..., streaming=True)`` with the default columns.

Nothing drops the page cache; other work may share the machine (the load average is recorded).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import bids2hf.units as units
from bench_convert import fresh_scratch, src_fingerprint

HERE = Path(__file__).resolve()
REPO = HERE.parent.parent
PY = sys.executable
BIDS2HF = str(Path(PY).with_name("bids2hf"))
MARKER = ".bench_read_tmp"
REPO_ID = "bench/arc"
HF_URL = f"hf://datasets/{REPO_ID}"
T1W = "*_T1w.nii.gz"

sys.path.insert(0, str(REPO / "tests"))
from hub_emulator import HubEmulator  # noqa: E402


def parse_size(text: str) -> int:
    """Sizes and bandwidths: ``300M``, ``100MB/s``, ``1GiB``."""
    return units.parse_size(text.strip().replace(" ", "").removesuffix("/s"))


class ReadEmulator(HubEmulator):
    """The Hub emulator with a download bandwidth limit (file bodies, all connections together)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.download_bandwidth: float | None = None
        self._dl_lock = threading.Lock()
        self._dl_next = 0.0

    def _add(self, key: str, n: int = 1) -> None:
        super()._add(key, n)
        if key == "bytes_downloaded" and self.download_bandwidth:
            # Called after each chunk of a body is written: sleeping here paces the sender.
            with self._dl_lock:
                now = time.monotonic()
                self._dl_next = max(now - 0.05, self._dl_next) + n / self.download_bandwidth
                wait = self._dl_next - now
            if wait > 0:
                time.sleep(wait)


def child_env(run_dir: Path, endpoint: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "BIDS2HF_"))}
    env.update({
        "HF_HUB_DISABLE_XET": "1",
        "HF_TOKEN": "x",
        "HF_HOME": str(run_dir / "hf-home"),
        "HF_DATASETS_CACHE": str(run_dir / "hf-home" / "datasets"),
        "BIDS2HF_CACHE": str(run_dir / "cache"),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_ENDPOINT": endpoint,
        "PYTHONUNBUFFERED": "1",
    })
    return env


FSSPEC_CHILD = """
import hashlib, sys, time, fsspec
t = time.perf_counter()
with fsspec.open(sys.argv[1], "rb") as f:
    data = f.read()
print(json.dumps({"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                  "read_s": time.perf_counter() - t}))
""".replace("import hashlib", "import json, hashlib")

DATASETS_CHILD = """
import json, sys, time
t0 = time.perf_counter()
from datasets import load_dataset
mode, repo = sys.argv[1], sys.argv[2]
t = time.perf_counter()
if mode == "column":
    ds = load_dataset(repo, split="train", streaming=True, columns=[sys.argv[3]])
    rows = images = 0
    first = None
    for row in ds:
        rows += 1
        value = row[sys.argv[3]]
        images += len(value) if isinstance(value, list) else int(value is not None)
        if first is None:
            first = time.perf_counter() - t
    print(json.dumps({"rows": rows, "images": images, "first_row_s": first,
                      "iterate_s": time.perf_counter() - t, "import_s": t - t0}))
else:
    ds = load_dataset(repo, split="train", streaming=True)
    row = next(iter(ds))
    print(json.dumps({"columns": len(row), "first_row_s": time.perf_counter() - t,
                      "import_s": t - t0}))
"""


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.tmp: Path = args.tmp.resolve()
        self.bids = self.tmp / "bids"
        self.counter = 0
        self.meta: dict[str, Any] = {}
        self.rows: list[dict[str, Any]] = []

    def prepare_tmp(self) -> None:
        fresh_scratch(self.tmp, REPO, MARKER, "bench_read.py")

    def run_dir(self) -> Path:
        self.counter += 1
        d = self.tmp / f"run-{self.counter:02d}"
        d.mkdir()
        return d

    def measure(self, emu: ReadEmulator, name: str, cmd: list[str], run_dir: Path,
                expected: int | None) -> dict[str, Any]:
        """Run one child; wall time, bytes served by the emulator during it, requests."""
        emu.reset_stats()
        load = os.getloadavg()[0]
        t = time.perf_counter()
        proc = subprocess.run(cmd, env=child_env(run_dir, emu.url), capture_output=True, text=True)
        wall = time.perf_counter() - t
        stats = emu.stats
        row = {
            "name": name, "wall": wall, "rc": proc.returncode, "load_before": load,
            "served": stats["bytes_downloaded"], "expected": expected,
            "requests": {k: v for k, v in stats["requests"].items() if v},
            "stdout": proc.stdout.strip()[-2000:], "stderr": proc.stderr.strip()[-2000:],
        }
        print(f"{name}: {wall:.2f} s, {stats['bytes_downloaded'] / 1e6:.2f} MB served, rc {proc.returncode}",
              flush=True)
        if proc.returncode:
            print(proc.stderr[-2000:], file=sys.stderr)
        return row

    def run(self) -> None:
        from bids2hf.testing.spec import SyntheticSpec
        from bids2hf.testing.synthetic import generate_bids

        args = self.args
        self.prepare_tmp()
        size = parse_size(args.size)
        subjects = args.subjects or max(2, round(size / 40e6))
        t = time.perf_counter()
        g = generate_bids(self.bids, SyntheticSpec(n_subjects=subjects, arc_shaped=True, target_bytes=size))
        self.meta["dataset"] = {"size arg": args.size, "subjects": subjects, "files": len(g.files),
                                "source bytes": g.total_bytes, "generate s": time.perf_counter() - t}
        print(f"generated {len(g.files)} files, {g.total_bytes / 1e6:.0f} MB in {time.perf_counter() - t:.0f} s",
              flush=True)
        bw = parse_size(args.bandwidth) if args.bandwidth not in ("0", "none") else None
        self.meta["bandwidth"] = bw
        with ReadEmulator(self.tmp / "hub") as emu:
            emu.create_repo(REPO_ID)
            d = self.run_dir()
            t = time.perf_counter()
            subprocess.run([BIDS2HF, "convert", str(self.bids), HF_URL, "-q", "--derivatives", "all"],
                           env=child_env(d, emu.url), check=True)
            self.meta["publish s"] = time.perf_counter() - t
            files = emu.files(REPO_ID)
            self.meta["published bytes"] = sum(p.stat().st_size for p in files.values())
            self.meta["shards"] = sum(1 for k in files if k.endswith(".parquet"))
            manifest_bytes = emu.read_file(REPO_ID, "bids2hf/manifest.jsonl")
            self.meta["manifest bytes"] = len(manifest_bytes)
            entries = [json.loads(x) for x in manifest_bytes.decode().splitlines() if x.strip()]
            t1w = sorted((e for e in entries if e["path"].endswith("_T1w.nii.gz")), key=lambda e: e["path"])
            t1w_bytes = sum(int(e["size"]) for e in t1w)
            self.meta["t1w"] = {"files": len(t1w), "bytes": t1w_bytes,
                                "with offset": sum(1 for e in t1w if e.get("offset") is not None)}
            import pyarrow.parquet as pq

            shard = next(p for k, p in sorted(files.items()) if k.endswith(".parquet"))
            names = pq.read_schema(shard).names
            column = next(n for n in names if "T1w" in n)
            self.meta["t1w column"] = column
            print(f"published {self.meta['published bytes'] / 1e6:.0f} MB in {self.meta['publish s']:.0f} s; "
                  f"{len(t1w)} T1w = {t1w_bytes / 1e6:.1f} MB; column {column!r}", flush=True)
            emu.download_bandwidth = bw

            # (a) export one modality
            d = self.run_dir()
            out = d / "export"
            row = self.measure(emu, "(a) export --include '*_T1w.nii.gz'",
                               [BIDS2HF, "export", HF_URL, str(out), "--include", T1W, "-q"], d, t1w_bytes)
            got = sorted(str(p.relative_to(out)) for p in out.rglob("*_T1w.nii.gz"))
            row["identical"] = got == [e["path"] for e in t1w] and all(
                (out / e["path"]).read_bytes() == (self.bids / e["path"]).read_bytes() for e in t1w)
            self.rows.append(row)

            # (b) one file through fsspec
            one = t1w[0]
            d = self.run_dir()
            row = self.measure(emu, "(b) one T1w via fsspec bids2hf://",
                               [PY, "-c", FSSPEC_CHILD, f"bids2hf://{one['path']}::{HF_URL}"], d, int(one["size"]))
            try:
                info = json.loads(row["stdout"].splitlines()[-1])
                row["identical"] = info["sha256"] == hashlib.sha256((self.bids / one["path"]).read_bytes()).hexdigest()
                row["detail"] = f"{one['path']}; read {info['read_s']:.2f} s of the wall time"
            except (IndexError, ValueError, KeyError):
                row["identical"] = False
            self.rows.append(row)

            # (c) diff -r through the mount
            self.rows.append(self.mount_diff(emu, g.total_bytes))

            # (d) datasets streaming
            d = self.run_dir()
            row = self.measure(emu, f"(d) load_dataset(streaming=True, columns=[{column!r}]), all rows",
                               [PY, "-c", DATASETS_CHILD, "column", REPO_ID, column], d, t1w_bytes)
            self.add_json_detail(row)
            self.rows.append(row)
            d = self.run_dir()
            row = self.measure(emu, "(d) load_dataset(streaming=True), first row, default columns",
                               [PY, "-c", DATASETS_CHILD, "first", REPO_ID], d, None)
            self.add_json_detail(row)
            self.rows.append(row)
        if not args.keep:
            shutil.rmtree(self.tmp)

    @staticmethod
    def add_json_detail(row: dict[str, Any]) -> None:
        try:
            info = json.loads(row["stdout"].splitlines()[-1])
        except (IndexError, ValueError):
            return
        row["detail"] = ", ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in info.items())

    def mount_diff(self, emu: ReadEmulator, source_bytes: int) -> dict[str, Any]:
        name = "(c) diff -r BIDS <bids2hf mount>"
        d = self.run_dir()
        point = d / "mnt"
        point.mkdir()
        if not Path("/dev/fuse").exists() or not shutil.which("fusermount3"):
            return {"name": name, "skipped": "FUSE unavailable (/dev/fuse or fusermount3 missing)"}
        emu.reset_stats()
        load = os.getloadavg()[0]
        t0 = time.perf_counter()
        proc = subprocess.Popen([BIDS2HF, "mount", HF_URL, str(point), "-q"], env=child_env(d, emu.url),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            while not os.path.ismount(point):
                if proc.poll() is not None:
                    err = proc.stderr.read() if proc.stderr else ""
                    return {"name": name, "skipped": f"mount exited {proc.returncode}: {err.strip()[-300:]}"}
                if time.perf_counter() - t0 > 120:
                    return {"name": name, "skipped": "not mounted after 120 s"}
                time.sleep(0.02)
            mounted = time.perf_counter() - t0
            at_mount = emu.stats["bytes_downloaded"]
            t = time.perf_counter()
            diff = subprocess.run(["diff", "-r", str(self.bids), str(point)], capture_output=True, text=True)
            diff_s = time.perf_counter() - t
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                subprocess.run(["fusermount3", "-u", str(point)], check=False)
        stats = emu.stats
        print(f"{name}: mounted in {mounted:.2f} s, diff {diff_s:.2f} s (rc {diff.returncode}), "
              f"{stats['bytes_downloaded'] / 1e6:.1f} MB served", flush=True)
        return {
            "name": name, "wall": mounted + diff_s, "rc": diff.returncode, "load_before": load,
            "served": stats["bytes_downloaded"], "expected": source_bytes,
            "requests": {k: v for k, v in stats["requests"].items() if v},
            "identical": diff.returncode == 0 and not diff.stdout,
            "detail": f"mount ready {mounted:.2f} s ({at_mount / 1e3:.0f} kB), diff {diff_s:.2f} s",
            "stdout": diff.stdout[-2000:], "stderr": diff.stderr[-2000:],
        }

    def render(self) -> str:
        m = self.meta
        bw = m["bandwidth"]
        versions = {}
        for mod in ("bids2hf", "huggingface_hub", "fsspec", "datasets", "pyarrow", "mfusepy"):
            try:
                from importlib.metadata import version

                versions[mod] = version(mod)
            except Exception:  # a missing optional package is reported as such
                versions[mod] = "-"
        lines = [
            "# Reading a published dataset as BIDS: bytes and time",
            "",
            f"- date: {_dt.datetime.now(_dt.timezone.utc):%Y-%m-%d %H:%M} UTC; machine: {platform.node()}, "
            f"{os.cpu_count()} cores, {platform.platform()}, Python {platform.python_version()}",
            f"- versions: {', '.join(f'{k} {v}' for k, v in versions.items())}; src {src_fingerprint()}",
            f"- command: `.venv/bin/python benchmarks/bench_read.py {' '.join(sys.argv[1:])}`",
            f"- dataset: ARC-shaped synthetic, {m['dataset']['subjects']} subjects, {m['dataset']['files']} files, "
            f"{m['dataset']['source bytes'] / 1e6:.1f} MB; published with `bids2hf convert BIDS "
            f"hf://datasets/{REPO_ID} --derivatives all` in {m['publish s']:.0f} s: {m['shards']} shards, "
            f"{m['published bytes'] / 1e6:.1f} MB in the repo, manifest {m['manifest bytes'] / 1e3:.0f} kB",
            f"- T1w: {m['t1w']['files']} files, {m['t1w']['bytes'] / 1e6:.2f} MB "
            f"({m['t1w']['with offset']} with an offset); Parquet column `{m['t1w column']}`",
            f"- emulator download bandwidth: {'unlimited' if not bw else f'{bw / 1e6:.0f} MB/s'} (one budget "
            "for all connections); every reader is a child process with an empty `HF_HOME` (no cache); "
            "*served* = bytes of file bodies the emulator sent during it; wall time includes Python start "
            "and imports; nothing drops the page cache",
            "",
            "| reader | wall s | served MB | reference MB | served / reference | requests | same bytes | notes |",
            "|---|---:|---:|---:|---:|---:|---|---|",
        ]
        for r in self.rows:
            if "skipped" in r:
                lines.append(f"| {r['name']} | - | - | - | - | - | - | skipped: {r['skipped']} |")
                continue
            ref = r.get("expected")
            ratio = f"{r['served'] / ref:.3f}x" if ref else "-"
            reqs = sum(v for k, v in r["requests"].items() if "resolve" in k)
            notes = [r.get("detail", "")]
            if r["rc"] and "diff" not in r["name"]:
                notes.append(f"exit {r['rc']}: {r['stderr'][-200:]}")
            notes.append(f"load {r['load_before']:.1f}")
            same = "-" if r.get("identical") is None else ("yes" if r["identical"] else "NO")
            lines.append(
                f"| {r['name'].replace('|', '/')} | {r['wall']:.2f} | {r['served'] / 1e6:.2f} | "
                f"{'-' if not ref else f'{ref / 1e6:.2f}'} | {ratio} | {reqs} | {same} | "
                f"{'; '.join(n for n in notes if n).replace('|', '/')} |"
            )
        lines += [
            "",
            "Reference: (a), (d) columns = the T1w files' bytes; (b) = that file's size; (c) = the "
            "source folder's bytes. *requests* counts file-download requests (`resolve`, GET and HEAD).",
            "",
            "Requests by route:",
            "",
        ]
        for r in self.rows:
            if "requests" in r:
                lines.append(f"- {r['name']}: " + ", ".join(f"{k} {v}" for k, v in sorted(r["requests"].items())))
        return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    ap.add_argument("--size", default="300M", help="source size (e.g. 300M, 1G)")
    ap.add_argument("--subjects", type=int, default=0, help="subjects (default: size / 40 MB)")
    ap.add_argument("--bandwidth", default="100MB/s", help="emulator download bandwidth, or 0")
    ap.add_argument("--tmp", type=Path, default=Path("/tmp/bench-read"))
    ap.add_argument("--out", type=Path, default=None, help="write the Markdown table here")
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    args = ap.parse_args()
    b = Bench(args)
    b.run()
    text = b.render()
    print(text)
    if args.out:
        args.out.write_text(text)
        args.out.with_suffix(".json").write_text(json.dumps({"meta": b.meta, "rows": b.rows}, indent=1, default=str))


if __name__ == "__main__":
    main()
