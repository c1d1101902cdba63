#!/usr/bin/env python
"""Streaming publication benchmark: is convert+upload as fast as the slower of the two alone?

Target (from the issue): with the Hub emulator's upload bandwidth limited,
``convert+upload wall time <= 1.15 x max(convert alone, upload alone)``.

Run from the repository root::

    .venv/bin/python benchmarks/bench_publish.py --size 1G --bandwidth match,50MB --repeats 3 \
        --tmp /work/bench-tmp-publish --out benchmarks/results/PUBLISH.md

One synthetic BIDS dataset is generated (not timed) and one reference conversion of it is made
(timed as a calibration run; it is the folder that ``push`` uploads).  Then, for every bandwidth
setting and every repeat, three child processes are timed (wall clock):

* (a) ``bids2hf convert BIDS OUT -q``                     convert alone, to a fresh local folder;
* (b) ``bids2hf push OUT hf://datasets/bench/rN -q``      upload alone, fresh emulator and repo;
* (c) ``bids2hf convert BIDS hf://datasets/bench/sN -q``  streaming convert+upload, fresh
  emulator and repo; during (c) the staging folder (``$BIDS2HF_CACHE``) is polled every 50 ms
  for the bytes of its ``*.parquet`` files (and, separately, of all its files, which includes
  shards still being written under ``.bids2hf/tmp``).

The order of (a), (b), (c) rotates between repeats so that drifting machine load does not
always favour the same one.  Each emulator is started fresh (``tests/hub_emulator.py --port 0
--root DIR --upload-bandwidth B``) and stopped after its measurement; its CPU time is recorded
(it shares the cores with the client: it hashes and stores every byte it receives).

A setting is ``BW[@SHARDSIZE][/jN]``.  ``BW`` is a size per second (``50MB``, ``120MiB``),
``0``/``none`` (unlimited) or ``match``: the bandwidth at which the pure transfer time of the
converted bytes equals the median convert-alone time measured so far (``match`` settings run
after the fixed ones).  ``@500MB`` uses another ``--max-shard-size`` for that setting (with its
own reference conversion), ``/j1`` another worker count for its (a) and (c) runs.

``--trace`` (default on) adds one extra, separately reported run of (b) and (c) per setting
inside a small wrapper (``--trace-child``) that times the publisher's phases (scan/plan,
shard writes, writer waits for a staging slot, hashing, each upload, commits, final commit,
verification) without touching ``src/``; the timed runs above are the plain CLI.

Nothing drops the page cache (another benchmark may share the machine): runs are warm.  The
load average is recorded before every measurement; use medians (``--repeats``).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import itertools
import json
import os
import platform
import resource
import select
import shutil
import statistics
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
EMULATOR = REPO / "tests" / "hub_emulator.py"
TARGET_RATIO = 1.15
MARKER = ".bench_publish_tmp"


# ------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------
def parse_size(text: str) -> int:
    """Sizes and bandwidths: ``50MB``, ``150MB/s``, ``1GiB``."""
    return units.parse_size(text.strip().replace(" ", "").removesuffix("/s"))


def human(n: float | None, unit: str = "B") -> str:
    if n is None:
        return "-"
    for prefix in ("", "K", "M", "G", "T"):
        if abs(n) < 1000 or prefix == "T":
            return f"{n:.0f} {prefix}{unit}" if prefix in ("", "K") else f"{n:.2f} {prefix}{unit}"
        n /= 1000
    return str(n)


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "load average: " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def tree_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def median(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def fmt_s(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def bw_label(bw: float | None) -> str:
    return "unlimited" if not bw else f"{bw / 1e6:.0f} MB/s"


# ------------------------------------------------------------------------------------------
# emulator, staging poller, timed child processes
# ------------------------------------------------------------------------------------------
class Emulator:
    """``tests/hub_emulator.py`` as a child process with its own storage folder."""

    def __init__(self, root: Path, bandwidth: float | None) -> None:
        self.root = root
        root.mkdir(parents=True)
        cmd = [PY, str(EMULATOR), "--port", "0", "--root", str(root)]
        if bandwidth:
            cmd += ["--upload-bandwidth", str(int(bandwidth))]
        self.log = open(root.parent / (root.name + ".log"), "wb")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self.log)
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], 30)
        line = self.proc.stdout.readline().decode().strip() if ready else ""
        if not line.startswith("http"):
            self.stop()
            raise RuntimeError(f"the hub emulator did not start (see {self.log.name})")
        self.url = line

    def cpu_seconds(self) -> float | None:
        try:
            import psutil

            t = psutil.Process(self.proc.pid).cpu_times()
            return t.user + t.system
        except Exception:
            return None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()  # only the emulator this object started (by its pid)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.log.close()
        shutil.rmtree(self.root, ignore_errors=True)


class StagingPoller:
    """Polls a folder every ``interval`` s: bytes of ``*.parquet`` files and of all files."""

    def __init__(self, folder: Path, interval: float = 0.05) -> None:
        self.folder, self.interval = folder, interval
        self.peak_parquet = self.peak_all = self.peak_count = 0
        self.samples: list[tuple[float, int, int, int]] = []  # (time, parquet, all, n parquet)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _measure(self) -> tuple[int, int, int]:
        parquet = everything = count = 0
        for dirpath, _dirs, files in os.walk(self.folder):
            for name in files:
                try:
                    size = os.stat(os.path.join(dirpath, name)).st_size
                except FileNotFoundError:  # uploaded and deleted meanwhile
                    continue
                everything += size
                if name.endswith(".parquet"):
                    parquet += size
                    count += 1
        return parquet, everything, count

    def _run(self) -> None:
        while not self._stop.is_set():
            parquet, everything, count = self._measure()
            self.samples.append((time.time(), parquet, everything, count))
            self.peak_parquet = max(self.peak_parquet, parquet)
            self.peak_all = max(self.peak_all, everything)
            self.peak_count = max(self.peak_count, count)
            self._stop.wait(self.interval)

    def __enter__(self) -> StagingPoller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def run_child(cmd: list[str], env: dict[str, str], log: Path) -> dict[str, Any]:
    """Run ``cmd``; wall time, CPU time of the whole child tree (rusage), exit code."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    load = os.getloadavg()[0]
    start_epoch = time.time()
    t0 = time.perf_counter()
    with open(log, "wb") as fh:
        rc = subprocess.run(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT).returncode
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    text = log.read_text(errors="replace")
    return {
        "wall": wall,
        "cpu": cpu,
        "rc": rc,
        "load_before": load,
        "start": start_epoch,
        "verified": "verified" in text,
        "tail": text.strip().splitlines()[-3:],
    }


