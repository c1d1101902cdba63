"""NIfTI-1/NIfTI-2 files held in memory: the header, and one volume, decompressing no more of a
``.nii.gz`` than needed.

The writer holds each file's bytes in its row-group buffer; thumbnails and header facts are read
from that buffer, never from a second read of the file. nibabel is imported on first use only
(shard-writing workers import this module without loading nibabel until a thumbnail is made).

What a NIfTI file's first bytes say is decided here for every reader, the check of
:mod:`bids2hf.bids.nifti` included: gzip or not (:func:`is_gzip`), NIfTI-1 or NIfTI-2 by the header
size field in either byte order (:func:`nifti_version`, :data:`HEADER_SIZE`), and whether the
header announces CIFTI-2 (:func:`is_cifti_intent`).
"""

from __future__ import annotations

import math
import struct
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from bids2hf.model.image_header import NiftiDecodeError
from bids2hf.model.sparse_bytes import SparseBytes

__all__ = [
    "DEFAULT_MAX_DECOMPRESSED",
    "GZIP_MAGIC",
    "HEADER_SIZE",
    "VOLUME_PROBE",
    "NiftiDecodeError",
    "Volume",
    "as_float",
    "first_bytes",
    "image_volume",
    "is_cifti_intent",
    "is_gzip",
    "nifti_version",
    "parse_header",
    "read_volume",
    "volume_ranges",
]

#: The first two bytes of a gzip stream.
GZIP_MAGIC = b"\x1f\x8b"
_NIFTI1_HEADER = 348
_NIFTI2_HEADER = 540
#: NIfTI version → size of its header in bytes (its ``sizeof_hdr`` field).
HEADER_SIZE = {1: _NIFTI1_HEADER, 2: _NIFTI2_HEADER}
_IN_CHUNK = 1 << 20  # compressed bytes handed to zlib at a time
_OUT_CHUNK = 4 << 20  # decompressed bytes produced (and dropped, when skipping) at a time
_MAX_VOLUME_BYTES = 2 << 30  # larger single volumes are not decoded


def is_gzip(data: bytes | bytearray | memoryview | SparseBytes) -> bool:
    """Whether ``data`` (a file's first bytes at least) begin a gzip stream."""
    return bytes(data[:2]) == GZIP_MAGIC


def nifti_version(first: bytes | bytearray | memoryview) -> int | None:
    """1 or 2 from the header size field (348 or 540, in either byte order) of a file's first
    (decompressed) bytes; None when they are fewer than 4 or hold another size."""
    if len(first) < 4:
        return None
    for endian in "<>":
        (size,) = struct.unpack(endian + "i", bytes(first[:4]))
        if size == _NIFTI1_HEADER:
            return 1
        if size == _NIFTI2_HEADER:
            return 2
    return None


def is_cifti_intent(header: Any) -> bool:
    """Whether a nibabel header announces CIFTI-2: NIfTI-2 with one of the CIFTI-2 connectivity
    intent codes (NIFTI_INTENT_CONNECTIVITY_*, 3000-3099), the test of ``nib.load``."""
    return int(header["sizeof_hdr"]) == _NIFTI2_HEADER and 3000 <= int(header["intent_code"]) < 3100


def first_bytes(data: bytes | bytearray | memoryview, n: int = _NIFTI2_HEADER) -> bytes:
    """The first ``n`` bytes of the file's content (decompressed if gzip).

    Raises:
        NiftiDecodeError: a corrupt gzip stream.
    """
    view = memoryview(data).cast("B")
    stream = _Inflater(view) if is_gzip(view) else _Plain(view)
    try:
        return bytes(stream.read(n))
    except zlib.error as exc:
        raise NiftiDecodeError(f"corrupt gzip stream ({exc})") from None


#: What the volume readers read: a whole file in memory, or the ranges of one that were kept.
_Held = memoryview | SparseBytes


def _held(data: bytes | bytearray | memoryview | SparseBytes) -> _Held:
    return data if isinstance(data, SparseBytes) else memoryview(data).cast("B")


