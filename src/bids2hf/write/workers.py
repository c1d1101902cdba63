"""Writing many shards: serially or in spawned worker processes that never import datasets."""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import queue
import signal
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import (
    FIRST_COMPLETED,
    Future,
    ProcessPoolExecutor,
    wait,
)
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pyarrow as pa

from bids2hf.model.rows import ColumnSpec, ShardPlan
from bids2hf.model.source import Source
from bids2hf.write import shard as shard_module
from bids2hf.write.output_folder import OutputFolder
from bids2hf.write.shard import ShardResult, write_shard

__all__ = ["init_worker", "write_job", "write_shards"]

# -- worker processes ----------------------------------------------------------------------
# Defined here, not in bids2hf.conversion, so that spawned workers import this light module only.
_progress_queue: Any = None


def init_worker(progress_queue: Any, ignore_sigint: bool = True) -> None:
    """Process-pool initializer: where to send progress, and die with the run that started us.

    ``ignore_sigint``: Ctrl-C belongs to the run, which then stops its writers itself (a writer
    interrupted on its own would only print a traceback); true when the run is on the main
    thread, the only one Python delivers KeyboardInterrupt to. Otherwise the writers stop on
    Ctrl-C themselves, as before. Either way they were started with SIGINT blocked
    (:func:`_sigint_held`), so that none arrives while they import.

    A worker outliving its run (the parent killed with SIGKILL) would finish its shard and
    rename it into ``data/`` while a new run may hold the folder's lock. On Linux the kernel
    kills the worker when its parent dies (``PR_SET_PDEATHSIG``); everywhere, :func:`write_shard`
    renames nothing once the parent pid recorded here has changed. Raises nothing.
    """
    global _progress_queue
    if ignore_sigint:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # (one pending meanwhile is dropped)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    _progress_queue = progress_queue
    shard_module.PARENT_PID = os.getppid()
    _die_with_parent()
    if os.getppid() != shard_module.PARENT_PID:  # the parent died before prctl took effect
        os._exit(1)


_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # no usable libc: the pid check still applies
        pass


def _queue_progress(nbytes: int, nfiles: int) -> None:
    if _progress_queue is not None:
        _progress_queue.put((nbytes, nfiles))


def write_job(
    shard: ShardPlan,
    columns: list[ColumnSpec],
    schema: pa.Schema,
    source: Source,
    final: str,
    tmp: str,
    thumbnails: frozenset[str] = frozenset(),
) -> ShardResult:
    """:func:`write_shard` in a worker process, reporting progress through the queue.

    ``source`` arrives pickled [issue 15]: unpickling it imports its module (a remote source
    opens its file system again in this process).
    """
    return write_shard(
        shard, columns, schema, source, Path(final), Path(tmp), _queue_progress, thumbnails
    )


def _for_shard(thumbnails: frozenset[str], shard: ShardPlan) -> frozenset[str]:
    """The chosen files this shard holds: a worker is sent only those (the set may be large)."""
    if not thumbnails:
        return thumbnails
    return (
        frozenset(r.relpath for row in shard.rows for refs in row.files.values() for r in refs)
        & thumbnails
    )


# -- parallel shard writing -----------------------------------------------------------------
@contextmanager
def _drain(q: Any, progress: Callable[[int, int], None]) -> Iterator[None]:
    stop = threading.Event()

    def run() -> None:
        while not stop.is_set() or not q.empty():
            try:
                nbytes, nfiles = q.get(timeout=0.1)
            except queue.Empty:
                continue
            progress(nbytes, nfiles)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def write_shards(
    columns: list[ColumnSpec],
    schema: pa.Schema,
    source: Source,  # [issue 15] the object, not a path (write/ never opens a source)
    out: OutputFolder,
    shards: Sequence[ShardPlan],
    workers: int,
    progress: Callable[[int, int], None],
    on_done: Callable[[ShardPlan, ShardResult], None],
    acquire: Callable[[bool], bool] | None = None,
    thumbnails: frozenset[str] = frozenset(),
) -> None:
    """Write shards, ``workers`` at a time, calling ``on_done`` in the parent as each completes.

    ``acquire(block)`` is asked for room before each shard is started; the publisher uses it to
    bound how many shards exist on local disk (it frees room once a shard is uploaded).
    ``thumbnails``: the files to make thumbnails of as they are written (plan/previews.py).
    """
    if workers <= 1 or len(shards) <= 1:
        for shard in shards:
            if acquire is not None:
                acquire(True)
            result = write_shard(
                shard,
                columns,
                schema,
                source,
                out.root / shard.path,
                out.tmp_path(shard.path),
                progress,
                thumbnails,
            )
            on_done(shard, result)
        return
    _write_in_pool(
        columns, schema, source, out, shards, workers, progress, on_done, acquire, thumbnails
    )


