"""``bids2hf://``: the BIDS tree of an output, over a local folder, S3 (moto) and the Hub emulator.

Outputs are made by the writer, which records byte offsets (in each shard's footer index and the
manifest's row entries); the plain outputs, the same with the offsets removed, stand for
datasets written before offsets existed.
"""

from __future__ import annotations

import errno
import gzip
import json
import os
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fsspec
import nibabel as nib
import numpy as np
import pyarrow.parquet as pq
import pytest
from fsspec.implementations.local import LocalFileSystem

from bids2hf.errors import InputError
from bids2hf.model.format import FOOTER_KEY, MANIFEST_PATH, read_footer_index
from bids2hf.model.ranges import RangeError
from bids2hf.readback.bids_fs import BidsHfFileSystem
from bids2hf.testing.spec import GeneratedDataset
from bids2hf.write.ranges import replace_footer_value
from helpers import manifest_records
from hub_emulator import HubEmulator

T1W = "sub-01/ses-1/anat/sub-01_ses-1_T1w.nii.gz"
SIDECAR = "sub-01/ses-1/anat/sub-01_ses-1_T1w.json"


def test_protocol_registered_by_entry_point() -> None:
    """pyproject's fsspec entry point names the class where it lives."""
    assert fsspec.get_filesystem_class("bids2hf") is BidsHfFileSystem


