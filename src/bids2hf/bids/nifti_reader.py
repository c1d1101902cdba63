"""``load_nifti``: the public reader of a NIfTI-1, NIfTI-2 or CIFTI-2 value of a column (embedded
bytes, a file stored beside the shards, a local path, or a nibabel image), re-exported as
``bids2hf.load_nifti``.
"""

from __future__ import annotations

import gzip
import io
import os
from collections.abc import Mapping
from typing import Any

import nibabel as nib
from nibabel.filebasedimages import FileBasedImage

from bids2hf.bids.nifti_stream import CIFTI_EXTENSION, header_class
from bids2hf.model.nifti_bytes import HEADER_SIZE, is_cifti_intent, is_gzip

__all__ = ["load_nifti"]


def _load_beside(path: str) -> Any:
    """A file stored beside the shards, by the path its cell holds: a local path is opened by
    ``nibabel.load`` (which reads only what is asked of it), a URL (``hf://``, ``s3://``) read
    whole through fsspec.

    Raises:
        ValueError: a local path that is no file.
    """
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
    gz = is_gzip(data)
    if gz:
        data = gzip.decompress(data)
    # The classes nib.load tries, in its order: NIfTI-1 by magic, CIFTI-2, then NIfTI-2.
    if nib.Nifti1Header.may_contain_header(data):
        return nib.Nifti1Image.from_bytes(data)
    found = header_class(data)
    if found is None or found[0] != 2:
        raise ValueError("not a NIfTI-1/NIfTI-2 image")
    header = nib.Nifti2Header(data[: HEADER_SIZE[2]], check=False)
    if is_cifti_intent(header):
        if not gz:
            return nib.Cifti2Image.from_bytes(data)
        with_extensions = nib.Nifti2Header.from_fileobj(io.BytesIO(data), check=False)
        if any(e.get_code() == CIFTI_EXTENSION for e in with_extensions.extensions):
            return nib.Cifti2Image.from_bytes(data)
    return nib.Nifti2Image.from_bytes(data)
