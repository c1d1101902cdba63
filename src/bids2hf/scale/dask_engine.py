"""[issue 14] The Dask engine: every shard a task on a Dask cluster (``--engine dask``).

The driver keeps what it always kept: the plan (paths, sizes, checksums, never file contents),
the resume state and the commits. Shards are independent, so each is one task
(:func:`bids2hf.scale.dask_tasks.run_task`) that a worker writes straight to the destination; the
driver records each result in the state journal as it arrives, exactly as after a local write,
so the resume rules of single-process runs hold.

- **At most a window of tasks in flight** (``tasks_per_thread`` x the cluster's threads): the
  scheduler never holds the whole plan, and the driver's memory does not grow with the data.
- **A worker that dies** mid-shard: the scheduler runs the task again elsewhere (up to
  ``distributed.scheduler.allowed-failures`` times, then :class:`ClusterError`). Attempts never
  share a temporary name, and only complete shards are renamed or uploaded.
- **Output byte-identical** to a single-process run of the same plan: the same
  ``write_shard``; every task checks that its worker runs the driver's bids2hf and pyarrow.
- **Progress**: workers send cumulative byte counts as Dask events; the driver's bar counts
  each shard at most once, whatever the number of attempts.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bids2hf.errors import ClusterError
from bids2hf.model.rows import ShardPlan
from bids2hf.publish.targets.fsspec import FsspecTarget
from bids2hf.publish.targets.hub import HubTarget
from bids2hf.scale.dask_tasks import (
    FolderSink,
    FsspecSink,
    HubSink,
    Secret,
    ShardTask,
    Sink,
    run_task,
    versions,
)
from bids2hf.write.engine import Acquire, OnDone, Progress, ShardJob

if TYPE_CHECKING:
    from distributed import Client

__all__ = ["DaskEngine", "dask_client"]

log = logging.getLogger(__name__)

_LOCAL = re.compile(r"local:(\d+)")


class DaskEngine:
    """Shards as tasks on the cluster of a ``distributed.Client``."""

    uploads = True

    def __init__(self, client: Client, *, tasks_per_thread: int = 2) -> None:
        self.client = client
        self.tasks_per_thread = max(1, tasks_per_thread)
        self._warm_up()

    def _warm_up(self) -> None:
        """Have each worker import the writer (pyarrow, numpy, ...: about a second) while the
        driver scans and plans, rather than when its first shard arrives: a tiny task per worker
        whose function lives in :mod:`bids2hf.scale.dask_tasks`. Only a head start, so nothing is
        waited for and nothing can fail here (a worker that misses it imports with its first
        shard)."""
        try:
            from distributed import fire_and_forget

            for address in self.client.nthreads():
                fire_and_forget(
                    self.client.submit(versions, workers=[address], pure=False, priority=10)
                )
        except Exception as exc:  # a closing client, an old distributed, ...
            log.debug("no warm-up of the Dask workers: %s", exc)

    def run(
        self,
        job: ShardJob,
        shards: Sequence[ShardPlan],
        on_done: OnDone,
        acquire: Acquire | None = None,
    ) -> None:
        """Write ``shards`` on the cluster; ``on_done`` runs in this thread as each completes.

        ``acquire`` is not used: shards never wait on this machine's disk.

        Raises:
            SourceChangedError, InputError, OSError: what a task raised, as it raised it.
            ClusterError: a shard whose workers kept dying, or workers that cannot run it.
        """
        if not shards:
            return
        run_id = uuid.uuid4().hex[:12]
        sink, cleanup = self._sink(job, run_id)
        # Workers get the columns without their `datasets` features (the schema has the types),
        # so that unpickling a task does not import `datasets`.
        columns = [replace(c, feature=None) for c in job.columns]
        schema = job.schema
        topic = f"bids2hf-progress-{run_id}"
        progress = _DriverProgress(job.progress, shards)
        self.client.subscribe_topic(topic, progress.event)
        try:
            todo = list(shards)
            source = job.source.resolved()  # the same absolute path on every worker

            def task(shard: ShardPlan) -> ShardTask:
                return ShardTask(shard, columns, schema, source, sink, versions(), topic)

            self._loop(todo, task, run_id, progress, on_done)
        finally:
            # A client closing under us (the run failed) has nothing left to unsubscribe.
            with contextlib.suppress(Exception):
                self.client.unsubscribe_topic(topic)
            cleanup()

    def _sink(self, job: ShardJob, run_id: str) -> tuple[Sink, Callable[[], None]]:
        target = job.target
        if target is None:
            # The run's own temporary folder: removed when the run ends, so that an attempt
            # still running on some worker (the driver failed) can no longer rename into place.
            run_tmp = job.out.tmp_dir / f"dask-{run_id}"
            run_tmp.mkdir(parents=True)
            sink: Sink = FolderSink(os.path.abspath(job.out.root), os.path.abspath(run_tmp))
            return sink, lambda: shutil.rmtree(run_tmp, ignore_errors=True)
        if isinstance(target, FsspecTarget):
            return FsspecSink(target.url), lambda: None
        if isinstance(target, HubTarget):
            from huggingface_hub import get_token

            token = get_token()
            return (
                HubSink(
                    target.url,
                    target.api.endpoint,
                    Secret(token) if token else None,
                    target.timeout,
                ),
                lambda: None,
            )
        raise TypeError(f"the Dask engine cannot write to {type(target).__name__}")

    def _window(self) -> int:
        threads = sum(self.client.nthreads().values())
        return max(2, self.tasks_per_thread * threads)

    def _loop(
        self,
        todo: list[ShardPlan],
        task: Callable[[ShardPlan], ShardTask],
        run_id: str,
        progress: _DriverProgress,
        on_done: OnDone,
    ) -> None:
        from distributed import KilledWorker, as_completed

        pending: dict[Any, tuple[Any, ShardPlan]] = {}  # by task key
        running = as_completed()

        def fill() -> None:
            # Asked again each time: workers join and leave (dask-jobqueue scales in jobs).
            window = self._window()
            while todo and len(pending) < window:
                shard = todo.pop(0)
                future = self.client.submit(
                    run_task, task(shard), key=f"bids2hf-{run_id}-{shard.path}", pure=False
                )
                pending[future.key] = (future, shard)
                running.add(future)

        fill()
        try:
            for future in running:
                _, shard = pending.pop(future.key)
                try:
                    result = future.result()
                except KilledWorker:
                    raise ClusterError(
                        f"{shard.path}: the Dask workers writing it died again and again (out of "
                        "memory? see their logs); give them more memory or lower "
                        "--row-group-size, then re-run the same command (complete shards are kept)"
                    ) from None
                future.release()
                on_done(shard, result)
                progress.finish(shard)  # (after: a Ctrl-C raised there finds the shard recorded)
                fill()
        except BaseException:
            # Queued tasks never start. Running ones cannot be interrupted: with a shared folder
            # they find the run's temporary folder gone and fail; uploads finish (same bytes).
            self.client.cancel([future for future, _ in pending.values()])
            raise


class _DriverProgress:
    """The driver's bar, fed by the workers' events and, exactly, by each completed shard."""

    def __init__(self, progress: Progress, shards: Sequence[ShardPlan]) -> None:
        self.progress = progress
        self._lock = threading.Lock()
        self._totals = {
            s.path: (
                s.nbytes,
                len({r.relpath for row in s.rows for refs in row.files.values() for r in refs}),
            )
            for s in shards
        }
        self._seen: dict[str, tuple[int, int]] = {}  # the most any attempt reported
        self._done: set[str] = set()

    def event(self, event: tuple[float, Any]) -> None:
        """A worker's progress event (on the client's event loop thread)."""
        _, msg = event
        try:
            path, nbytes, nfiles = str(msg["shard"]), int(msg["bytes"]), int(msg["files"])
        except (TypeError, KeyError, ValueError):
            return
        with self._lock:
            if path in self._done or path not in self._totals:
                return
            total_bytes, total_files = self._totals[path]
            seen_bytes, seen_files = self._seen.get(path, (0, 0))
            # A second attempt starts from zero: only what goes beyond the first one counts.
            nbytes, nfiles = min(nbytes, total_bytes), min(nfiles, total_files)
            self._seen[path] = (max(seen_bytes, nbytes), max(seen_files, nfiles))
            self.progress(max(0, nbytes - seen_bytes), max(0, nfiles - seen_files))

    def finish(self, shard: ShardPlan) -> None:
        with self._lock:
            self._done.add(shard.path)
            seen_bytes, seen_files = self._seen.pop(shard.path, (0, 0))
            total_bytes, total_files = self._totals[shard.path]
            self.progress(max(0, total_bytes - seen_bytes), max(0, total_files - seen_files))


@contextmanager
def dask_client(scheduler: str) -> Iterator[Client]:
    """A ``distributed.Client`` for ``--scheduler``, closed (with its cluster) at the end.

    ``local:N`` starts a ``LocalCluster`` of N worker processes with one thread each (memory per
    worker: one row group, as in a single-process run); a path ending in ``.json`` is a
    scheduler file (``dask scheduler --scheduler-file``); anything else is the scheduler's
    address (``tcp://HOST:8786``).

    Raises:
        ClusterError: Dask is not installed, or the scheduler cannot be reached.
    """
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise ClusterError(
            "--engine dask needs Dask: pip install 'bids2hf[dask]' (dask[distributed])"
        ) from None
    match = _LOCAL.fullmatch(scheduler)
    if match:
        n = int(match.group(1))
        if n < 1:
            raise ClusterError(f"--scheduler {scheduler}: local:N needs at least 1 worker")
        cluster = LocalCluster(
            n_workers=n,
            threads_per_worker=1,
            processes=True,
            # Loopback, any free port: never in another cluster's way (8787).
            dashboard_address="127.0.0.1:0",
        )
        try:
            client = Client(cluster)
            try:
                yield client
            finally:
                client.close()
        finally:
            cluster.close()
        return
    try:
        if scheduler.endswith(".json"):
            if not Path(scheduler).is_file():
                raise ClusterError(
                    f"{scheduler}: no such scheduler file; give the file `dask scheduler "
                    "--scheduler-file` wrote, an address (tcp://HOST:8786) or local:N"
                )
            client = Client(scheduler_file=scheduler)
        else:
            client = Client(scheduler)
    except (OSError, TimeoutError, ValueError) as exc:
        raise ClusterError(
            f"--scheduler {scheduler}: cannot reach the Dask scheduler ({type(exc).__name__}: "
            f"{str(exc)[:200]}); check the address (tcp://HOST:8786) or use local:N"
        ) from None
    try:
        yield client
    finally:
        client.close()
