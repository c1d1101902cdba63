"""The TOML config, and the shipped ARC example reproducing the published ARC schema."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner, Result
from datasets import List, Nifti, Value, load_dataset

import bids2hf
from bids2hf.bids.options import ScanOptions
from bids2hf.cli.commands import main
from bids2hf.errors import InputError
from bids2hf.model.rows import FileRef
from bids2hf.plan.config import load_config, parse_config
from bids2hf.plan.options import PlanOptions
from bids2hf.testing.spec import GeneratedDataset, SyntheticSpec
from bids2hf.testing.synthetic import generate_bids

ARC_CONFIG = Path(bids2hf.__file__).parent / "examples" / "arc.toml"
ARC_COLUMNS = [
    "subject_id",
    "session_id",
    "t1w",
    "t2w",
    "t2w_acquisition",
    "flair",
    "bold_naming40",
    "bold_rest",
    "dwi",
    "dwi_bvals",
    "dwi_bvecs",
    "sbref",
    "lesion",
    "lesion_source_index",
    "age_at_stroke",
    "sex",
    "race",
    "wab_aq",
    "wab_days",
    "wab_type",
]
ARC_NAMES = {"spc3p2": "space_2x", "spc3": "space_no_accel", "tse3": "turbo_spin_echo"}


@pytest.fixture(scope="module")
def arc(tmp_path_factory: pytest.TempPathFactory) -> GeneratedDataset:
    return generate_bids(
        tmp_path_factory.mktemp("arc") / "bids", SyntheticSpec(n_subjects=5, arc_shaped=True)
    )


@pytest.fixture(scope="module")
def arc_out(arc: GeneratedDataset, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ARC-shaped folder converted with the command arc.toml documents."""
    out = tmp_path_factory.mktemp("arc-out") / "out"
    result = CliRunner().invoke(
        main,
        ["convert", str(arc.root), str(out), "--config", str(ARC_CONFIG),
         "--derivatives", "lesion_masks", "-q"],
        catch_exceptions=False,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return out


def _name(cell: dict[str, object]) -> str:
    return str(cell["path"]).rsplit("/", 1)[-1]


def test_the_arc_shaped_data_has_real_arcs_repeated_runs(arc: GeneratedDataset) -> None:
    """The six kinds of session real ARC has and a "single file" schema loses."""
    names = [p.name for p in arc.nifti_files]
    per_session: dict[tuple[str, str], list[str]] = {}
    for n in names:
        sub, ses = n.split("_")[:2]
        per_session.setdefault((sub, ses), []).append(n)
    for suffix in ("T1w", "T2w", "FLAIR"):
        assert any(
            sum(n.endswith(f"_{suffix}.nii.gz") for n in files) == 2
            for files in per_session.values()
        ), suffix
    masks = [n for n in names if n.endswith("_desc-lesion_mask.nii.gz")]
    assert any("_run-11_T2w_desc-lesion_mask" in m for m in masks)
    sbref_folders = {p.parent.name for p in arc.nifti_files if p.name.endswith("_sbref.nii.gz")}
    assert sbref_folders == {"dwi"}


def test_arc_config_reproduces_the_published_schema_with_every_run(
    arc: GeneratedDataset, arc_out: Path
) -> None:
    ds = load_dataset(str(arc_out), split="train")
    assert ds.column_names == ARC_COLUMNS
    f = ds.features
    for many in ("t1w", "t2w", "flair", "bold_naming40", "bold_rest", "dwi", "sbref"):
        assert f[many] == List(Nifti()), many
    assert f["lesion"] == Nifti()
    assert f["lesion_source_index"] == Value("int32")
    assert f["t2w_acquisition"] == List(Value("string"))
    assert f["dwi_bvals"] == List(Value("string"))
    assert f["age_at_stroke"] == Value("float64")
    # Every NIfTI of the folder, raw images and lesion masks, is in a column: none left out.
    manifest = [
        json.loads(x) for x in (arc_out / "bids2hf" / "manifest.jsonl").read_text().splitlines()
    ]
    images = {e["path"]: e for e in manifest if e["path"].endswith(".nii.gz")}
    assert {p.relative_to(arc.root).as_posix() for p in arc.nifti_files} == set(images)
    assert {e["placement"] for e in images.values()} == {"row"}
    rows = pq.read_table(arc_out / "data").to_pylist()
    placed = {c["path"] for r in rows for col in ARC_COLUMNS for c in _cells(r[col])}
    assert placed == set(images)
    for row in rows:
        # t2w_acquisition: one readable name per element of t2w, in the same order
        codes = [_name(c).split("_acq-")[1].split("_")[0] for c in row["t2w"]]
        assert row["t2w_acquisition"] == [ARC_NAMES.get(c, c) for c in codes]
        if row["lesion"] is None:
            assert row["lesion_source_index"] is None
            continue
        # the mask is named after the T2w it was drawn on: lesion_source_index points at it
        source = row["t2w"][row["lesion_source_index"]]
        assert _name(row["lesion"]) == _name(source).replace(".nii.gz", "_desc-lesion_mask.nii.gz")
    repeat = next(r for r in rows if len(r["t2w"]) == 2 and r["lesion"] is not None)
    assert [_name(c).split("_run-")[1].split("_")[0] for c in repeat["t2w"]] == ["4", "11"]
    assert repeat["lesion_source_index"] == 1, "run-11, after run-4 in run order"
    assert {v for r in rows for v in r["t2w_acquisition"]} == set(ARC_NAMES.values())
    assert any(len(r["t1w"]) == 2 for r in rows) and any(len(r["flair"]) == 2 for r in rows)
    assert sum(len(r["sbref"]) for r in rows) == sum(
        p.name.endswith("_sbref.nii.gz") for p in arc.nifti_files
    )
    assert any(len(r["bold_rest"]) == 2 for r in rows), "a session with two rest runs keeps both"
    row = ds[[r["lesion"] is not None and len(r["t2w"]) == 2 for r in rows].index(True)]
    assert row["t2w"][1].shape == row["lesion"].shape  # decoded by `datasets`


def _cells(value: object) -> list[dict[str, object]]:
    if isinstance(value, dict) and "path" in value:
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, dict) and "path" in v]
    return []


