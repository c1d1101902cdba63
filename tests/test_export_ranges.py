"""``export`` fetches files stored verbatim by their recorded byte range (issue 12).

Goal: exporting one modality's images downloads at most 1.10x their bytes, plus the index (the
manifest and each shard's footer read), over the Hub emulator and S3 (moto). Before offsets,
export read whole column chunks through a 5 MB read-ahead and this failed. A wrong recorded
offset is refused (sha256 mismatch) and the file never written.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from bids2hf.errors import VerificationError
from bids2hf.model.format import MANIFEST_PATH
from bids2hf.readback.export import export
from bids2hf.testing.spec import GeneratedDataset
from helpers import error_line, hub_env, manifest_records, run_bids2hf
from hub_emulator import HubEmulator

T1W = "*_T1w.nii.gz"
ONE = "sub-01/ses-1/anat/sub-01_ses-1_T1w.nii.gz"
#: pyarrow reads a footer with one read of the file's last 64 KiB (more only if it is longer).
FOOTER_READ = 64 << 10


def _published(out: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(out)): p.read_bytes()
        for p in out.rglob("*")
        if p.is_file() and ".bids2hf" not in p.parts
    }


def _wanted(synthetic: GeneratedDataset, pattern: str) -> dict[str, bytes]:
    from fnmatch import fnmatch

    return {
        str(p.relative_to(synthetic.root)): p.read_bytes()
        for p in synthetic.root.rglob("*")
        if p.is_file() and fnmatch(str(p.relative_to(synthetic.root)), pattern)
    }


def _index_bytes(out: Path) -> int:
    """What reading the index costs: the manifest, and the footer read of every shard."""
    total = (out / MANIFEST_PATH).stat().st_size
    for shard in (out / "data").glob("*.parquet"):
        size = shard.stat().st_size
        footer = pq.read_metadata(shard).serialized_size + 8
        total += min(size, max(FOOTER_READ, footer))
    return total


def _check_tree(dest: Path, expected: dict[str, bytes]) -> None:
    got = {str(p.relative_to(dest)): p.read_bytes() for p in dest.rglob("*") if p.is_file()}
    assert got == expected


def test_every_image_has_an_offset(converted_ranges: Path) -> None:
    entries = manifest_records(converted_ranges)
    images = [e for e in entries if e["path"].endswith(".nii.gz") and e["placement"] == "row"]
    assert images and all(isinstance(e.get("offset"), int) for e in images)


def test_over_the_hub_one_modality_costs_its_bytes(
    emu: HubEmulator, converted_ranges: Path, synthetic: GeneratedDataset, tmp_path: Path
) -> None:
    emu.create_repo("org/ds")
    emu.upload_bytes("org/ds", _published(converted_ranges))
    env = hub_env(emu, tmp_path)
    index = _index_bytes(converted_ranges)
    for pattern in (T1W, ONE):
        expected = _wanted(synthetic, pattern)
        dest = tmp_path / f"out-{len(expected)}"
        before = emu.stats["bytes_downloaded"]
        run_bids2hf("export", "hf://datasets/org/ds", dest, "--include", pattern, "-q", env=env)
        downloaded = emu.stats["bytes_downloaded"] - before
        _check_tree(dest, expected)
        wanted = sum(map(len, expected.values()))
        assert downloaded <= 1.10 * wanted + index, (pattern, downloaded, wanted, index)


def test_over_s3_one_modality_costs_its_bytes(
    s3_env: dict[str, str],
    converted_ranges: Path,
    synthetic: GeneratedDataset,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import fsspec
    import s3fs
    import s3fs.core

    from conftest import S3_BUCKET

    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"):
        monkeypatch.setenv(key, s3_env[key])
    # fsspec read FSSPEC_S3_* when it was imported: set its configuration directly.
    monkeypatch.setitem(
        fsspec.config.conf, "s3", {"endpoint_url": s3_env["FSSPEC_S3_ENDPOINT_URL"]}
    )
    counted = {"bytes": 0}
    cat_file, fetch_range = s3fs.S3FileSystem._cat_file, s3fs.core._fetch_range

    async def counting_cat_file(self: Any, *args: Any, **kwargs: Any) -> bytes:
        data = await cat_file(self, *args, **kwargs)
        counted["bytes"] += len(data)
        return bytes(data)

    def counting_fetch_range(*args: Any, **kwargs: Any) -> bytes:
        data = fetch_range(*args, **kwargs)
        counted["bytes"] += len(data)
        return bytes(data)

    # Every body s3fs downloads goes through one of these two.
    monkeypatch.setattr(s3fs.S3FileSystem, "_cat_file", counting_cat_file)
    monkeypatch.setattr(s3fs.core, "_fetch_range", counting_fetch_range)
    s3fs.S3FileSystem.clear_instance_cache()
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    for rel, data in _published(converted_ranges).items():
        fs.pipe_file(f"{S3_BUCKET}/ds/{rel}", data)
    index = _index_bytes(converted_ranges)
    for pattern in (T1W, ONE):
        expected = _wanted(synthetic, pattern)
        dest = tmp_path / f"out-{len(expected)}"
        counted["bytes"] = 0
        s3fs.S3FileSystem.clear_instance_cache()
        export(f"s3://{S3_BUCKET}/ds", dest, include=[pattern], progress=False)
        _check_tree(dest, expected)
        wanted = sum(map(len, expected.values()))
        assert 0 < counted["bytes"] <= 1.10 * wanted + index, (pattern, counted, wanted, index)
    s3fs.S3FileSystem.clear_instance_cache()


def test_coalesce_wastes_at_most_its_share() -> None:
    from bids2hf.readback.ranges import coalesce

    # Small files 50 kB apart: with waste=0.05 none is merged; with the default gap all are.
    ranges = [(i * 50_000, 4_000) for i in range(5)]
    assert len(coalesce(ranges, waste=0.05)) == 5 and len(coalesce(ranges)) == 1
    # A gap of 5% of the file brought in is merged, one byte more is not.
    assert len(coalesce([(0, 100), (105, 100)], waste=0.05)) == 1
    assert len(coalesce([(0, 100), (106, 100)], waste=0.05)) == 2


def _shift_offset(out: Path, path: str, by: int) -> None:
    lines = []
    for line in (out / MANIFEST_PATH).read_text().splitlines():
        e = json.loads(line)
        if e["path"] == path:
            e["offset"] += by
        lines.append(json.dumps(e, sort_keys=True))
    (out / MANIFEST_PATH).write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("by", [1, -1, 10**9])
def test_a_wrong_offset_is_refused_never_written(
    converted_ranges: Path, tmp_path: Path, by: int
) -> None:
    damaged = tmp_path / "damaged"
    shutil.copytree(converted_ranges, damaged)
    _shift_offset(damaged, ONE, by)
    dest = tmp_path / "bids"
    with pytest.raises(VerificationError, match=r"sha256|bytes at"):
        export(str(damaged), dest, include=[ONE], progress=False)
    assert not (dest / ONE).exists()
    assert [p for p in dest.rglob("*") if p.is_file()] == []  # no temporary file left either
    # Through the CLI: one line, exit 1.
    proc = run_bids2hf("export", damaged, dest, "--include", ONE, "-q", check=False)
    error_line(proc, ONE, exit_code=1)
    assert not (dest / ONE).exists()
