"""``verify``: compare a BIDS folder with a published dataset, file by file.

The published side is read from metadata only (manifest and shard footers), so verifying a
300 GB dataset on the Hub downloads kilobytes; the source side is hashed locally.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

from bids2hf.bids.source import open_source, sha256_of
from bids2hf.bids.walk import NOT_REGULAR, Walked, not_followed_problem
from bids2hf.errors import InputError
from bids2hf.model.format import BESIDE_PREFIX, DATASET_FILES_PREFIX, sha256_file
from bids2hf.model.manifest import ManifestEntry
from bids2hf.model.source import Source
from bids2hf.progress import ProgressBar
from bids2hf.readback.published import PublishedDataset, open_dataset

__all__ = ["Difference", "VerifyReport", "verify"]

log = logging.getLogger(__name__)


@dataclass
class Difference:
    path: str
    kind: str  # missing | changed | extra
    detail: str = ""


@dataclass
class VerifyReport:
    """Result of ``verify``; ``ok`` when nothing is missing, changed or extra."""

    checked: int = 0
    left_out: int = 0
    differences: list[Difference] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.differences

    def text(self) -> str:
        if self.ok:
            return f"identical: {self.checked} file(s) match" + (
                f"; {self.left_out} left out on purpose (see the manifest)" if self.left_out else ""
            )
        counts = {
            k: sum(d.kind == k for d in self.differences) for k in ("missing", "changed", "extra")
        }
        lines = [
            f"differences: {counts['missing']} missing, {counts['changed']} changed, {counts['extra']} extra "
            f"({self.checked} file(s) checked)",
            "",
            f"  {'status':<8}  path",
        ]
        lines += [
            f"  {d.kind:<8}  {d.path}" + (f"  ({d.detail})" if d.detail else "")
            for d in sorted(self.differences, key=lambda d: (d.kind, d.path))
        ]
        return "\n".join(lines)


def _source_files(source: Source) -> dict[str, Walked]:
    """The BIDS folder as ``convert`` saw it: the same walk, the same folders not entered."""
    details: dict[str, str] = {}
    walked = source.walk(details)  # [issue 15] a local folder or an fsspec URL
    # Folders not entered are warned about; pipes and sockets (left out at conversion, with
    # their reason in the manifest) have nothing to compare.
    skipped = [w.relpath for w in walked if w.not_followed and w.not_followed != NOT_REGULAR]
    if skipped:
        problem = not_followed_problem(skipped, details, "their files are not compared")
        log.warning("%s", problem.one_line())
    return {w.relpath: w for w in walked if not (w.vcs_dir or w.not_followed)}


def _sha256(bids: Source, relpath: str, bar: ProgressBar) -> str:
    local = bids.local_path(relpath)  # [issue 15] a remote BIDS folder is streamed
    if local is not None:
        digest = sha256_file(local, on_bytes=bar.update)
    else:
        digest = sha256_of(bids, relpath, bar.update)
    bar.update(0, 1)
    return digest


def verify(
    bids_dir: str | os.PathLike[str] | Source, source: str, *, progress: bool = True
) -> VerifyReport:
    """Compare ``bids_dir`` (a folder, an fsspec URL or a Source) with the dataset at ``source``
    (folder, hf:// or fsspec URL).

    Raises:
        InputError: ``bids_dir`` is no folder, ``source`` is no bids2hf dataset, or its index is
            damaged or crafted.
        VerificationError: a shard the manifest references is no readable Parquet file.
    """
    bids = open_source(bids_dir)  # [issue 15]
    if not bids.is_dir():
        # Otherwise a typo would report every published file as "extra".
        raise InputError(
            f"{bids_dir if isinstance(bids_dir, (str, os.PathLike)) else bids.location}: "
            "no such folder (give the BIDS folder to compare)"
        )
    dataset = open_dataset(source)
    published, left_out = _published(dataset)
    beside = dataset.files(BESIDE_PREFIX.rstrip("/"))  # [issue 11] one listing
    report = VerifyReport(left_out=len(left_out))
    source_files = _source_files(bids)
    total = sum(w.size for rel, w in source_files.items() if rel in published and w.is_file)
    with ProgressBar(total, len(source_files), enabled=progress, desc="verify") as bar:
        for rel, w in sorted(source_files.items()):
            entry = published.get(rel)
            if entry is None:
                if rel not in left_out:
                    report.differences.append(
                        Difference(rel, "missing", "not in the published dataset")
                    )
                continue
            report.checked += 1
            if (difference := _difference(bids, rel, w, entry, beside, bar)) is not None:
                report.differences.append(difference)
    for rel, entry in sorted(published.items()):
        if rel not in source_files:
            # Every published entry has a location: its shard or its path under bids/.
            report.differences.append(Difference(rel, "extra", f"in {entry.location}"))
    return report


def _published(dataset: PublishedDataset) -> tuple[dict[str, ManifestEntry], set[str]]:
    """What the dataset holds, by BIDS path, and the paths its manifest lists as left out.

    Embedded files are taken from the shards themselves (their size and sha256), not from the
    manifest's word. A manifest says what the dataset holds, as for export: only the shards it
    references are read (data/ may hold foreign files and stale copies), and only the files it
    lists count.

    Raises:
        InputError: the dataset's index is damaged or crafted.
        VerificationError: a shard the manifest references is no readable Parquet file.
    """
    published: dict[str, ManifestEntry] = {}
    left_out: set[str] = set()
    manifest = dataset.manifest()
    for e in manifest or []:
        if e.placement == "left_out":
            left_out.add(e.path)
        elif e.placement == "dataset_file" and e.location:
            published[e.path] = e
    listed = None if manifest is None else {(e.location, e.path) for e in manifest}
    if listed is not None:  # [issue 11] files stored beside: their cell is in e.shard
        listed |= {(e.shard, e.path) for e in manifest or [] if e.placement == "beside"}
    for shard, files in dataset.embedded(manifest).items():
        for ef in files:
            if listed is not None and (shard, ef.path) not in listed:
                continue
            where, placement = (shard, "row") if ef.location is None else (ef.location, "beside")
            published.setdefault(
                ef.path,
                ManifestEntry(
                    ef.path, ef.size, placement, ef.sha256, where, ef.column, ef.row, ef.index
                ),
            )
    stored = dataset.listing(DATASET_FILES_PREFIX.rstrip("/"))
    for e in list(published.values()):
        if e.placement == "dataset_file" and e.location not in stored:
            published.pop(e.path)
    return published, left_out


def _difference(
    bids: Source,
    rel: str,
    w: Walked,
    entry: ManifestEntry,
    beside: dict[str, int],
    bar: ProgressBar,
) -> Difference | None:
    """How source file ``rel`` (walked as ``w``) differs from its published ``entry``, if it does."""
    if entry.placement == "beside" and beside.get(entry.location or "") != entry.size:
        found = beside.get(entry.location or "")
        what = "missing" if found is None else f"{found} bytes, {entry.size} recorded"
        return Difference(rel, "changed", f"published copy {entry.location}: {what}")
    if w.broken or w.unreadable:
        what = "broken symlink" if w.broken else "permission denied"
        return Difference(rel, "changed", f"cannot be read ({what})")
    if w.size != entry.size:
        return Difference(rel, "changed", f"size {w.size} vs {entry.size} published")
    try:
        digest = _sha256(bids, rel, bar)
    except OSError as exc:  # removed or made unreadable since the walk
        digest = f"cannot be read ({exc.strerror or exc})"
    if digest != entry.sha256:
        detail = digest if digest.startswith("cannot") else "sha256 differs"
        return Difference(rel, "changed", detail)
    return None
