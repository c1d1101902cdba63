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
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from bids2hf.model.format import BESIDE_PREFIX, MANIFEST_PATH, sha256_file
from bids2hf.model.manifest import ManifestEntry
from bids2hf.model.state import ResumeState
from bids2hf.progress import ProgressBar
from bids2hf.publish.compare import (
    card_identities,
    carries_bids2hf_index,
    foreign_card,
    kept_paths,
    read_remote,
    recorded_paths,
    refuse_remote_conflicts,
    remote_conflicts,
    same_content,
    stale_paths,
    verify_remote,
)
from bids2hf.publish.push_card import (
    card_keeping_remote_section,
    card_naming_repository,
    record_card,
)
from bids2hf.publish.staging import empty_staging
from bids2hf.publish.targets.base import RemoteFile, StagedFile, Target
from bids2hf.publish.targets.fsspec import FsspecTarget
from bids2hf.publish.targets.registry import open_target
from bids2hf.publish.uploader import Publisher, PublishReport
from bids2hf.write.output_folder import OutputFolder
from bids2hf.write.state_store import StateStore

__all__ = [
    "DryRunItem",
    "PublishOptions",
    "RemoteRun",
    "dry_run_report",
    "final_files",
    "upload_folder",
]

#: The message of the last commit of every publication.
FINAL_MESSAGE = "bids2hf: dataset card, manifest and dataset-level files"

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


@dataclass
class DryRunItem:
    """One file a dry run weighs: counted as ``nbytes`` if uploaded; the remote holds it already
    if it has ``size`` bytes with checksum ``sha256`` (None: unknown, so it would be uploaded)."""

    path: str
    nbytes: int
    size: int
    sha256: str | None
    local: Path | None = None


def dry_run_report(
    url: str,
    items: Sequence[DryRunItem],
    keep: Iterable[str],
    *,
    private: bool = False,
    timeout: float | None = 300.0,
    owned: Collection[str] = (),
) -> PublishReport:
    """What publishing ``items`` to ``url`` would upload, leave and delete; changes nothing.

    ``keep`` lists every path the publication writes (stale files are the others in bids2hf's
    folders); ``owned`` adds paths known to be bids2hf's besides the remote's own records (a
    staging folder's). A destination that cannot be listed (a repository not created yet) holds
    nothing. Raises :class:`~bids2hf.errors.InputError` for a URL no target understands.
    """
    target = open_target(url, private=private, timeout=timeout)
    try:
        remote = target.files()
        recorded = recorded_paths(target, remote)
    except Exception as exc:  # a repository that does not exist yet holds nothing
        log.debug("listing %s failed: %s", url, exc)
        remote, recorded = {}, set()
    recorded |= set(owned)
    report = PublishReport(url, dry_run=True)
    for item in items:
        if same_content(remote.get(item.path), item.size, item.sha256, item.local):
            report.unchanged.append(item.path)
        else:
            report.uploaded.append(item.path)
            report.uploaded_bytes += item.nbytes
    keep = list(keep)
    report.deleted = stale_paths(remote, keep, recorded)
    report.kept = kept_paths(stale_paths(remote, keep), recorded)
    return report


