"""``convert``: scan → plan → write shards (in parallel) → dataset files → manifest → card.

Resumable: a shard is recorded in the state file only after it was renamed into place, so a
re-run after any interruption skips complete shards and rewrites the rest, deterministically.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import queue
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
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
    same_content,
    stale_paths,
    verify_remote,
)
from .scan import ScanOptions, scan
from .shard_plan import ShardPlan
from .targets import RemoteFile, StagedFile, Target, is_remote, open_target
from .units import human_bytes
from .write import EmbeddedFile, ShardResult, init_worker, write_job, write_shard

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
def _prepare_output(
    out: OutputFolder, plan: ConversionPlan, source: Path, overwrite: bool
) -> dict[str, Any]:
    state = out.load_state()
    if out.is_empty():
        pass
    elif state is not None and state.get("plan_id") == plan.plan_id:
        log.info("resuming the conversion in %s", out.root)
    elif state is not None and not state.get("complete") and state.get("source") == str(source):
        # An unfinished run of the same source whose files changed since: finish it with the
        # new plan (shards still up to date are kept).
        log.info("updating the unfinished conversion in %s", out.root)
    elif overwrite:
        if not out.looks_like_ours():
            raise DestinationError(
                f"{out.root}: not empty and not a bids2hf output; --overwrite only replaces "
                "bids2hf outputs (choose an empty folder)"
            )
    else:
        reason = (
            "holds a bids2hf output of a different plan (source or options changed)"
            if state is not None
            else "is not empty"
        )
        raise DestinationError(
            f"{out.root}: {reason}; pass --overwrite to replace it, or choose an empty folder"
        )
    if state is None or state.get("plan_id") != plan.plan_id:
        # Shards of an older plan are kept when their content id still matches (cheap update).
        old = (state or {}).get("shards", {})
        state = {
            "plan_id": plan.plan_id,
            "source": str(source),
            "version": __version__,
            "shards": old,
            "complete": False,
        }
    return state


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
        overwrite: replace an existing local bids2hf output of another plan.
        strict: fail when any file would be left out.
        strict_privacy: fail when the privacy lint finds anything.
        progress: show a progress bar.
        repo_hint: repository name used in the card's code samples.
        publish: options of remote publication (staging folder and bound, dry run, ...).

    Returns:
        A :class:`ConvertReport`. Raises :class:`~bids2hf.errors.Bids2HfError` subclasses for
        problems the user can fix.
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
    # A staging folder is ours by construction; only a user's output folder needs --overwrite.
    state = _prepare_output(out, plan, inventory.root, overwrite or remote_url is not None)
    if remote_url is not None and publish.dry_run:
        report.publish = _dry_run(remote_url, plan, state, publish)
        return report
    target = (
        open_target(remote_url, private=publish.private, timeout=publish.timeout)
        if remote_url
        else None
    )
    remote: dict[str, RemoteFile] = {}
    if target is not None:
        target.ensure()
        remote = target.files()
    done_shards: dict[str, Any] = state["shards"]
    todo: list[ShardPlan] = []
    resubmit: list[ShardPlan] = []
    skip: list[ShardPlan] = []
    for shard in plan.shards:
        rec: dict[str, Any] = done_shards.get(shard.path) or {}
        path = out.root / shard.path
        current = rec.get("content_id") == shard.content_id
        on_disk = current and path.is_file() and path.stat().st_size == rec.get("size")
        if (
            target is not None
            and current
            and same_content(remote.get(shard.path), rec["size"], rec["sha256"])
        ):
            skip.append(shard)  # already on the remote
        elif on_disk and target is not None:
            resubmit.append(shard)  # written by an interrupted run, not uploaded yet
        elif on_disk:
            report.reused.append(shard.path)
        else:
            todo.append(shard)
    staged_bound = publish.max_staged or 2 * workers
    needed = (
        sum(s.nbytes for s in todo)
        if target is None
        else max((s.nbytes for s in todo), default=0) * (staged_bound + workers)
    ) + sum(f.size for f in plan.dataset_files)
    # Refuse for lack of space before anything in the destination is touched.
    out.check_space(int(needed * 1.02) + (1 << 20))
    out.prepare()
    for shard in skip:
        report.reused.append(shard.path)
        (out.root / shard.path).unlink(missing_ok=True)
    for shard in todo:
        done_shards.pop(shard.path, None)
    planned = {s.path for s in plan.shards}
    for stale in sorted(set(done_shards) - planned):
        done_shards.pop(stale)
    for path in sorted((out.root / "data").glob("*.parquet")):
        rel = f"data/{path.name}"
        if rel not in planned:
            path.unlink()
            if target is None:
                report.removed.append(rel)
    out.save_state(state)
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
    state_lock = threading.Lock()  # the upload thread records shard checksums too
    publisher = None
    if target is not None:
        report.publish = PublishReport(remote_url or "")

        def on_hashed(item: StagedFile) -> None:
            with state_lock:
                done_shards[item.path]["sha256"] = item.sha256
                out.save_state(state)

        publisher = Publisher(
            target,
            remote,
            max_staged=staged_bound,
            commit_every=publish.commit_every,
            report=report.publish,
            on_hashed=on_hashed,
        )

    def on_done(shard: ShardPlan, result: ShardResult) -> None:
        with state_lock:
            done_shards[shard.path] = {
                "content_id": shard.content_id,
                "size": result.size,
                "sha256": result.sha256,
                "files": [asdict(e) for e in result.files],
            }
            out.save_state(state)
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
                    rec = done_shards[shard.path]
                    publisher.acquire(True)
                    publisher.submit(
                        StagedFile(shard.path, out.root / shard.path, rec["size"], rec["sha256"]),
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
            entries = finish_output(out, plan, inventory, state, bar, repo_hint or "ORG/NAME")
        if publisher is not None and target is not None:
            _publish_final(out, plan, state, publisher, target, remote, entries)
    except OSError as exc:
        if disk_full(exc):
            out.finish()
            remaining = sum(s.nbytes for s in plan.shards if s.path not in done_shards)
            remaining += sum(f.size for f in plan.dataset_files)
            raise DestinationError(
                f"{out.root}: disk full; about {human_bytes(remaining)} more are needed — free "
                "space and re-run the same command (complete shards are kept)"
            ) from None
        raise
    report.seconds = time.monotonic() - started
    report.bytes_read = bar.bytes
    return report


def _repo_hint(url: str) -> str:
    m = re.match(r"^hf://datasets/([^@/]+/[^@/]+)", url)
    return m.group(1) if m else url


def _publish_final(
    out: OutputFolder,
    plan: ConversionPlan,
    state: dict[str, Any],
    publisher: Publisher,
    target: Target,
    remote: dict[str, RemoteFile],
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
    publisher.finish(
        final, stale_paths(remote, keep), "bids2hf: dataset card, manifest and dataset-level files"
    )
    expected = {
        s.path: (state["shards"][s.path]["size"], state["shards"][s.path]["sha256"])
        for s in plan.shards
    }
    expected.update({f.path: (f.size, f.sha256) for f in final})
    verify_remote(target, expected, {f.path: f.local for f in final})
    # The staging folder keeps only the resume state.
    for name in ("data", "bids", "bids2hf", "README.md"):
        path = out.root / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def _dry_run(
    url: str, plan: ConversionPlan, state: dict[str, Any], publish: PublishOptions
) -> PublishReport:
    target = open_target(url, private=publish.private, timeout=publish.timeout)
    try:
        remote = target.files()
    except Exception as exc:  # a repository that does not exist yet holds nothing
        log.debug("listing %s failed: %s", url, exc)
        remote = {}
    report = PublishReport(url, dry_run=True)
    for shard in plan.shards:
        rec = state["shards"].get(shard.path)
        if (
            rec
            and rec.get("content_id") == shard.content_id
            and same_content(remote.get(shard.path), rec["size"], rec["sha256"])
        ):
            report.unchanged.append(shard.path)
        else:
            report.uploaded.append(shard.path)
            report.uploaded_bytes += shard.nbytes
    keep = {s.path for s in plan.shards} | {
        DATASET_FILES_PREFIX + f.relpath for f in plan.dataset_files
    }
    keep |= {MANIFEST_PATH, "README.md"}
    report.deleted = stale_paths(remote, keep)
    return report


def finish_output(
    out: OutputFolder,
    plan: ConversionPlan,
    inventory: Inventory,
    state: dict[str, Any],
    bar: ProgressBar,
    repo_hint: str,
) -> list[ManifestEntry]:
    """Copy dataset-level files, then write the manifest and, last, the card."""
    copied: dict[str, Any] = state.setdefault("dataset_files", {})
    entries: list[ManifestEntry] = []
    wanted = {DATASET_FILES_PREFIX + f.relpath for f in plan.dataset_files}
    bids_dir = out.root / DATASET_FILES_PREFIX.rstrip("/")
    if bids_dir.is_dir():
        # Dataset-level files removed from the source since an earlier run must not linger.
        for path in sorted(p for p in bids_dir.rglob("*") if p.is_file()):
            if path.relative_to(out.root).as_posix() not in wanted:
                path.unlink()
    for f in plan.dataset_files:
        rel = DATASET_FILES_PREFIX + f.relpath
        rec = copied.get(f.relpath)
        dest = out.root / rel
        if not (rec and rec["size"] == f.size and rec["mtime_ns"] == f.mtime_ns and dest.is_file()):
            sha = out.copy_in(inventory.root / f.relpath, rel, lambda n: bar.update(n, 0))
            rec = copied[f.relpath] = {"size": f.size, "mtime_ns": f.mtime_ns, "sha256": sha}
        bar.update(0, 1)
        entries.append(
            ManifestEntry(f.relpath, f.size, Placement.DATASET_FILE.value, rec["sha256"], rel)
        )
    for f in plan.left_out:
        entries.append(ManifestEntry(f.relpath, f.size, Placement.LEFT_OUT.value, reason=f.reason))
    for shard in plan.shards:
        for e in state["shards"][shard.path]["files"]:
            ef = EmbeddedFile(**e)
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
    state["complete"] = True
    out.save_state(state)
    out.finish()
    return entries
