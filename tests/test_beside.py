"""Files too large for their cell are stored beside the shards (issue 11, items 3 and 4).

A file over 2 GiB - 1 MiB, or one that would take its row's embedded bytes over ``--max-row-size``,
goes to ``files/<BIDS path>`` in the output; its cell holds ``{"bytes": None, "path": URL}``. These
tests use a small ``--max-row-size`` on the synthetic dataset (kilobytes, not gigabytes), and
sparse files where the real limits matter.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import Result

import bids2hf
import bids2hf.api as convert_module
import bids2hf.write.beside as beside_module
from bids2hf.api import scan_and_plan
from bids2hf.bids.options import ScanOptions
from bids2hf.model.format import read_footer_index
from bids2hf.model.rows import FileRef, RowPlan
from bids2hf.plan.beside import MAX_VALUE_BYTES, beside_url, files_url_of, place_beside
from bids2hf.plan.options import PlanOptions
from bids2hf.readback.bids_fs import BidsHfFileSystem
from bids2hf.report.summaries import beside_lines
from helpers import sha256, tree

NAMING = "sub-01/ses-1/func/sub-01_ses-1_task-naming40_bold.nii.gz"
REST_1 = "sub-01/ses-1/func/sub-01_ses-1_task-rest_run-1_bold.nii.gz"
REST_2 = "sub-01/ses-1/func/sub-01_ses-1_task-rest_run-2_bold.nii.gz"
FAST = ("-q", "-j", "1", "--derivatives", "all")
SMALL_CELLS = ("--max-row-size", "40kB")  # sub-01_ses-1 then keeps its naming run, not the rests


def _manifest(out: Path) -> dict[str, dict[str, Any]]:
    lines = (out / "bids2hf/manifest.jsonl").read_text().splitlines()
    return {r["path"]: r for r in map(json.loads, lines)}


def _ok(result: Result) -> Result:
    assert result.exit_code == 0, result.output
    return result


# -- placement (pure) -----------------------------------------------------------------------------
def test_placement_in_list_order() -> None:
    """Files are embedded in order while the row stays within the limit; the others go beside,
    a file over one Parquet value always, and each with its reason."""
    a, b, c = FileRef("a.nii.gz", 100, 0), FileRef("b.nii.gz", 100, 0), FileRef("c.nii.gz", 50, 0)
    huge = FileRef("huge.nii", MAX_VALUE_BYTES + 1, 0)
    row = RowPlan("sub-01", {}, {"func_bold": [a, b, c], "anat_T1w": [huge]})
    place_beside([row], ["func_bold", "anat_T1w"], 160, "/out")
    assert row.beside == {
        "b.nii.gz": "/out/files/b.nii.gz",
        "huge.nii": "/out/files/huge.nii",
    }
    assert "--max-row-size" in row.beside_reasons["b.nii.gz"]
    assert "one Parquet value" in row.beside_reasons["huge.nii"]
    # Shards and row groups are cut by the embedded bytes only.
    assert row.nbytes < 1000
    # With the default limit, nothing this small goes beside; a file over 2 GiB - 1 MiB does.
    row2 = RowPlan("sub-02", {}, {"func_bold": [a, b, c], "anat_T1w": [huge]})
    place_beside([row2], ["func_bold", "anat_T1w"], PlanOptions().max_row_bytes, "")
    assert row2.beside == {"huge.nii": "files/huge.nii"}


def test_a_cell_of_other_files_never_reaches_2_gib() -> None:
    """Sidecars and tables stay in their row whatever the row budget, but a cell (one row's list
    in one column) must stay under one Parquet list's 2 GiB: three 900 MB EEG runs in ``files``
    keep two, and the third goes beside (before, nothing stopped the cell: its int32 offsets
    would have wrapped). A NIfTI in that column counts toward the cell too."""
    edf = [FileRef(f"sub-01/eeg/run-{i}_eeg.edf", 900 * 10**6, 0) for i in range(1, 4)]
    small = FileRef("sub-01/eeg/run-1_eeg.json", 2_000, 0)
    row = RowPlan("sub-01", {}, {"files": [*edf, small]})
    place_beside([row], ["files"], PlanOptions().max_row_bytes, "")
    assert sorted(row.beside) == [edf[2].relpath]
    assert "column files would hold over" in row.beside_reasons[edf[2].relpath]
    nifti = FileRef("sub-01/anat/x_T1w.nii.gz", 400 * 10**6, 0)
    row = RowPlan("sub-01", {}, {"files": [*edf[:2], nifti]})
    place_beside([row], ["files"], PlanOptions().max_row_bytes, "")
    assert sorted(row.beside) == [nifti.relpath]  # 1.8 GB + 0.4 GB would not fit in the cell


def test_four_1_gb_runs_default_limit() -> None:
    """Four 1 GB runs of one session: each is over the default 128 MiB a row embeds, so all four
    are stored beside; the row's smaller files stay embedded, in column and list order."""
    runs = [FileRef(f"run-{i}.nii.gz", 10**9, 0) for i in range(1, 5)]
    t1w, dwi = FileRef("t1w.nii.gz", 100 * 2**20, 0), FileRef("dwi.nii.gz", 100 * 2**20, 0)
    row = RowPlan("sub-01_ses-1", {}, {"anat_T1w": [t1w], "dwi_dwi": [dwi], "func_bold": runs})
    place_beside([row], ["anat_T1w", "dwi_dwi", "func_bold"], PlanOptions().max_row_bytes, "")
    # 100 MiB embedded, then 200 MiB would be over 128 MiB: the DWI goes beside too.
    assert sorted(row.beside) == ["dwi.nii.gz"] + [r.relpath for r in runs]