class RemoteRun:
    """The remote half of a streaming conversion: the target and what it holds, the
    :class:`Publisher`, the last commit, verification and the staging folder's cleanup.

    Use :meth:`open` (it creates the repository if needed and lists it), then :meth:`refuse_conflicts`
    before anything is written, :meth:`publisher` for the write loop and :meth:`finish` last.
    """

    def __init__(
        self,
        url: str,
        target: Target,
        remote: dict[str, RemoteFile],
        owned: set[str],
        options: PublishOptions,
        card: Collection[str] = (),
    ) -> None:
        self.url = url
        self.target = target
        self.remote = remote  # the destination's files when the run began
        self.owned = owned  # those a bids2hf record says bids2hf wrote
        self.options = options
        self.card = set(card)  # what the card bids2hf last published here may be (recorded)
        self.report = PublishReport(url)
        self._publisher: Publisher | None = None

    @classmethod
    def open(
        cls, url: str, options: PublishOptions, state: ResumeState, card: Collection[str] = ()
    ) -> RemoteRun:
        """Create the destination if needed and list it; ``state`` (the staging folder's) adds
        the paths its runs wrote there. ``card`` is what the card bids2hf last published there
        may be (:meth:`StateStore.published_card`): a remote card that is none of these was
        edited since, and is someone else's.

        Raises :class:`~bids2hf.errors.DestinationError` when the destination cannot be created
        or its records read, and the client's errors for failures that outlasted the retries.
        """
        target = open_target(url, private=options.private, timeout=options.timeout)
        target.ensure()
        remote = target.files()
        owned = recorded_paths(target, remote)
        if state.destination == url:
            owned |= state.remote_owned
        if foreign_card(remote.get("README.md"), card, lambda: read_remote(target, "README.md")):
            owned.discard("README.md")
        return cls(url, target, remote, owned, options, card)

    def refuse_conflicts(
        self, paths: Iterable[str], same: Collection[str], overwrite: bool
    ) -> None:
        """Refuse if a path this run writes holds a file bids2hf did not write (unless
        ``overwrite``); paths in ``same`` hold the very bytes this run would write.

        Raises :class:`~bids2hf.errors.DestinationError` naming the first such file.
        """
        conflicts = [p for p in remote_conflicts(self.remote, self.owned, paths) if p not in same]
        # Shards committed in a batch are named by no record until the last commit: their
        # footer says who wrote them (read only for such files, so a resume costs little).
        ours = {
            p
            for p in conflicts
            if p.startswith("data/")
            and p.endswith(".parquet")
            and carries_bids2hf_index(self.target, p)
        }
        self.owned |= ours
        conflicts = [p for p in conflicts if p not in ours]
        refuse_remote_conflicts(self.url, conflicts, overwrite)

    def publisher(
        self, max_staged: int, on_hashed: Callable[[StagedFile], None] | None = None
    ) -> Publisher:
        """The uploader of this run (one per run), reporting into :attr:`report`."""
        self._publisher = Publisher(
            self.target,
            self.remote,
            max_staged=max_staged,
            commit_every=self.options.commit_every,
            report=self.report,
            on_hashed=on_hashed,
        )
        return self._publisher

    def before_worker_uploads(self, paths: Sequence[str]) -> None:
        """[issue 14] Shards that Dask workers will upload themselves: an fsspec target drops
        (and writes out) their old checksums now, before the publisher's thread starts, as its
        ``stage`` does before each of its own uploads."""
        if isinstance(self.target, FsspecTarget):
            self.target.forget(paths)

    def abort(self) -> None:
        """Stop the uploader after a failure elsewhere (waits for its threads)."""
        if self._publisher is not None:
            self._publisher.abort()

    def finish(
        self,
        out: OutputFolder,
        shard_paths: Collection[str],
        entries: Sequence[ManifestEntry],
        extra: Sequence[str] = (),
    ) -> None:
        """Last commit (dataset files, ``extra`` files of the folder such as the previews,
        manifest, card, deletions), then verify the remote and empty the staging folder of
        everything but its resume state. ``shard_paths`` lists the files uploaded before
        (shards, and files stored beside them): kept and verified.

        Raises :class:`~bids2hf.errors.VerificationError` if the remote differs from what was
        written, and the target's errors for a failed upload or commit.
        """
        assert self._publisher is not None, "publisher() first"
        dataset = [
            (e.location, e.size, e.sha256)
            for e in entries
            if e.placement == "dataset_file" and e.location and e.sha256
        ]
        final = final_files(out, dataset, extra)
        keep = set(shard_paths) | {f.path for f in final}
        # Only files a bids2hf run recorded writing there are deleted; others are kept and named.
        deletions = stale_paths(self.remote, keep, self.owned)
        self.report.kept = kept_paths(stale_paths(self.remote, keep), self.owned)
        # Recorded before the commit, with the earlier card: killed after the commit, the next
        # run still knows the card there as bids2hf's, whichever of the two it is.
        card = card_identities(out.root / "README.md")
        out.store.record_published_card(self.url, self.card | card)
        self._publisher.finish(final, deletions, FINAL_MESSAGE)
        out.store.remote_disown(deletions)
        shards, beside = out.store.state.shards, out.store.state.beside
        expected = {p: (shards[p].size, shards[p].sha256 or "") for p in shard_paths if p in shards}
        for p in shard_paths:  # [issue 11] files stored beside, recorded when copied
            if (rec := beside.get(p.removeprefix(BESIDE_PREFIX))) and p.startswith(BESIDE_PREFIX):
                expected[p] = (rec.size, rec.sha256)
        expected.update({f.path: (f.size, f.checksum()) for f in final})
        verify_remote(self.target, expected, {f.path: f.local for f in final}, self.owned)
        out.store.record_published_card(self.url, card)
        empty_staging(out)


