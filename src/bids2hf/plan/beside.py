"""Which files are stored beside the shards (at ``files/<path>``) instead of in their cell. Pure.

A Parquet/Arrow binary value holds less than 2 GiB (int32 lengths and offsets), and so does a
cell's list of files: Arrow's list of binary values shares one int32 offset buffer per column
chunk, and the page that holds a value adds its 4-byte length prefix and levels. So:

- a file over :data:`MAX_VALUE_BYTES` cannot be a value at all: it is stored beside;
- in a row, files are embedded in column and list order while the row's embedded NIfTI total
  stays within the row limit (``--max-row-size``, default 128 MiB, one row group's worth); the
  files that do not fit are stored beside, so a session of four 1 GB runs converts with the
  default command. The limit is what bounds a writer's memory: pyarrow takes a row group as
  arrays in memory, writes one row's list in one column as one page (it never splits a row
  across pages, whatever its options) and holds two copies of that page while writing it. So a
  worker needs about 160 MB + the row group + twice the largest cell, at most about 160 MB +
  3 x the limit, whatever the session size. The default keeps the benchmark's ARC-shaped
  sessions of 250 MB, 1 GB and 3 GB within 300 MB + row group + largest file
  (benchmarks/results/MEMORY.md); 512 MiB would take them to 1.1 GB.

The cell of a file stored beside holds ``{"bytes": None, "path": URL}``: ``datasets``' ``Nifti``
opens the path (a local path with ``nibabel.load``, a URL such as ``hf://datasets/ORG/NAME@REV/
files/...`` with fsspec). The URL depends on the destination, so the run sets
:attr:`~bids2hf.plan.options.PlanOptions.files_url` once the destination is known.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from bids2hf.model.format import BESIDE_PREFIX
from bids2hf.model.inventory import NIFTI_EXTENSIONS
from bids2hf.model.rows import RowPlan
from bids2hf.units import human_bytes

__all__ = ["MAX_VALUE_BYTES", "beside_url", "files_url_of", "place_beside"]

#: Largest file stored as one Parquet value: 2 GiB - 1 MiB, so that the page holding it (its
#: 4-byte length prefix, levels and header) stays under int32 too.
MAX_VALUE_BYTES = 2**31 - 2**20


def files_url_of(destination: str) -> str:
    """The base of the URLs that cells of files stored beside hold, for a destination.

    ``hf://datasets/ORG/NAME`` gets ``@main``: ``datasets`` matches ``hf://datasets/{repo_id}@
    {revision}/{path}`` to pass the token of a private repository. A local folder gives its
    absolute path (``nibabel.load`` resolves a relative path against the working folder).
    """
    url = destination.rstrip("/")
    if url.startswith("hf://datasets/") and "@" not in url:
        return url + "@main"
    return url


def beside_url(files_url: str, relpath: str) -> str:
    """What the cell of ``relpath`` holds as its path: ``files_url/files/relpath``."""
    stored = BESIDE_PREFIX + relpath
    return f"{files_url.rstrip('/')}/{stored}" if files_url else stored


def place_beside(
    rows: Iterable[RowPlan], file_columns: Sequence[str], max_row_bytes: int, files_url: str
) -> None:
    """Mark, in each row, the files that go beside the shards (``row.beside``), with why.

    In column order and list order, a file goes beside when it is over :data:`MAX_VALUE_BYTES`,
    when its cell (the row's list in that column) would hold over :data:`MAX_VALUE_BYTES` with
    it, or, for a NIfTI, when the row's embedded NIfTI bytes would exceed ``max_row_bytes`` with
    it (other files are small and compressed as a rule: only a cell's limit moves them, e.g. an
    EEG session of several 900 MB ``.edf`` runs). A file placed beside in one column is beside
    in every column of the row that lists it.
    """
    limit = min(max_row_bytes, MAX_VALUE_BYTES)
    for row in rows:
        total = 0
        for column in file_columns:
            cell = 0
            for ref in row.files.get(column, []):
                if ref.relpath in row.beside:
                    continue
                nifti = ref.relpath.endswith(NIFTI_EXTENSIONS)
                if ref.size > MAX_VALUE_BYTES:
                    reason = f"over the {human_bytes(MAX_VALUE_BYTES)} one Parquet value holds"
                elif cell + ref.size > MAX_VALUE_BYTES:
                    reason = (
                        f"column {column} would hold over {human_bytes(MAX_VALUE_BYTES)} in one "
                        "row (one Parquet list holds less than 2 GiB)"
                    )
                elif nifti and total + ref.size > limit:
                    reason = f"the row would embed over {human_bytes(limit)} (--max-row-size)"
                else:
                    cell += ref.size
                    total += ref.size if nifti else 0
                    continue
                row.beside[ref.relpath] = beside_url(files_url, ref.relpath)
                row.beside_reasons[ref.relpath] = reason
