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
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

import bids2hf
from bids2hf.testing.spec import GeneratedDataset
from helpers import BIDS2HF, Cli, run_bids2hf, snapshot, with_sitecustomize, without_state


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
    stdout, stderr = _ctrl_c(proc, "the run")
    assert proc.returncode == 130, stdout + stderr
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines == ["interrupted: re-run the same command to resume"], stderr
    left = _left_in_group(proc)  # no writer outlives the run
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


def _ctrl_c(proc: subprocess.Popen[str], what: str) -> tuple[str, str]:
    """Ctrl-C to ``proc``'s process group, then its output once it ended (AssertionError
    naming ``what`` if it has not within a minute)."""
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C does: the run and its workers
    try:
        return proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise AssertionError(f"{what} did not stop after Ctrl-C") from None


def _left_in_group(proc: subprocess.Popen[str]) -> list[psutil.Process]:
    """The processes of ``proc``'s group still alive half a second on (the resource tracker,
    which removes the run's semaphores and then exits, aside)."""
    time.sleep(0.5)
    return [
        p
        for p in psutil.process_iter(["pid", "cmdline"])
        if p.pid != proc.pid
        and _pgid(p.pid) == proc.pid
        and "resource_tracker" not in " ".join(p.info["cmdline"] or [])
        and p.status() != psutil.STATUS_ZOMBIE
    ]


#: sitecustomize: each fsync in a shard writer takes 30 s, so that a shard is in flight for
#: long; the run's own process writes the file $STARTED once Python has started
_SLOW_WORKERS = """
import multiprocessing, os, time
_fsync = os.fsync
def _slow_fsync(fd):
    if multiprocessing.parent_process() is not None:
        time.sleep(30)
    return _fsync(fd)
os.fsync = _slow_fsync
if multiprocessing.parent_process() is None and os.environ.get("STARTED"):
    open(os.environ["STARTED"], "w").close()
"""


#: sitecustomize: the Ctrl-C comes while the command loads its modules, at two moments Python
#: 3.11 treats apart: inside code made by exec() of a string (dataclasses, namedtuple), or while a
#: class is being made (where it becomes ``RuntimeError: Error calling __set_name__``)
_CTRL_C_WHILE_LOADING = """
import os, signal
import bids2hf.cli.commands as commands

def _while_loading(*args, **kwargs):
    if os.environ["WHERE"] == "exec":
        exec("import os, signal; os.kill(os.getpid(), signal.SIGINT); [0 for _ in range(10**6)]")
    class Made:
        class Field:
            def __set_name__(self, owner, name):
                os.kill(os.getpid(), signal.SIGINT)
                [0 for _ in range(10**6)]
        field = Field()

commands.open_bids_dir = _while_loading
"""


@pytest.mark.parametrize("where", ["exec", "set_name"])
def test_ctrl_c_while_the_command_loads_its_modules(
    bids_copy: Path, tmp_path: Path, where: str
) -> None:
    """Found in QA with random delays (2 in 40 runs): Ctrl-C at these two moments gave
    ``internal error: RuntimeError: ...`` (exit 1), or the right line but an exit by SIGINT."""
    env = with_sitecustomize(tmp_path, _CTRL_C_WHILE_LOADING)
    env["WHERE"] = where
    proc = run_bids2hf("convert", bids_copy, tmp_path / "out", "-q", env=env, check=False)
    assert proc.returncode == 130, proc.stderr
    assert proc.stderr == "interrupted: re-run the same command to resume\n"


#: sitecustomize: a Ctrl-C whose KeyboardInterrupt a library drops as the command starts (seen
#: with random delays: a Cython module's start-up while nibabel loaded; the run went on to the
#: end and exited 0), or that comes inside a weakref callback (Python prints and drops it)
_CTRL_C_DROPPED = """
import os, signal, weakref
import bids2hf.cli.commands as commands

_open = commands.open_bids_dir

def _ctrl_c():
    os.kill(os.getpid(), signal.SIGINT)
    [0 for _ in range(10**6)]

def _dropping(*args, **kwargs):
    if os.environ["WHERE"] == "library":
        try:
            _ctrl_c()
        except BaseException:
            open(os.environ["DROPPED"], "w").close()  # (it did come, and was dropped here)
    else:
        class Anything:
            pass
        thing = Anything()
        ref = weakref.ref(thing, lambda _ref: _ctrl_c())
        del thing
    return _open(*args, **kwargs)

commands.open_bids_dir = _dropping
"""


