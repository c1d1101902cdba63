"""Conversion core: layout, schema, determinism, and reading the output back with real readers."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest
from datasets import load_dataset

from bids2hf.bids.options import ScanOptions
from bids2hf.model.format import FOOTER_KEY, read_footer_index
from bids2hf.plan.options import PlanOptions
from bids2hf.testing.spec import GeneratedDataset
from helpers import convert, manifest_records, sha256, tree


def _source_niftis(synthetic: GeneratedDataset) -> dict[str, str]:
    return {p.relative_to(synthetic.root).as_posix(): sha256(p) for p in synthetic.nifti_files}


def test_hub_layout(converted: Path) -> None:
    shards = sorted((converted / "data").glob("*.parquet"))
    assert len(shards) > 1, "the small shard size must give several shards"
    assert all(p.name.startswith("train-sub-") for p in shards)
    card = (converted / "README.md").read_text()
    assert card.startswith("---\n")
    header = card.split("---\n")[1]
    assert "path: data/train-*.parquet" in header
    assert "license: cc0-1.0" in header
    assert "- bids" in header
    assert (converted / "bids" / "dataset_description.json").is_file()
    assert (converted / "bids2hf" / "manifest.jsonl").is_file()
    assert not (converted / ".bids2hf" / "tmp").exists()


def test_load_dataset_round_trip(converted: Path, synthetic: GeneratedDataset) -> None:
    """Every embedded NIfTI comes back from `datasets` byte for byte, decoded as nibabel images."""
    ds = load_dataset(str(converted), split="train")
    sources = _source_niftis(synthetic)
    seen: dict[str, str] = {}
    image_columns = [
        c
        for c in ds.column_names
        if ds.features[c].__class__.__name__ == "List"
        and getattr(ds.features[c].feature, "_type", "") == "Nifti"
    ]
    assert "anat_T1w" in image_columns and "func_bold" in image_columns
    raw = ds.cast_column(
        "func_bold",
        ds.features["func_bold"].__class__(
            ds.features["func_bold"].feature.__class__(decode=False)
        ),
    )
    for row in raw:
        for value in row["func_bold"]:
            import hashlib

            seen[value["path"]] = hashlib.sha256(value["bytes"]).hexdigest()
    bold = {k: v for k, v in sources.items() if "/func/" in k and k.endswith("_bold.nii.gz")}
    assert seen == bold
    img = ds[0]["anat_T1w"][0]
    assert img.get_fdata().shape == (16, 16, 8)


def test_streaming_reads_the_same(converted: Path) -> None:
    ds = load_dataset(str(converted), split="train", streaming=True)
    first = next(iter(ds))
    assert first["subject_id"] == "sub-01"
    assert first["anat_T1w"][0].shape == (16, 16, 8)


def test_second_reader_polars(converted: Path, synthetic: GeneratedDataset) -> None:
    """An independent reader (polars) sees the same bytes and checksums."""
    import hashlib

    import polars as pl

    df = pl.read_parquet(str(converted / "data" / "*.parquet"))
    sources = _source_niftis(synthetic)
    count = 0
    for images, hashes in zip(
        df["anat_T1w"].to_list(), df["anat_T1w_sha256"].to_list(), strict=True
    ):
        for image, digest in zip(images, hashes, strict=True):
            assert hashlib.sha256(image["bytes"]).hexdigest() == digest == sources[image["path"]]
            count += 1
    assert count == sum(1 for k in sources if k.endswith("_T1w.nii.gz") and "derivatives" not in k)


def test_multi_run_and_missing_modalities(converted: Path) -> None:
    table = pq.read_table(
        converted / "data",
        columns=[
            "subject_id",
            "session_id",
            "func_bold",
            "func_bold_run",
            "func_bold_task",
            "dwi_dwi",
        ],
    )
    rows = table.to_pylist()
    runs = [r for r in rows if len(r["func_bold"]) >= 3]
    assert runs, "a session with two rest runs and a naming task keeps all three"
    assert any(r["func_bold_run"].count(None) < len(r["func_bold_run"]) for r in runs)
    assert any(not r["dwi_dwi"] for r in rows), "a session without dwi has an empty list"
    assert all(len(r["func_bold"]) == len(r["func_bold_task"]) for r in rows)


def test_sidecar_inheritance_and_tables(converted: Path) -> None:
    rows = pq.read_table(
        converted / "data", columns=["subject_id", "func_bold_task", "func_bold_meta", "age", "sex"]
    ).to_pylist()
    trs = {
        (r["subject_id"], task, meta["RepetitionTime"])
        for r in rows
        for task, meta in zip(r["func_bold_task"], r["func_bold_meta"], strict=True)
        if task == "rest"
    }
    # The top-level task-rest_bold.json says 2.0; sub-02 overrides it in its own sidecars.
    assert {tr for s, _, tr in trs if s == "sub-02"} == {2.5}
    assert {tr for s, _, tr in trs if s != "sub-02"} == {2.0}
    assert all(isinstance(r["age"], (int, float)) for r in rows)


def test_every_file_accounted_for(converted: Path, synthetic: GeneratedDataset) -> None:
    by_path = {e["path"]: e for e in manifest_records(converted)}
    assert set(by_path) == {p.relative_to(synthetic.root).as_posix() for p in synthetic.files}
    for path, e in by_path.items():
        assert e["placement"] in ("row", "dataset_file", "left_out")
        if e["placement"] != "left_out":
            assert e["sha256"] == sha256(synthetic.root / path)


def test_each_shard_holds_exactly_its_rows_files(converted: Path) -> None:
    """The seed's failure: sliced shards embedding the wrong (or all) files."""
    seen: set[str] = set()
    for shard in sorted((converted / "data").glob("*.parquet")):
        pf = pq.ParquetFile(shard)
        index = read_footer_index(pf.metadata)
        table = pf.read()
        for e in index:
            row = table.slice(e.row, 1).to_pylist()[0]
            cell = row[e.column] if e.index < 0 else row[e.column][e.index]
            assert cell["path"] == e.path
            prefix = (
                row["subject_id"] + "/" + (row["session_id"] + "/" if row["session_id"] else "")
            )
            assert e.path.startswith(prefix) or e.path.startswith("derivatives/")
        paths = {e.path for e in index}
        assert not paths & seen, "a file is embedded in two shards"
        seen |= paths


