"""``bids2hf report``: one static HTML page (plus its pictures) for checking a dataset before
publishing it.

The page loads nothing from the network: CSS is inline, charts are inline SVG, pictures are PNG
files in ``images/`` beside ``index.html``. It shows the card's tables and pictures, per image
kind the distributions of shapes, voxel sizes, TR and file sizes, and every problem ``inspect``
found (none is left out, unlike the terminal summary).
"""

from __future__ import annotations

import enum
import html
import itertools
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from bids2hf.report.card_facts import DescriptionFacts, ParticipantSummary, ShortReadme, hub_license
from bids2hf.report.image_facts import KindFacts
from bids2hf.units import human_bytes

__all__ = ["GENERATOR", "ReportData", "ReportProblem", "render_html", "write_report"]

#: Marks the pages this module writes: an ``index.html`` without it is never overwritten.
GENERATOR = "bids2hf report"
_TOP = 10  # bars per chart; the rest are summed as "other"


class ReportProblem(Protocol):
    """What the report reads of a problem (``inventory.Problem`` has these attributes)."""

    @property
    def severity(self) -> Any: ...  # "error"/"warning", or an enum whose value is
    @property
    def code(self) -> str: ...
    @property
    def path(self) -> str: ...
    @property
    def message(self) -> str: ...
    @property
    def hint(self) -> str: ...


@dataclass
class ReportData:
    """Everything the page shows."""

    title: str
    summary: Sequence[tuple[str, str]] = ()  # (label, value) rows: source, rows, shards, ...
    description: DescriptionFacts | None = None
    readme: ShortReadme | None = None
    kinds: Sequence[KindFacts] = ()
    participants: ParticipantSummary | None = None
    pictures: Mapping[str, bytes] = field(default_factory=dict)  # column → PNG bytes
    shown: Mapping[str, str] = field(default_factory=dict)  # column → file the picture shows
    problems: Sequence[ReportProblem] = ()
    left_out: Mapping[str, int] = field(default_factory=dict)  # reason → files
    version: str = ""


