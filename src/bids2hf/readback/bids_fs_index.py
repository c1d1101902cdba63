"""The index of a ``bids2hf://`` filesystem (:mod:`bids2hf.readback.bids_fs`), built without
its state: the entries of the manifest, or of the shards' footers and ``bids/`` without one;
the folder tree they make; a shard's footer from the bytes at its end; and, on ``hf://``, the
revision the index is pinned to.

A manifest or footer index that cannot be read, or paths that are unsafe or clash, are refused
(:class:`~bids2hf.errors.InputError`); a shard that is no Parquet file is a damaged copy
(:class:`~bids2hf.model.ranges.RangeError`).
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from typing import Any

import pyarrow.parquet as pq

from bids2hf.errors import InputError
from bids2hf.model.format import FOOTER_KEY
from bids2hf.model.ranges import RangeError, bytes_leaf, row_group_of
from bids2hf.readback.published import safe_relpath

__all__ = [
    "IndexEntry",
    "ShardFooter",
    "bids_copies",
    "entries_from_manifest",
    "entry_from_footer",
    "folder_tree",
    "footer_index",
    "footer_length",
    "offset_in_footer",
    "parse_footer",
    "row_group_in_footer",
]


@dataclass
class IndexEntry:
    """One BIDS file and where its bytes are."""

    path: str
    size: int
    sha256: str | None
    obj: str  # shard or bids/ copy, relative to the dataset root
    offset: int | None  # None: read through the column chunk (row files only)
    column: str | None = None
    row: int | None = None
    index: int | None = None

    @property
    def in_row(self) -> bool:
        """Whether the file is a cell of a shard (not a copy under ``bids/`` or ``files/``)."""
        return self.column is not None


@dataclass
class ShardFooter:
    """A shard's Parquet footer, the first row of each row group and its bids2hf index."""

    meta: pq.FileMetaData
    starts: list[int]
    index: list[dict[str, Any]] = field(default_factory=list)


def footer_index(meta: pq.FileMetaData, where: str) -> list[dict[str, Any]]:
    """The bids2hf index in a shard's footer, as raw records (none if it has no index).

    Raises:
        InputError: the index is no JSON list.
    """
    raw = (meta.metadata or {}).get(FOOTER_KEY)
    if raw is None:
        return []
    try:
        entries = json.loads(raw)
        if not isinstance(entries, list):
            raise TypeError("not a list")
        return entries
    except (ValueError, TypeError) as exc:
        raise InputError(f"{where}: unreadable bids2hf index ({exc})") from None


def entries_from_manifest(data: bytes, where: str) -> list[IndexEntry]:
    """The entries of a manifest (``bids2hf/manifest.jsonl``) read as ``data``.

    Raises:
        InputError: a line is no JSON record with the fields of its placement.
    """
    out = []
    try:
        for line in data.decode("utf-8").splitlines():
            if not line.strip():
                continue
            r = json.loads(line)
            placement = r.get("placement")
            # [issue 11] a file stored beside the shards is read like a dataset-level file
            if placement in ("dataset_file", "beside"):
                out.append(IndexEntry(r["path"], int(r["size"]), r.get("sha256"), r["location"], 0))
            elif placement == "row":
                offset = r.get("offset")
                out.append(
                    IndexEntry(
                        r["path"],
                        int(r["size"]),
                        r.get("sha256"),
                        r["location"],
                        None if offset is None else int(offset),
                        r["column"],
                        int(r["row"]),
                        int(r["index"]) if r.get("index") is not None else -1,
                    )
                )
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise InputError(f"{where}: unreadable manifest ({exc})") from None
    return out


def entry_from_footer(e: dict[str, Any], shard: str) -> IndexEntry:
    """The entry of one record of ``shard``'s footer index."""
    offset = e.get("offset")
    if e.get("location") is not None:  # [issue 11] stored beside the shards
        return IndexEntry(e["path"], int(e["size"]), e.get("sha256"), e["location"], 0)
    return IndexEntry(
        e["path"],
        int(e["size"]),
        e.get("sha256"),
        shard,
        None if offset is None else int(offset),
        e["column"],
        int(e["row"]),
        int(e.get("index", -1)),
    )


