"""[issue 14] One shard as a Dask task: written on a worker, then put where it belongs.

This is the code Dask workers run (:func:`run_task`). A task writes its shard with
:func:`bids2hf.write.shard.write_shard` (memory: one row group, as in a single-process run), then:

- to a shared output folder (:class:`FolderSink`): under a name no other attempt uses, in the
  run's own temporary folder, renamed into place when complete (same file system: atomic);
- to an fsspec URL (:class:`FsspecSink`): into the worker's local directory, then one PUT to the
  final key (atomic on object stores; a temporary key and a move elsewhere);
- to the Hub (:class:`HubSink`): into the worker's local directory, then the client's
  ``preupload_lfs_files``; the driver commits the returned operation in its next batch.

A worker that dies mid-shard leaves at most a temporary file behind: never a partial shard at
its final path. The attempt Dask then runs elsewhere writes under a new name.

Imported by workers: pyarrow through :mod:`bids2hf.write.shard`, ``huggingface_hub`` only for the
Hub, never ``datasets``; ``distributed`` only inside functions, when running on a worker.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import pyarrow as pa

from bids2hf._version import __version__
from bids2hf.errors import ClusterError
from bids2hf.model.format import sha256_file
from bids2hf.model.rows import ColumnSpec, ShardPlan
from bids2hf.model.source import Source
from bids2hf.publish.targets.base import StagedFile
from bids2hf.publish.targets.fsspec import FsspecTarget
from bids2hf.publish.targets.hub import HubTarget
from bids2hf.write.engine import StagedShardResult
from bids2hf.write.shard import ShardResult, write_shard

__all__ = [
    "FolderSink",
    "FsspecSink",
    "HubSink",
    "Secret",
    "ShardTask",
    "Sink",
    "run_task",
    "versions",
]

#: Seconds between two progress events of one task.
PROGRESS_EVERY = 0.2


class Secret:
    """A value that never shows in a repr, a log line or an error message (Dask logs the repr of
    a failed task's arguments)."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret(<hidden>)"

    __str__ = __repr__

    def __reduce__(self) -> tuple[type[Secret], tuple[str]]:
        return (Secret, (self._value,))


@dataclass(frozen=True)
class FolderSink:
    """The output folder, seen by every worker at the same path."""

    root: str  # absolute
    tmp_dir: str  # the run's own temporary folder in root/.bids2hf/tmp (removed when it ends)


@dataclass(frozen=True)
class FsspecSink:
    """An fsspec URL; workers reach it with their own credentials (environment, config files)."""

    url: str


@dataclass(frozen=True)
class HubSink:
    """A Hub dataset repository: the driver's endpoint and token, so that workers on other
    hosts need neither (the token is a :class:`Secret`)."""

    url: str
    endpoint: str
    token: Secret | None
    timeout: float | None


Sink = Union[FolderSink, FsspecSink, HubSink]  # noqa: UP007 - a runtime alias (Python 3.10)


@dataclass
class ShardTask:
    """Everything a worker needs to write one shard."""

    shard: ShardPlan
    columns: list[ColumnSpec]  # without their `datasets` features (the schema has the types)
    schema: pa.Schema
    source: Source  # resolved: a local folder at the same path on every worker, or a URL
    sink: Sink
    versions: tuple[str, str]  # the driver's (bids2hf, pyarrow): shard bytes depend on them
    progress_topic: str | None = None  # Dask event topic the driver listens to

    def __repr__(self) -> str:
        # Short (Dask logs it when a task fails), and without the sink's secrets.
        return f"ShardTask({self.shard.path!r})"


def versions() -> tuple[str, str]:
    """The versions a shard's bytes depend on: bids2hf (the writer) and pyarrow (the encoder)."""
    return __version__, pa.__version__


def run_task(task: ShardTask) -> ShardResult:
    """Write one shard on a Dask worker and put it where it belongs (see the module docstring).

    Returns a :class:`~bids2hf.write.shard.ShardResult` (shared folder) or a
    :class:`~bids2hf.write.engine.StagedShardResult` (remote targets: sha256 and commit handle).

    Raises:
        ClusterError: the worker runs other versions than the driver, or does not see the BIDS
            folder or the output folder at the driver's paths.
        SourceChangedError, InputError: as :func:`~bids2hf.write.shard.write_shard`.
        OSError and the target's errors: writing or uploading failed.
    """
    host = socket.gethostname()
    if versions() != task.versions:
        here, there = versions(), task.versions
        raise ClusterError(
            f"Dask worker on {host}: runs bids2hf {here[0]} with pyarrow {here[1]}, the driver "
            f"bids2hf {there[0]} with pyarrow {there[1]}; shards would differ from a "
            "single-process run: install the same versions on the workers"
        )
    local = task.source.local_path("")  # None for a URL: each worker reads it itself
    if local is not None and not local.is_dir():
        raise ClusterError(
            f"{task.source.location}: not visible on the Dask worker on {host}; workers must "
            "see the BIDS folder at the same path (a shared file system)"
        )
    progress = _Progress(task)
    if isinstance(task.sink, FolderSink):
        return _to_folder(task, task.sink, progress, host)
    return _to_remote(task, progress)


def _name(shard: ShardPlan) -> str:
    return shard.path.rsplit("/", 1)[-1][-100:]


def _to_folder(task: ShardTask, sink: FolderSink, progress: _Progress, host: str) -> ShardResult:
    tmp_dir = Path(sink.tmp_dir)
    # Never created here: once the driver's run has ended its temporary folder is gone, and an
    # attempt still running somewhere can then no longer rename anything into place.
    if not tmp_dir.is_dir():
        raise ClusterError(
            f"{sink.root}: not visible on the Dask worker on {host} (or the run that started "
            "this task has ended); workers must see the output folder at the same path"
        )
    # Unique per attempt: an attempt on a worker the scheduler gave up on may still be writing.
    tmp = tmp_dir / f"{_name(task.shard)}.{host}.{os.getpid()}.{uuid.uuid4().hex}.tmp"
    return write_shard(
        task.shard,
        task.columns,
        task.schema,
        task.source,
        Path(sink.root) / task.shard.path,
        tmp,
        progress,
    )


def _local_directory() -> str | None:
    """The worker's local directory (node-local scratch under dask-jobqueue), else the default."""
    try:
        from distributed import get_worker

        return str(get_worker().local_directory)
    except (ImportError, ValueError):
        return None


def _to_remote(task: ShardTask, progress: _Progress) -> StagedShardResult:
    scratch = Path(tempfile.mkdtemp(prefix="bids2hf-", dir=_local_directory()))
    try:
        local = scratch / _name(task.shard)
        result = write_shard(
            task.shard,
            task.columns,
            task.schema,
            task.source,
            local,
            scratch / f"{local.name}.tmp",
            progress,
        )
        # Hashed right after writing, while the shard is in the page cache.
        item = StagedFile(task.shard.path, local, result.size, sha256_file(local))
        if isinstance(task.sink, FsspecSink):
            FsspecTarget(task.sink.url).upload(item)
        elif isinstance(task.sink, HubSink):
            _stage_on_hub(task.sink, item)
        else:
            raise TypeError(f"not a remote sink: {task.sink!r}")
        return StagedShardResult(
            result.path, result.size, item.sha256, result.files, handle=item.handle
        )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _stage_on_hub(sink: HubSink, item: StagedFile) -> None:
    from huggingface_hub import CommitOperationAdd, HfApi

    target = HubTarget(sink.url, timeout=sink.timeout)
    # The driver's endpoint and token: the worker's environment may lack them (another host).
    target.api = HfApi(
        endpoint=sink.endpoint,
        token=sink.token.reveal() if sink.token is not None else None,
        library_name="bids2hf",
        library_version=__version__,
    )
    target.stage(item)  # preupload_lfs_files, with bids2hf's retry policy and timeout
    if not item.uploaded:
        # The Hub wants this one as a regular file, sent inline with the commit (files over
        # 10 MB never are): the driver cannot read the worker's copy, so the bytes travel.
        item.handle = CommitOperationAdd(
            path_in_repo=item.path, path_or_fileobj=item.local.read_bytes()
        )


class _Progress:
    """A task's progress, sent to the driver as Dask events (cumulative, at most every
    :data:`PROGRESS_EVERY` seconds); silent outside a worker or without a topic."""

    def __init__(self, task: ShardTask) -> None:
        self.topic = task.progress_topic
        self.path = task.shard.path
        self.bytes = 0
        self.files = 0
        self._sent = 0.0
        self._worker: Any = None
        if self.topic is not None:
            try:
                from distributed import get_worker

                self._worker = get_worker()
            except (ImportError, ValueError):
                self._worker = None

    def __call__(self, nbytes: int, nfiles: int) -> None:
        self.bytes += nbytes
        self.files += nfiles
        now = time.monotonic()
        if self._worker is not None and now - self._sent >= PROGRESS_EVERY:
            self._sent = now
            self._worker.log_event(
                self.topic, {"shard": self.path, "bytes": self.bytes, "files": self.files}
            )