# ------------------------------------------------------------------------------------------
# the traced child: the CLI with timers around the publisher's phases
# ------------------------------------------------------------------------------------------
def trace_child(trace_path: str, argv: list[str]) -> None:
    """Run ``bids2hf ARGV`` in this process, recording when each publishing phase ran."""
    t_start = time.time()
    import bids2hf.api as C
    import bids2hf.cli.commands as cli
    import bids2hf.conversion.writing as W
    import bids2hf.publish.pipeline as P
    import bids2hf.publish.targets.base as T
    import bids2hf.publish.targets.hub as H
    import bids2hf.publish.uploader as U
    import bids2hf.write.state_store as S

    events: list[dict[str, Any]] = []
    t_imported = time.time()

    def wrap(
        owner: Any, name: str, label: str, key: Any = None, min_s: float = 0.0, when: Any = None
    ) -> None:
        orig = getattr(owner, name)

        def wrapper(*a: Any, **k: Any) -> Any:
            if when is not None and not when(*a, **k):
                return orig(*a, **k)
            s, cpu = time.time(), time.thread_time()
            try:
                return orig(*a, **k)
            finally:
                e = time.time()
                if e - s >= min_s:
                    ev = {
                        "what": label,
                        "start": s,
                        "end": e,
                        "cpu": time.thread_time() - cpu,
                        "thread": threading.current_thread().name,
                    }
                    if key is not None:
                        ev.update(key(*a, **k))
                    events.append(ev)

        setattr(owner, name, wrapper)

    item_info = lambda self, item, *a, **k: {"path": item.path, "bytes": item.size}  # noqa: E731
    wrap(C, "scan_and_plan", "scan+plan")
    wrap(C, "write_shards", "write shards (all)")
    wrap(W, "finish_output", "dataset files, manifest, card")
    wrap(P.RemoteRun, "finish", "final: join uploads, last commit, verify")
    wrap(U.Publisher, "acquire", "writer waits for a staging slot", min_s=0.002)
    wrap(U.Publisher, "submit", "shard handed to uploader", key=item_info)
    wrap(U.Publisher, "finish", "publisher.finish (join + last commit)")
    wrap(
        T.StagedFile,
        "checksum",
        "hash (sha256)",
        key=lambda self: {"path": self.path, "bytes": self.size},
        when=lambda self: self.sha256 is None,
    )
    wrap(H.HubTarget, "stage", "upload (preupload+LFS PUT)", key=item_info)
    wrap(
        H.HubTarget,
        "commit",
        "commit",
        key=lambda self, items, deletions, message: {"files": len(items)},
    )
    wrap(H.HubTarget, "files", "list remote tree")
    wrap(H.HubTarget, "ensure", "create repo")
    wrap(H.HubTarget, "head", "head")
    wrap(S.StateStore, "_append", "save state (write+fsync)")
    wrap(P, "verify_remote", "verify remote")
    rc = 0
    try:
        cli.main(argv, prog_name="bids2hf")
    except SystemExit as exc:
        rc = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        Path(trace_path).write_text(
            json.dumps(
                {
                    "t_start": t_start,
                    "t_imported": t_imported,
                    "t_end": time.time(),
                    "events": events,
                }
            )
        )
    sys.exit(rc)


