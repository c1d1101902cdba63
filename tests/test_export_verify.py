"""``export`` and ``verify`` on generated datasets: byte-for-byte round trips, filters, refusals,
change detection, metadata-only verification, and crafted datasets with escaping paths."""

from __future__ import annotations

import fnmatch
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fsspec.implementations.memory import MemoryFileSystem

from bids2hf.model.format import FOOTER_KEY, MANIFEST_PATH, read_footer_index
from bids2hf.model.manifest import ManifestEntry, dumps
from bids2hf.plan.options import PlanOptions
from bids2hf.readback.export import export
from bids2hf.readback.verify import verify
from bids2hf.testing.spec import GeneratedDataset, SyntheticSpec
from bids2hf.testing.synthetic import generate_bids
from helpers import Cli, convert, error_line, manifest, snapshot, tree

EXPORT_TMP = ".bids2hf-export-*"  # each run's own temporary folder


def temporaries(out: Path) -> list[Path]:
    return sorted(out.glob(EXPORT_TMP)) if out.is_dir() else []


# -- export ---------------------------------------------------------------------------------------
def test_export_round_trip_with_derivatives(
    cli: Cli, synthetic: GeneratedDataset, converted: Path, tmp_path: Path
) -> None:
    out = tmp_path / "exported"
    result = cli("export", converted, out, "-q")
    assert result.exit_code == 0, result.output
    source = tree(synthetic.root)
    assert any(k.startswith("derivatives/lesion_masks/sub-") for k in source)
    assert tree(out) == source
    assert f"wrote {len(source)} files" in result.output
    assert "left out" not in result.output
    assert not temporaries(out)
    assert not any(p.is_symlink() for p in out.rglob("*"))


def test_export_without_derivatives_leaves_exactly_them_out(
    cli: Cli, synthetic: GeneratedDataset, converted_raw: Path, tmp_path: Path
) -> None:
    out = tmp_path / "exported"
    result = cli("export", converted_raw, out, "-q")
    assert result.exit_code == 0, result.output
    source = tree(synthetic.root)
    derivative_files = {k for k in source if k.startswith("derivatives/lesion_masks/")}
    left_out = {e.path: e.reason for e in manifest(converted_raw) if e.placement == "left_out"}
    assert set(left_out) == derivative_files
    assert all(left_out.values())
    assert tree(out) == {k: v for k, v in source.items() if k not in derivative_files}
    assert f"{len(derivative_files)} file(s) were left out" in result.output


def test_export_include_and_exclude(
    cli: Cli, synthetic: GeneratedDataset, converted: Path, tmp_path: Path
) -> None:
    source = tree(synthetic.root)
    out = tmp_path / "sub01"
    result = cli("export", converted, out, "--include", "sub-01*", "-q")
    assert result.exit_code == 0, result.output
    exported = tree(out)
    expected = {k: v for k, v in source.items() if fnmatch.fnmatchcase(k, "sub-01*")}
    assert exported == expected
    assert all(k.startswith("sub-01/") for k in exported)
    placements = {e.placement for e in manifest(converted) if e.path in exported}
    assert placements == {"row", "dataset_file"}, "both embedded and dataset-level files come back"
    assert any(k.endswith(".nii.gz") for k in exported)

    out2 = tmp_path / "sub01-no-json"
    result = cli("export", converted, out2, "--include", "sub-01*", "--exclude", "*.json", "-q")
    assert result.exit_code == 0, result.output
    assert tree(out2) == {k: v for k, v in expected.items() if not k.endswith(".json")}


def test_export_refuses_to_overwrite(
    cli: Cli, synthetic: GeneratedDataset, converted: Path, tmp_path: Path
) -> None:
    out = tmp_path / "exported"
    assert cli("export", converted, out, "-q").exit_code == 0
    changed = out / "participants.tsv"
    changed.write_bytes(b"edited by hand\n")
    (out / "sub-01" / "notes.txt").write_text("mine\n")
    before = snapshot(out, mtimes=True)

    result = cli("export", converted, out, "-q")
    line = error_line(result)
    assert "already exists" in line and "--overwrite" in line
    assert snapshot(out, mtimes=True) == before, "a refused export must change nothing"

    # A filtered export is refused all the same when it would replace a file.
    assert cli("export", converted, out, "--include", "participants.tsv", "-q").exit_code == 2
    assert snapshot(out, mtimes=True) == before

    result = cli("export", converted, out, "--overwrite", "-q")
    assert result.exit_code == 0, result.output
    after = tree(out)
    assert after.pop("sub-01/notes.txt")  # unrelated files are kept
    assert after == tree(synthetic.root)
    assert not temporaries(out)