class _Inflater:
    """Sequential reads of a gzip stream held in memory; skipping decompresses and drops."""

    def __init__(self, view: _Held) -> None:
        self._view = view
        self._pos = 0  # next compressed byte to feed
        self._z = zlib.decompressobj(16 + zlib.MAX_WBITS)
        self._tail = b""  # compressed input zlib has not consumed yet (output limit reached)

    def _produce(self, limit: int) -> bytes:
        while True:
            if self._z.eof:
                # A multi-member gzip file (valid; nibabel reads it): go on with the next member.
                rest = self._z.unused_data + self._tail
                self._tail = b""
                if not rest and self._pos >= len(self._view):
                    return b""
                self._z = zlib.decompressobj(16 + zlib.MAX_WBITS)
                if rest:
                    self._tail = rest
            if self._tail:
                chunk: bytes | memoryview = self._tail
            else:
                chunk = self._view[self._pos : self._pos + _IN_CHUNK]
                self._pos += len(chunk)
                if not len(chunk):
                    return self._z.flush()
            out = self._z.decompress(chunk, limit)
            self._tail = self._z.unconsumed_tail
            if out:
                return out

    def read(self, n: int) -> bytes | memoryview:
        # Straight into one buffer: joining pieces would hold the volume twice.
        out = bytearray(n)
        got = 0
        while got < n:
            piece = self._produce(min(n - got, _OUT_CHUNK))
            if not piece:
                break
            out[got : got + len(piece)] = piece
            got += len(piece)
        return memoryview(out)[:got]

    def skip(self, n: int) -> int:
        done = 0
        while done < n:
            piece = self._produce(min(n - done, _OUT_CHUNK))
            if not piece:
                break
            done += len(piece)
        return done


class _Plain:
    """The same interface over an uncompressed file in memory (zero-copy slices)."""

    def __init__(self, view: _Held) -> None:
        self._view = view
        self._pos = 0

    def read(self, n: int) -> bytes | memoryview:
        out = self._view[self._pos : self._pos + n]
        self._pos += len(out)
        return out

    def skip(self, n: int) -> int:
        step = max(0, min(n, len(self._view) - self._pos))
        self._pos += step
        return step


@dataclass
class Volume:
    """One 3-D volume as stored (values unscaled), with what is needed to show it."""

    data: np.ndarray  # 3-D, as stored (values are scaled per slice, once oriented)
    slope: float | None
    inter: float | None
    affine: np.ndarray
    shape: tuple[int, ...]
    volume: int
    volumes: int


def parse_header(head: bytes) -> Any:
    """The nibabel header of a NIfTI-1 or NIfTI-2 file from its first (decompressed) bytes.

    Raises:
        NiftiDecodeError: not a NIfTI-1/NIfTI-2 header.
    """
    import nibabel as nib

    if len(head) < 4:
        raise NiftiDecodeError(f"not a NIfTI file (only {len(head)} bytes)")
    version = nifti_version(head)
    if version is None:
        raise NiftiDecodeError("not a NIfTI-1/NIfTI-2 file (bad header size field)")
    size = HEADER_SIZE[version]
    cls = nib.Nifti1Header if version == 1 else nib.Nifti2Header
    if len(head) < size:
        raise NiftiDecodeError(f"truncated: {len(head)} bytes, shorter than the header")
    try:
        return cls(bytes(head[:size]), check=False)
    except Exception as exc:  # nibabel's reasons for refusing a header
        raise NiftiDecodeError(f"invalid NIfTI header ({exc})") from None


def _volume_choice(
    shape: tuple[int, ...], itemsize: int, offset: int, gz: bool, max_decompressed: int
) -> tuple[tuple[int, ...], int, int, int]:
    """(spatial shape, number of volumes, the volume shown, bytes per volume) of an image.

    The volume is a 4-D file's middle one (index 0 of any further axis), or for a gzip file an
    earlier one when the middle one ends more than ``max_decompressed`` bytes into the stream.
    """
    spatial = (*shape[:3], *(1,) * (3 - min(3, len(shape))))
    extra = shape[3:]
    volumes = math.prod(extra) if extra else 1
    vol_bytes = math.prod(spatial) * itemsize
    volume = extra[0] // 2 if extra else 0
    if gz and volume:
        affordable = (max_decompressed - offset) // vol_bytes - 1
        volume = max(0, min(volume, affordable))
    return spatial, volumes, volume, vol_bytes


