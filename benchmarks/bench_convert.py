#!/usr/bin/env python
"""End-to-end benchmark of ``bids2hf convert`` against ``cat`` and the ``datasets`` paths.

Run from the repository root::

    .venv/bin/python benchmarks/bench_convert.py --sizes 1G,3G --repeats 3 --shm \
        --out benchmarks/results/RESULTS.md

For each size one synthetic BIDS dataset is generated (generation time excluded) and reused by
every method:

* ``bids2hf``  -- ``bids2hf convert -q -j 1`` and ``-j <cores>`` as child processes (CLI);
* ``cat``      -- ``cat`` of every source file into one file on the same filesystem, then
  ``sync FILE`` (bids2hf fsyncs its shards, so cat is made to as well): the physical limit;
* ``datasets`` -- what ``Dataset.push_to_hub`` does, minus the upload: a Dataset of file paths
  (one row per subject x session, ``List(Nifti())`` per image kind, grouped as bids2hf's
  default layout), ``num_shards`` from ``_estimate_nbytes()`` and 500MB, then per shard
  ``shard(contiguous=True)`` -> ``map(embed_table_storage, batched, keep_in_memory)`` ->
  ``to_parquet``;
* ``seed``     -- the pandas round-trip workaround, one session per shard;
* ``--shm``    -- bids2hf and cat again with source and output on /dev/shm;
* read side    -- ``load_dataset(OUT, split="train")`` (fresh cache), streaming time to first
  example, and ``ds[middle]`` with all its images decoded, for the bids2hf and seed outputs.

Every measured command runs in a child process; peak RSS is taken both from the kernel
(``wait4`` ``ru_maxrss``: the largest single process of the tree) and by polling the process
tree with psutil every 50 ms (the sum of RSS over the tree at its largest).  The page cache is
dropped before every timed run when possible (root); otherwise all methods are run warm.

Results are saved after every measurement to ``<out>.json`` and rendered to ``<out>``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bids2hf.units import parse_size

HERE = Path(__file__).resolve()
REPO = HERE.parent.parent
PY = sys.executable
BIDS2HF = str(Path(PY).with_name("bids2hf"))
MB = 1e6
WARM_IMPORTS = (
    "import bids2hf.cli, bids2hf.api, bids2hf.write.workers, pyarrow.parquet, datasets, pandas, "
    "nibabel, psutil"
)


# ------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------
def human(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit in ("B", "KB") else f"{n:.2f} {unit}"
        n /= 1000
    return str(n)


def drop_caches() -> bool:
    try:
        subprocess.run(["sync"], check=True)
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def warm(paths: list[Path]) -> None:
    buf = bytearray(8 << 20)
    for p in paths:
        with open(p, "rb", buffering=0) as f:
            while f.readinto(buf):
                pass


def tree_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def fs_of(path: Path) -> str:
    try:
        out = (
            subprocess.run(["df", "-T", str(path)], capture_output=True, text=True, check=True)
            .stdout.splitlines()[-1]
            .split()
        )
        return f"{out[1]} ({out[0]}, {int(out[4]) / 1e6:.0f} GB free)"
    except Exception:
        return "?"


def fresh_scratch(tmp: Path, repo: Path, marker: str, script: str) -> None:
    """Make ``tmp`` an empty scratch folder marked as ``script``'s; exit if it is inside the
    repository, or holds files this script did not make (a user's folder is never deleted)."""
    if repo in tmp.parents or tmp == repo:
        sys.exit(f"--tmp {tmp} must be outside the repository")
    if tmp.exists() and any(tmp.iterdir()) and not (tmp / marker).exists():
        sys.exit(f"--tmp {tmp} exists, is not empty and was not made by this script")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    (tmp / marker).write_text(f"made by benchmarks/{script}; deleted at the end\n")


def src_fingerprint() -> str:
    """Commit + short hash of the bids2hf sources as they are now (others edit src/)."""
    import hashlib

    h = hashlib.sha256()
    for p in sorted((REPO / "src").rglob("*.py")):
        h.update(p.relative_to(REPO).as_posix().encode() + b"\0" + p.read_bytes())
    try:
        commit = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "?"
    return f"{commit}+src:{h.hexdigest()[:10]}"


def machine() -> dict[str, str]:
    import psutil

    cpu = platform.processor() or "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for mod in ("pyarrow", "datasets", "bids2hf", "nibabel", "numpy", "pandas"):
        try:
            versions[mod] = __import__(mod).__version__
        except Exception:
            versions[mod] = "?"
    return {
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "host": platform.node(),
        "os": platform.platform(),
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "ram": human(psutil.virtual_memory().total),
        "python": platform.python_version(),
        **versions,
    }


class Run:
    """Result of one child process run."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.rc = 0
        self.maxrss_single = 0  # bytes, kernel ru_maxrss (largest process of the tree)
        self.peak_sum = 0  # bytes, polled sum over the tree
        self.peak_procs = 0
        self.cpu = 0.0  # user + system seconds of the child tree (GNU time), 0 if unknown
        self.killed: str | None = None
        self.stdout = ""
        self.stderr = ""

    @property
    def ok(self) -> bool:
        return self.rc == 0 and self.killed is None

    def reason(self) -> str:
        """One line: the first and the last exception of the child's traceback(s)."""
        if self.killed:
            return self.killed
        lines = [ln.strip() for ln in self.stderr.strip().splitlines() if ln.strip()]
        excs = [ln for ln in lines if re.match(r"^[\w.]+(Error|Exception|Exit)\b.*", ln)]
        if excs:
            err = (
                excs[-1]
                if len(excs) == 1 or excs[0] == excs[-1]
                else (f"{excs[-1][:160]} (caused by {excs[0][:200]})")
            )
        else:
            err = lines[-1] if lines else ""
        if self.rc < 0:
            return f"signal {-self.rc} {err}".strip()
        return f"exit {self.rc}: {err[:400]}"


def run_child(
    cmd: list[str],
    *,
    env: dict[str, str] | None = None,
    mem_cap: int | None = None,
    timeout: float | None = None,
    cwd: str | None = None,
) -> Run:
    """Run ``cmd``; time it; poll its process tree's RSS every 50 ms; kill it above mem_cap."""
    import psutil

    r = Run()
    out_f = tempfile.TemporaryFile()
    err_f = tempfile.TemporaryFile()
    # ru_maxrss of a forked child starts at the (large) RSS of this parent, so the kernel's
    # figure is taken through GNU time (a small process) when available.
    gnu_time = shutil.which("time", path="/usr/bin:/bin")
    rss_file = None
    if gnu_time:
        fd, rss_file = tempfile.mkstemp(prefix="maxrss-")
        os.close(fd)
        cmd = [gnu_time, "-q", "-f", "%U %S %M", "-o", rss_file, *cmd]
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=out_f, stderr=err_f, env=env, cwd=cwd, start_new_session=True)
    stop = threading.Event()

    def poll() -> None:
        try:
            root = psutil.Process(p.pid)
        except psutil.Error:
            return
        while not stop.is_set():
            total = 0
            n = 0
            try:
                procs = [root, *root.children(recursive=True)]
            except psutil.Error:
                procs = []
            for pr in procs:
                try:
                    total += pr.memory_info().rss
                    n += 1
                except psutil.Error:
                    pass
            if total > r.peak_sum:
                r.peak_sum = total
            r.peak_procs = max(r.peak_procs, n)
            if mem_cap and total > mem_cap and r.killed is None:
                r.killed = f"killed: RSS of process tree exceeded the {human(mem_cap)} cap"
                with contextlib.suppress(OSError):
                    os.killpg(p.pid, signal.SIGKILL)
            if timeout and time.perf_counter() - t0 > timeout and r.killed is None:
                r.killed = f"killed: timeout after {timeout:.0f} s"
                with contextlib.suppress(OSError):
                    os.killpg(p.pid, signal.SIGKILL)
            stop.wait(0.05)

    th = threading.Thread(target=poll, daemon=True)
    th.start()
    _, status, ru = os.wait4(p.pid, 0)
    r.seconds = time.perf_counter() - t0
    stop.set()
    th.join()
    p.returncode = os.waitstatus_to_exitcode(status)
    r.rc = p.returncode
    r.maxrss_single = ru.ru_maxrss * 1024
    if rss_file:
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = Path(rss_file).read_text().split()
            r.maxrss_single = int(fields[-1]) * 1024
            r.cpu = float(fields[-3]) + float(fields[-2])
        os.unlink(rss_file)
    # Leftover grandchildren (should not happen) are killed with the session.
    with contextlib.suppress(OSError):
        os.killpg(p.pid, signal.SIGKILL)
    out_f.seek(0)
    err_f.seek(0)
    r.stdout = out_f.read().decode(errors="replace")
    r.stderr = "\n".join(
        ln
        for ln in err_f.read().decode(errors="replace").splitlines()
        if not ln.startswith("Command exited with non-zero status")
        and not ln.startswith("Command terminated by signal")
    )
    return r


