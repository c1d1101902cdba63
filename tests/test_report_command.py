"""Issue 13 (B): ``bids2hf report OUT_DIR [--bids BIDS_DIR]`` through the real CLI, rendered by
headless Chromium."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import run_bids2hf

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture
def converted_copy(bids_copy: Path, tmp_path: Path) -> tuple[Path, Path]:
    # A file the scan reports (a problem the report must list), and a readable README.
    anat = next(bids_copy.glob("sub-*/**/anat"))
    (anat / "notes_from_the_scanner.txt").write_text("a stray file")
    (bids_copy / "README").write_text("Report <script>alert(1)</script> test.\n")
    out = tmp_path / "hf"
    proc = run_bids2hf(
        "convert", str(bids_copy), str(out), "-j", "1", "-q", "--on-invalid", "skip", check=False
    )
    assert proc.returncode == 0, proc.stderr
    return bids_copy, out


def test_report_from_output_and_bids(converted_copy: tuple[Path, Path], tmp_path: Path) -> None:
    bids, out = converted_copy
    alone = run_bids2hf("report", str(out), check=False)
    assert alone.returncode == 0, alone.stderr
    index = out / "report" / "index.html"
    assert alone.stdout.strip() == index.resolve().as_uri()
    page = index.read_text()
    assert "not checked (pass --bids)" in page
    assert "<script>" not in page and "&lt;script&gt;" in page
    manifest = [
        json.loads(x) for x in (out / "bids2hf" / "manifest.jsonl").read_text().splitlines()
    ]
    embedded = [e for e in manifest if e["placement"] == "row"]
    assert f"{len(embedded)} (" in page

    full = run_bids2hf("report", str(out), "--bids", str(bids), check=False)
    assert full.returncode == 0, full.stderr
    page = index.read_text()
    assert "notes_from_the_scanner.txt" in page  # the problem, from the scan
    assert re.search(r"\b\d+x\d+x\d+\b", page), "shapes from the scan's header facts"
    pictures = sorted((out / "report" / "images").glob("*.png"))
    assert pictures and all(Image.open(p).format == "PNG" for p in pictures)
    # The report is never part of the dataset: a push would not carry it.
    assert "report/index.html" not in (out / "bids2hf" / "manifest.jsonl").read_text()

    if CHROMIUM is None:
        pytest.skip("chromium not installed (.ci/run installs it)")
    shot = tmp_path / "shot.png"
    proc = subprocess.run(
        [
            CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
            f"--user-data-dir={tmp_path / 'profile'}", "--no-first-run",
            "--host-resolver-rules=MAP * ~NOTFOUND",
            f"--screenshot={shot}", "--window-size=1200,900", index.as_uri(),
        ],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert shot.is_file(), proc.stderr[-3000:]
    pixels = np.asarray(Image.open(shot).convert("RGB")).reshape(-1, 3)
    assert pixels.std() > 20 and len(np.unique(pixels, axis=0)) > 50
    assert np.all(pixels == (0x23, 0x39, 0x5D), axis=1).sum() > 10_000  # the page's header


def test_report_refuses_what_is_not_ours(converted_copy: tuple[Path, Path], tmp_path: Path) -> None:
    _, out = converted_copy
    (out / "report").mkdir()
    (out / "report" / "index.html").write_text("mine")
    proc = run_bids2hf("report", str(out), check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert (out / "report" / "index.html").read_text() == "mine"

    empty = tmp_path / "empty"
    empty.mkdir()
    proc = run_bids2hf("report", str(empty), check=False)
    assert proc.returncode == 2 and "run `bids2hf convert` first" in proc.stderr