def test_export_into_a_folder_without_conflicts(
    cli: Cli, synthetic: GeneratedDataset, converted: Path, tmp_path: Path
) -> None:
    """Only files that would be replaced are conflicts: two disjoint partial exports add up."""
    out = tmp_path / "exported"
    assert cli("export", converted, out, "--include", "sub-0[12]*", "-q").exit_code == 0
    result = cli("export", converted, out, "--exclude", "sub-0[12]*", "-q")
    assert result.exit_code == 0, result.output
    assert tree(out) == tree(synthetic.root)


def test_export_of_a_datalad_checkout(cli: Cli, bids_copy: Path, tmp_path: Path) -> None:
    """Version-control folders are listed as left out (``.git/``); export must still work."""
    (bids_copy / ".git" / "objects").mkdir(parents=True)
    (bids_copy / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (bids_copy / ".datalad").mkdir()
    (bids_copy / ".datalad" / "config").write_text("[datalad]\n")
    hf = tmp_path / "hf"
    convert(bids_copy, hf)
    left_out = {e.path for e in manifest(hf) if e.placement == "left_out"}
    assert left_out == {".git/", ".datalad/"}
    out = tmp_path / "exported"
    result = cli("export", hf, out, "-q")
    assert result.exit_code == 0, result.output
    assert tree(out) == tree(bids_copy, skip_dirs=frozenset({".git", ".datalad"}))
    result = cli("verify", bids_copy, hf, "-q")
    assert result.exit_code == 0, result.output
    assert "2 left out on purpose" in result.output


def test_export_keeps_temporary_folders_it_did_not_create(
    cli: Cli, synthetic: GeneratedDataset, converted: Path, tmp_path: Path
) -> None:
    """Folders named like export's temporaries that this run did not create are not touched."""
    out = tmp_path / "out"
    for name in (".bids2hf-export-tmp", ".bids2hf-export-other"):
        (out / name).mkdir(parents=True)
        (out / name / "keep.txt").write_bytes(b"someone else's")
    before = snapshot(out, mtimes=True)
    result = cli("export", converted, out, "-q")
    assert result.exit_code == 0, result.output
    assert {
        k: v for k, v in snapshot(out, mtimes=True).items() if k.startswith(".bids2hf-export-")
    } == before
    assert tree(out, skip_dirs=frozenset(p.name for p in temporaries(out))) == tree(synthetic.root)
    umask = os.umask(0)  # files written under a private name keep the usual permissions
    os.umask(umask)
    assert (out / "participants.tsv").stat().st_mode & 0o777 == 0o666 & ~umask


def test_concurrent_exports_into_one_folder_do_not_disturb_each_other(
    synthetic: GeneratedDataset, converted: Path, tmp_path: Path
) -> None:
    """Two exports of different parts into one folder, at the same time, through the real
    command: each keeps its own temporary files, so both complete and nothing is left over."""
    expected = tree(synthetic.root)
    for attempt in range(3):
        out = tmp_path / f"out{attempt}"
        runs = [
            subprocess.Popen(
                [sys.executable, "-m", "bids2hf", "export", str(converted), str(out), "-q", *part],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for part in (["--include", "sub-0[13]*"], ["--exclude", "sub-0[13]*"])
        ]
        for run in runs:
            _, stderr = run.communicate(timeout=120)
            assert run.returncode == 0, (attempt, stderr)
        assert not temporaries(out), attempt
        assert tree(out) == expected, attempt


def test_export_detects_damaged_published_bytes(
    cli: Cli, synthetic: GeneratedDataset, converted: Path, tmp_path: Path
) -> None:
    """Every file is checked against its sha256 before it is renamed into place."""
    hf = tmp_path / "hf"
    shutil.copytree(converted, hf)
    victim = next(
        e for e in manifest(hf) if e.placement == "row" and e.path.endswith("_T1w.nii.gz")
    )
    assert victim.location is not None
    shard = hf / victim.location
    blob = shard.read_bytes()
    original = (synthetic.root / victim.path).read_bytes()
    at = blob.index(original) + len(original) // 2  # embedded uncompressed, so found verbatim
    shard.write_bytes(blob[:at] + bytes([blob[at] ^ 0xFF]) + blob[at + 1 :])
    out = tmp_path / "exported"
    result = cli("export", hf, out, "-q")
    line = error_line(result, exit_code=1)
    assert victim.path in line and "sha256" in line
    assert not (out / victim.path).exists()
    assert not temporaries(out)


@pytest.mark.parametrize("damage", ["page header", "path not UTF-8"])
def test_export_of_damaged_data_pages_is_a_one_line_refusal(
    cli: Cli, converted: Path, tmp_path: Path, damage: str
) -> None:
    """A shard whose pages cannot be read or decoded (a bad copy): one line, nothing written."""
    hf = tmp_path / "hf"
    shutil.copytree(converted, hf)
    victim = next(
        e for e in manifest(hf) if e.placement == "row" and e.path.endswith("_T1w.nii.gz")
    )
    shard = hf / str(victim.location)
    meta = pq.ParquetFile(shard).metadata
    chunk = next(
        meta.row_group(g).column(c)
        for g in range(meta.num_row_groups)
        for c in range(meta.num_columns)
        if meta.row_group(g).column(c).path_in_schema == f"{victim.column}.list.element.path"
    )
    blob = bytearray(shard.read_bytes())
    if damage == "page header":
        blob[chunk.data_page_offset] ^= 0xFF
    else:  # a path stored verbatim (dictionary page) gets a byte that no UTF-8 text has
        start = chunk.dictionary_page_offset or chunk.data_page_offset
        at = bytes(blob).find(victim.path.encode(), start, start + chunk.total_compressed_size)
        assert at >= 0
        blob[at + 3] = 0xFF
    shard.write_bytes(bytes(blob))
    out = tmp_path / "exported"
    result = cli("export", hf, out, "-q")
    assert "internal error" not in result.output
    line = error_line(result, exit_code=1 if damage == "page header" else 2)
    assert shard.name in line
    if damage == "page header":
        assert result.exit_code == 1, result.output
        assert "not readable" in line and "damaged" in line
    else:
        assert result.exit_code == 2, result.output
        assert "where the index says" in line
    assert not out.exists()


@pytest.mark.parametrize("twin", ["same files", "text"])
def test_export_refuses_a_shard_with_a_column_name_twice(
    cli: Cli, converted: Path, tmp_path: Path, twin: str
) -> None:
    """A crafted shard with two columns of one name: which one holds the file is ambiguous."""
    hf = tmp_path / "hf"
    shutil.copytree(converted, hf)
    victim = next(
        e for e in manifest(hf) if e.placement == "row" and e.path.endswith("_T1w.nii.gz")
    )
    assert victim.column is not None
    shard = hf / str(victim.location)
    index = pq.ParquetFile(shard).metadata.metadata[FOOTER_KEY]
    table = pq.read_table(shard)
    column = table.column(victim.column)
    if twin == "text":
        column = pa.array(["x"] * table.num_rows)
    table = table.append_column(victim.column, column)
    with pq.ParquetWriter(shard, table.schema) as writer:
        writer.write_table(table)
        writer.add_key_value_metadata({FOOTER_KEY: index})
    out = tmp_path / "exported"
    result = cli("export", hf, out, "-q")
    line = error_line(result)
    assert repr(victim.column) in line and "twice" in line
    assert not out.exists()


def test_export_of_an_incomplete_upload_fails_cleanly(
    cli: Cli, converted: Path, tmp_path: Path
) -> None:
    hf = tmp_path / "hf"
    shutil.copytree(converted, hf)
    (hf / "bids" / "participants.tsv").unlink()
    result = cli("export", hf, tmp_path / "exported", "-q")
    line = error_line(result, exit_code=1)
    assert "bids/participants.tsv" in line and "missing from the published dataset" in line
    assert "internal error" not in result.output


def test_export_without_a_manifest_restores_dataset_files_from_bids_folder(
    cli: Cli, synthetic: GeneratedDataset, converted: Path, tmp_path: Path
) -> None:
    """No manifest (an older tool, a lost file): embedded files come from the shard footers and
    dataset-level files from ``bids/``, which holds them verbatim; nothing is dropped."""
    hf = tmp_path / "hf"
    shutil.copytree(converted, hf)
    dataset_files = {e.path for e in manifest(hf) if e.placement == "dataset_file"}
    assert {"dataset_description.json", "participants.tsv"} <= dataset_files
    (hf / MANIFEST_PATH).unlink()
    out = tmp_path / "exported"
    result = cli("export", hf, out, "-q")
    assert result.exit_code == 0, result.output
    assert tree(out) == tree(synthetic.root)
    assert not temporaries(out)


def test_export_without_manifest_or_bids_folder_says_what_it_cannot_restore(
    cli: Cli, synthetic: GeneratedDataset, converted: Path, tmp_path: Path
) -> None:
    """An interrupted upload: shards only. Export refuses (exit 1) before writing anything and
    names what it could not restore; ``--exclude`` of those files exports the rest."""
    hf = tmp_path / "hf"
    shutil.copytree(converted, hf)
    (hf / MANIFEST_PATH).unlink()
    shutil.rmtree(hf / "bids")
    out = tmp_path / "exported"
    result = cli("export", hf, out, "-q")
    line = error_line(result, exit_code=1)
    assert "dataset_description.json" in line and "cannot be restored" in line
    assert "--exclude" in line
    assert not out.exists()

    result = cli("export", hf, out, "-q", "--exclude", "dataset_description.json")
    assert result.exit_code == 0, result.output
    embedded = {k: v for k, v in tree(synthetic.root).items() if k not in _dataset_files(converted)}
    assert tree(out) == embedded

    # A partial export that does not want the dataset-level files is no problem.
    out2 = tmp_path / "sub-01"
    result = cli("export", hf, out2, "-q", "--include", "sub-01/ses-1/*")
    assert result.exit_code == 0, result.output
    assert tree(out2) == {k: v for k, v in embedded.items() if k.startswith("sub-01/ses-1/")}


def test_export_with_a_stray_shard_trusts_the_manifest(
    cli: Cli, synthetic: GeneratedDataset, bids_copy: Path, converted: Path, tmp_path: Path
) -> None:
    """A shard the manifest does not list, holding another version of a file: the manifest
    decides; without a manifest, export refuses to guess which version is current."""
    changed = "sub-01/ses-1/anat/sub-01_ses-1_T1w.json"
    sidecar = json.loads((bids_copy / changed).read_text())
    (bids_copy / changed).write_text(json.dumps({**sidecar, "EchoTime": 0.005}))
    other = tmp_path / "other"
    convert(bids_copy, other, plan_options=PlanOptions(max_shard_bytes=200_000))
    holder = next(e.location for e in manifest(other) if e.path == changed)
    hf = tmp_path / "hf"
    shutil.copytree(converted, hf)
    shutil.copy(other / str(holder), hf / "data" / "train-zz-stray.parquet")

    result = cli("export", hf, tmp_path / "exported", "-q")
    assert result.exit_code == 0, result.output
    assert tree(tmp_path / "exported") == tree(synthetic.root)

    (hf / MANIFEST_PATH).unlink()
    result = cli("export", hf, tmp_path / "exported2", "-q")
    line = error_line(result)
    assert repr(changed) in line and "held twice" in line
    assert not (tmp_path / "exported2").exists()


@pytest.mark.parametrize("with_manifest", [True, False])
@pytest.mark.parametrize("foreign", ["garbage", "parquet"])
def test_foreign_files_in_data_do_not_stop_export_or_verify(
    synthetic: GeneratedDataset,
    converted: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    foreign: str,
    with_manifest: bool,
) -> None:
    """bids2hf never deletes a file it did not write, so data/ may hold foreign files: they are
    no part of the dataset. With a manifest their footers are not even read; without one, a
    file that is no bids2hf shard is ignored with a warning."""
    hf = tmp_path / "hf"
    shutil.copytree(converted, hf)
    other = hf / "data" / "other-00000.parquet"
    if foreign == "garbage":
        other.write_bytes(b"not a parquet file\n" * 20)
    else:
        pq.write_table(pa.table({"x": [1, 2, 3]}), other)
    if not with_manifest:
        (hf / MANIFEST_PATH).unlink()
    out = tmp_path / "exported"
    with caplog.at_level(logging.WARNING):
        export(str(hf), out, progress=False)
    assert tree(out) == tree(synthetic.root)
    warned = [r.getMessage() for r in caplog.records if "other-00000.parquet" in r.getMessage()]
    if with_manifest:
        # Not referenced by the manifest, so not part of the dataset: never read, only counted.
        assert len(warned) == 1 and "does not list 1 file(s)" in warned[0], warned
        assert verify(synthetic.root, str(hf), progress=False).ok
    else:
        assert len(warned) == 1 and "not a bids2hf shard" in warned[0], warned
        # Without a manifest, verify knows no dataset-level files; embedded ones all match.
        report = verify(synthetic.root, str(hf), progress=False)
        assert {d.kind for d in report.differences} <= {"missing"}
        assert not [d for d in report.differences if "other-00000" in d.path + d.detail]


def test_export_with_a_manifest_does_not_bring_back_stale_files(
    bids_copy: Path, converted: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A valid manifest says what the dataset holds: a stale shard and a stale dataset-level file
    of an older conversion (kept, since bids2hf deletes only what it wrote) are not exported;
    one warning says how many files were ignored."""
    shutil.rmtree(bids_copy / "sub-02")
    hf = tmp_path / "hf"
    convert(bids_copy, hf, plan_options=PlanOptions(max_shard_bytes=200_000))
    old = {e.location for e in manifest(converted) if e.path.startswith("sub-02/")}
    old_shards = sorted(str(loc) for loc in old if str(loc).startswith("data/"))
    assert old_shards
    for i, shard in enumerate(old_shards):
        shutil.copy(converted / shard, hf / "data" / f"train-zz-old-{i}.parquet")
    (hf / "bids" / "sub-02").mkdir()
    shutil.copy(converted / "bids/sub-02/sub-02_sessions.tsv", hf / "bids" / "sub-02")
    out = tmp_path / "exported"
    with caplog.at_level(logging.WARNING):
        export(str(hf), out, progress=False)
    assert tree(out) == tree(bids_copy)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, warnings
    assert f"does not list {len(old_shards) + 1} file(s)" in warnings[0]
    assert "not exported" in warnings[0]
    assert verify(bids_copy, str(hf), progress=False).ok


def test_export_and_verify_agree_on_a_manifest_that_lists_fewer_files(
    synthetic: GeneratedDataset, converted: Path, tmp_path: Path
) -> None:
    """A manifest missing a line its shard's index has: export leaves the file out, and verify
    agrees (the export verifies clean; the source shows the file as missing)."""
    hf = tmp_path / "hf"
    shutil.copytree(converted, hf)
    entries = manifest(hf)
    dropped = next(e for e in entries if e.placement == "row" and e.path.endswith("_T1w.nii.gz"))
    (hf / MANIFEST_PATH).write_bytes(dumps([e for e in entries if e is not dropped]))
    out = tmp_path / "exported"
    export(str(hf), out, progress=False)
    assert tree(out) == {k: v for k, v in tree(synthetic.root).items() if k != dropped.path}
    assert verify(out, str(hf), progress=False).ok
    report = verify(synthetic.root, str(hf), progress=False)
    assert [(d.path, d.kind) for d in report.differences] == [(dropped.path, "missing")]


def _dataset_files(hf: Path) -> set[str]:
    return {e.path for e in manifest(hf) if e.placement == "dataset_file"}


def test_export_refuses_a_symlinked_folder_inside_the_output(
    cli: Cli, converted: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    outside = tmp_path / "outside"
    out.mkdir()
    outside.mkdir()
    (out / "sub-01").symlink_to(outside, target_is_directory=True)
    result = cli("export", converted, out, "-q")
    assert "resolves outside" in error_line(result)
    assert list(outside.iterdir()) == []


@pytest.mark.parametrize("with_manifest", [True, False])
def test_export_refuses_a_file_that_is_also_a_folder(
    cli: Cli, converted: Path, tmp_path: Path, with_manifest: bool
) -> None:
    """A damaged or crafted dataset holds a file where another file's folder is: refused in one
    line (exit 2) before anything is written, not a crash halfway through."""
    hf = tmp_path / "hf"
    shutil.copytree(converted, hf)
    clash = hf / "bids" / "sub-01" / "ses-1"
    clash.write_bytes(b"x")
    if with_manifest:
        digest = hashlib.sha256(b"x").hexdigest()
        entry = ManifestEntry("sub-01/ses-1", 1, "dataset_file", digest, "bids/sub-01/ses-1")
        (hf / MANIFEST_PATH).write_bytes(dumps([*manifest(hf), entry]))
    else:
        (hf / MANIFEST_PATH).unlink()
    out = tmp_path / "exported"
    result = cli("export", hf, out, "-q")
    line = error_line(result)
    assert "'sub-01/ses-1' is both a file and the folder of 'sub-01/ses-1/" in line
    assert not out.exists()


BLOCKERS: dict[str, Callable[[Path], None]] = {
    "file on a folder's path": lambda out: (out / "sub-01").write_bytes(b"mine"),
    "file deeper on a folder's path": lambda out: (
        (out / "sub-01").mkdir(),
        (out / "sub-01" / "ses-1").write_bytes(b"mine"),
    ),
    "broken symlink on a folder's path": lambda out: (out / "sub-02").symlink_to("nowhere"),
    "folder on a file's path": lambda out: (out / "participants.tsv" / "mine").mkdir(parents=True),
}


@pytest.mark.parametrize("overwrite", [False, True])
@pytest.mark.parametrize("blocker", sorted(BLOCKERS))
def test_export_refuses_an_output_folder_that_blocks_a_path(
    cli: Cli, converted: Path, tmp_path: Path, blocker: str, overwrite: bool
) -> None:
    """Something in the output folder where export needs a folder (or a file) that it must not
    and cannot replace: refused before the first write, the output folder left as it was."""
    out = tmp_path / "out"
    out.mkdir()
    BLOCKERS[blocker](out)
    before = snapshot(out, mtimes=True)
    result = cli("export", converted, out, *(["--overwrite"] if overwrite else []))
    assert "move it away" in error_line(result)
    assert snapshot(out, mtimes=True) == before


def test_export_refuses_an_output_that_is_a_file(cli: Cli, converted: Path, tmp_path: Path) -> None:
    for out in (tmp_path / "file", tmp_path / "file" / "below"):
        (tmp_path / "file").write_bytes(b"mine")
        result = cli("export", converted, out)
        error_line(result)
        assert (tmp_path / "file").read_bytes() == b"mine"


def test_export_and_verify_refuse_a_source_that_is_not_a_dataset(
    cli: Cli, synthetic: GeneratedDataset, tmp_path: Path
) -> None:
    for source in (tmp_path / "nowhere", synthetic.root):
        for args in (("export", source, tmp_path / "out"), ("verify", synthetic.root, source)):
            result = cli(*args, "-q")
            assert "not a bids2hf dataset" in error_line(result)
    assert not (tmp_path / "out").exists()


# -- verify ---------------------------------------------------------------------------------------
def test_verify_identical(
    cli: Cli, synthetic: GeneratedDataset, converted: Path, converted_raw: Path, tmp_path: Path
) -> None:
    n = len(tree(synthetic.root))
    result = cli("verify", synthetic.root, converted, "-q")
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"identical: {n} file(s) match"

    # ... and so is what export wrote.
    out = tmp_path / "exported"
    assert cli("export", converted, out, "-q").exit_code == 0
    result = cli("verify", out, converted, "-q")
    assert result.exit_code == 0, result.output

    # Files left out on purpose are no difference, but are mentioned.
    result = cli("verify", synthetic.root, converted_raw, "-q")
    assert result.exit_code == 0, result.output
    left_out = sum(e.placement == "left_out" for e in manifest(converted_raw))
    assert left_out > 0
    assert f"; {left_out} left out on purpose" in result.output


def _flip_middle_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "changed",
    [
        "sub-01/ses-1/anat/sub-01_ses-1_T1w.nii.gz",  # embedded in a row, in an image column
        "sub-01/ses-1/anat/sub-01_ses-1_T1w.json",  # embedded in a row, in the files column
        "participants.tsv",  # a dataset-level file
    ],
)
def test_verify_detects_changed_missing_and_extra(
    cli: Cli, bids_copy: Path, converted: Path, tmp_path: Path, changed: str
) -> None:
    hf = tmp_path / "hf"
    shutil.copytree(converted, hf)
    entries = {e.path: e for e in manifest(hf)}
    assert changed in entries
    size = (bids_copy / changed).stat().st_size
    _flip_middle_byte(bids_copy / changed)
    assert (bids_copy / changed).stat().st_size == size
    # In the BIDS folder but not (any more) in the published copy: "missing".
    missing = "dataset_description.json"
    assert entries[missing].placement == "dataset_file"
    (hf / "bids" / missing).unlink()
    # Published but no longer in the BIDS folder: "extra".
    extra = "sub-02/ses-1/anat/sub-02_ses-1_T1w.nii.gz"
    (bids_copy / extra).unlink()

    result = cli("verify", bids_copy, hf, "-q")
    assert result.exit_code == 1, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("differences: 1 missing, 1 changed, 1 extra")
    table = [line.split() for line in lines[lines.index("  status    path") + 1 :]]
    assert [(row[0], row[1]) for row in table] == [
        ("changed", changed),
        ("extra", extra),
        ("missing", missing),
    ]
    assert "sha256 differs" in result.output
    assert f"in {entries[extra].location}" in result.output

    report = verify(bids_copy, str(hf), progress=False)
    assert {(d.kind, d.path) for d in report.differences} == {
        ("changed", changed),
        ("extra", extra),
        ("missing", missing),
    }


def test_verify_new_local_file_and_size_change(cli: Cli, bids_copy: Path, converted: Path) -> None:
    (bids_copy / "sub-01" / "ses-1" / "anat" / "notes.txt").write_text("new\n")
    with open(bids_copy / "README", "ab") as f:
        f.write(b"one more line\n")
    result = cli("verify", bids_copy, converted, "-q")
    assert result.exit_code == 1, result.output
    assert "differences: 1 missing, 1 changed, 0 extra" in result.output
    assert "missing   sub-01/ses-1/anat/notes.txt  (not in the published dataset)" in result.output
    assert "changed   README  (size " in result.output


def test_verify_of_a_missing_folder_is_an_error(cli: Cli, converted: Path, tmp_path: Path) -> None:
    result = cli("verify", tmp_path / "typo", converted, "-q")
    assert "no such folder" in error_line(result)


# -- verify reads only metadata -----------------------------------------------------------------
class _CountingReader:
    """A read-only file wrapper that counts the bytes handed out."""

    def __init__(self, f: Any, reads: Counter[str], path: str) -> None:
        self._f = f
        self._reads = reads
        self._path = path

    def read(self, n: int = -1) -> bytes:
        data: bytes = self._f.read(n)
        self._reads[self._path] += len(data)
        return data

    def readinto(self, b: Any) -> int:
        n: int = self._f.readinto(b)
        self._reads[self._path] += n
        return n

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)

    def __enter__(self) -> _CountingReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self._f.close()


class CountingMemoryFS(MemoryFileSystem):
    """An in-memory, "remote" filesystem (``countmem://``) that counts bytes read per file."""

    protocol = "countmem"
    store: ClassVar[dict[str, Any]] = {}  # fsspec's convention: one store per class
    pseudo_dirs: ClassVar[list[str]] = [""]
    reads: ClassVar[Counter[str]] = Counter()

    @classmethod
    def _strip_protocol(cls, path: Any) -> Any:
        if isinstance(path, str):
            path = path.removeprefix("countmem://")
        return super()._strip_protocol(path)

    def _open(self, path: str, mode: str = "rb", **kwargs: Any) -> Any:
        f = super()._open(path, mode, **kwargs)
        if mode == "rb":
            return _CountingReader(f, self.reads, self._strip_protocol(path))
        return f

    def cat_file(self, path: str, start: Any = None, end: Any = None, **kwargs: Any) -> Any:
        # Range reads (export's byte ranges) come here, not through _open.
        data = super().cat_file(path, start=start, end=end, **kwargs)
        self.reads[self._strip_protocol(path)] += len(data)
        return data


@pytest.fixture
def remote(tmp_path: Path) -> Iterator[Callable[[Path], str]]:
    fsspec.register_implementation("countmem", CountingMemoryFS, clobber=True)
    fs = CountingMemoryFS()
    prefix = f"/hf-{uuid.uuid4().hex}"

    def upload(folder: Path) -> str:
        for p in folder.rglob("*"):
            rel = p.relative_to(folder).as_posix()
            if p.is_file() and not rel.startswith(".bids2hf/"):
                fs.pipe_file(f"{prefix}/{rel}", p.read_bytes())
        CountingMemoryFS.reads.clear()
        return f"countmem://{prefix}"

    yield upload
    fs.rm(prefix, recursive=True)
    CountingMemoryFS.reads.clear()


def _footer_length(shard: Path) -> int:
    with open(shard, "rb") as f:
        f.seek(-8, os.SEEK_END)
        tail = f.read(8)
    assert tail[4:] == b"PAR1"
    return int.from_bytes(tail[:4], "little") + 8


def test_verify_reads_only_metadata(
    cli: Cli, remote: Callable[[Path], str], tmp_path: Path
) -> None:
    generated = generate_bids(
        tmp_path / "bids", SyntheticSpec(n_subjects=3, target_bytes=20_000_000, threads=1)
    )
    hf = tmp_path / "hf"
    convert(generated.root, hf, plan_options=PlanOptions(max_shard_bytes=5_000_000))
    shards = {p.relative_to(hf).as_posix(): p for p in (hf / "data").glob("*.parquet")}
    assert len(shards) > 1
    shard_bytes = sum(p.stat().st_size for p in shards.values())
    url = remote(hf)
    reads = CountingMemoryFS.reads

    result = cli("verify", generated.root, url, "-q")
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"identical: {len(generated.files)} file(s) match")
    read = dict(reads)
    prefix = url.removeprefix("countmem://")
    per_shard = {rel: read.get(f"{prefix}/{rel}", 0) for rel in shards}
    assert all(per_shard.values()), f"the counter saw no footer read: {read}"
    for rel, n in per_shard.items():
        # Arrow reads the footer with one speculative 64 KiB read from the end of the file.
        assert n <= max(64 * 1024, _footer_length(shards[rel])), (rel, n)
    assert sum(read.values()) < 0.03 * shard_bytes, (sum(read.values()), shard_bytes)
    assert set(read) <= {f"{prefix}/{rel}" for rel in shards} | {f"{prefix}/{MANIFEST_PATH}"}

    # A change is still found from metadata alone.
    _flip_middle_byte(next(p for p in generated.nifti_files if "sub-02" in p.name))
    reads.clear()
    result = cli("verify", generated.root, url, "-q")
    assert result.exit_code == 1, result.output
    assert "1 changed" in result.output
    assert sum(reads.values()) < 0.03 * shard_bytes

    # The counter is honest: export, which needs the embedded bytes, reads them all.
    reads.clear()
    result = cli("export", url, tmp_path / "exported", "-q")
    assert result.exit_code == 0, result.output
    embedded = sum(e.size for e in manifest(hf) if e.placement == "row")
    assert sum(reads.values()) >= embedded > 0.9 * generated.total_bytes


# -- crafted datasets with escaping paths ---------------------------------------------------------
ABS = "<ABS>"  # replaced by an absolute path inside the watched parent folder
BAD_PATHS = ["../x", ABS, "sub-01/../../escape"]
SHARD = "data/train-00000.parquet"
GOOD = "sub-01/anat/sub-01_T1w.json"


def _craft(
    root: Path,
    *,
    manifest_paths: list[str] | None,
    footer_paths: list[str],
    struct_paths: list[str],
) -> None:
    """A bids2hf-like dataset whose one row embeds one file per path (plus a harmless one)."""
    files = [(p, f"payload {i}\n".encode()) for i, p in enumerate(footer_paths)]
    entries = [
        ManifestEntry(
            path, len(data), "row", hashlib.sha256(data).hexdigest(), SHARD, "files", 0, i
        )
        for i, (path, data) in enumerate(files)
    ]
    item = pa.struct([("path", pa.string()), ("bytes", pa.binary())])
    table = pa.table(
        {
            "subject_id": pa.array(["sub-01"]),
            "files": pa.array(
                [
                    [
                        {"path": p, "bytes": data}
                        for p, (_, data) in zip(struct_paths, files, strict=True)
                    ]
                ],
                type=pa.list_(item),
            ),
        }
    )
    footer = json.dumps(
        [
            {
                "path": e.path,
                "size": e.size,
                "sha256": e.sha256,
                "row": 0,
                "column": "files",
                "index": e.index,
            }
            for e in entries
        ]
    )
    table = table.replace_schema_metadata({FOOTER_KEY: footer})
    (root / "data").mkdir(parents=True)
    pq.write_table(table, root / SHARD)
    assert [
        e.path for e in read_footer_index(pq.ParquetFile(root / SHARD).metadata)
    ] == footer_paths
    if manifest_paths is not None:
        (root / "bids2hf").mkdir()
        (root / MANIFEST_PATH).write_bytes(
            dumps(
                ManifestEntry(
                    p, e.size, e.placement, e.sha256, e.location, e.column, e.row, e.index
                )
                for p, e in zip(manifest_paths, entries, strict=True)
            )
        )


@pytest.mark.parametrize("bad", BAD_PATHS)
@pytest.mark.parametrize(
    "where",
    [
        "everywhere",  # manifest, footer index and the struct cells agree on the bad path
        "footer-and-struct-no-manifest",  # no manifest: export trusts the footers
        "footer-only-no-manifest",  # no manifest; the cells hold a harmless path
        "struct-only",  # manifest and footer harmless; only the cell's own path field is bad
    ],
)
def test_export_refuses_escaping_paths(cli: Cli, tmp_path: Path, bad: str, where: str) -> None:
    parent = tmp_path / "parent"
    (parent / "sibling").mkdir(parents=True)
    (parent / "sibling" / "keep.txt").write_text("untouched\n")
    out = parent / "out"
    bad = bad.replace(ABS, str(parent / "abs-escape"))
    good_and_bad = [GOOD, bad]
    safe = [GOOD, "sub-01/anat/sub-01_T2w.json"]
    crafted = tmp_path / "crafted"
    manifest_paths: list[str] | None = None
    footer_paths, struct_paths = good_and_bad, good_and_bad
    if where == "everywhere":
        manifest_paths = good_and_bad
    elif where == "footer-only-no-manifest":
        struct_paths = safe
    elif where == "struct-only":
        manifest_paths = footer_paths = safe
    _craft(
        crafted, manifest_paths=manifest_paths, footer_paths=footer_paths, struct_paths=struct_paths
    )
    before = snapshot(parent, mtimes=True)

    result = cli("export", crafted, out, "-q")
    line = error_line(result)
    assert "refusing stored path" in line and repr(bad) in line

    after = snapshot(parent, mtimes=True)
    outside_out = {k: v for k, v in after.items() if k != "out" and not k.startswith("out/")}
    assert outside_out == before, "nothing may be written outside the output folder"
    assert not (parent / "x").exists() and not (parent / "escape").exists()
    assert not (parent / "abs-escape").exists() and not (tmp_path / "x").exists()
    if where != "struct-only":
        # Refused while reading the manifest or footers: before anything was written.
        assert not out.exists()
    else:
        written = set(tree(out)) if out.exists() else set()
        assert written <= {GOOD}


@pytest.mark.parametrize("field", ["path", "location"])
@pytest.mark.parametrize("bad", BAD_PATHS)
def test_export_refuses_escaping_dataset_file_entries(
    cli: Cli, converted: Path, tmp_path: Path, field: str, bad: str
) -> None:
    hf = tmp_path / "hf"
    shutil.copytree(converted, hf)
    parent = tmp_path / "parent"
    parent.mkdir()
    bad = bad.replace(ABS, str(parent / "abs-escape"))
    entries = manifest(hf)
    i = next(i for i, e in enumerate(entries) if e.placement == "dataset_file")
    e = entries[i]
    entries[i] = ManifestEntry(
        bad if field == "path" else e.path,
        e.size,
        e.placement,
        e.sha256,
        bad if field == "location" else e.location,
    )
    (hf / MANIFEST_PATH).write_bytes(dumps(entries))
    before = snapshot(tmp_path, mtimes=True)
    result = cli("export", hf, parent / "out", "-q")
    assert "refusing stored path" in error_line(result)
    assert snapshot(tmp_path, mtimes=True) == before