def final_files(
    out: OutputFolder, dataset_files: Iterable[tuple[str, int, str]], extra: Sequence[str] = ()
) -> list[StagedFile]:
    """The last commit's files: dataset-level files, ``extra`` files of the folder (the
    previews), the manifest and the card (in that order)."""
    items = [StagedFile(rel, out.root / rel, size, sha) for rel, size, sha in dataset_files]
    for rel in (*extra, MANIFEST_PATH, "README.md"):
        path = out.root / rel
        items.append(StagedFile(rel, path, path.stat().st_size, sha256_file(path)))
    return items


def upload_folder(
    files: Sequence[StagedFile],
    url: str,
    *,
    private: bool = False,
    commit_every: int = 100,
    dry_run: bool = False,
    timeout: float | None = 300.0,
    progress: bool = True,
    overwrite: bool = False,
    store: StateStore | None = None,
) -> PublishReport:
    """Upload a finished output's ``files`` to ``url``: shards in batched commits, then the
    dataset-level files, manifest and card with the deletions in the last commit; verify.

    Files the remote holds with the same content are skipped, and nothing is committed when
    nothing changed. Stale files are deleted only if a bids2hf record says bids2hf wrote them.
    ``store`` records the card pushed: edited on the remote since, it is someone else's.

    Raises :class:`~bids2hf.errors.DestinationError` for a remote file in the way that bids2hf
    did not write (without ``overwrite``), :class:`~bids2hf.errors.VerificationError` if the
    remote then differs from the files, and the target's errors for failed uploads.
    """
    keep = [f.path for f in files]
    if dry_run:  # (the card as a push would name it; no request made to name it)
        with card_naming_repository(files, open_target(url).repo_id) as named:
            items = [DryRunItem(f.path, f.size, f.size, f.checksum(), f.local) for f in named]
            return dry_run_report(url, items, keep, private=private, timeout=timeout)
    target = open_target(url, private=private, timeout=timeout)
    report = PublishReport(url)
    target.ensure()
    remote = target.files()
    recorded_card = store.published_card(url) if store is not None else set()
    # [qa3] a folder converted locally: its card's code samples name the repository now
    with card_naming_repository(files, target.repo_id) as named:
        by_path = {f.path: f for f in named}
        owned = _refuse_push_conflicts(target, remote, by_path, recorded_card, overwrite)
        # [qa2] the card pushed keeps the user section written on the destination since
        folder_card = by_path.get("README.md")  # (recorded: was its section edited here since?)
        merging = card_keeping_remote_section(target, remote, owned, named, recorded_card, files)
        with merging as pushed:
            run = (store, recorded_card, report, commit_every, progress, folder_card)
            _push_files(target, remote, owned, pushed, *run)
    return report


def _push_files(
    target: Target,
    remote: dict[str, RemoteFile],
    owned: set[str],
    files: Sequence[StagedFile],
    store: StateStore | None,
    recorded_card: set[str],
    report: PublishReport,
    commit_every: int,
    progress: bool,
    folder_card: StagedFile | None = None,
) -> None:
    """:func:`upload_folder` once the conflicts are refused: upload, commit, verify, record
    (with ``folder_card``, the folder's own card, see :func:`record_card`)."""
    keep = [f.path for f in files]
    by_path = {f.path: f for f in files}
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
        card = record_card(store, target.url, by_path.get("README.md"), recorded_card, folder_card)
        try:
            publisher.finish(final, deletions, FINAL_MESSAGE)
        except BaseException:
            publisher.abort()
            raise
    verify_remote(
        target,
        {f.path: (f.size, f.checksum()) for f in files},
        {f.path: f.local for f in files},
        owned | set(keep),
    )
    if store is not None and card:
        store.record_published_card(target.url, card)


def _refuse_push_conflicts(
    target: Target,
    remote: dict[str, RemoteFile],
    files: dict[str, StagedFile],
    recorded_card: set[str],
    overwrite: bool,
) -> set[str]:
    """The remote paths bids2hf wrote; refuses (:class:`~bids2hf.errors.DestinationError`) if
    another file of different content is in the way of ``files``, unless ``overwrite``."""
    owned = recorded_paths(target, remote)
    if foreign_card(
        remote.get("README.md"), recorded_card, lambda: read_remote(target, "README.md")
    ):
        owned.discard("README.md")  # edited there since bids2hf published it
    conflicts = [
        p
        for p in remote_conflicts(remote, owned, files)
        if not same_content(remote[p], files[p].size, files[p].checksum(), files[p].local)
    ]
    refuse_remote_conflicts(target.url, conflicts, overwrite)
    return owned