def strip_offsets(out: Path) -> None:
    """An output as written before offsets: no ``offset`` in the footer indexes or the manifest."""
    for shard in sorted((out / "data").glob("*.parquet")):
        index = [e.record() for e in read_footer_index(pq.read_metadata(shard))]
        for e in index:
            e.pop("offset", None)
        replace_footer_value(shard, FOOTER_KEY, json.dumps(index, separators=(",", ":")).encode())
    lines = []
    for line in (out / MANIFEST_PATH).read_text().splitlines():
        e = json.loads(line)
        e.pop("offset", None)
        lines.append(json.dumps(e, sort_keys=True))
    (out / MANIFEST_PATH).write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def outputs(converted_ranges: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same output with offsets recorded (as written today) and without (as before)."""
    assert '"offset":' in (converted_ranges / MANIFEST_PATH).read_text()  # the writer records them
    plain = tmp_path_factory.mktemp("bids_fs") / "plain"
    shutil.copytree(converted_ranges, plain)
    strip_offsets(plain)
    return {"plain": plain, "offsets": converted_ranges}


def source_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


class _CountingFile:
    def __init__(self, f: Any, owner: CountingFS) -> None:
        self._f, self._owner = f, owner

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n)
        self._owner.read_bytes += len(data)
        return bytes(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)

    def __enter__(self) -> _CountingFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self._f.close()


class CountingFS(LocalFileSystem):
    """The local filesystem, counting every byte read from it."""

    cachable = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.read_bytes = 0

    def _open(self, path: str, mode: str = "rb", block_size: Any = None, **kwargs: Any) -> Any:
        return _CountingFile(super()._open(path, mode, block_size, **kwargs), self)


@pytest.mark.parametrize("variant", ["offsets", "plain"])
def test_the_tree_is_the_source_tree(
    outputs: dict[str, Path], synthetic: GeneratedDataset, variant: str
) -> None:
    fs = BidsHfFileSystem(str(outputs[variant]))
    expected = source_files(synthetic.root)
    assert sorted(fs.find("")) == sorted(expected)
    assert {p: fs.info(p)["size"] for p in expected} == {p: len(b) for p, b in expected.items()}
    assert {p: fs.cat_file(p) for p in expected} == expected
    assert fs.ls("sub-01", detail=False) == [
        "sub-01/ses-1",
        "sub-01/ses-2",
        "sub-01/sub-01_sessions.tsv",
    ]
    assert fs.info("sub-01/ses-1")["type"] == "directory" and fs.isdir("")
    assert fs.ls(T1W, detail=False) == [T1W]
    with pytest.raises(FileNotFoundError):
        fs.info("sub-99")
    with pytest.raises(IsADirectoryError):
        fs.cat_file("sub-01")


def test_one_file_costs_its_bytes_plus_the_index(
    outputs: dict[str, Path], synthetic: GeneratedDataset
) -> None:
    out = outputs["offsets"]
    manifest = (out / MANIFEST_PATH).stat().st_size
    size = (synthetic.root / T1W).stat().st_size
    target = CountingFS()
    fs = BidsHfFileSystem(str(out), fs=target)
    assert fs.cat_file(T1W) == (synthetic.root / T1W).read_bytes()
    # Exactly the manifest, then the file's own range (its sha256 checked on the way).
    assert target.read_bytes == fs.stats["bytes"] == manifest + size
    assert fs.stats["requests"] == 2
    # A sidecar lives in the compressed `files` column: footer + that column chunk.
    before = target.read_bytes
    assert fs.cat_file(SIDECAR) == (synthetic.root / SIDECAR).read_bytes()
    meta = pq.read_metadata(out / next(e for e in fs._index().values() if e.path == SIDECAR).obj)
    chunk = sum(
        meta.row_group(0).column(i).total_compressed_size
        for i in range(meta.num_columns)
        if meta.schema.column(i).path.startswith("files.list")
    )
    assert target.read_bytes - before == max(64 << 10, meta.serialized_size + 8) + chunk
    # Its neighbours came with the chunk: no further read.
    before = target.read_bytes
    fs.cat_file("sub-01/ses-1/func/sub-01_ses-1_task-rest_run-1_bold.json")
    assert target.read_bytes == before


def test_an_old_output_without_offsets_reads_column_chunks(
    outputs: dict[str, Path], synthetic: GeneratedDataset
) -> None:
    out = outputs["plain"]
    target = CountingFS()
    fs = BidsHfFileSystem(str(out), fs=target)
    assert fs.cat_file(T1W) == (synthetic.root / T1W).read_bytes()
    shard = sum(p.stat().st_size for p in (out / "data").glob("*.parquet"))
    extra = (
        target.read_bytes
        - (out / MANIFEST_PATH).stat().st_size
        - (synthetic.root / T1W).stat().st_size
    )
    assert 0 < extra < shard / 2  # footer + one column chunk, not the shard


@pytest.mark.parametrize("where", ["manifest", "footer"])
def test_a_wrong_offset_is_refused_never_returned(
    outputs: dict[str, Path], synthetic: GeneratedDataset, tmp_path: Path, where: str
) -> None:
    out = tmp_path / "out"
    shutil.copytree(outputs["offsets"], out)
    entries = manifest_records(out)
    t1w = next(e for e in entries if e["path"] == T1W)
    other = next(
        e
        for e in entries
        if e.get("location") == t1w["location"] and "offset" in e and e["path"] != T1W
    )
    wrong = other["offset"]
    # Point the T1w at another image of its shard: a plausible place, with the wrong bytes.
    if where == "manifest":
        t1w["offset"] = wrong
        (out / MANIFEST_PATH).write_text("".join(json.dumps(e) + "\n" for e in entries))
    else:
        for e in entries:
            e.pop("offset", None)
        (out / MANIFEST_PATH).write_text("".join(json.dumps(e) + "\n" for e in entries))
        shard = out / t1w["location"]
        index = json.loads(pq.read_metadata(shard).metadata[FOOTER_KEY])
        for e in index:
            if e["path"] == T1W:
                e["offset"] = wrong
        replace_footer_value(shard, FOOTER_KEY, json.dumps(index).encode())
    fs = BidsHfFileSystem(str(out))
    with pytest.raises(RangeError, match="do not match its sha256"):
        fs.cat_file(T1W)
    with pytest.raises(RangeError), fs.open(T1W) as f:
        f.seek(10)
        f.read(5)
    with pytest.raises(RangeError), fsspec.open(f"bids2hf://{T1W}::{out}") as f:
        f.read()
    # Small reads are refused too: they cost the whole file, which is checked first.
    with pytest.raises(RangeError):
        fs.cat_file(T1W, 0, 10)
    # The check is what stands between the reader and the wrong bytes.
    unchecked = BidsHfFileSystem(str(out), verify=False, skip_instance_cache=True)
    assert unchecked.cat_file(T1W) != (synthetic.root / T1W).read_bytes()


def test_random_access(outputs: dict[str, Path], synthetic: GeneratedDataset) -> None:
    out = outputs["offsets"]
    source = (
        synthetic.root / "sub-01/ses-1/func/sub-01_ses-1_task-naming40_bold.nii.gz"
    ).read_bytes()
    path = "sub-01/ses-1/func/sub-01_ses-1_task-naming40_bold.nii.gz"
    target = CountingFS()
    # No memory cache: reads after the first go to the shard, not to a kept copy.
    fs = BidsHfFileSystem(str(out), fs=target, block_size=1024, cache_bytes=0)
    with fs.open(path) as f:
        f.seek(5000)
        assert f.read(100) == source[5000:5100]
        f.seek(-50, os.SEEK_END)
        assert f.read() == source[-50:]
        f.seek(0)
        assert f.read() == source
    assert f.size == len(source)
    # Verified once: later reads are plain range reads of what is asked (plus read-ahead).
    before = target.read_bytes
    with fs.open(path) as f:
        f.seek(9000)
        assert f.read(10) == source[9000:9010]
    assert target.read_bytes - before <= 10 + 1024
    before = target.read_bytes
    assert fs.cat_file(path, 100, 120) == source[100:120]
    assert fs.cat_file(path, -20) == source[-20:]
    assert target.read_bytes - before == 40


def test_large_files_are_spooled_and_checked(
    outputs: dict[str, Path], synthetic: GeneratedDataset
) -> None:
    fs = BidsHfFileSystem(str(outputs["offsets"]), cache_file_bytes=1000, cache_bytes=2000)
    expected = source_files(synthetic.root)
    for path in (T1W, "sub-04/ses-1/dwi/sub-04_ses-1_dir-AP_dwi.nii.gz"):
        with fs.open(path) as f:
            f.seek(len(expected[path]) // 2)
            assert f.read(100) == expected[path][len(expected[path]) // 2 :][:100]
            f.seek(0)
            assert f.read() == expected[path]


def test_nibabel_reads_an_image_through_fsspec_open(
    outputs: dict[str, Path], synthetic: GeneratedDataset
) -> None:
    with fsspec.open(f"bids2hf://{T1W}::{outputs['offsets']}") as f:
        img = nib.Nifti1Image.from_stream(gzip.GzipFile(fileobj=f))
        data = np.asarray(img.dataobj)
    original = nib.load(synthetic.root / T1W)
    assert img.shape == original.shape
    assert np.array_equal(data, np.asarray(original.dataobj))


def test_an_output_without_manifest_is_read_from_footers(
    outputs: dict[str, Path], synthetic: GeneratedDataset, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    shutil.copytree(outputs["offsets"], out)
    (out / MANIFEST_PATH).unlink()
    target = CountingFS()
    fs = BidsHfFileSystem(str(out), fs=target)
    expected = source_files(synthetic.root)
    assert sorted(fs.find("")) == sorted(expected)
    assert fs.cat_file(T1W) == expected[T1W]
    assert fs.cat_file("participants.tsv") == expected["participants.tsv"]


def test_read_only_and_bad_sources(outputs: dict[str, Path], tmp_path: Path) -> None:
    fs = BidsHfFileSystem(str(outputs["offsets"]))
    for call in (
        lambda: fs.open(T1W, "wb"),
        lambda: fs.rm(T1W),
        lambda: fs.mkdir("x"),
        lambda: fs.pipe_file("x", b""),
    ):
        with pytest.raises(OSError) as info:
            call()
        assert info.value.errno == errno.EROFS
    with pytest.raises(InputError, match="not a bids2hf dataset"):
        BidsHfFileSystem(str(tmp_path)).ls("")
    out = tmp_path / "evil"
    shutil.copytree(outputs["offsets"], out)
    with (out / MANIFEST_PATH).open("a") as f:
        f.write(
            json.dumps(
                {
                    "path": "../escape",
                    "size": 1,
                    "placement": "dataset_file",
                    "location": "bids/README",
                }
            )
            + "\n"
        )
    with pytest.raises(InputError, match="refusing stored path"):
        BidsHfFileSystem(str(out)).ls("")


# -- S3 (moto) ---------------------------------------------------------------------------------


@pytest.fixture
def s3(tmp_path: Path) -> Iterator[dict[str, Any]]:
    pytest.importorskip("s3fs")
    moto_server = pytest.importorskip("moto.server")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    options = {
        "endpoint_url": f"http://127.0.0.1:{port}",
        "key": "testing",
        "secret": "testing",
        "client_kwargs": {"region_name": "us-east-1"},
        "skip_instance_cache": True,
    }
    try:
        import boto3

        boto3.client(
            "s3",
            endpoint_url=options["endpoint_url"],
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        ).create_bucket(Bucket="neuro")
        yield options
    finally:
        server.stop()


def test_over_s3(s3: dict[str, Any], outputs: dict[str, Path], synthetic: GeneratedDataset) -> None:
    import s3fs

    class CountingS3(s3fs.S3FileSystem):  # type: ignore[misc]
        cachable = False
        read_bytes = 0

        async def _cat_file(
            self, path: str, version_id: Any = None, start: Any = None, end: Any = None
        ) -> bytes:
            data = await super()._cat_file(path, version_id=version_id, start=start, end=end)
            CountingS3.read_bytes += len(data)
            return bytes(data)

    out = outputs["offsets"]
    target = CountingS3(**{k: v for k, v in s3.items() if k != "skip_instance_cache"})
    for p in out.rglob("*"):
        if p.is_file() and ".bids2hf" not in p.parts:
            target.pipe_file(f"neuro/ds/{p.relative_to(out)}", p.read_bytes())
    expected = source_files(synthetic.root)
    fs = BidsHfFileSystem("neuro/ds", fs=target)
    CountingS3.read_bytes = 0
    assert fs.cat_file(T1W) == expected[T1W]
    assert CountingS3.read_bytes == (out / MANIFEST_PATH).stat().st_size + len(expected[T1W])
    assert sorted(fs.find("")) == sorted(expected)
    # The chained URL, fsspec's archive convention.
    with fsspec.open(f"bids2hf://{SIDECAR}::s3://neuro/ds", s3=s3) as f:
        assert f.read() == expected[SIDECAR]


# -- the Hub (emulator) ------------------------------------------------------------------------


def test_over_the_hub(
    emu: HubEmulator,
    outputs: dict[str, Path],
    synthetic: GeneratedDataset,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from huggingface_hub import HfFileSystem, constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # the suite's default is offline
    out = outputs["offsets"]
    emu.create_repo("org/ds")
    emu.upload_bytes(
        "org/ds",
        {
            str(p.relative_to(out)): p.read_bytes()
            for p in out.rglob("*")
            if p.is_file() and ".bids2hf" not in p.parts
        },
    )
    expected = source_files(synthetic.root)
    hf = {"endpoint": emu.url, "token": "test-token", "skip_instance_cache": True}
    fs = BidsHfFileSystem("datasets/org/ds", fs=HfFileSystem(**hf))
    before = emu.stats["bytes_downloaded"]
    assert fs.cat_file(T1W) == expected[T1W]
    # Bytes on the wire: the manifest and the file, nothing else.
    assert emu.stats["bytes_downloaded"] - before == (out / MANIFEST_PATH).stat().st_size + len(
        expected[T1W]
    )
    assert sorted(fs.find("")) == sorted(expected)
    # The revision is pinned: a later commit does not change what this instance reads.
    emu.upload_bytes("org/ds", {"bids/README": b"changed\n"})
    assert fs.cat_file("README") == expected["README"]
    with fsspec.open(f"bids2hf://{T1W}::hf://datasets/org/ds", hf=hf) as f:
        f.seek(100)
        assert f.read(50) == expected[T1W][100:150]
    with pytest.raises(InputError, match="no such repository"):
        BidsHfFileSystem("datasets/org/nope", fs=HfFileSystem(**hf)).ls("")
