"""Real BIDS layouts from ``bids-examples`` (see its SOURCE.md): every dataset converts, the
manifest accounts for every file, and convert → export gives the source back byte for byte.

The corpus lives outside the repository (``conftest.BIDS_EXAMPLES``); without it these tests are
skipped, except the generated-dataset symlink test at the end.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result

from bids2hf.api import convert, scan_and_plan
from bids2hf.bids.options import ScanOptions
from bids2hf.model.format import MANIFEST_PATH
from bids2hf.model.manifest import ManifestEntry, loads
from bids2hf.readback.export import export
from bids2hf.readback.verify import verify
from bids2hf.testing.spec import GeneratedDataset
from conftest import BIDS_EXAMPLES
from helpers import tree

VCS = frozenset({".git", ".datalad"})

#: Datasets that convert refuses, on purpose, with ``--derivatives all``: name → (file, why).
#: ieeg_epilepsy's derivatives/brainvisa/dataset_description.json is an empty (0-byte) file: a
#: ``.json`` file that is not JSON is refused like any other, with a one-line error naming it; the
#: user can fix it, --exclude it, or not select that pipeline.
EXPECTED_REFUSALS = {
    "ieeg_epilepsy": ("derivatives/brainvisa/dataset_description.json", "not valid JSON"),
}


def _dataset_names() -> list[str]:
    if not BIDS_EXAMPLES.is_dir():
        return []
    return sorted(
        p.name for p in BIDS_EXAMPLES.iterdir() if (p / "dataset_description.json").is_file()
    )


NAMES = _dataset_names()
DATASETS: list[Any] = list(NAMES) or [
    pytest.param("absent", marks=pytest.mark.skip(reason=f"{BIDS_EXAMPLES} not found"))
]


def walk(root: Path) -> dict[str, Path]:
    """Every file under root (symlinks followed), minus version-control folders."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = [d for d in dirnames if d not in VCS]
        for name in filenames:
            full = Path(dirpath) / name
            found[full.relative_to(root).as_posix()] = full
    return found


def source_tree(root: Path) -> dict[str, str]:
    """A dataset's files as :func:`walk` finds them: symlinked folders followed, no VCS."""
    return tree(root, skip_dirs=VCS, follow_dir_links=True)


def check_manifest(source: Path, hf: Path) -> list[ManifestEntry]:
    """The manifest lists every source file exactly once, where it went, or why it did not."""
    entries = loads((hf / MANIFEST_PATH).read_bytes())
    paths = [e.path for e in entries if not e.path.endswith("/")]
    assert len(paths) == len(set(paths)), "a file is listed twice"
    files = walk(source)
    assert set(paths) == set(files)
    for e in entries:
        if e.path.endswith("/"):  # a version-control folder, not read
            assert e.placement == "left_out" and e.reason
            continue
        assert e.size == files[e.path].stat().st_size, e.path
        if e.placement == "left_out":
            assert e.reason, f"{e.path}: left out without a reason"
        else:
            assert e.placement in ("row", "dataset_file"), e
            assert e.location and (hf / e.location).is_file(), e
            assert e.sha256 and len(e.sha256) == 64, e
    return entries


# -- (a) every dataset converts and is accounted for ----------------------------------------------
@pytest.mark.parametrize("name", DATASETS)
def test_converts_and_accounts_for_every_file(
    name: str, cli: Callable[..., Result], tmp_path: Path
) -> None:
    source = BIDS_EXAMPLES / name
    hf = tmp_path / "hf"
    args = ["--check", "none", "--on-invalid", "keep", "--derivatives", "all", "-q", "-j", "1"]
    result = cli("convert", source, hf, *args)
    if name in EXPECTED_REFUSALS:
        culprit, why = EXPECTED_REFUSALS[name]
        assert result.exit_code == 2, result.output
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith(f"error: {culprit}: {why}"), result.output
        assert not (hf / MANIFEST_PATH).exists()
        # Leaving the culprit out is enough; it is then listed with its reason.
        result = cli("convert", source, hf, *args, "--exclude", culprit)
        assert result.exit_code == 0, result.output
        by_path = {e.path: e for e in check_manifest(source, hf)}
        assert by_path[culprit].placement == "left_out"
        assert "--exclude" in (by_path[culprit].reason or "")
        return
    assert result.exit_code == 0, result.output
    assert "internal error" not in result.output
    entries = check_manifest(source, hf)
    assert any(e.placement == "row" for e in entries)
    assert (hf / "README.md").is_file()


