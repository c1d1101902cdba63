"""The `previews` config: `load_dataset(OUT, "previews")` gives PIL images, locally and from the
Hub emulator, and the default config stays what it was."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from datasets import load_dataset
from huggingface_hub import DatasetCard
from PIL import Image

import bids2hf
from bids2hf.report.previews import (
    PREVIEWS_CONFIG,
    PREVIEWS_PATH,
    PreviewRow,
    add_previews_config,
    choose_previews,
    previews_parquet,
)
from bids2hf.testing.spec import GeneratedDataset
from bids2hf.write.thumbnails import thumbnail_png
from hub_emulator import HubEmulator

KEYS = ("subject_id", "session_id")


def image_rows(plan: Any) -> tuple[list[str], list[dict[str, list[tuple[str, int]]]], list[Any]]:
    """(image columns, per row column → [(relpath, size)], the rows) of a plan."""
    columns = [c.name for c in plan.columns if c.role.value == "file" and c.nifti]
    rows = [row for shard in plan.shards for row in shard.rows]
    files = [
        {c: [(f.relpath, f.size) for f in row.files.get(c, [])] for c in columns} for row in rows
    ]
    return columns, files, rows


def add_previews(bids: Path, out: Path, max_rows: int | None = None) -> tuple[list[str], int]:
    """What the converter will do: thumbnails of the chosen files, the previews file, the card."""
    _, plan = bids2hf.inspect(bids)
    columns, files, rows = image_rows(plan)
    choice = choose_previews(files, plan.embedded_bytes, max_rows=max_rows, budget_bytes=1 << 40)
    previews = []
    for index in choice.rows:
        shown = {c: files[index][c][0][0] if files[index][c] else None for c in columns}
        images = {
            c: thumbnail_png((bids / path).read_bytes()) if path else None
            for c, path in shown.items()
        }
        keys = {k: rows[index].values.get(k) for k in KEYS}
        previews.append(PreviewRow(keys, images, shown))
    blob = previews_parquet(previews, KEYS, columns)
    (out / PREVIEWS_PATH).parent.mkdir(exist_ok=True)
    (out / PREVIEWS_PATH).write_bytes(blob)
    card = DatasetCard.load(out / "README.md")
    add_previews_config(card.data, KEYS, columns, len(previews), len(blob))
    card.save(out / "README.md")
    return columns, len(previews)


def default_digest(out: Path) -> dict[str, Any]:
    ds = load_dataset(str(out), split="train")
    return {
        "features": ds.features.to_dict(),
        "rows": len(ds),
        "sha": hashlib.sha256(
            json.dumps(ds.select_columns(["subject_id", "session_id"]).to_list()).encode()
        ).hexdigest(),
    }


@pytest.fixture(scope="module")
def with_previews(
    synthetic: GeneratedDataset, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, dict[str, Any], list[str], int]:
    out = tmp_path_factory.mktemp("previews") / "hf"
    bids2hf.convert(synthetic.root, out, workers=1, progress=False)
    before = default_digest(out)
    columns, n = add_previews(synthetic.root, out)
    return out, before, columns, n


def test_previews_config_gives_pil_images(
    with_previews: tuple[Path, dict[str, Any], list[str], int],
) -> None:
    out, _, columns, n = with_previews
    ds = load_dataset(str(out), PREVIEWS_CONFIG, split="train")
    data = load_dataset(str(out), split="train")
    assert len(ds) == n == len(data)  # the budget in add_previews takes every row
    assert ds.column_names[:2] == list(KEYS)
    first = ds[0]
    assert first["subject_id"].startswith("sub-")
    pictures = [first[c] for c in columns if first[c] is not None]
    assert pictures and all(isinstance(p, Image.Image) for p in pictures)
    assert all(p.mode == "L" and p.height > 0 for p in pictures)
    # Each picture says which file it shows: the row's first file of that column.
    for c in columns:
        shown = first[f"{c}_file"]
        assert (first[c] is None) == (shown is None)
        if shown is not None:
            assert shown.startswith(f"{first['subject_id']}/") and shown.endswith(".nii.gz")
    # Row keys match the data's rows, in the same order.
    assert ds["subject_id"] == data["subject_id"]
    assert ds["session_id"] == data["session_id"]


def test_default_config_unchanged(
    with_previews: tuple[Path, dict[str, Any], list[str], int],
) -> None:
    out, before, _, _ = with_previews
    assert default_digest(out) == before
    card = DatasetCard.load(out / "README.md")
    names = [c["config_name"] for c in card.data.configs]
    assert names == ["default", PREVIEWS_CONFIG]
    infos = {i["config_name"]: i for i in card.data.dataset_info}
    assert set(infos) == {"default", PREVIEWS_CONFIG}
    assert any(
        f.get("dtype") == "image" or f.get("_type") == "Image" or "image" in json.dumps(f)
        for f in infos[PREVIEWS_CONFIG]["features"]
    )
    # Re-declaring is idempotent.
    add_previews_config(card.data, KEYS, ["x"], 1, 1)
    assert [c["config_name"] for c in card.data.configs] == ["default", PREVIEWS_CONFIG]


def test_previews_file_is_small_and_typed(
    with_previews: tuple[Path, dict[str, Any], list[str], int],
) -> None:
    out, _, columns, _ = with_previews
    pf = pq.ParquetFile(out / PREVIEWS_PATH)
    meta = json.loads(pf.schema_arrow.metadata[b"huggingface"])
    assert meta["info"]["features"][columns[0]]["_type"] == "Image"
    assert (out / PREVIEWS_PATH).stat().st_size < 2_000_000


def test_choose_previews_budget_and_pictures() -> None:
    rows = [
        {"anat_T1w": [("sub-1/anat/t1.nii.gz", 100)], "func_bold": []},
        {"anat_T1w": [("sub-2/anat/t1.nii.gz", 100)], "func_bold": []},
        {
            "anat_T1w": [("sub-3/anat/t1.nii.gz", 100)],
            "func_bold": [("sub-3/func/b1.nii.gz", 50), ("sub-3/func/b2.nii.gz", 50)],
        },
    ]
    # Budget of 150 bytes: rows 0 only (row 1 would make 200); the bold picture comes from row 2.
    choice = choose_previews(rows, embedded_bytes=0, budget_bytes=150)
    assert choice.rows == [0]
    assert choice.pictures == {
        "anat_T1w": "sub-1/anat/t1.nii.gz",
        "func_bold": "sub-3/func/b1.nii.gz",
    }
    assert set(choice.files) == {"sub-1/anat/t1.nii.gz", "sub-3/func/b1.nii.gz"}
    # Default budget: 0.5 % of the embedded bytes; the first row is shown even when over it.
    assert choose_previews(rows, embedded_bytes=1000).rows == [0]
    assert choose_previews(rows, embedded_bytes=70_000).rows == [0, 1, 2]  # 350 bytes
    assert choose_previews(rows, embedded_bytes=69_999).rows == [0, 1]
    # --previews N caps the rows; 0 leaves only the pictures; per-file cap for 4-D files.
    assert choose_previews(rows, 10**9, max_rows=2).rows == [0, 1]
    none = choose_previews(rows, 10**9, max_rows=0)
    assert none.rows == [] and len(none.files) == 2
    assert choose_previews(rows, 0, budget_bytes=10**9, per_file_cap=10).cost == 10 * 4
    # The previews file's size budget: a cap on thumbnails in preview rows.
    assert choose_previews(rows, 0, budget_bytes=10**9, max_images=2).rows == [0, 1]
    with pytest.raises(ValueError, match="--previews"):
        choose_previews(rows, 0, max_rows=-1)


def test_undeclared_columns_are_refused() -> None:
    with pytest.raises(ValueError, match="undeclared"):
        previews_parquet(
            [PreviewRow({"subject_id": "sub-1"}, {"anat_X": None})], KEYS, ["anat_T1w"]
        )


CLIENT = """
import json, os
import datasets
from huggingface_hub import HfApi
datasets.config.USE_PARQUET_EXPORT = False  # stay on loopback (no datasets-server lookup)
api = HfApi()
api.create_repo("org/ds", repo_type="dataset", exist_ok=True)
api.upload_folder(folder_path={folder!r}, repo_id="org/ds", repo_type="dataset",
                  ignore_patterns=[".bids2hf/*", ".bids2hf/**"])
