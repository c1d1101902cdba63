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
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from bids2hf.errors import InputError
from bids2hf.model.format import DATASET_FILES_PREFIX, MANIFEST_PATH, OWNED_PREFIXES, sha256_file
from bids2hf.model.manifest import ManifestEntry
from bids2hf.model.state import ResumeState
from bids2hf.plan.plan import ConversionPlan
from bids2hf.progress import ProgressBar
from bids2hf.publish.compare import (
    kept_paths,
    recorded_paths,
    refuse_remote_conflicts,
    remote_conflicts,
    same_content,
    stale_paths,
    verify_remote,
)
from bids2hf.publish.targets.base import RemoteFile, StagedFile, Target
from bids2hf.publish.targets.fsspec import FsspecTarget
from bids2hf.publish.targets.hub import HubTarget
from bids2hf.publish.uploader import Publisher, PublishReport
from bids2hf.write.output_folder import OutputFolder

__all__ = ["PublishOptions", "default_staging", "final_files", "is_remote", "open_target"]

log = logging.getLogger(__name__)


@dataclass
class PublishOptions:
    """Options of remote destinations (hf:// and fsspec URLs)."""

    private: bool = False  # create the Hub repository as private
    staging: Path | None = None  # local folder for shards awaiting upload (and the resume state)
    max_staged: int | None = None  # shards on local disk at most (default: 2 x workers)
    commit_every: int = 100  # data shards per commit
    dry_run: bool = False
    timeout: float | None = 300.0  # seconds per request read/write


def _publish_final(
    out: OutputFolder,
    plan: ConversionPlan,
    publisher: Publisher,
    target: Target,
    remote: dict[str, RemoteFile],
    remote_owned: set[str],
    entries: list[ManifestEntry],
) -> None:
    """Last commit (dataset files, manifest, card, deletions), then verify the remote."""
    dataset = [
        (e.location, e.size, e.sha256)
        for e in entries
        if e.placement == "dataset_file" and e.location and e.sha256
    ]
    final = final_files(out, dataset)
    keep = {s.path for s in plan.shards} | {f.path for f in final}
    # Only files a bids2hf run recorded writing there are deleted; others are kept and named.
    deletions = stale_paths(remote, keep, remote_owned)
    publisher.report.kept = kept_paths(stale_paths(remote, keep), remote_owned)
    publisher.finish(final, deletions, "bids2hf: dataset card, manifest and dataset-level files")
    out.store.remote_disown(deletions)
    shards = out.store.state.shards
    expected = {s.path: (shards[s.path].size, shards[s.path].sha256 or "") for s in plan.shards}
    expected.update({f.path: (f.size, f.checksum()) for f in final})
    verify_remote(target, expected, {f.path: f.local for f in final}, remote_owned)
    # The staging folder keeps only the resume state.
    out.remove_owned(
        [p for p in out.owned if p.startswith(("data/", DATASET_FILES_PREFIX, "bids2hf/"))]
        + ["README.md"]
    )
    for name in ("data", "bids", "bids2hf"):
        with contextlib.suppress(OSError):  # not empty: holds files bids2hf did not write
            (out.root / name).rmdir()


def _dry_run(
    url: str, plan: ConversionPlan, state: ResumeState, publish: PublishOptions
) -> PublishReport:
    target = open_target(url, private=publish.private, timeout=publish.timeout)
    try:
        remote = target.files()
        owned = recorded_paths(target, remote)
    except Exception as exc:  # a repository that does not exist yet holds nothing
        log.debug("listing %s failed: %s", url, exc)
        remote, owned = {}, set()
    if state.destination == url:
        owned |= state.remote_owned
    report = PublishReport(url, dry_run=True)
    for shard in plan.shards:
        rec = state.shards.get(shard.path)
        if (
            rec
            and rec.content_id == shard.content_id
            and same_content(remote.get(shard.path), rec.size, rec.sha256)
        ):
            report.unchanged.append(shard.path)
        else:
            report.uploaded.append(shard.path)
            report.uploaded_bytes += shard.nbytes
    keep = {s.path for s in plan.shards} | {
        DATASET_FILES_PREFIX + f.relpath for f in plan.dataset_files
    }
    keep |= {MANIFEST_PATH, "README.md"}
    report.deleted = stale_paths(remote, keep, owned)
    report.kept = kept_paths(stale_paths(remote, keep), owned)
    return report


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


def final_files(
    out: OutputFolder, dataset_files: Iterable[tuple[str, int, str]]
) -> list[StagedFile]:
    """The last commit's files: dataset-level files, the manifest and the card (in that order)."""
    items = [StagedFile(rel, out.root / rel, size, sha) for rel, size, sha in dataset_files]
    for rel in (MANIFEST_PATH, "README.md"):
        path = out.root / rel
        items.append(StagedFile(rel, path, path.stat().st_size, sha256_file(path)))
    return items


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


def is_remote(url: str | os.PathLike[str]) -> bool:
    return isinstance(url, str) and "://" in url and not url.startswith("file://")


def open_target(url: str, *, private: bool = False, timeout: float | None = 300.0) -> Target:
    """The publishing target for a URL (hf:// or any fsspec protocol)."""
    if url.startswith("hf://"):
        return HubTarget(url, private=private, timeout=timeout)
    return FsspecTarget(url)