def test_files_url_of_each_destination(tmp_path: Path) -> None:
    assert files_url_of("hf://datasets/org/ds") == "hf://datasets/org/ds@main"
    assert files_url_of("hf://datasets/org/ds@v1/") == "hf://datasets/org/ds@v1"
    assert files_url_of("s3://bucket/prefix/") == "s3://bucket/prefix"
    assert beside_url(str(tmp_path), "sub-01/a.nii") == f"{tmp_path}/files/sub-01/a.nii"


def test_summary_lines_one_per_row_then_grouped(bids_copy: Path) -> None:
    _, plan = scan_and_plan(bids_copy, plan_options=PlanOptions(max_row_bytes=30_000))
    lines = beside_lines(plan, limit=2)
    rows = {key for key, _, _ in plan.beside}
    assert len(rows) > 2 and lines[0].endswith(f"in {len(rows)} row(s)")
    assert [line.split(":")[0].strip() for line in lines[1:3]] == sorted(rows)[:2]
    assert lines[3].startswith("  ... ") and "more file(s) in other rows" in lines[3]
    assert len(lines) == 4  # the other rows share one reason: one line


def _sparse(path: Path, size: int) -> None:
    path.unlink(missing_ok=True)
    with open(path, "wb") as f:
        f.truncate(size)
    if path.stat().st_blocks * 512 > 1 << 20:
        pytest.skip(f"{path.parent} does not hold sparse files")


def test_session_over_2_gib_is_planned_without_a_flag(bids_copy: Path, cli: Any) -> None:
    """Two 1.5 GiB runs in one cell (over Arrow's 2 GiB per list) no longer stop the plan: each
    is over the default 128 MiB a row embeds, so both go beside, and ``inspect`` names the row
    and the reason (planning reads no data, so sparse files cost nothing here)."""
    _sparse(bids_copy / REST_1, 3 * 2**29)
    _sparse(bids_copy / REST_2, 3 * 2**29)
    _, plan = scan_and_plan(bids_copy, ScanOptions(check="none"))
    assert not plan.errors
    assert [(key, rel) for key, rel, _ in plan.beside] == [
        ("sub-01_ses-1", REST_1),
        ("sub-01_ses-1", REST_2),
    ]
    result = _ok(cli("inspect", bids_copy, "--check", "none"))
    assert "stored beside the shards" in result.output
    assert "sub-01_ses-1: 2 file(s), the row would embed over 134.2 MB (--max-row-size)" in result.output


# -- a local output ------------------------------------------------------------------------------
def test_local_output_round_trip(bids_copy: Path, tmp_path: Path, cli: Any) -> None:
    out = tmp_path / "out"
    _ok(cli("convert", bids_copy, out, *FAST, *SMALL_CELLS))
    manifest = _manifest(out)
    beside = {p: e for p, e in manifest.items() if e["placement"] == "beside"}
    assert REST_1 in beside and REST_2 in beside and NAMING not in beside
    for rel, e in beside.items():
        assert e["location"] == f"files/{rel}" and e["shard"].startswith("data/")
        assert sha256(out / e["location"]) == sha256(bids_copy / rel) == e["sha256"]
    # The shard's footer index says the same; the cell holds the absolute path, no bytes.
    shard = out / beside[REST_1]["shard"]
    index = {e.path: e for e in read_footer_index(pq.read_metadata(shard))}
    assert index[REST_1].location == f"files/{REST_1}" and index[REST_1].offset is None
    assert index[NAMING].location is None and index[NAMING].offset is not None
    cells = pq.read_table(shard, columns=["func_bold"]).column(0).to_pylist()
    by_path = {c["path"]: c for cell in cells for c in cell}
    assert by_path[str(out.resolve() / "files" / REST_1)]["bytes"] is None
    assert by_path[NAMING]["bytes"] == (bids_copy / NAMING).read_bytes()
    # verify is clean, export rebuilds the folder byte for byte, bids2hf:// reads the file.
    assert "identical" in _ok(cli("verify", bids_copy, out, "-q")).output
    _ok(cli("export", out, tmp_path / "back", "-q"))
    assert tree(tmp_path / "back") == tree(bids_copy)
    assert BidsHfFileSystem(str(out)).cat(REST_1) == (bids_copy / REST_1).read_bytes()


