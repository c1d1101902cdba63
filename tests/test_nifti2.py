"""NIfTI-2 files (HCP/CIFTI outputs): stored verbatim, warned about, readable with load_nifti."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
from click.testing import Result
from datasets import List, Nifti, load_dataset

import bids2hf


def test_nifti2_is_stored_verbatim_and_readable(
    bids_copy: Path, tmp_path: Path, cli: Callable[..., Result]
) -> None:
    target = next(bids_copy.rglob("*_T1w.nii.gz"))
    data = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    nib.save(nib.Nifti2Image(data, np.eye(4)), target)
    digest = hashlib.sha256(target.read_bytes()).hexdigest()

    inspect = cli("inspect", bids_copy)
    assert "NIfTI-2 file" in inspect.output and "bids2hf.load_nifti" in inspect.output

    result = cli("convert", bids_copy, tmp_path / "out", "-q")
    assert result.exit_code == 0, result.output
    ds = load_dataset(str(tmp_path / "out"), split="train")
    # `datasets` cannot decode NIfTI-2, so the column is published undecoded ...
    assert ds.features["anat_T1w"] == List(Nifti(decode=False))
    rel = target.relative_to(bids_copy).as_posix()
    value = next(v for row in ds for v in row["anat_T1w"] if v["path"] == rel)
    assert hashlib.sha256(value["bytes"]).hexdigest() == digest
    # ... and bids2hf.load_nifti reads NIfTI-1 and NIfTI-2 values alike.
    img = bids2hf.load_nifti(value)
    assert isinstance(img, nib.Nifti2Image)
    assert np.array_equal(np.asarray(img.dataobj), data)
    other = next(v for row in ds for v in row["anat_T1w"] if v["path"] != rel)
    assert isinstance(bids2hf.load_nifti(other), nib.Nifti1Image)
    assert "NIfTI-2" in (tmp_path / "out" / "README.md").read_text()


def test_strict_refuses_when_anything_is_left_out(
    synthetic: object, tmp_path: Path, cli: Callable[..., Result]
) -> None:
    root = synthetic.root  # type: ignore[attr-defined]
    result = cli("convert", root, tmp_path / "out", "--strict", "-q")
    assert result.exit_code == 2
    assert "would be left out" in result.output and "derivatives/lesion_masks" in result.output
    assert not (tmp_path / "out").exists()
    ok = cli("convert", root, tmp_path / "out", "--strict", "--derivatives", "all", "-q")
    assert ok.exit_code == 0, ok.output
