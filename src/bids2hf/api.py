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
from pathlib import Path
from typing import Any

from bids2hf.bids.options import ScanOptions
from bids2hf.bids.scan import scan
from bids2hf.conversion.run import ConversionRun, ConvertReport
from bids2hf.conversion.steps import run_conversion
from bids2hf.errors import DestinationError, InputError
from bids2hf.model.format import (
    BESIDE_PREFIX,
    MANIFEST_PATH,
    OWNED_PREFIXES,
    REPO_PLACEHOLDER,
    sha256_file,
)
from bids2hf.model.inventory import Inventory, Problem, Severity
from bids2hf.model.source import Source
from bids2hf.plan.beside import MAX_VALUE_BYTES, files_url_of
from bids2hf.plan.options import PlanOptions
from bids2hf.plan.plan import ConversionPlan, make_plan
from bids2hf.plan.previews import plan_previews
from bids2hf.publish.pipeline import PublishOptions, upload_folder
from bids2hf.publish.staging import default_staging
from bids2hf.publish.targets.base import StagedFile
from bids2hf.publish.targets.registry import is_remote
from bids2hf.publish.uploader import PublishReport
from bids2hf.write.engine import LocalEngine, ShardEngine
from bids2hf.write.output_folder import OutputFolder
from bids2hf.write.workers import write_shards

__all__ = ["ConvertReport", "check_problems", "convert", "push", "scan_and_plan"]

log = logging.getLogger(__name__)


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


# long because: the API's entry point documents each of its fourteen arguments (body ~45 lines)
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
        destination: a local folder (created; must be empty, a resumable run, or ``overwrite``;
            also as ``file:///abs/path``), ``hf://datasets/ORG/NAME[@REVISION]``, or an fsspec
            URL such as ``s3://bucket/prefix``.
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
    if isinstance(destination, str):
        destination = destination.removeprefix("file://")  # a local folder, named as a URL
    remote_url = str(destination) if is_remote(str(destination)) else None
    # [issue 11] cells of files stored beside the shards hold a URL under the destination
    base = remote_url or os.path.abspath(destination)
    plan_options = dataclasses.replace(plan_options or PlanOptions(), files_url=files_url_of(base))
    publish = publish or PublishOptions()
    out_dir = (
        (publish.staging or default_staging(remote_url)) if remote_url is not None else destination
    )
    what = "output folder"
    if remote_url is not None:
        what = "--staging folder" if publish.staging else "staging folder (under BIDS2HF_CACHE)"
    _refuse_output_in_source(bids_dir, out_dir, what)
    inventory, plan = scan_and_plan(bids_dir, scan_options, plan_options)
    check_problems(plan.problems, strict_privacy=strict_privacy)
    if strict and plan.left_out:
        first = plan.left_out[0]
        raise InputError(
            f"{first.relpath}: would be left out ({first.reason}) and --strict is set "
            f"[{len(plan.left_out)} file(s) in all; `bids2hf inspect` lists them]"
        )
    workers = workers or os.cpu_count() or 1
    out = OutputFolder(out_dir)
    if remote_url is not None:
        repo_hint = repo_hint or _repo_hint(remote_url)
    report = ConvertReport(str(remote_url or out.root), plan, inventory)
    # [issue 13] decided from the plan alone: a re-run chooses the same files
    rows = [row for shard in plan.shards for row in shard.rows]
    report.previews = plan_previews(rows, plan.columns, plan.embedded_bytes, previews)
    with out.locked():
        run_conversion(
            ConversionRun(
                out,
                report,
                remote_url,
                publish,
                workers,
                overwrite,
                progress,
                repo_hint or REPO_PLACEHOLDER,
                engine,
            )
        )
    report.seconds = time.monotonic() - started
    return report


def _local_root(bids_dir: str | os.PathLike[str] | Source) -> Path | None:
    """The BIDS folder on local disk, resolved; None for a remote source."""
    if isinstance(bids_dir, (str, os.PathLike)):
        text = os.fspath(bids_dir)
        if "://" in text and not text.startswith("file://"):
            return None
        text = text.removeprefix("file://")
        return Path(os.path.realpath(text))
    top = bids_dir.local_path("")
    return None if top is None else Path(os.path.realpath(top))


def _refuse_output_in_source(
    bids_dir: str | os.PathLike[str] | Source, out_dir: str | os.PathLike[str], what: str
) -> None:
    """Refuse an output (or staging) folder, named ``what`` in the message, that is the BIDS
    folder or lies inside it: the next scan would read the output as part of the dataset, and
    the conversion would replace files it reads. Writes nothing.

    Raises:
        DestinationError: one line naming the folder and the fix.
    """
    root = _local_root(bids_dir)
    if root is None:
        return
    out = Path(os.path.realpath(out_dir))
    if out == root or out.is_relative_to(root):
        where = "is the BIDS folder" if out == root else f"is inside the BIDS folder {root}"
        raise DestinationError(
            f"{out}: this {what} {where}, so the dataset would take in its own output; choose "
            "a folder outside it"
        )


def _engine(client: Any, workers: int | None) -> ShardEngine:
    """[issue 14] Tasks on the Dask cluster of ``client``, or processes on this machine."""
    if client is None:
        # This module's write_shards, looked up now: what tests and benchmarks patch is used.
        return LocalEngine(workers or os.cpu_count() or 1, write_shards)
    from bids2hf.scale.dask_engine import DaskEngine

    return DaskEngine(client)


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

