"""``convert``: scan → plan → write shards (in parallel) → dataset files → manifest → card.

Resumable: a shard is recorded in the state journal (:mod:`bids2hf.state`) only after it was
renamed into place, so a re-run after any interruption skips complete shards and rewrites the
rest, deterministically. Every path is recorded as bids2hf's before it is written, and only such
paths are ever deleted or replaced.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bids2hf._version import __version__
from bids2hf.bids.options import ScanOptions
from bids2hf.bids.scan import scan
from bids2hf.errors import DestinationError, InputError
from bids2hf.model.format import DATASET_FILES_PREFIX, MANIFEST_PATH
from bids2hf.model.inventory import Inventory, Problem, Severity
from bids2hf.model.rows import ShardPlan
from bids2hf.model.state import ResumeState, ShardRecord
from bids2hf.plan.options import PlanOptions
from bids2hf.plan.plan import ConversionPlan, make_plan
from bids2hf.progress import ProgressBar
from bids2hf.publish.compare import (
    classify,
    recorded_paths,
    refuse_remote_conflicts,
    remote_conflicts,
)
from bids2hf.publish.pipeline import (
    PublishOptions,
    _dry_run,
    _publish_final,
    _push,
    default_staging,
    is_remote,
    open_target,
)
from bids2hf.publish.targets.base import RemoteFile, StagedFile
from bids2hf.publish.uploader import Publisher, PublishReport
from bids2hf.report.card import render_card
from bids2hf.report.summaries import convert_summary
from bids2hf.units import human_bytes
from bids2hf.write.output import finish_output
from bids2hf.write.output_folder import OutputFolder, disk_full
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
    """Raise a one-line :class:`InputError` for the first error (privacy counts with --strict-privacy)."""
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
    bids_dir: str | os.PathLike[str],
    scan_options: ScanOptions | None = None,
    plan_options: PlanOptions | None = None,
) -> tuple[Inventory, ConversionPlan]:
    """Scan a BIDS folder and plan its conversion; reads metadata, writes nothing."""
    plan_options = plan_options or PlanOptions()
    # Row groups above 1 GiB would risk Arrow's 2 GiB limit per binary column chunk.
    if not 1000 <= plan_options.row_group_bytes <= 1 << 30:
        raise InputError("--row-group-size must be between 1kB and 1GiB")
    if plan_options.max_shard_bytes < 1000:
        raise InputError("--max-shard-size must be at least 1kB")
    inventory = scan(bids_dir, scan_options)
    return inventory, make_plan(inventory, plan_options)


# -- the verb ------------------------------------------------------------------------------
def _check_destination(
    out: OutputFolder,
    state: ResumeState | None,
    plan: ConversionPlan,
    source: Path,
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
    if state.plan_id == plan.plan_id:
        return "resume"
    if remote_url is not None:
        return "update"  # a staging folder holds only what bids2hf wrote: always ours to update
    if not state.complete and state.source == str(source):
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


def convert(
    bids_dir: str | os.PathLike[str],
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
) -> ConvertReport:
    """Convert a BIDS folder into a Hugging Face dataset, locally or straight to a remote.

    Args:
        bids_dir: the BIDS dataset's top folder.
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

    Returns:
        A :class:`ConvertReport`. Raises :class:`~bids2hf.errors.Bids2HfError` subclasses for
        problems the user can fix: :class:`InputError` for the source (also when it changes
        during the run), :class:`DestinationError` for the destination (not empty, another
        run using it, files bids2hf did not write in the way, disk full).
    """
    started = time.monotonic()
    inventory, plan = scan_and_plan(bids_dir, scan_options, plan_options)
    check_problems(plan.problems, strict_privacy=strict_privacy)
    if strict and plan.left_out:
        first = plan.left_out[0]
        raise InputError(
            f"{first.relpath}: would be left out ({first.reason}) and --strict is set "
            f"[{len(plan.left_out)} file(s) in all; `bids2hf inspect` lists them]"
        )
    workers = workers or os.cpu_count() or 1
    remote_url = str(destination) if is_remote(str(destination)) else None
    publish = publish or PublishOptions()
    if remote_url is not None:
        staging = publish.staging or default_staging(remote_url)
        out = OutputFolder(staging)
        repo_hint = repo_hint or _repo_hint(remote_url)
    else:
        out = OutputFolder(destination)
    report = ConvertReport(str(remote_url or out.root), plan, inventory)
    with out.locked():
        _convert_locked(
            out, report, remote_url, publish, workers, overwrite, progress, repo_hint or "ORG/NAME"
        )
    report.seconds = time.monotonic() - started
    return report


def _convert_locked(
    out: OutputFolder,
    report: ConvertReport,
    remote_url: str | None,
    publish: PublishOptions,
    workers: int,
    overwrite: bool,
    progress: bool,
    repo_hint: str,
) -> None:
    """The conversion proper, while holding the folder's lock."""
    plan, inventory = report.plan, report.inventory
    loaded = out.load_state()
    mode = _check_destination(out, loaded, plan, inventory.root, overwrite, remote_url)
    if mode != "new":
        log.info("%s the conversion in %s", mode, out.root)
    store = out.store
    state = store.state  # empty when there was none; kept up to date by the store
    if remote_url is not None and publish.dry_run:
        report.publish = _dry_run(remote_url, plan, state, publish)
        return
    target = (
        open_target(remote_url, private=publish.private, timeout=publish.timeout)
        if remote_url
        else None
    )
    remote: dict[str, RemoteFile] = {}
    remote_owned: set[str] = set()
    if target is not None:
        target.ensure()
        remote = target.files()
        remote_owned = recorded_paths(target, remote)
        if state.destination == remote_url:
            remote_owned |= state.remote_owned
    # Sizes of the shard files of the resume state found on disk (the classification is pure).
    local_sizes = {
        path: (out.root / path).stat().st_size
        for path in state.shards
        if (out.root / path).is_file()
    }
    classified = classify(
        plan.shards, state.shards, local_sizes, remote if target is not None else None
    )
    todo, resubmit, skip = classified.todo, classified.resubmit, classified.skip
    report.reused += [s.path for s in classified.reuse]
    # Every path this run writes, known before anything is written: a file in the way that
    # bids2hf did not write stops the run here, with the destination untouched.
    dataset_paths = [DATASET_FILES_PREFIX + f.relpath for f in plan.dataset_files]
    last_paths = [MANIFEST_PATH, "README.md"]
    local_paths = [s.path for s in todo] + dataset_paths + last_paths
    if conflicts := out.conflicts(local_paths):
        more = f" [+{len(conflicts) - 1} more]" if len(conflicts) > 1 else ""
        raise DestinationError(
            f"{out.root / conflicts[0]}: exists and bids2hf did not write it{more}; move it "
            "away, or choose another folder"
        )
    remote_paths = [s.path for s in plan.shards] + dataset_paths + last_paths
    if target is not None and remote_url is not None:
        known = {s.path for s in skip}  # the very bytes this run would write
        conflicts = [
            p for p in remote_conflicts(remote, remote_owned, remote_paths) if p not in known
        ]
        refuse_remote_conflicts(remote_url, conflicts, overwrite)
    staged_bound = publish.max_staged or 2 * workers
    needed = (
        sum(s.nbytes for s in todo)
        if target is None
        else max((s.nbytes for s in todo), default=0) * (staged_bound + workers)
    ) + sum(f.size for f in plan.dataset_files)
    # Refuse for lack of space before anything in the destination is touched.
    out.check_space(int(needed * 1.02) + (1 << 20))
    # The state first: a kill before it is recorded leaves nothing but .bids2hf/ behind, and a
    # folder holding nothing else still counts as empty.
    store.begin(plan.plan_id, str(inventory.root), __version__, remote_url)
    out.prepare()
    if mode == "replace":
        replaced = sorted(p for p in state.owned if os.path.lexists(out.root / p))
        report.replaced = replaced
        log.warning(
            "%s: --overwrite: replacing the bids2hf output of another plan (%d file(s) bids2hf "
            "wrote: %s); other files are kept",
            out.root,
            len(replaced),
            ", ".join(replaced[:5]) + (" ..." if len(replaced) > 5 else ""),
        )
    if mode in ("update", "replace") and target is None:
        # The card and manifest describe the output of another plan: until this run writes
        # them anew (last), the folder must not pass for a complete output.
        out.remove_owned(last_paths)
    # Recorded before they are written: a kill never leaves a file of ours without a record.
    store.own(local_paths)
    if target is not None:
        store.remote_own(remote_paths)
    for shard in skip:
        report.reused.append(shard.path)
        out.remove_owned([shard.path])  # the local copy of a shard the remote holds
    planned = {s.path for s in plan.shards}
    store.drop_shards([s.path for s in todo] + [p for p in state.shards if p not in planned])
    removed = out.remove_owned(
        [p for p in state.owned if p.startswith("data/") and p not in planned]
    )
    if target is None:
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
    if target is not None and todo:
        # Uploads start when the first shard is done: write the smallest one first. (Shards are
        # independent files, so the order of writing changes nothing in the output.)
        smallest = min(todo, key=lambda s: s.nbytes)
        todo.remove(smallest)
        todo.insert(0, smallest)
    total = sum(s.nbytes for s in todo) + sum(f.size for f in plan.dataset_files)
    nfiles = sum(
        len({r.relpath for row in s.rows for refs in row.files.values() for r in refs})
        for s in todo
    )
    bar = ProgressBar(total, nfiles + len(plan.dataset_files), enabled=progress, desc="convert")
    publisher = None
    if target is not None:
        report.publish = PublishReport(remote_url or "")

        def on_hashed(item: StagedFile) -> None:
            # On the publisher's hashing thread; the store serialises appends.
            if item.sha256 is not None:
                store.set_shard_sha256(item.path, item.sha256)

        publisher = Publisher(
            target,
            remote,
            max_staged=staged_bound,
            commit_every=publish.commit_every,
            report=report.publish,
            on_hashed=on_hashed,
        )

    def on_done(shard: ShardPlan, result: ShardResult) -> None:
        store.put_shard(
            ShardRecord(
                shard.path, shard.content_id, result.size, result.sha256, tuple(result.files)
            )
        )
        report.written.append(shard.path)
        if publisher is not None:
            publisher.submit(
                StagedFile(shard.path, out.root / shard.path, result.size, result.sha256),
                holds_slot=True,
            )

    try:
        with bar:
            if publisher is not None:
                for shard in resubmit:
                    rec = state.shards[shard.path]
                    publisher.acquire(True)
                    publisher.submit(
                        StagedFile(shard.path, out.root / shard.path, rec.size, rec.sha256),
                        holds_slot=True,
                    )
            write_shards(
                plan.columns,
                plan.arrow_schema,
                inventory.root,
                out,
                todo,
                workers,
                bar.update,
                on_done,
                acquire=publisher.acquire if publisher is not None else None,
            )
            card = render_card(plan, inventory.description, repo_hint).encode()
            entries = finish_output(
                out,
                inventory.root,
                plan.shards,
                plan.dataset_files,
                plan.left_out,
                bar.update,
                card,
            )
        if publisher is not None and target is not None:
            _publish_final(out, plan, publisher, target, remote, remote_owned, entries)
    except BaseException as exc:
        if publisher is not None:
            publisher.abort()
        if disk_full(exc):
            out.clean_tmp()  # no thread of this run writes there any more
            remaining = sum(s.nbytes for s in plan.shards if s.path not in state.shards)
            remaining += sum(f.size for f in plan.dataset_files)
            raise DestinationError(
                f"{out.root}: disk full; about {human_bytes(remaining)} more are needed — free "
                "space and re-run the same command (complete shards are kept)"
            ) from None
        raise
    store.mark_complete()
    # Every thread of the run has ended (the publisher joined its own in finish()).
    store.compact_if_wasteful()
    out.clean_tmp()
    report.bytes_read = bar.bytes


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
        return _push(out, url, private, commit_every, dry_run, timeout, progress, overwrite)
