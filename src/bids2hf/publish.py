"""Streaming publication: upload shards while later ones are written, with bounded local disk.

A :class:`Publisher` owns a background thread that stages (uploads) each finished file and
deletes the local copy once the remote has confirmed it. At most ``max_staged`` shards exist
locally at any moment: the writer asks for a slot before writing a shard and the uploader gives it
back after deleting the shard. Data shards are committed in batches; the card, the manifest and
the removal of stale files go in the last commit, so the description always matches the data it
describes once the run ends.
"""

from __future__ import annotations

import logging
import os
import queue
import re
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .errors import VerificationError
from .manifest import DATASET_FILES_PREFIX, MANIFEST_PATH
from .output_folder import OutputFolder
from .progress import ProgressBar
from .targets import RemoteFile, StagedFile, Target, git_blob_oid
from .units import human_bytes
from .write import sha256_file

log = logging.getLogger(__name__)

#: Remote folders bids2hf owns: files there that the new output lacks are deleted.
OWNED_PREFIXES = ("data/", DATASET_FILES_PREFIX, "bids2hf/")


@dataclass
class PublishReport:
    """What a publication did."""

    url: str
    uploaded: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
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
        if not self.dry_run:
            lines.append(
                f"  {self.commits} commit(s); at most {self.peak_staged} shard(s) staged locally; verified"
            )
        return "\n".join(lines)


def default_staging(url: str) -> Path:
    """Per-destination staging folder that survives interruptions (it holds the resume state)."""
    base = Path(os.environ.get("BIDS2HF_CACHE", Path.home() / ".cache" / "bids2hf"))
    return base / "staging" / re.sub(r"[^0-9A-Za-z_.@-]+", "_", url).strip("_")


def same_content(
    remote: RemoteFile | None, size: int, sha256: str | None, local: Path | None = None
) -> bool:
    """Whether the remote already holds these bytes (sha256 for LFS/recorded files, git oid otherwise)."""
    if remote is None or remote.size != size or sha256 is None:
        return False
    if remote.sha256 is not None:
        return remote.sha256 == sha256
    if remote.git_oid is not None and local is not None and local.exists():
        return remote.git_oid == git_blob_oid(local)
    return False


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
        self._slots = threading.BoundedSemaphore(max(1, max_staged))
        self._staged = 0
        self._lock = threading.Lock()
        # Two stages: a shard is hashed (and its checksum recorded) while the one before it is
        # being uploaded, so the link never idles for a hash.
        self._queue: queue.Queue[tuple[StagedFile, bool] | None] = queue.Queue()
        self._hashed: queue.Queue[tuple[StagedFile, bool] | None] = queue.Queue()
        self._pending: list[StagedFile] = []
        self._holding: list[StagedFile] = []  # committed-later files that still hold a slot
        self.error: BaseException | None = None
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
        if self.error is not None:
            raise self.error

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
        self._pending = []
        for item in self._holding:
            self._release(item, delete=True)
        self._holding = []

    # -- the upload thread ---------------------------------------------------------------
    def _release(self, item: StagedFile, *, delete: bool) -> None:
        if delete:
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
        while (got := self._queue.get()) is not None:
            item, _ = got
            if item.sha256 is None:
                # Hashed here rather than by the writer: the shard is still in the page cache.
                item.checksum()
                if self.on_hashed is not None:
                    self.on_hashed(item)
            self._hashed.put(got)
        self._hashed.put(None)

    def _run(self) -> None:
        while (got := self._hashed.get()) is not None and self.error is None:
            item, holds_slot = got
            if same_content(self.remote.get(item.path), item.size, item.sha256):
                self.report.unchanged.append(item.path)
                if holds_slot:
                    self._release(item, delete=True)
                continue
            self.target.stage(item)
            self._count(item)
            self._pending.append(item)
            if holds_slot and item.uploaded:
                self._release(item, delete=True)
            elif holds_slot:
                self._holding.append(item)  # a regular (non-LFS) file is read at commit time
            if len(self._pending) >= self.commit_every:
                self.target.commit(self._pending, [], f"bids2hf: add {len(self._pending)} shard(s)")
                self.report.commits += 1
                self._pending = []
                for held in self._holding:
                    self._release(held, delete=True)
                self._holding = []


