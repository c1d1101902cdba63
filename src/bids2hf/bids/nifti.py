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
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, BinaryIO

import nibabel as nib
import numpy as np
from nibabel import imageglobals
from nibabel.arrayproxy import ArrayProxy, reshape_dataobj
from nibabel.cifti2 import Cifti2Extension, parse_cifti2
from nibabel.cifti2.cifti2 import LimitedNifti2Header
from nibabel.filebasedimages import FileBasedImage

from bids2hf.bids.options import CheckLevel
from bids2hf.model.image_header import HeaderFacts, NiftiDecodeError, facts_from_header

if TYPE_CHECKING:
    from bids2hf.model.source import NiftiInput

__all__ = ["NiftiCheck", "check_nifti", "load_nifti"]

_NIFTI1_HEADER = 348
_NIFTI2_HEADER = 540
_EXT_FLAG = 4  # the 4 bytes after the header; a non-zero first byte announces extensions
_CIFTI_EXTENSION = 32
_GZIP_MAGIC = b"\x1f\x8b"
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


class _Refused(Exception):
    """The one-line reason why a file is refused."""


def _header_class(first: bytes) -> tuple[int, type[nib.Nifti1Header]] | None:
    """NIfTI version and nibabel header class, from the header size field (either byte order)."""
    if len(first) < 4:
        return None
    for endian in "<>":
        (sizeof_hdr,) = struct.unpack(endian + "i", first[:4])
        if sizeof_hdr == _NIFTI1_HEADER:
            return 1, nib.Nifti1Header
        if sizeof_hdr == _NIFTI2_HEADER:
            return 2, nib.Nifti2Header
    return None


def _is_cifti_intent(header: nib.Nifti1Header) -> bool:
    # nib.load opens a NIfTI-2 .nii as CIFTI-2 when its intent code is one of the CIFTI-2
    # connectivity codes (NIFTI_INTENT_CONNECTIVITY_*, 3000-3099).
    return isinstance(header, nib.Nifti2Header) and 3000 <= int(header["intent_code"]) < 3100


class _Stream:
    """Sequential reads of a plain or gzip-compressed file, with the (decompressed) position."""

    def __init__(self, raw: BinaryIO, gz: bool, size: int) -> None:
        self._f: BinaryIO = gzip.GzipFile(fileobj=raw, mode="rb") if gz else raw  # type: ignore[assignment]
        self._gz = gz
        self._size = size
        self.pos = 0

    def read(self, n: int) -> bytes:
        data = self._f.read(n)
        self.pos += len(data)
        return data

    def skip(self, n: int) -> int:
        """Move ``n`` bytes ahead (fewer at the end of the file); return how many were skipped."""
        if not self._gz:
            step = max(0, min(n, self._size - self.pos))
            self._f.seek(step, os.SEEK_CUR)
            self.pos += step
            return step
        done = 0
        while done < n:
            chunk = self._f.read(min(n - done, 1 << 20))
            if not chunk:
                break
            done += len(chunk)
        self.pos += done
        return done


def _walk_extensions(stream: _Stream, size: float, endian: str) -> bytes | None:
    """Walk the extension blocks the way nibabel's ``Nifti1Extensions.from_fileobj`` does.

    ``size`` is the number of bytes the blocks may take (``vox_offset`` minus the position),
    negative for "up to the end of the file", which is what nibabel does when ``vox_offset`` is
    0. Contents are skipped, not held, except the first CIFTI-2 extension's, which is returned.
    """
    cifti: bytes | None = None
    number = 0
    while size >= 16 or size < 0:
        number += 1
        start = stream.pos
        ext_def = stream.read(8)
        if not ext_def and size < 0:
            break
        if len(ext_def) != 8:
            raise _Refused(f"extension {number} at byte {start} is cut off by the end of the file")
        esize, ecode = struct.unpack(endian + "ii", ext_def)
        if esize < 8:
            raise _Refused(f"extension {number} at byte {start} has an invalid size ({esize})")
        if ecode == _CIFTI_EXTENSION and cifti is None:
            content = stream.read(esize - 8)
            got = len(content)
            cifti = content.rstrip(b"\x00")
        else:
            got = stream.skip(esize - 8)
        if got != esize - 8:
            raise _Refused(
                f"extension {number} at byte {start} runs past the end of the file "
                f"({esize} bytes, {got + 8} left)"
            )
        size -= esize
    return cifti


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
        matrix = Cifti2Extension(_CIFTI_EXTENSION, cifti_xml).get_content().matrix
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