@pytest.mark.parametrize("where", ["library", "weakref"])
def test_a_ctrl_c_dropped_on_the_way_still_stops_the_run(
    bids_copy: Path, tmp_path: Path, where: str
) -> None:
    """The run stops at its next step (the first shard written) with the one line and 130,
    instead of ignoring the Ctrl-C; Python's "Exception ignored" report is not printed."""
    env = with_sitecustomize(tmp_path, _CTRL_C_DROPPED)
    env.update(WHERE=where, DROPPED=str(tmp_path / "dropped"))
    out = tmp_path / "out"
    options = ("-q", "-j", "2", "--max-shard-size", "200kB")  # (6 shards, 2 at a time)
    proc = run_bids2hf("convert", bids_copy, out, *options, env=env, check=False)
    assert proc.returncode == 130, proc.stdout + proc.stderr
    assert proc.stderr == "interrupted: re-run the same command to resume\n"
    assert "wrote" not in proc.stdout
    assert where != "library" or (tmp_path / "dropped").exists()
    assert len(list((out / "data").rglob("*.parquet"))) < 6, "stopped before the last shard"
    run_bids2hf("convert", bids_copy, out, *options)  # resumes


@pytest.mark.parametrize("where", ["exec", "set_name"])
def test_with_debug_a_ctrl_c_shows_where_it_came(
    bids_copy: Path, tmp_path: Path, where: str
) -> None:
    """``--debug`` adds the traceback, before the same line and exit status (review: a Ctrl-C
    that came wrapped in a RuntimeError gave that error's traceback and exit 1)."""
    env = with_sitecustomize(tmp_path, _CTRL_C_WHILE_LOADING)
    env["WHERE"] = where
    proc = run_bids2hf("convert", bids_copy, tmp_path / "out", "--debug", env=env, check=False)
    assert proc.returncode == 130, proc.stderr
    assert "Traceback" in proc.stderr and "_while_loading" in proc.stderr, proc.stderr
    assert proc.stderr.endswith("interrupted: re-run the same command to resume\n")


@pytest.fixture
def sigint_restored() -> Iterator[None]:
    """The test's SIGINT handler is put back as it was afterwards."""
    previous = signal.getsignal(signal.SIGINT)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.usefixtures("sigint_restored")
