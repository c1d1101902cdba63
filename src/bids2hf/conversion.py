"""``convert``: scan → plan → write shards (in parallel) → dataset files → manifest → card.

Resumable: a shard is recorded in the state journal (:mod:`bids2hf.state`) only after it was
renamed into place, so a re-run after any interruption skips complete shards and rewrites the
rest, deterministically. Every path is recorded as bids2hf's before it is written, and only such
paths are ever deleted or replaced.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import os
import queue
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from . import __version__
from .card import render_card
from .errors import DestinationError, InputError
from .inventory import Inventory, Placement, Problem, Severity
from .manifest import DATASET_FILES_PREFIX, MANIFEST_PATH, ManifestEntry, dumps
from .output_folder import OutputFolder, disk_full
from .plan import ConversionPlan, PlanOptions, make_plan
from .progress import ProgressBar
from .publish import (
    Publisher,
    PublishReport,
    default_staging,
    final_files,
    kept_paths,
    recorded_paths,
    refuse_remote_conflicts,
    remote_conflicts,
    same_content,
    stale_paths,
    verify_remote,
)
from .scan import ScanOptions, scan
from .shard_plan import ShardPlan
from .state import DatasetFileRecord, ResumeState, ShardRecord
from .targets import RemoteFile, StagedFile, Target, is_remote, open_target
from .units import human_bytes
from .write import ShardResult, init_worker, write_job, write_shard

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


# -- parallel shard writing -----------------------------------------------------------------
@contextmanager
def _drain(q: Any, bar: ProgressBar) -> Iterator[None]:
    stop = threading.Event()

    def run() -> None:
        while not stop.is_set() or not q.empty():
            try:
                nbytes, nfiles = q.get(timeout=0.1)
            except queue.Empty:
                continue
            bar.update(nbytes, nfiles)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def write_shards(
    plan: ConversionPlan,
    source_root: Path,
    out: OutputFolder,
    shards: Sequence[ShardPlan],
    workers: int,
    bar: ProgressBar,
    on_done: Callable[[ShardPlan, ShardResult], None],
    acquire: Callable[[bool], bool] | None = None,
) -> None:
    """Write shards, ``workers`` at a time, calling ``on_done`` in the parent as each completes.

    ``acquire(block)`` is asked for room before each shard is started; the publisher uses it to
    bound how many shards exist on local disk (it frees room once a shard is uploaded).
    """
    schema = plan.arrow_schema
    columns = plan.columns
    # Workers get the columns without their `datasets` feature objects (the schema carries the
    # types), so that unpickling them does not import `datasets` in every worker.
    lean_columns = [replace(c, feature=None) for c in columns]
    if workers <= 1 or len(shards) <= 1:
        for shard in shards:
            if acquire is not None:
                acquire(True)
            result = write_shard(
                shard,
                columns,
                schema,
                source_root,
                out.root / shard.path,
                out.tmp_path(shard.path),
                bar.update,
            )
            on_done(shard, result)
        return
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    with (
        _drain(q, bar),
        ProcessPoolExecutor(
            workers, mp_context=ctx, initializer=init_worker, initargs=(q,)
        ) as pool,
    ):
        pending: dict[Future[ShardResult], ShardPlan] = {}
        todo = list(shards)
        try:
            while todo or pending:
                while todo and len(pending) < workers:
                    # Never wait for room while shards are in flight: their completion frees it.
                    if acquire is not None and not acquire(not pending):
                        break
                    shard = todo.pop(0)
                    fut = pool.submit(
                        write_job,
                        shard,
                        lean_columns,
                        schema,
                        str(source_root),
                        str(out.root / shard.path),
                        str(out.tmp_path(shard.path)),
                    )
                    pending[fut] = shard
                done, _ = wait(pending, return_when=FIRST_COMPLETED, timeout=0.5)
                for fut in sorted(done, key=lambda f: pending[f].path):
                    shard = pending.pop(fut)
                    on_done(shard, fut.result())
        except BaseException:
            for fut in pending:
                fut.cancel()
            raise


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
    todo: list[ShardPlan] = []
    resubmit: list[ShardPlan] = []
    skip: list[ShardPlan] = []
    for shard in plan.shards:
        rec = state.shards.get(shard.path)
        path = out.root / shard.path
        current = rec is not None and rec.content_id == shard.content_id
        on_disk = current and path.is_file() and rec is not None and path.stat().st_size == rec.size
        if (
            target is not None
            and rec is not None
            and current
            and same_content(remote.get(shard.path), rec.size, rec.sha256)
        ):
            skip.append(shard)  # already on the remote
        elif on_disk and target is not None:
            resubmit.append(shard)  # written by an interrupted run, not uploaded yet
        elif on_disk:
            report.reused.append(shard.path)
        else:
            todo.append(shard)
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
                plan,
                inventory.root,
                out,
                todo,
                workers,
                bar,
                on_done,
                acquire=publisher.acquire if publisher is not None else None,
            )
            entries = finish_output(out, plan, inventory, bar, repo_hint)
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


def finish_output(
    out: OutputFolder,
    plan: ConversionPlan,
    inventory: Inventory,
    bar: ProgressBar,
    repo_hint: str,
) -> list[ManifestEntry]:
    """Copy dataset-level files, then write the manifest and, last, the card.

    Raises :class:`~bids2hf.write.SourceChangedError` if a dataset-level file changed since
    planning (nothing of it is copied; re-running converts the new version).
    """
    store = out.store
    state = store.state
    wanted = {DATASET_FILES_PREFIX + f.relpath for f in plan.dataset_files}
    # Dataset-level files removed from the source since an earlier run must not linger (those
    # bids2hf wrote: anything else under bids/ is not ours to delete).
    out.remove_owned(
        [p for p in state.owned if p.startswith(DATASET_FILES_PREFIX) and p not in wanted]
    )
    store.drop_dataset_files(
        [r for r in state.dataset_files if DATASET_FILES_PREFIX + r not in wanted]
    )
    entries: list[ManifestEntry] = []
    for f in plan.dataset_files:
        rel = DATASET_FILES_PREFIX + f.relpath
        rec = state.dataset_files.get(f.relpath)
        dest = out.root / rel
        if not (rec and rec.size == f.size and rec.mtime_ns == f.mtime_ns and dest.is_file()):
            sha = out.copy_in(
                inventory.root / f.relpath, rel, f.size, f.mtime_ns, lambda n: bar.update(n, 0)
            )
            rec = DatasetFileRecord(f.relpath, f.size, f.mtime_ns, sha)
            store.put_dataset_file(rec)
        bar.update(0, 1)
        entries.append(
            ManifestEntry(f.relpath, f.size, Placement.DATASET_FILE.value, rec.sha256, rel)
        )
    for f in plan.left_out:
        entries.append(ManifestEntry(f.relpath, f.size, Placement.LEFT_OUT.value, reason=f.reason))
    for shard in plan.shards:
        for ef in state.shards[shard.path].files:
            entries.append(
                ManifestEntry(
                    ef.path,
                    ef.size,
                    Placement.ROW.value,
                    ef.sha256,
                    shard.path,
                    ef.column,
                    ef.row,
                    ef.index,
                )
            )
    out.write_bytes(out.root / MANIFEST_PATH, dumps(entries))
    out.write_bytes(
        out.root / "README.md", render_card(plan, inventory.description, repo_hint).encode()
    )
    return entries
