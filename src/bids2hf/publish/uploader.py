"""The uploader: hash and upload threads, bounded staging slots, batched commits."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from bids2hf.progress import ProgressBar
from bids2hf.publish.compare import same_content
from bids2hf.publish.targets.base import RemoteFile, StagedFile, Target
from bids2hf.units import human_bytes

__all__ = ["PublishReport", "Publisher"]


@dataclass
class PublishReport:
    """What a publication did."""

    url: str
    uploaded: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)  # stale-looking files bids2hf did not write
    uploaded_bytes: int = 0
    commits: int = 0
    peak_staged: int = 0
    dry_run: bool = False

    def text(self) -> str:
        verb = "would upload" if self.dry_run else "uploaded"
        lines = [
            f"{'dry run: ' if self.dry_run else ''}{self.url}",
            f"  {verb} {len(self.uploaded)} file(s) ({human_bytes(self.uploaded_bytes)}); "
            f"{len(self.unchanged)} already there; "
            f"{'would delete' if self.dry_run else 'deleted'} {len(self.deleted)} stale file(s)",
        ]
        if self.kept:
            shown = ", ".join(self.kept[:5]) + (" ..." if len(self.kept) > 5 else "")
            lines.append(
                f"  kept {len(self.kept)} file(s) in bids2hf's folders that no bids2hf record "
                f"says it wrote: {shown}"
            )
        if not self.dry_run:
            lines.append(
                f"  {self.commits} commit(s); at most {self.peak_staged} shard(s) staged locally; verified"
            )
        return "\n".join(lines)


class Publisher:
    """Uploads files in a background thread while the caller keeps writing."""

    def __init__(
        self,
        target: Target,
        remote: dict[str, RemoteFile],
        *,
        max_staged: int,
        commit_every: int = 100,
        report: PublishReport,
        bar: ProgressBar | None = None,
        on_hashed: Callable[[StagedFile], None] | None = None,
    ) -> None:
        self.on_hashed = on_hashed
        self.target = target
        self.remote = remote
        self.report = report
        self.commit_every = max(1, commit_every)
        self.bar = bar
        self._max_staged = max(1, max_staged)
        self._slots = threading.BoundedSemaphore(self._max_staged)
        self._staged = 0
        self._lock = threading.Lock()
        # Two stages: a shard is hashed (and its checksum recorded) while the one before it is
        # being uploaded, so the link never idles for a hash.
        self._queue: queue.Queue[tuple[StagedFile, bool] | None] = queue.Queue()
        self._hashed: queue.Queue[tuple[StagedFile, bool] | None] = queue.Queue()
        self._pending: list[StagedFile] = []
        self._holding: list[StagedFile] = []  # committed-later files that still hold a slot
        self.error: BaseException | None = None
        self._aborted = False
        self._threads = [
            threading.Thread(
                target=self._guard, args=(self._hash,), name="bids2hf-hash", daemon=True
            ),
            threading.Thread(
                target=self._guard, args=(self._run,), name="bids2hf-upload", daemon=True
            ),
        ]
        for thread in self._threads:
            thread.start()

    # -- called by the writer ------------------------------------------------------------
    def acquire(self, block: bool = True) -> bool:
        """Reserve local room for one more shard; False if none is free and ``block`` is False."""
        while True:
            self.raise_if_failed()
            if self._slots.acquire(timeout=0.2 if block else 0):
                with self._lock:
                    self._staged += 1
                    self.report.peak_staged = max(self.report.peak_staged, self._staged)
                return True
            if not block:
                return False

    def submit(self, item: StagedFile, *, holds_slot: bool) -> None:
        self.raise_if_failed()
        self._queue.put((item, holds_slot))

    def raise_if_failed(self) -> None:
        """Raises: whatever stopped a background thread (an upload or commit that failed)."""
        if self.error is not None:
            raise self.error

    def abort(self, timeout: float = 60.0) -> None:
        """Stop the background threads after a failure elsewhere and wait for them (at most
        ``timeout`` seconds each): nothing more is committed or deleted, and no more checksums
        are reported. A thread still in an upload when the wait ends commits and deletes
        nothing once it returns (it checks the flag), so the caller may release its lock."""
        self._aborted = True
        self._queue.put(None)
        self._hashed.put(None)
        for thread in self._threads:
            thread.join(timeout)

    def finish(self, final: Sequence[StagedFile], deletions: Sequence[str], message: str) -> None:
        """Upload what is left and make the last commit (card, manifest, deletions)."""
        self._queue.put(None)
        for thread in self._threads:
            thread.join()
        self.raise_if_failed()
        items = list(self._pending)
        for item in final:
            if same_content(self.remote.get(item.path), item.size, item.sha256, item.local):
                self.report.unchanged.append(item.path)
                continue
            self.target.stage(item)
            self._count(item)
            items.append(item)
        if self.target.commit(items, deletions, message):
            self.report.commits += 1
        self.report.deleted.extend(deletions)
        self._after_commit()

    # -- the upload thread ---------------------------------------------------------------
    def _release(self, item: StagedFile, *, delete: bool) -> None:
        # After an abort the folder may belong to the next run: its files are not ours to delete.
        if delete and not self._aborted:
            item.local.unlink(missing_ok=True)
        with self._lock:
            self._staged -= 1
        self._slots.release()

    def _count(self, item: StagedFile) -> None:
        self.report.uploaded.append(item.path)
        self.report.uploaded_bytes += item.size
        if self.bar is not None:
            self.bar.update(item.size, 1)

    def _guard(self, stage: Callable[[], None]) -> None:
        try:
            stage()
        except BaseException as exc:
            self.error = exc
            self._hashed.put(None)  # let the upload stage stop too
            # Unblock a writer waiting for a slot; it will see the error.
            for _ in range(64):
                try:
                    self._slots.release()
                except ValueError:
                    break

    def _hash(self) -> None:
        while (got := self._queue.get()) is not None and not self._aborted:
            item, _ = got
            if item.sha256 is None:
                # Hashed here rather than by the writer: the shard is still in the page cache.
                item.checksum()
                if self.on_hashed is not None:
                    self.on_hashed(item)
            self._hashed.put(got)
        self._hashed.put(None)

    def _run(self) -> None:
        while (got := self._hashed.get()) is not None and self.error is None and not self._aborted:
            item, holds_slot = got
            if item.uploaded:  # [issue 14] staged by a Dask worker: the target only records it
                self.target.adopt(item)  # (an unchanged one too: its record was dropped first)
            if same_content(self.remote.get(item.path), item.size, item.sha256):
                self.report.unchanged.append(item.path)
                if holds_slot:
                    self._release(item, delete=True)
                continue
            if not item.uploaded:
                self.target.stage(item)
            if self._aborted:  # the run failed while this file was being uploaded
                break
            self._count(item)
            self._pending.append(item)
            if holds_slot and item.uploaded:
                self._release(item, delete=True)
            elif holds_slot:
                self._holding.append(item)  # a regular (non-LFS) file is read at commit time
            # Commit after `commit_every` files, or as soon as regular files hold every slot:
            # the writer waits for a slot, and they free theirs only once committed.
            full = len(self._holding) >= self._max_staged
            if (len(self._pending) >= self.commit_every or full) and not self._aborted:
                self.target.commit(self._pending, [], f"bids2hf: add {len(self._pending)} shard(s)")
                self.report.commits += 1
                self._after_commit()

    def _after_commit(self) -> None:
        """The committed files are on the remote: forget them, and free the slots (and local
        copies) of those that were kept for the commit to read."""
        self._pending = []
        for held in self._holding:
            self._release(held, delete=True)
        self._holding = []