def final_files(
    out: OutputFolder, dataset_files: Iterable[tuple[str, int, str]]
) -> list[StagedFile]:
    """The last commit's files: dataset-level files, the manifest and the card (in that order)."""
    items = [StagedFile(rel, out.root / rel, size, sha) for rel, size, sha in dataset_files]
    for rel in (MANIFEST_PATH, "README.md"):
        path = out.root / rel
        items.append(StagedFile(rel, path, path.stat().st_size, sha256_file(path)))
    return items


def stale_paths(remote: dict[str, RemoteFile], keep: Iterable[str]) -> list[str]:
    wanted = set(keep)
    return sorted(p for p in remote if p.startswith(OWNED_PREFIXES) and p not in wanted)


def verify_remote(
    target: Target, expected: dict[str, tuple[int, str]], local: dict[str, Path]
) -> None:
    """Compare the remote file list, sizes and checksums with what was written."""
    remote = target.files()
    problems = []
    for path, (size, sha) in sorted(expected.items()):
        got = remote.get(path)
        if got is None:
            problems.append(f"missing {path}")
        elif got.size != size:
            problems.append(f"size {path}: {got.size} != {size}")
        elif got.sha256 is not None and got.sha256 != sha:
            problems.append(f"sha256 {path}")
        elif (
            got.sha256 is None
            and got.git_oid is not None
            and path in local
            and local[path].exists()
            and got.git_oid != git_blob_oid(local[path])
        ):
            problems.append(f"content {path}")
    extra = stale_paths(remote, expected)
    problems += [f"unexpected {p}" for p in extra]
    if problems:
        shown = "; ".join(problems[:10]) + (
            f"; +{len(problems) - 10} more" if len(problems) > 10 else ""
        )
        raise VerificationError(f"{target.url}: the remote differs from what was written: {shown}")


def push(
    folder: str | os.PathLike[str],
    url: str,
    *,
    private: bool = False,
    commit_every: int = 100,
    dry_run: bool = False,
    timeout: float | None = 300.0,
    progress: bool = True,
) -> PublishReport:
    """Upload an already converted local folder to ``url`` (hf:// or an fsspec URL).

    Only files the remote does not already hold with the same checksum are uploaded; stale files
    in the folders bids2hf owns are deleted in the last commit, then the remote is verified.
    """

    from .errors import InputError
    from .targets import open_target

    out = OutputFolder(folder)
    state = out.load_state()
    if not (out.root / MANIFEST_PATH).is_file() or not (out.root / "README.md").is_file():
        raise InputError(
            f"{out.root}: not a complete bids2hf output (no manifest or card); run convert first"
        )
    if state is not None and not state.get("complete", False):
        raise InputError(f"{out.root}: the conversion did not finish; re-run convert first")
    recorded = (state or {}).get("shards", {})
    files: list[StagedFile] = []
    for path in sorted(p for p in out.root.rglob("*") if p.is_file()):
        rel = path.relative_to(out.root).as_posix()
        if not rel.startswith(OWNED_PREFIXES) and rel != "README.md":
            continue
        rec = recorded.get(rel)
        size = path.stat().st_size
        # Hashed lazily (by the upload thread) unless an earlier run recorded it.
        known = rec.get("sha256") if rec and rec.get("size") == size else None
        files.append(StagedFile(rel, path, size, known))
    target = open_target(url, private=private, timeout=timeout)
    report = PublishReport(url, dry_run=dry_run)
    if dry_run:
        try:
            remote = target.files()
        except Exception:
            remote = {}
        for item in files:
            if same_content(remote.get(item.path), item.size, item.checksum(), item.local):
                report.unchanged.append(item.path)
            else:
                report.uploaded.append(item.path)
                report.uploaded_bytes += item.size
        report.deleted = stale_paths(remote, [f.path for f in files])
        return report
    target.ensure()
    remote = target.files()
    shards = [f for f in files if f.path.startswith("data/")]
    final = [f for f in files if not f.path.startswith("data/")]
    final.sort(key=lambda f: (f.path in (MANIFEST_PATH, "README.md"), f.path))
    with ProgressBar(sum(f.size for f in files), len(files), enabled=progress, desc="push") as bar:
        publisher = Publisher(
            target, remote, max_staged=1 << 30, commit_every=commit_every, report=report, bar=bar
        )
        for item in shards:
            publisher.submit(item, holds_slot=False)
        publisher.finish(
            final,
            stale_paths(remote, [f.path for f in files]),
            "bids2hf: dataset card, manifest and dataset-level files",
        )
    verify_remote(
        target, {f.path: (f.size, f.checksum()) for f in files}, {f.path: f.local for f in files}
    )
    return report