def test_load_dataset_local_and_streaming(bids_copy: Path, tmp_path: Path, cli: Any) -> None:
    """``datasets`` gives the image of a cell stored beside (local folder, and streaming), from
    any working folder; bids2hf.load_nifti opens the raw cell."""
    out = tmp_path / "out"
    _ok(cli("convert", bids_copy, out, *FAST, *SMALL_CELLS))
    from datasets import List, Nifti, load_dataset

    expected = [np.asarray(bids2hf.load_nifti(str(bids_copy / p)).dataobj) for p in (REST_1,)]
    cwd = os.getcwd()
    os.chdir(tmp_path)  # not the output's parent: the path in the cell is absolute
    try:
        # A cache of its own: `datasets` reused a dataset prepared by an earlier run of this test
        # (another tmp folder, same folder name and card), whose cells name that run's copies.
        cache = str(tmp_path / "hf-cache")
        for streaming in (False, True):
            ds = load_dataset(str(out), split="train", streaming=streaming, cache_dir=cache)
            row = next(iter(ds))
            runs = row["func_bold"]
            assert len(runs) == 3
            assert np.array_equal(np.asarray(runs[1].dataobj), expected[0])
        raw = load_dataset(str(out), split="train", cache_dir=cache).cast_column(
            "func_bold", List(Nifti(decode=False))
        )
        cell = raw[0]["func_bold"][1]
        assert cell["bytes"] is None
        assert np.array_equal(np.asarray(bids2hf.load_nifti(cell).dataobj), expected[0])
    finally:
        os.chdir(cwd)


def test_missing_copy_is_found_by_verify_and_export(
    bids_copy: Path, tmp_path: Path, cli: Any
) -> None:
    out = tmp_path / "out"
    _ok(cli("convert", bids_copy, out, *FAST, *SMALL_CELLS))
    (out / "files" / REST_2).unlink()
    result = cli("verify", bids_copy, out, "-q")
    assert result.exit_code == 1 and REST_2 in result.output
    result = cli("export", out, tmp_path / "back", "-q")
    assert result.exit_code == 1 and f"files/{REST_2}" in result.output
    # A re-run of the same command puts the copy back (its record no longer matches a file).
    _ok(cli("convert", bids_copy, out, *FAST, *SMALL_CELLS))
    assert sha256(out / "files" / REST_2) == sha256(bids_copy / REST_2)


