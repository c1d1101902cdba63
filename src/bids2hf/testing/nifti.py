"""A streamed gzip NIfTI writer for synthetic images of any size (independently deflated pieces)."""

from __future__ import annotations

import io
import math
import struct
import zlib
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO

import nibabel as nib
import numpy as np

from bids2hf.testing.spec import SyntheticSpec, _NiftiItem
from bids2hf.testing.texts import _file_rng

_CHUNK = 4 * 1024 * 1024  # bytes of voxel data per independently deflated piece
_NIFTI_HEADER_BYTES = 352  # 348-byte NIfTI-1 header + 4-byte empty extension flag


# --------------------------------------------------------------------------------------------
# Sizing
# --------------------------------------------------------------------------------------------


def _scaled_shape(item: _NiftiItem, factor: float) -> tuple[int, ...]:
    spatial = tuple(max(1, math.floor(d * factor + 0.5)) for d in item.spatial)
    return spatial if item.n_vols is None else (*spatial, item.n_vols)


def _nifti_size(shape: tuple[int, ...], spec: SyntheticSpec) -> int:
    """Predicted size on disk of a noise NIfTI of this shape."""
    raw = _NIFTI_HEADER_BYTES + 2 * math.prod(shape)
    if not spec.compress:
        return raw
    data = raw - _NIFTI_HEADER_BYTES
    pieces = max(1, -(-data // _CHUNK))
    block = 65535 if spec.gzip_level == 0 else 16384  # stored blocks of random data
    return raw + 5 * -(-raw // block) + 5 * pieces + 18


def _choose_factor(spec: SyntheticSpec, niftis: list[_NiftiItem], text_bytes: int) -> float:
    """Spatial scale factor making the predicted total closest to ``spec.target_bytes``."""
    if spec.target_bytes is None:
        return 1.0
    target = spec.target_bytes

    def total(f: float) -> int:
        return text_bytes + sum(_nifti_size(_scaled_shape(n, f), spec) for n in niftis)

    lo, hi = 0.0, 1.0
    while total(hi) < target:
        lo, hi = hi, hi * 2
    for _ in range(60):
        mid = (lo + hi) / 2
        if total(mid) <= target:
            lo = mid
        else:
            hi = mid
    return lo if abs(total(lo) - target) <= abs(total(hi) - target) else hi


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


def _nifti_header(shape: tuple[int, ...], zooms: tuple[float, ...], descrip: str) -> bytes:
    hdr = nib.Nifti1Header()
    hdr.set_data_dtype(np.int16)
    hdr.set_data_shape(shape)
    hdr.set_zooms(zooms)
    hdr.set_xyzt_units("mm", "sec")
    affine = np.diag([*zooms[:3], 1.0])
    affine[:3, 3] = -(np.array(shape[:3], dtype=float) - 1) * np.array(zooms[:3]) / 2
    hdr.set_qform(affine, code=1)
    hdr.set_sform(affine, code=1)
    hdr.set_slope_inter(1.0, 0.0)
    hdr["descrip"] = descrip.encode()[:79]
    hdr["vox_offset"] = (
        _NIFTI_HEADER_BYTES  # single-file .nii: data right after header + extension flag
    )
    buf = io.BytesIO()
    hdr.write_to(buf)
    out = buf.getvalue()
    assert len(out) == _NIFTI_HEADER_BYTES
    return out


def _pieces(header: bytes, n_data: int, rng: np.random.Generator) -> Iterator[bytes]:
    """Header + voxel noise, in pieces of ``_CHUNK`` voxel bytes (header on the first)."""
    remaining = n_data
    first = True
    while first or remaining > 0:
        n = min(_CHUNK, remaining)
        data = rng.integers(-32768, 32768, size=n // 2, dtype=np.int16).tobytes()
        yield header + data if first else data
        first = False
        remaining -= n


def _deflate(data: bytes, level: int, strategy: int, last: bool) -> bytes:
    comp = zlib.compressobj(level, zlib.DEFLATED, -15, 8, strategy)
    out = comp.compress(data)
    return out + comp.flush(zlib.Z_FINISH if last else zlib.Z_SYNC_FLUSH)


class _NiftiWriter:
    """Writes noise NIfTI files, deflating pieces in a thread pool.

    Compressed pieces are written in order; files stay open until their last piece is
    written, so pieces of consecutive (small) files are compressed concurrently too.  At most
    ``max_pending`` pieces (and so at most that many open files) are in flight.
    """

    def __init__(self, spec: SyntheticSpec, threads: int) -> None:
        self.spec = spec
        self.pool = ThreadPoolExecutor(threads) if threads > 1 and spec.compress else None
        self.max_pending = 2 * threads
        self.strategy = zlib.Z_HUFFMAN_ONLY if spec.fast_deflate else zlib.Z_DEFAULT_STRATEGY
        self.pending: deque[tuple[BinaryIO, Future[bytes] | bytes, bytes | None]] = deque()
        xfl = 4 if spec.gzip_level == 1 else 2 if spec.gzip_level == 9 else 0
        # gzip member header: no file name, mtime 0 (deterministic), OS unknown.
        self.gz_header = b"\x1f\x8b\x08\x00" + struct.pack("<I", 0) + bytes([xfl, 255])

    def write(
        self, path: Path, shape: tuple[int, ...], zooms: tuple[float, ...], seed_rel: str
    ) -> None:
        """Write one image (possibly finishing asynchronously; see :meth:`close`)."""
        spec = self.spec
        rng = _file_rng(spec.seed, seed_rel, "nifti")
        header = _nifti_header(shape, zooms, "")
        n_data = 2 * math.prod(shape)
        n_pieces = max(1, -(-n_data // _CHUNK))
        fh = open(path, "wb")  # noqa: SIM115 - closed in _drain_one / close
        if not spec.compress:
            with fh:
                for piece in _pieces(header, n_data, rng):
                    fh.write(piece)
            return
        fh.write(self.gz_header)
        crc = 0
        size = 0
        for i, piece in enumerate(_pieces(header, n_data, rng)):
            crc = zlib.crc32(piece, crc)
            size += len(piece)
            last = i == n_pieces - 1
            trailer = struct.pack("<II", crc & 0xFFFFFFFF, size & 0xFFFFFFFF) if last else None
            job: Future[bytes] | bytes
            if self.pool is None:
                job = _deflate(piece, spec.gzip_level, self.strategy, last)
            else:
                job = self.pool.submit(_deflate, piece, spec.gzip_level, self.strategy, last)
            self.pending.append((fh, job, trailer))
            while len(self.pending) > self.max_pending:
                self._drain_one()

    def _drain_one(self) -> None:
        fh, job, trailer = self.pending.popleft()
        try:
            fh.write(job if isinstance(job, bytes) else job.result())
            if trailer is not None:
                fh.write(trailer)
        except BaseException:
            fh.close()
            raise
        if trailer is not None:
            fh.close()

    def close(self) -> None:
        """Finish every pending file and stop the threads."""
        try:
            while self.pending:
                self._drain_one()
        finally:
            for fh, _, _ in self.pending:
                fh.close()
            if self.pool is not None:
                self.pool.shutdown()
