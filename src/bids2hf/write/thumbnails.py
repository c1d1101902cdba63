"""Thumbnails of NIfTI images: three orthogonal mid-slices side by side in one small PNG.

Made from the bytes the writer already holds in memory (plain or gzip-compressed), never from a
second read of the file, and cheaply: only the data up to the end of the one volume shown are
decompressed (a 4-D file's middle volume, or an earlier one when the middle lies further into
the gzip stream than ``ThumbnailOptions.max_decompressed``).

Orientation: the volume is reoriented to RAS+ with nibabel (``io_orientation``: the voxel axes
closest to the scanner axes; oblique acquisitions are shown along those). Panels, left to right:

- axial (middle of the inferior-superior axis), seen from above: subject's left on the image's
  left, anterior at the top (neurological convention);
- coronal (middle of the posterior-anterior axis), seen from behind: subject's left on the
  left, superior at the top (neurological convention);
- sagittal (middle of the left-right axis), seen from the subject's left: anterior on the left,
  superior at the top.

Small letters at the panels' edges (L/R, A/P) say so in the picture itself. Pixels are square
in millimetres (each panel is resampled with Pillow using the voxel sizes), all panels share one
scale, and intensities are windowed between two percentiles of the shown slices.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias

import numpy as np

from bids2hf.model.nifti_bytes import (
    DEFAULT_MAX_DECOMPRESSED,
    NiftiDecodeError,
    Volume,
    as_float,
    image_volume,
    read_volume,
)
from bids2hf.model.sparse_bytes import SparseBytes

if TYPE_CHECKING:
    from nibabel.spatialimages import SpatialImage
    from PIL import Image

__all__ = [
    "Slices",
    "ThumbnailError",
    "ThumbnailOptions",
    "mid_slices",
    "thumbnail_image",
    "thumbnail_png",
]

#: What a thumbnail can be made from: the file's bytes (plain or gzip) or a nibabel image.
Source: TypeAlias = "bytes | bytearray | memoryview | SparseBytes | SpatialImage"

_GAP = 4  # pixels between panels


#: What the thumbnail functions raise for bytes they cannot show (the message says why).
ThumbnailError = NiftiDecodeError


@dataclass(frozen=True)
class ThumbnailOptions:
    """How thumbnails look and what they may cost.

    Attributes:
        height: height of the strip in pixels (the tallest panel); 128-256 suits the Hub.
        max_width: the strip is scaled down further when its three panels would be wider.
        low_percentile, high_percentile: intensity window (of the finite values shown).
        labels: draw the orientation letters (L/R on axial and coronal, A/P on sagittal).
        max_decompressed: for 4-D gzip files, decompress at most about this many bytes: the
            middle volume is shown if it ends within them, else the last volume that does.
    """

    height: int = 160
    max_width: int = 720
    low_percentile: float = 1.0
    high_percentile: float = 99.0
    labels: bool = True
    max_decompressed: int = DEFAULT_MAX_DECOMPRESSED


@dataclass
class Slices:
    """The three display-oriented mid-slices of a volume (rows top to bottom, columns left to
    right, as shown), with the size of their pixels in millimetres and what was shown."""

    axial: np.ndarray
    coronal: np.ndarray
    sagittal: np.ndarray
    #: (column spacing, row spacing) in mm of each panel, in the order axial, coronal, sagittal.
    spacing: tuple[tuple[float, float], tuple[float, float], tuple[float, float]]
    shape: tuple[int, ...]  # the image's full data shape
    volume: int  # index of the volume shown (0 for 3-D)
    volumes: int  # number of volumes (1 for 3-D)

    @property
    def panels(self) -> list[np.ndarray]:
        return [self.axial, self.coronal, self.sagittal]


# -- orientation and slices -----------------------------------------------------------------


def _to_ras(vol: Volume) -> tuple[np.ndarray, tuple[float, float, float]]:
    """The volume with its axes reordered and flipped to R, A, S; and the voxel sizes (mm)."""
    from nibabel.orientations import apply_orientation, io_orientation

    zooms = np.sqrt((vol.affine[:3, :3] ** 2).sum(axis=0))
    zooms = np.where(np.isfinite(zooms) & (zooms > 0), zooms, 1.0)
    try:
        ornt = io_orientation(vol.affine)
    except Exception:  # a singular affine: keep the voxel axes as they are
        ornt = np.array([[0, 1], [1, 1], [2, 1]], dtype=float)
    if np.isnan(ornt).any() or sorted(ornt[:, 0].astype(int).tolist()) != [0, 1, 2]:
        ornt = np.array([[0, 1], [1, 1], [2, 1]], dtype=float)
    ras = apply_orientation(vol.data, ornt)
    sizes = [1.0, 1.0, 1.0]
    for axis, (target, _flip) in enumerate(ornt):
        sizes[int(target)] = float(zooms[axis])
    return np.asarray(ras), (sizes[0], sizes[1], sizes[2])


def mid_slices(source: Source, options: ThumbnailOptions | None = None) -> Slices:
    """The axial, coronal and sagittal mid-slices, oriented for display (see module docstring).

    Args:
        source: the NIfTI-1/NIfTI-2 file's bytes (``.nii`` or ``.nii.gz``), or a nibabel image.
        options: only ``max_decompressed`` matters here.

    Raises:
        ThumbnailError: the bytes are not a NIfTI volume (not NIfTI, truncated, corrupt gzip,
            CIFTI-2, no voxels).
    """
    options = options or ThumbnailOptions()
    if isinstance(source, (bytes, bytearray, memoryview, SparseBytes)):
        vol = read_volume(source, options.max_decompressed)
    else:
        vol = image_volume(source)
    ras, (zx, zy, zz) = _to_ras(vol)
    nx, ny, nz = ras.shape

    # Array axes are now x→Right, y→Anterior, z→Superior. Rows are drawn top to bottom, so the
    # axis that points up on screen is reversed; x increasing to the right puts the subject's
    # left on the image's left (neurological).
    # Only the three slices are converted to float (a whole T1 would take 40 ms more).
    def shown(panel: np.ndarray) -> np.ndarray:
        return as_float(panel, vol.slope, vol.inter)

    return Slices(
        axial=shown(ras[:, :, nz // 2].T[::-1, :]),
        coronal=shown(ras[:, ny // 2, :].T[::-1, :]),
        sagittal=shown(ras[nx // 2, :, :].T[::-1, ::-1]),  # anterior on the left
        spacing=((zx, zy), (zx, zz), (zy, zz)),
        shape=vol.shape,
        volume=vol.volume,
        volumes=vol.volumes,
    )


# -- the picture ----------------------------------------------------------------------------


def _window(panels: Sequence[np.ndarray], low: float, high: float) -> list[np.ndarray]:
    """8-bit panels, intensities windowed between two percentiles of their finite values."""
    finite = np.concatenate([p[np.isfinite(p)].ravel() for p in panels])
    lo = hi = 0.0
    if finite.size:
        lo, hi = (float(v) for v in np.percentile(finite, [low, high]))
        if not hi > lo:
            lo, hi = float(finite.min()), float(finite.max())
    out = []
    for p in panels:
        if hi > lo:
            with np.errstate(all="ignore"):  # damaged data may overflow: clipped below
                scaled = (p - lo) * (255.0 / (hi - lo))
            scaled = np.nan_to_num(scaled, nan=0.0, posinf=255.0, neginf=0.0)
            out.append(np.clip(scaled, 0, 255).astype(np.uint8))
        else:  # constant (or empty) image: flat, mid-grey if non-zero so it can be seen
            level = 128 if finite.size and hi != 0 else 0
            out.append(np.full(p.shape, level, dtype=np.uint8))
    return out


def _label(draw: Any, box: tuple[int, int, int, int], left: str, right: str) -> None:
    from PIL import ImageFont

    x0, y0, x1, y1 = box
    if x1 - x0 < 24 or y1 - y0 < 14:
        return  # too small to carry letters
    font = ImageFont.load_default()
    for text, at_right in ((left, False), (right, True)):
        bbox = draw.textbbox((0, 0), text, font=font)
        x = x1 - 2 - (bbox[2] - bbox[0]) if at_right else x0 + 2
        draw.text((x, y0 + 1), text, fill=255, font=font, stroke_width=1, stroke_fill=0)


def thumbnail_image(source: Source, options: ThumbnailOptions | None = None) -> Image.Image:
    """The three mid-slices side by side as one 8-bit greyscale PIL image.

    Raises:
        ThumbnailError: as :func:`mid_slices`.
    """
    from PIL import Image, ImageDraw

    options = options or ThumbnailOptions()
    slices = mid_slices(source, options)
    panels = _window(slices.panels, options.low_percentile, options.high_percentile)
    extents = [
        (p.shape[1] * sx, p.shape[0] * sy)
        for p, (sx, sy) in zip(panels, slices.spacing, strict=True)
    ]
    tallest = max(h for _, h in extents)
    wide = sum(w for w, _ in extents)
    scale = options.height / tallest  # pixels per millimetre, shared by the panels
    room = options.max_width - _GAP * (len(panels) - 1)
    if wide * scale > room:
        scale = room / wide
    sizes = [(max(1, round(w * scale)), max(1, round(h * scale))) for w, h in extents]
    height = max(h for _, h in sizes)
    canvas = Image.new("L", (sum(w for w, _ in sizes) + _GAP * (len(panels) - 1), height), 0)
    draw = ImageDraw.Draw(canvas)
    x = 0
    for panel, (w, h), letters in zip(
        panels, sizes, (("L", "R"), ("L", "R"), ("A", "P")), strict=True
    ):
        picture = Image.fromarray(np.ascontiguousarray(panel), mode="L")
        picture = picture.resize((w, h), Image.Resampling.BILINEAR)
        top = (height - h) // 2
        canvas.paste(picture, (x, top))
        if options.labels:
            _label(draw, (x, top, x + w, top + h), *letters)
        x += w + _GAP
    return canvas


def thumbnail_png(source: Source, options: ThumbnailOptions | None = None) -> bytes:
    """:func:`thumbnail_image` encoded as PNG.

    Raises:
        ThumbnailError: as :func:`mid_slices`.
    """
    buf = io.BytesIO()
    thumbnail_image(source, options).save(buf, format="PNG")
    return buf.getvalue()
