"""Bounded memory (proven against `datasets`' own path) and SIGKILL-safe, resumable local writes."""

from __future__ import annotations

import random
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from bids2hf.testing.spec import SyntheticSpec
from bids2hf.testing.synthetic import generate_bids
from helpers import kill_tree, tree, without_state

CAP = 320 * 1024 * 1024  # bytes of resident memory a child may use
DATASET = 10 * CAP  # the dataset is ten times larger than the cap


# The kernel's peak RSS of a child (ru_maxrss) includes the memory of the process it was forked
# from, up to its exec: a child forked from a large pytest process would inherit pytest's size.
# A tiny launcher forks the measured program instead and reports its exact peak.
_LAUNCHER = """
import os, sys
pid = os.fork()
if pid == 0:
    os.execv(sys.argv[2], sys.argv[2:])
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as f:
    f.write(str(usage.ru_maxrss * 1024))
code = os.waitstatus_to_exitcode(status)
sys.exit(code if code >= 0 else 128 - code)
"""


def run_capped(args: list[str], cap: int, log: Path) -> tuple[int, int, bool]:
    """Run a program; kill it once its RSS passes ``cap``. Returns (exit code, peak RSS, exceeded)."""
    peak_file = log.with_suffix(".peak")
    with open(log, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-c", _LAUNCHER, str(peak_file), *args],
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    exceeded = False
    while proc.poll() is None:
        try:
            for child in psutil.Process(proc.pid).children():
                if child.memory_info().rss > cap:
                    exceeded = True
                    child.kill()
        except psutil.NoSuchProcess:
            pass
        time.sleep(0.01)
    peak = int(peak_file.read_text())  # the kernel's own peak, which polling could miss
    return proc.returncode, peak, exceeded or peak > cap


@pytest.fixture(scope="module")
def big_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Many small sessions: a row (and so a row group) is a few MB, the dataset 10x the cap.
    spec = SyntheticSpec(
        n_subjects=150, sessions=("1", "2"), target_bytes=int(DATASET * 1.02), derivatives=False
    )
    return generate_bids(tmp_path_factory.mktemp("big") / "bids", spec).root


def test_memory_is_bounded_where_datasets_is_not(big_dataset: Path, tmp_path: Path) -> None:
    size = sum(p.stat().st_size for p in big_dataset.rglob("*") if p.is_file())
    assert size >= 10 * CAP
    code, peak, exceeded = run_capped(
        [
            sys.executable,
            "-m",
            "bids2hf",
            "convert",
            str(big_dataset),
            str(tmp_path / "out"),
            "-q",
            "-j",
            "1",
            "--row-group-size",
            "8MiB",
        ],
        CAP,
        tmp_path / "bids2hf.log",
    )
    log = (tmp_path / "bids2hf.log").read_text()[-2000:]
    assert code == 0 and not exceeded, (
        f"bids2hf peaked at {peak / 2**20:.0f} MiB, exit {code}: {log}"
    )
    assert (
        sum(p.stat().st_size for p in (tmp_path / "out" / "data").glob("*.parquet")) >= size * 0.95
    )

    # The `datasets` library's own embedding path, as push_to_hub runs it, on the same files.
    script = textwrap.dedent(
        f"""
        import glob, os
        import pyarrow.parquet as pq
        from datasets import Dataset, Features, List, Nifti, Value
        from datasets.table import embed_table_storage
        root = {str(big_dataset)!r}
        rows = []
        for ses in sorted(glob.glob(os.path.join(root, "sub-*", "ses-*"))):
            rows.append({{
                "session": ses,
                "anat": sorted(glob.glob(os.path.join(ses, "anat", "*.nii.gz"))),
                "func": sorted(glob.glob(os.path.join(ses, "func", "*.nii.gz"))),
                "dwi": sorted(glob.glob(os.path.join(ses, "dwi", "*.nii.gz"))),
            }})
        features = Features({{"session": Value("string"), "anat": List(Nifti()), "func": List(Nifti()), "dwi": List(Nifti())}})
        ds = Dataset.from_list(rows, features=features)
        num_shards = max(1, int(ds._estimate_nbytes() // 500_000_000) + 1)
        for index in range(num_shards):
            shard = ds.shard(num_shards=num_shards, index=index, contiguous=True)
            table = embed_table_storage(shard.with_format("arrow")[:])
            pq.write_table(table, os.path.join({str(tmp_path)!r}, f"hf-{{index}}.parquet"))
        """
    )
    code, peak, exceeded = run_capped(
        [sys.executable, "-c", script], CAP, tmp_path / "datasets.log"
    )
    log = (tmp_path / "datasets.log").read_text()[-2000:]
    assert exceeded, (
        f"the datasets path stayed under the cap ({peak / 2**20:.0f} MiB, exit {code}): {log}"
    )


def test_sigkill_at_random_points_then_resume(tmp_path: Path) -> None:
    bids = generate_bids(
        tmp_path / "bids", SyntheticSpec(n_subjects=8, target_bytes=60_000_000)
    ).root
    args = [
        sys.executable,
        "-m",
        "bids2hf",
        "convert",
        str(bids),
        "OUT",
        "-q",
        "-j",
        "2",
        "--max-shard-size",
        "3MB",
        "--row-group-size",
        "1MiB",
    ]
    clean = tmp_path / "clean"
    subprocess.run([a if a != "OUT" else str(clean) for a in args], check=True)
    shards = len(list((clean / "data").glob("*.parquet")))
    assert shards >= 10
    out = tmp_path / "killed"
    run_args = [a if a != "OUT" else str(out) for a in args]
    rng = random.Random(1234)
    # Kill while shard k is being written, for increasing random k: each run resumes the last.
    targets = sorted(rng.sample(range(1, shards - 1), 4))
    partial_left = 0
    for target in targets:
        proc = subprocess.Popen(run_args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            done = len(list((out / "data").glob("*.parquet"))) if (out / "data").exists() else 0
            writing = (
                any((out / ".bids2hf" / "tmp").glob("*"))
                if (out / ".bids2hf" / "tmp").exists()
                else False
            )
            if done >= target and writing:
                break
            time.sleep(0.002)
        assert proc.poll() is None, "the run ended before it could be killed"
        kill_tree(proc)
        partial_left += any((out / ".bids2hf" / "tmp").glob("*"))
    assert partial_left, "no kill landed while a shard was being written"
    subprocess.run(run_args, check=True)
    assert without_state(tree(out)) == without_state(tree(clean))
    leftovers = [
        p for p in out.rglob("*") if p.name.endswith(".tmp") or "tmp" in p.relative_to(out).parts
    ]
    assert not leftovers
