"""[issue 14] Shard engines: who writes the planned shards, and where each finished shard goes.

The driver (``bids2hf.api.convert``) scans, plans, keeps the resume state and makes the commits;
an engine only writes shards and calls ``on_done(shard, result)`` in the driver as each one
completes.

- :class:`LocalEngine` is the writer bids2hf always had: one process, or a spawned pool of
  ``workers`` processes on this machine, writing into the output (or staging) folder.
- :class:`bids2hf.scale.dask_engine.DaskEngine` runs each shard as a task on a Dask cluster.
  With a remote destination the workers put their shards there themselves (``uploads``): the
  result is then a :class:`StagedShardResult`, and nothing of the shard reaches the driver's disk.

This module imports neither Dask nor ``datasets``: the CLI and the workers may import it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import pyarrow as pa

from bids2hf.model.rows import ColumnSpec, ShardPlan
from bids2hf.model.source import Source
from bids2hf.write.output_folder import OutputFolder
from bids2hf.write.shard import ShardResult

__all__ = [
    "Acquire",
    "LocalEngine",
    "OnDone",
    "Progress",
    "ShardEngine",
    "ShardJob",
    "StagedShardResult",
    "WriteShards",
]


@dataclass
class StagedShardResult(ShardResult):
    """A shard that a worker wrote and put on the remote target itself.

    ``sha256`` is always known; ``handle`` is what the target's commit needs (the Hub: the
    client's ``CommitOperationAdd`` after its preupload; fsspec: nothing).
    """

    handle: Any = None


#: ``progress(bytes, files)``: just read and written (the driver's progress bar).
Progress = Callable[[int, int], None]
#: Called in the driver, once per shard, after the shard is complete where it belongs.
OnDone = Callable[[ShardPlan, ShardResult], None]
#: ``acquire(block)``: room for one more shard on the driver's disk (the publisher's bound).
Acquire = Callable[[bool], bool]


@dataclass
class ShardJob:
    """What every shard of one run shares."""

    columns: list[ColumnSpec]
    schema: pa.Schema
    source: Source
    out: OutputFolder  # the output folder, or the staging folder of a remote destination
    progress: Progress
    # The remote destination (a publish.targets Target; write/ may not import publish/), or
    # None when ``out`` is the destination.
    target: object | None = None
    # [issue 13] files to make thumbnails of from the bytes the writer holds (plan/previews.py).
    # The Dask engine makes none: the run makes the missing ones from the source at the end.
    thumbnails: frozenset[str] = frozenset()


class ShardEngine(Protocol):
    """Writes shards; see the module docstring."""

    #: With a remote destination, the workers put finished shards there themselves (results are
    #: :class:`StagedShardResult`); otherwise shards land in ``job.out`` and the driver's
    #: publisher uploads them.
    uploads: bool

    def run(
        self,
        job: ShardJob,
        shards: Sequence[ShardPlan],
        on_done: OnDone,
        acquire: Acquire | None = None,
    ) -> None:
        """Write ``shards``, calling ``on_done`` in the caller's thread as each one completes.

        Raises:
            SourceChangedError, InputError, OSError: as writing a shard raises them.
            ClusterError: the cluster cannot run the shards.
        """


#: The signature of :func:`bids2hf.write.workers.write_shards`.
WriteShards = Callable[..., None]


class LocalEngine:
    """Processes on this machine: the writer of ``--engine local`` (the default)."""

    uploads = False

    def __init__(self, workers: int, write_shards: WriteShards) -> None:
        # The writer is handed over (``bids2hf.api`` gives its ``write_shards``) so that what
        # tests and benchmarks patch there is what runs.
        self.workers = max(1, workers)
        self.write_shards = write_shards

    def run(
        self,
        job: ShardJob,
        shards: Sequence[ShardPlan],
        on_done: OnDone,
        acquire: Acquire | None = None,
    ) -> None:
        """Write the shards into ``job.out``, ``workers`` at a time (see ``write_shards``).

        Raises:
            SourceChangedError, InputError, OSError: as writing a shard raises them.
        """
        self.write_shards(
            job.columns,
            job.schema,
            job.source,
            job.out,
            shards,
            self.workers,
            job.progress,
            on_done,
            acquire=acquire,
            thumbnails=job.thumbnails,
        )
