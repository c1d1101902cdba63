"""Thumbnails: orientation (neurological, anterior/superior up), 4-D, NIfTI-2, odd inputs."""

from __future__ import annotations

import gzip
import io
import math

import nibabel as nib
import numpy as np
import pytest
from nibabel.orientations import axcodes2ornt, ornt_transform
from PIL import Image

from bids2hf.write.thumbnails import (
    ThumbnailError,
    ThumbnailOptions,
    mid_slices,
    thumbnail_image,
    thumbnail_png,
)

SHAPE = (20, 24, 16)  # R, A, S extents differ, so a swapped axis shows in the panel shapes
BRIGHT, DARK = 1000.0, 10.0


def ras_volume() -> np.ndarray:
    """Dark volume with a bright block in the left-anterior-superior octant, through the middle.

    In RAS voxel order: x grows to the subject's right, y to the front, z up. The block covers
    x < middle (left), y >= middle (anterior), z >= middle (superior), and contains each
    mid-slice index, so every view cuts through it.
    """
    nx, ny, nz = SHAPE
    vol = np.full(SHAPE, DARK, dtype=np.float32)
    vol[: nx // 2 + 1, ny // 2 :, nz // 2 :] = BRIGHT
    return vol


def ras_affine(zooms: tuple[float, float, float]) -> np.ndarray:
    affine = np.diag([*zooms, 1.0])
    affine[:3, 3] = -np.array(SHAPE) * np.array(zooms) / 2
    return affine


def lps_image(zooms: tuple[float, float, float] = (2.0, 2.0, 2.0)) -> nib.Nifti1Image:
    """The RAS volume stored left-posterior-superior, built by hand (not with nibabel's reorient)."""
    data = ras_volume()[::-1, ::-1, :]
    affine = ras_affine(zooms)
    # Voxel i of the flipped x axis is voxel (nx-1-i) of the original: x_world decreases with i.
    affine[0, 0], affine[1, 1] = -zooms[0], -zooms[1]
    affine[0, 3] += (SHAPE[0] - 1) * zooms[0]
    affine[1, 3] += (SHAPE[1] - 1) * zooms[1]
    img = nib.Nifti1Image(np.ascontiguousarray(data), affine)
    assert nib.aff2axcodes(img.affine) == ("L", "P", "S")
    return img


def reoriented(codes: str, zooms: tuple[float, float, float] = (2.0, 2.0, 2.0)) -> nib.Nifti1Image:
    """The RAS volume stored with voxel axes ``codes`` (e.g. "PIR"), same world positions."""
    img = nib.Nifti1Image(ras_volume(), ras_affine(zooms))
    out = img.as_reoriented(ornt_transform(axcodes2ornt("RAS"), axcodes2ornt(tuple(codes))))
    assert "".join(nib.aff2axcodes(out.affine)) == codes
    return nib.Nifti1Image(np.asanyarray(out.dataobj), out.affine)


def nifti_bytes(img: nib.Nifti1Image | nib.Nifti2Image, gz: bool = False) -> bytes:
    raw = img.to_bytes()
    return gzip.compress(raw, compresslevel=1) if gz else raw


def bright_quadrant(panel: np.ndarray) -> tuple[str, str]:
    """("top"|"bottom", "left"|"right") of the brightest quadrant of a displayed panel."""
    h, w = panel.shape
    quads = {
        (v, u): float(np.mean(panel[rows, cols]))
        for v, rows in (("top", slice(0, h // 2)), ("bottom", slice(h - h // 2, h)))
        for u, cols in (("left", slice(0, w // 2)), ("right", slice(w - w // 2, w)))
    }
    return max(quads, key=lambda k: quads[k])


def assert_expected_views(slices_: object) -> None:
    from bids2hf.write.thumbnails import Slices

    assert isinstance(slices_, Slices)
    nx, ny, nz = SHAPE
    # Rows x columns as displayed: axial A x R, coronal S x R, sagittal S x A.
    assert slices_.axial.shape == (ny, nx)
    assert slices_.coronal.shape == (nz, nx)
    assert slices_.sagittal.shape == (nz, ny)
    # Axial: left on the left, anterior at the top. Coronal: left on the left, superior at the
    # top. Sagittal: anterior on the left, superior at the top.
    assert bright_quadrant(slices_.axial) == ("top", "left")
    assert bright_quadrant(slices_.coronal) == ("top", "left")
    assert bright_quadrant(slices_.sagittal) == ("top", "left")


@pytest.mark.parametrize("codes", ["RAS", "LPS", "PIR", "ILA", "SRP"])
@pytest.mark.parametrize("gz", [False, True])
def test_block_lands_where_it_belongs(codes: str, gz: bool) -> None:
    img = lps_image() if codes == "LPS" else reoriented(codes)
    assert_expected_views(mid_slices(nifti_bytes(img, gz)))
    assert_expected_views(mid_slices(img))  # the same from a nibabel image


def test_storage_order_really_differs() -> None:
    # Guard against a fixture that stores everything as RAS: the raw arrays differ.
    ras = ras_volume()
    assert not np.array_equal(np.asanyarray(lps_image().dataobj), ras)
    assert np.asanyarray(reoriented("PIR").dataobj).shape == (SHAPE[1], SHAPE[2], SHAPE[0])


def panel_boxes(strip: Image.Image, widths: list[int]) -> list[np.ndarray]:
    pixels = np.asarray(strip)
    boxes, x = [], 0
    for w in widths:
        boxes.append(pixels[:, x : x + w])
        x += w + 4
    assert x - 4 == strip.width
    return boxes


def test_png_strip_shows_the_block_top_left_in_every_panel() -> None:
    opts = ThumbnailOptions(height=160, labels=False)
    strip = Image.open(io.BytesIO(thumbnail_png(nifti_bytes(reoriented("PIR"), gz=True), opts)))
    assert strip.format == "PNG" and strip.mode == "L" and strip.height == 160
    # Isotropic 2 mm voxels; the tallest panel is the axial one (24 voxels of A) -> 160 px.
    scale = 160 / 24
    widths = [round(20 * scale), round(20 * scale), round(24 * scale)]
    heights = (160, round(16 * scale), round(16 * scale))
    for panel, height in zip(panel_boxes(strip, widths), heights, strict=True):
        top = (strip.height - height) // 2
        assert bright_quadrant(panel[top : top + height]) == ("top", "left")


def test_voxel_sizes_set_the_aspect() -> None:
    # 1 x 1 x 4 mm voxels: superior-inferior is 64 mm, anterior-posterior 24 mm.
    opts = ThumbnailOptions(height=128, labels=False)
    strip = thumbnail_image(reoriented("LAS", zooms=(1.0, 1.0, 4.0)), opts)
    scale = 128 / 64  # px per mm, set by the tallest panel (coronal and sagittal, 64 mm)
    expected = [round(20 * scale), round(20 * scale), round(24 * scale)]
    assert strip.size == (sum(expected) + 8, 128)
    # Bounded width: the same image squeezed into 100 px keeps its proportions.
    narrow = thumbnail_image(
        reoriented("LAS", zooms=(1.0, 1.0, 4.0)), ThumbnailOptions(max_width=100)
    )
    assert narrow.width <= 100 and narrow.height < 128


def test_labels_say_which_side_is_which() -> None:
    plain = np.asarray(thumbnail_image(reoriented("RAS"), ThumbnailOptions(labels=False)))
    labelled = np.asarray(thumbnail_image(reoriented("RAS"), ThumbnailOptions(labels=True)))
    changed = np.argwhere(plain != labelled)
    assert changed.size, "letters are drawn"
    # Along the top edge of each panel (the shorter ones are centred vertically), from the strip's
    # left edge (the "L" of the axial panel) to its right edge (the "P" of the sagittal one).
    assert changed[:, 0].max() < plain.shape[0] // 3
    assert changed[:, 1].min() < 12 and changed[:, 1].max() > plain.shape[1] - 12


def series(n_vols: int, shape: tuple[int, int, int] = SHAPE) -> np.ndarray:
    """4-D data whose volume t is filled with t (plus the block pattern on top)."""
    base = ras_volume() if shape == SHAPE else np.zeros(shape, dtype=np.float32)
    return np.stack([base + t for t in range(n_vols)], axis=-1).astype(np.float32)


@pytest.mark.parametrize("gz", [False, True])
def test_4d_shows_the_middle_volume(gz: bool) -> None:
    img = nib.Nifti1Image(series(9), ras_affine((2.0, 2.0, 2.0)))
    s = mid_slices(nifti_bytes(img, gz))
    assert (s.volume, s.volumes) == (4, 9)
    assert float(s.axial.min()) == DARK + 4
    assert_expected_views(s)


def test_4d_gzip_stays_within_the_decompression_budget() -> None:
    # Random int16 volumes (incompressible, 256 KiB each, so the reads cross zlib's input and
    # output chunks): the middle volume (20 of 40) ends 5.25 MiB in. With a 2 MiB budget, the
    # last volume that ends within it is shown: 352 + 7 * 256 KiB <= 2 MiB < 352 + 8 * 256 KiB.
    rng = np.random.default_rng(0)
    data = rng.integers(0, 1000, size=(64, 64, 32, 40), dtype=np.int16)
    blob = nifti_bytes(nib.Nifti1Image(data, np.eye(4)), gz=True)
    full = mid_slices(blob)
    budget = mid_slices(blob, ThumbnailOptions(max_decompressed=2 << 20))
    assert (full.volume, budget.volume) == (20, 6)
    for s in (full, budget):
        expected = data[:, :, 16, s.volume].T[::-1, :].astype(np.float32)
        np.testing.assert_array_equal(s.axial, expected)
    # Uncompressed files are sliced in place: no budget applies.
    assert (
        mid_slices(
            nifti_bytes(nib.Nifti1Image(data, np.eye(4))), ThumbnailOptions(max_decompressed=1)
        ).volume
        == 20
    )


def test_multi_member_gzip() -> None:
    raw = nifti_bytes(nib.Nifti1Image(series(5), ras_affine((2.0, 2.0, 2.0))))
    cut = len(raw) // 3
    blob = gzip.compress(raw[:cut]) + gzip.compress(raw[cut:])
    s = mid_slices(blob)
    assert s.volume == 2 and float(s.axial.min()) == DARK + 2


@pytest.mark.parametrize("gz", [False, True])
def test_nifti2(gz: bool) -> None:
    img = reoriented("PIR")
    img2 = nib.Nifti2Image(np.asanyarray(img.dataobj), img.affine)
    blob = nifti_bytes(img2, gz)
    assert int.from_bytes(gzip.decompress(blob)[:4] if gz else blob[:4], "little") == 540
    assert_expected_views(mid_slices(blob))


def test_scaling_and_integer_types() -> None:
    img = nib.Nifti1Image((ras_volume() / 10).astype(np.int16), ras_affine((2.0, 2.0, 2.0)))
    img.header.set_slope_inter(10.0, 5.0)
    s = mid_slices(nifti_bytes(img, gz=True))
    assert float(s.axial.max()) == BRIGHT + 5 and float(s.axial.min()) == DARK + 5


@pytest.mark.parametrize(
    "data",
    [
        np.arange(20 * 24, dtype=np.float32).reshape(20, 24),  # 2-D
        np.full((8, 8, 8), 7.0, dtype=np.float32),  # constant
        np.zeros((8, 8, 8), dtype=np.uint8),  # all zero
        np.where(np.arange(512).reshape(8, 8, 8) % 3, np.nan, 1.0).astype(np.float32),  # NaNs
        np.full((4, 4, 4), np.nan, dtype=np.float32),  # only NaNs
        np.array([[[np.inf, -np.inf], [1.0, 2.0]]], dtype=np.float64),  # infinities
        np.ones((1, 1, 1), dtype=np.int16),  # one voxel
        np.ones((6, 5, 4, 3, 2), dtype=np.int16),  # 5-D
        (np.ones((6, 5, 4)) * (1 + 2j)).astype(np.complex64),  # complex
    ],
    ids=["2d", "constant", "zeros", "nans", "all-nan", "inf", "one-voxel", "5d", "complex"],
)
def test_degenerate_inputs_give_a_picture(data: np.ndarray) -> None:
    for gz in (False, True):
        png = thumbnail_png(nifti_bytes(nib.Nifti1Image(data, np.eye(4)), gz))
        picture = Image.open(io.BytesIO(png))
        picture.load()
        assert picture.width >= 3 and picture.height >= 1


def test_constant_non_zero_image_is_visible() -> None:
    s = np.asarray(
        thumbnail_image(
            nib.Nifti1Image(np.full((8, 8, 8), 7.0), np.eye(4)), ThumbnailOptions(labels=False)
        )
    )
    assert s.max() == 128


def test_rgb_image() -> None:
    rgb = np.zeros((6, 5, 4), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    rgb["R"] = 90
    png = thumbnail_png(nifti_bytes(nib.Nifti1Image(rgb, np.eye(4))))
    assert Image.open(io.BytesIO(png)).size[0] > 0


def test_singular_affine_falls_back_to_voxel_axes() -> None:
    img = nib.Nifti1Image(ras_volume(), np.eye(4))
    img.header.set_qform(None, code=0)
    img.header.set_sform(np.eye(4), code=2)
    for row in ("srow_x", "srow_y", "srow_z"):
        img.header[row] = 0  # an all-zero sform, as some converters write
    img.header.set_data_offset(352)
    blob = img.header.binaryblock + bytes(4) + ras_volume().tobytes(order="F")
    assert not np.any(nib.Nifti1Image.from_bytes(blob).affine[:3, :3])
    assert_expected_views(mid_slices(blob))


@pytest.mark.parametrize(
    ("blob", "reason"),
    [
        (b"", "not a NIfTI"),
        (b"hello world, not an image at all", "not a NIfTI"),
        (gzip.compress(b"x" * 1000), "not a NIfTI"),
    ],
)
def test_not_nifti_raises_thumbnail_error(blob: bytes, reason: str) -> None:
    with pytest.raises(ThumbnailError, match=reason):
        thumbnail_png(blob)


def test_truncated_and_corrupt_files_raise_thumbnail_error() -> None:
    raw = nifti_bytes(nib.Nifti1Image(ras_volume(), np.eye(4)))
    with pytest.raises(ThumbnailError, match="truncated"):
        thumbnail_png(raw[: len(raw) // 2])
    gz = gzip.compress(raw)
    with pytest.raises(ThumbnailError, match="truncated"):
        thumbnail_png(gz[: len(gz) // 2])
    # Damage inside the deflate stream: zlib refuses most, and the gzip CRC (in the trailer,
    # never reached) cannot catch the rest; either way nothing but ThumbnailError escapes.
    refused = 0
    for at in range(10, len(gz) - 8, max(1, len(gz) // 50)):
        broken = bytearray(gz)
        broken[at : at + 16] = bytes(b ^ 0xFF for b in broken[at : at + 16])
        try:
            thumbnail_png(bytes(broken))
        except ThumbnailError:
            refused += 1
    assert refused > 0


def test_cifti_is_refused() -> None:
    img = nib.Nifti2Image(np.zeros((1, 1, 1, 1, 3, 4), dtype=np.float32), np.eye(4))
    img.header["intent_code"] = 3006
    with pytest.raises(ThumbnailError, match="CIFTI"):
        thumbnail_png(nifti_bytes(img))


def test_thumbnail_size_is_bounded() -> None:
    big = nib.Nifti1Image(
        np.random.default_rng(1).random((96, 96, 60), dtype=np.float32),
        np.diag([2.0, 2.0, 2.5, 1.0]),
    )
    png = thumbnail_png(nifti_bytes(big, gz=True))
    picture = Image.open(io.BytesIO(png))
    assert picture.height == 160 and picture.width <= 720
    assert len(png) < 200_000
    assert math.isfinite(len(png))