def rm(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists():
        path.unlink()


# ------------------------------------------------------------------------------------------
# child modes (run as ``bench_convert.py _child MODE ...``)
# ------------------------------------------------------------------------------------------
def _session_table(bids: str) -> tuple[dict[str, list[Any]], list[str]]:
    """Rows of file paths grouped exactly like bids2hf's default (session) layout."""
    from bids2hf.api import scan_and_plan
    from bids2hf.bids.options import ScanOptions
    from bids2hf.model.rows import Role

    _, plan = scan_and_plan(bids, ScanOptions(derivatives=("all",)))
    cols = [c.name for c in plan.columns if c.role is Role.FILE and c.nifti]
    data: dict[str, list[Any]] = {"subject_id": [], "session_id": []}
    data.update({c: [] for c in cols})
    root = Path(bids).absolute()
    for shard in plan.shards:
        for row in shard.rows:
            data["subject_id"].append(str(row.values.get("subject_id")))
            data["session_id"].append(str(row.values.get("session_id")))
            for c in cols:
                data[c].append([str(root / f.relpath) for f in row.files.get(c, [])])
    return data, cols


def _path_dataset(bids: str) -> Any:
    from datasets import Dataset, Features, List, Nifti, Value

    data, cols = _session_table(bids)
    ds = Dataset.from_dict(data)
    feats = Features(
        {"subject_id": Value("string"), "session_id": Value("string")}
        | {c: List(Nifti()) for c in cols}
    )
    return ds.cast(feats)


def child_hfpush(bids: str, out: str) -> dict[str, Any]:
    """``push_to_hub``'s local part: shard, embed (map with keep_in_memory), to_parquet."""
    from datasets import config
    from datasets.arrow_writer import (
        get_writer_batch_size_from_data_size,
        get_writer_batch_size_from_features,
    )
    from datasets.table import embed_table_storage
    from datasets.utils.py_utils import convert_file_size_to_int

    t0 = time.perf_counter()
    ds = _path_dataset(bids)
    t_build = time.perf_counter() - t0
    nbytes = ds._estimate_nbytes()
    wbs = get_writer_batch_size_from_features(ds.features) or get_writer_batch_size_from_data_size(
        len(ds), nbytes
    )
    num_shards = max(int(nbytes / convert_file_size_to_int(config.MAX_SHARD_SIZE)) + 1, 1)
    num_shards = min(num_shards, len(ds))
    data_dir = Path(out) / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    for i in range(num_shards):
        shard = ds.shard(num_shards=num_shards, index=i, contiguous=True)
        fmt = shard.format
        shard = shard.with_format("arrow")
        shard = shard.map(embed_table_storage, batched=True, batch_size=wbs, keep_in_memory=True)
        shard = shard.with_format(**fmt)
        shard.to_parquet(
            str(data_dir / f"train-{i:05d}-of-{num_shards:05d}.parquet"), batch_size=wbs
        )
        del shard
    return {
        "estimate_nbytes": nbytes,
        "num_shards": num_shards,
        "writer_batch_size": wbs,
        "rows": len(ds),
        "build_s": t_build,
    }


def child_seed(bids: str, out: str) -> dict[str, Any]:
    """The seed workaround: per session, pandas round trip, cast, embed, pq.write_table."""
    import pyarrow.parquet as pq
    from datasets import Dataset
    from datasets.table import embed_table_storage

    ds = _path_dataset(bids)
    num_shards = len(ds)
    data_dir = Path(out) / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    for i in range(num_shards):
        shard = ds.shard(num_shards=num_shards, index=i, contiguous=True)
        df = shard.to_pandas()
        fresh = Dataset.from_pandas(df, preserve_index=False).cast(ds.features)
        table = embed_table_storage(fresh._data.table.combine_chunks())
        pq.write_table(table, str(data_dir / f"train-{i:05d}-of-{num_shards:05d}.parquet"))
        del shard, df, fresh, table
    return {"num_shards": num_shards, "rows": len(ds)}


def _decode_row(row: dict[str, Any]) -> int:
    import numpy as np

    n = 0
    for v in row.values():
        items = v if isinstance(v, list) else [v]
        for img in items:
            if hasattr(img, "dataobj"):
                n += np.asanyarray(img.dataobj).nbytes
    return n


def child_load(out: str) -> dict[str, Any]:
    from datasets import load_dataset

    t0 = time.perf_counter()
    ds = load_dataset(out, split="train")
    t_load = time.perf_counter() - t0
    mid = len(ds) // 2
    t1 = time.perf_counter()
    row = ds[mid]
    nbytes = _decode_row(row)
    t_row = time.perf_counter() - t1
    feats = {k: repr(v)[:60] for k, v in ds.features.items() if "sha256" not in k}
    return {
        "load_s": t_load,
        "row_s": t_row,
        "rows": len(ds),
        "decoded_bytes": nbytes,
        "nifti_features": sum("Nifti" in v for v in feats.values()),
    }


def child_stream(out: str) -> dict[str, Any]:
    from datasets import load_dataset

    t0 = time.perf_counter()
    ds = load_dataset(out, split="train", streaming=True)
    first = next(iter(ds))
    t_first = time.perf_counter() - t0
    nbytes = _decode_row(first)
    t_dec = time.perf_counter() - t0
    return {"first_s": t_first, "first_decoded_s": t_dec, "decoded_bytes": nbytes}


def child_main(argv: list[str]) -> int:
    mode, *rest = argv
    fn = {"hfpush": child_hfpush, "seed": child_seed, "load": child_load, "stream": child_stream}[
        mode
    ]
    res = fn(*rest)
    print("RESULT " + json.dumps(res))
    return 0


def child_result(r: Run) -> dict[str, Any]:
    for line in r.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    return {}


# ------------------------------------------------------------------------------------------
# the benchmark
# ------------------------------------------------------------------------------------------
class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.cores = os.cpu_count() or 1
        self.out = Path(args.out)
        self.json_path = self.out.with_suffix(".json")
        self.results: dict[str, Any] = {"machine": machine(), "args": vars(args), "sizes": {}}
        command = " ".join(["benchmarks/bench_convert.py", *sys.argv[1:]])
        self.results["commands"] = [command]
        if args.merge and self.json_path.exists():
            old = json.loads(self.json_path.read_text())
            self.results["sizes"] = old.get("sizes", {})
            self.results["args"] = old.get("args", vars(args))
            self.results["machine"] = old.get("machine", self.results["machine"])
            oa = old.get("args", {})
            first = old.get("commands") or [
                "benchmarks/bench_convert.py --sizes {sizes} --repeats {repeats}{shm}{lite}{skip} "
                "--tmp {tmp} --out {out}".format(
                    sizes=oa.get("sizes"),
                    repeats=oa.get("repeats"),
                    tmp=oa.get("tmp"),
                    out=oa.get("out"),
                    shm=" --shm" if oa.get("shm") else "",
                    lite=f" --lite-from {oa['lite_from']}" if oa.get("lite_from") else "",
                    skip=" --skip-datasets" if oa.get("skip_datasets") else "",
                )
            ]
            self.results["commands"] = [*first, command]
        self.can_drop = drop_caches()
        self.loadavg = 0.0
        self.busy = 0.0
        self.results["cache"] = (
            "page cache dropped (sync; echo 3 > /proc/sys/vm/drop_caches) before every timed run"
            if self.can_drop
            else "warm cache: every source file read once before every timed run"
        )

    # -- bookkeeping ------------------------------------------------------------------------
    def log(self, msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    def save(self) -> None:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.json_path.write_text(json.dumps(self.results, indent=1))
        self.out.write_text(render(self.results))

    def prepare_cache(self, files: list[Path], on_shm: bool) -> None:
        if not on_shm:  # tmpfs is always in memory
            if self.can_drop:
                drop_caches()
            else:
                warm(files)
        if not self.args.cold_imports:
            # Dropping the page cache also evicts the interpreter's libraries (pyarrow,
            # datasets, pandas: ~1-3 s of cold imports); load them again, untimed, so the
            # timed run measures the data path with cold *data* and a warm program.
            subprocess.run([PY, "-c", WARM_IMPORTS], check=False)
        self.loadavg = os.getloadavg()[0]
        self.busy = self.wait_idle()

    def wait_idle(self) -> float:
        """CPU use (%) of the whole machine over 1 s; with --wait-idle, wait until it is low."""
        import psutil

        deadline = time.monotonic() + self.args.wait_idle
        busy = psutil.cpu_percent(interval=1.0)
        while busy > self.args.idle_threshold and time.monotonic() < deadline:
            busy = psutil.cpu_percent(interval=1.0)
        return busy

    # -- methods ----------------------------------------------------------------------------
    def time_runs(
        self,
        name: str,
        make_cmd: Any,
        out_path: Path,
        files: list[Path],
        on_shm: bool,
        repeats: int,
        total: int,
        **kw: Any,
    ) -> dict[str, Any]:
        runs = []
        for i in range(repeats):
            rm(out_path)
            self.prepare_cache(files, on_shm)
            src = src_fingerprint()
            r = run_child(make_cmd(), **kw)
            r.loadavg = self.loadavg  # type: ignore[attr-defined]
            r.busy = self.busy  # type: ignore[attr-defined]
            r.src = src  # type: ignore[attr-defined]
            if src_fingerprint() != src:
                r.src = f"{src} (src/ changed during the run)"  # type: ignore[attr-defined]
            status = "ok" if r.ok else r.reason()
            self.log(
                f"  {name} #{i + 1}: {r.seconds:.2f} s, {total / MB / r.seconds:.0f} MB/s, "
                f"maxrss {human(r.maxrss_single)}, tree {human(r.peak_sum)} [{status}]"
            )
            runs.append(r)
            if not r.ok:
                break
        ok = [r for r in runs if r.ok]
        res: dict[str, Any] = {
            "repeats": len(runs),
            "times": [r.seconds for r in runs],
            "cpu_seconds": [r.cpu for r in runs],  # user + system, the child tree
            "ok": len(ok) == len(runs),
            "loadavg_before": [round(r.loadavg, 2) for r in runs],  # type: ignore[attr-defined]
            "cpu_busy_before": [round(r.busy) for r in runs],  # type: ignore[attr-defined]
            "src": sorted({r.src for r in runs}),  # type: ignore[attr-defined]
        }
        if ok:
            med = statistics.median(r.seconds for r in ok)
            res.update(
                seconds=med,
                mb_s=total / MB / med,
                maxrss_single=max(r.maxrss_single for r in ok),
                peak_sum=max(r.peak_sum for r in ok),
                procs=max(r.peak_procs for r in ok),
                extra=child_result(ok[0]),
            )
        else:
            last = runs[-1]
            res["error"] = last.reason()
            res["stderr_tail"] = last.stderr.splitlines()[-40:]
            res["failed_after_s"] = last.seconds
            res["failed_maxrss_single"] = last.maxrss_single
            res["failed_peak_sum"] = last.peak_sum
        if out_path.exists():
            res["out_bytes"] = tree_size(out_path) if out_path.is_dir() else out_path.stat().st_size
        return res

    def bids2hf_cmd(self, bids: Path, out: Path, jobs: int) -> list[str]:
        a = self.args
        return [
            BIDS2HF,
            "convert",
            str(bids),
            str(out),
            "-q",
            "-j",
            str(jobs),
            "--derivatives",
            "all",
            "--max-shard-size",
            a.max_shard_size,
            "--row-group-size",
            a.row_group_size,
            *(["--previews", a.previews] if a.previews is not None else []),
        ]

    def cat_cmd(self, listfile: Path, out: Path) -> list[str]:
        return ["sh", "-c", f"xargs -0 cat < '{listfile}' > '{out}' && sync '{out}'"]

    def run_size(self, label: str, nbytes: int) -> None:
        a = self.args
        lite = a.lite_from is not None and nbytes >= parse_size(a.lite_from)
        repeats = 1 if lite else a.repeats
        res: dict[str, Any] = self.results["sizes"].setdefault(label, {})
        res.update(target=nbytes, lite=lite)
        work = Path(a.tmp) / label
        bids = work / "bids"
        from bids2hf.testing.spec import SyntheticSpec
        from bids2hf.testing.synthetic import generate_bids

        n_subjects = max(4, round(nbytes / a.bytes_per_subject))
        if not bids.exists():
            rm(work)
            self.log(f"{label}: generating {n_subjects} subjects x 2 sessions, {human(nbytes)}")
            g = generate_bids(bids, SyntheticSpec(n_subjects=n_subjects, target_bytes=nbytes))
            self.log(f"{label}: generated {len(g.files)} files in {g.elapsed_seconds:.1f} s")
        files = sorted(p for p in bids.rglob("*") if p.is_file())
        total = sum(p.stat().st_size for p in files)
        nifti = [p for p in files if p.name.endswith((".nii", ".nii.gz"))]
        sizes = sorted(p.stat().st_size for p in nifti)
        res["dataset"] = {
            "files": len(files),
            "nifti": len(nifti),
            "bytes": total,
            "subjects": n_subjects,
            "sessions": 2 * n_subjects,
            "largest_file": sizes[-1] if sizes else 0,
            "median_nifti": sizes[len(sizes) // 2] if sizes else 0,
        }
        listfile = work / "files.list"
        listfile.write_bytes(b"".join(str(p).encode() + b"\0" for p in files))
        self.save()

        def disk_and_mem(
            where: str, src: Path, src_files: list[Path], lst: Path, base: Path, on_shm: bool
        ) -> None:
            m = res.setdefault(where, {})
            out = base / "out"
            for jobs in sorted({1, self.cores}):
                key = f"bids2hf_j{jobs}"
                self.log(f"{label}/{where}: bids2hf -j {jobs}")
                m[key] = self.time_runs(
                    key,
                    lambda jobs=jobs: self.bids2hf_cmd(src, out, jobs),
                    out,
                    src_files,
                    on_shm,
                    repeats,
                    total,
                )
                self.save()
            rm(out)
            self.log(f"{label}/{where}: cat")
            cat_out = base / "cat.out"
            m["cat"] = self.time_runs(
                "cat",
                lambda: self.cat_cmd(lst, cat_out),
                cat_out,
                src_files,
                on_shm,
                repeats,
                total,
            )
            rm(cat_out)
            self.save()

        if not a.only_datasets:
            disk_and_mem("disk", bids, files, listfile, work, False)

        # -- /dev/shm --------------------------------------------------------------------
        if a.shm and not a.only_datasets:
            import psutil

            free_shm = shutil.disk_usage("/dev/shm").free
            avail = psutil.virtual_memory().available
            need = int(total * 2.3)
            if lite or need > free_shm or need > avail - (4 << 30):
                res["shm"] = {
                    "skipped": f"needs ~{human(need)} of tmpfs (2x data); "
                    f"{'lite size' if lite else 'not enough memory'}"
                }
            else:
                shm = Path(tempfile.mkdtemp(prefix="bench-", dir="/dev/shm"))
                try:
                    self.log(f"{label}/shm: copying source to {shm}")
                    shutil.copytree(bids, shm / "bids")
                    sfiles = sorted(p for p in (shm / "bids").rglob("*") if p.is_file())
                    slist = shm / "files.list"
                    slist.write_bytes(b"".join(str(p).encode() + b"\0" for p in sfiles))
                    disk_and_mem("shm", shm / "bids", sfiles, slist, shm, True)
                finally:
                    rm(shm)
            self.save()

        # -- datasets / seed paths -------------------------------------------------------
        cap = parse_size(a.mem_cap)
        if a.skip_datasets or (lite and not a.only_datasets):
            for key in ("datasets", "seed"):
                if not (a.merge and key in res and "skipped" not in res[key]):
                    res[key] = {"skipped": "--skip-datasets" if a.skip_datasets else "lite size"}
        else:
            for mode in ("hfpush", "seed"):
                key = "datasets" if mode == "hfpush" else "seed"
                out = work / f"out_{key}"
                self.log(f"{label}: {key} path")
                res[key] = self.time_runs(
                    key,
                    lambda mode=mode, out=out: [PY, str(HERE), "_child", mode, str(bids), str(out)],
                    out,
                    files,
                    False,
                    a.ds_repeats,
                    total,
                    mem_cap=cap,
                    timeout=a.ds_timeout,
                    cwd=str(work),
                )
                self.save()

        # -- read side -------------------------------------------------------------------
        if a.skip_read or lite:
            if not (a.merge and "read" in res and "skipped" not in res["read"]):
                res["read"] = {"skipped": "--skip-read" if a.skip_read else "lite size"}
        else:
            read = res.setdefault("read", {})
            read.pop("skipped", None)
            out = work / "out_bids2hf"
            if not out.exists():
                self.log(f"{label}: bids2hf output for the read side")
                r = run_child(self.bids2hf_cmd(bids, out, self.cores))
                if not r.ok:
                    read["bids2hf"] = {"error": r.reason()}
            targets = [("bids2hf", out), ("seed", work / "out_seed")]
            for name, path in targets:
                if not (path / "data").exists():
                    read.setdefault(name, {"skipped": "no output"})
                    continue
                entry = read.setdefault(name, {})
                for mode in ("load", "stream"):
                    cache = Path(tempfile.mkdtemp(prefix="hfcache-", dir=a.tmp))
                    env = dict(
                        os.environ,
                        HF_DATASETS_CACHE=str(cache),
                        HF_HUB_OFFLINE="1",
                        HF_DATASETS_OFFLINE="1",
                    )
                    self.prepare_cache([p for p in path.rglob("*") if p.is_file()], False)
                    self.log(f"{label}/read/{name}: {mode}")
                    r = run_child(
                        [PY, str(HERE), "_child", mode, str(path)],
                        env=env,
                        mem_cap=cap,
                        timeout=a.ds_timeout,
                        cwd=str(cache),
                    )
                    entry[mode] = (
                        {
                            "seconds": r.seconds,
                            "maxrss_single": r.maxrss_single,
                            "peak_sum": r.peak_sum,
                            **child_result(r),
                        }
                        if r.ok
                        else {"error": r.reason(), "stderr_tail": r.stderr.splitlines()[-40:]}
                    )
                    self.log(f"    {entry[mode]}")
                    rm(cache)
                    self.save()
        for name in ("out_bids2hf", "out_datasets", "out_seed"):
            rm(work / name)
        if not a.keep:
            rm(work)
        self.save()

    def run(self) -> None:
        m = self.results["machine"]
        m["tmp_fs"] = fs_of(Path(self.args.tmp))
        m["shm_fs"] = fs_of(Path("/dev/shm"))
        print(render_machine(self.results))
        for label in self.args.sizes.split(","):
            self.run_size(label.strip(), parse_size(label))
        self.results["finished"] = _dt.datetime.now().astimezone().isoformat(timespec="seconds")
        self.save()
        print()
        print(render(self.results))


# ------------------------------------------------------------------------------------------
# rendering
# ------------------------------------------------------------------------------------------
def render_machine(res: dict[str, Any]) -> str:
    m = res["machine"]
    lines = [
        "## Machine",
        "",
        f"- date: {m['date']}",
        f"- CPU: {m['cpu']}, {m['cores']} cores; RAM {m['ram']}",
        f"- OS: {m['os']}",
        f"- work dir ({res['args']['tmp']}): {m.get('tmp_fs', '?')}; /dev/shm: {m.get('shm_fs', '?')}",
        f"- python {m['python']}, pyarrow {m['pyarrow']}, datasets {m['datasets']}, "
        f"bids2hf {m['bids2hf']}, nibabel {m['nibabel']}, numpy {m['numpy']}, pandas {m['pandas']}",
        f"- cache: {res.get('cache', '?')}"
        + (
            ""
            if res["args"].get("cold_imports")
            else "; the Python libraries are then re-read "
            "(untimed `python -c 'import bids2hf.cli, datasets, ...'`), so data is cold and the "
            "program warm"
        ),
    ]
    return "\n".join(lines)


def _cell_time(e: dict[str, Any] | None) -> tuple[str, str, str, str]:
    if not e:
        return ("-",) * 4  # type: ignore[return-value]
    if "skipped" in e:
        return (f"skipped ({e['skipped']})", "", "", "")
    if "seconds" not in e:
        if "failed_after_s" in e:
            return (
                f"**failed** after {e['failed_after_s']:.1f} s: {e.get('error', '?')}",
                "",
                human(e.get("failed_maxrss_single")),
                human(e.get("failed_peak_sum")),
            )
        return (f"**failed**: {e.get('error', '?')}", "", "", "")
    times = e.get("times") or []
    rep = f" [{min(times):.2f}-{max(times):.2f}, n={len(times)}]" if len(times) > 1 else ""
    return (
        f"{e['seconds']:.2f}{rep}",
        f"{e['mb_s']:.0f}",
        human(e["maxrss_single"]),
        f"{human(e['peak_sum'])} ({e['procs']} proc)",
    )


def render(res: dict[str, Any]) -> str:
    a = res["args"]
    cmds = res.get("commands") or [
        f"benchmarks/bench_convert.py --sizes {a['sizes']} --repeats {a['repeats']}"
    ]
    out = [
        "# bids2hf conversion benchmark",
        "",
        "Generated by:",
        "",
        "```",
        *[f".venv/bin/python {c}" for c in cmds],
        "```",
        "",
        render_machine(res),
        "",
        "## Write side",
        "",
        "Throughput = bytes of the source BIDS folder / wall time (median of the repeats; "
        "[min-max, n] in brackets); "
        "bids2hf options: `--max-shard-size "
        f"{a['max_shard_size']} --row-group-size {a['row_group_size']} --derivatives all`. "
        "Peak RSS *max proc* is the kernel's `ru_maxrss` of the largest single process of the "
        "child tree; *tree sum* is the largest sum of RSS over the tree, polled every 50 ms (the process count "
        "includes the `/usr/bin/time` wrapper and, with `-j N`, the multiprocessing helpers). "
        "`cat` = `xargs -0 cat < list > out && sync out` on the same filesystem (bids2hf fsyncs "
        "its shards too).",
        "",
        "| size | where | method | wall s | MB/s | x cat | peak RSS max proc | peak RSS tree sum | notes |",
        "|---|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for label, s in res["sizes"].items():
        ds = s.get("dataset", {})
        size_txt = f"{label} ({human(ds.get('bytes'))}, {ds.get('files', '?')} files, {ds.get('sessions', '?')} sessions)"
        for where in ("disk", "shm"):
            m = s.get(where)
            if not m:
                continue
            if "skipped" in m:
                out.append(
                    f"| {size_txt} | {where} | bids2hf + cat | skipped: {m['skipped']} | | | | | |"
                )
                continue
            cat = m.get("cat", {})
            for key in [*sorted(k for k in m if k.startswith("bids2hf")), "cat"]:
                e = m.get(key)
                t, mbs, rss1, rss2 = _cell_time(e)
                ratio = ""
                if e and "mb_s" in e and "mb_s" in cat and key != "cat":
                    ratio = f"{e['mb_s'] / cat['mb_s']:.2f}"
                name = key.replace("bids2hf_j", "bids2hf -j ")
                notes = ""
                if e and "out_bytes" in e and key != "cat":
                    notes = f"output {human(e['out_bytes'])}"
                if e and e.get("loadavg_before"):
                    notes += (
                        f"{'; ' if notes else ''}load avg before {max(e['loadavg_before']):.1f}"
                    )
                if e and e.get("cpu_busy_before"):
                    notes += f", CPU busy before {max(e['cpu_busy_before'])}%"
                if e and any(e.get("cpu_seconds") or ()):
                    cpus = ", ".join(f"{c:.2f}" for c in e["cpu_seconds"])
                    notes += f"; CPU s (user+sys) {cpus}"
                out.append(
                    f"| {size_txt} | {where} | {name} | {t} | {mbs} | {ratio} | {rss1} | {rss2} | {notes} |"
                )
        disk_cat = s.get("disk", {}).get("cat", {})
        for key in ("datasets", "seed"):
            e = s.get(key)
            if not e:
                continue
            t, mbs, rss1, rss2 = _cell_time(e)
            ratio = (
                f"{e['mb_s'] / disk_cat['mb_s']:.2f}" if "mb_s" in e and "mb_s" in disk_cat else ""
            )
            ex = e.get("extra", {})
            notes = ""
            if key == "datasets" and ex:
                notes = (
                    f"_estimate_nbytes={human(ex.get('estimate_nbytes'))} -> num_shards="
                    f"{ex.get('num_shards')}, writer_batch_size={ex.get('writer_batch_size')}"
                )
            elif key == "seed" and ex:
                notes = f"{ex.get('num_shards')} shards (1 session each)"
            if "out_bytes" in e and "seconds" in e:
                notes += f"; output {human(e['out_bytes'])}"
            name = "datasets push_to_hub path" if key == "datasets" else "seed (pandas round trip)"
            out.append(
                f"| {size_txt} | disk | {name} | {t} | {mbs} | {ratio} | {rss1} | {rss2} | {notes} |"
            )
    seen: dict[str, list[str]] = {}
    for label, s in res["sizes"].items():
        for where in ("disk", "shm"):
            for key, e in (s.get(where) or {}).items():
                if isinstance(e, dict):
                    for v in e.get("src", []):
                        seen.setdefault(v, []).append(f"{label}/{where}/{key}")
        for key in ("datasets", "seed"):
            for v in (s.get(key) or {}).get("src", []):
                seen.setdefault(v, []).append(f"{label}/{key}")
    if seen:
        out += [
            "",
            "bids2hf source measured (git commit + hash of src/**/*.py, since src/ is "
            "edited concurrently):",
            "",
        ]
        out += [f"- `{v}`: {', '.join(w)}" for v, w in seen.items()]
    out += [
        "",
        "## Read side",
        "",
        "Child processes, fresh `HF_DATASETS_CACHE` each, page cache dropped before each. "
        "*load* = `load_dataset(OUT, split='train')` (prepares the Arrow cache); *row* = "
        "`ds[len(ds)//2]` with every image's voxels read (`np.asanyarray(img.dataobj)`); "
        "*stream first* = `load_dataset(OUT, split='train', streaming=True)` + `next(iter(ds))`.",
        "",
        "| size | output | load s | load peak RSS (max proc / tree) | row s (decoded) | stream first example s | stream peak RSS |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for label, s in res["sizes"].items():
        rd = s.get("read", {})
        if "skipped" in rd:
            out.append(f"| {label} | - | skipped ({rd['skipped']}) | | | | |")
            continue
        for name, e in rd.items():
            if "skipped" in e or "error" in e:
                out.append(f"| {label} | {name} | {e.get('skipped') or e.get('error')} | | | | |")
                continue
            ld, st = e.get("load", {}), e.get("stream", {})
            if "error" in ld:
                lcell, rcell, row = f"failed: {ld['error']}", "", ""
            else:
                lcell = f"{ld.get('load_s', 0):.2f}"
                rcell = f"{human(ld.get('maxrss_single'))} / {human(ld.get('peak_sum'))}"
                row = f"{ld.get('row_s', 0):.2f} ({human(ld.get('decoded_bytes'))})"
            if "error" in st:
                scell, srss = f"failed: {st['error']}", ""
            else:
                scell = f"{st.get('first_s', 0):.2f} (+decode {st.get('first_decoded_s', 0) - st.get('first_s', 0):.2f})"
                srss = human(st.get("peak_sum"))
            out.append(f"| {label} | {name} | {lcell} | {rcell} | {row} | {scell} | {srss} |")
    out += ["", "## Datasets", ""]
    for label, s in res["sizes"].items():
        ds = s.get("dataset", {})
        out.append(
            f"- {label}: {ds.get('subjects')} subjects x 2 sessions, {ds.get('files')} files "
            f"({ds.get('nifti')} NIfTI), {human(ds.get('bytes'))}; median NIfTI "
            f"{human(ds.get('median_nifti'))}, largest {human(ds.get('largest_file'))}"
        )
    return "\n".join(out) + "\n"


# ------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_child":
        return child_main(argv[1:])
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="1G", help="comma separated dataset sizes, e.g. 1G,3G,10G")
    p.add_argument(
        "--repeats", type=int, default=3, help="runs per bids2hf/cat measurement (median)"
    )
    p.add_argument("--ds-repeats", type=int, default=1, help="runs of the datasets and seed paths")
    p.add_argument("--tmp", default="/work/bench-tmp", help="work dir (not inside the repo)")
    p.add_argument("--shm", action="store_true", help="also measure bids2hf and cat on /dev/shm")
    p.add_argument("--skip-datasets", action="store_true", help="skip the datasets and seed paths")
    p.add_argument("--skip-read", action="store_true", help="skip the read side")
    p.add_argument(
        "--lite-from",
        default=None,
        help="sizes >= this: 1 repeat, bids2hf and cat on disk only (e.g. 10G)",
    )
    p.add_argument(
        "--cold-imports",
        action="store_true",
        help="do not reload the Python libraries into the page cache after dropping it",
    )
    p.add_argument(
        "--only-datasets",
        action="store_true",
        help="run only the datasets and seed paths (with --merge: add them to --out)",
    )
    p.add_argument(
        "--merge",
        action="store_true",
        help="add to the results already in --out's .json instead of replacing them",
    )
    p.add_argument(
        "--wait-idle",
        type=float,
        default=0,
        metavar="SECONDS",
        help="before each timed run wait up to SECONDS for the machine's CPU use "
        "(over 1 s) to fall below --idle-threshold (other work on the machine)",
    )
    p.add_argument("--idle-threshold", type=float, default=20, help="percent, for --wait-idle")
    p.add_argument("--keep", action="store_true", help="keep generated datasets in --tmp")
    p.add_argument("--out", default=str(REPO / "benchmarks/results/RESULTS.md"))
    p.add_argument("--max-shard-size", default="500MB")
    p.add_argument("--row-group-size", default="128MiB")
    p.add_argument("--previews", default=None, help="bids2hf convert --previews (0: none)")
    p.add_argument(
        "--bytes-per-subject",
        type=parse_size,
        default=parse_size("80MB"),
        help="subjects = size / this (2 sessions each)",
    )
    p.add_argument(
        "--mem-cap", default="16G", help="kill datasets/seed/read children above this RSS"
    )
    p.add_argument("--ds-timeout", type=float, default=900, help="seconds per datasets/seed child")
    args = p.parse_args(argv)
    tmp = Path(args.tmp).absolute()
    if REPO in (tmp, *tmp.parents):
        p.error("--tmp must be outside the repository")
    tmp.mkdir(parents=True, exist_ok=True)
    bench = Bench(args)
    try:
        bench.run()
    finally:
        if not args.keep:
            for label in args.sizes.split(","):
                rm(tmp / label.strip())
            with contextlib.suppress(OSError):
                tmp.rmdir()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