def analyse_trace(
    trace: dict[str, Any],
    wall_start: float,
    wall: float,
    bandwidth: float | None,
    samples: list[tuple[float, int, int, int]] | None,
) -> dict[str, Any]:
    """Where the time of one traced run went (all times relative to the child's launch)."""
    ev = trace["events"]
    rel = lambda t: t - wall_start  # noqa: E731

    def of(what: str) -> list[dict[str, Any]]:
        return sorted((e for e in ev if e["what"] == what), key=lambda e: e["start"])

    def total(what: str) -> float:
        return sum(e["end"] - e["start"] for e in of(what))

    uploads, hashes = of("upload (preupload+LFS PUT)"), of("hash (sha256)")
    commits, submits = of("commit"), of("shard handed to uploader")
    out: dict[str, Any] = {
        "wall": wall,
        "python start + imports": trace["t_imported"] - wall_start,
        "events": [],
    }
    for what in (
        "scan+plan",
        "create repo",
        "list remote tree",
        "write shards (all)",
        "dataset files, manifest, card",
        "final: join uploads, last commit, verify",
        "publisher.finish (join + last commit)",
        "verify remote",
    ):
        for e in of(what):
            out["events"].append((what, rel(e["start"]), rel(e["end"])))
    for i, e in enumerate(commits):
        out["events"].append(
            (f"commit #{i + 1} ({e.get('files')} files)", rel(e["start"]), rel(e["end"]))
        )
    up_bytes = sum(e["bytes"] for e in uploads)
    up_time = total("upload (preupload+LFS PUT)")
    out["uploads"] = len(uploads)
    out["upload bytes"] = up_bytes
    out["upload busy s"] = up_time
    out["upload thread CPU s"] = sum(e["cpu"] for e in uploads)
    out["upload rate"] = up_bytes / up_time if up_time else None
    out["pure transfer s"] = up_bytes / bandwidth if bandwidth else None
    out["hash s (upload thread)"] = sum(
        e["end"] - e["start"] for e in hashes if e["thread"] == "bids2hf-upload"
    )
    out["hash s (main thread)"] = sum(
        e["end"] - e["start"] for e in hashes if e["thread"] != "bids2hf-upload"
    )
    out["hash bytes"] = sum(e["bytes"] for e in hashes)
    out["commit s"] = total("commit")
    out["state saves in upload thread s"] = sum(
        e["end"] - e["start"]
        for e in of("save state (write+fsync)")
        if e["thread"] == "bids2hf-upload"
    )
    out["writer blocked s"] = total("writer waits for a staging slot")
    out["writer blocked n"] = len(of("writer waits for a staging slot"))
    if uploads:
        first, last = uploads[0], uploads[-1]
        out["first upload starts"] = rel(first["start"])
        out["last upload ends"] = rel(last["end"])
        # Link idle between the first upload's start and the last upload's end.
        gaps, gap_hash, gap_starved = 0.0, 0.0, 0.0
        ready = {e["path"]: e["start"] for e in submits}
        for prev, cur in itertools.pairwise(uploads):
            gap = max(0.0, cur["start"] - prev["end"])
            gaps += gap
            h = sum(
                max(0.0, min(x["end"], cur["start"]) - max(x["start"], prev["end"]))
                for x in hashes
                if x["thread"] == "bids2hf-upload"
            )
            gap_hash += h
            # Part of the gap where the next shard did not exist yet (writer behind).
            r = ready.get(cur["path"])
            if r is not None and r > prev["end"]:
                gap_starved += min(gap, r - prev["end"])
        out["link idle between uploads s"] = gaps
        out["  of which hashing s"] = gap_hash
        out["  of which waiting for the next shard s"] = gap_starved
    if submits:
        out["first shard written"] = rel(submits[0]["start"])
        out["last shard written"] = rel(submits[-1]["start"])
    if samples:
        out["peak staged parquet"] = max(s[1] for s in samples)
    written = {e["path"]: rel(e["start"]) for e in submits}
    hashed = {e["path"]: (rel(e["start"]), rel(e["end"])) for e in hashes}
    out["shards"] = [
        (
            e["path"].rsplit("/", 1)[-1].removesuffix(".parquet"),
            e["bytes"],
            written.get(e["path"]),
            hashed.get(e["path"]),
            rel(e["start"]),
            rel(e["end"]),
        )
        for e in uploads
        if e["path"].startswith("data/")
    ]
    return out