# -- (b) round trip with real image content -------------------------------------------------------
@pytest.fixture
def filled(filled_examples: Path) -> Path:
    """All datasets copied once, every empty NIfTI placeholder turned into a tiny valid image."""
    return filled_examples


@pytest.mark.parametrize("name", DATASETS)
def test_round_trip_byte_for_byte(name: str, filled: Path, tmp_path: Path) -> None:
    source = filled / name
    culprit = EXPECTED_REFUSALS.get(name, ("",))[0]
    options = ScanOptions(
        derivatives=("all",),
        include_sourcedata=True,
        on_invalid="keep",
        exclude=(culprit,) if culprit else (),
    )  # and the default --check header
    _, plan = scan_and_plan(source, options)
    for problem in plan.errors:
        # The corpus ships a few non-empty NIfTI stand-ins that are not images (a newline, an
        # HTML page, a bare header): --check header rightly refuses those, and only those; the
        # images made from placeholders must all pass.
        assert problem.code == "bad-nifti", problem.one_line()
        original = BIDS_EXAMPLES / name / problem.path
        assert original.stat().st_size > 0, (
            f"a filled placeholder was refused: {problem.one_line()}"
        )
    if plan.errors:
        options.check = "none"
    hf = tmp_path / "hf"
    convert(source, hf, scan_options=options, workers=1, progress=False)
    entries = check_manifest(source, hf)
    left_out = {e.path: e.reason for e in entries if e.placement == "left_out"}
    assert set(left_out) <= {culprit}, left_out
    assert all(left_out.values())

    out = tmp_path / "exported"
    report = export(str(hf), out, progress=False)
    assert report.skipped == sorted(left_out)
    expected = {k: v for k, v in source_tree(source).items() if k not in left_out}
    assert source_tree(out) == expected
    assert report.files == len(expected)
    assert not any(p.is_symlink() for p in out.rglob("*"))
    assert verify(source, str(hf), progress=False).ok


# -- symlinks come back as regular files ----------------------------------------------------------
def test_symlinks_come_back_as_regular_files(synthetic: GeneratedDataset, tmp_path: Path) -> None:
    """As in git-annex/DataLad checkouts: files that are symlinks, absolute or relative,
    pointing inside or outside the dataset. (Symlinked folders are not followed: test_walk.py.)"""
    bids = tmp_path / "bids"
    shutil.copytree(synthetic.root, bids)
    store = tmp_path / "annex-store"
    store.mkdir()
    links: dict[str, str] = {}

    def move_out(rel: str) -> Path:
        target = store / hashlib.sha256(rel.encode()).hexdigest()
        shutil.move(bids / rel, target)
        return target

    # An embedded image, absolute link to outside the dataset.
    rel = "sub-01/ses-1/anat/sub-01_ses-1_T1w.nii.gz"
    (bids / rel).symlink_to(move_out(rel))
    links[rel] = "absolute"
    # A dataset-level file, relative link to outside the dataset.
    rel = "participants.tsv"
    (bids / rel).symlink_to(os.path.relpath(move_out(rel), bids))
    links[rel] = "relative, outside"
    # A sidecar, relative link to another file of the dataset (same bytes twice).
    rel = "sub-03/ses-1/anat/sub-03_ses-1_T1w.json"
    (bids / rel).unlink()
    (bids / rel).symlink_to("../../../sub-01/ses-1/anat/sub-01_ses-1_T1w.json")
    links[rel] = "relative, inside"
    for rel in links:
        assert (bids / rel).is_symlink() and (bids / rel).is_file()

    hf = tmp_path / "hf"
    convert(bids, hf, scan_options=ScanOptions(derivatives=("all",)), workers=1, progress=False)
    entries = {e.path: e for e in check_manifest(bids, hf)}
    assert not [e for e in entries.values() if e.placement == "left_out"]

    out = tmp_path / "exported"
    export(str(hf), out, progress=False)
    assert source_tree(out) == source_tree(bids)
    for p in out.rglob("*"):
        assert not p.is_symlink(), f"{p} came back as a symlink"
    for rel in links:
        assert (out / rel).is_file()
        assert (out / rel).read_bytes() == (bids / rel).read_bytes()
    assert verify(bids, str(hf), progress=False).ok
    assert verify(out, str(hf), progress=False).ok
