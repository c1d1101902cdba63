"""The ``previews`` config's files: ``previews/previews.parquet`` and the card's ``images/*.png``.

Thumbnails come from the shard writers (write/previews.py), made from the bytes they held in
memory. Each is kept in the state folder under the sha256 of the file it shows
(``.bids2hf/thumbs/<sha256>.png``; an empty ``.none`` file when none could be made) before its
shard is recorded complete, so a resumed run finds the thumbnails of the shards it reuses, and
a thumbnail is the same bytes whichever run made it. A chosen file stored beside the shards (never
in a writer's buffer), or whose shard was written without it (by a run with other
``--previews``), is read again, once, from the source, keeping only what its picture shows.
(Not while it is copied, before the shards: the allocations of a picture made then raise
glibc's mmap threshold for the writer that follows, which measured +30 MB of peak memory.)

Written without `datasets` (or pandas, which ``pyarrow.array`` would import): the schema and
its feature metadata come from plan/features.py, the arrays from buffers.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from bids2hf.model.format import PREVIEW_PREFIXES
from bids2hf.model.rows import ColumnSpec, FileRef, RowPlan
from bids2hf.model.source import Source
from bids2hf.plan.previews import (
    PREVIEWS_PATH,
    PreviewChoice,
    image_columns,
    key_columns,
    picture_path,
    previews_features,
)
from bids2hf.write.arrays import bool_array, string_array, validity
from bids2hf.write.output_folder import OutputFolder
from bids2hf.write.previews import VolumeBytes, make_thumbnail

__all__ = [
    "PreviewRow",
    "PreviewsWritten",
    "keep_thumbnails",
    "planned_paths",
    "previews_parquet",
    "write_previews",
]

log = logging.getLogger(__name__)

_THUMBS = "thumbs"  # in the state folder: never published
_ROWS_PER_GROUP = 100  # the viewer reads row groups; 100 rows of a few thumbnails is a few MB


@dataclass(frozen=True)
class PreviewRow:
    """One row of the previews file.

    Attributes:
        keys: the identifying values (e.g. ``subject_id``, ``session_id``), as text.
        images: image column → PNG bytes of its thumbnail (None: no image, or none could be made).
        shown: image column → path (relative to the BIDS root) of the file the thumbnail shows.
    """

    keys: Mapping[str, str | None]
    images: Mapping[str, bytes | None]
    shown: Mapping[str, str | None] = field(default_factory=dict)


@dataclass
class PreviewsWritten:
    """What :func:`write_previews` wrote, for the card."""

    paths: list[str]  # in the output: the previews file (if any row) and the pictures
    keys: list[str]
    images: list[str]  # image columns
    rows: int = 0  # rows of the previews file (0: none written, no config)
    nbytes: int = 0
    pictures: dict[str, str] = field(default_factory=dict)  # column → images/<column>.png


def planned_paths(choice: PreviewChoice | None) -> list[str]:
    """Every path the previews may write (owned before anything is written)."""
    if choice is None:
        return []
    return [PREVIEWS_PATH] + [picture_path(c) for c in choice.pictures]


def _binary_array(values: Sequence[bytes | None]) -> pa.Array:
    offsets = np.zeros(len(values) + 1, dtype=np.int32)
    np.cumsum([len(v or b"") for v in values], out=offsets[1:])
    data = b"".join(v or b"" for v in values)
    mask = validity([v is not None for v in values])
    buffers = [mask, pa.py_buffer(offsets), pa.py_buffer(data)]
    return pa.Array.from_buffers(pa.binary(), len(values), buffers, null_count=-1)


def _png_name(shown: str | None, column: str) -> str:
    name = shown.rsplit("/", 1)[-1] if shown else column
    for ext in (".nii.gz", ".nii"):
        if name.endswith(ext):
            return name[: -len(ext)] + ".png"
    return name + ".png"


def previews_parquet(
    rows: Sequence[PreviewRow], keys: Sequence[str], images: Sequence[str]
) -> bytes:
    """The previews file's bytes (its schema carries the HF features, so ``datasets`` decodes
    the ``Image`` columns to PIL images).

    Raises:
        ValueError: a key or image column of a row is not among the declared columns.
    """
    known = set(keys) | set(images)
    for row in rows:
        if extra := (set(row.keys) | set(row.images)) - known:
            raise ValueError(f"undeclared preview column(s): {sorted(extra)}")
    schema = previews_features(keys, images).arrow_schema
    arrays: list[pa.Array] = [string_array([r.keys.get(k) for r in rows]) for k in keys]
    for column in images:
        pngs = [r.images.get(column) for r in rows]
        shown = [r.shown.get(column) for r in rows]
        names = [
            None if png is None else _png_name(s, column)
            for png, s in zip(pngs, shown, strict=True)
        ]
        typ = schema.field(column).type
        arrays.append(
            pa.StructArray.from_arrays(
                [_binary_array(pngs), string_array(names)],
                fields=list(typ),
                mask=bool_array([png is None for png in pngs]),
            )
        )
        arrays.append(string_array(shown))
    table = pa.Table.from_arrays(arrays, schema=schema)
    buf = io.BytesIO()
    # PNG bytes are compressed already; the rest is tiny.
    pq.write_table(
        table,
        buf,
        row_group_size=_ROWS_PER_GROUP,
        compression="zstd",
        use_dictionary=False,
        write_statistics=False,
    )
    return buf.getvalue()


# -- the thumbnails kept across runs ----------------------------------------------------------
def _cached(out: OutputFolder, sha256: str) -> tuple[bool, bytes | None]:
    """(found, PNG or None) of the thumbnail of the file with this sha256."""
    folder = out.state_dir / _THUMBS
    png = folder / f"{sha256}.png"
    if png.is_file():
        return True, png.read_bytes()
    return (folder / f"{sha256}.none").is_file(), None


def _cache(out: OutputFolder, sha256: str, png: bytes | None) -> None:
    path = out.state_dir / _THUMBS / f"{sha256}.{'png' if png is not None else 'none'}"
    if not path.is_file():
        out.write_bytes(path, png or b"")


def keep_thumbnails(
    out: OutputFolder, thumbnails: Mapping[str, bytes | None], shas: Mapping[str, str]
) -> None:
    """Keep a shard's thumbnails (relpath → PNG) under the sha256 of their files (``shas``):
    call it before the shard is recorded complete, so that a complete shard's are never lost.
    """
    for relpath, png in sorted(thumbnails.items()):
        _cache(out, shas[relpath], png)


def _thumbnail(out: OutputFolder, source: Source, ref: FileRef, sha256: str) -> bytes | None:
    """The kept thumbnail, else one made from the source (checked against the recorded
    sha256: a file changed since its shard was written gets none). Never raises."""
    found, png = _cached(out, sha256)
    return png if found else _thumbnail_from_source(out, source, ref, sha256)


def _thumbnail_from_source(
    out: OutputFolder, source: Source, ref: FileRef, sha256: str
) -> bytes | None:
    """Read once more: a file stored beside the shards, or one whose shard was written without
    its thumbnail. Streamed whole for its sha256, but only the bytes the picture
    shows are kept (:class:`VolumeBytes`), so a large file costs one volume's memory; local and
    remote sources alike, so that both give the same previews."""
    digest = hashlib.sha256()
    try:
        kept = VolumeBytes(ref.size)
        for chunk in source.read_chunks(ref):
            digest.update(chunk)
            kept.feed(chunk)
    except Exception as exc:  # a picture is never worth a failed conversion
        log.warning("%s: no thumbnail (%s: %s)", ref.relpath, type(exc).__name__, str(exc)[:200])
        return None
    if digest.hexdigest() != sha256:
        log.warning("%s: no thumbnail (changed since its shard was written)", ref.relpath)
        return None
    png = make_thumbnail(kept.view(), ref.relpath)
    _cache(out, sha256, png)
    return png


# long because: one pass over the chosen rows, building the file and the pictures side by side.
def write_previews(
    out: OutputFolder,
    source: Source,
    rows: Sequence[RowPlan],
    columns: Sequence[ColumnSpec],
    choice: PreviewChoice | None,
    shas: Mapping[str, str],
) -> PreviewsWritten:
    """Write the previews file and the pictures of ``choice`` (atomically), remove those of an
    earlier run that this one does not write, and forget kept thumbnails no longer chosen.

    ``rows`` are the plan's rows in order, ``shas`` relpath → sha256 of every embedded file.

    Raises:
        OSError: the output cannot be written (a thumbnail failure is never an error).
    """
    keys, images = key_columns(columns), image_columns(columns)
    written = PreviewsWritten([], keys, images)
    thumbs: dict[str, bytes | None] = {}
    if choice is not None:
        by_path = {r.relpath: r for row in rows for refs in row.files.values() for r in refs}
        for relpath in sorted(choice.files):
            thumbs[relpath] = _thumbnail(out, source, by_path[relpath], shas[relpath])
        previews = []
        for index in choice.rows:
            row = rows[index]
            shown = {c: refs[0].relpath if (refs := row.files.get(c)) else None for c in images}
            values = {k: row.values.get(k) for k in keys}
            previews.append(
                PreviewRow(
                    {k: None if v is None else str(v) for k, v in values.items()},
                    {c: thumbs[p] if p else None for c, p in shown.items()},
                    shown,
                )
            )
        if any(png is not None for p in previews for png in p.images.values()):
            blob = previews_parquet(previews, keys, images)
            out.write_bytes(out.root / PREVIEWS_PATH, blob)
            written.paths.append(PREVIEWS_PATH)
            written.rows, written.nbytes = len(previews), len(blob)
        for column, relpath in choice.pictures.items():
            if (png := thumbs[relpath]) is not None:
                out.write_bytes(out.root / picture_path(column), png)
                written.paths.append(picture_path(column))
                written.pictures[column] = picture_path(column)
    stale = [p for p in out.owned if p.startswith(PREVIEW_PREFIXES) and p not in written.paths]
    out.remove_owned(stale)
    for name in {p.split("/", 1)[0] for p in stale}:  # e.g. emptied by --previews 0
        with contextlib.suppress(OSError):  # not empty: holds files bids2hf did not write
            (out.root / name).rmdir()
    _forget(out, {shas[p] for p in thumbs})
    return written


def _forget(out: OutputFolder, keep: set[str]) -> None:
    """Remove kept thumbnails of files no longer chosen (the folder would only grow)."""
    folder = out.state_dir / _THUMBS
    if folder.is_dir():
        for path in folder.iterdir():
            if path.stem not in keep and path.suffix in (".png", ".none"):
                path.unlink(missing_ok=True)
