"""Cheap and full integrity checks of NIfTI files, and a reader that handles NIfTI-2.

The cheap check reads the header (gunzipping only the first few KB) and compares the size the
header promises with the size recorded in the gzip trailer, which catches truncated downloads
without decompressing the whole file. ``full`` decompresses everything, which also verifies the
gzip CRC.
"""

from __future__ import annotations

import gzip
import io
import logging
import math
import os
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any, Literal

import nibabel as nib
from nibabel import imageglobals

CheckLevel = Literal["none", "header", "full"]

_NIFTI1_HEADER = 348
_NIFTI2_HEADER = 540
_TEXT_FIELDS = ("descrip", "aux_file", "db_name", "intent_name")

# nibabel reports header problems on its own "nibabel.global" logger, which prints to stderr
# (and propagates to the root logger): a second and third line beside the one-line error.
# The problems that matter come back as the exception's message; the rest is silenced here.
_QUIET = logging.getLogger("bids2hf.nibabel-header-checks")
_QUIET.addHandler(logging.NullHandler())
_QUIET.propagate = False


@dataclass
class NiftiCheck:
    """Outcome of checking one NIfTI file."""

    version: int | None = None  # 1 or 2
    error: str | None = None  # one-line reason when the file is not a usable NIfTI
    text_fields: dict[str, str] = field(
        default_factory=dict
    )  # header strings, for the privacy lint


def _header_class(first: bytes) -> tuple[int, type[nib.Nifti1Header]] | None:
    for endian in "<>":
        (sizeof_hdr,) = struct.unpack(endian + "i", first[:4])
        if sizeof_hdr == _NIFTI1_HEADER:
            return 1, nib.Nifti1Header
        if sizeof_hdr == _NIFTI2_HEADER:
            return 2, nib.Nifti2Header
    return None


def _read_head(path: str, gz: bool) -> bytes:
    with open(path, "rb") as raw:
        if not gz:
            return raw.read(_NIFTI2_HEADER + 16)
        decomp = zlib.decompressobj(wbits=31)
        out = b""
        while len(out) < _NIFTI2_HEADER:
            chunk = raw.read(65536)
            if not chunk:
                break
            out += decomp.decompress(chunk, _NIFTI2_HEADER + 16 - len(out))
            while decomp.unconsumed_tail and len(out) < _NIFTI2_HEADER:
                out += decomp.decompress(decomp.unconsumed_tail, _NIFTI2_HEADER + 16 - len(out))
        return out


def _full_length(path: str) -> int:
    """Decompressed length of a gzip file; raises on a bad CRC or truncated stream."""
    total = 0
    with gzip.open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            total += len(chunk)
    return total


def check_nifti(path: str, level: CheckLevel = "header") -> NiftiCheck:
    """Check that ``path`` is a complete NIfTI-1 or NIfTI-2 file.

    Args:
        path: file to check (``.nii`` or ``.nii.gz``).
        level: ``"header"`` (cheap: header plus gzip trailer size), ``"full"`` (decompress all)
            or ``"none"`` (only read the header version when possible, never fail).
    """
    result = NiftiCheck()
    gz = path.endswith(".gz")
    try:
        size = os.path.getsize(path)
    except OSError as exc:
        if level != "none":
            result.error = f"cannot be read ({exc.strerror or exc})"
        return result
    if size == 0:
        if level != "none":
            result.error = "empty file (a placeholder or an interrupted copy)"
        return result
    try:
        if gz:
            with open(path, "rb") as f:
                if f.read(2) != b"\x1f\x8b":
                    if level != "none":
                        result.error = "named .nii.gz but not gzip-compressed"
                    return result
        head = _read_head(path, gz)
    except PermissionError:
        if level != "none":
            result.error = "cannot be read (permission denied)"
        return result
    except (OSError, zlib.error, EOFError) as exc:
        if level != "none":
            result.error = f"corrupt gzip stream ({exc})"
        return result
    found = _header_class(head) if len(head) >= 4 else None
    if found is None:
        if level != "none":
            result.error = "not a NIfTI-1/NIfTI-2 file (bad header size field)"
        return result
    result.version, header_cls = found
    try:
        header = header_cls.from_fileobj(io.BytesIO(head), check=False)
        header.check_fix(logger=_QUIET, error_level=imageglobals.error_level)
    except Exception as exc:
        if level != "none":
            result.error = f"invalid NIfTI-{result.version} header ({exc})"
        return result
    for name in _TEXT_FIELDS:
        if name in header:
            value = header[name].item()
            text = value.decode("latin-1", "replace") if isinstance(value, bytes) else str(value)
            text = text.strip("\x00 ")
            if text:
                result.text_fields[name] = text
    if level == "none":
        return result
    # Single-file NIfTI data start at vox_offset, which writers may leave at 0 to mean "right
    # after the header and its 4-byte extension flag" (352 / 544 bytes).
    offset = max(int(header["vox_offset"]), int(header["sizeof_hdr"]) + 4)
    expected = offset + math.prod(header.get_data_shape()) * int(header.get_data_dtype().itemsize)
    try:
        if not gz:
            if size < expected:
                result.error = f"truncated: {size} bytes, the header needs {expected}"
        elif level == "full":
            actual = _full_length(path)
            if actual < expected:
                result.error = (
                    f"truncated: {actual} bytes uncompressed, the header needs {expected}"
                )
        else:
            with open(path, "rb") as f:
                f.seek(-4, os.SEEK_END)
                (isize,) = struct.unpack("<I", f.read(4))
            # ISIZE is the length mod 2**32 of the last gzip member only; on a mismatch
            # decompress fully before calling the file broken (multi-member files are valid).
            if isize != expected % 2**32 and _full_length(path) < expected:
                result.error = (
                    f"truncated: the data end before the {expected} bytes the header needs"
                )
    except (OSError, zlib.error, EOFError) as exc:
        result.error = f"corrupt or truncated gzip stream ({exc})"
    return result


def load_nifti(value: Any) -> Any:
    """Open an embedded NIfTI-1 or NIfTI-2 image with nibabel.

    ``datasets``' own ``Nifti`` feature only decodes NIfTI-1; columns that hold NIfTI-2 files
    (HCP/CIFTI outputs) are published with ``Nifti(decode=False)`` and read with this function::

        ds = load_dataset("ORG/NAME", split="train")
        img = bids2hf.load_nifti(ds[0]["func_bold"][0])

    Args:
        value: a ``{"bytes": ..., "path": ...}`` dict as stored, raw bytes, or a local path.
    """
    if isinstance(value, (str, os.PathLike)):
        return nib.load(os.fspath(value))
    data = value["bytes"] if isinstance(value, dict) else value
    if data is None:
        raise ValueError("this value holds no embedded bytes")
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    found = _header_class(data[:4])
    if found is not None and found[0] == 2:
        return nib.Nifti2Image.from_bytes(data)
    return nib.Nifti1Image.from_bytes(data)
