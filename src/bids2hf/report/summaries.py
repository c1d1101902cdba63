"""Human-readable summaries: what ``inspect`` would do and what ``convert`` did."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from bids2hf.model.inventory import Inventory, Problem, Severity
from bids2hf.plan.plan import ConversionPlan
from bids2hf.plan.previews import IMAGES_DIR, PREVIEWS_PATH, PreviewChoice
from bids2hf.units import human_bytes

__all__ = ["beside_lines", "convert_summary", "inspect_text", "kinds_table", "left_out_lines",
           "previews_text", "problem_lines"]  # fmt: skip


def _table(rows: Sequence[Sequence[str]], right: Sequence[int] = ()) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = []
    for row in rows:
        cells = [
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        out.append("  " + "  ".join(cells).rstrip())
    return out


def kinds_table(plan: ConversionPlan) -> list[str]:
    if not plan.kinds:
        return ["  (no images)"]
    rows = [["images", "column", "files", "size", "rows"]]
    rows += [
        [k.kind, k.column, str(k.files), human_bytes(k.bytes), str(k.rows)] for k in plan.kinds
    ]
    return _table(rows, right=(2, 3, 4))


def left_out_lines(plan: ConversionPlan, limit: int = 10) -> list[str]:
    if not plan.left_out:
        return ["left out: nothing"]
    reasons = Counter(f.reason for f in plan.left_out)
    lines = [
        f"left out: {len(plan.left_out)} file(s) ({human_bytes(sum(f.size for f in plan.left_out))})"
    ]
    for reason, n in reasons.most_common(limit):
        lines.append(f"  {n:>6}  {reason}")
    return lines


def beside_lines(plan: ConversionPlan, limit: int = 10) -> list[str]:
    """[issue 11] Which rows have files stored beside the shards, and why: one line per row
    (the first ``limit`` rows), then the other rows grouped by reason."""
    beside = plan.beside
    if not beside:
        return []
    sizes = {ref.relpath: ref.size for s in plan.shards for ref in s.beside.values()}
    by_row: dict[str, list[tuple[str, str]]] = {}
    for key, relpath, reason in beside:
        by_row.setdefault(key, []).append((relpath, reason))
    total = sum(sizes.get(r, 0) for _, r, _ in beside)
    lines = [
        f"stored beside the shards (files/, the cell holds its URL): {len(beside)} file(s), "
        f"{human_bytes(total)}, in {len(by_row)} row(s)"
    ]
    rows = list(by_row.items())
    for key, files in rows[:limit]:
        reasons = "; ".join(sorted({reason for _, reason in files}))
        lines.append(f"  {key}: {len(files)} file(s), {reasons}")
    rest = Counter(reason for _, files in rows[limit:] for _, reason in files)
    for reason, n in rest.most_common():
        lines.append(f"  ... {n} more file(s) in other rows: {reason}")
    return lines


def problem_lines(problems: Sequence[Problem], limit: int = 20) -> list[str]:
    if not problems:
        return ["problems: none"]
    errors = [p for p in problems if p.severity is Severity.ERROR]
    warnings = [p for p in problems if p.severity is Severity.WARNING]
    lines = [f"problems: {len(errors)} error(s), {len(warnings)} warning(s)"]
    for p in (errors + warnings)[:limit]:
        lines.append(f"  {p.severity.value}: {p.one_line()}")
    if len(problems) > limit:
        lines.append(f"  ... and {len(problems) - limit} more (use --all to list every problem)")
    return lines


def inspect_text(
    inventory: Inventory,
    plan: ConversionPlan,
    all_problems: bool = False,
    previews: str | None = None,
) -> str:
    """What ``convert`` would write, and every problem found (``previews``: the line of
    :func:`previews_text`, when known)."""
    where = inventory.source.location if inventory.source else inventory.root  # [issue 15]
    lines = [
        f"dataset: {inventory.description.get('Name', '?')}  ({where})",
        f"files: {len(inventory.files)}, {human_bytes(inventory.total_bytes)}",
        f"layout: {plan.options.layout}; {plan.rows} rows in {len(plan.shards)} shard(s) "
        f"of at most {human_bytes(plan.options.max_shard_bytes)}; "
        f"{plan.embedded_files} embedded files, {human_bytes(plan.embedded_bytes)}",
        f"dataset-level files: {len(plan.dataset_files)} (stored verbatim under bids/)",
        *([previews] if previews else []),
        *left_out_lines(plan),
        *beside_lines(plan),
        "",
        *kinds_table(plan),
        "",
        "columns:",
    ]
    for name, feature in plan.features.items():
        lines.append(f"  {name}: {feature!r}")
    lines += ["", *problem_lines(plan.problems, limit=10_000 if all_problems else 20)]
    return "\n".join(lines)


def previews_text(choice: PreviewChoice | None) -> str:
    """One line: the previews convert would make (plan/previews.py's choice; None: off)."""
    if choice is None:
        return "previews: none (--previews 0, or no NIfTI column)"
    return (
        f"previews: {len(choice.rows)} row(s) in {PREVIEWS_PATH} and {len(choice.pictures)} card "
        f"picture(s) in {IMAGES_DIR}/, {len(choice.files)} thumbnail(s) made while writing "
        "(--previews N for at most N rows, 0 for none)"
    )


def convert_summary(
    output: str,
    plan: ConversionPlan,
    *,
    written: int,
    reused: int,
    removed: int,
    seconds: float,
    bytes_read: int,
    warnings: Sequence[Problem],
) -> str:
    """One screen about a finished conversion (counts of shards written/reused/removed)."""
    secs = max(seconds, 1e-9)
    lines = [
        f"wrote {output}",
        f"  rows {plan.rows}, shards {len(plan.shards)} ({written} written, "
        f"{reused} already complete, {removed} stale removed)",
        f"  embedded {plan.embedded_files} files, {human_bytes(plan.embedded_bytes)}; "
        f"dataset-level files {len(plan.dataset_files)}",
        f"  time {secs:.1f} s, {human_bytes(bytes_read / secs)}/s",
        "",
        *kinds_table(plan),
        "",
        *left_out_lines(plan),
        *beside_lines(plan),
    ]
    if warnings:
        lines += ["", *problem_lines(warnings, limit=10)]
    return "\n".join(lines)