def test_parquet_settings(converted: Path) -> None:
    shard = next((converted / "data").glob("*.parquet"))
    meta = pq.ParquetFile(shard).metadata
    assert b"huggingface" in meta.metadata and FOOTER_KEY in meta.metadata
    rg = meta.row_group(0)
    for i in range(rg.num_columns):
        col = rg.column(i)
        if col.path_in_schema == "anat_T1w.list.element.bytes":
            assert col.compression == "UNCOMPRESSED"
            assert not col.is_stats_set
            assert "PLAIN_DICTIONARY" not in col.encodings and "RLE_DICTIONARY" not in col.encodings
        if col.path_in_schema == "subject_id":
            assert col.compression == "ZSTD"


def test_deterministic_output(synthetic: GeneratedDataset, tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    convert(synthetic.root, a, plan_options=PlanOptions(max_shard_bytes=200_000))
    convert(synthetic.root, b, plan_options=PlanOptions(max_shard_bytes=200_000), workers=2)
    ta, tb = tree(a), tree(b)
    ta = {k: v for k, v in ta.items() if not k.startswith(".bids2hf")}
    tb = {k: v for k, v in tb.items() if not k.startswith(".bids2hf")}
    assert ta == tb


def test_row_groups_bounded(synthetic: GeneratedDataset, tmp_path: Path) -> None:
    out = tmp_path / "o"
    convert(
        synthetic.root,
        out,
        plan_options=PlanOptions(max_shard_bytes=10_000_000, row_group_bytes=1 << 20),
    )
    for shard in (out / "data").glob("*.parquet"):
        meta = pq.ParquetFile(shard).metadata
        for i in range(meta.num_row_groups):
            rg = meta.row_group(i)
            # A row group holds at most ~1 MiB of files unless it is a single large row.
            assert rg.total_byte_size <= 1.2 * (1 << 20) or rg.num_rows == 1


def test_scan_layout(synthetic: GeneratedDataset, tmp_path: Path) -> None:
    out = tmp_path / "scan"
    convert(synthetic.root, out, plan_options=PlanOptions(layout="scan"))
    ds = load_dataset(str(out), split="train")
    nifti_rows = [
        r
        for r in ds.cast_column("nifti", ds.features["nifti"].__class__(decode=False))
        if r["nifti"]
    ]
    assert len(nifti_rows) == len(synthetic.nifti_files)
    bold = next(r for r in nifti_rows if r["suffix"] == "bold")
    assert bold["task"] in ("rest", "naming40")
    assert any(f["path"].endswith("_bold.json") for f in bold["files"])


def test_demo_command(cli: object, tmp_path: Path) -> None:
    result = cli("demo", tmp_path / "demo", "--quiet")  # type: ignore[operator]
    assert result.exit_code == 0, result.output
    assert "load_dataset" in result.output
    ds = load_dataset(str(tmp_path / "demo" / "hf"), split="train")
    assert ds.num_rows > 0


def test_bidsignored_files_are_stored_verbatim_not_parsed(bids_copy: Path, tmp_path: Path) -> None:
    (bids_copy / ".bidsignore").write_text("extra/\n")
    notes = bids_copy / "sub-01" / "extra" / "notes.json"
    notes.parent.mkdir()
    notes.write_text("{ not json")
    out = tmp_path / "out"
    convert(bids_copy, out)
    entries = {e["path"]: e for e in manifest_records(out)}
    assert entries["sub-01/extra/notes.json"]["placement"] == "dataset_file"
    assert (out / "bids" / "sub-01" / "extra" / "notes.json").read_text() == "{ not json"


def test_default_check_never_decompresses_good_files(
    synthetic: GeneratedDataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cheap check reads headers and gzip trailers only; full decompression is for --check full."""
    import bids2hf.bids.nifti as nifti_header
    from bids2hf.bids.scan import scan

    def refuse(path: str) -> int:
        raise AssertionError(f"decompressed {path} during the cheap check")

    monkeypatch.setattr(nifti_header, "_full_length", refuse)
    inventory = scan(synthetic.root, ScanOptions(derivatives=("all",)))
    assert not inventory.errors