def bids_copies(found: dict[str, dict[str, Any]], bids_prefix: str) -> list[IndexEntry]:
    """The entries of the dataset-level copies ``found`` under ``bids_prefix`` (a listing)."""
    out = []
    for name, info in found.items():
        if info.get("type") == "directory" or not str(name).startswith(bids_prefix):
            continue
        rel = str(name)[len(bids_prefix) :]
        # No manifest, so no sha256 to check these copies against.
        out.append(IndexEntry(rel, int(info["size"]), None, "bids/" + rel, 0))
    return out


def folder_tree(
    entries: list[IndexEntry], where: str
) -> tuple[dict[str, IndexEntry], dict[str, list[str]], dict[tuple[str, str], list[IndexEntry]]]:
    """The files by path, each folder's children and the row files of each (shard, column).

    Raises:
        InputError: a path is unsafe, or is both a file and a folder.
    """
    files: dict[str, IndexEntry] = {}
    for e in entries:
        safe_relpath(e.path)
        safe_relpath(e.obj)
        files.setdefault(e.path, e)  # the first placement wins, as in export
    dirs: dict[str, set[str]] = {"": set()}
    members: dict[tuple[str, str], list[IndexEntry]] = {}
    for path, e in files.items():
        parts = path.split("/")
        parent = ""
        for i, part in enumerate(parts):
            dirs.setdefault(parent, set()).add(part)
            if i < len(parts) - 1:
                parent = "/".join(parts[: i + 1])
                if parent in files:
                    raise InputError(f"{where}: {parent!r} is both a file and a folder")
        if e.column is not None:
            members.setdefault((e.obj, e.column), []).append(e)
    return files, {d: sorted(children) for d, children in dirs.items()}, members


def footer_length(tail: bytes, size: int, where: str) -> int:
    """The length of the footer (with its length and magic) of a shard of ``size`` bytes.

    Raises:
        RangeError: ``tail`` (the shard's last bytes) is no Parquet file's end.
    """
    if len(tail) < 12 or tail[-4:] != b"PAR1":
        raise RangeError(f"{where}: not a Parquet file")
    length = int.from_bytes(tail[-8:-4], "little") + 8
    if length > size - 4:
        raise RangeError(f"{where}: footer longer than the file")
    return length


def parse_footer(footer: bytes, where: str) -> ShardFooter:
    """The footer of a shard from its last :func:`footer_length` bytes.

    Raises:
        RangeError: the footer cannot be read.
        InputError: its bids2hf index is unreadable.
    """
    try:
        meta = pq.read_metadata(io.BytesIO(b"PAR1" + footer))
    except (OSError, ValueError) as exc:
        raise RangeError(f"{where}: unreadable footer ({exc})") from None
    starts, n = [], 0
    for i in range(meta.num_row_groups):
        starts.append(n)
        n += meta.row_group(i).num_rows
    return ShardFooter(meta, starts, footer_index(meta, where))


def offset_in_footer(footer: ShardFooter, entry: IndexEntry) -> int | None:
    """Where the footer index puts ``entry``'s bytes in its shard; its own offset if it has
    none there (None: read through the column chunk)."""
    for e in footer.index:
        if (e.get("column"), e.get("row"), e.get("index", -1)) == (
            entry.column,
            entry.row,
            entry.index,
        ) and e.get("offset") is not None:
            return int(e["offset"])
    return entry.offset


def row_group_in_footer(footer: ShardFooter, entry: IndexEntry, where: str) -> int:
    """The row group holding ``entry``'s row, whose file column the shard has.

    Raises:
        RangeError: the shard has no such row or no such file column.
    """
    assert entry.row is not None and entry.column is not None
    if not 0 <= entry.row < footer.meta.num_rows:
        raise RangeError(f"{where}: has no row {entry.row}, where the index puts {entry.path!r}")
    group = row_group_of(footer.starts, entry.row)
    leaves = [footer.meta.schema.column(i).path for i in range(footer.meta.num_columns)]
    if bytes_leaf(entry.column, leaves) is None:
        raise RangeError(f"{where}: has no column {entry.column!r} for {entry.path!r}")
    return group
