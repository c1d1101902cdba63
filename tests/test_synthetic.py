"""Tests for bids2hf.testing (the synthetic generator) (fast: the whole module runs in a few seconds)."""

from __future__ import annotations

import csv
import gzip
import json
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import bids2hf.testing.nifti as synthetic_nifti
from bids2hf.testing.spec import ENTITY_ORDER, GeneratedDataset, SyntheticSpec, bids_filename
from bids2hf.testing.synthetic import generate_bids
from helpers import sha256

NIFTI_RE = re.compile(r"\.nii(\.gz)?$")


def _read_tsv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def _rel(ds: GeneratedDataset) -> list[str]:
    return [p.relative_to(ds.root).as_posix() for p in ds.files]


def _entities(name: str) -> tuple[list[tuple[str, str]], str]:
    """(entity pairs in file order, suffix) of a BIDS file name."""
    stem = name.split(".", 1)[0]
    *parts, suffix = stem.split("_")
    return [(p.partition("-")[0], p.partition("-")[2]) for p in parts], suffix


def _load(path: Path) -> nib.Nifti1Image:
    img = nib.load(path)
    assert isinstance(img, nib.Nifti1Image)
    return img


@pytest.fixture(scope="module")
def default_ds(tmp_path_factory: pytest.TempPathFactory) -> GeneratedDataset:
    return generate_bids(tmp_path_factory.mktemp("default") / "ds")


@pytest.fixture(scope="module")
def arc_ds(tmp_path_factory: pytest.TempPathFactory) -> GeneratedDataset:
    spec = SyntheticSpec(arc_shaped=True, n_subjects=5, sessions=("1", "2", "3"), seed=7)
    return generate_bids(tmp_path_factory.mktemp("arc") / "ds", spec)


# ------------------------------------------------------------------------------------------
# Files, uniqueness, NIfTI validity
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["default_ds", "arc_ds"])
def test_files_listed_sorted_and_unique(which: str, request: pytest.FixtureRequest) -> None:
    ds: GeneratedDataset = request.getfixturevalue(which)
    on_disk = sorted(p for p in ds.root.rglob("*") if p.is_file())
    assert ds.files == on_disk
    assert ds.files == sorted(ds.files)
    assert ds.nifti_files == sorted(p for p in ds.files if NIFTI_RE.search(p.name))
    assert ds.total_bytes == sum(p.stat().st_size for p in ds.files)
    hashes = [sha256(p) for p in ds.files]
    assert len(set(hashes)) == len(hashes), "two files have the same bytes"


@pytest.mark.parametrize("which", ["default_ds", "arc_ds"])
def test_every_nifti_loads_with_expected_shape(which: str, request: pytest.FixtureRequest) -> None:
    ds: GeneratedDataset = request.getfixturevalue(which)
    spec = ds.spec
    assert set(ds.nifti_shapes) == set(ds.nifti_files)
    for path in ds.nifti_files:
        raw = gzip.decompress(path.read_bytes())  # also checks CRC and length
        img = _load(path)
        data = np.asanyarray(img.dataobj)
        assert data.dtype == np.int16
        assert len(raw) == 352 + data.nbytes
        suffix = _entities(path.name)[1]
        four_d = suffix in ("bold", "dwi")
        expected = (*spec.image_shape, spec.n_volumes) if four_d else spec.image_shape
        assert img.shape == expected == ds.nifti_shapes[path], path
        assert np.allclose(img.affine[:3, :3], np.diag(img.header.get_zooms()[:3]))


def test_default_names_follow_entity_order(default_ds: GeneratedDataset) -> None:
    order = {e: i for i, e in enumerate(ENTITY_ORDER)}
    for rel in _rel(default_ds):
        if not rel.startswith(("sub-", "derivatives/lesion_masks/sub-")):
            continue
        name = rel.rsplit("/", 1)[1]
        ents, suffix = _entities(name)
        keys = [k for k, _ in ents]
        assert keys[0] == "sub"
        assert keys == sorted(keys, key=order.__getitem__), name
        assert re.fullmatch(r"[A-Za-z0-9]+", suffix), name
        assert f"sub-{dict(ents)['sub']}/" in rel
        if "ses" in dict(ents):
            assert f"/ses-{dict(ents)['ses']}" in rel


def test_bids_filename() -> None:
    name = bids_filename(
        {"run": "2", "dir": "AP", "acq": "x", "sub": "01", "task": "t"}, "bold", ".nii.gz"
    )
    assert name == "sub-01_task-t_acq-x_dir-AP_run-2_bold.nii.gz"
    with pytest.raises(ValueError):
        bids_filename({"sub": "01", "bogus": "1"}, "T1w", ".nii")


