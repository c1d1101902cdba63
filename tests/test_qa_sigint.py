"""Ctrl-C during ``convert`` with worker processes, found in QA.

A terminal sends SIGINT to the whole foreground process group: the run and its spawned shard
writers. The run prints one line and exits 130; the writers must not print tracebacks of their
own (they did when the signal came while they were starting), must not outlive the run, and a
re-run gives the output of an uninterrupted run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from helpers import BIDS2HF, run_bids2hf, snapshot, without_state


def _worker_started(proc: subprocess.Popen[str]) -> bool:
    """A spawned shard writer of ``proc`` exists (the resource tracker does not count)."""
    try:
        children = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return False
    for child in children:
        try:
            cmdline = " ".join(child.cmdline())
        except psutil.NoSuchProcess:
            continue
        if "spawn_main" in cmdline and "resource_tracker" not in cmdline:
            return True
    return False


@pytest.mark.parametrize("delay", [0.05, 0.2])
def test_ctrl_c_while_workers_start(bids_copy: Path, tmp_path: Path, delay: float) -> None:
    """Ctrl-C ``delay`` seconds after the first writer process appears: it is importing
    pyarrow then (before it, Python has not set up its handler and SIGINT ends it quietly)."""
    out = tmp_path / "out"
    options = ("-q", "-j", "2", "--max-shard-size", "200kB")
    proc = subprocess.Popen(
        [*BIDS2HF, "convert", str(bids_copy), str(out), *options],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as a terminal's foreground job
    )
    deadline = time.monotonic() + 60
    while not _worker_started(proc):
        assert proc.poll() is None, "the run ended before starting a worker"
        assert time.monotonic() < deadline, "no worker started"
        time.sleep(0.002)
    time.sleep(delay)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C does: the run and its workers
    try:
        stdout, stderr = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise AssertionError("the run did not stop after Ctrl-C") from None
    assert proc.returncode == 130, stdout + stderr
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines == ["interrupted: re-run the same command to resume"], stderr
    # No writer outlives the run (the process group is empty but for the resource tracker,
    # which removes the run's semaphores and then exits).
    time.sleep(0.5)
    left = [
        p
        for p in psutil.process_iter(["pid", "cmdline"])
        if p.pid != proc.pid
        and _pgid(p.pid) == proc.pid
        and "resource_tracker" not in " ".join(p.info["cmdline"] or [])
        and p.status() != psutil.STATUS_ZOMBIE
    ]
    assert not left, left

    run_bids2hf("convert", bids_copy, out, *options)
    clean = run_bids2hf("convert", bids_copy, tmp_path / "clean", *options)
    assert clean.returncode == 0
    assert without_state(snapshot(out) or {}) == without_state(snapshot(tmp_path / "clean") or {})


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None
