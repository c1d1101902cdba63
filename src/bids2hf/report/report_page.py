"""``bids2hf report OUT_DIR``: the facts of a converted dataset gathered for the HTML page.

From the output alone (its manifest, ``bids/`` files and ``images/``), or, given the BIDS
folder's scan and plan, with every problem, the left-out reasons and the image headers too.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from bids2hf._version import __version__
from bids2hf.model.format import DATASET_FILES_PREFIX, MANIFEST_PATH
from bids2hf.model.inventory import Inventory, Placement
from bids2hf.model.manifest import ManifestEntry, loads
from bids2hf.plan.plan import ConversionPlan
from bids2hf.report.card_facts import (
    ParticipantSummary,
    description_facts,
    participant_summary,
    shorten_readme,
)
from bids2hf.report.html_report import ReportData
from bids2hf.report.image_facts import KindFacts, summarize_kind
from bids2hf.units import human_bytes

__all__ = ["REPORT_DIR", "report_data"]

#: the report's folder in OUT_DIR (bids2hf never publishes it: it is not a file it owns)
REPORT_DIR = "report"
_README_NAMES = ("README", "README.md", "README.rst", "README.txt")


def _manifest(out: Path) -> list[ManifestEntry]:
    """The output's manifest.

    Raises:
        FileNotFoundError: OUT_DIR holds no bids2hf manifest (not a converted dataset).
    """
    path = out / MANIFEST_PATH
    if not path.is_file():
        raise FileNotFoundError(f"{out}: no {MANIFEST_PATH}; run `bids2hf convert` first")
    return loads(path.read_bytes())


def _participants(out: Path, inventory: Inventory | None) -> ParticipantSummary | None:
    if inventory is not None and inventory.participants is not None:
        return participant_summary(inventory.participants.rows.values())
    tsv = out / DATASET_FILES_PREFIX / "participants.tsv"
    if not tsv.is_file():
        return None
    lines = [ln.split("\t") for ln in tsv.read_text(encoding="utf-8", errors="replace").splitlines()]
    if not lines:
        return None
    head = [h.strip() for h in lines[0]]
    # A short row leaves its last columns out, as a missing value.
    rows = (dict(zip(head, (v.strip() for v in row), strict=False)) for row in lines[1:] if row)
    return participant_summary(rows)


def _kinds_from_plan(plan: ConversionPlan, inventory: Inventory | None) -> list[KindFacts]:
    """Per kind, from the plan's rows, with the headers the scan's check read (local or not)."""
    known = {f.relpath: f.header for f in inventory.files} if inventory is not None else {}
    files: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for shard in plan.shards:
        for row in shard.rows:
            for column, refs in row.files.items():
                files[column] += [(r.relpath, r.size) for r in refs]
    kinds = []
    for k in plan.kinds:
        listed = files.get(k.column, [])
        headers = [known.get(p) for p, _ in listed]
        kinds.append(summarize_kind(k.kind, k.column, headers, [s for _, s in listed], k.rows))
    return kinds


def _kinds_from_manifest(entries: list[ManifestEntry]) -> list[KindFacts]:
    """Per column, from the manifest alone (no headers: the summary says so)."""
    by_column: dict[str, list[ManifestEntry]] = defaultdict(list)
    for e in entries:
        if e.placement == Placement.ROW.value and e.column:
            by_column[e.column].append(e)
    return [
        summarize_kind(
            column,
            column,
            [None] * len(group),
            [e.size for e in group],
            len({(e.location, e.row) for e in group}),
        )
        for column, group in sorted(by_column.items())
    ]


def _pictures(plan: ConversionPlan, root: Path) -> tuple[dict[str, bytes], dict[str, str]]:
    """A thumbnail of the first file of each image column (a file that cannot be drawn: none)."""
    from bids2hf.write.thumbnails import ThumbnailError, thumbnail_png  # numpy, nibabel, PIL

    first: dict[str, str] = {}
    for shard in plan.shards:
        for row in shard.rows:
            for column, refs in row.files.items():
                if refs and refs[0].relpath.endswith((".nii", ".nii.gz")):
                    first.setdefault(column, refs[0].relpath)
    pictures, shown = {}, {}
    for column, relpath in first.items():
        try:
            pictures[column] = thumbnail_png((root / relpath).read_bytes())
        except (OSError, ThumbnailError):
            continue
        shown[column] = relpath
    return pictures, shown


def report_data(
    out: Path, inventory: Inventory | None = None, plan: ConversionPlan | None = None
) -> ReportData:
    """The page's facts for the output folder ``out`` (with the BIDS folder's scan and plan
    when given: then every problem is listed and image headers are read).

    Raises:
        FileNotFoundError: ``out`` is not a bids2hf output (no manifest).
    """
    entries = _manifest(out)
    bids = out / DATASET_FILES_PREFIX
    desc_path = bids / "dataset_description.json"
    try:
        description: dict[str, Any] = json.loads(desc_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        description = {}
    if not isinstance(description, dict):
        description = {}
    readme_path = next((bids / n for n in _README_NAMES if (bids / n).is_file()), None)
    readme = readme_path.read_text(encoding="utf-8", errors="replace") if readme_path else None
    left = Counter(e.reason or "?" for e in entries if e.placement == Placement.LEFT_OUT.value)
    embedded = [e for e in entries if e.placement == Placement.ROW.value]
    if plan is not None:
        kinds = _kinds_from_plan(plan, inventory)
        problems: list[Any] = list(plan.problems)
    else:
        kinds = _kinds_from_manifest(entries)
        problems = []
    pictures = {p.stem: p.read_bytes() for p in sorted((out / "images").glob("*.png"))}
    shown: dict[str, str] = {}
    local = inventory is not None and isinstance(inventory.root, Path)
    if not pictures and plan is not None and inventory is not None and local:
        pictures, shown = _pictures(plan, Path(inventory.root))
    facts = description_facts(description)
    summary = [
        ("output", str(out)),
        ("embedded files", f"{len(embedded)} ({human_bytes(sum(e.size for e in embedded))})"),
        ("shards", str(len({e.location for e in embedded}))),
        ("left out", str(sum(left.values()))),
        (
            "problems",
            "from the BIDS folder's scan" if plan is not None else "not checked (pass --bids)",
        ),
    ]
    return ReportData(
        title=facts.name,
        summary=summary,
        description=facts,
        readme=shorten_readme(readme) if readme else None,
        kinds=kinds,
        participants=_participants(out, inventory),
        pictures=pictures,
        shown=shown,
        problems=problems,
        left_out=dict(sorted(left.items())),
        version=__version__,
    )