# ------------------------------------------------------------------------------------------
# Determinism and sizing
# ------------------------------------------------------------------------------------------


def test_determinism_same_spec_same_bytes(tmp_path: Path) -> None:
    spec = SyntheticSpec(n_subjects=2, seed=3)
    a = generate_bids(tmp_path / "a", spec)
    b = generate_bids(tmp_path / "b", spec)
    assert _rel(a) == _rel(b)
    for pa, pb in zip(a.files, b.files, strict=True):
        assert pa.read_bytes() == pb.read_bytes(), pa
    c = generate_bids(tmp_path / "c", SyntheticSpec(n_subjects=2, seed=4))
    assert _rel(c) == _rel(a)
    assert a.nifti_files[0].read_bytes() != c.nifti_files[0].read_bytes()


def test_multi_piece_stream_independent_of_threads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(synthetic_nifti, "_CHUNK", 64 * 1024)  # many pieces per image

    def spec(threads: int) -> SyntheticSpec:
        return SyntheticSpec(
            n_subjects=1, sessions=(), image_shape=(40, 40, 24), derivatives=False, threads=threads
        )

    one = generate_bids(tmp_path / "one", spec(1))
    two = generate_bids(tmp_path / "two", spec(3))
    assert [sha256(p) for p in one.files] == [sha256(p) for p in two.files]
    bold = next(p for p in two.nifti_files if p.name.endswith("_bold.nii.gz"))
    assert gzip.decompress(bold.read_bytes())[:4] == (348).to_bytes(4, "little")
    assert np.asanyarray(_load(bold).dataobj).shape == (40, 40, 24, 4)


def test_target_bytes_honoured(tmp_path: Path) -> None:
    target = 20_000_000
    ds = generate_bids(tmp_path / "ds", SyntheticSpec(target_bytes=target))
    assert abs(ds.total_bytes - target) / target < 0.10
    assert ds.nifti_shapes[ds.nifti_files[0]][0] > 16  # images were scaled up
    for path in ds.nifti_files[:3]:
        assert _load(path).shape == ds.nifti_shapes[path]


@pytest.mark.parametrize(
    "spec",
    [
        SyntheticSpec(n_subjects=1, compress=False),
        SyntheticSpec(n_subjects=1, gzip_level=0),
        SyntheticSpec(n_subjects=1, gzip_level=6, fast_deflate=False),
    ],
    ids=["raw-nii", "level0", "standard-deflate"],
)
def test_compression_variants(tmp_path: Path, spec: SyntheticSpec) -> None:
    ds = generate_bids(tmp_path / "ds", spec)
    suffix = ".nii.gz" if spec.compress else ".nii"
    assert all(p.name.endswith(suffix) for p in ds.nifti_files)
    for path in ds.nifti_files:
        assert _load(path).shape == ds.nifti_shapes[path]


