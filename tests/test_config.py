"""The TOML config, and the shipped ARC example reproducing the published ARC schema."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from click.testing import Result
from datasets import List, Nifti, Value, load_dataset

import bids2hf
from bids2hf.errors import InputError
from bids2hf.plan.config import parse_config
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
    "age_at_stroke",
    "sex",
    "race",
    "wab_aq",
    "wab_days",
    "wab_type",
]


@pytest.fixture(scope="module")
def arc(tmp_path_factory: pytest.TempPathFactory) -> GeneratedDataset:
    return generate_bids(
        tmp_path_factory.mktemp("arc") / "bids", SyntheticSpec(n_subjects=5, arc_shaped=True)
    )


def test_arc_config_reproduces_the_published_schema(
    arc: GeneratedDataset, tmp_path: Path, cli: Callable[..., Result]
) -> None:
    out = tmp_path / "out"
    result = cli(
        "convert", arc.root, out, "--config", ARC_CONFIG, "--derivatives", "lesion_masks", "-q"
    )
    assert result.exit_code == 0, result.output
    ds = load_dataset(str(out), split="train")
    assert ds.column_names == ARC_COLUMNS
    f = ds.features
    for single in ("t1w", "t2w", "flair", "lesion"):
        assert f[single] == Nifti(), single
    for many in ("bold_naming40", "bold_rest", "dwi", "sbref"):
        assert f[many] == List(Nifti()), many
    assert f["t2w_acquisition"] == Value("string")
    assert f["dwi_bvals"] == List(Value("string"))
    assert f["age_at_stroke"] == Value("float64")
    # Every image of a selected kind is in its column or listed as left out with a reason.
    manifest = [
        json.loads(x) for x in (out / "bids2hf" / "manifest.jsonl").read_text().splitlines()
    ]
    images = {e["path"]: e for e in manifest if e["path"].endswith(".nii.gz")}
    assert {p.relative_to(arc.root).as_posix() for p in arc.nifti_files} == set(images)
    for e in images.values():
        assert e["placement"] == "row" or e.get("reason"), e
    rows = pq.read_table(
        out / "data", columns=["t2w", "t2w_acquisition", "bold_rest", "lesion"]
    ).to_pylist()
    for row in rows:
        if row["t2w"] is not None:
            assert f"acq-{row['t2w_acquisition']}_" in row["t2w"]["path"], (
                "t2w and its acquisition agree"
            )
    assert any(len(r["bold_rest"]) == 2 for r in rows), "a session with two rest runs keeps both"
    assert any(r["lesion"] is not None for r in rows)


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


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"bogus": 1}, "unknown key"),
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