# ------------------------------------------------------------------------------------------
# the benchmark
# ------------------------------------------------------------------------------------------
class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.tmp: Path = args.tmp.resolve()
        self.bids = self.tmp / "bids"
        self.refs: dict[str, Path] = {}  # shard size -> reference conversion (pushed by (b))
        self.outputs: dict[str, dict[str, Any]] = {}  # shard size -> what it holds
        self.calib: dict[str, float] = {}  # shard size -> reference conversion wall time
        self.results: list[dict[str, Any]] = []
        self.traces: list[dict[str, Any]] = []
        self.counter = 0
        self.jobs = ["-j", str(args.workers)] if args.workers else []
        self.pub_opts: list[str] = []
        if args.commit_every:
            self.pub_opts += ["--commit-every", str(args.commit_every)]
        self.stage_opts = ["--max-staged", str(args.max_staged)] if args.max_staged else []
        self.meta: dict[str, Any] = {}

    # -- setup ------------------------------------------------------------------------------
    def prepare_tmp(self) -> None:
        fresh_scratch(self.tmp, REPO, MARKER, "bench_publish.py")

    def env(self, run_dir: Path, endpoint: str | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "BIDS2HF_"))}
        env.update(
            {
                "HF_HUB_DISABLE_XET": "1",
                "HF_TOKEN": "x",
                "HF_HOME": str(run_dir / "hf-home"),
                "BIDS2HF_CACHE": str(run_dir / "cache"),
                "HF_HUB_DISABLE_TELEMETRY": "1",
                "PYTHONUNBUFFERED": "1",
            }
        )
        if endpoint:
            env["HF_ENDPOINT"] = endpoint
        return env

    def new_run_dir(self) -> Path:
        self.counter += 1
        d = self.tmp / f"run-{self.counter:03d}"
        d.mkdir()
        return d

    def generate(self) -> None:
        from bids2hf.testing.spec import SyntheticSpec
        from bids2hf.testing.synthetic import generate_bids

        size = parse_size(self.args.size)
        subjects = max(1, round(size / self.args.bytes_per_subject))
        t0 = time.perf_counter()
        g = generate_bids(self.bids, SyntheticSpec(n_subjects=subjects, target_bytes=size))
        self.meta["dataset"] = {
            "size arg": self.args.size,
            "subjects": subjects,
            "files": len(g.files),
            "source bytes": g.total_bytes,
            "generate s": time.perf_counter() - t0,
        }
        print(
            f"generated {len(g.files)} files, {human(g.total_bytes)} ({subjects} subjects) "
            f"in {time.perf_counter() - t0:.1f} s",
            flush=True,
        )

    def conv_opts(self, shard_size: str, jobs: list[str] | None = None) -> list[str]:
        return ["--max-shard-size", shard_size, *(self.jobs if jobs is None else jobs)]

    def calibrate(self, shard_size: str) -> None:
        """The reference conversion: the folder every push uploads; also a timed convert."""
        if shard_size in self.refs:
            return
        run_dir = self.new_run_dir()
        ref = self.tmp / f"out-ref-{len(self.refs)}"
        r = run_child(
            [BIDS2HF, "convert", str(self.bids), str(ref), "-q", *self.conv_opts(shard_size)],
            self.env(run_dir),
            run_dir / "log.txt",
        )
        shutil.rmtree(run_dir, ignore_errors=True)
        if r["rc"] != 0:
            sys.exit(f"reference conversion failed: {r['tail']}")
        shards = sorted((ref / "data").glob("*.parquet"))
        self.refs[shard_size] = ref
        self.outputs[shard_size] = {
            "bytes": tree_bytes(ref) - tree_bytes(ref / ".bids2hf"),
            "shards": len(shards),
            "shard bytes": sum(p.stat().st_size for p in shards),
            "largest shard": max((p.stat().st_size for p in shards), default=0),
        }
        self.calib[shard_size] = r["wall"]
        print(
            f"reference conversion (--max-shard-size {shard_size}): {r['wall']:.2f} s, "
            f"{len(shards)} shards, {human(self.outputs[shard_size]['bytes'])}",
            flush=True,
        )

    # -- measurements -----------------------------------------------------------------------
    def measure(
        self,
        kind: str,
        setting: str,
        bw: float | None,
        rep: int,
        ss: str,
        jobs: list[str] | None = None,
    ) -> dict[str, Any]:
        run_dir = self.new_run_dir()
        emu = None
        rec: dict[str, Any] = {
            "kind": kind,
            "setting": setting,
            "bandwidth": bw,
            "repeat": rep,
            "shard_size": ss,
            "jobs": jobs,
        }
        try:
            if kind == "a":
                out = run_dir / "out"
                cmd = [
                    BIDS2HF,
                    "convert",
                    str(self.bids),
                    str(out),
                    "-q",
                    *self.conv_opts(ss, jobs),
                ]
                rec.update(run_child(cmd, self.env(run_dir), run_dir / "log.txt"))
            else:
                emu = Emulator(run_dir / "hub", bw)
                env = self.env(run_dir, emu.url)
                cpu0 = emu.cpu_seconds()
                if kind == "b":
                    url = f"hf://datasets/bench/r{self.counter}"
                    cmd = [BIDS2HF, "push", str(self.refs[ss]), url, "-q", *self.pub_opts]
                    rec.update(run_child(cmd, env, run_dir / "log.txt"))
                else:
                    url = f"hf://datasets/bench/s{self.counter}"
                    cmd = [
                        BIDS2HF,
                        "convert",
                        str(self.bids),
                        url,
                        "-q",
                        *self.conv_opts(ss, jobs),
                        *self.pub_opts,
                        *self.stage_opts,
                    ]
                    (run_dir / "cache").mkdir()
                    with StagingPoller(run_dir / "cache") as poll:
                        rec.update(run_child(cmd, env, run_dir / "log.txt"))
                    rec.update(
                        peak_parquet=poll.peak_parquet,
                        peak_all=poll.peak_all,
                        peak_count=poll.peak_count,
                    )
                cpu1 = emu.cpu_seconds()
                if cpu0 is not None and cpu1 is not None:
                    rec["emu_cpu"] = cpu1 - cpu0
            rec["ok"] = rec["rc"] == 0 and (kind == "a" or rec["verified"])
        finally:
            if emu is not None:
                emu.stop()
            shutil.rmtree(run_dir, ignore_errors=True)
        peak = (
            f", peak staged {human(rec['peak_parquet'])} (+tmp {human(rec['peak_all'])})"
            if kind == "c"
            else ""
        )
        print(
            f"  [{setting} r{rep}] ({kind}) {rec['wall']:7.2f} s  cpu {rec['cpu']:6.2f} s  "
            f"emu cpu {rec.get('emu_cpu', 0):5.2f} s  load {rec['load_before']:.2f}"
            f"{peak}{'' if rec['ok'] else '  FAILED: ' + ' | '.join(rec['tail'])}",
            flush=True,
        )
        self.results.append(rec)
        return rec

    def trace(
        self, kind: str, setting: str, bw: float | None, ss: str, jobs: list[str] | None = None
    ) -> None:
        run_dir = self.new_run_dir()
        emu = Emulator(run_dir / "hub", bw)
        try:
            env = self.env(run_dir, emu.url)
            tfile = run_dir / "trace.json"
            if kind == "b":
                args = [
                    "push",
                    str(self.refs[ss]),
                    f"hf://datasets/bench/t{self.counter}",
                    "-q",
                    *self.pub_opts,
                ]
            else:
                args = [
                    "convert",
                    str(self.bids),
                    f"hf://datasets/bench/t{self.counter}",
                    "-q",
                    *self.conv_opts(ss, jobs),
                    *self.pub_opts,
                    *self.stage_opts,
                ]
            cmd = [PY, str(HERE), "--trace-child", str(tfile), "--", *args]
            (run_dir / "cache").mkdir()
            with StagingPoller(run_dir / "cache") as poll:
                r = run_child(cmd, env, run_dir / "log.txt")
            if r["rc"] != 0 or not tfile.exists():
                print(f"  trace ({kind}, {setting}) failed: {r['tail']}", flush=True)
                return
            a = analyse_trace(
                json.loads(tfile.read_text()),
                r["start"],
                r["wall"],
                bw,
                poll.samples if kind == "c" else None,
            )
            a.update(
                kind=kind,
                setting=setting,
                bandwidth=bw,
                load_before=r["load_before"],
                cpu=r["cpu"],
                shard_size=ss,
            )
            self.traces.append(a)
            print(
                f"  [{setting} trace] ({kind}) {r['wall']:.2f} s: uploads {a['upload busy s']:.2f} s"
                f" busy, link idle {a.get('link idle between uploads s', 0):.2f} s"
                f" (hashing {a.get('  of which hashing s', 0):.2f} s), writer blocked "
                f"{a['writer blocked s']:.2f} s, commits {a['commit s']:.2f} s",
                flush=True,
            )
        finally:
            emu.stop()
            shutil.rmtree(run_dir, ignore_errors=True)

    def run(self) -> None:
        args = self.args
        self.meta.update(
            started=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            uptime_start=uptime(),
            fingerprint_start=src_fingerprint(),
        )
        print(self.meta["uptime_start"], flush=True)
        self.prepare_tmp()
        try:
            self.generate()
            self.calibrate(args.max_shard_size)
            settings = [s.strip() for s in args.bandwidth.split(",") if s.strip()]
            # match needs convert times first: fixed bandwidths run before it
            settings.sort(key=lambda s: s.lower().startswith("match"))
            for setting in settings:
                setting, _, workers = setting.partition("/j")
                jobs = ["-j", workers] if workers else None
                bw_text, _, ss = setting.partition("@")
                ss = ss or args.max_shard_size
                self.calibrate(ss)
                if bw_text.lower() == "match":
                    conv = [
                        r["wall"]
                        for r in self.results
                        if r["kind"] == "a"
                        and r["ok"]
                        and r["shard_size"] == ss
                        and r["jobs"] == jobs
                    ]
                    conv.append(self.calib[ss])
                    matched = self.outputs[ss]["bytes"] / statistics.median(conv)
                    bw: float | None = round(matched / 1e6) * 1e6
                    label = f"match ({bw_label(bw)})"
                elif bw_text.lower() in ("0", "none", "unlimited", "inf"):
                    bw, label = None, "unlimited"
                else:
                    bw = parse_size(bw_text)
                    label = bw_label(bw)
                if ss != args.max_shard_size:
                    label += f", shards {ss}"
                if jobs:
                    label += f", -j {workers}"
                print(f"setting {label}: {uptime()}", flush=True)
                orders = [("a", "b", "c"), ("c", "a", "b"), ("b", "c", "a")]
                for rep in range(args.repeats):
                    for kind in orders[rep % 3]:
                        self.measure(kind, label, bw, rep, ss, jobs)
                if args.trace:
                    self.trace("b", label, bw, ss)
                    self.trace("c", label, bw, ss, jobs)
            self.meta.update(
                uptime_end=uptime(),
                fingerprint_end=src_fingerprint(),
                finished=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            )
            print(self.meta["uptime_end"], flush=True)
            text = self.render()
            print("\n" + text)
            if args.out:
                Path(args.out).parent.mkdir(parents=True, exist_ok=True)
                Path(args.out).write_text(text)
                print(f"\nwritten to {args.out}")
        finally:
            if not args.keep:
                shutil.rmtree(self.tmp, ignore_errors=True)

    # -- report -----------------------------------------------------------------------------
    def summary(self) -> list[dict[str, Any]]:
        rows = []
        for setting in dict.fromkeys(r["setting"] for r in self.results):
            rs = [r for r in self.results if r["setting"] == setting]
            by = {k: [r["wall"] for r in rs if r["kind"] == k and r["ok"]] for k in "abc"}
            a, b, c = (median(by[k]) for k in "abc")
            ratio = c / max(a, b) if a and b and c else None
            per_rep = []
            for rep in sorted({r["repeat"] for r in rs}):
                w = {r["kind"]: r["wall"] for r in rs if r["repeat"] == rep and r["ok"]}
                if len(w) == 3:
                    per_rep.append(w["c"] / max(w["a"], w["b"]))
            cs = [r for r in rs if r["kind"] == "c" and r["ok"]]
            rows.append(
                {
                    "setting": setting,
                    "bandwidth": rs[0]["bandwidth"],
                    "a": a,
                    "b": b,
                    "c": c,
                    "shard_size": rs[0]["shard_size"],
                    "n": {k: len(v) for k, v in by.items()},
                    "range": {k: (min(v), max(v)) if v else None for k, v in by.items()},
                    "ratio": ratio,
                    "per_rep": per_rep,
                    "met": None if ratio is None else ratio <= TARGET_RATIO,
                    "peak_parquet": max((r["peak_parquet"] for r in cs), default=None),
                    "peak_all": max((r["peak_all"] for r in cs), default=None),
                    "peak_count": max((r["peak_count"] for r in cs), default=None),
                    "failed": [r for r in rs if not r["ok"]],
                    "load": median([r["load_before"] for r in rs]),
                }
            )
        return rows

    def render(self) -> str:
        args, meta = self.args, self.meta
        ds = meta["dataset"]
        workers = args.workers or os.cpu_count()
        staged = args.max_staged or 2 * (workers or 1)
        L = [
            "# bids2hf streaming publication benchmark",
            "",
            f"Generated by `benchmarks/bench_publish.py` (`{' '.join(sys.argv[1:])}`).",
            "",
            f"Target (issue): with the emulator's upload bandwidth limited, convert+upload wall "
            f"time <= {TARGET_RATIO} x max(convert alone, upload alone).",
            "",
            "## Setup",
            "",
            f"- date: {meta['started']} -> {meta.get('finished', '?')}",
            f"- machine: {platform.machine()}, {os.cpu_count()} cores, python "
            f"{platform.python_version()}; bids2hf source {meta['fingerprint_start']}"
            + (
                ""
                if meta.get("fingerprint_end") == meta["fingerprint_start"]
                else f" -> {meta.get('fingerprint_end')} (src/ changed during the run!)"
            ),
            f"- load at start: `{meta['uptime_start']}`",
            f"- load at end: `{meta.get('uptime_end', '?')}`",
            "- other work (benchmarks, test suites) may share the cores: the load average before "
            "each run is listed; medians of the repeats are reported",
            f"- dataset: {ds['subjects']} subjects x 2 sessions, {ds['files']} files, "
            f"{human(ds['source bytes'])} of BIDS",
        ]
        for ss, out in self.outputs.items():
            L.append(
                f"- converted with `--max-shard-size {ss}`: {human(out['bytes'])} "
                f"({out['shards']} Parquet shards, {human(out['shard bytes'])}, largest "
                f"{human(out['largest shard'])}); reference conversion (calibration, not "
                f"in the medians) {self.calib[ss]:.2f} s"
            )
        L += [
            f"- bids2hf options: `{' '.join(['-q', '--max-shard-size', args.max_shard_size, *self.jobs, *self.pub_opts, *self.stage_opts])}`"
            " (rows marked `shards SIZE` or `-j N` differ)"
            f" (workers: {workers}; staging bound --max-staged: {staged} shards"
            f"{'' if args.max_staged else ' (default 2 x workers)'}; "
            f"--commit-every {args.commit_every or '100 (default)'})",
            "- (a) `bids2hf convert BIDS OUT -q ...` to a fresh local folder; "
            "(b) `bids2hf push OUT hf://datasets/bench/rN -q` (OUT = the reference conversion) "
            "on a fresh emulator; (c) `bids2hf convert BIDS hf://datasets/bench/sN -q ...` on a "
            "fresh emulator. Wall time of the child process, including Python start-up, the "
            "final commit and bids2hf's verification of the remote. Order rotated per repeat "
            "(abc, cab, bca). Warm page cache (nothing is dropped).",
            "- emulator: `tests/hub_emulator.py --port 0 --root DIR --upload-bandwidth B` "
            "(global limit on LFS PUT bodies; it sha256-hashes and writes every byte it receives, "
            "on the same 2 cores: its CPU time is listed below)",
            "- peak staged: the staging folder under `$BIDS2HF_CACHE` polled every 50 ms during "
            "(c): bytes of `*.parquet` files (complete shards awaiting upload), and in "
            "parentheses of all files (adds shards still being written in `.bids2hf/tmp`)",
            "",
            "## Results (medians)",
            "",
            "| bandwidth | shards | pure transfer time | (a) convert alone s | (b) upload alone s | "
            "(c) convert+upload s | c / max(a, b) | per-repeat ratios | target | met | "
            "peak staged (all files) | peak staged shards | dataset (converted) | median load |",
            "|---|---|---:|---:|---:|---:|---:|---|---:|---|---:|---:|---:|---:|",
        ]
        for row in self.summary():
            bw = row["bandwidth"]
            out = self.outputs[row["shard_size"]]
            transfer = f"{out['bytes'] / bw:.1f} s" if bw else "-"
            cells = []
            for k in "abc":
                rng = row["range"][k]
                cells.append(
                    f"{fmt_s(row[k])} (n={row['n'][k]}"
                    + (f", {rng[0]:.1f}-{rng[1]:.1f})" if rng else ")")
                )
            ratio = "-" if row["ratio"] is None else f"**{row['ratio']:.3f}**"
            met = "-" if row["met"] is None else ("**yes**" if row["met"] else "**no**")
            peak = (
                f"{human(row['peak_parquet'])} ({human(row['peak_all'])}) = "
                f"{100 * row['peak_parquet'] / out['bytes']:.0f}% "
                f"({100 * row['peak_all'] / out['bytes']:.0f}%)"
                if row["peak_parquet"] is not None
                else "-"
            )
            L.append(
                f"| {row['setting']} | {out['shards']} x <= {row['shard_size']} | {transfer} | {' | '.join(cells)} | "
                f"{ratio} | "
                f"{', '.join(f'{x:.2f}' for x in row['per_rep']) or '-'} | <= {TARGET_RATIO} | "
                f"{met} | {peak} | {row['peak_count']} | {human(out['bytes'])} | "
                f"{fmt_s(row['load'])} |"
            )
            for f in row["failed"]:
                L.append(
                    f"|  | failed: ({f['kind']}) r{f['repeat']} rc={f['rc']}: "
                    f"{' / '.join(f['tail'])} | | | | | | | | | | | | |"
                )
        L += [
            "",
            "## All measurements",
            "",
            "| bandwidth | repeat | run | wall s | client CPU s (tree) | emulator CPU s | "
            "load before | peak staged parquet (all) | ok |",
            "|---|---:|---|---:|---:|---:|---:|---:|---|",
        ]
        names = {"a": "(a) convert", "b": "(b) push", "c": "(c) convert+upload"}
        for r in self.results:
            peak = (
                f"{human(r['peak_parquet'])} ({human(r['peak_all'])})" if r["kind"] == "c" else ""
            )
            emu = f"{r['emu_cpu']:.2f}" if "emu_cpu" in r else ""
            L.append(
                f"| {r['setting']} | {r['repeat']} | {names[r['kind']]} | {r['wall']:.2f} | "
                f"{r['cpu']:.2f} | {emu} | {r['load_before']:.2f} | {peak} | "
                f"{'yes' if r['ok'] else 'NO'} |"
            )
        if self.traces:
            L += self.render_traces()
        return "\n".join(L) + "\n"

    def render_traces(self) -> list[str]:
        L = [
            "",
            "## Where the time goes (one extra traced run per setting)",
            "",
            "The same CLI run in-process by `bench_publish.py --trace-child`, which wraps "
            "bids2hf's publisher functions with timers (src/ untouched). Times in seconds from "
            "the launch of the child process. *Link idle* = time between the end of one shard's "
            "upload and the start of the next (the emulator's link is unused), split into the "
            "upload thread hashing the next shard, and waiting for the next shard to be written.",
            "",
            "| bandwidth | run | wall s | client CPU s | imports done | first shard written | last shard "
            "written | first upload starts | last upload ends | uploads busy s (rate) | pure "
            "transfer s | hashing (+ state fsync) in upload thread s | link idle between uploads s (hashing / "
            "waiting for shard) | writer blocked on staging slot s (n) | commits s | after last "
            "upload s |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        g = lambda a, k: fmt_s(a.get(k))  # noqa: E731
        for a in self.traces:
            rate = a.get("upload rate")
            after = a["wall"] - a["last upload ends"] if "last upload ends" in a else None
            L.append(
                f"| {a['setting']} | {'(b) push' if a['kind'] == 'b' else '(c) convert+upload'} "
                f"| {a['wall']:.2f} | {a['cpu']:.2f} | {g(a, 'python start + imports')} | "
                f"{g(a, 'first shard written')} | {g(a, 'last shard written')} | "
                f"{g(a, 'first upload starts')} | {g(a, 'last upload ends')} | "
                f"{a['upload busy s']:.2f} ({human(rate, 'B/s') if rate else '-'}; upload thread "
                f"CPU {a['upload thread CPU s']:.2f} s) | "
                f"{g(a, 'pure transfer s')} | {a['hash s (upload thread)']:.2f} "
                f"(+{a['state saves in upload thread s']:.2f}) | "
                f"{g(a, 'link idle between uploads s')} ({g(a, '  of which hashing s')} / "
                f"{g(a, '  of which waiting for the next shard s')}) | "
                f"{a['writer blocked s']:.2f} ({a['writer blocked n']}) | {a['commit s']:.2f} | "
                f"{fmt_s(after)} |"
            )
        L += ["", "Phases of the traced runs (start-end, s from launch):", ""]
        for a in self.traces:
            phases = "; ".join(
                f"{w} {s:.2f}-{e:.2f}" for w, s, e in sorted(a["events"], key=lambda x: x[1])
            )
            L.append(
                f"- {a['setting']}, {'(b) push' if a['kind'] == 'b' else '(c) convert+upload'}"
                f" ({a['wall']:.2f} s, load before {a['load_before']:.2f}): {phases}"
            )
            shards = []
            for name, size, written, hashed, s0, s1 in a["shards"]:
                w = "" if written is None else f"written {written:.2f}, "
                h = "" if hashed is None else f"hashed {hashed[0]:.2f}-{hashed[1]:.2f}, "
                shards.append(f"{name} ({size / 1e6:.0f} MB): {w}{h}uploaded {s0:.2f}-{s1:.2f}")
            if shards:
                L.append("  - shards: " + "; ".join(shards))
        return L


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--trace-child":
        rest = sys.argv[3:]
        trace_child(sys.argv[2], rest[1:] if rest[:1] == ["--"] else rest)
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="1G", help="synthetic BIDS size (default 1G)")
    p.add_argument(
        "--bandwidth",
        default="50MB",
        help="comma-separated settings BW[@SHARDSIZE][/jN]: BW is an emulator upload "
        "bandwidth (50MB, 120MiB), 0 (unlimited) or match (pure transfer time = "
        "median convert time); @SHARDSIZE overrides --max-shard-size, /jN the "
        "workers of (a) and (c)",
    )
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument(
        "--tmp",
        type=Path,
        default=Path("/work/bench-tmp-publish"),
        help="work dir outside the repository; deleted at the end unless --keep",
    )
    p.add_argument("--out", default=None, help="Markdown results file")
    p.add_argument("--max-shard-size", default="100MB")
    p.add_argument("--workers", "-j", type=int, default=None, help="bids2hf -j (default: cores)")
    p.add_argument("--max-staged", type=int, default=None, help="bids2hf --max-staged for (c)")
    p.add_argument("--commit-every", type=int, default=None, help="bids2hf --commit-every")
    p.add_argument("--bytes-per-subject", type=float, default=80e6)
    p.add_argument(
        "--no-trace", dest="trace", action="store_false", help="skip the extra traced runs"
    )
    p.add_argument("--keep", action="store_true", help="keep the work dir")
    Bench(p.parse_args()).run()


if __name__ == "__main__":
    main()