def _write_in_pool(
    columns: list[ColumnSpec],
    schema: pa.Schema,
    source: Source,
    out: OutputFolder,
    shards: Sequence[ShardPlan],
    workers: int,
    progress: Callable[[int, int], None],
    on_done: Callable[[ShardPlan, ShardResult], None],
    acquire: Callable[[bool], bool] | None,
    thumbnails: frozenset[str],
) -> None:
    """:func:`write_shards` with spawned worker processes, as many shards in flight as workers."""
    # Workers get the columns without their `datasets` feature objects (the schema carries the
    # types), so that unpickling them does not import `datasets` in every worker.
    lean_columns = [replace(c, feature=None) for c in columns]
    ctx = mp.get_context("spawn")
    # A Ctrl-C half-way through making a queue leaks its semaphore (seen: the resource tracker's
    # warning on stderr after the interrupted line); held until they are made.
    with _sigint_held():
        q = ctx.Queue()
        pool = ProcessPoolExecutor(
            workers,
            mp_context=ctx,
            initializer=init_worker,
            initargs=(q, threading.current_thread() is threading.main_thread()),
        )
    with _drain(q, progress), pool:
        pending: dict[Future[ShardResult], ShardPlan] = {}
        todo = list(shards)
        try:
            while todo or pending:
                while todo and len(pending) < workers:
                    # Never wait for room while shards are in flight: their completion frees it.
                    if acquire is not None and not acquire(not pending):
                        break
                    shard = todo.pop(0)
                    with _sigint_held():  # submit starts a writer where needed
                        fut = pool.submit(
                            write_job,
                            shard,
                            lean_columns,
                            schema,
                            source,
                            str(out.root / shard.path),
                            str(out.tmp_path(shard.path)),
                            _for_shard(thumbnails, shard),
                        )
                    pending[fut] = shard
                done, _ = wait(pending, return_when=FIRST_COMPLETED, timeout=0.5)
                for fut in sorted(done, key=lambda f: pending[f].path):
                    shard = pending.pop(fut)
                    on_done(shard, fut.result())
        except BaseException:
            # Whatever stops the run (Ctrl-C, a handler's SystemExit, an error): the shards in
            # flight are not waited for; a re-run writes them again.
            _abandon(pool, pending)
            raise


def _abandon(pool: ProcessPoolExecutor, pending: Iterable[Future[Any]]) -> None:
    """Cancel the shards not started and end the writers now, a second Ctrl-C held meanwhile
    (it would leave writers running, and the pool's exit would wait for their shards)."""
    try:
        with _sigint_held():
            for fut in pending:
                fut.cancel()
            _stop_workers(pool)
    except BaseException:
        _stop_workers(pool)  # (one came as the hold began: stop them all the same)
        raise


@contextmanager
def _sigint_held() -> Iterator[None]:
    """Processes started inside begin with SIGINT blocked (a child inherits the signal mask of
    the thread that starts it), until :func:`init_worker` decides. On the main thread a Ctrl-C
    meanwhile is also held back, not lost: it would raise KeyboardInterrupt half-way through
    starting a writer (one the pool does not list yet, which nothing would then stop), or
    through stopping them, so it is recorded and raised again, to the caller's own handler,
    once the writer is started or the writers stopped.
    """
    if not hasattr(signal, "pthread_sigmask"):  # not POSIX
        yield
        return
    held: list[int] = []
    previous: Any = None
    mask: set[int | signal.Signals] | None = None
    try:
        # The handler first, then the mask: a Ctrl-C pending as this starts raises before
        # anything is changed (a KeyboardInterrupt here, after the mask, left SIGINT blocked).
        if threading.current_thread() is threading.main_thread():
            current = signal.getsignal(signal.SIGINT)
            if current is not None:  # (None: a handler not set from Python, left as it is)
                signal.signal(signal.SIGINT, lambda signum, _frame: held.append(signum))
                previous = current
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
        if mask is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        if held:
            signal.raise_signal(signal.SIGINT)


def _stop_workers(pool: ProcessPoolExecutor) -> None:
    """End the pool's writers now (they may ignore SIGINT, see :func:`init_worker`). Safe at any
    moment, as a SIGKILL is: a shard reaches ``data/`` only complete, and a writer's
    temporary file is cleared by the next run."""
    if hasattr(pool, "terminate_workers"):  # Python 3.14
        with contextlib.suppress(Exception):
            pool.terminate_workers()
            return
    # Before 3.14 the pool names its processes only in a private attribute.
    processes = getattr(pool, "_processes", None) or {}
    for process in list(processes.values()):
        try:
            process.terminate()
        except (OSError, ValueError):  # already gone, or closed
            continue