def test_a_command_run_from_python_leaves_the_handlers_as_they_were(
    synthetic: GeneratedDataset, cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review: the command line's SIGINT handler and unraisable hook stayed installed after a
    command run in-process (tests, notebooks), and a later Ctrl-C the caller handled made every
    later ``bids2hf.convert`` stop at its first shard."""
    # Python's own handler, as in a fresh process (dask_jobqueue, which an earlier test may have
    # imported, sets one of its own when imported)
    monkeypatch.setattr(sys, "unraisablehook", sys.unraisablehook)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    hook = sys.unraisablehook
    result = cli("inspect", synthetic.root, "-q")
    assert result.exit_code == 0, result.output
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert sys.unraisablehook is hook
    with pytest.raises(KeyboardInterrupt):  # a Ctrl-C the caller handles
        signal.raise_signal(signal.SIGINT)
        time.sleep(1)
    report = bids2hf.convert(synthetic.root, tmp_path / "out", workers=1, progress=False)
    assert report.written, "not stopped by the caller's Ctrl-C"


#: sitecustomize: Ctrl-C right after the first semaphore is registered with the resource tracker,
#: before multiprocessing arranges to remove it (Python's window, hit once in 240 runs under load)
_CTRL_C_IN_A_SEMAPHORE = """
import multiprocessing, os, signal
import multiprocessing.resource_tracker as tracker

_register, _sent = tracker.register, []

def _register_then_ctrl_c(name, rtype):
    _register(name, rtype)
    if rtype == "semaphore" and not _sent and multiprocessing.parent_process() is None:
        _sent.append(name)
        os.kill(os.getpid(), signal.SIGINT)
        [0 for _ in range(10**6)]

tracker.register = _register_then_ctrl_c
"""


def test_a_ctrl_c_as_the_writers_queues_are_made_leaks_nothing(
    bids_copy: Path, tmp_path: Path
) -> None:
    """The resource tracker warned of a leaked semaphore after the interrupted line."""
    env = with_sitecustomize(tmp_path, _CTRL_C_IN_A_SEMAPHORE)
    options = ("-q", "-j", "2", "--max-shard-size", "200kB")
    proc = run_bids2hf("convert", bids_copy, tmp_path / "out", *options, env=env, check=False)
    assert proc.returncode == 130, proc.stderr
    assert proc.stderr == "interrupted: re-run the same command to resume\n"


#: bids2hf.convert called from Python: on the main thread under a SIGINT handler of the caller's
#: own that exits, or on another thread while the main thread waits for it
_CALLER = """
import signal, sys, threading, time
import bids2hf
from bids2hf.plan.options import PlanOptions

bids, out, mode = sys.argv[1:4]
def run():
    try:
        bids2hf.convert(bids, out, workers=2, progress=False,
                        plan_options=PlanOptions(max_shard_bytes=200_000))
    except BaseException as exc:
        print("convert ended:", type(exc).__name__, flush=True)
        raise
if mode == "handler":
    signal.signal(signal.SIGINT, lambda *_: sys.exit(3))
    run()
else:
    thread = threading.Thread(target=run)
    thread.start()
    while thread.is_alive():
        try:
            time.sleep(0.05)  # (not thread.join: interrupted, 3.11's join marks the thread ended)
        except KeyboardInterrupt:
            print("main: interrupted", flush=True)
"""


@pytest.mark.parametrize("mode", ["handler", "thread"])
def test_a_caller_s_interrupt_stops_the_writers_at_once(
    bids_copy: Path, tmp_path: Path, mode: str
) -> None:
    """Whatever the interrupt turns into for the caller (its own handler's SystemExit; a run on
    another thread than the main one), the shard writers stop at once, not after the shards in
    flight (each takes over 5 s here)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _CALLER, str(bids_copy), str(tmp_path / "out"), mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=with_sitecustomize(tmp_path, _SLOW_WORKERS),
        start_new_session=True,
    )
    deadline = time.monotonic() + 60
    while not _worker_started(proc):
        assert proc.poll() is None, "the run ended before starting a worker"
        assert time.monotonic() < deadline, "no worker started"
        time.sleep(0.01)
    time.sleep(1.5)  # the writers are in their first (slow) fsync now
    sent = time.monotonic()
    stdout, stderr = _ctrl_c(proc, "the caller")
    took = time.monotonic() - sent
    assert "convert ended:" in stdout, stdout + stderr
    assert took < 10, f"stopped {took:.1f} s after Ctrl-C: the writers' shards were waited for"
    if mode == "handler":
        assert proc.returncode == 3, stdout + stderr


@pytest.mark.parametrize("delay", [0.1, 0.25, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9])
def test_ctrl_c_at_any_moment_of_the_start(bids_copy: Path, tmp_path: Path, delay: float) -> None:
    """Ctrl-C ``delay`` seconds after Python has started the command (before, it is Python's
    own start-up, which it does not handle): while the command loads, before the writers, while
    the pool starts them (a KeyboardInterrupt half-way through starting one left a writer the
    pool did not list yet, which nothing stopped), or once they write. Every time: exit 130 at
    once, one line, and no process of the run left. The writers are slowed down so that the run is still
    going at the last delay (a Ctrl-C as a finished run exits ends it by SIGINT, as it would any
    program: seen in CI, return code -2 with the result printed)."""
    out, started = tmp_path / "out", tmp_path / "started"
    proc = subprocess.Popen(
        [*BIDS2HF, "convert", str(bids_copy), str(out), "-q", "-j", "2", "--max-shard-size", "200kB"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(with_sitecustomize(tmp_path, _SLOW_WORKERS), STARTED=str(started)),
        start_new_session=True,
    )
    deadline = time.monotonic() + 60
    while not started.exists():
        assert proc.poll() is None and time.monotonic() < deadline, "Python did not start"
        time.sleep(0.002)
    time.sleep(delay)
    assert proc.poll() is None, "the run ended before the signal"
    sent = time.monotonic()
    _, stderr = _ctrl_c(proc, "the run")
    took = time.monotonic() - sent
    assert proc.returncode == 130, stderr
    assert took < 10, f"stopped {took:.1f} s after Ctrl-C: the writers' shards were waited for"
    assert "Traceback" not in stderr, stderr
    left = _left_in_group(proc)
    assert not left, left