class _LocalFile:
    """[issue 15] A local file as a :class:`~bids2hf.model.source.NiftiInput`."""

    def __init__(self, path: str) -> None:
        self.name = path

    def size(self) -> int:
        return os.path.getsize(self.name)

    def open(self, whole: bool = False) -> BinaryIO:
        return open(self.name, "rb")

    def __str__(self) -> str:
        return self.name


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
        _check(_LocalFile(path) if isinstance(path, str) else path, level, result)
    except _Refused as refused:
        if level != "none":
            result.error = str(refused)
    return result


def _check(path: NiftiInput, level: CheckLevel, result: NiftiCheck) -> None:
    gz = path.name.endswith(".gz")
    try:
        size = path.size()
    except OSError as exc:
        raise _Refused(f"cannot be read ({exc.strerror or exc})") from None
    if size == 0:
        raise _Refused("empty file (a placeholder or an interrupted copy)")
    try:
        with path.open() as raw:
            if gz and raw.read(2) != _GZIP_MAGIC:
                raise _Refused("named .nii.gz but not gzip-compressed")
            raw.seek(0)
            stream = _Stream(raw, gz, size)
            header, cifti_xml = _check_header(stream, gz, level, result)
            # A header nibabel cannot interpret: the card shows "-"; the check below says why.
            with contextlib.suppress(NiftiDecodeError):
                result.facts = facts_from_header(header)
    except PermissionError:
        raise _Refused("cannot be read (permission denied)") from None
    except (OSError, zlib.error, EOFError) as exc:
        if not gz:
            raise _Refused(f"cannot be read ({exc})") from None
        raise _Refused(f"corrupt gzip stream ({exc})") from None
    if level == "none":
        return
    try:
        offset, nbytes = _data_spec(header, cifti_xml)
    except Exception as exc:  # nibabel's own reasons for not reading the data
        kind = "CIFTI-2 file" if result.cifti else f"NIfTI-{result.version} header"
        raise _Refused(f"invalid {kind} ({exc})") from None
    if nbytes == 0:
        return  # nibabel reads nothing, so nothing can be missing
    # vox_offset 0 means "unset"; the data still have to fit after the header.
    expected = max(offset, int(header["sizeof_hdr"]) + _EXT_FLAG) + nbytes
    try:
        if not gz:
            if size < expected:
                raise _Refused(f"truncated: {size} bytes, the header needs {expected}")
        elif level == "full":
            actual = _full_length(path)
            if actual < expected:
                raise _Refused(
                    f"truncated: {actual} bytes uncompressed, the header needs {expected}"
                )
        else:
            with path.open() as f:
                f.seek(-4, os.SEEK_END)
                (isize,) = struct.unpack("<I", f.read(4))
            # ISIZE is the length mod 2**32 of the last gzip member only; on a mismatch
            # decompress fully before calling the file broken (multi-member files are valid).
            if isize != expected % 2**32 and _full_length(path) < expected:
                raise _Refused(
                    f"truncated: the data end before the {expected} bytes the header needs"
                )
    except (OSError, zlib.error, EOFError) as exc:
        raise _Refused(f"corrupt or truncated gzip stream ({exc})") from None


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
    stream: _Stream, gz: bool, level: CheckLevel, result: NiftiCheck
) -> tuple[nib.Nifti1Header, bytes | None]:
    """Parse the header and its extensions as nib.load does; return them (and the CIFTI XML)."""
    head = stream.read(_NIFTI1_HEADER)
    found = _header_class(head)
    if found is None:
        if head[:2] == _GZIP_MAGIC:
            raise _Refused("not a NIfTI-1/NIfTI-2 file (gzip-compressed: name it .nii.gz)")
        if len(head) < 4:
            raise _Refused(f"not a NIfTI-1/NIfTI-2 file (only {len(head)} bytes)")
        (field_value,) = struct.unpack("<i", head[:4])
        raise _Refused(
            f"not a NIfTI-1/NIfTI-2 file (header size field {field_value}, neither 348 nor 540)"
        )
    result.version, header_cls = found
    header_size = _NIFTI1_HEADER if result.version == 1 else _NIFTI2_HEADER
    head += stream.read(header_size - len(head))
    if len(head) < header_size:
        raise _Refused(
            f"truncated: {len(head)} bytes, shorter than a NIfTI-{result.version} header"
        )
    try:
        header = header_cls(head, check=False)
        result.text_fields = _text_fields(header)
        cifti_intent = _is_cifti_intent(header)
        if level == "none":
            result.cifti = cifti_intent
            return header, None
        # The checks nibabel runs on load, with its repairs of minor problems; the logger is
        # quiet because the problems that stop a load come back as the exception's message.
        header.check_fix(logger=_QUIET, error_level=imageglobals.error_level)
    except Exception as exc:
        raise _Refused(f"invalid NIfTI-{result.version} header ({exc})") from None
    cifti_xml = None
    flag = stream.read(_EXT_FLAG)
    if len(flag) == _EXT_FLAG and flag[:1] != b"\x00":
        room = float(header["vox_offset"]) - stream.pos
        try:
            cifti_xml = _walk_extensions(stream, room, header.endianness)
        except _Refused as refused:
            raise _Refused(f"invalid NIfTI-{result.version} header ({refused})") from None
    if cifti_intent and cifti_xml is None and not gz:
        # nib.load opens such a .nii as CIFTI-2 and fails without the extension.
        raise _Refused(
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


def _load_beside(path: str) -> Any:
    """A file stored beside the shards, by the path its cell holds: a local path is opened by
    ``nibabel.load`` (which reads only what is asked of it), a URL (``hf://``, ``s3://``) read
    whole through fsspec."""
    if "://" not in path:
        if not os.path.isfile(path):
            raise ValueError(
                f"this value holds no embedded bytes, and its path {path!r} is no file (stored "
                "beside the shards of an output that was moved? read it with bids2hf export)"
            )
        return nib.load(path)
    import fsspec  # only for URLs: a local read imports nothing more

    with fsspec.open(path, "rb") as f:
        return load_nifti(f.read())


def load_nifti(value: Any) -> Any:
    """Open an embedded NIfTI-1, NIfTI-2 or CIFTI-2 image with nibabel.

    ``datasets``' own ``Nifti`` feature only decodes NIfTI-1; columns that hold NIfTI-2 files
    (HCP outputs, CIFTI-2 ``.dtseries.nii``/``.dscalar.nii``/...) are published with
    ``Nifti(decode=False)`` and read with this function::

        ds = load_dataset("ORG/NAME", split="train")
        img = bids2hf.load_nifti(ds[0]["func_bold"][0])

    Returns what ``nibabel.load`` returns for the file: a ``Nifti1Image``, a ``Nifti2Image``, or a
    ``Cifti2Image`` for NIfTI-2 files with a CIFTI-2 intent code and extension (for embedded
    bytes also when gzip-compressed, which ``nibabel.load`` opens as plain NIfTI-2). A local path
    is opened with ``nibabel.load`` itself; a value that is already a nibabel image (a column
    that ``datasets`` decoded) is returned as it is. A value without bytes (a file stored beside
    the shards) is opened from its ``path``: a local path, or a URL read through fsspec.

    Args:
        value: a ``{"bytes": ..., "path": ...}`` dict as stored, raw bytes, a local path, or a
            nibabel image.

    Raises:
        ValueError: the value holds no bytes, or they are not a NIfTI-1/NIfTI-2 image.
        nibabel.filebasedimages.ImageFileError, HeaderDataError, ...: what nibabel raises for a
            damaged file.
    """
    if isinstance(value, FileBasedImage):
        return value
    if isinstance(value, (str, os.PathLike)):
        return nib.load(os.fspath(value))
    data = value.get("bytes") if isinstance(value, Mapping) else value
    if data is None and isinstance(value, Mapping) and isinstance(value.get("path"), str):
        # [issue 11] a file stored beside the shards: the cell holds its location only
        return _load_beside(value["path"])
    if data is None:
        raise ValueError("this value holds no embedded bytes")
    data = bytes(data)
    gz = data[:2] == _GZIP_MAGIC
    if gz:
        data = gzip.decompress(data)
    # The classes nib.load tries, in its order: NIfTI-1 by magic, CIFTI-2, then NIfTI-2.
    if nib.Nifti1Header.may_contain_header(data):
        return nib.Nifti1Image.from_bytes(data)
    found = _header_class(data)
    if found is None or found[0] != 2:
        raise ValueError("not a NIfTI-1/NIfTI-2 image")
    header = nib.Nifti2Header(data[:_NIFTI2_HEADER], check=False)
    if _is_cifti_intent(header):
        if not gz:
            return nib.Cifti2Image.from_bytes(data)
        with_extensions = nib.Nifti2Header.from_fileobj(io.BytesIO(data), check=False)
        if any(e.get_code() == _CIFTI_EXTENSION for e in with_extensions.extensions):
            return nib.Cifti2Image.from_bytes(data)
    return nib.Nifti2Image.from_bytes(data)
