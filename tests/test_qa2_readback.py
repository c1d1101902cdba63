"""The way back, found in QA: re-running an interrupted export, and the lines that say why a
published dataset cannot be read."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest

from bids2hf.testing.synthetic import GeneratedDataset
from helpers import BIDS2HF, error_line, run_bids2hf, snapshot, tree

EXPORT_TMP = ".bids2hf-export-*"


def _interrupt_after_first_file(args: list[str], out: Path, sig: signal.Signals) -> int:
    """Run ``bids2hf ARGS``, send ``sig`` once a first file is in ``out``; its exit code."""
    proc = subprocess.Popen(
        [*BIDS2HF, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        if out.is_dir() and any(p.is_file() for p in out.rglob("*.json")):
            proc.send_signal(sig)
            break
        time.sleep(0.005)
    proc.communicate(timeout=120)
    return proc.returncode


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["SIGINT", "SIGKILL"])
def test_interrupted_export_resumes_with_the_same_command(
    synthetic: GeneratedDataset, converted: Path, tmp_path: Path, sig: signal.Signals
) -> None:
    """'interrupted: re-run the same command to resume': the re-run must not refuse the files
    the first run already wrote (it said 'already exists; pass --overwrite')."""
    out = tmp_path / "exported"
    args = ["export", str(converted), str(out), "-q"]
    _interrupt_after_first_file(args, out, sig)
    proc = run_bids2hf(*args, check=False)
    assert proc.returncode == 0, proc.stderr
    # A killed run's temporary folder (and the partial file in it) is gone too.
    assert not list(out.glob(EXPORT_TMP))
    assert tree(out) == tree(synthetic.root)
    # Once more on the complete copy: nothing to write, nothing refused, nothing changed.
    before = snapshot(out, mtimes=True)
    proc = run_bids2hf(*args, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "wrote 0 files" in proc.stdout
    assert snapshot(out, mtimes=True) == before


def test_rerun_export_still_refuses_a_changed_file(converted: Path, tmp_path: Path) -> None:
    """Only files with their recorded sha256 are kept as done: an edited one is still refused."""
    out = tmp_path / "exported"
    run_bids2hf("export", converted, out, "-q")
    (out / "participants.tsv").write_bytes(b"edited\n")
    before = snapshot(out, mtimes=True)
    proc = run_bids2hf("export", converted, out, "-q", check=False)
    error_line(proc, out / "participants.tsv", "--overwrite")
    assert snapshot(out, mtimes=True) == before


def test_export_removes_only_dead_runs_temporaries(
    synthetic: GeneratedDataset, converted: Path, tmp_path: Path
) -> None:
    """A SIGKILLed export leaves its folder (its lock file no longer held) and a partial file:
    the next export removes them, and nothing else: a file of someone else keeps its folder,
    whatever its name; a folder without a lock file is a run starting, kept unless nothing in
    it changed for an hour; a folder whose lock a run holds is kept."""
    import fcntl
    import os

    out = tmp_path / "exported"
    dead = out / ".bids2hf-export-k1ll3d_x"
    dead.mkdir(parents=True)
    (dead / ("ab" * 16)).write_bytes(b"partial")
    (dead / "lock").write_bytes(b"")
    foreign = out / ".bids2hf-export-f0re1gnx"
    foreign.mkdir()
    (foreign / ("cd" * 16)).write_bytes(b"a run's file")
    (foreign / "lock").write_bytes(b"")
    (foreign / "keep.txt").write_bytes(b"someone else's")
    starting = out / ".bids2hf-export-st4rt1ng"
    starting.mkdir()
    old = out / ".bids2hf-export-0ld_run_"
    old.mkdir()
    (old / ("ef" * 16)).write_bytes(b"partial")
    hour_ago = time.time() - 7200
    os.utime(old / ("ef" * 16), (hour_ago, hour_ago))
    os.utime(old, (hour_ago, hour_ago))
    live = out / ".bids2hf-export-l1ve_run"
    live.mkdir()
    (live / ("01" * 16)).write_bytes(b"being written")
    held = os.open(live / "lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(held, fcntl.LOCK_EX)
    try:
        run_bids2hf("export", converted, out, "-q")
    finally:
        os.close(held)
    assert not dead.exists() and not old.exists()
    assert (foreign / "keep.txt").read_bytes() == b"someone else's"
    assert starting.is_dir()
    assert (live / ("01" * 16)).read_bytes() == b"being written"
    kept = frozenset({foreign.name, starting.name, live.name})
    assert tree(out, skip_dirs=kept) == tree(synthetic.root)


def test_report_refuses_a_url_in_one_line(tmp_path: Path) -> None:
    """``report hf://datasets/ORG/NAME`` said 'hf:/datasets/ORG/NAME: no bids2hf/manifest.jsonl;
    run `bids2hf convert` first' (a mangled URL, and a dataset that has a manifest)."""
    url = "hf://datasets/org/ds"
    line = error_line(run_bids2hf("report", url, check=False), url)
    assert "local output folder" in line
    assert not Path("hf:").exists()


def test_a_run_cut_short_leaves_no_folder(tmp_path: Path) -> None:
    """Ctrl-C in the middle of a file leaves that file's temporary in the run's folder: closing
    the run removes it with the folder (the lock file went first, and the folder, without a
    lock file and fresh, was then kept by every later run for an hour: seen once in CI)."""
    from bids2hf.readback.export_folder import run_folder

    out = tmp_path / "exported"
    run = run_folder(out)
    (run.path / ("ab" * 16)).write_bytes(b"half a file")  # as OutputFile names its temporary
    run.close()
    assert not list(out.glob(EXPORT_TMP))
    # A file of someone else keeps the folder, and its lock file for the next run's cleanup.
    run = run_folder(out)
    (run.path / "notes.txt").write_bytes(b"someone else's")
    run.close()
    (kept,) = out.glob(EXPORT_TMP)
    assert sorted(p.name for p in kept.iterdir()) == ["lock", "notes.txt"]
