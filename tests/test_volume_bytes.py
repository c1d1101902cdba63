"""A file read again for its thumbnail (stored beside the shards, or in a shard written without
its thumbnail) is streamed whole for its sha256, but only what its picture shows is kept
(write/previews.VolumeBytes): the picture is the same as from the whole file in memory, and the
memory it costs is about one volume, not the file."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bids2hf.model.nifti_bytes import VOLUME_PROBE
from bids2hf.model.sparse_bytes import SparseBytes
from bids2hf.write.previews import VolumeBytes
from bids2hf.write.thumbnails import ThumbnailError, thumbnail_png

NIBABEL_DATA = Path(nib.__file__).parent / "tests" / "data"


def nifti(data: np.ndarray, gz: bool = False, version: int = 1) -> bytes:
    cls = nib.Nifti1Image if version == 1 else nib.Nifti2Image
    raw = cls(data, np.diag([2.0, 2.0, 2.0, 1.0])).to_bytes()
    return gzip.compress(raw, compresslevel=1) if gz else raw


def chunks(blob: bytes, size: int) -> Iterator[bytes]:
    for at in range(0, len(blob), size):
        yield blob[at : at + size]


def kept(blob: bytes, chunk: int) -> SparseBytes:
    capture = VolumeBytes(len(blob))
    for piece in chunks(blob, chunk):
        capture.feed(piece)
    return capture.view()


def whole(view: SparseBytes) -> np.ndarray:
    """The kept file as one array of its size (zeros where nothing was kept)."""
    return np.frombuffer(bytes(view[0 : len(view)]), dtype=np.uint8)


def outcome(data: bytes | memoryview | SparseBytes) -> bytes | str:
    """The PNG, or the reason none can be made."""
    try:
        return thumbnail_png(data)
    except ThumbnailError as exc:
        return f"error: {exc}"


_rng = np.random.default_rng(0)
#: Random int16 volumes of 256 KiB, 40 of them: the middle one lies ~5 MiB in (past the probe).
_SERIES = _rng.integers(0, 1000, size=(64, 64, 32, 40), dtype=np.int16)
_SMALL = np.arange(6 * 7 * 8, dtype=np.float32).reshape(6, 7, 8)
_raw_small = nifti(_SMALL)
CASES = {
    "3d": _raw_small,
    "3d.gz": nifti(_SMALL, gz=True),
    "4d": nifti(_SERIES),
    "4d.gz": nifti(_SERIES, gz=True),
    "nifti2-4d": nifti(_SERIES, version=2),
    "multi-member.gz": gzip.compress(_raw_small[:200]) + gzip.compress(_raw_small[200:]),
    "empty": b"",
    "not-nifti": b"hello, not an image" * 100,
    "truncated": nifti(_SERIES)[: 3 << 20],
    "truncated.gz": nifti(_SERIES, gz=True)[: 1 << 20],
    "cifti": (NIBABEL_DATA / "row_major.dconn.nii").read_bytes(),
}


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("chunk", [4096, 3 << 20])
def test_the_same_picture_or_refusal_as_from_the_whole_file(name: str, chunk: int) -> None:
    blob = CASES[name]
    assert outcome(kept(blob, chunk)) == outcome(blob)


def test_only_the_volume_shown_is_kept() -> None:
    """Of a 10 MiB uncompressed series, the probe and the middle volume (20 of 40) are kept;
    the bytes between stay zeros."""
    blob = CASES["4d"]
    view = whole(kept(blob, 1 << 20))
    offset = 352
    volume = 256 << 10
    middle = offset + 20 * volume
    assert len(blob) > 10 << 20
    np.testing.assert_array_equal(view[:VOLUME_PROBE], np.frombuffer(blob[:VOLUME_PROBE], np.uint8))
    np.testing.assert_array_equal(
        view[middle : middle + volume], np.frombuffer(blob[middle : middle + volume], np.uint8)
    )
    assert not view[VOLUME_PROBE:middle].any() and not view[middle + volume :].any()


def test_a_gzip_file_keeps_the_prefix_that_holds_its_volume() -> None:
    """A 160-volume series (40 MiB, compressing little): the middle volume ends 20 MiB into the
    decompressed stream; the compressed bytes kept are bounded by that (+ 1/1000 + 1 MiB), well
    short of the file, and the rest stays zeros."""
    series = _rng.integers(0, 1000, size=(64, 64, 32, 160), dtype=np.int16)
    blob = nifti(series, gz=True)
    view = whole(kept(blob, 1 << 20))
    end = int(np.flatnonzero(view)[-1]) + 1
    volume_end = 352 + 81 * (256 << 10)
    assert 0.5 * len(blob) < end <= volume_end + volume_end // 1000 + (1 << 20) < 0.7 * len(blob)
    np.testing.assert_array_equal(view[:end], np.frombuffer(blob[:end], np.uint8))
    assert outcome(kept(blob, 1 << 20)) == outcome(blob)


def test_a_large_file_costs_one_volume_of_memory(tmp_path: Path) -> None:
    """A sparse 3 GiB uncompressed series (1.5 MiB volumes) streamed through VolumeBytes in a
    fresh process limited to 2.5 GiB of address space: its peak RSS grows by a few MiB, not by
    the file."""
    shape = (128, 128, 24, 2048)  # float32: 1.5 MiB per volume, 3 GiB in all
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(np.float32)
    header.set_data_offset(352)
    path = tmp_path / "big_bold.nii"
    with path.open("wb") as f:
        f.write(header.binaryblock + bytes(4))
        f.truncate(352 + int(np.prod(shape)) * 4)
    script = textwrap.dedent(
        f"""
        import json, resource
        from bids2hf.write.previews import VolumeBytes
        from bids2hf.write.thumbnails import thumbnail_png
        path = {str(path)!r}
        import os
        # No file-sized allocation either, not even of address space (as under `ulimit -v`)
        resource.setrlimit(resource.RLIMIT_AS, (5 << 29, resource.RLIM_INFINITY))
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        kept = VolumeBytes(os.path.getsize(path))
        with open(path, "rb") as f:
            while chunk := f.read(8 << 20):
                kept.feed(chunk)
        png = thumbnail_png(kept.view())
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(json.dumps({{"grew_kib": after - before, "png": len(png)}}))
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=True
    )
    result = json.loads(proc.stdout)
    assert result["png"] > 0
    # The file is 3 GiB; a chunk (8 MiB), the probe and one volume are what may be held.
    assert result["grew_kib"] < 100 << 10, result