def test_rerun_after_a_kill_keeps_the_copies(
    bids_copy: Path, tmp_path: Path, cli: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed after the files beside were copied but before the shards: the re-run copies none
    of them again (their sha256 is in the journal) and the output is the uninterrupted one's."""
    out = tmp_path / "out"

    def killed(*args: Any, **kwargs: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(convert_module, "write_shards", killed)
    assert cli("convert", bids_copy, out, *FAST, *SMALL_CELLS).exit_code != 0
    assert not (out / "bids2hf/manifest.jsonl").exists()
    copies = sorted(p.relative_to(out).as_posix() for p in (out / "files").rglob("*.nii.gz"))
    assert f"files/{REST_1}" in copies
    before = {p: (out / p).stat().st_mtime_ns for p in copies}
    monkeypatch.undo()
    copied: list[str] = []
    real = beside_module.copy_in
    monkeypatch.setattr(
        beside_module, "copy_in", lambda *a, **k: copied.append(a[3]) or real(*a, **k)
    )
    _ok(cli("convert", bids_copy, out, *FAST, *SMALL_CELLS))
    assert copied == []
    assert {p: (out / p).stat().st_mtime_ns for p in copies} == before
    resumed = {p: h for p, h in tree(out).items() if not p.startswith(".bids2hf/")}
    shutil.rmtree(out)  # the same folder: the cells hold its path
    _ok(cli("convert", bids_copy, out, *FAST, *SMALL_CELLS))
    assert {p: h for p, h in tree(out).items() if not p.startswith(".bids2hf/")} == resumed


def test_a_larger_limit_removes_the_copies(bids_copy: Path, tmp_path: Path, cli: Any) -> None:
    """Copies the new plan no longer needs are removed (bids2hf wrote them); others are kept."""
    out = tmp_path / "out"
    _ok(cli("convert", bids_copy, out, *FAST, *SMALL_CELLS))
    (out / "files" / "mine.txt").write_text("not bids2hf's")
    _ok(cli("convert", bids_copy, out, *FAST, "--overwrite"))
    assert sorted(p.name for p in (out / "files").rglob("*") if p.is_file()) == ["mine.txt"]
    assert all(e["placement"] != "beside" for e in _manifest(out).values())


def test_no_copies_left_no_files_folder(bids_copy: Path, tmp_path: Path, cli: Any) -> None:
    """Once no copy is needed, the emptied files/ goes too: the output is a clean conversion's."""
    out, clean = tmp_path / "out", tmp_path / "clean"
    _ok(cli("convert", bids_copy, out, *FAST, *SMALL_CELLS))
    _ok(cli("convert", bids_copy, out, *FAST, "--overwrite"))
    _ok(cli("convert", bids_copy, clean, *FAST))
    assert not (out / "files").exists()
    assert sorted(p.relative_to(out) for p in out.iterdir()) == sorted(
        p.relative_to(clean) for p in clean.iterdir()
    )


def test_push_of_an_output_with_files_beside_is_refused(
    bids_copy: Path, tmp_path: Path, cli: Any
) -> None:
    """Their cells hold this folder's paths: pushed as they are, they would point at a disk the
    readers do not have. One line says to convert straight to the destination."""
    out = tmp_path / "out"
    _ok(cli("convert", bids_copy, out, *FAST, *SMALL_CELLS))
    result = cli("push", out, "hf://datasets/org/ds", "-q")
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert "bids2hf convert BIDS_DIR hf://datasets/org/ds" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


# -- a real file over 2 GiB, through the real command line ----------------------------------------
def _sparse_nifti(path: Path, volumes: int) -> int:
    """An uncompressed NIfTI-1 of 64x64x64 int16 ``volumes``: a real header, then a hole."""
    import nibabel as nib

    header = nib.Nifti1Header()
    header.set_data_shape((64, 64, 64, volumes))
    header.set_data_dtype(np.int16)
    header["vox_offset"] = 352
    size = 352 + 64 * 64 * 64 * 2 * volumes
    with open(path, "wb") as f:
        f.write(header.binaryblock + b"\0" * 4)
        f.truncate(size)
    if path.stat().st_blocks * 512 > 1 << 20:
        pytest.skip(f"{path.parent} does not hold sparse files")
    return size


def test_file_over_2_gib_with_the_default_command(bids_copy: Path, tmp_path: Path) -> None:
    """A 2.0 GiB run (over one Parquet value) converts with the default command: stored beside,
    verify clean, export identical, and its cell opens with nibabel (header only: the data is
    read on demand)."""
    (bids_copy / REST_1).unlink()
    big = REST_1.removesuffix(".gz")
    size = _sparse_nifti(bids_copy / big, 4097)
    assert size > MAX_VALUE_BYTES
    out, back = tmp_path / "out", tmp_path / "back"
    cmd = [sys.executable, "-m", "bids2hf"]
    for args in (
        ["convert", str(bids_copy), str(out), "-q", "--derivatives", "all"],
        ["verify", str(bids_copy), str(out), "-q"],
        ["export", str(out), str(back), "-q"],
    ):
        proc = subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
    assert _manifest(out)[big]["placement"] == "beside"
    assert (back / big).stat().st_size == size
    with open(bids_copy / big, "rb") as a, open(back / big, "rb") as b:
        assert a.read(1 << 20) == b.read(1 << 20)  # the rest was checked by export's sha256
    shard = out / _manifest(out)[big]["shard"]
    cells = pq.read_table(shard, columns=["func_bold"]).column(0).to_pylist()
    cell = next(c for cell in cells for c in cell if c["path"].endswith(big))
    assert cell["bytes"] is None
    assert bids2hf.load_nifti(cell).shape == (64, 64, 64, 4097)


def _allocated(path: Path) -> int:
    return path.stat().st_blocks * 512


def test_a_sparse_source_stays_sparse(bids_copy: Path, tmp_path: Path) -> None:
    """README: "An 8 MiB block of zeros is copied as a hole, so sparse sources stay sparse" --
    the copy beside the shards (convert) and the exported file (export), through the real
    command line. An 80 MiB run that is a header then a hole: only its first 8 MiB chunk (which
    holds the header) and the last few bytes take disk space."""
    (bids_copy / REST_1).unlink()
    big = REST_1.removesuffix(".gz")
    size = _sparse_nifti(bids_copy / big, 160)
    assert size > 80 << 20
    out, back = tmp_path / "out", tmp_path / "back"
    cmd = [sys.executable, "-m", "bids2hf"]
    for args in (
        ["convert", str(bids_copy), str(out), *FAST, *SMALL_CELLS],
        ["export", str(out), str(back), "-q"],
    ):
        proc = subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
    copy = out / _manifest(out)[big]["location"]
    assert _manifest(out)[big]["placement"] == "beside" and copy == out / "files" / big
    for path in (copy, back / big):
        assert path.stat().st_size == size
        assert _allocated(path) <= (8 << 20) + (1 << 20), f"{path}: {_allocated(path)} bytes on disk"
    with open(bids_copy / big, "rb") as a, open(back / big, "rb") as b:
        assert a.read(1 << 20) == b.read(1 << 20)  # the rest was checked by export's sha256


# -- the Hub (emulator) ----------------------------------------------------------------------------
_LOAD = """
import json, sys
import datasets
datasets.config.USE_PARQUET_EXPORT = False  # stay on loopback (no datasets-server lookup)
from datasets import List, Nifti, load_dataset
out = {}
for streaming in (False, True):
    row = next(iter(load_dataset("org/ds", split="train", streaming=streaming)))
    out[str(streaming)] = [list(img.shape) for img in row["func_bold"]]
raw = load_dataset("org/ds", split="train").cast_column("func_bold", List(Nifti(decode=False)))
out["cells"] = [[c["bytes"] is None, c["path"]] for c in raw[0]["func_bold"]]
print(json.dumps(out))
"""


def test_hub_round_trip(emu: Any, hub_env: dict[str, str], bids_copy: Path, tmp_path: Path) -> None:
    """Converted straight to the Hub, the copies are uploaded beside the shards (LFS), the cells
    hold ``hf://datasets/org/ds@main/files/...``, and ``load_dataset`` (and streaming) gives
    their images; export and verify read them back."""
    url = "hf://datasets/org/ds"
    cmd = [sys.executable, "-m", "bids2hf"]
    proc = subprocess.run(
        [*cmd, "convert", str(bids_copy), url, *FAST, *SMALL_CELLS],
        env=hub_env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    remote = emu.files("org/ds")
    assert sha256(remote[f"files/{REST_1}"]) == sha256(bids_copy / REST_1)
    proc = subprocess.run(
        [sys.executable, "-c", _LOAD], env=hub_env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["False"] == result["True"] == [[16, 16, 8, 4]] * 3
    assert result["cells"][1] == [True, f"hf://datasets/org/ds@main/files/{REST_1}"]
    for args in (["export", url, str(tmp_path / "back"), "-q"], ["verify", str(bids_copy), url]):
        proc = subprocess.run(
            [*cmd, *args], env=hub_env, capture_output=True, text=True, timeout=300
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
    assert tree(tmp_path / "back") == tree(bids_copy)
    staging = next((Path(hub_env["BIDS2HF_CACHE"]) / "staging").iterdir())
    assert not (staging / "files").exists()  # uploaded, then removed from the staging folder


def test_copies_share_the_staging_bound_with_shards(
    emu: Any, hub_env: dict[str, str], bids_copy: Path, tmp_path: Path
) -> None:
    """A copy takes its staging slot before it is made: with slow uploads and many files stored
    beside, shards and copies together never exceed ``--max-staged`` in the staging folder (a
    copy used to take its slot only once written, one more than the bound each time)."""
    import contextlib
    import threading
    import time

    emu.upload_bandwidth = 150_000  # slow LFS uploads: the copies must wait for room
    staging = tmp_path / "staging"
    stop, peak = threading.Event(), [0]

    def watch() -> None:
        while not stop.is_set():
            count = 0
            for folder in ("data", "files"):
                with contextlib.suppress(FileNotFoundError):
                    count += sum(1 for p in (staging / folder).rglob("*") if p.is_file())
            peak[0] = max(peak[0], count)
            time.sleep(0.002)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "bids2hf", "convert", str(bids_copy), "hf://datasets/org/ds",
             *FAST, "--max-row-size", "1kB", "--max-staged", "2", "--staging", str(staging)],
            env=hub_env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
    finally:
        stop.set()
        watcher.join()
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sum(1 for p in emu.files("org/ds") if p.startswith("files/")) > 10
    assert 1 <= peak[0] <= 2, f"at most 2 files may be staged, saw {peak[0]}"
