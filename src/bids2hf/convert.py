"""``convert``: scan → plan → write shards (in parallel) → dataset files → manifest → card.

Resumable: a shard is recorded in the state file only after it was renamed into place, so a
re-run after any interruption skips complete shards and rewrites the rest, deterministically.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from . import __version__
from .card import render_card
from .errors import DestinationError, InputError
from .inventory import Inventory, Placement, Problem, Severity
from .manifest import DATASET_FILES_PREFIX, MANIFEST_PATH, ManifestEntry, dumps
from .output_folder import OutputFolder, disk_full
from .plan import ColumnSpec, ConversionPlan, PlanOptions, make_plan
from .progress import ProgressBar
from .scan import ScanOptions, scan
from .shard_plan import ShardPlan
from .write import EmbeddedFile, ShardResult, write_shard

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
    seconds: float = 0.0
    bytes_read: int = 0

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
    progress: bool = False,
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
_progress_queue: Any = None


def _init_worker(q: Any) -> None:
    global _progress_queue
    _progress_queue = q


def _worker_progress(nbytes: int, nfiles: int) -> None:
    if _progress_queue is not None:
        _progress_queue.put((nbytes, nfiles))


def _write_job(
    shard: ShardPlan, columns: list[ColumnSpec], schema: pa.Schema, root: str, final: str, tmp: str
) -> ShardResult:
    return write_shard(shard, columns, schema, Path(root), Path(final), Path(tmp), _worker_progress)


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
    max_pending: int | None = None,
) -> None:
    """Write shards, ``workers`` at a time, calling ``on_done`` in the parent as each completes.

    ``max_pending`` bounds how many finished-but-unconsumed shards may exist, which is how the
    publisher bounds local disk: ``on_done`` may block until a shard has been uploaded.
    """
    schema = plan.arrow_schema
    columns = plan.columns
    if workers <= 1 or len(shards) <= 1:
        for shard in shards:
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
            workers, mp_context=ctx, initializer=_init_worker, initargs=(q,)
        ) as pool,
    ):
        pending: dict[Future[ShardResult], ShardPlan] = {}
        todo = list(shards)
        try:
            while todo or pending:
                while todo and len(pending) < (max_pending or workers):
                    shard = todo.pop(0)
                    fut = pool.submit(
                        _write_job,
                        shard,
                        columns,
                        schema,
                        str(source_root),
                        str(out.root / shard.path),
                        str(out.tmp_path(shard.path)),
                    )
                    pending[fut] = shard
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                # Report in plan order is not needed: each shard is independent.
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
    output: str | os.PathLike[str],
    *,
    scan_options: ScanOptions | None = None,
    plan_options: PlanOptions | None = None,
    workers: int | None = None,
    overwrite: bool = False,
    strict: bool = False,
    strict_privacy: bool = False,
    progress: bool = True,
    repo_hint: str = "ORG/NAME",
) -> ConvertReport:
    """Convert a BIDS folder into a local Hugging Face dataset folder.

    Args:
        bids_dir: the BIDS dataset's top folder.
        output: the output folder (created; must be empty, a resumable run, or ``overwrite``).
        scan_options: what to include and how to check it.
        plan_options: layout, shard and row-group sizes, config.
        workers: processes writing shards in parallel (default: the number of cores).
        overwrite: replace an existing bids2hf output of another plan.
        strict: fail when any file would be left out.
        strict_privacy: fail when the privacy lint finds anything.
        progress: show a progress bar.
        repo_hint: repository name used in the card's code samples.

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
    out = OutputFolder(output)
    report = ConvertReport(str(out.root), plan, inventory)
    state = _prepare_output(out, plan, inventory.root, overwrite)
    out.prepare()
    done_shards: dict[str, Any] = state["shards"]
    todo = []
    for shard in plan.shards:
        rec = done_shards.get(shard.path)
        path = out.root / shard.path
        if (
            rec
            and rec.get("content_id") == shard.content_id
            and path.is_file()
            and path.stat().st_size == rec.get("size")
        ):
            report.reused.append(shard.path)
        else:
            done_shards.pop(shard.path, None)
            todo.append(shard)
    planned = {s.path for s in plan.shards}
    for stale in sorted(set(done_shards) - planned):
        done_shards.pop(stale)
    for path in sorted((out.root / "data").glob("*.parquet")):
        rel = f"data/{path.name}"
        if rel not in planned:
            path.unlink()
            report.removed.append(rel)
    needed = sum(s.nbytes for s in todo) + sum(f.size for f in plan.dataset_files)
    out.check_space(int(needed * 1.02) + (1 << 20))
    out.save_state(state)
    total = sum(s.nbytes for s in todo) + sum(f.size for f in plan.dataset_files)
    nfiles = sum(
        len({r.relpath for row in s.rows for refs in row.files.values() for r in refs})
        for s in todo
    )
    bar = ProgressBar(total, nfiles + len(plan.dataset_files), enabled=progress, desc="convert")

    def on_done(shard: ShardPlan, result: ShardResult) -> None:
        done_shards[shard.path] = {
            "content_id": shard.content_id,
            "size": result.size,
            "sha256": result.sha256,
            "files": [asdict(e) for e in result.files],
        }
        out.save_state(state)
        report.written.append(shard.path)

    try:
        with bar:
            write_shards(
                plan, inventory.root, out, todo, workers or os.cpu_count() or 1, bar, on_done
            )
            finish_output(out, plan, inventory, state, bar, repo_hint)
    except OSError as exc:
        if disk_full(exc):
            out.finish()
            remaining = sum(s.nbytes for s in plan.shards if s.path not in done_shards)
            raise DestinationError(
                f"{out.root}: disk full; about {remaining / 1e9:.2f} GB more are needed — free "
                "space and re-run the same command (complete shards are kept)"
            ) from None
        raise
    report.seconds = time.monotonic() - started
    report.bytes_read = bar.bytes
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
