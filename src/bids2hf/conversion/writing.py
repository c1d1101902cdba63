"""Writing a conversion's output, and publishing it as it is written: files stored beside, shards
(through the engine), previews, dataset files, manifest and card; then the remote's last commit."""

from __future__ import annotations

from bids2hf.conversion.card import card_bytes
from bids2hf.conversion.run import ConversionRun, staged_bound
from bids2hf.errors import DestinationError
from bids2hf.interrupts import stop_if_interrupted
from bids2hf.model.manifest import ManifestEntry
from bids2hf.model.rows import ShardPlan
from bids2hf.model.state import ShardRecord
from bids2hf.progress import ProgressBar
from bids2hf.publish.beside import copy_and_stage_beside
from bids2hf.publish.compare import Classified
from bids2hf.publish.targets.base import StagedFile
from bids2hf.publish.uploader import Publisher
from bids2hf.units import human_bytes
from bids2hf.write.beside import beside_files, beside_paths
from bids2hf.write.engine import ShardJob, StagedShardResult
from bids2hf.write.output import finish_output
from bids2hf.write.output_folder import OutputFolder, disk_full
from bids2hf.write.previews_output import (
    keep_thumbnails,
    write_previews,
)
from bids2hf.write.shard import ShardResult

__all__ = ["write_outputs"]


def write_outputs(run: ConversionRun, work: Classified) -> None:
    """Write the shards (uploading them as they come when publishing), the dataset files, the
    manifest and the card; then the remote's last commit.

    Raises:
        DestinationError: the disk is full (one line: how much more is needed).
    """
    out, plan, state = run.out, run.plan, run.state
    todo = list(work.todo)
    if run.remote is not None and todo:
        # Uploads start when the first shard is done: write the smallest one first. (Shards are
        # independent files, so the order of writing changes nothing in the output.)
        smallest = min(todo, key=lambda s: s.nbytes)
        todo.remove(smallest)
        todo.insert(0, smallest)
    total = sum(s.nbytes for s in todo) + sum(f.size for f in plan.dataset_files)
    total += sum(f.size for f in beside_files(plan.shards).values())
    nfiles = sum(
        len({r.relpath for row in s.rows for refs in row.files.values() for r in refs})
        for s in todo
    )
    nfiles += len(beside_files(plan.shards))
    bar = ProgressBar(total, nfiles + len(plan.dataset_files), enabled=run.progress, desc="convert")
    try:
        with bar:
            entries = _write_all(run, todo, work.resubmit, bar)
        if run.remote is not None:
            published = [s.path for s in plan.shards] + beside_paths(plan.shards)
            extra = run.previews.paths if run.previews is not None else []
            run.remote.finish(out, published, entries, extra)
    except BaseException as exc:
        if run.remote is not None:
            run.remote.abort()
        if disk_full(exc):
            out.clean_tmp()  # no thread of this run writes there any more
            remaining = sum(s.nbytes for s in plan.shards if s.path not in state.shards)
            remaining += sum(f.size for f in plan.dataset_files)
            raise DestinationError(
                f"{out.root}: disk full; about {human_bytes(remaining)} more are needed — free "
                "space and re-run the same command (complete shards are kept)"
            ) from None
        raise
    run.report.bytes_read = bar.bytes


def _write_all(
    run: ConversionRun, todo: list[ShardPlan], resubmit: list[ShardPlan], bar: ProgressBar
) -> list[ManifestEntry]:
    """The write loop: shards (each handed to the publisher once complete), then the rest."""
    out, plan, store, report = run.out, run.plan, run.out.store, run.report
    publisher = None
    if run.remote is not None:

        def on_hashed(item: StagedFile) -> None:
            # On the publisher's hashing thread; the store serialises appends.
            if item.sha256 is not None:
                store.set_shard_sha256(item.path, item.sha256)

        if run.from_workers:  # [issue 14]
            run.remote.before_worker_uploads([s.path for s in todo])
        publisher = run.remote.publisher(staged_bound(run), on_hashed)
        for shard in resubmit:
            rec = run.state.shards[shard.path]
            publisher.acquire(True)
            publisher.submit(
                StagedFile(shard.path, out.root / shard.path, rec.size, rec.sha256),
                holds_slot=True,
            )

    def on_done(shard: ShardPlan, result: ShardResult) -> None:
        # [issue 13] kept first: a shard recorded complete never lacks its thumbnails
        keep_thumbnails(out, result.thumbnails, {f.path: f.sha256 for f in result.files})
        store.put_shard(
            ShardRecord(
                shard.path, shard.content_id, result.size, result.sha256, tuple(result.files)
            )
        )
        report.written.append(shard.path)
        if publisher is not None:
            _submit(publisher, out, shard, result)
        stop_if_interrupted()  # a Ctrl-C a library dropped: stop here, the shard recorded

    # [issue 11] files stored beside: copied (and uploaded) before the shards that list them
    copy_and_stage_beside(out, run.source, plan.shards, bar.update, run.remote, publisher)
    # [issue 14] the engine writes the shards (LocalEngine: write_shards, as before)
    thumbs = frozenset(report.previews.files) if report.previews else frozenset()
    run.engine.run(
        ShardJob(
            plan.columns, plan.arrow_schema, run.source, out, bar.update, _target(run), thumbs
        ),
        todo,
        on_done,
        acquire=publisher.acquire if publisher is not None and not run.from_workers else None,
    )
    _write_previews(run)  # [issue 13] before the manifest and the card (which names them)
    return finish_output(
        out,
        run.source,
        plan.shards,
        plan.dataset_files,
        plan.left_out,
        bar.update,
        lambda manifest: card_bytes(run, manifest),
    )


def _submit(publisher: Publisher, out: OutputFolder, shard: ShardPlan, result: ShardResult) -> None:
    """Hand a finished shard to the publisher: one in the staging folder holds a slot until it
    is uploaded; one a Dask worker put on the remote [issue 14] only waits for its commit."""
    item = StagedFile(shard.path, out.root / shard.path, result.size, result.sha256)
    if isinstance(result, StagedShardResult):
        item.handle, item.uploaded = result.handle, True
    publisher.submit(item, holds_slot=not item.uploaded)


def _target(run: ConversionRun) -> object | None:
    return run.remote.target if run.remote is not None else None


def _write_previews(run: ConversionRun) -> None:
    """[issue 13] The previews file and the card's pictures, from the thumbnails the shard
    writers made (kept in the state folder)."""
    plan = run.plan
    shas = {f.path: f.sha256 for s in plan.shards for f in run.state.shards[s.path].files}
    rows = [row for shard in plan.shards for row in shard.rows]
    run.previews = write_previews(
        run.out, run.source, rows, plan.columns, run.report.previews, shas
    )
