"""Files stored beside the shards, when publishing [issue 11]: copied, then uploaded like shards.

Each copy is made in the staging folder (:func:`bids2hf.write.beside.copy_beside`), handed to the
:class:`~bids2hf.publish.uploader.Publisher` (LFS on the Hub, an atomic put on fsspec) and
deleted once the destination holds it. On a re-run, a file the destination already holds with
the sha256 the journal records is neither copied nor uploaded again.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from bids2hf.model.rows import ShardPlan
from bids2hf.model.source import Source
from bids2hf.model.state import DatasetFileRecord
from bids2hf.publish.compare import same_content
from bids2hf.publish.pipeline import RemoteRun
from bids2hf.publish.targets.base import StagedFile
from bids2hf.publish.uploader import Publisher
from bids2hf.write.beside import BesideCopy, copy_beside, copy_in_place
from bids2hf.write.output_folder import OutputFolder

__all__ = ["copy_and_stage_beside"]


def copy_and_stage_beside(
    out: OutputFolder,
    source: Source,
    shards: Sequence[ShardPlan],
    progress: Callable[[int, int], None],
    remote: RemoteRun | None,
    publisher: Publisher | None,
) -> list[BesideCopy]:
    """Copy the files the shards store beside into ``out`` and, when publishing, upload them.

    A copy takes one of the publisher's slots before it is made (shards and copies together,
    at most ``--max-staged`` files are staged at once) and is deleted once uploaded.

    Raises:
        SourceChangedError, InputError, OSError: see :func:`copy_beside`; and the publisher's
            error if an upload failed.
    """
    if remote is None or publisher is None:
        return copy_beside(out, source, shards, progress)
    held = remote.remote

    def done(path: str, rec: DatasetFileRecord) -> bool:
        # On the destination already, or staged by an earlier run and not uploaded yet.
        return same_content(held.get(path), rec.size, rec.sha256) or copy_in_place(out, path, rec)

    def on_copy(copy: BesideCopy) -> None:
        rec = copy.record
        if not copy.copied:  # a copy staged by an earlier run: room for it is taken now
            if same_content(held.get(copy.path), rec.size, rec.sha256):
                return  # the destination holds it: nothing to stage
            publisher.acquire(True)
        # A fresh copy took its slot before it was made (room); the uploader frees it, also for
        # a file the destination turns out to hold already.
        publisher.submit(
            StagedFile(copy.path, out.root / copy.path, rec.size, rec.sha256), holds_slot=True
        )

    def room() -> None:
        publisher.acquire(True)

    return copy_beside(out, source, shards, progress, done, on_copy, room)
