"""Real NIfTI-1, NIfTI-2 and CIFTI-2 files: the integrity check agrees with nibabel.

The files: every ``.nii``/``.nii.gz`` in nibabel's installed test data (always there), plus the
data files of dipy and nilearn when those are installed (skipped otherwise). The verdict of the
check (accept/refuse) must equal "nibabel loads the file and reads all of its data", on the real
files and on hand-damaged copies of them, except where ``bids2hf.bids.nifti`` documents that it
is stricter; each of those cases is pinned down here with nibabel's own verdict, so a change on
either side shows.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import io
import json
import shutil
import struct
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pyarrow.parquet as pq
import pytest
from datasets import List, Nifti, load_dataset

import bids2hf
import bids2hf.bids.nifti as nifti_header
from bids2hf.bids.nifti import check_nifti
from bids2hf.bids.nifti_stream import header_class
from helpers import Cli, sha256

# package → folder of real NIfTI files inside it
_SOURCES = {
    "nibabel": ("tests", "data"),
    "dipy": ("data", "files"),
    "nilearn": ("datasets", "data"),
}


def _package_folder(package: str, *parts: str) -> Path | None:
    spec = importlib.util.find_spec(package)  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations)), *parts)
    return folder if folder.is_dir() else None


def _real_files(package: str) -> list[Path]:
    folder = _package_folder(package, *_SOURCES[package])
    if folder is None:
        return []
    return sorted(p for p in folder.iterdir() if p.name.endswith((".nii", ".nii.gz")))


NIBABEL_DATA = _package_folder("nibabel", *_SOURCES["nibabel"])
assert NIBABEL_DATA is not None
NIFTI2 = NIBABEL_DATA / "example_nifti2.nii.gz"  # NIfTI-2 with two extensions
CIFTI = NIBABEL_DATA / "row_major.dconn.nii"  # CIFTI-2: NIfTI-2 + CIFTI extension


def _params(small_only: bool = False) -> list[object]:
    params: list[object] = []
    for package in _SOURCES:
        files = _real_files(package)
        if small_only:
            files = [f for f in files if f.stat().st_size <= 500_000]
        if not files:
            params.append(
                pytest.param(
                    None,
                    id=f"{package}-not-installed",
                    marks=pytest.mark.skip(reason=f"{package} is not installed"),
                )
            )
        params += [pytest.param(f, id=f"{package}/{f.name}") for f in files]
    return params


def nibabel_reads(path: Path) -> bool:
    """Whether nibabel loads the file and reads all of its data."""
    if _declares_more_than_it_holds(path):
        # nibabel would fail reading the data, after zero-filling a buffer of that size (seconds).
        return False
    try:
        np.asanyarray(nib.load(path).dataobj)
    except Exception:
        return False
    return True


def _declares_more_than_it_holds(path: Path) -> bool:
    raw = path.read_bytes()
    if path.name.endswith(".gz"):
        try:  # as much as decompresses: the copy may be damaged
            raw = zlib.decompressobj(wbits=31).decompress(raw)
        except zlib.error:
            return False
    found = header_class(raw[:4])
    if found is None or len(raw) < (348 if found[0] == 1 else 540):
        return False
    header = found[1](raw[: 348 if found[0] == 1 else 540], check=False)
    try:
        nbytes = (
            int(np.prod(header.get_data_shape(), dtype=object)) * header.get_data_dtype().itemsize
        )
    except Exception:
        return False
    return nbytes > 2 * len(raw)


def _one_line(error: str | None) -> str:
    assert error is not None
    assert "\n" not in error and len(error) < 300, error
    return error


# -- the real files ------------------------------------------------------------------------------
def test_nibabel_ships_the_files_of_the_issue() -> None:
    names = {p.name for p in _real_files("nibabel")}
    assert {NIFTI2.name, CIFTI.name} <= names and len(names) >= 8


@pytest.mark.parametrize("path", _params())
def test_real_file_is_accepted_and_loads_as_nibabel_loads_it(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    img = nib.load(path)
    data = np.asanyarray(img.dataobj)  # real files: nibabel reads them in full
    # The cheap check never decompresses a real file to its end.
    with monkeypatch.context() as m:
        m.setattr(nifti_header, "_full_length", _no_full_decompression)
        cheap = check_nifti(str(path), "header")
    full = check_nifti(str(path), "full")
    version = 2 if isinstance(img, (nib.Nifti2Image, nib.Cifti2Image)) else 1
    for result in (cheap, full):
        assert result.error is None
        assert result.version == version
        assert result.cifti == isinstance(img, nib.Cifti2Image)
    loaded = bids2hf.load_nifti({"bytes": path.read_bytes(), "path": path.name})
    assert type(loaded) is type(img)
    assert np.array_equal(np.asanyarray(loaded.dataobj), data, equal_nan=data.dtype.kind == "f")


def _no_full_decompression(path: str) -> int:
    raise AssertionError(f"the cheap check decompressed {path}")


# -- hand-damaged copies -------------------------------------------------------------------------
def _raw(path: Path) -> bytes:
    data = path.read_bytes()
    return gzip.decompress(data) if path.name.endswith(".gz") else data


def _store(raw: bytes, like: Path) -> bytes:
    return gzip.compress(raw, compresslevel=1, mtime=0) if like.name.endswith(".gz") else raw


def _endian(raw: bytes) -> str:
    return "<" if struct.unpack("<i", raw[:4])[0] in (348, 540) else ">"


def _header_size(raw: bytes) -> int:
    return struct.unpack(_endian(raw) + "i", raw[:4])[0]


def _with_long_extension(raw: bytes, overshoot: int) -> bytes:
    """The file with its first extension (added if it has none) claiming ``overshoot`` bytes
    more than the whole file holds after it, so that it runs past the data and the file's end."""
    size = _header_size(raw)
    if raw[size : size + 1] in (b"", b"\x00"):
        klass = nib.Nifti1Header if size == 348 else nib.Nifti2Header
        header = klass.from_fileobj(io.BytesIO(raw))
        data = raw[max(header.get_data_offset(), size + 4) :]
        header.extensions.append(nib.nifti1.Nifti1Extension("comment", b"bids2hf test"))
        header["vox_offset"] = 0  # write_to sets it to the end of the extensions
        out = io.BytesIO()
        header.write_to(out)
        raw = out.getvalue() + data
    endian = _endian(raw)
    start = size + 4
    esize = len(raw) - start + overshoot
    return raw[:start] + struct.pack(endian + "i", esize) + raw[start + 4 :]