def test_arc_config_output_exports_identically_and_verifies(
    arc: GeneratedDataset, arc_out: Path, tmp_path: Path, cli: Callable[..., Result]
) -> None:
    back = tmp_path / "back"
    result = cli("export", arc_out, back, "-q")
    assert result.exit_code == 0, result.output
    exported = sorted(p.relative_to(back).as_posix() for p in back.rglob("*") if p.is_file())
    for rel in exported:
        assert (back / rel).read_bytes() == (arc.root / rel).read_bytes(), rel
    assert {p.relative_to(arc.root).as_posix() for p in arc.nifti_files} <= set(exported)
    result = cli("verify", arc.root, arc_out, "-q")
    assert result.exit_code == 0, result.output
    assert "left out on purpose" in result.output  # the sidecars: other_files = false


def test_a_derivative_column_without_its_pipeline_says_how_to_add_it(
    arc: GeneratedDataset, tmp_path: Path, cli: Callable[..., Result]
) -> None:
    result = cli("inspect", arc.root, "--config", ARC_CONFIG)
    assert "column lesion matches no file" in result.output
    assert "--derivatives lesion_masks" in result.output


def test_single_without_preference_refuses_to_drop_runs(
    arc: GeneratedDataset, tmp_path: Path, cli: Callable[..., Result]
) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[[columns]]\nname = "bold"\nkinds = ["func/bold"]\nsingle = true\n')
    result = cli("convert", arc.root, tmp_path / "out", "--config", config, "-q")
    assert result.exit_code == 2
    assert "single but" in result.output and "drop `single`" in result.output
    assert not (tmp_path / "out").exists()


def test_grouping_and_values(
    synthetic: GeneratedDataset, tmp_path: Path, cli: Callable[..., Result]
) -> None:
    config = tmp_path / "c.toml"
    config.write_text(
        """
        [[columns]]
        name = "structural"
        kinds = ["anat/T1w", "anat/T2w"]      # two kinds grouped into one column
        [[columns]]
        name = "structural_paths"
        kinds = ["anat/T1w", "anat/T2w"]
        value = "path"
        [[columns]]
        name = "rest_tr"
        kinds = ["func/bold"]
        where = { task = "rest" }
        value = "meta:RepetitionTime"
        [participants]
        columns = ["age"]
        rename = { age = "age_years" }
        """
    )
    result = cli("convert", synthetic.root, tmp_path / "out", "--config", config, "-q")
    assert result.exit_code == 0, result.output
    rows = pq.read_table(tmp_path / "out" / "data").to_pylist()
    assert {"structural", "structural_paths", "rest_tr", "age_years", "files"} <= set(rows[0])
    for row in rows:
        assert [s["path"] for s in row["structural"]] == row["structural_paths"]
        assert all(isinstance(tr, float) for tr in row["rest_tr"])


def _plan_rows(root: Path, config_text: str, tmp_path: Path) -> list[dict[str, Any]]:
    """The rows' plain values ``inspect`` plans for ``config_text`` (no conversion)."""
    config = tmp_path / "c.toml"
    config.write_text(config_text)
    _, plan = bids2hf.inspect(
        root,
        ScanOptions(derivatives=("all",)),
        PlanOptions(config=load_config(config)),
    )
    assert not plan.errors, plan.errors
    return [row.values | {"files": row.files} for shard in plan.shards for row in shard.rows]


