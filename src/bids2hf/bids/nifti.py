"""Integrity checks of NIfTI-1, NIfTI-2 and CIFTI-2 files, and a reader for embedded values.

A file is accepted when nibabel loads it and reads all of its data, and refused otherwise. The
check gets there without reading the data: it parses the header and its extensions the way
``nibabel.load`` does (same header classes and checks, same walk over the extension blocks, the
CIFTI-2 XML for ``.nii`` files with a CIFTI intent code, the same data offset, shape and type)
and then compares the size the header promises with the size of the file. Levels:

- ``header`` (the default, "cheap"): header, extensions, and for ``.nii.gz`` the length recorded
  in the gzip trailer (ISIZE). Only the header and extensions are decompressed; a file whose
  trailer disagrees with the header (truncated, or a valid multi-member gzip) is decompressed in
  full before it is called broken.
- ``full``: also decompresses every ``.nii.gz`` to its end, which verifies the gzip CRC.
- ``none``: reads the header version when it can, never fails.

Where the verdict deliberately differs from nibabel's, it is stricter, for files that are damaged
although nibabel happens to read them (``tests/test_nifti_real.py`` pins each case down):

- the header size field must be 348 or 540: nibabel recognises NIfTI-1 by its magic string and
  silently repairs any size field, while the NIfTI reference library (FSL, AFNI, ITK) refuses it;
- a ``.nii.gz`` must be a complete gzip stream: nibabel stops reading at the end of the data, so
  it often loads a file whose last bytes (the gzip trailer) are missing, or that has non-zero
  bytes after the gzip stream;
- with ``vox_offset`` 0 (unset) the data must still fit after the header: nibabel reads them from
  byte 0, on top of the header;
- ``--check full`` refuses a CRC mismatch, which nibabel never verifies;
- a ``.nii.gz`` with a CIFTI-2 intent code and extension is checked as CIFTI-2 (its XML must
  parse), as ``load_nifti`` returns a ``Cifti2Image`` for it; ``nib.load`` opens it as NIfTI-2.

What only ``--check full`` catches: damage inside the compressed data of a ``.nii.gz`` whose
trailer is intact (a corrupted byte in the middle of the deflate stream). nibabel fails on most
of these while reading the data; the cheap check cannot see them without decompressing.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import logging
import math
import os
import struct
import zlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import nibabel as nib
import numpy as np
from nibabel import imageglobals
from nibabel.arrayproxy import ArrayProxy, reshape_dataobj
from nibabel.cifti2 import Cifti2Extension, parse_cifti2
from nibabel.cifti2.cifti2 import LimitedNifti2Header

from bids2hf.bids.nifti_reader import load_nifti
from bids2hf.bids.nifti_stream import (
    CIFTI_EXTENSION,
    EXT_FLAG,
    LocalFile,
    NiftiRefused,
    NiftiStream,
    header_class,
    walk_extensions,
)
from bids2hf.bids.options import CheckLevel
from bids2hf.model.image_header import HeaderFacts, NiftiDecodeError, facts_from_header
from bids2hf.model.nifti_bytes import HEADER_SIZE, is_cifti_intent, is_gzip

if TYPE_CHECKING:
    from bids2hf.model.source import NiftiInput

# load_nifti lives in bids/nifti_reader; it is re-exported here, where it was first published.
__all__ = ["NiftiCheck", "check_nifti", "load_nifti"]

_TEXT_FIELDS = ("descrip", "aux_file", "db_name", "intent_name")

# nibabel reports header problems on its own "nibabel.global" logger, which prints to stderr
# (and propagates to the root logger): a second and third line beside the one-line error.
# The problems that matter come back as the exception's message; the rest is silenced here.
_QUIET = logging.getLogger("bids2hf.nibabel-header-checks")
_QUIET.addHandler(logging.NullHandler())
_QUIET.propagate = False

# nibabel's header class for the NIfTI-2 part of a CIFTI-2 file, which tolerates qfac 0 where
# Nifti2Header repairs it. Its name is private: a nibabel that renames it gets Nifti2Header.
_CiftiNiftiHeader: type[nib.Nifti2Header] = getattr(
    parse_cifti2, "_Cifti2AsNiftiHeader", nib.Nifti2Header
)


@dataclass
class NiftiCheck:
    """Outcome of checking one NIfTI file."""

    version: int | None = None  # 1 or 2
    cifti: bool = False  # a CIFTI-2 file (NIfTI-2 with a CIFTI extension); load_nifti → Cifti2Image
    error: str | None = None  # one-line reason when the file is not a usable NIfTI
    text_fields: dict[str, str] = field(
        default_factory=dict
    )  # header strings, for the privacy lint
    facts: HeaderFacts | None = None  # shape, voxel size, TR: for the card (no extra read)


def _data_spec(header: nib.Nifti1Header, cifti_xml: bytes | None) -> tuple[int, int]:
    """(offset, size in bytes) of the data, as nibabel's array proxy would read them.

    Runs the steps of ``nib.load`` that can fail after the header is parsed, minus the data
    read, and raises what they raise: the affine, the array proxy (shape, type, offset,
    scaling) and for CIFTI-2 the XML and the NIfTI-2 header that ``Cifti2Image`` derives.
    """
    # The same proxy nib.load builds: shape, dtype, offset and scaling come from nibabel.
    proxy: Any = ArrayProxy(io.BytesIO(), header.copy())
    header.get_best_affine()
    if cifti_xml is not None:
        # What Cifti2Image.from_file_map and Cifti2Image.__init__ do on top of the NIfTI-2 image.
        matrix = Cifti2Extension(CIFTI_EXTENSION, cifti_xml).get_content().matrix
        proxy = reshape_dataobj(proxy, proxy.shape[4:])
        limited = LimitedNifti2Header.from_header(header, check=False)
        limited.check_fix(logger=_QUIET, error_level=imageglobals.error_level)
        limited.set_data_shape((1, 1, 1, 1, *proxy.shape))
        matrix.get_data_shape()
    shape, dtype = tuple(proxy.shape), np.dtype(proxy.dtype)
    if any(d < 0 for d in shape):
        raise ValueError(f"negative dimension in the data shape {shape}")
    # Reading applies the scaling; one value shows whether it applies to this type.
    np.asanyarray(
        ArrayProxy(io.BytesIO(bytes(dtype.itemsize)), ((1,), dtype, 0, proxy.slope, proxy.inter))
    )
    return int(proxy.offset), math.prod(shape) * dtype.itemsize


def _full_length(path: NiftiInput) -> int:
    """Decompressed length of a gzip file; raises on a bad CRC or truncated stream."""
    total = 0
    with path.open(whole=True) as raw, gzip.GzipFile(fileobj=raw, mode="rb") as f:
        while chunk := f.read(1 << 20):
            total += len(chunk)
    return total


def check_nifti(path: str | NiftiInput, level: CheckLevel = "header") -> NiftiCheck:
    """Check that ``path`` is a NIfTI-1, NIfTI-2 or CIFTI-2 file that can be read in full.

    Never raises for a bad file: the reason is ``NiftiCheck.error`` (one line).

    Args:
        path: file to check (``.nii`` or ``.nii.gz``, including ``.dtseries.nii`` and the like):
            a local path, or a :class:`~bids2hf.model.source.NiftiInput` (a remote file read
            with range requests: the header, then the gzip trailer) [issue 15].
        level: ``"header"`` (cheap: header, extensions and gzip trailer size), ``"full"``
            (decompress all, which verifies the gzip CRC) or ``"none"`` (only read the header
            version when possible, never fail).
    """
    result = NiftiCheck()
    try:
        _check(LocalFile(path) if isinstance(path, str) else path, level, result)
    except NiftiRefused as refused:
        if level != "none":
            result.error = str(refused)
    return result


def _check(path: NiftiInput, level: CheckLevel, result: NiftiCheck) -> None:
    gz = path.name.endswith(".gz")
    try:
        size = path.size()
    except OSError as exc:
        raise NiftiRefused(f"cannot be read ({exc.strerror or exc})") from None
    if size == 0:
        raise NiftiRefused("empty file (a placeholder or an interrupted copy)")
    try:
        with path.open() as raw:
            if gz and not is_gzip(raw.read(2)):
                raise NiftiRefused("named .nii.gz but not gzip-compressed")
            raw.seek(0)
            stream = NiftiStream(raw, gz, size)
            header, cifti_xml = _check_header(stream, gz, level, result)
            # A header nibabel cannot interpret: the card shows "-"; the check below says why.
            with contextlib.suppress(NiftiDecodeError):
                result.facts = facts_from_header(header)
    except PermissionError:
        raise NiftiRefused("cannot be read (permission denied)") from None
    except (OSError, zlib.error, EOFError) as exc:
        if not gz:
            raise NiftiRefused(f"cannot be read ({exc})") from None
        raise NiftiRefused(f"corrupt gzip stream ({exc})") from None
    if level == "none":
        return
    try:
        offset, nbytes = _data_spec(header, cifti_xml)
    except Exception as exc:  # nibabel's own reasons for not reading the data
        kind = "CIFTI-2 file" if result.cifti else f"NIfTI-{result.version} header"
        raise NiftiRefused(f"invalid {kind} ({exc})") from None
    if nbytes == 0:
        return  # nibabel reads nothing, so nothing can be missing
    # vox_offset 0 means "unset"; the data still have to fit after the header.
    expected = max(offset, int(header["sizeof_hdr"]) + EXT_FLAG) + nbytes
    try:
        if not gz:
            if size < expected:
                raise NiftiRefused(f"truncated: {size} bytes, the header needs {expected}")
        elif level == "full":
            actual = _full_length(path)
            if actual < expected:
                raise NiftiRefused(
                    f"truncated: {actual} bytes uncompressed, the header needs {expected}"
                )
        else:
            with path.open() as f:
                f.seek(-4, os.SEEK_END)
                (isize,) = struct.unpack("<I", f.read(4))
            # ISIZE is the length mod 2**32 of the last gzip member only; on a mismatch
            # decompress fully before calling the file broken (multi-member files are valid).
            if isize != expected % 2**32 and _full_length(path) < expected:
                raise NiftiRefused(
                    f"truncated: the data end before the {expected} bytes the header needs"
                )
    except (OSError, zlib.error, EOFError) as exc:
        raise NiftiRefused(f"corrupt or truncated gzip stream ({exc})") from None


def _text_fields(header: nib.Nifti1Header) -> dict[str, str]:
    """The header's free-text fields, for the privacy lint."""
    fields = {}
    for name in _TEXT_FIELDS:
        if name in header:
            value = header[name].item()
            text = value.decode("latin-1", "replace") if isinstance(value, bytes) else str(value)
            text = text.strip("\x00 ")
            if text:
                fields[name] = text
    # The standard name of the intent code is no free text: CIFTI-2 requires it ("ConnDense").
    standard = nib.nifti1.intent_codes.label.get(int(header["intent_code"]))
    if "intent_name" in fields and fields["intent_name"] == standard:
        del fields["intent_name"]
    return fields


