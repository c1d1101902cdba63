"""What a NIfTI header says about its image (shape, voxel size, TR), as plain data.

Standard library only: the scan keeps these facts on every NIfTI ``SourceFile`` (from the header
its integrity check parses anyway), for the card's "Images" table and the HTML report.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

__all__ = ["HeaderFacts", "NiftiDecodeError", "facts_from_header"]


class NiftiDecodeError(ValueError):
    """The bytes are not a NIfTI-1/NIfTI-2 image this module can decode (the message says why)."""


@dataclass(frozen=True)
class HeaderFacts:
    """What one NIfTI header says about its image."""

    shape: tuple[int, ...]
    zooms: tuple[float, ...]  # spatial voxel size, mm (rounded to 0.01)
    tr: float | None  # seconds, from pixdim[4] of 4-D images (None if unset)
    dtype: str
    version: int  # 1 or 2


_TIME_SCALE = {"sec": 1.0, "msec": 1e-3, "usec": 1e-6, "unknown": 1.0}



def facts_from_header(header: Any) -> HeaderFacts:
    """The facts of a nibabel ``Nifti1Header``/``Nifti2Header`` already parsed (the scan's
    integrity check holds one for every NIfTI file: no extra read is needed).

    Raises:
        NiftiDecodeError: a header nibabel cannot interpret (unknown type code, bad dims...).
    """
    try:
        shape = tuple(int(d) for d in header.get_data_shape())
        zooms = [float(z) for z in header.get_zooms()]
        dtype = str(header.get_data_dtype())
        time_unit = header.get_xyzt_units()[1]
        version = 2 if int(header["sizeof_hdr"]) == 540 else 1
    except Exception as exc:  # nibabel's reasons
        raise NiftiDecodeError(f"invalid NIfTI header ({exc})") from None
    tr = None
    if len(shape) >= 4 and len(zooms) >= 4 and zooms[3] > 0 and math.isfinite(zooms[3]):
        tr = round(zooms[3] * _TIME_SCALE.get(time_unit, 1.0), 4)
    spatial = tuple(round(z, 2) for z in zooms[:3])
    return HeaderFacts(shape, spatial, tr, dtype, version)