def read_volume(
    data: bytes | bytearray | memoryview | SparseBytes, max_decompressed: int
) -> Volume:
    """One 3-D volume of a NIfTI file held in memory, decompressing no further than needed.

    The volume is chosen by :func:`_volume_choice`; :func:`volume_ranges` says which bytes of
    the file this reads.

    Raises:
        NiftiDecodeError: not NIfTI-1/NIfTI-2, truncated, corrupt gzip, CIFTI-2, no voxels, or a
            volume larger than the file can hold.
    """
    view = _held(data)
    stream: _Inflater | _Plain = _Inflater(view) if is_gzip(view) else _Plain(view)
    head, header, shape, dtype, offset, (slope, inter) = _read_header(stream)
    if not shape or any(d <= 0 for d in shape):
        raise NiftiDecodeError(f"no voxels (data shape {shape})")
    gz = isinstance(stream, _Inflater)
    spatial, volumes, volume, vol_bytes = _volume_choice(
        shape, dtype.itemsize, offset, gz, max_decompressed
    )
    # A damaged header can promise any size: never allocate more for the decompressed volume
    # than the file can hold (deflate expands at most ~1032 times) or a thumbnail is worth.
    # (An uncompressed file is sliced in place; a short one is reported as truncated below.)
    limit = min(_MAX_VOLUME_BYTES, len(view) * 1032)
    if gz and vol_bytes > limit:
        raise NiftiDecodeError(
            f"one volume of shape {spatial} ({vol_bytes} bytes) is more than the file can hold "
            f"or a thumbnail is worth ({limit} bytes)"
        )
    # Volumes are contiguous (Fortran order): the t-th volume of the 4th axis, index 0 of any
    # further axis, is the t-th block of vol_bytes after the offset.
    start = offset + volume * vol_bytes
    try:
        if start >= len(head):
            stream.skip(start - len(head))
            raw: bytes | memoryview = stream.read(vol_bytes)
        else:  # the data begin inside the bytes already read for the header
            raw = head[start:] + bytes(stream.read(vol_bytes - (len(head) - start)))
    except (zlib.error, EOFError) as exc:
        raise NiftiDecodeError(f"corrupt gzip stream ({exc})") from None
    if len(raw) < vol_bytes:
        raise NiftiDecodeError(f"truncated: the data end before volume {volume} is complete")
    arr = np.frombuffer(raw, dtype=dtype, count=math.prod(spatial)).reshape(spatial, order="F")
    return Volume(arr, slope, inter, _affine(header), shape, volume, volumes)


#: How many first bytes of a file :func:`volume_ranges` wants (fewer: the whole file).
VOLUME_PROBE = 1 << 20
#: The default ``max_decompressed`` of thumbnails (write/thumbnails.ThumbnailOptions).
DEFAULT_MAX_DECOMPRESSED = 32 << 20


