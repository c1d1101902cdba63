"""The `previews` config, made by the real command line in its streaming pass:
`load_dataset(OUT, "previews")` gives PIL images, locally and from the Hub emulator; the card
shows one picture per image column; the default config and the shards stay what they were;
re-runs and resumed runs write the same previews; `--previews 0` writes none."""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import random
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from datasets import load_dataset
from huggingface_hub import DatasetCard
from PIL import Image

import bids2hf
from bids2hf.plan.previews import PREVIEWS_CONFIG, PREVIEWS_PATH, choose_previews
from bids2hf.testing.spec import GeneratedDataset
from bids2hf.write.previews_output import PreviewRow, previews_parquet
from helpers import hub_env, tree
from hub_emulator import HubEmulator

KEYS = ("subject_id", "session_id")
BIDS2HF = [sys.executable, "-m", "bids2hf"]
#: the synthetic fixture's image columns (every one has files)
COLUMNS = ("anat_FLAIR", "anat_T1w", "anat_T2w", "func_bold", "func_sbref", "dwi_dwi", "fmap_epi")


def cli(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [*BIDS2HF, *map(str, args)], capture_output=True, text=True, timeout=300, env=env
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def files_under(out: Path, *folders: str) -> dict[str, str]:
    """relpath → sha256 of the files under these folders of an output."""
    return {
        p.relative_to(out).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for folder in folders
        for p in sorted((out / folder).rglob("*"))
        if p.is_file()
    }


def default_digest(out: Path) -> dict[str, Any]:
    ds = load_dataset(str(out), split="train")
    keys = json.dumps(ds.select_columns(list(KEYS)).to_list())
    return {
        "features": ds.features.to_dict(),
        "rows": len(ds),
        "sha": hashlib.sha256(keys.encode()).hexdigest(),
    }


@pytest.fixture(scope="module")
def outputs(
    synthetic: GeneratedDataset, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """The synthetic dataset converted by the command line: every row previewed, the default
    budget, and `--previews 0`."""
    base = tmp_path_factory.mktemp("previews")
    runs = {"all": ["--previews", "100"], "default": [], "none": ["--previews", "0"]}
    for name, extra in runs.items():
        cli("convert", synthetic.root, base / name, "-q", *extra)
    return {name: base / name for name in runs}


def test_previews_config_gives_pil_images(outputs: dict[str, Path]) -> None:
    out = outputs["all"]
    ds = load_dataset(str(out), PREVIEWS_CONFIG, split="train")
    data = load_dataset(str(out), split="train")
    assert len(ds) == len(data) == 8  # --previews 100: every row
    assert ds.column_names == [*KEYS, *(n for c in COLUMNS for n in (c, f"{c}_file"))]
    pictures = [row[c] for row in ds for c in COLUMNS if row[c] is not None]
    assert len(pictures) >= 40 and all(isinstance(p, Image.Image) for p in pictures)
    assert all(p.mode == "L" and p.height == 160 and p.width > 160 for p in pictures)
    # Row keys match the data's rows, in the same order.
    assert ds["subject_id"] == data["subject_id"]
    assert ds["session_id"] == data["session_id"]
    # Each picture shows its row's first file of the column, and says which.
    raw = data.with_format("arrow")
    for c in COLUMNS:
        firsts = [cell[0]["path"] if cell else None for cell in raw[c].to_pylist()]
        shown = ds[f"{c}_file"]
        assert shown == firsts
        assert [p is None for p in ds[c]] == [s is None for s in shown]


def test_default_config_and_shards_unchanged(outputs: dict[str, Path]) -> None:
    with_previews, without = outputs["all"], outputs["none"]
    assert files_under(with_previews, "data", "bids", "bids2hf") == files_under(
        without, "data", "bids", "bids2hf"
    )
    assert default_digest(with_previews) == default_digest(without)
    card = DatasetCard.load(with_previews / "README.md")
    assert [c["config_name"] for c in card.data.configs] == ["default", PREVIEWS_CONFIG]
    infos = {i["config_name"]: i for i in card.data.dataset_info}
    assert infos[PREVIEWS_CONFIG]["splits"][0]["num_examples"] == 8
    assert {"name": "anat_T1w", "dtype": "image"} in infos[PREVIEWS_CONFIG]["features"]
    # The default entry is the one a conversion without previews writes.
    plain = DatasetCard.load(without / "README.md")
    assert infos["default"] == {"config_name": "default", **plain.data.dataset_info}


def test_card_yaml_as_datasets_writes_it(outputs: dict[str, Path]) -> None:
    """The two-config dataset_info is what `datasets` itself writes for these features."""
    from datasets import DatasetInfo, Features, SplitDict, SplitInfo
    from datasets.info import DatasetInfosDict
    from huggingface_hub import DatasetCardData

    card = DatasetCard.load(outputs["all"] / "README.md")
    ours = {i["config_name"]: i for i in card.data.dataset_info}
    # the default entry (a copy: to_dataset_card_data changes the dicts it is given)
    expected = DatasetCardData(dataset_info=copy.deepcopy(card.data.dataset_info[0]))
    pf = pq.ParquetFile(outputs["all"] / PREVIEWS_PATH)
    features = Features.from_arrow_schema(pf.schema_arrow)
    splits = SplitDict()
    splits.add(SplitInfo(name="train", num_bytes=ours[PREVIEWS_CONFIG]["splits"][0]["num_bytes"],
                         num_examples=8))  # fmt: skip
    infos = {PREVIEWS_CONFIG: DatasetInfo(features=features, splits=splits)}
    DatasetInfosDict(infos).to_dataset_card_data(expected)
    assert card.data.dataset_info == expected["dataset_info"]


def test_card_shows_a_picture_per_image_column(outputs: dict[str, Path]) -> None:
    for name in ("all", "default"):
        out = outputs[name]
        text = (out / "README.md").read_text()
        links = re.findall(r"!\[[^\]]*\]\((images/[^)]+\.png)\)", text)
        assert sorted(links) == sorted(f"images/{c}.png" for c in COLUMNS)
        for link in links:
            with Image.open(out / link) as picture:
                assert picture.format == "PNG" and picture.height == 160
        assert 'load_dataset("ORG/NAME", "previews"' in text
    # The default budget (0.5 % of the data) previews the first row only.
    assert len(load_dataset(str(outputs["default"]), PREVIEWS_CONFIG, split="train")) == 1


def test_previews_0_makes_none(outputs: dict[str, Path], synthetic: GeneratedDataset) -> None:
    out = outputs["none"]
    assert not (out / "images").exists() and not (out / "previews").exists()
    assert not list((out / ".bids2hf").glob("thumbs/*"))
    text = (out / "README.md").read_text()
    assert "images/" not in text and '"previews"' not in text
    card = DatasetCard.load(out / "README.md")
    assert [c["config_name"] for c in card.data.configs] == ["default"]
    assert "previews: none" in cli("inspect", synthetic.root, "--previews", "0").stdout
    shown = cli("inspect", synthetic.root).stdout
    assert "previews: 1 row(s) in previews/previews.parquet and 7 card picture(s)" in shown


def test_previews_file_is_small_and_typed(outputs: dict[str, Path]) -> None:
    out = outputs["all"]
    pf = pq.ParquetFile(out / PREVIEWS_PATH)
    meta = json.loads(pf.schema_arrow.metadata[b"huggingface"])
    assert meta["info"]["features"]["anat_T1w"] == {"_type": "Image"}
    assert (out / PREVIEWS_PATH).stat().st_size < 2_000_000


def test_rerun_and_switching_previews_give_the_same_files(
    outputs: dict[str, Path], synthetic: GeneratedDataset, tmp_path: Path
) -> None:
    """A re-run reuses every shard (thumbnails kept in the state folder); a run that asks for
    previews over an output written without them makes them from the source; going back to
    `--previews 0` removes them."""
    expected = files_under(outputs["all"], "images", "previews")
    card = (outputs["all"] / "README.md").read_bytes()
    out = tmp_path / "out"
    shutil.copytree(outputs["none"], out)
    cli("convert", synthetic.root, out, "-q", "--previews", "100")  # shards reused: read again
    assert files_under(out, "images", "previews") == expected
    assert (out / "README.md").read_bytes() == card
    shutil.rmtree(out / ".bids2hf" / "thumbs")  # and once more from nothing
    cli("convert", synthetic.root, out, "-q", "--previews", "100")
    assert files_under(out, "images", "previews") == expected
    cli("convert", synthetic.root, out, "-q", "--previews", "100")  # from the kept thumbnails
    assert files_under(out, "images", "previews") == expected
    cli("convert", synthetic.root, out, "-q", "--previews", "0")
    folders = ("images", "previews", "data", "bids", "bids2hf")
    assert files_under(out, *folders) == files_under(outputs["none"], *folders)
    assert not (out / "images").exists() and not (out / "previews").exists()
    assert (out / "README.md").read_bytes() == (outputs["none"] / "README.md").read_bytes()


def test_resume_after_a_kill_writes_the_same_previews(
    synthetic: GeneratedDataset, tmp_path: Path
) -> None:
    """Killed at random points (several shards, one worker), the re-run's previews, pictures
    and card are those of an uninterrupted run."""
    args = ["-q", "--previews", "100", "--max-shard-size", "60kB", "-j", "1"]
    clean = tmp_path / "clean"
    cli("convert", synthetic.root, clean, *args)
    expected = files_under(clean, "images", "previews", "data")
    assert len(files_under(clean, "data")) > 3
    rng = random.Random(13)
    for attempt in range(4):
        out = tmp_path / f"killed{attempt}"
        proc = subprocess.Popen([*BIDS2HF, "convert", str(synthetic.root), str(out), *args])
        time.sleep(rng.uniform(0.4, 1.6))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        cli("convert", synthetic.root, out, *args)
        assert files_under(out, "images", "previews", "data") == expected, attempt
        assert (out / "README.md").read_bytes() == (clean / "README.md").read_bytes()


def test_a_thumbnail_failure_never_fails_the_conversion(
    synthetic: GeneratedDataset,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    import bids2hf.write.thumbnails as thumbnails

    def broken(data: Any, options: Any = None) -> bytes:
        raise thumbnails.ThumbnailError("unreadable")

    monkeypatch.setattr(thumbnails, "thumbnail_png", broken)
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING):
        report = bids2hf.convert(synthetic.root, out, workers=1, progress=False, previews=2)
    assert report.previews is not None and len(report.previews.files) > 7
    assert "sub-01/ses-1/anat/sub-01_ses-1_T1w.nii.gz: no thumbnail (unreadable)" in caplog.text
    # No picture could be made: no previews file, no config, no pictures; the data is complete.
    assert not (out / "images").exists() and not (out / "previews").exists()
    card = DatasetCard.load(out / "README.md")
    assert [c["config_name"] for c in card.data.configs] == ["default"]
    assert bids2hf.verify(synthetic.root, out).ok


def test_push_to_fsspec_and_export(outputs: dict[str, Path], tmp_path: Path) -> None:
    """The previews are bids2hf's files: pushed with the rest; export leaves them out."""
    target = tmp_path / "remote"
    cli("push", outputs["all"], f"file://{target}", "-q")
    pushed = files_under(target, "images", "previews")
    assert pushed == files_under(outputs["all"], "images", "previews") and len(pushed) == 8
    cli("export", outputs["all"], tmp_path / "back", "-q")
    assert not (tmp_path / "back" / "images").exists()
    assert not (tmp_path / "back" / "previews").exists()


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
import json
import datasets
datasets.config.USE_PARQUET_EXPORT = False  # stay on loopback (no datasets-server lookup)
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
    emu: HubEmulator, synthetic: GeneratedDataset, outputs: dict[str, Path], tmp_path: Path
) -> None:
    """Converted straight to the Hub (the streaming pass), then loaded from there."""
    env = hub_env(emu, tmp_path)
    env = {k: v for k, v in env.items() if "proxy" not in k.lower()}
    env |= {"NO_PROXY": "127.0.0.1,localhost", "HF_DATASETS_CACHE": str(tmp_path / "hf-cache")}
    cli("convert", synthetic.root, "hf://datasets/org/ds", "-q", "--previews", "100", env=env)
    remote = emu.files("org/ds")
    local = files_under(outputs["all"], "images", "previews")
    assert {p: hashlib.sha256(remote[p].read_bytes()).hexdigest() for p in local} == local
    before = default_digest(outputs["all"])
    code = textwrap.dedent(CLIENT.format(columns=["anat_T1w", "func_bold", "dwi_dwi"]))
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
        assert len(result[f"sizes-{streaming}"]) == 3
    assert result["default_rows"] == before["rows"]
    assert result["default_features"] == sorted(before["features"])
    # Back from the Hub: the BIDS folder only, no previews.
    cli("export", "hf://datasets/org/ds", tmp_path / "back", "-q", env=env)
    source = {p: sha for p, sha in tree(synthetic.root).items() if not p.startswith("deriv")}
    assert tree(tmp_path / "back") == source  # (derivatives were not selected)


def test_a_fresh_conversion_reads_no_file_twice(
    synthetic: GeneratedDataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every thumbnail of a fresh conversion is made by the shard writer from the bytes it
    holds: the finishing step's read from the source (for shards written without previews)
    is never needed."""
    import bids2hf.write.previews_output as previews_output

    def second_read(*args: Any) -> bytes:
        raise AssertionError(f"a file read a second time for its thumbnail: {args[1:]}")

    monkeypatch.setattr(previews_output, "_thumbnail_from_source", second_read)
    out = tmp_path / "out"
    bids2hf.convert(synthetic.root, out, workers=1, progress=False, previews=100)
    assert len(files_under(out, "images", "previews")) == 8
    # The same run again reads nothing either (the thumbnails are kept in the state folder).
    bids2hf.convert(synthetic.root, out, workers=1, progress=False, previews=100)


def test_scan_layout_keys_and_dry_run(
    synthetic: GeneratedDataset, tmp_path: Path, emu: HubEmulator
) -> None:
    """With one row per image, a previews row also says the image's datatype and suffix; a
    dry run says how many previews the conversion would make, and writes none."""
    out = tmp_path / "scan"
    cli("convert", synthetic.root, out, "-q", "--layout", "scan", "--previews", "3")
    table = pq.read_table(out / PREVIEWS_PATH)
    keys = ["subject_id", "session_id", "datatype", "suffix"]
    assert table.column_names == [*keys, "nifti", "nifti_file"]
    assert table.num_rows == 3 and None not in table.column("suffix").to_pylist()
    env = hub_env(emu, tmp_path)
    url = "hf://datasets/org/dry"
    shown = cli("convert", synthetic.root, url, "--dry-run", "-q", env=env).stdout
    assert "previews: 1 row(s) in previews/previews.parquet and 7 card picture(s)" in shown
    assert not any(Path(env["BIDS2HF_CACHE"]).rglob("*.png"))


def test_files_stored_beside_get_the_same_pictures(
    outputs: dict[str, Path], synthetic: GeneratedDataset, tmp_path: Path
) -> None:
    """Files stored beside the shards (never in a writer's buffer) are read again for their
    thumbnails, keeping only the volume shown: the previews are those of files embedded."""
    out = tmp_path / "out"
    cli("convert", synthetic.root, out, "-q", "--previews", "100", "--max-row-size", "40kB")
    beside = [p for p in (out / "files").rglob("*.nii*") if p.is_file()]
    assert len(beside) >= 10
    assert files_under(out, "images", "previews") == files_under(
        outputs["all"], "images", "previews"
    )