def _damages(path: Path) -> dict[str, bytes]:
    """Damaged versions of a real file's stored bytes, by name."""
    stored = path.read_bytes()
    raw = _raw(path)
    gz = path.name.endswith(".gz")
    endian = _endian(raw)
    out = {
        "truncated-half": stored[: len(stored) // 2],
        "truncated-data": _store(raw[: len(raw) - 100], path),
        "bad-sizeof_hdr": _store(struct.pack(endian + "i", 1234) + raw[4:], path),
        "extension-past-end": _store(_with_long_extension(raw, 4096), path),
        "extension-into-data": _store(_with_long_extension(raw, -64), path),
    }
    if gz:
        out["not-gzip"] = raw
        out["bad-gzip-method"] = stored[:2] + b"\x09" + stored[3:]
        out["gzip-trailer-cut"] = stored[:-4]
    else:
        out["truncated-last-byte"] = stored[:-1]
        out["gzip-named-nii"] = gzip.compress(raw, mtime=0)
    if path == CIFTI:
        out["cifti-xml-broken"] = raw.replace(b"<CIFTI", b"<CIFTX", 1)
        ext_code = _header_size(raw) + 4 + 4
        out["cifti-extension-missing"] = (
            raw[:ext_code] + struct.pack(endian + "i", 6) + raw[ext_code + 4 :]
        )
    return out


# Damage the cheap check must catch whatever nibabel makes of it.
_CHEAP_MUST_CATCH = (
    "truncated-half",
    "truncated-data",
    "truncated-last-byte",
    "bad-sizeof_hdr",
    "extension-past-end",
    "not-gzip",
    "bad-gzip-method",
    "gzip-trailer-cut",
    "gzip-named-nii",
)


def _documented_stricter(name: str, raw: bytes) -> bool | None:
    """Whether nibabel reads through damage that the check refuses (see nifti_header's
    docstring): True when it always does, None when it may, False for other damage."""
    if name == "bad-sizeof_hdr":
        # nibabel recognises NIfTI-1 by its magic and repairs the size field; NIfTI-2 has no
        # other signature, so nibabel refuses it too.
        return raw[344:348] in (b"n+1\x00", b"ni1\x00")
    if name == "gzip-trailer-cut":
        # nibabel stops reading at the end of the data, and sees the missing trailer only when
        # the decompressor happened to reach it (small files).
        return None
    return False


@pytest.mark.parametrize("path", _params(small_only=True))
def test_damaged_copies_verdict_agrees_with_nibabel(path: Path, tmp_path: Path) -> None:
    raw = _raw(path)
    for name, blob in _damages(path).items():
        copy = tmp_path / path.name
        copy.write_bytes(blob)
        nibabel_ok = nibabel_reads(copy)
        cheap, full = check_nifti(str(copy), "header"), check_nifti(str(copy), "full")
        where = f"{path.name} {name}: nibabel {'reads' if nibabel_ok else 'refuses'} it"
        stricter = _documented_stricter(name, raw)
        if stricter is not False:
            if stricter:
                assert nibabel_ok, where  # if nibabel starts refusing these, update the docstring
            assert cheap.error is not None and full.error is not None, where
        else:
            assert (cheap.error is None) == nibabel_ok, f"{where}, cheap check: {cheap.error}"
            assert (full.error is None) == nibabel_ok, f"{where}, full check: {full.error}"
        if name in _CHEAP_MUST_CATCH:
            assert cheap.error is not None, where
        if cheap.error is not None:
            _one_line(cheap.error)


def test_nibabel_reads_an_incomplete_gzip_stream_which_the_check_refuses(
    tmp_path: Path,
) -> None:
    copy = tmp_path / "example4d.nii.gz"
    stored = (NIBABEL_DATA / copy.name).read_bytes()
    for blob in (stored[:-8], stored + b"not gzip"):  # no trailer; bytes after the stream
        copy.write_bytes(blob)
        assert nibabel_reads(copy)
        assert "gzip stream" in _one_line(check_nifti(str(copy)).error)
        assert "gzip stream" in _one_line(check_nifti(str(copy), "full").error)
    copy.write_bytes(stored + bytes(100))  # zero padding after a gzip stream is allowed
    assert nibabel_reads(copy) and check_nifti(str(copy)).error is None


def test_vox_offset_zero_needs_the_data_after_the_header(tmp_path: Path) -> None:
    """nibabel reads the data of a .nii with vox_offset 0 from byte 0, on top of the header."""
    raw = bytearray((NIBABEL_DATA / "anatomical.nii").read_bytes())
    raw[108:112] = struct.pack(_endian(bytes(raw)) + "f", 0.0)
    copy = tmp_path / "anatomical.nii"
    copy.write_bytes(bytes(raw))
    assert nibabel_reads(copy) and check_nifti(str(copy)).error is None
    copy.write_bytes(bytes(raw[:-100]))
    assert nibabel_reads(copy)
    assert "truncated" in _one_line(check_nifti(str(copy)).error)


def test_damage_messages_name_the_problem(tmp_path: Path) -> None:
    cases = {
        "truncated-half": "truncated",
        "bad-sizeof_hdr": "not a NIfTI-1/NIfTI-2 file",
        "extension-past-end": "runs past the end of the file",
        "not-gzip": "named .nii.gz but not gzip-compressed",
        "bad-gzip-method": "corrupt gzip stream",
        "gzip-trailer-cut": "gzip stream",
    }
    damages = _damages(NIFTI2)
    for name, expected in cases.items():
        copy = tmp_path / NIFTI2.name
        copy.write_bytes(damages[name])
        error = _one_line(check_nifti(str(copy)).error)
        assert expected in error, (name, error)
    cifti = _damages(CIFTI)
    for name, expected in {
        "gzip-named-nii": "gzip-compressed: name it .nii.gz",
        "cifti-xml-broken": "invalid CIFTI-2 file",
        "cifti-extension-missing": "no CIFTI-2 extension",
    }.items():
        copy = tmp_path / CIFTI.name
        copy.write_bytes(cifti[name])
        error = _one_line(check_nifti(str(copy)).error)
        assert expected in error, (name, error)


def test_damage_inside_the_deflate_stream_is_caught_by_the_full_check_only(
    tmp_path: Path,
) -> None:
    """The cheap check reads the header and the trailer; the data in between only ``full`` reads."""
    raw = _raw(NIFTI2)
    copy = tmp_path / NIFTI2.name
    # 1. Stored (level 0) deflate blocks: a flipped byte changes one voxel, nibabel reads it,
    # and only the CRC tells.
    blob = bytearray(gzip.compress(raw, compresslevel=0, mtime=0))
    blob[len(blob) // 2] ^= 0x5A
    copy.write_bytes(bytes(blob))
    assert nibabel_reads(copy)
    assert check_nifti(str(copy), "header").error is None
    assert "CRC" in _one_line(check_nifti(str(copy), "full").error)
    # 2. Compressed data: a flipped byte that breaks the deflate stream; nibabel fails on it.
    stored = gzip.compress(raw, compresslevel=6, mtime=0)
    for pos in range(len(stored) // 2, len(stored) - 8):
        broken = bytearray(stored)
        broken[pos] ^= 0xFF
        try:
            zlib.decompress(bytes(broken), wbits=31)
        except zlib.error:
            break
    else:
        raise AssertionError("no byte breaks the deflate stream")
    copy.write_bytes(bytes(broken))
    assert not nibabel_reads(copy)
    assert check_nifti(str(copy), "header").error is None
    assert "corrupt or truncated gzip stream" in _one_line(check_nifti(str(copy), "full").error)


@pytest.mark.parametrize(
    "path", [NIBABEL_DATA / "anatomical.nii", NIFTI2, CIFTI], ids=lambda p: p.name
)
def test_every_header_byte_damaged_verdict_agrees_with_nibabel(path: Path, tmp_path: Path) -> None:
    """Each byte of the header, the extension flag and the first extension, damaged in turn."""
    raw = _raw(path)
    size = _header_size(raw)
    nifti1 = raw[344:348] in (b"n+1\x00", b"ni1\x00")
    copy = tmp_path / path.name.removesuffix(".gz")
    disagreements = []
    for pos in range(min(len(raw), size + 4 + 64)):
        for value in {raw[pos] ^ 0xFF, 0}:
            if value == raw[pos]:
                continue
            damaged = bytearray(raw)
            damaged[pos] = value
            copy.write_bytes(bytes(damaged))
            error = check_nifti(str(copy), "header").error
            if nibabel_reads(copy) == (error is None):
                continue
            if pos < 4 and nifti1 and error and "header size field" in error:
                continue  # documented: nibabel repairs a NIfTI-1 size field
            disagreements.append((pos, value, error))
    assert not disagreements


# -- CIFTI-2 and NIfTI-2 in a BIDS derivative, end to end ----------------------------------------
def _fmriprep(root: Path) -> dict[str, Path]:
    """An fMRIPrep-like derivative with real CIFTI-2/NIfTI-2 files from nibabel's test data."""
    pipeline = root / "derivatives" / "fmriprep"
    func = pipeline / "sub-01" / "ses-1" / "func"
    anat = pipeline / "sub-01" / "ses-1" / "anat"
    func.mkdir(parents=True)
    anat.mkdir(parents=True)
    (pipeline / "dataset_description.json").write_text(
        json.dumps(
            {
                "Name": "fMRIPrep",
                "BIDSVersion": "1.9.0",
                "DatasetType": "derivative",
                "GeneratedBy": [{"Name": "fMRIPrep"}],
            }
        )
    )
    stem = "sub-01_ses-1_task-rest"
    files = {
        "cifti": func / f"{stem}_space-fsLR_den-91k_bold.dtseries.nii",
        "volume": func / f"{stem}_space-MNI152NLin2009cAsym_desc-preproc_bold.nii.gz",
        "nifti2": anat / "sub-01_ses-1_desc-preproc_T1w.nii.gz",
        "gifti": anat / "sub-01_ses-1_hemi-L_pial.surf.gii",
    }
    shutil.copyfile(CIFTI, files["cifti"])
    shutil.copyfile(NIBABEL_DATA / "example4d.nii.gz", files["volume"])
    shutil.copyfile(NIFTI2, files["nifti2"])
    gifti = sorted((Path(nib.__file__).parent / "gifti" / "tests" / "data").glob("*.gii"))[0]
    shutil.copyfile(gifti, files["gifti"])
    # fMRIPrep's sidecars: _bold.dtseries.json beside the CIFTI file, _bold.json beside the volume
    (func / f"{stem}_space-fsLR_den-91k_bold.dtseries.json").write_text('{"RepetitionTime": 2.0}')
    (func / f"{stem}_space-MNI152NLin2009cAsym_desc-preproc_bold.json").write_text(
        '{"RepetitionTime": 2.0, "SkullStripped": false}'
    )
    return files


def test_cifti_and_nifti2_derivatives_convert_load_and_come_back(
    bids_copy: Path, tmp_path: Path, cli: Cli
) -> None:
    files = _fmriprep(bids_copy)
    rel = {k: p.relative_to(bids_copy).as_posix() for k, p in files.items()}

    inspect = cli("inspect", bids_copy, "--derivatives", "all")
    assert inspect.exit_code == 0, inspect.output
    assert "fmriprep:func/bold.dtseries" in inspect.output and "0 error(s)" in inspect.output

    out = tmp_path / "out"
    result = cli("convert", bids_copy, out, "--derivatives", "all", "-q")
    assert result.exit_code == 0, result.output

    ds = load_dataset(str(out), split="train")
    # CIFTI-2 gets a column of its own, declared undecoded; the volumes beside it stay decodable.
    assert ds.features["fmriprep_func_bold_dtseries"] == List(Nifti(decode=False))
    assert ds.features["fmriprep_func_bold"] == List(Nifti(decode=True))
    assert ds.features["fmriprep_anat_T1w"] == List(Nifti(decode=False))
    assert "fmriprep_func_bold_dtseries_density" in ds.features
    row = next(r for r in ds if r["fmriprep_func_bold_dtseries"])
    assert row["fmriprep_func_bold_dtseries_density"] == ["91k"]
    assert row["fmriprep_func_bold_dtseries_meta"] == [{"RepetitionTime": 2.0}]

    cifti_value = row["fmriprep_func_bold_dtseries"][0]
    assert cifti_value["path"] == rel["cifti"]
    assert hashlib.sha256(cifti_value["bytes"]).hexdigest() == sha256(files["cifti"])
    cifti = bids2hf.load_nifti(cifti_value)
    assert isinstance(cifti, nib.Cifti2Image)
    original = nib.load(files["cifti"])
    assert np.array_equal(np.asanyarray(cifti.dataobj), np.asanyarray(original.dataobj))
    assert cifti.header.get_axis(0) == original.header.get_axis(0)

    nifti2 = bids2hf.load_nifti(row["fmriprep_anat_T1w"][0])
    assert isinstance(nifti2, nib.Nifti2Image)
    assert np.array_equal(nifti2.get_fdata(), nib.load(files["nifti2"]).get_fdata())
    assert isinstance(row["fmriprep_func_bold"][0], nib.Nifti1Image)  # decoded by `datasets`

    # Surface files stay in `files`.
    stored = pq.read_table(out / "data", columns=["files"]).column("files").to_pylist()
    paths = {f["path"] for cell in stored for f in cell}
    assert rel["gifti"] in paths

    back = tmp_path / "back"
    exported = cli("export", out, back, "-q")
    assert exported.exit_code == 0, exported.output
    assert {p.relative_to(back).as_posix(): sha256(p) for p in back.rglob("*") if p.is_file()} == {
        p.relative_to(bids_copy).as_posix(): sha256(p) for p in bids_copy.rglob("*") if p.is_file()
    }
    verified = cli("verify", bids_copy, out)
    assert verified.exit_code == 0, verified.output