_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;color:#1d2330;background:#f6f7f9}
header{background:#23395d;color:#fff;padding:18px 28px}header h1{margin:0;font-size:22px}
header p{margin:4px 0 0;opacity:.85}main{padding:8px 28px 40px;max-width:1180px}
section{background:#fff;border:1px solid #dde1e7;border-radius:6px;padding:14px 18px;margin:16px 0}
h2{font-size:17px;margin:0 0 10px}h3{font-size:14px;margin:14px 0 6px}
table{border-collapse:collapse;margin:4px 0}th,td{border:1px solid #dde1e7;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#eef1f5}td.n{text-align:right;font-variant-numeric:tabular-nums}
.error{color:#a11}.warning{color:#8a5a00}.ok{color:#1a7f37}
tr.error td:first-child{background:#fde8e8}tr.warning td:first-child{background:#fff4d6}
figure{display:inline-block;margin:6px 14px 10px 0;vertical-align:top}figcaption{font-size:12px;color:#555}
figure img{background:#000;border:1px solid #ccc;image-rendering:auto;max-width:100%}
.charts{display:flex;flex-wrap:wrap;gap:10px 22px}.chart{font-size:12px}
pre{white-space:pre-wrap;background:#f3f4f6;padding:8px;border-radius:4px;max-height:320px;overflow:auto}
code{background:#eef1f5;padding:0 3px;border-radius:3px}
"""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _severity(p: ReportProblem) -> str:
    value = p.severity.value if isinstance(p.severity, enum.Enum) else p.severity
    return str(value).lower()


def _table(
    head: Sequence[str], rows: Sequence[Sequence[object]], numeric: Sequence[int] = ()
) -> str:
    out = ["<table>"]
    if any(head):  # a key/value table has no header row
        out += ["<tr>", *(f"<th>{_e(h)}</th>" for h in head), "</tr>"]
    for row in rows:
        cells = "".join(
            f'<td class="n">{_e(c)}</td>' if i in numeric else f"<td>{_e(c)}</td>"
            for i, c in enumerate(row)
        )
        out.append(f"<tr>{cells}</tr>")
    out.append("</table>")
    return "".join(out)


def _bars(title: str, counts: Sequence[tuple[str, int]]) -> str:
    """A horizontal bar chart as inline SVG (labels left, bar, count)."""
    if not counts:
        return ""
    items = list(counts)
    if len(items) > _TOP:
        items = [*items[: _TOP - 1], ("other", sum(n for _, n in items[_TOP - 1 :]))]
    label_w, bar_w, row_h = 150, 170, 17
    most = max(n for _, n in items) or 1
    height = row_h * len(items) + 22
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{label_w + bar_w + 50}" height="{height}" '
        f'role="img" aria-label="{_e(title)}">',
        f'<text x="0" y="13" font-size="12" font-weight="600">{_e(title)}</text>',
    ]
    for i, (label, n) in enumerate(items):
        y = 20 + i * row_h
        w = max(1, round(bar_w * n / most)) if n else 0
        short = label if len(label) <= 24 else label[:23] + "…"
        parts += [
            f'<text x="{label_w - 4}" y="{y + 12}" font-size="11" text-anchor="end">{_e(short)}</text>',
            f'<rect x="{label_w}" y="{y + 2}" width="{w}" height="{row_h - 5}" fill="#4a78b5"/>',
            f'<text x="{label_w + w + 4}" y="{y + 12}" font-size="11">{n}</text>',
        ]
    parts.append("</svg>")
    return f'<div class="chart">{"".join(parts)}</div>'


def _size_bins(sizes: Sequence[int], bins: int = 8) -> list[tuple[str, int]]:
    """File sizes in up to ``bins`` equal-width ranges (one bar when all are alike)."""
    if not sizes:
        return []
    lo, hi = min(sizes), max(sizes)
    bins = min(bins, len(set(sizes)))
    if hi == lo or bins < 2:
        return [(human_bytes(lo), len(sizes))]
    width = (hi - lo) / bins
    counts = [0] * bins
    for s in sizes:
        counts[min(bins - 1, math.floor((s - lo) / width))] += 1
    edges = [lo + i * width for i in range(bins + 1)]
    labels = [f"{human_bytes(a)} to {human_bytes(b)}" for a, b in itertools.pairwise(edges)]
    if len(set(labels)) < len(labels):  # a narrow range: rounded sizes would all look alike
        labels = [f"{round(a):,} to {round(b):,} B" for a, b in itertools.pairwise(edges)]
    return list(zip(labels, counts, strict=True))


def _sorted(counts: Mapping[str, int]) -> list[tuple[str, int]]:
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))


def _problems(problems: Sequence[ReportProblem]) -> str:
    errors = sum(1 for p in problems if _severity(p) == "error")
    warnings = len(problems) - errors
    if not problems:
        return '<section id="problems"><h2>Problems</h2><p class="ok">inspect found no problem.</p></section>'
    order = sorted(problems, key=lambda p: (_severity(p) != "error", p.path, p.code))
    rows = [
        f'<tr class="{_e(_severity(p))}"><td>{_e(_severity(p))}</td><td>{_e(p.code)}</td>'
        f"<td><code>{_e(p.path)}</code></td><td>{_e(p.message)}</td><td>{_e(p.hint)}</td></tr>"
        for p in order
    ]
    return (
        '<section id="problems"><h2>Problems</h2>'
        f'<p><span class="error">{errors} error(s)</span>, <span class="warning">{warnings} '
        "warning(s)</span>, all listed.</p><table><tr><th>severity</th><th>code</th><th>file</th>"
        f"<th>problem</th><th>fix</th></tr>{''.join(rows)}</table></section>"
    )


def _pictures(data: ReportData, names: Mapping[str, str]) -> str:
    if not data.pictures:
        return ""
    kinds = {k.column: k.kind for k in data.kinds}
    figures = [
        f'<figure><img src="{_e(names[c])}" alt="{_e(kinds.get(c, c))}">'
        f"<figcaption><b>{_e(kinds.get(c, c))}</b> <code>{_e(c)}</code>"
        + (f"<br>{_e(data.shown[c])}" if c in data.shown else "")
        + "</figcaption></figure>"
        for c in data.pictures
    ]
    return (
        '<section id="pictures"><h2>Pictures</h2><p>Mid-slices (axial, coronal, sagittal) of the '
        "first image of each kind; subject's left on the left (neurological), anterior on the "
        f"left of the sagittal view; middle volume of 4-D images.</p>{''.join(figures)}</section>"
    )


def _kinds(kinds: Sequence[KindFacts]) -> str:
    if not kinds:
        return ""
    rows = [
        (k.kind, k.column, k.files, human_bytes(k.bytes), k.rows, k.typical_shape or "-",
         k.typical_voxel_size or "-", k.typical_tr or "-", k.unreadable)
        for k in kinds
    ]  # fmt: skip
    head = ("images", "column", "files", "size", "rows", "typical shape", "voxel size (mm)",
            "TR (s)", "unreadable headers")  # fmt: skip
    out = ['<section id="images"><h2>Images</h2>', _table(head, rows, numeric=(2, 3, 4, 8))]
    for k in kinds:
        charts = "".join(
            (
                _bars("shapes", _sorted(k.shapes)),
                _bars("voxel sizes (mm)", _sorted(k.voxel_sizes)),
                _bars("TR (s)", _sorted(k.trs)),
                _bars("file sizes", _size_bins(k.sizes)),
            )
        )
        out.append(
            f'<h3>{_e(k.kind)} <code>{_e(k.column)}</code></h3><div class="charts">{charts}</div>'
        )
    out.append("</section>")
    return "".join(out)


def _participants(s: ParticipantSummary | None) -> str:
    if s is None:
        return ""
    rows: list[tuple[str, str]] = [("participants", str(s.participants))]
    if s.age_min is not None:
        rows.append(
            (f"age ({s.age_column})", f"{s.age_min} to {s.age_max} ({s.age_count} with a value)")
        )
    charts = _bars("sex", list(s.sex.items())) + "".join(
        _bars(column, list(counts.items())) for column, counts in s.groups.items()
    )
    return (
        '<section id="participants"><h2>Participants</h2>'
        f'{_table(("", ""), rows)}<div class="charts">{charts}</div>'
        "<p>Aggregates only: no per-subject value is shown.</p></section>"
    )


def _dataset(d: DescriptionFacts | None, readme: ShortReadme | None) -> str:
    if d is None and readme is None:
        return ""
    rows: list[tuple[str, str]] = []
    if d is not None:
        hub_id, note = hub_license(d.license)
        rows += [("name", d.name), ("BIDS version", d.bids_version or "-"),
                 ("license", f"{d.license or '(none)'} → Hub: {hub_id}" + (f" ({note})" if note and d.license is None else "")),
                 ("authors", ", ".join(d.authors) or "-"), ("DOI", d.doi or "-"),
                 ("how to acknowledge", d.how_to_acknowledge or "-"),
                 ("funding", "; ".join(d.funding) or "-"),
                 ("references and links", "; ".join(d.references) or "-"),
                 ("ethics approvals", "; ".join(d.ethics_approvals) or "-")]  # fmt: skip
    text = (
        f"<h3>README{' (shortened)' if readme and readme.shortened else ''}</h3><pre>{_e(readme.text)}</pre>"
        if readme
        else ""
    )
    return f'<section id="dataset"><h2>Dataset</h2>{_table(("", ""), rows) if rows else ""}{text}</section>'


def render_html(data: ReportData, picture_names: Mapping[str, str] | None = None) -> str:
    """The page's HTML (pictures referenced as ``images/<column>.png`` unless named otherwise).

    Never raises for any content: every text is escaped.
    """
    names = dict(picture_names or {c: f"images/{c}.png" for c in data.pictures})
    left = ""
    if data.left_out:
        left = (
            '<section id="left-out"><h2>Left out</h2>'
            + _table(("reason", "files"), _sorted(data.left_out), numeric=(1,))
            + "</section>"
        )
    summary = (
        f'<section id="summary"><h2>Summary</h2>{_table(("", ""), list(data.summary))}</section>'
        if data.summary
        else ""
    )
    body = "".join(
        (
            summary,
            _problems(data.problems),
            _pictures(data, names),
            _kinds(data.kinds),
            _participants(data.participants),
            _dataset(data.description, data.readme),
            left,
        )
    )
    return (
        "<!DOCTYPE html>\n"
        f'<html lang="en"><head><meta charset="utf-8"><meta name="generator" content="{GENERATOR}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(data.title)} — bids2hf report</title><style>{_CSS}</style></head><body>"
        f"<header><h1>{_e(data.title)}</h1><p>bids2hf {_e(data.version)} report: what would be "
        "published, and every problem found.</p></header>"
        f"<main>{body}</main></body></html>\n"
    )


def _ours(index: Path) -> bool:
    try:
        with open(index, encoding="utf-8", errors="replace") as f:
            return f'<meta name="generator" content="{GENERATOR}">' in f.read(4096)
    except FileNotFoundError:
        return True


def _atomic_write(path: Path, blob: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(blob)
    os.replace(tmp, path)


def write_report(dest: str | os.PathLike[str], data: ReportData) -> Path:
    """Write ``dest/index.html`` and ``dest/images/<column>.png``; return the page's path.

    Raises:
        FileExistsError: ``dest/index.html`` exists and is not a bids2hf report (never
            overwritten), or ``dest`` is a file.
        OSError: the folder cannot be written.
    """
    root = Path(dest)
    if root.exists() and not root.is_dir():
        raise FileExistsError(f"{root}: is a file; choose a folder for the report")
    index = root / "index.html"
    if not _ours(index):
        raise FileExistsError(
            f"{index}: exists and is not a bids2hf report; choose another folder for the report"
        )
    (root / "images").mkdir(parents=True, exist_ok=True)
    names: dict[str, str] = {}
    for column, png in data.pictures.items():
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in column) or "image"
        names[column] = f"images/{safe}.png"
        _atomic_write(root / names[column], png)
    _atomic_write(index, render_html(data, names).encode("utf-8"))
    return index