def _check_header(
    stream: NiftiStream, gz: bool, level: CheckLevel, result: NiftiCheck
) -> tuple[nib.Nifti1Header, bytes | None]:
    """Parse the header and its extensions as nib.load does; return them (and the CIFTI XML)."""
    head = stream.read(HEADER_SIZE[1])
    found = header_class(head)
    if found is None:
        if is_gzip(head):
            raise NiftiRefused("not a NIfTI-1/NIfTI-2 file (gzip-compressed: name it .nii.gz)")
        if len(head) < 4:
            raise NiftiRefused(f"not a NIfTI-1/NIfTI-2 file (only {len(head)} bytes)")
        (field_value,) = struct.unpack("<i", head[:4])
        raise NiftiRefused(
            f"not a NIfTI-1/NIfTI-2 file (header size field {field_value}, neither 348 nor 540)"
        )
    result.version, header_cls = found
    header_size = HEADER_SIZE[result.version]
    head += stream.read(header_size - len(head))
    if len(head) < header_size:
        raise NiftiRefused(
            f"truncated: {len(head)} bytes, shorter than a NIfTI-{result.version} header"
        )
    try:
        header = header_cls(head, check=False)
        result.text_fields = _text_fields(header)
        cifti_intent = is_cifti_intent(header)
        if level == "none":
            result.cifti = cifti_intent
            return header, None
        # The checks nibabel runs on load, with its repairs of minor problems; the logger is
        # quiet because the problems that stop a load come back as the exception's message.
        header.check_fix(logger=_QUIET, error_level=imageglobals.error_level)
    except Exception as exc:
        raise NiftiRefused(f"invalid NIfTI-{result.version} header ({exc})") from None
    cifti_xml = None
    flag = stream.read(EXT_FLAG)
    if len(flag) == EXT_FLAG and flag[:1] != b"\x00":
        room = float(header["vox_offset"]) - stream.pos
        try:
            cifti_xml = walk_extensions(stream, room, header.endianness)
        except NiftiRefused as refused:
            raise NiftiRefused(f"invalid NIfTI-{result.version} header ({refused})") from None
    if cifti_intent and cifti_xml is None and not gz:
        # nib.load opens such a .nii as CIFTI-2 and fails without the extension.
        raise NiftiRefused(
            f"invalid CIFTI-2 file (intent code {int(header['intent_code'])} "
            "but no CIFTI-2 extension)"
        )
    # A .nii.gz with a CIFTI-2 extension is CIFTI-2 too: load_nifti returns a Cifti2Image for
    # it (nib.load would open it as plain NIfTI-2), so its XML is checked like a .nii's.
    result.cifti = cifti_intent and cifti_xml is not None
    if not result.cifti:
        return header, None
    # Parsed again with nibabel's CIFTI-2 header class, whose repairs differ (qfac 0 is kept);
    # the problems that stop a load are the same, so this raises nothing new.
    header = _CiftiNiftiHeader(head, check=False)
    header.check_fix(logger=_QUIET, error_level=imageglobals.error_level)
    return header, cifti_xml
