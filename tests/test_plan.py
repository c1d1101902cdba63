"""The pure planning stage, on inventories built in memory (no files)."""

from __future__ import annotations

from pathlib import Path

import bids2hf.bids.schema as bids_schema
from bids2hf.bids.inheritance import SidecarIndex
from bids2hf.model.inventory import Inventory, Placement, SourceFile
from bids2hf.plan.options import PlanOptions
from bids2hf.plan.plan import make_plan
from bids2hf.plan.shards import row_groups


def _inventory(subjects: list[str], sizes: dict[str, int] | None = None) -> Inventory:
    files = [SourceFile("dataset_description.json", 50, 1, Placement.DATASET_FILE)]
    for sub in subjects:
        for ses in ("1", "2"):
            for rel in (
                f"sub-{sub}/ses-{ses}/anat/sub-{sub}_ses-{ses}_T1w.nii.gz",
                f"sub-{sub}/ses-{ses}/func/sub-{sub}_ses-{ses}_task-rest_run-1_bold.nii.gz",
                f"sub-{sub}/ses-{ses}/func/sub-{sub}_ses-{ses}_task-rest_run-2_bold.nii.gz",
            ):
                size = (sizes or {}).get(rel, 3_000_000)
                files.append(
                    SourceFile(
                        rel,
                        size,
                        1,
                        Placement.ROW,
                        parsed=bids_schema.parse_raw_path(rel),
                        subject=f"sub-{sub}",
                        session=f"ses-{ses}",
                        nifti_version=1,
                    )
                )
    return Inventory(root=Path("/nonexistent"), files=files, description={"Name": "x"})


OPTIONS = PlanOptions(max_shard_bytes=40_000_000, row_group_bytes=10_000_000)


def test_plan_is_pure_and_deterministic() -> None:
    subjects = [f"{i:02d}" for i in range(1, 31)]
    a = make_plan(_inventory(subjects), OPTIONS)
    b = make_plan(_inventory(subjects), OPTIONS)
    assert [s.content_id for s in a.shards] == [s.content_id for s in b.shards]
    assert a.plan_id == b.plan_id
    assert len(a.shards) > 3
    assert all(s.nbytes <= OPTIONS.max_shard_bytes for s in a.shards)
    assert a.rows == 60
    bold = next(c for c in a.columns if c.name == "func_bold_run")
    assert bold.feature.feature.dtype == "int32"


def test_adding_a_subject_changes_few_shards() -> None:
    """Content-defined boundaries: an update rewrites only the shards around the change."""
    subjects = [f"{i:02d}" for i in range(1, 61)]
    before = make_plan(_inventory(subjects), OPTIONS)
    after = make_plan(_inventory([*subjects[:30], "30b", *subjects[30:]]), OPTIONS)
    old = {(s.path, s.content_id) for s in before.shards}
    new = {(s.path, s.content_id) for s in after.shards}
    assert len(new - old) <= 2, f"{len(new - old)} of {len(new)} shards changed"
    names_before = [s.path for s in before.shards]
    assert all(name.startswith("data/train-sub-") for name in names_before)


def test_changing_one_file_changes_one_shard() -> None:
    subjects = [f"{i:02d}" for i in range(1, 61)]
    rel = "sub-33/ses-1/anat/sub-33_ses-1_T1w.nii.gz"
    before = make_plan(_inventory(subjects), OPTIONS)
    after = make_plan(_inventory(subjects, {rel: 3_000_100}), OPTIONS)
    changed = [
        s for s, t in zip(before.shards, after.shards, strict=False) if s.content_id != t.content_id
    ]
    assert len(changed) <= 2 and any(
        rel in {f.relpath for r in s.rows for fs in r.files.values() for f in fs} for s in changed
    )


def test_row_groups() -> None:
    assert row_groups([5, 5, 5], 10) == [2, 1]
    assert row_groups([50, 1, 1], 10) == [1, 2], "a large row gets a row group of its own"
    assert row_groups([], 10) == []


def test_inheritance_principle() -> None:
    index = SidecarIndex(
        {
            "task-rest_bold.json": {"RepetitionTime": 2.0, "TaskName": "rest"},
            "sub-01/sub-01_task-rest_bold.json": {"RepetitionTime": 2.5},
            "sub-01/ses-1/func/sub-01_ses-1_task-rest_run-1_bold.json": {"EchoTime": 0.03},
            "sub-01/ses-1/func/sub-01_ses-1_task-other_bold.json": {"EchoTime": 9},
        }
    )
    rel = "sub-01/ses-1/func/sub-01_ses-1_task-rest_run-1_bold.nii.gz"
    parsed = bids_schema.parse_raw_path(rel)
    assert parsed is not None
    meta = index.effective(rel, parsed.entities, "bold")
    assert meta == {"RepetitionTime": 2.5, "TaskName": "rest", "EchoTime": 0.03}


def test_every_file_is_placed() -> None:
    inv = _inventory(["01", "02"])
    plan = make_plan(inv, OPTIONS)
    embedded = {
        f.relpath for s in plan.shards for r in s.rows for fs in r.files.values() for f in fs
    }
    placed = embedded | {f.relpath for f in plan.dataset_files} | {f.relpath for f in plan.left_out}
    assert placed == {f.relpath for f in inv.files}


def test_planning_leaves_the_inventory_unchanged() -> None:
    from bids2hf.plan.config import parse_config

    inv = _inventory(["01", "02"])
    before = [(f.relpath, f.placement, f.reason) for f in inv.files]
    config = parse_config({"columns": [{"name": "t1", "kinds": ["anat/T1w"]}]})
    narrow = make_plan(inv, PlanOptions(config=config))
    assert len(narrow.left_out) == 8  # the bold runs are not selected by the config
    assert [(f.relpath, f.placement, f.reason) for f in inv.files] == before
    assert not make_plan(inv, OPTIONS).left_out


def test_top_level_api_is_lazy_and_complete() -> None:
    import subprocess
    import sys

    code = (
        "import sys, bids2hf\n"
        "assert 'datasets' not in sys.modules, 'import bids2hf must stay light'\n"
        "for verb in ('convert', 'inspect', 'push', 'export', 'verify', 'load_nifti'):\n"
        "    assert callable(getattr(bids2hf, verb)), verb\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
