"""One conversion once planned, while the folder's lock is held: each step in order.

Classify the shards against what exists (and the remote), refuse conflicts, check the room,
prepare the folder, remove what is stale, then write (:mod:`bids2hf.conversion.writing`).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from bids2hf._version import __version__
from bids2hf.conversion.card import USER_SECTION_FILE, user_section_of_card
from bids2hf.conversion.run import ConversionRun, staged_bound
from bids2hf.conversion.writing import write_outputs
from bids2hf.errors import DestinationError
from bids2hf.model.format import (
    DATASET_FILES_PREFIX,
    MANIFEST_PATH,
)
from bids2hf.model.state import ResumeState
from bids2hf.plan.plan import ConversionPlan
from bids2hf.publish.compare import Classified, classify
from bids2hf.publish.pipeline import (
    DryRunItem,
    RemoteRun,
    dry_run_report,
)
from bids2hf.publish.uploader import PublishReport
from bids2hf.report.card_facts import user_section
from bids2hf.write.beside import beside_files, beside_paths, remove_stale_beside
from bids2hf.write.output_folder import OutputFolder
from bids2hf.write.previews_output import (
    planned_paths,
)

__all__ = ["run_conversion"]

log = logging.getLogger(__name__)


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


#: Written last, in this order: until both are there, the output does not pass for complete.
_LAST_PATHS = (MANIFEST_PATH, "README.md")


def run_conversion(run: ConversionRun) -> None:
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
    write_outputs(run, work)
    (run.out.state_dir / USER_SECTION_FILE).unlink(missing_ok=True)  # now in the card
    store = run.out.store
    store.mark_complete()
    # Every thread of the run has ended (the publisher joined its own in finish()).
    store.compact_if_wasteful()
    run.out.clean_tmp()


def _destination(run: ConversionRun) -> str:
    """Load the folder's state and decide what this run does there (see _check_destination)."""
    loaded = run.out.load_state()
    mode = _check_destination(
        run.out, loaded, run.plan, run.source.location, run.overwrite, run.remote_url
    )
    if mode != "new":
        log.info("%s the conversion in %s", mode, run.out.root)
    return mode


def _dry_run(run: ConversionRun) -> PublishReport:
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


def _classify(run: ConversionRun) -> Classified:
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


def _paths(run: ConversionRun, work: Classified) -> _Paths:
    dataset = [DATASET_FILES_PREFIX + f.relpath for f in run.plan.dataset_files]
    dataset += beside_paths(run.plan.shards)  # [issue 11] files/...: copied like bids/ files
    dataset += planned_paths(run.report.previews)  # [issue 13] written with them, at the end
    local = [s.path for s in work.todo] + dataset + list(_LAST_PATHS)
    remote = [s.path for s in run.plan.shards] + dataset + list(_LAST_PATHS)
    return _Paths(dataset, local, remote)


def _refuse_conflicts(run: ConversionRun, work: Classified, paths: _Paths) -> None:
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


def _check_space(run: ConversionRun, work: Classified) -> None:
    """Refuse for lack of space before anything in the destination is touched."""
    todo = work.todo
    if run.remote is None:
        needed = sum(s.nbytes for s in todo)
    elif run.from_workers:  # [issue 14] shards never reach this machine's disk
        needed = 0
    else:  # at most this many shards exist locally at once
        needed = max((s.nbytes for s in todo), default=0) * (staged_bound(run) + run.workers)
    needed += sum(f.size for f in run.plan.dataset_files)
    beside = [f.size for f in beside_files(run.plan.shards).values()]
    # Locally every file stored beside; when publishing, copies share the staging slots with
    # the shards: as many at once as there are slots.
    needed += sum(beside) if run.remote is None else max(beside, default=0) * staged_bound(run)
    run.out.check_space(int(needed * 1.02) + (1 << 20))


def _prepare(run: ConversionRun, mode: str, paths: _Paths) -> None:
    """Record the run and what it will write, then create the working folders."""
    out, store, plan = run.out, run.out.store, run.plan
    previous_owned = set(run.state.owned)
    kept = user_section_of_card(run)  # before anything changes: broken markers stop the run
    # The state first: a kill before it is recorded leaves nothing but .bids2hf/ behind, and a
    # folder holding nothing else still counts as empty.
    store.begin(plan.plan_id, run.source.location, __version__, run.remote_url)  # [issue 15]
    out.prepare()
    if kept is not None:
        # The card may be removed below; its user section waits here until the new card is written.
        out.write_bytes(out.state_dir / USER_SECTION_FILE, user_section(kept).encode())
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


def _remove_stale(run: ConversionRun, work: Classified) -> None:
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
