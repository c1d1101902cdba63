"""Walking the BIDS folder: directory symlinks and folder loops.

A directory symlink is never followed: one that leads back into the dataset would read a folder
twice (``loop -> ..`` used to produce thousands of phantom files, 40 levels deep), one that leads
out of it could pull in anything (a home folder). Such a link is reported once, as a warning
naming it, and listed in the manifest as left out with the reason; ``verify`` walks the same way.
Symlinked *files* are followed wherever they point (git-annex/DataLad checkouts).
Folders are also recognised by device and inode, so a bind mount of the dataset inside itself
is read once.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bids2hf.bids.scan import scan
from bids2hf.bids.walk import walk
from bids2hf.model.format import MANIFEST_PATH
from bids2hf.model.inventory import Placement, Severity
from bids2hf.model.manifest import loads
from bids2hf.readback.verify import verify
from helpers import Cli, tree

# Following a loop again would not fail but hang (paths multiply at every level): fail fast.
pytestmark = pytest.mark.timeout(120)

T1W = "sub-01/ses-1/anat/sub-01_ses-1_T1w.nii.gz"
LOOP = "sub-01/ses-1/anat/loop"  # -> ../../.. (the dataset's top folder)
UP = "sub-02/up"  # -> .. (the dataset's top folder again, from one level down)
OUT = "sub-03/ses-1/elsewhere"  # -> a folder outside the dataset


def _add_links(bids: Path, outside: Path) -> None:
    (bids / LOOP).symlink_to("../../..", target_is_directory=True)
    (bids / UP).symlink_to("..", target_is_directory=True)
    outside.mkdir()
    (outside / "private.txt").write_text("not part of the dataset\n")
    (outside / "sub-03_ses-1_T2w.nii.gz").write_bytes((bids / T1W).read_bytes())
    (bids / OUT).symlink_to(outside, target_is_directory=True)


def test_walk_does_not_follow_directory_symlinks(bids_copy: Path, tmp_path: Path) -> None:
    expected = tree(bids_copy)
    _add_links(bids_copy, tmp_path / "outside")
    walked = {w.relpath: w for w in walk(bids_copy)}
    skipped = {rel: w.not_followed for rel, w in walked.items() if w.not_followed}
    assert set(skipped) == {LOOP + "/", UP + "/", OUT + "/"}
    assert "back into the dataset" in skipped[LOOP + "/"]
    assert "out of the dataset" in skipped[OUT + "/"]
    assert str(tmp_path) not in skipped[OUT + "/"], "the reason goes into a published manifest"
    files = {rel for rel, w in walked.items() if not w.not_followed}
    assert files == set(expected)


def test_convert_export_verify_with_directory_symlinks(
    cli: Cli, bids_copy: Path, tmp_path: Path
) -> None:
    expected = tree(bids_copy)
    _add_links(bids_copy, tmp_path / "outside")

    inventory = scan(bids_copy)
    warnings = [p for p in inventory.problems if p.code == "symlink-not-followed"]
    assert len(warnings) == 1, "reported once, not once per link"
    assert warnings[0].severity is Severity.WARNING
    assert warnings[0].path == LOOP and "3 folder(s)" in warnings[0].message
    left_out = {f.relpath: f.reason for f in inventory.files if f.placement is Placement.LEFT_OUT}
    assert set(left_out) >= {LOOP + "/", UP + "/", OUT + "/"}
    inside_links = (LOOP + "/", UP + "/", OUT + "/")
    phantom = [
        f.relpath
        for f in inventory.files
        if f.relpath.startswith(inside_links) and f.relpath not in inside_links
    ]
    assert phantom == []

    hf = tmp_path / "hf"
    result = cli("convert", bids_copy, hf, "-j", "1", "--derivatives", "all")
    assert result.exit_code == 0, result.output
    warning_lines = [
        line for line in result.output.splitlines() if "warning:" in line and "symlink" in line
    ]
    assert len(warning_lines) == 1 and LOOP in warning_lines[0], result.output
    entries = loads((hf / MANIFEST_PATH).read_bytes())
    listed = {e.path: e for e in entries}
    for link in (LOOP, UP, OUT):
        assert listed[link + "/"].placement == "left_out"
        assert "not followed" in (listed[link + "/"].reason or "")
    assert {e.path for e in entries if e.placement != "left_out"} == set(expected)
    assert "private.txt" not in (hf / MANIFEST_PATH).read_text()

    out = tmp_path / "exported"
    result = cli("export", hf, out, "-q")
    assert result.exit_code == 0, result.output
    assert tree(out) == expected

    # verify walks the same way: the links are no phantom "missing" files.
    result = cli("verify", bids_copy, hf, "-q")
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"identical: {len(expected)} file(s) match")
    assert verify(bids_copy, str(hf), progress=False).ok


def test_verify_warns_once_about_directory_symlinks(
    cli: Cli, bids_copy: Path, tmp_path: Path
) -> None:
    """A link added after conversion: verify does not follow it, and says so in one line."""
    hf = tmp_path / "hf"
    assert cli("convert", bids_copy, hf, "-q", "-j", "1", "--derivatives", "all").exit_code == 0
    (bids_copy / LOOP).symlink_to("../../..", target_is_directory=True)
    (bids_copy / UP).symlink_to("..", target_is_directory=True)
    result = cli("verify", bids_copy, hf)
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if "not followed" in line]
    assert len(lines) == 1 and LOOP in lines[0] and "2 folder(s)" in lines[0], result.output


def test_excluded_directory_symlink_is_no_warning(bids_copy: Path, tmp_path: Path) -> None:
    (bids_copy / UP).symlink_to("..", target_is_directory=True)
    from bids2hf.bids.options import ScanOptions

    inventory = scan(bids_copy, ScanOptions(exclude=["sub-02/up"]))
    assert not [p for p in inventory.problems if p.code == "symlink-not-followed"]
    reasons = {f.relpath: f.reason for f in inventory.files}
    assert reasons[UP + "/"] == "--exclude sub-02/up"


def test_symlinked_files_into_an_annex_keep_working(
    cli: Cli, bids_copy: Path, tmp_path: Path
) -> None:
    """git-annex layout: every data file is a symlink into .git/annex/objects (inside)."""
    expected = tree(bids_copy)
    objects = bids_copy / ".git" / "annex" / "objects"
    for rel in (T1W, "sub-02/ses-1/anat/sub-02_ses-1_T1w.json", "participants.tsv"):
        path = bids_copy / rel
        key = hashlib.sha256(path.read_bytes()).hexdigest()
        (objects / key[:2]).mkdir(parents=True, exist_ok=True)
        shutil.move(path, objects / key[:2] / key)
        path.symlink_to("../" * rel.count("/") + f".git/annex/objects/{key[:2]}/{key}")
    hf = tmp_path / "hf"
    result = cli("convert", bids_copy, hf, "-q", "-j", "1", "--derivatives", "all")
    assert result.exit_code == 0, result.output
    out = tmp_path / "exported"
    assert cli("export", hf, out, "-q").exit_code == 0
    assert tree(out) == expected
    assert cli("verify", bids_copy, hf, "-q").exit_code == 0


def _can_bind_mount() -> bool:
    if shutil.which("unshare") is None or not sys.platform.startswith("linux"):
        return False
    probe = subprocess.run(
        ["unshare", "-m", "sh", "-c", "mount --bind / /mnt"], capture_output=True, check=False
    )
    return probe.returncode == 0


@pytest.mark.skipif(not _can_bind_mount(), reason="needs unshare -m and mount --bind (root)")
def test_bind_mount_loop_is_read_once(bids_copy: Path, tmp_path: Path) -> None:
    """A real folder (not a symlink) that is the dataset again: recognised by device + inode."""
    expected = tree(bids_copy)
    mountpoint = bids_copy / "sub-01" / "again"
    mountpoint.mkdir()
    hf = tmp_path / "hf"
    script = (
        f"mount --bind {bids_copy} {mountpoint} && "
        f"{sys.executable} -m bids2hf convert {bids_copy} {hf} -q -j 1 --derivatives all && "
        f"{sys.executable} -m bids2hf verify {bids_copy} {hf} -q"
    )
    run = subprocess.run(
        ["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "Traceback" not in run.stderr
    entries = loads((hf / MANIFEST_PATH).read_bytes())
    again = {e.path: e for e in entries if e.path.startswith("sub-01/again")}
    assert list(again) == ["sub-01/again/"]
    assert "already read" in (again["sub-01/again/"].reason or "")
    assert {e.path for e in entries if e.placement != "left_out"} == set(expected)


def test_verify_reports_a_broken_symlink_instead_of_crashing(
    cli: Cli, bids_copy: Path, tmp_path: Path
) -> None:
    """Content dropped since conversion (``git annex drop``): a changed file, not a traceback."""
    hf = tmp_path / "hf"
    assert cli("convert", bids_copy, hf, "-q", "-j", "1", "--derivatives", "all").exit_code == 0
    (bids_copy / T1W).unlink()
    (bids_copy / T1W).symlink_to("../../../.git/annex/objects/gone")
    result = cli("verify", bids_copy, hf, "-q")
    assert result.exit_code == 1, result.output
    assert f"changed   {T1W}  (cannot be read (broken symlink))" in result.output
