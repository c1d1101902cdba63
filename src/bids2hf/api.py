"""``convert``: scan → plan → write shards (in parallel) → dataset files → manifest → card.

Resumable: a shard is recorded in the state journal (:mod:`bids2hf.state`) only after it was
renamed into place, so a re-run after any interruption skips complete shards and rewrites the
rest, deterministically. Every path is recorded as bids2hf's before it is written, and only such
paths are ever deleted or replaced.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from bids2hf._version import __version__
from bids2hf.bids.options import ScanOptions
from bids2hf.bids.scan import scan
from bids2hf.bids.source import source_of
from bids2hf.errors import DestinationError, InputError
from bids2hf.model.format import (
    BESIDE_PREFIX,
    DATASET_FILES_PREFIX,
    MANIFEST_PATH,
    OWNED_PREFIXES,
    sha256_file,
)
from bids2hf.model.inventory import Inventory, Problem, Severity
from bids2hf.model.manifest import ManifestEntry
from bids2hf.model.rows import ShardPlan
from bids2hf.model.source import Source
from bids2hf.model.state import ResumeState, ShardRecord
from bids2hf.plan.beside import MAX_VALUE_BYTES, files_url_of
from bids2hf.plan.options import PlanOptions
from bids2hf.plan.plan import ConversionPlan, make_plan
from bids2hf.plan.previews import PreviewChoice, plan_previews
from bids2hf.progress import ProgressBar
from bids2hf.publish.beside import copy_and_stage_beside
from bids2hf.publish.compare import Classified, classify, read_remote
from bids2hf.publish.pipeline import (
    DryRunItem,
    PublishOptions,
    RemoteRun,
    dry_run_report,
    is_remote,
    upload_folder,
)
from bids2hf.publish.staging import default_staging
from bids2hf.publish.targets.base import StagedFile
from bids2hf.publish.uploader import Publisher, PublishReport
from bids2hf.report.card import CardInputs, render_card
from bids2hf.report.card_facts import UserSectionError, extract_user_section, user_section
from bids2hf.report.summaries import convert_summary
from bids2hf.units import human_bytes
from bids2hf.write.beside import beside_files, beside_paths, remove_stale_beside
from bids2hf.write.engine import LocalEngine, ShardEngine, ShardJob, StagedShardResult
from bids2hf.write.output import finish_output
from bids2hf.write.output_folder import OutputFolder, disk_full
from bids2hf.write.previews_output import (
    PreviewsWritten,
    keep_thumbnails,
    planned_paths,
    write_previews,
)
from bids2hf.write.shard import ShardResult
from bids2hf.write.workers import write_shards

__all__ = ["ConvertReport", "check_problems", "convert", "push", "scan_and_plan"]

log = logging.getLogger(__name__)


@dataclass
class ConvertReport:
    """What a conversion did, for the summary and for callers."""

    output: str
    plan: ConversionPlan
    inventory: Inventory
    written: list[str] = field(default_factory=list)  # shards written by this run
    reused: list[str] = field(default_factory=list)  # complete shards found from an earlier run
    removed: list[str] = field(default_factory=list)  # stale shards deleted
    replaced: list[str] = field(default_factory=list)  # another plan's files (--overwrite)
    seconds: float = 0.0
    bytes_read: int = 0
    publish: PublishReport | None = None
    previews: PreviewChoice | None = None  # [issue 13] the thumbnails chosen (None: off)

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.plan.problems if p.severity is Severity.WARNING]

    def text(self) -> str:
        """One screen about the finished conversion."""
        return convert_summary(
            self.output,
            self.plan,
            written=len(self.written),
            reused=len(self.reused),
            removed=len(self.removed),
            seconds=self.seconds,
            bytes_read=self.bytes_read,
            warnings=self.warnings,
        )


def check_problems(
    problems: Sequence[Problem], *, strict_privacy: bool = False, what: str = "input"
) -> None:
    """Refuse problems that stop a conversion (privacy ones too with ``strict_privacy``).

    Raises:
        InputError: one line naming the first such problem (and how many more there are).
    """
    errors = [
        p
        for p in problems
        if p.severity is Severity.ERROR or (strict_privacy and p.code == "privacy")
    ]
    if not errors:
        return
    more = (
        f" [+{len(errors) - 1} more problem(s): run `bids2hf inspect` to list all]"
        if len(errors) > 1
        else ""
    )
    first = errors[0]
    if strict_privacy and first.code == "privacy":
        raise InputError(f"{first.one_line()} — refused by --strict-privacy{more}")
    raise InputError(f"{first.one_line()}{more}")


def scan_and_plan(
    bids_dir: str | os.PathLike[str] | Source,  # [issue 15] a URL or a Source too
    scan_options: ScanOptions | None = None,
    plan_options: PlanOptions | None = None,
) -> tuple[Inventory, ConversionPlan]:
    """Scan a BIDS folder (local, fsspec URL or Source) and plan its conversion; writes nothing.

    Raises:
        InputError: sizes out of range, or a source that cannot be read as BIDS.
    """
    plan_options = plan_options or PlanOptions()
    # Row groups above 1 GiB would risk Arrow's 2 GiB limit per binary column chunk.
    if not 1000 <= plan_options.row_group_bytes <= 1 << 30:
        raise InputError("--row-group-size must be between 1kB and 1GiB")
    if plan_options.max_shard_bytes < 1000:
        raise InputError("--max-shard-size must be at least 1kB")
    if not 0 <= plan_options.max_row_bytes <= MAX_VALUE_BYTES:
        raise InputError("--max-row-size must be between 0 and 2047MiB (2 GiB - 1 MiB)")
    inventory = scan(bids_dir, scan_options)
    return inventory, make_plan(inventory, plan_options)


# -- the verb ------------------------------------------------------------------------------
def _check_destination(
    out: OutputFolder,
    state: ResumeState | None,
    plan: ConversionPlan,
    source: str,  # [issue 15] the source's location
    overwrite: bool,
    remote_url: str | None,
) -> str:
    """What this run does in ``out``: ``new``, ``resume``, ``update`` or ``replace``.

    A folder is a bids2hf output only if it holds bids2hf's state; anything else that is not
    empty is refused, with or without --overwrite. Raises :class:`DestinationError`.
    """
    foreign = out.foreign_entries()
    if state is None:
        if not foreign:
            return "new"
        if remote_url is not None:
            raise DestinationError(
                f"{out.root}: not empty and not a bids2hf staging folder (no .bids2hf state); "
                "choose an empty or new folder for --staging"
            )
        if overwrite:
            raise DestinationError(
                f"{out.root}: not empty and not a bids2hf output (no .bids2hf state records "
                "what bids2hf wrote there); --overwrite only replaces files bids2hf wrote — "
                "choose an empty folder"
            )
        raise DestinationError(
            f"{out.root}: is not empty and holds no bids2hf output; choose an empty folder "
            "(--overwrite only replaces bids2hf outputs)"
        )
    if remote_url is not None and state.destination is None:
        # A local output, not a staging folder: publishing through it would empty it.
        raise DestinationError(
            f"{out.root}: holds a local bids2hf output, not a staging folder; publish it with "
            f"`bids2hf push {out.root} {remote_url}`, or give --staging an empty or new folder"
        )
    if state.plan_id == plan.plan_id:
        return "resume"
    if remote_url is not None:
        return "update"  # a staging folder holds only what bids2hf wrote: always ours to update
    if not state.complete and state.source == source:
        # An unfinished run of the same source whose files changed since: finish it with the
        # new plan (shards still up to date are kept).
        return "update"
    if overwrite:
        return "replace"
    raise DestinationError(
        f"{out.root}: holds a bids2hf output of a different plan (source or options changed); "
        "pass --overwrite to replace it (only files bids2hf wrote are replaced), or choose an "
        "empty folder"
    )


# long because: the docstring documents every argument; the body is ten lines of set-up.
def convert(
    bids_dir: str | os.PathLike[str] | Source,  # [issue 15]
    destination: str | os.PathLike[str],
    *,
    scan_options: ScanOptions | None = None,
    plan_options: PlanOptions | None = None,
    workers: int | None = None,
    overwrite: bool = False,
    strict: bool = False,
    strict_privacy: bool = False,
    progress: bool = True,
    repo_hint: str | None = None,
    publish: PublishOptions | None = None,
    client: Any = None,
    previews: int | None = None,
) -> ConvertReport:
    """Convert a BIDS folder into a Hugging Face dataset, locally or straight to a remote.

    Args:
        bids_dir: the BIDS dataset's top folder: a local path, an fsspec URL such as
            ``s3://openneuro.org/ds004884`` (read in place, never copied to local disk), or a
            :class:`~bids2hf.model.source.Source` (e.g. ``open_source(url, anon=True)``).
        destination: a local folder (created; must be empty, a resumable run, or ``overwrite``),
            ``hf://datasets/ORG/NAME[@REVISION]``, or an fsspec URL such as ``s3://bucket/prefix``.
            Remote destinations are written in one streaming pass: each shard is uploaded as soon
            as it is written and deleted locally once the upload is confirmed.
        scan_options: what to include and how to check it.
        plan_options: layout, shard and row-group sizes, config.
        workers: processes writing shards in parallel (default: the number of cores).
        overwrite: replace an existing local bids2hf output of another plan (only the files
            bids2hf recorded writing); on a remote, replace files at the paths bids2hf writes
            that no bids2hf record names.
        strict: fail when any file would be left out.
        strict_privacy: fail when the privacy lint finds anything.
        progress: show a progress bar.
        repo_hint: repository name used in the card's code samples.
        publish: options of remote publication (staging folder and bound, dry run, ...).
        client: [issue 14] a ``distributed.Client``: each shard is then a task on its Dask
            cluster, written by a worker straight to the destination (``workers`` is not used);
            the workers must see a local BIDS folder (and a local destination) at the same
            paths. See "Scaling out" in the README.
        previews: rows of the ``previews`` config (thumbnails the Hub's viewer shows) at most;
            None: as many as 0.5 % of the data's size allows (at least one); 0: no previews
            and no card pictures.

    Returns:
        A :class:`ConvertReport`. Raises :class:`~bids2hf.errors.Bids2HfError` subclasses for
        problems the user can fix: :class:`InputError` for the source (also when it changes
        during the run), :class:`DestinationError` for the destination (not empty, another
        run using it, files bids2hf did not write in the way, disk full), and
        :class:`~bids2hf.errors.ClusterError` when the Dask cluster cannot run the shards.
    """
    started = time.monotonic()
    if previews is not None and previews < 0:
        raise InputError(f"--previews must be 0 or more (got {previews})")
    # [issue 14] Made first: Dask workers warm up (import the writer) while the driver scans.
    engine = _engine(client, workers)
    remote_url = str(destination) if is_remote(str(destination)) else None
    # [issue 11] cells of files stored beside the shards hold a URL under the destination
    base = remote_url or os.path.abspath(destination)
    plan_options = dataclasses.replace(plan_options or PlanOptions(), files_url=files_url_of(base))
    inventory, plan = scan_and_plan(bids_dir, scan_options, plan_options)
    check_problems(plan.problems, strict_privacy=strict_privacy)
    if strict and plan.left_out:
        first = plan.left_out[0]
        raise InputError(
            f"{first.relpath}: would be left out ({first.reason}) and --strict is set "
            f"[{len(plan.left_out)} file(s) in all; `bids2hf inspect` lists them]"
        )
    workers = workers or os.cpu_count() or 1
    publish = publish or PublishOptions()
    if remote_url is not None:
        staging = publish.staging or default_staging(remote_url)
        out = OutputFolder(staging)
        repo_hint = repo_hint or _repo_hint(remote_url)
    else:
        out = OutputFolder(destination)
    report = ConvertReport(str(remote_url or out.root), plan, inventory)
    # [issue 13] decided from the plan alone: a re-run chooses the same files
    rows = [row for shard in plan.shards for row in shard.rows]
    report.previews = plan_previews(rows, plan.columns, plan.embedded_bytes, previews)
    with out.locked():
        _convert_locked(
            _Run(
                out,
                report,
                remote_url,
                publish,
                workers,
                overwrite,
                progress,
                repo_hint or "ORG/NAME",
                engine,
            )
        )
    report.seconds = time.monotonic() - started
    return report


@dataclass
class _Run:
    """What the steps of one conversion share (while the folder's lock is held)."""

    out: OutputFolder
    report: ConvertReport
    remote_url: str | None
    publish: PublishOptions
    workers: int
    overwrite: bool
    progress: bool
    repo_hint: str
    engine: ShardEngine  # [issue 14] who writes the shards
    remote: RemoteRun | None = None
    previews: PreviewsWritten | None = None  # [issue 13] once written, for the card

    @property
    def plan(self) -> ConversionPlan:
        return self.report.plan

    @property
    def from_workers(self) -> bool:
        """[issue 14] Workers put the shards on the remote themselves: none on this disk."""
        return self.remote is not None and self.engine.uploads

    @property
    def state(self) -> ResumeState:
        return self.out.store.state  # empty when there was none; kept up to date by the store

    @property
    def source(self) -> Source:
        """[issue 15] Where the files are read (inventories built in memory have only a root)."""
        inventory = self.report.inventory
        return source_of(inventory.root, inventory.source)


#: Written last, in this order: until both are there, the output does not pass for complete.
_LAST_PATHS = (MANIFEST_PATH, "README.md")


def _convert_locked(run: _Run) -> None:
    """The conversion proper, while holding the folder's lock: each step in order."""
    mode = _destination(run)
    if run.remote_url is not None and run.publish.dry_run:
        run.report.publish = _dry_run(run)
        return
    if run.remote_url is not None:
        card = run.out.store.published_card(run.remote_url)
        run.remote = RemoteRun.open(run.remote_url, run.publish, run.state, card)
        run.report.publish = run.remote.report
    work = _classify(run)
    paths = _paths(run, work)
    _refuse_conflicts(run, work, paths)
    _check_space(run, work)
    _prepare(run, mode, paths)
    _remove_stale(run, work)
    _write(run, work)
    (run.out.state_dir / _USER_SECTION).unlink(missing_ok=True)  # now in the card
    store = run.out.store
    store.mark_complete()
    # Every thread of the run has ended (the publisher joined its own in finish()).
    store.compact_if_wasteful()
    run.out.clean_tmp()


def _destination(run: _Run) -> str:
    """Load the folder's state and decide what this run does there (see _check_destination)."""
    loaded = run.out.load_state()
    mode = _check_destination(
        run.out, loaded, run.plan, run.source.location, run.overwrite, run.remote_url
    )
    if mode != "new":
        log.info("%s the conversion in %s", mode, run.out.root)
    return mode


def _dry_run(run: _Run) -> PublishReport:
    """Convert's dry run: the planned shards (unchanged when the staging state's record is
    current and the remote holds those bytes) and the paths the output would keep."""
    assert run.remote_url is not None
    plan, state = run.plan, run.state
    items = []
    for shard in plan.shards:
        rec = state.shards.get(shard.path)
        current = rec is not None and rec.content_id == shard.content_id
        size, sha = (rec.size, rec.sha256) if rec is not None and current else (-1, None)
        items.append(DryRunItem(shard.path, shard.nbytes, size, sha))
    keep = [s.path for s in plan.shards]
    keep += [DATASET_FILES_PREFIX + f.relpath for f in plan.dataset_files]
    keep += beside_paths(plan.shards)
    keep += planned_paths(run.report.previews)  # [issue 13]
    keep += _LAST_PATHS
    return dry_run_report(
        run.remote_url,
        items,
        keep,
        private=run.publish.private,
        timeout=run.publish.timeout,
        owned=state.remote_owned if state.destination == run.remote_url else (),
    )


def _classify(run: _Run) -> Classified:
    """Which planned shards to skip, resubmit, reuse or write (publish.compare.classify)."""
    out, state = run.out, run.state
    # Sizes of the shard files of the resume state found on disk (the classification is pure).
    local_sizes = {
        path: (out.root / path).stat().st_size
        for path in state.shards
        if (out.root / path).is_file()
    }
    remote = run.remote.remote if run.remote is not None else None
    work = classify(run.plan.shards, state.shards, local_sizes, remote)
    run.report.reused += [s.path for s in work.reuse]
    return work


@dataclass
class _Paths:
    """Every path this run writes, known before anything is written."""

    dataset: list[str]
    local: list[str]  # in the folder: shards to write, dataset-level files, manifest, card
    remote: list[str]  # on the destination: every shard, dataset-level files, manifest, card


def _paths(run: _Run, work: Classified) -> _Paths:
    dataset = [DATASET_FILES_PREFIX + f.relpath for f in run.plan.dataset_files]
    dataset += beside_paths(run.plan.shards)  # [issue 11] files/...: copied like bids/ files
    dataset += planned_paths(run.report.previews)  # [issue 13] written with them, at the end
    local = [s.path for s in work.todo] + dataset + list(_LAST_PATHS)
    remote = [s.path for s in run.plan.shards] + dataset + list(_LAST_PATHS)
    return _Paths(dataset, local, remote)


def _refuse_conflicts(run: _Run, work: Classified, paths: _Paths) -> None:
    """A file in the way that bids2hf did not write stops the run here, destination untouched."""
    if conflicts := run.out.conflicts(paths.local):
        more = f" [+{len(conflicts) - 1} more]" if len(conflicts) > 1 else ""
        raise DestinationError(
            f"{run.out.root / conflicts[0]}: exists and bids2hf did not write it{more}; move it "
            "away, or choose another folder"
        )
    if run.remote is not None:
        # Shards in skip: the remote holds the very bytes this run would write.
        run.remote.refuse_conflicts(paths.remote, {s.path for s in work.skip}, run.overwrite)


def _staged_bound(run: _Run) -> int:
    return run.publish.max_staged or 2 * run.workers


def _check_space(run: _Run, work: Classified) -> None:
    """Refuse for lack of space before anything in the destination is touched."""
    todo = work.todo
    if run.remote is None:
        needed = sum(s.nbytes for s in todo)
    elif run.from_workers:  # [issue 14] shards never reach this machine's disk
        needed = 0
    else:  # at most this many shards exist locally at once
        needed = max((s.nbytes for s in todo), default=0) * (_staged_bound(run) + run.workers)
    needed += sum(f.size for f in run.plan.dataset_files)
    beside = [f.size for f in beside_files(run.plan.shards).values()]
    # Locally every file stored beside; when publishing, one at a time next to the shards.
    needed += sum(beside) if run.remote is None else max(beside, default=0)
    run.out.check_space(int(needed * 1.02) + (1 << 20))


def _prepare(run: _Run, mode: str, paths: _Paths) -> None:
    """Record the run and what it will write, then create the working folders."""
    out, store, plan = run.out, run.out.store, run.plan
    previous_owned = set(run.state.owned)
    kept = _user_section_of_card(run)  # before anything changes: broken markers stop the run
    # The state first: a kill before it is recorded leaves nothing but .bids2hf/ behind, and a
    # folder holding nothing else still counts as empty.
    store.begin(plan.plan_id, run.source.location, __version__, run.remote_url)  # [issue 15]
    out.prepare()
    if kept is not None:
        # The card may be removed below; its user section waits here until the new card is written.
        out.write_bytes(out.state_dir / _USER_SECTION, user_section(kept).encode())
    if mode == "replace":
        replaced = sorted(p for p in previous_owned if os.path.lexists(out.root / p))
        run.report.replaced = replaced
        log.warning(
            "%s: --overwrite: replacing the bids2hf output of another plan (%d file(s) bids2hf "
            "wrote: %s); other files are kept",
            out.root,
            len(replaced),
            ", ".join(replaced[:5]) + (" ..." if len(replaced) > 5 else ""),
        )
    if mode in ("update", "replace") and run.remote is None:
        # The card and manifest describe the output of another plan: until this run writes
        # them anew (last), the folder must not pass for a complete output.
        out.remove_owned(_LAST_PATHS)
    # Recorded before they are written: a kill never leaves a file of ours without a record.
    store.own(paths.local)
    if run.remote is not None:
        store.remote_own(paths.remote)


def _remove_stale(run: _Run, work: Classified) -> None:
    """Local copies the remote already holds, and shards the new plan no longer has."""
    out, store, plan, report = run.out, run.out.store, run.plan, run.report
    state = run.state
    for shard in work.skip:
        report.reused.append(shard.path)
        out.remove_owned([shard.path])  # the local copy of a shard the remote holds
    planned = {s.path for s in plan.shards}
    store.drop_shards([s.path for s in work.todo] + [p for p in state.shards if p not in planned])
    removed = out.remove_owned(
        [p for p in state.owned if p.startswith("data/") and p not in planned]
    )
    remove_stale_beside(out, beside_files(plan.shards), local=run.remote is None)
    if run.remote is not None:
        return
    report.removed.extend(removed)
    if foreign := out.unowned_files("data"):
        log.warning(
            "%s: kept %d file(s) in data/ that bids2hf did not write (%s); the dataset's "
            "loaders read data/%s-*.parquet",
            out.root,
            len(foreign),
            ", ".join(foreign[:5]),
            plan.options.split,
        )


def _write(run: _Run, work: Classified) -> None:
    """Write the shards (uploading them as they come when publishing), the dataset files, the
    manifest and the card; then the remote's last commit. A full disk is one line."""
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
    run: _Run, todo: list[ShardPlan], resubmit: list[ShardPlan], bar: ProgressBar
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
        publisher = run.remote.publisher(_staged_bound(run), on_hashed)
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

    # [issue 11] files stored beside: copied (and uploaded) before the shards that list them
    copy_and_stage_beside(out, run.source, plan.shards, bar.update, run.remote, publisher)
    # [issue 14] the engine writes the shards (LocalEngine: write_shards, as before)
    run.engine.run(
        ShardJob(
            plan.columns, plan.arrow_schema, run.source, out, bar.update, _target(run),
            thumbnails=frozenset(report.previews.files) if report.previews else frozenset(),
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
        lambda manifest: _card(run, manifest),
    )


def _submit(publisher: Publisher, out: OutputFolder, shard: ShardPlan, result: ShardResult) -> None:
    """Hand a finished shard to the publisher: one in the staging folder holds a slot until it
    is uploaded; one a Dask worker put on the remote [issue 14] only waits for its commit."""
    item = StagedFile(shard.path, out.root / shard.path, result.size, result.sha256)
    if isinstance(result, StagedShardResult):
        item.handle, item.uploaded = result.handle, True
    publisher.submit(item, holds_slot=not item.uploaded)


def _engine(client: Any, workers: int | None) -> ShardEngine:
    """[issue 14] Tasks on the Dask cluster of ``client``, or processes on this machine."""
    if client is None:
        # This module's write_shards, looked up now: what tests and benchmarks patch is used.
        return LocalEngine(workers or os.cpu_count() or 1, write_shards)
    from bids2hf.scale.dask_engine import DaskEngine

    return DaskEngine(client)


def _target(run: _Run) -> object | None:
    return run.remote.target if run.remote is not None else None


def _write_previews(run: _Run) -> None:
    """[issue 13] The previews file and the card's pictures, from the thumbnails the shard
    writers made (kept in the state folder)."""
    plan = run.plan
    shas = {f.path: f.sha256 for s in plan.shards for f in run.state.shards[s.path].files}
    rows = [row for shard in plan.shards for row in shard.rows]
    run.previews = write_previews(
        run.out, run.source, rows, plan.columns, run.report.previews, shas
    )


_README_NAMES = ("README", "README.md", "README.rst", "README.txt")


_USER_SECTION = "user-section.md"  # in .bids2hf/, never published


def _user_section_of_card(run: _Run) -> str | None:
    """The user section of the card this run replaces (None if none): the destination's when
    publishing (the user may have edited it there), else the folder's, if bids2hf wrote it.

    Raises:
        DestinationError: its markers are broken (fixing them first keeps the user's text), or
            the destination's card cannot be read.
    """
    card = run.out.root / "README.md"
    remote = run.remote
    try:
        if remote is not None and "README.md" in remote.remote and "README.md" in remote.owned:
            where = f"{remote.url}/README.md"
            text = read_remote(remote.target, "README.md").decode("utf-8", errors="replace")
        elif "README.md" in run.out.owned and card.is_file():
            where, text = str(card), card.read_text(encoding="utf-8", errors="replace")
        else:
            return None
        return extract_user_section(text)
    except UserSectionError as exc:
        raise DestinationError(f"{where}: {str(exc).removeprefix('README.md: ')}") from None
    except Exception as exc:
        raise DestinationError(
            f"{where}: cannot be read ({type(exc).__name__}: {str(exc)[:200]}); it holds your "
            "user section: re-run later"
        ) from None


def _card(run: _Run, manifest: bytes) -> bytes:
    """The card, once the dataset-level files are in the folder: the README is read from there,
    and the user section from the card this run replaces (only one bids2hf wrote).

    Raises:
        DestinationError: the previous card's user-section markers are broken.
    """
    out = run.out
    names = {f.relpath for f in run.plan.dataset_files}
    readme_rel = next((n for n in _README_NAMES if n in names), None)
    readme_path = out.root / DATASET_FILES_PREFIX / readme_rel if readme_rel else None
    card_path, saved = out.root / "README.md", out.state_dir / _USER_SECTION
    previous = None
    if saved.is_file():  # saved by _prepare (or by a killed run, its card removed since)
        previous = saved.read_text(encoding="utf-8")
    elif "README.md" in out.owned and card_path.is_file():
        previous = card_path.read_text(encoding="utf-8", errors="replace")
    inputs = CardInputs(
        manifest=manifest,
        readme=(
            readme_path.read_text(encoding="utf-8", errors="replace") if readme_path else None
        ),
        readme_path=f"{DATASET_FILES_PREFIX}{readme_rel or 'README'}",
        participants=run.report.inventory.participants,
        previous=previous,
        headers={f.relpath: f.header for f in run.report.inventory.files if f.header},
        previews=run.previews,
    )
    try:
        text = render_card(run.plan, run.report.inventory.description, run.repo_hint, inputs)
    except UserSectionError as exc:
        raise DestinationError(f"{card_path}: {str(exc).removeprefix('README.md: ')}") from None
    return text.encode()


def _repo_hint(url: str) -> str:
    m = re.match(r"^hf://datasets/([^@/]+/[^@/]+)", url)
    return m.group(1) if m else url


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
        files = _output_files(out)
        if beside := [f.path for f in files if f.path.startswith(BESIDE_PREFIX)]:
            # [issue 11] their cells hold this folder's absolute paths, written into the shards
            raise InputError(
                f"{out.root}: holds {len(beside)} file(s) stored beside the shards ({beside[0]}, "
                f"...), whose cells point into this folder; convert straight to the destination "
                f"instead: bids2hf convert BIDS_DIR {url}"
            )
        return upload_folder(
            files,
            url,
            private=private,
            commit_every=commit_every,
            dry_run=dry_run,
            timeout=timeout,
            progress=progress,
            overwrite=overwrite,
            store=out.store if writable else None,
        )


def _output_files(out: OutputFolder) -> list[StagedFile]:
    """The files of a complete output that bids2hf wrote, with the checksums it recorded.

    Raises :class:`InputError` for a folder that is no complete output.
    """
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
        # Shards are hashed lazily (by the upload thread) unless an earlier run recorded it;
        # the other files are small, and without a checksum they would count as changed.
        known = rec.sha256 if rec is not None and rec.size == size else None
        if known is None and not rel.startswith("data/"):
            known = sha256_file(path)
        files.append(StagedFile(rel, path, size, known))
    return files
