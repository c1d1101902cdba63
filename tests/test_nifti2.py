"""NIfTI-2 and CIFTI-2 files: stored verbatim, warned about, readable with load_nifti."""

from __future__ import annotations

import gzip
import hashlib
import struct
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from click.testing import Result
from datasets import List, Nifti, load_dataset

import bids2hf
from bids2hf.bids.nifti import check_nifti


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


# -- load_nifti on every form a value takes -------------------------------------------------------
NIBABEL_DATA = Path(nib.__file__).parent / "tests" / "data"
CIFTI = NIBABEL_DATA / "row_major.dconn.nii"


def test_load_nifti_takes_values_bytes_paths_and_images() -> None:
    path = NIBABEL_DATA / "example_nifti2.nii.gz"
    expected = nib.load(path).get_fdata()
    data = path.read_bytes()
    for value in (
        {"bytes": data, "path": "x.nii.gz"},
        data,
        bytearray(data),
        memoryview(data),
        path,
        str(path),
    ):
        img = bids2hf.load_nifti(value)
        assert isinstance(img, nib.Nifti2Image), type(value)
        assert np.array_equal(img.get_fdata(), expected)
    already = nib.load(path)
    assert bids2hf.load_nifti(already) is already  # a column that `datasets` decoded
    with pytest.raises(ValueError, match="no embedded bytes"):
        bids2hf.load_nifti({"bytes": None, "path": "x.nii"})
    with pytest.raises(ValueError, match="not a NIfTI-1/NIfTI-2 image"):
        bids2hf.load_nifti(b"\0" * 1024)


def test_gzipped_cifti_is_cifti_for_the_check_and_for_load_nifti(tmp_path: Path) -> None:
    """nib.load opens a .dtseries.nii.gz as plain NIfTI-2; load_nifti returns a Cifti2Image, so
    the check parses its CIFTI-2 XML as it does for a .nii."""
    raw = CIFTI.read_bytes()
    gz = tmp_path / "sub-01_bold.dtseries.nii.gz"
    gz.write_bytes(gzip.compress(raw, mtime=0))
    result = check_nifti(str(gz))
    assert result.error is None and result.cifti and result.version == 2
    img = bids2hf.load_nifti(gz.read_bytes())
    assert isinstance(img, nib.Cifti2Image)
    assert np.array_equal(np.asanyarray(img.dataobj), np.asanyarray(nib.load(CIFTI).dataobj))

    gz.write_bytes(gzip.compress(raw.replace(b"<CIFTI", b"<CIFTX", 1), mtime=0))
    assert "invalid CIFTI-2 file" in (check_nifti(str(gz)).error or "")

    # Without a CIFTI-2 extension (code 32 → 6, a comment) it is plain NIfTI-2 when compressed,
    # as for nib.load; uncompressed, nib.load insists on CIFTI-2 and fails, and so does the check.
    endian = "<" if struct.unpack("<i", raw[:4])[0] == 540 else ">"
    no_cifti = raw[:548] + struct.pack(endian + "i", 6) + raw[552:]
    gz.write_bytes(gzip.compress(no_cifti, mtime=0))
    assert check_nifti(str(gz)).error is None and not check_nifti(str(gz)).cifti
    assert type(bids2hf.load_nifti(gz.read_bytes())) is nib.Nifti2Image
    plain = tmp_path / "sub-01_bold.dtseries.nii"
    plain.write_bytes(no_cifti)
    assert "no CIFTI-2 extension" in (check_nifti(str(plain)).error or "")
    with pytest.raises(ValueError):
        nib.load(plain)


def test_cifti_intent_name_is_no_free_text(tmp_path: Path) -> None:
    """CIFTI-2 requires intent_name to name the intent ("ConnDense"): no privacy warning."""
    assert nib.load(CIFTI).nifti_header["intent_name"] == b"ConnDense"
    result = check_nifti(str(CIFTI))
    assert result.error is None and result.cifti
    assert "intent_name" not in result.text_fields
    other = tmp_path / CIFTI.name
    other.write_bytes(CIFTI.read_bytes().replace(b"ConnDense\0", b"J. Smith\0\0", 1))
    assert check_nifti(str(other)).text_fields["intent_name"] == "J. Smith"