def test_refuses_non_empty_root_and_bad_spec(tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep.txt").write_text("hi")
    with pytest.raises(FileExistsError):
        generate_bids(tmp_path / "x")
    with pytest.raises(ValueError):
        generate_bids(tmp_path / "y", SyntheticSpec(n_subjects=0))
    with pytest.raises(ValueError):
        generate_bids(tmp_path / "y", SyntheticSpec(sessions=("a-b",)))


# ------------------------------------------------------------------------------------------
# Default layout content
# ------------------------------------------------------------------------------------------


def test_top_level_files(default_ds: GeneratedDataset) -> None:
    root = default_ds.root
    desc = json.loads((root / "dataset_description.json").read_text())
    assert desc["BIDSVersion"] == "1.9.0"
    assert desc["License"] == "CC0"
    assert desc["Name"] and desc["Authors"]
    assert (root / "README").read_text().strip()
    assert (root / "CHANGES").read_text().strip()
    top = json.loads((root / "task-rest_bold.json").read_text())
    assert top["TaskName"] == "rest"
    assert top["RepetitionTime"] == 2.0


def test_participants_and_missing_folder(default_ds: GeneratedDataset) -> None:
    root = default_ds.root
    rows = _read_tsv(root / "participants.tsv")
    assert list(rows[0]) == ["participant_id", "age", "sex", "group"]
    ids = [r["participant_id"] for r in rows]
    assert ids[:4] == ["sub-01", "sub-02", "sub-03", "sub-04"]
    assert default_ds.missing_participants == ["sub-05"]
    assert "sub-05" in ids and not (root / "sub-05").exists()
    for r in rows:
        float(r["age"])
        assert r["sex"] in ("M", "F")
    meta = json.loads((root / "participants.json").read_text())
    assert set(meta["sex"]["Levels"]) == {"M", "F"}
    assert {"age", "group"} <= set(meta)
    folders = sorted(p.name for p in root.glob("sub-*"))
    assert folders == ["sub-01", "sub-02", "sub-03", "sub-04"]


def test_sessions_and_scans_tsv(default_ds: GeneratedDataset) -> None:
    root = default_ds.root
    for sub in ("sub-01", "sub-04"):
        rows = _read_tsv(root / sub / f"{sub}_sessions.tsv")
        assert [r["session_id"] for r in rows] == ["ses-1", "ses-2"]
        for r in rows:
            float(r["age"])  # numeric column
            assert r["scanner"].isalpha()  # string column
        for ses in ("ses-1", "ses-2"):
            sdir = root / sub / ses
            scans = _read_tsv(sdir / f"{sub}_{ses}_scans.tsv")
            listed = {r["filename"] for r in scans}
            actual = {p.relative_to(sdir).as_posix() for p in sdir.rglob("*.nii.gz")}
            assert listed == actual


def test_sidecars_events_and_gradients(default_ds: GeneratedDataset) -> None:
    spec = default_ds.spec
    for path in default_ds.nifti_files:
        if "derivatives" in path.parts:
            continue
        stem = path.name[: -len(".nii.gz")]
        sidecar = path.with_name(stem + ".json")
        suffix = _entities(path.name)[1]
        if suffix == "sbref":
            continue
        meta = json.loads(sidecar.read_text())
        assert "EchoTime" in meta
        if suffix in ("T1w", "T2w", "FLAIR"):
            assert meta["MagneticFieldStrength"] == 3
        if suffix == "bold":
            assert path.with_name(stem[: -len("_bold")] + "_events.tsv").is_file()
            if "task-naming40" in stem:
                assert meta["TaskName"] == "naming40" and meta["RepetitionTime"] > 0
        if suffix == "dwi":
            bval = path.with_name(stem + ".bval").read_text().split()
            bvec = path.with_name(stem + ".bvec").read_text().strip().splitlines()
            assert len(bval) == spec.n_volumes
            assert len(bvec) == 3 and all(len(r.split()) == spec.n_volumes for r in bvec)
        if suffix == "epi":
            for uri in meta["IntendedFor"]:
                assert (default_ds.root / uri.removeprefix("bids::")).is_file()


def test_repetition_time_inheritance(default_ds: GeneratedDataset) -> None:
    overriding = set()
    for path in default_ds.root.glob("sub-*/ses-*/func/*task-rest*_bold.json"):
        meta = json.loads(path.read_text())
        if "RepetitionTime" in meta:
            assert meta["RepetitionTime"] != 2.0
            overriding.add(path.name.split("_")[0])
        else:
            assert "TaskName" not in meta  # inherited from task-rest_bold.json
    assert len(overriding) == 1


def test_multi_run_missing_modalities_and_derivatives(default_ds: GeneratedDataset) -> None:
    root = default_ds.root
    sessions = sorted(root.glob("sub-*/ses-*"))
    assert len(sessions) == 8
    runs = [len(list(s.glob("func/*task-rest_run-*_bold.nii.gz"))) for s in sessions]
    assert max(runs) >= 2
    t2w = [len(list(s.glob("anat/*acq-*_T2w.nii.gz"))) for s in sessions]
    assert max(t2w) >= 2
    assert any(not (s / "func").exists() for s in sessions)
    assert any(not (s / "dwi").exists() for s in sessions)
    assert any((s / "anat").glob("*_FLAIR.nii.gz") for s in sessions)
    assert all(list((s / "anat").glob("*_T1w.nii.gz")) for s in sessions)
    deriv = root / "derivatives" / "lesion_masks"
    desc = json.loads((deriv / "dataset_description.json").read_text())
    assert desc["DatasetType"] == "derivative"
    masks = sorted(deriv.glob("sub-*/ses-*/anat/*_desc-lesion_mask.nii.gz"))
    assert 0 < len(masks) < len(sessions)
    for mask in masks:
        assert mask.with_name(mask.name.replace(".nii.gz", ".json")).is_file()


def test_feature_flags_off(tmp_path: Path) -> None:
    spec = SyntheticSpec(
        n_subjects=2,
        sessions=(),
        multi_run=False,
        missing_modalities=False,
        derivatives=False,
        participant_without_folder=False,
    )
    ds = generate_bids(tmp_path / "ds", spec)
    rels = _rel(ds)
    assert not any(r.startswith("derivatives") for r in rels)
    assert not any("ses-" in r or "run-" in r or "acq-" in r for r in rels)
    assert "sub-01/sub-01_scans.tsv" in rels and "sub-01/func/sub-01_task-rest_bold.nii.gz" in rels
    assert [r["participant_id"] for r in _read_tsv(ds.root / "participants.tsv")] == [
        "sub-01",
        "sub-02",
    ]
    assert ds.missing_participants == []


# ------------------------------------------------------------------------------------------
# ARC-shaped layout
# ------------------------------------------------------------------------------------------


def test_arc_layout(arc_ds: GeneratedDataset) -> None:
    root = arc_ds.root
    subjects = sorted(p.name for p in root.glob("sub-*"))
    assert subjects == [f"sub-M200{i}" for i in range(1, 6)]
    counts = {s: len(list((root / s).glob("ses-*"))) for s in subjects}
    assert len(set(counts.values())) > 1  # number of sessions varies
    assert all(p.name in ("ses-1", "ses-2", "ses-3") for p in root.glob("sub-*/ses-*"))
    names = [p.name for p in arc_ds.nifti_files]
    pattern = re.compile(
        r"sub-M\d{4}_ses-\d+_(task-(naming40|rest)_)?acq-[a-z0-9]+_(dir-(AP|PA)_)?run-\d+"
        r"_(T1w|T2w|FLAIR|bold|sbref|dwi)(_desc-lesion_mask)?\.nii\.gz"
    )
    for name in names:
        assert pattern.fullmatch(name), name
    t2_acqs = {dict(_entities(n)[0])["acq"] for n in names if n.endswith("_T2w.nii.gz")}
    assert {"spc3p2", "tse3"} <= t2_acqs
    assert any("_task-naming40_" in n and n.endswith("_bold.nii.gz") for n in names)
    assert any(n.endswith("_sbref.nii.gz") for n in names)
    assert any(n.endswith("_FLAIR.nii.gz") for n in names)
    for dwi in root.glob("sub-*/ses-*/dwi/*_dwi.nii.gz"):
        assert "_acq-" in dwi.name
        assert dwi.with_name(dwi.name.replace(".nii.gz", ".bval")).is_file()
        assert dwi.with_name(dwi.name.replace(".nii.gz", ".bvec")).is_file()
    rest_runs = [
        len(list(s.glob("func/*task-rest*_bold.nii.gz"))) for s in root.glob("sub-*/ses-*")
    ]
    assert max(rest_runs) >= 2


def test_arc_derivatives(arc_ds: GeneratedDataset) -> None:
    deriv = arc_ds.root / "derivatives" / "lesion_masks"
    assert (deriv / "dataset_description.json").is_file()
    masks = sorted(deriv.glob("sub-*/ses-*/anat/sub-*_ses-*_desc-lesion_mask.nii.gz"))
    assert 0 < len(masks) < 5  # one per subject, the last subject has none
    for mask in masks:
        sub, ses = mask.parts[-4], mask.parts[-3]
        assert mask.name.startswith(f"{sub}_{ses}_")
        t2w = mask.name.replace("_desc-lesion_mask", "")
        assert (arc_ds.root / sub / ses / "anat" / t2w).is_file()


def test_arc_participants(arc_ds: GeneratedDataset) -> None:
    root = arc_ds.root
    text = (root / "participants.tsv").read_text()
    header = text.splitlines()[0].split("\t")
    assert header == [
        "participant_id",
        "sex",
        "age_at_stroke",
        "race",
        "wab_days",
        "wab_aq",
        "wab_type",
    ]
    rows = _read_tsv(root / "participants.tsv")
    ages = [int(r["age_at_stroke"]) for r in rows]
    assert ages == sorted(ages)
    assert arc_ds.missing_participants == ["sub-M2006"]
    assert "sub-M2006" in {r["participant_id"] for r in rows}
    assert not (root / "sub-M2006").exists()
    for r in rows:
        assert r["sex"] in ("M", "F") and r["race"] in ("b", "w", "n/a")
        float(r["wab_aq"])
        int(r["wab_days"])
        assert r["wab_type"]
    meta = json.loads((root / "participants.json").read_text())
    assert set(header) <= set(meta)
    assert set(meta["sex"]["Levels"]) == {"M", "F"}
    sessions = _read_tsv(root / "sub-M2001" / "sub-M2001_sessions.tsv")
    assert [r["session_id"] for r in sessions] == ["ses-1", "ses-2", "ses-3"]
