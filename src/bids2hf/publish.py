"""Streaming publication: upload shards while later ones are written, with bounded local disk.

A :class:`Publisher` owns a background thread that stages (uploads) each finished file and
deletes the local copy once the remote has confirmed it. At most ``max_staged`` shards exist
locally at any moment: the writer asks for a slot before writing a shard and the uploader gives it
back after deleting the shard. Data shards are committed in batches; the card, the manifest and
the removal of stale files go in the last commit, so the description always matches the data it
describes once the run ends.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import posixpath
import queue
import re
import threading
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .errors import DestinationError, VerificationError
from .manifest import DATASET_FILES_PREFIX, MANIFEST_PATH, loads
from .output_folder import OutputFolder
from .progress import ProgressBar
from .retry import call_with_retries
from .targets import FsspecTarget, HubTarget, RemoteFile, StagedFile, Target, git_blob_oid
from .units import human_bytes
from .write import sha256_file

log = logging.getLogger(__name__)

#: Remote folders bids2hf writes. A file there that the new output lacks is deleted only if a
#: bids2hf run recorded writing it (see :func:`recorded_paths`); others are kept.
OWNED_PREFIXES = ("data/", DATASET_FILES_PREFIX, "bids2hf/")


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


def default_staging(url: str) -> Path:
    """Per-destination staging folder that survives interruptions (it holds the resume state).

    Its name is the URL made safe for a file name, plus a digest of the URL itself: making it
    safe maps several URLs to one name (``org/a_b`` and ``org_a/b``), the digest does not.
    """
    base = Path(os.environ.get("BIDS2HF_CACHE", Path.home() / ".cache" / "bids2hf"))
    canonical = url.rstrip("/")
    slug = re.sub(r"[^0-9A-Za-z_.@-]+", "_", canonical).strip("_")[:80]
    digest = hashlib.sha256(canonical.encode()).hexdigest()[:16]
    return base / "staging" / f"{slug}-{digest}"


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
        if self.error is not None:
            raise self.error

    def abort(self) -> None:
        """Stop the background threads after a failure elsewhere: nothing more is uploaded or
        committed, and no more checksums are reported (the file being hashed or uploaded now
        is finished first)."""
        self._aborted = True
        self._queue.put(None)
        self._hashed.put(None)

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


def stale_paths(
    remote: Collection[str], keep: Iterable[str], owned: Collection[str] | None = None
) -> list[str]:
    """Remote files in bids2hf's folders that the new output lacks; with ``owned``, only those
    a bids2hf run recorded writing (the ones it may delete)."""
    wanted = set(keep)
    return sorted(
        p
        for p in remote
        if p.startswith(OWNED_PREFIXES) and p not in wanted and (owned is None or p in owned)
    )


def recorded_paths(target: Target, remote: dict[str, RemoteFile]) -> set[str]:
    """Remote paths that a bids2hf run recorded writing, as far as the remote itself says.

    That is the files its manifest places (shards, dataset-level files), the manifest and the
    card committed with it, and on fsspec targets every file in ``bids2hf/checksums.json``.
    A staging folder's state adds the paths its own runs wrote (see ``ResumeState.remote_owned``).
    A manifest that does not parse records nothing (a warning says so): unknown files are never
    deleted. Raises :class:`DestinationError` if the manifest cannot be fetched at all.
    """
    owned: set[str] = set()
    if isinstance(target, FsspecTarget):
        owned.update(target.checksums())
    if MANIFEST_PATH not in remote:
        return owned
    try:
        data = _read_remote(target, MANIFEST_PATH)
    except FileNotFoundError:
        return owned
    except Exception as exc:
        # Without it, bids2hf's own files there would pass for someone else's.
        raise DestinationError(
            f"{target.url}/{MANIFEST_PATH}: cannot be read ({type(exc).__name__}: "
            f"{str(exc)[:200]}); it records what bids2hf wrote there: re-run later"
        ) from None
    try:
        entries = loads(data)
    except (ValueError, TypeError, KeyError) as exc:
        log.warning(
            "%s/%s: unreadable (%s); files it would place are treated as not written by bids2hf",
            target.url,
            MANIFEST_PATH,
            exc,
        )
        return owned
    owned.update((MANIFEST_PATH, "README.md"))
    owned.update(e.location for e in entries if e.location)
    return owned


def _read_remote(target: Target, path: str) -> bytes:
    if isinstance(target, HubTarget):
        from huggingface_hub import HfFileSystem

        def read() -> bytes:
            # A fresh instance: a cached one may hold a listing from before the last commit.
            fs = HfFileSystem(skip_instance_cache=True)
            with fs.open(f"datasets/{target.repo_id}/{path}", "rb", revision=target.revision) as f:
                return bytes(f.read())

        return bytes(call_with_retries(f"read {path} ({target.repo_id})", read, target.policy))
    if isinstance(target, FsspecTarget):
        with target.fs.open(posixpath.join(target.root, path), "rb") as f:
            return bytes(f.read())
    raise TypeError(f"cannot read from {type(target).__name__}")


def remote_conflicts(
    remote: dict[str, RemoteFile], owned: Collection[str], paths: Iterable[str]
) -> list[str]:
    """Paths this run writes where the remote holds a file no bids2hf run recorded writing."""
    return sorted(p for p in set(paths) if p in remote and p not in owned)


def refuse_remote_conflicts(url: str, conflicts: Sequence[str], overwrite: bool) -> None:
    """Refuse to replace files bids2hf did not write, unless ``overwrite`` (then say which).

    Raises :class:`DestinationError` naming the first file.
    """
    if not conflicts:
        return
    more = f" [+{len(conflicts) - 1} more]" if len(conflicts) > 1 else ""
    if not overwrite:
        raise DestinationError(
            f"{url}: {conflicts[0]} exists there and no bids2hf record says bids2hf wrote it"
            f"{more}; pass --overwrite to replace such files, or publish to another repository"
        )
    log.warning(
        "%s: --overwrite: replacing %d file(s) bids2hf did not write: %s",
        url,
        len(conflicts),
        ", ".join(conflicts[:10]) + (" ..." if len(conflicts) > 10 else ""),
    )


def verify_remote(
    target: Target,
    expected: dict[str, tuple[int, str]],
    local: dict[str, Path],
    owned: Collection[str] | None = None,
) -> None:
    """Compare the remote file list, sizes and checksums with what was written.

    A file in bids2hf's folders that is not expected counts as a difference if bids2hf wrote it
    (in ``owned``; any such file if ``owned`` is None). Raises :class:`VerificationError`.
    """
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
    extra = stale_paths(remote, expected, owned)
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
    overwrite: bool = False,
) -> PublishReport:
    """Upload an already converted local folder to ``url`` (hf:// or an fsspec URL).

    Only files the remote does not already hold with the same checksum are uploaded; stale files
    in bids2hf's folders are deleted in the last commit if a bids2hf run recorded writing them
    (:func:`recorded_paths`), then the remote is verified. A remote file at a path the folder
    holds, not written by bids2hf and different, is replaced only with ``overwrite``.

    Raises :class:`~bids2hf.errors.InputError` for a folder that is no complete output,
    :class:`DestinationError` for conflicts or a folder another run is using, and
    :class:`VerificationError` if the remote differs from what was written.
    """
    out = OutputFolder(folder)
    # The folder is only read; the lock keeps a conversion from changing it meanwhile (a folder
    # we may not write cannot be converted into either).
    writable = out.state_dir.is_dir() and os.access(out.state_dir, os.W_OK)
    with out.locked() if writable else contextlib.nullcontext():
        return _push(out, url, private, commit_every, dry_run, timeout, progress, overwrite)


def _push(
    out: OutputFolder,
    url: str,
    private: bool,
    commit_every: int,
    dry_run: bool,
    timeout: float | None,
    progress: bool,
    overwrite: bool,
) -> PublishReport:
    from .errors import InputError
    from .targets import open_target

    state = out.load_state()
    if not (out.root / MANIFEST_PATH).is_file() or not (out.root / "README.md").is_file():
        raise InputError(
            f"{out.root}: not a complete bids2hf output (no manifest or card); run convert first"
        )
    if state is not None and not state.complete:
        raise InputError(f"{out.root}: the conversion did not finish; re-run convert first")
    files: list[StagedFile] = []
    for path in sorted(p for p in out.root.rglob("*") if p.is_file()):
        rel = path.relative_to(out.root).as_posix()
        if not rel.startswith(OWNED_PREFIXES) and rel != "README.md":
            continue
        if state is not None and rel not in state.owned:
            log.warning("%s: not written by bids2hf, not pushed", path)
            continue
        rec = state.shards.get(rel) if state is not None else None
        size = path.stat().st_size
        # Hashed lazily (by the upload thread) unless an earlier run recorded it.
        known = rec.sha256 if rec is not None and rec.size == size else None
        files.append(StagedFile(rel, path, size, known))
    target = open_target(url, private=private, timeout=timeout)
    report = PublishReport(url, dry_run=dry_run)
    keep = [f.path for f in files]
    if dry_run:
        try:
            remote = target.files()
            owned = recorded_paths(target, remote)
        except Exception:
            remote, owned = {}, set()
        for item in files:
            if same_content(remote.get(item.path), item.size, item.checksum(), item.local):
                report.unchanged.append(item.path)
            else:
                report.uploaded.append(item.path)
                report.uploaded_bytes += item.size
        report.deleted = stale_paths(remote, keep, owned)
        report.kept = kept_paths(stale_paths(remote, keep), owned)
        return report
    target.ensure()
    remote = target.files()
    owned = recorded_paths(target, remote)
    by_path = {f.path: f for f in files}
    conflicts = [
        p
        for p in remote_conflicts(remote, owned, keep)
        if not same_content(remote[p], by_path[p].size, by_path[p].checksum(), by_path[p].local)
    ]
    refuse_remote_conflicts(url, conflicts, overwrite)
    deletions = stale_paths(remote, keep, owned)
    report.kept = kept_paths(stale_paths(remote, keep), owned)
    shards = [f for f in files if f.path.startswith("data/")]
    final = [f for f in files if not f.path.startswith("data/")]
    final.sort(key=lambda f: (f.path in (MANIFEST_PATH, "README.md"), f.path))
    with ProgressBar(sum(f.size for f in files), len(files), enabled=progress, desc="push") as bar:
        publisher = Publisher(
            target, remote, max_staged=1 << 30, commit_every=commit_every, report=report, bar=bar
        )
        for item in shards:
            publisher.submit(item, holds_slot=False)
        try:
            publisher.finish(
                final, deletions, "bids2hf: dataset card, manifest and dataset-level files"
            )
        except BaseException:
            publisher.abort()
            raise
    verify_remote(
        target,
        {f.path: (f.size, f.checksum()) for f in files},
        {f.path: f.local for f in files},
        owned | set(keep),
    )
    return report


def kept_paths(stale: Iterable[str], owned: Collection[str]) -> list[str]:
    """Files the new output lacks that stay, since no record says bids2hf wrote them."""
    return [p for p in stale if p not in owned]