out = {{}}
for streaming in (False, True):
    ds = datasets.load_dataset("org/ds", "previews", split="train", streaming=streaming)
    first = next(iter(ds))
    out[f"types-{{streaming}}"] = sorted({{type(v).__module__.split(".")[0] for v in first.values() if v is not None}})
    out[f"sizes-{{streaming}}"] = [first[c].size for c in {columns!r} if first[c] is not None]
full = datasets.load_dataset("org/ds", split="train")
out["default_features"] = sorted(full.features)
out["default_rows"] = len(full)
print(json.dumps(out))
"""


def test_previews_from_the_hub_emulator(
    emu: HubEmulator, with_previews: tuple[Path, dict[str, Any], list[str], int], tmp_path: Path
) -> None:
    out, before, columns, _ = with_previews
    env = {
        k: v for k, v in os.environ.items() if "proxy" not in k.lower() and not k.startswith("HF_")
    }
    env |= {
        "HF_ENDPOINT": emu.url,
        "HF_HUB_DISABLE_XET": "1",
        "HF_TOKEN": "test-token",
        "HF_HOME": str(tmp_path / "home"),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_DATASETS_CACHE": str(tmp_path / "datasets-cache"),
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "NO_PROXY": "127.0.0.1,localhost",
    }
    code = textwrap.dedent(CLIENT.format(folder=str(out), columns=columns))
    proc = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    for streaming in (False, True):
        assert "PIL" in result[f"types-{streaming}"]
        assert result[f"sizes-{streaming}"] and all(
            w > 0 and h > 0 for w, h in result[f"sizes-{streaming}"]
        )
    assert result["default_rows"] == before["rows"]
    assert result["default_features"] == sorted(before["features"])