def test_map_names_entity_and_meta_values_and_keeps_the_others(
    synthetic: GeneratedDataset, tmp_path: Path
) -> None:
    rows = _plan_rows(
        synthetic.root,
        """
        [[columns]]
        name = "t2w"
        kinds = ["anat/T2w"]
        [[columns]]
        name = "t2w_acq"
        kinds = ["anat/T2w"]
        value = "entity:acquisition"
        map = { spc = "SPACE" }
        [[columns]]
        name = "tr"
        kinds = ["func/bold"]
        value = "meta:RepetitionTime"
        map = { "2.0" = "two seconds" }
        """,
        tmp_path,
    )
    acqs = [v for r in rows for v in r["t2w_acq"]]
    assert "SPACE" in acqs and "tse" in acqs, "mapped, and a code the map lacks kept"
    assert None in acqs, "a T2w without acq- gives null, not a name"
    trs = {v for r in rows for v in r["tr"]}
    assert "two seconds" in trs and "2.5" in trs, "numbers are matched (and kept) as JSON text"


def test_source_index_matches_entities_apart_from_derivative_ones(
    synthetic: GeneratedDataset, tmp_path: Path
) -> None:
    """The default synthetic masks are ``sub-X_ses-Y_desc-lesion_mask``: a T1w or T2w with no
    other entity matches, one with acq- does not, and two that match are ambiguous (null)."""
    rows = _plan_rows(
        synthetic.root,
        """
        [[columns]]
        name = "t1w"
        kinds = ["anat/T1w"]
        [[columns]]
        name = "t2w"
        kinds = ["anat/T2w"]
        [[columns]]
        name = "anat"
        kinds = ["anat/T1w", "anat/T2w"]
        [[columns]]
        name = "mask"
        kinds = ["lesion_masks:anat/mask"]
        source = "t1w"
        [[columns]]
        name = "mask_t2w"
        kinds = ["lesion_masks:anat/mask"]
        source = "t2w"
        [[columns]]
        name = "mask_anat"
        kinds = ["lesion_masks:anat/mask"]
        source = "anat"
        """,
        tmp_path,
    )
    files: list[dict[str, list[FileRef]]] = [r.pop("files") for r in rows]
    masked = [i for i, fs in enumerate(files) if fs["mask"]]
    assert masked and len(masked) < len(rows)
    for i, (r, fs) in enumerate(zip(rows, files, strict=True)):
        if i not in masked:
            assert r["mask_source_index"] == r["mask_t2w_source_index"] == [], r
            continue
        assert r["mask_source_index"] == [0]
        t2w = [f.relpath for f in fs["t2w"]]
        assert r["mask_t2w_source_index"] == [0 if "_acq-" not in t2w[0] else None], t2w
        anat = [f.relpath for f in fs["anat"]]
        bare = [j for j, rel in enumerate(anat) if "_acq-" not in rel]  # T1w, maybe a T2w
        assert r["mask_anat_source_index"] == [bare[0] if len(bare) == 1 else None], anat
    assert any(rows[i]["mask_anat_source_index"] == [None] for i in masked)
    assert any(rows[i]["mask_t2w_source_index"] == [None] for i in masked)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"bogus": 1}, "unknown key"),
        ({"columns": [{"name": "x", "kinds": ["anat/T1w"], "sigle": True}]}, "unknown key.*sigle"),
        ({"columns": [{"name": "x", "kinds": ["anat/T1w"], "map": {"a": "b"}}]}, "map"),
        (
            {"columns": [{"name": "x", "kinds": ["anat/T1w"], "value": "entity:run",
                          "map": {"1": 1}}]},
            "map",
        ),
        ({"columns": [{"name": "x", "kinds": ["anat/T1w"], "source": "y"}]}, "source"),
        (
            {
                "columns": [
                    {"name": "y", "kinds": ["anat/T1w"], "value": "path"},
                    {"name": "x", "kinds": ["d:anat/mask"], "source": "y"},
                ]
            },
            "source",
        ),
        (
            {
                "columns": [
                    {"name": "y", "kinds": ["anat/T1w"]},
                    {"name": "x", "kinds": ["d:anat/mask"], "value": "path", "source": "y"},
                ]
            },
            "source",
        ),
        ({"columns": [{"name": "x"}]}, "kinds"),
        ({"columns": [{"name": "x", "kinds": ["anat/T1w"], "value": "nope"}]}, "value"),
        (
            {
                "columns": [
                    {"name": "x", "kinds": ["anat/T1w"]},
                    {"name": "x", "kinds": ["anat/T2w"]},
                ]
            },
            "twice",
        ),
    ],
)
def test_config_validation(data: dict[str, object], message: str) -> None:
    with pytest.raises(InputError, match=message):
        parse_config(data, "c.toml")