def volume_ranges(
    first: bytes | bytearray | memoryview, size: int, max_decompressed: int
) -> list[tuple[int, int]]:
    """The ``(start, end)`` byte ranges of a NIfTI file of ``size`` bytes that
    :func:`read_volume` reads, decided from its first bytes (:data:`VOLUME_PROBE` of them, or
    the whole file): so that a file streamed past can be kept in part only.

    An uncompressed file: its first bytes and the volume shown. A gzip file is read from its
    start: the compressed prefix that decompresses to the end of the volume shown (deflate
    expands incompressible data by well under 0.1 %: the bound adds 1/1000 and 1 MiB). First
    bytes that are no image header: those bytes only (:func:`read_volume` says why it refuses
    the file, from them).
    """
    view = memoryview(first).cast("B")
    gz = is_gzip(view)
    stream: _Inflater | _Plain = _Inflater(view) if gz else _Plain(view)
    probe = (0, min(size, len(view)))
    try:
        _, _, shape, dtype, offset, _ = _read_header(stream)
    except NiftiDecodeError:
        return [probe]
    if not shape or any(d <= 0 for d in shape):
        return [probe]
    _, _, volume, vol_bytes = _volume_choice(shape, dtype.itemsize, offset, gz, max_decompressed)
    end = offset + (volume + 1) * vol_bytes
    if gz:
        return [(0, min(size, end + end // 1000 + (1 << 20)))]
    return [probe, (min(size, offset + volume * vol_bytes), min(size, end))]


def _read_header(
    stream: _Inflater | _Plain,
) -> tuple[bytes, Any, tuple[int, ...], np.dtype[Any], int, tuple[Any, Any]]:
    """(the bytes read, the header, data shape, dtype, data offset, (slope, inter)) of a volume
    file: NiftiDecodeError for CIFTI-2 or a header that cannot be decoded."""
    try:
        head = bytes(stream.read(_NIFTI2_HEADER))  # enough for either version
        header = parse_header(head)
        if is_cifti_intent(header):
            raise NiftiDecodeError("a CIFTI-2 file (surface/grayordinate data, not a volume)")
        shape = tuple(int(d) for d in header.get_data_shape())
        dtype = np.dtype(header.get_data_dtype())
        offset = int(header.get_data_offset())
        slope_inter = header.get_slope_inter()
    except NiftiDecodeError:
        raise
    except Exception as exc:  # zlib's, or nibabel's for a damaged header (unknown type code...)
        raise NiftiDecodeError(f"cannot be decoded ({type(exc).__name__}: {exc})") from None
    return head, header, shape, dtype, offset, slope_inter


def as_float(arr: np.ndarray, slope: Any, inter: Any) -> np.ndarray:
    """Voxel values as float32 (scaling applied; RGB as luminance; complex as magnitude)."""
    if arr.dtype.fields:
        names = list(arr.dtype.fields)
        out = sum(arr[name].astype(np.float32) for name in names) / len(names)
        arr = np.asarray(out, dtype=np.float32)
    elif np.iscomplexobj(arr):
        arr = np.abs(arr).astype(np.float32)
    else:
        arr = arr.astype(np.float32)
    with np.errstate(all="ignore"):
        if slope is not None and np.isfinite(slope) and slope != 0:
            arr = arr * np.float32(slope)
        if inter is not None and np.isfinite(inter):
            arr = arr + np.float32(inter)
    return arr


def _affine(header: Any) -> np.ndarray:
    try:
        affine = np.asarray(header.get_best_affine(), dtype=np.float64)
    except Exception:  # a header nibabel cannot make an affine of: show the voxel grid
        affine = np.eye(4)
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        affine = np.eye(4)
    return affine


def image_volume(img: Any) -> Volume:
    """:func:`read_volume` for a nibabel image (its data object is sliced, not loaded whole).

    Raises:
        NiftiDecodeError: the image has no voxels.
    """
    shape = tuple(int(d) for d in img.shape)
    if not shape or any(d <= 0 for d in shape):
        raise NiftiDecodeError(f"no voxels (data shape {shape})")
    extra = shape[3:]
    volume = extra[0] // 2 if extra else 0
    index: tuple[Any, ...] = (slice(None),) * min(3, len(shape))
    index += (volume,) + (0,) * (len(extra) - 1) if extra else ()
    arr = np.asanyarray(img.dataobj[index])
    spatial = (*shape[:3], *(1,) * (3 - min(3, len(shape))))
    arr = arr.reshape(spatial)
    affine = np.asarray(img.affine if img.affine is not None else np.eye(4), dtype=np.float64)
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        affine = np.eye(4)
    return Volume(arr, None, None, affine, shape, volume, math.prod(extra) if extra else 1)
