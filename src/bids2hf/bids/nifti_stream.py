"""The first blocks of a NIfTI file, read in order as ``nibabel.load`` reads them: the header
class from the size field, a stream over plain or gzip-compressed input, and the walk over the
extension blocks that follow the header.

The check in :mod:`bids2hf.bids.nifti` is built on these; they read files (local, or remote with
range requests), where :mod:`bids2hf.model.nifti_bytes` reads bytes held in memory. What the first
bytes say (NIfTI-1 or NIfTI-2, gzip or not, CIFTI-2 intent) is decided there, for both.
"""

from __future__ import annotations

import gzip
import os
import struct
from typing import BinaryIO

import nibabel as nib

from bids2hf.model.nifti_bytes import nifti_version

__all__ = [
    "CIFTI_EXTENSION",
    "EXT_FLAG",
    "LocalFile",
    "NiftiRefused",
    "NiftiStream",
    "header_class",
    "walk_extensions",
]

#: The 4 bytes after the header; a non-zero first byte announces extensions.
EXT_FLAG = 4
#: The extension code of the CIFTI-2 XML.
CIFTI_EXTENSION = 32


class NiftiRefused(Exception):
    """The one-line reason why a file is refused."""


def header_class(first: bytes) -> tuple[int, type[nib.Nifti1Header]] | None:
    """NIfTI version and nibabel header class, from the header size field (either byte order)."""
    version = nifti_version(first)
    if version is None:
        return None
    return version, nib.Nifti1Header if version == 1 else nib.Nifti2Header


class NiftiStream:
    """Sequential reads of a plain or gzip-compressed file, with the (decompressed) position."""

    def __init__(self, raw: BinaryIO, gz: bool, size: int) -> None:
        self._f: BinaryIO = gzip.GzipFile(fileobj=raw, mode="rb") if gz else raw  # type: ignore[assignment]
        self._gz = gz
        self._size = size
        self.pos = 0

    def read(self, n: int) -> bytes:
        """Up to ``n`` bytes (fewer at the end of the file).

        Raises:
            OSError, zlib.error, EOFError: the file cannot be read, or its gzip stream is corrupt.
        """
        data = self._f.read(n)
        self.pos += len(data)
        return data

    def skip(self, n: int) -> int:
        """Move ``n`` bytes ahead (fewer at the end of the file); return how many were skipped.

        Raises:
            OSError, zlib.error, EOFError: the file cannot be read, or its gzip stream is corrupt.
        """
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


def walk_extensions(stream: NiftiStream, size: float, endian: str) -> bytes | None:
    """Walk the extension blocks the way nibabel's ``Nifti1Extensions.from_fileobj`` does.

    ``size`` is the number of bytes the blocks may take (``vox_offset`` minus the position),
    negative for "up to the end of the file", which is what nibabel does when ``vox_offset`` is
    0. Contents are skipped, not held, except the first CIFTI-2 extension's, which is returned.

    Raises:
        NiftiRefused: an extension block is cut off or has an invalid size.
        OSError, zlib.error, EOFError: the file cannot be read, or its gzip stream is corrupt.
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
            raise NiftiRefused(
                f"extension {number} at byte {start} is cut off by the end of the file"
            )
        esize, ecode = struct.unpack(endian + "ii", ext_def)
        if esize < 8:
            raise NiftiRefused(f"extension {number} at byte {start} has an invalid size ({esize})")
        if ecode == CIFTI_EXTENSION and cifti is None:
            content = stream.read(esize - 8)
            got = len(content)
            cifti = content.rstrip(b"\x00")
        else:
            got = stream.skip(esize - 8)
        if got != esize - 8:
            raise NiftiRefused(
                f"extension {number} at byte {start} runs past the end of the file "
                f"({esize} bytes, {got + 8} left)"
            )
        size -= esize
    return cifti


class LocalFile:
    """[issue 15] A local file as a :class:`~bids2hf.model.source.NiftiInput`."""

    def __init__(self, path: str) -> None:
        self.name = path

    def size(self) -> int:
        """The file's size in bytes.

        Raises:
            OSError: the file cannot be read.
        """
        return os.path.getsize(self.name)

    def open(self, whole: bool = False) -> BinaryIO:
        """The file opened for reading (``whole`` is a hint for remote files, unused here).

        Raises:
            OSError: the file cannot be opened.
        """
        return open(self.name, "rb")

    def __str__(self) -> str:
        return self.name
