"""The HTML report: self-contained, escaped, every problem listed, never overwrites a foreign
page, and it renders in headless Chromium (a screenshot that is not blank)."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import bids2hf
from bids2hf.report.card_facts import description_facts, participant_summary, shorten_readme
from bids2hf.report.html_report import GENERATOR, ReportData, render_html, write_report
from bids2hf.report.image_facts import header_facts, summarize_kind
from bids2hf.testing.spec import GeneratedDataset
from bids2hf.write.thumbnails import thumbnail_png

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@dataclass(frozen=True)
class Issue:
    severity: str
    code: str
    path: str
    message: str
    hint: str = ""


def report_data(bids: Path) -> ReportData:
    """What `bids2hf report` will gather: plan, headers, thumbnails, participants, problems."""
    inventory, plan = bids2hf.inspect(bids)
    rows = [row for shard in plan.shards for row in shard.rows]
    kinds, pictures, shown = [], {}, {}
    for k in plan.kinds:
        refs = [f for row in rows for f in row.files.get(k.column, [])]
        heads = [header_facts((bids / f.relpath).read_bytes()[:65536]) for f in refs]
        kinds.append(summarize_kind(k.kind, k.column, heads, [f.size for f in refs], k.rows))
        if refs:
            pictures[k.column] = thumbnail_png((bids / refs[0].relpath).read_bytes())
            shown[k.column] = refs[0].relpath
    problems = [
        *plan.problems,
        Issue("error", "bad-nifti", "sub-01/anat/x.nii.gz", "truncated <script>alert(1)</script>", "re-download"),
        *(Issue("warning", "privacy", f"sub-0{i}/anat/sub-0{i}_T1w.json", "PatientName may identify", "remove it") for i in range(1, 6)),
    ]  # fmt: skip
    assert inventory.participants is not None
    return ReportData(
        title=str(inventory.description.get("Name")),
        summary=[
            ("source", str(bids)),
            ("rows", str(plan.rows)),
            ("shards", str(len(plan.shards))),
        ],
        description=description_facts(inventory.description),
        readme=shorten_readme((bids / "README").read_text()),
        kinds=kinds,
        participants=participant_summary(inventory.participants.rows.values()),
        pictures=pictures,
        shown=shown,
        problems=problems,
        left_out={"sourcedata/ (use --include sourcedata)": 3},
        version="0.1.0",
    )


class _Resources(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.refs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.refs += [v or "" for k, v in attrs if k in ("src", "href", "srcset", "data")]


@pytest.fixture(scope="module")
def report(
    synthetic: GeneratedDataset, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, ReportData]:
    data = report_data(synthetic.root)
    index = write_report(tmp_path_factory.mktemp("report") / "report", data)
    return index, data


def test_page_is_self_contained(report: tuple[Path, ReportData]) -> None:
    index, data = report
    page = index.read_text()
    parser = _Resources()
    parser.feed(page)
    assert not {"script", "link", "iframe", "object", "embed"} & set(parser.tags)
    assert parser.refs and all(ref.startswith("images/") for ref in parser.refs)
    for ref in parser.refs:
        assert Image.open(index.parent / ref).format == "PNG"
    assert "url(" not in page and "@import" not in page
    assert len(parser.refs) == len(data.pictures)


def test_every_problem_is_listed_and_escaped(report: tuple[Path, ReportData]) -> None:
    index, data = report
    page = index.read_text()
    assert page.count('<tr class="warning">') + page.count('<tr class="error">') == len(
        data.problems
    )
    assert "<script>alert" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "1 error(s)" in page
    # Distributions of every kind, from the headers: shapes of the synthetic images.
    assert page.count("<svg") >= 3 * len(data.kinds)
    assert "16x16x8" in page


def test_no_problems_says_so() -> None:
    assert "found no problem" in render_html(ReportData(title="t"))


def test_foreign_page_is_never_overwritten(tmp_path: Path) -> None:
    (tmp_path / "index.html").write_text("<html>someone else's page</html>")
    with pytest.raises(FileExistsError, match="not a bids2hf report"):
        write_report(tmp_path, ReportData(title="t"))
    assert (tmp_path / "index.html").read_text() == "<html>someone else's page</html>"
    # Our own page is replaced on a re-run.
    ours = tmp_path / "ours"
    write_report(ours, ReportData(title="TITLE-ONE"))
    write_report(ours, ReportData(title="TITLE-TWO"))
    page = (ours / "index.html").read_text()
    assert "TITLE-TWO" in page and "TITLE-ONE" not in page and GENERATOR in page


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (.ci/run installs it)")
def test_renders_in_headless_chromium(report: tuple[Path, ReportData], tmp_path: Path) -> None:
    index, _ = report
    shot = tmp_path / "shot.png"
    assert CHROMIUM is not None
    proc = subprocess.run(
        [
            CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
            f"--user-data-dir={tmp_path / 'profile'}", "--no-first-run",
            # Nothing may be fetched: every host name resolves to nothing.
            "--host-resolver-rules=MAP * ~NOTFOUND",
            f"--screenshot={shot}", "--window-size=1200,900", index.as_uri(),
        ],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert shot.is_file(), proc.stderr[-3000:]
    picture = Image.open(shot).convert("RGB")
    assert picture.size == (1200, 900)
    pixels = np.asarray(picture).reshape(-1, 3)
    assert pixels.std() > 20, "not blank"
    assert len(np.unique(pixels, axis=0)) > 50, "text, tables and pictures give many colours"
    # The inline CSS applied (header colour #23395d) and the page is not an error page.
    assert np.all(pixels == (0x23, 0x39, 0x5D), axis=1).sum() > 10_000
    # Keep it for people to look at.
    shutil.copy(shot, index.parent / "screenshot.png")


def test_size_histogram_labels_stay_distinct() -> None:
    from bids2hf.report.html_report import _size_bins
    from bids2hf.units import human_bytes

    bins = _size_bins([4400, 4410, 4420, 4420])
    labels = [label for label, _ in bins]
    assert len(set(labels)) == len(labels) == 3 and sum(n for _, n in bins) == 4
    assert _size_bins([7, 7]) == [(human_bytes(7), 2)]
