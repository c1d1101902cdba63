"""Read access to a converted dataset wherever it is: a local folder, ``hf://``, or any fsspec URL.

Only metadata is read here: the manifest and each shard's Parquet footer (whose bids2hf index
lists the embedded files with their sha256). Image bytes are never fetched by these functions.

Both indexes come from outside (a download, a repository anyone may have written to), so every
entry is checked here (types, value ranges, paths) before ``export`` or ``verify`` sees it: a
damaged or crafted index is refused with one line (:class:`~bids2hf.errors.InputError`), never
a crash.
"""

from __future__ import annotations

import io
import json
import logging
import posixpath
import re
import reprlib
from collections.abc import Iterable
from dataclasses import dataclass, fields
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from bids2hf.errors import InputError, VerificationError, one_line
from bids2hf.model.format import (
    BESIDE_PREFIX,
    DATASET_FILES_PREFIX,
    FOOTER_KEY,
    MANIFEST_PATH,
    EmbeddedFile,
    read_footer_index,
)
from bids2hf.model.manifest import ManifestEntry
from bids2hf.readback.access import is_hub, pin_or_refuse, probe

__all__ = [
    "PLACEMENTS", "PublishedDataset", "check_embedded", "check_entry", "open_dataset",
    "parse_manifest", "safe_relpath",
]

PLACEMENTS = ("row", "dataset_file", "left_out", "beside")
#: Largest size, row or index accepted (a signed 64-bit count, as in Parquet and the OS).
_MAX = 2**63 - 1
_SHA256 = re.compile(r"[0-9a-f]{64}")
#: Bytes read from a shard's end to get its footer in one request (as pyarrow does).
_FOOTER_GUESS = 64 << 10
_MANIFEST_FIELDS = frozenset(f.name for f in fields(ManifestEntry))
_REFUSED = (
    "the index is damaged or crafted, so it is refused (download or convert the dataset again)"
)

log = logging.getLogger(__name__)

#: A shard's Parquet metadata and its checked bids2hf index.
Footer = tuple[pq.FileMetaData, list[EmbeddedFile]]

_show = reprlib.Repr()
_show.maxstring = 60
_show.maxother = 60
_show.maxlong = 30


def _is_int(value: object, low: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= _MAX


def safe_relpath(path: str, where: str = "") -> str:
    """Return ``path`` if it is a plain relative POSIX path; raise for anything that could escape.

    Raises:
        InputError: ``path`` is absolute, empty, has ``..``/``.``/empty parts, a backslash, a
            drive letter, a NUL, text that is no valid file name, or a part longer than 255 bytes.
    """
    prefix = f"{where}: " if where else ""
    try:
        parts_too_long = any(len(part.encode("utf-8")) > 255 for part in path.split("/"))
    except UnicodeEncodeError:  # a lone surrogate from a JSON escape: no file can have it
        parts_too_long = True
    if (
        not path
        or "\\" in path
        or "\x00" in path
        or path.startswith("/")
        or posixpath.isabs(path)
        or (len(path) > 1 and path[1] == ":")
        or any(part in ("..", "", ".") for part in path.split("/"))
        or parts_too_long
    ):
        raise InputError(
            f"{prefix}refusing stored path {path!r}: absolute, escaping the output folder or "
            "no valid file name"
        )
    return path


def _refuse(where: str, what: str) -> InputError:
    return InputError(f"{where}: {what}; {_REFUSED}")


def check_entry(e: ManifestEntry, where: str) -> ManifestEntry:
    """``e`` if every field has the right type and range; see :func:`parse_manifest`.

    Raises:
        InputError: a field is of the wrong type or out of range (a damaged or crafted entry).
    """
    if not isinstance(e.path, str) or not e.path:
        raise _refuse(where, f"path {_show.repr(e.path)} is no file path")
    if e.placement not in PLACEMENTS:
        raise _refuse(
            where, f"placement {_show.repr(e.placement)} is none of {', '.join(PLACEMENTS)}"
        )
    if not _is_int(e.size):
        raise _refuse(where, f"size {_show.repr(e.size)} is no byte count")
    if e.reason is not None and not isinstance(e.reason, str):
        raise _refuse(where, f"reason {_show.repr(e.reason)} is no text")
    if e.placement == "left_out":
        return e  # never written, only reported: its path may name a folder (``.git/``)
    safe_relpath(e.path, where)
    if not isinstance(e.sha256, str) or not _SHA256.fullmatch(e.sha256):
        raise _refuse(where, f"sha256 {_show.repr(e.sha256)} of {e.path!r} is no sha256")
    if not isinstance(e.location, str):
        raise _refuse(where, f"location {_show.repr(e.location)} of {e.path!r} is no path")
    safe_relpath(e.location, where)
    if e.placement == "dataset_file":
        if e.location != DATASET_FILES_PREFIX + e.path:
            raise _refuse(
                where,
                f"{e.path!r} is stored at {e.location!r}, not {DATASET_FILES_PREFIX + e.path!r}",
            )
        return e
    if e.placement == "beside":
        _check_beside(e, where)
    if not isinstance(e.column, str) or not e.column:
        raise _refuse(where, f"column {_show.repr(e.column)} of {e.path!r} is no column name")
    if not _is_int(e.row):
        raise _refuse(where, f"row {_show.repr(e.row)} of {e.path!r} is no row number")
    if e.index is not None and not _is_int(e.index, low=-1):
        raise _refuse(where, f"index {_show.repr(e.index)} of {e.path!r} is no list position")
    if e.offset is not None and not _is_int(e.offset):
        raise _refuse(where, f"offset {_show.repr(e.offset)} of {e.path!r} is no byte position")
    return e


def _check_beside(e: ManifestEntry, where: str) -> None:
    """[issue 11] A file stored beside the shards: at ``files/<path>``, its cell in ``shard``."""
    if e.location != BESIDE_PREFIX + e.path:
        raise _refuse(
            where, f"{e.path!r} is stored at {e.location!r}, not {BESIDE_PREFIX + e.path!r}"
        )
    if not isinstance(e.shard, str):
        raise _refuse(where, f"shard {_show.repr(e.shard)} of {e.path!r} is no path")
    safe_relpath(e.shard, where)


def parse_manifest(data: bytes, where: str = MANIFEST_PATH) -> list[ManifestEntry]:
    """The entries of a manifest, each checked for types, ranges and safe paths.

    Raises:
        InputError: the manifest is not UTF-8 JSON lines of objects with the manifest's fields,
            or an entry has a wrong type, a value out of range or a path that could escape.
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _refuse(where, f"not UTF-8 text (byte {exc.start})") from None
    entries = []
    # Lines end with "\n" only: a path may hold other line separators (U+2028, ...).
    for number, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        at = f"{where} line {number}"
        try:
            record = json.loads(line)
        except (ValueError, RecursionError) as exc:
            raise _refuse(at, f"not valid JSON ({exc})") from None
        if not isinstance(record, dict):
            raise _refuse(at, f"{_show.repr(record)} is no JSON object")
        # Fields a newer bids2hf added are ignored (forward compatibility); a missing field
        # becomes None, which check_entry then refuses by name.
        known = {k: v for k, v in record.items() if k in _MANIFEST_FIELDS}
        required = dict.fromkeys(("path", "size", "placement"))
        entries.append(check_entry(ManifestEntry(**{**required, **known}), at))
    return entries


def check_embedded(e: EmbeddedFile, where: str) -> EmbeddedFile:
    """``e`` (an entry of a shard's footer index) if its types, ranges and path are sound.

    Raises:
        InputError: they are not (a damaged or crafted index).
    """
    if e.location is None:
        stored = ManifestEntry(
            e.path, e.size, "row", e.sha256, "data/shard", e.column, e.row, e.index,
            offset=e.offset,
        )  # fmt: skip
    else:  # [issue 11] stored beside the shards
        stored = ManifestEntry(
            e.path, e.size, "beside", e.sha256, e.location, e.column, e.row, e.index,
            shard="data/shard",
        )  # fmt: skip
    check_entry(stored, where)
    if e.index is None:  # the writer always records -1 for single-valued columns
        raise _refuse(where, f"index of {e.path!r} is missing")
    return e


@dataclass
class PublishedDataset:
    """A converted dataset opened through fsspec."""

    fs: Any  # fsspec.AbstractFileSystem
    root: str
    url: str

    def path(self, relpath: str) -> str:
        return posixpath.join(self.root, relpath) if self.root else relpath

    def exists(self, relpath: str) -> bool:
        return bool(self.fs.exists(self.path(relpath)))

    def read_bytes(self, relpath: str) -> bytes:
        with self.fs.open(self.path(relpath), "rb") as f:
            return bytes(f.read())

    def _relative(self, found: Iterable[str]) -> list[str]:
        prefix = self.root.rstrip("/") + "/" if self.root else ""
        return [p[len(prefix) :] if p.startswith(prefix) else p for p in found]

    def files(self, folder: str) -> dict[str, int]:
        """Every file under ``folder`` with its size, in one listing (not one request per file)."""
        try:
            found = self.fs.find(self.path(folder), detail=True)
        except FileNotFoundError:
            return {}
        names = self._relative(found)
        return {
            name: int(info.get("size") or 0)
            for name, info in zip(names, found.values(), strict=True)
            if info.get("type", "file") != "directory"
        }

    def listing(self, folder: str) -> set[str]:
        """Every file under ``folder``, in one listing (not one request per file)."""
        return set(self.files(folder))

    def shard_sizes(self) -> dict[str, int]:
        """``data/*.parquet`` → size in bytes."""
        return {
            rel: size
            for rel, size in sorted(self.files("data").items())
            if rel.endswith(".parquet") and rel.count("/") == 1
        }

    def shards(self) -> list[str]:
        return sorted(self.shard_sizes())

    def manifest(self) -> list[ManifestEntry] | None:
        """The checked manifest entries, or None when there is no manifest.

        Raises:
            InputError: the manifest is damaged or crafted (see :func:`parse_manifest`).
        """
        if not self.exists(MANIFEST_PATH):
            return None
        return parse_manifest(self.read_bytes(MANIFEST_PATH), f"{self.url}/{MANIFEST_PATH}")

    def _metadata(self, shard: str) -> pq.FileMetaData:
        """A shard's Parquet metadata, in one read of its tail (two if the footer is longer).

        No read-ahead: a block read beyond the footer (5 MB on ``hf://``) would cost more than
        the footer itself, and reading a few files of a shard must cost about their bytes.

        Raises:
            pa.ArrowException, OSError: the file has no readable Parquet footer.
        """
        with self.fs.open(self.path(shard), "rb", cache_type="none") as f:
            size = f.seek(0, 2)
            f.seek(max(0, size - _FOOTER_GUESS))
            tail = f.read()
            if len(tail) < 12 or tail[-4:] != b"PAR1":
                raise OSError("no Parquet footer (magic bytes not found)")
            length = int.from_bytes(tail[-8:-4], "little") + 8
            if length > size - 4:
                raise OSError(f"footer of {length} bytes in a file of {size}")
            if length > len(tail):
                f.seek(size - length)
                tail = f.read(length - len(tail)) + tail
        return pq.read_metadata(io.BytesIO(b"PAR1" + tail[-length:]))

    def _index(self, shard: str, meta: pq.FileMetaData) -> list[EmbeddedFile]:
        where = f"{self.url}/{shard}"
        try:
            index = read_footer_index(meta)
        except (ValueError, TypeError, RecursionError) as exc:
            raise _refuse(where, f"unreadable bids2hf index ({exc})") from None
        return [check_embedded(e, f"{where} index entry {i}") for i, e in enumerate(index)]

    def footer(self, shard: str) -> Footer:
        """A shard's Parquet metadata and its checked bids2hf index (empty for foreign files).

        Raises:
            VerificationError: the shard is no readable Parquet file (a damaged copy).
            InputError: its index is damaged or crafted.
        """
        try:
            meta = self._metadata(shard)
        except (pa.ArrowException, OSError) as exc:
            raise VerificationError(
                f"{self.url}/{shard}: not a readable Parquet file ({exc}); the published copy "
                "is damaged"
            ) from None
        return meta, self._index(shard, meta)

    def footers(self, manifest: list[ManifestEntry] | None) -> dict[str, Footer]:
        """The footers of the shards that make up the dataset, by shard path.

        bids2hf never deletes a file it did not write, so ``data/`` may hold foreign files and
        stale copies next to the shards. With a manifest, only the ``data/*.parquet`` files it
        references are read (one it references but that is absent is left to the caller).
        Without one, every ``data/*.parquet`` is read, and a file that is no bids2hf shard (no
        readable Parquet file, or no bids2hf index in its footer) is ignored with a warning.

        Raises:
            VerificationError: a shard the manifest references is no readable Parquet file.
            InputError: the bids2hf index of a shard is damaged or crafted.
        """
        present = self.shards()
        if manifest is not None:
            referenced = {e.location for e in manifest if e.placement == "row"}
            referenced |= {e.shard for e in manifest if e.placement == "beside"}  # [issue 11]
            return {shard: self.footer(shard) for shard in present if shard in referenced}
        found: dict[str, Footer] = {}
        for shard in present:
            where = f"{self.url}/{shard}"
            try:
                meta = self._metadata(shard)
            except (pa.ArrowException, OSError) as exc:
                # Without a manifest, nothing says this file belongs to the dataset.
                log.warning(
                    "%s: not a bids2hf shard (no readable Parquet file: %s), ignored",
                    where,
                    one_line(str(exc)),
                )
                continue
            if FOOTER_KEY not in (meta.metadata or {}):
                log.warning("%s: not a bids2hf shard (no bids2hf index), ignored", where)
                continue
            # A file with a bids2hf index claims to be a shard: a damaged index is refused.
            found[shard] = meta, self._index(shard, meta)
        return found

    def embedded(self, manifest: list[ManifestEntry] | None) -> dict[str, list[EmbeddedFile]]:
        """Shard → the files its footer says it holds, for the shards of :meth:`footers`.

        Raises:
            VerificationError, InputError: see :meth:`footers`.
        """
        return {shard: files for shard, (_, files) in self.footers(manifest).items()}


def open_dataset(url: str) -> PublishedDataset:
    """Open a local folder, ``hf://datasets/ORG/NAME[@REV]`` or fsspec URL for reading.

    Raises:
        InputError: the URL cannot be opened, the storage refuses the token or credentials,
            no such repository or revision exists, or it holds no bids2hf dataset.
    """
    try:
        fs, root = fsspec.core.url_to_fs(url)
    except (ValueError, ImportError) as exc:
        raise InputError(f"{url}: cannot open ({exc})") from None
    root = root.rstrip("/")
    if is_hub(fs):
        # One commit for the whole read: a push meanwhile changes nothing export or verify
        # reads. (Raises "no such repository or revision", or a refused token, in one line.)
        root = pin_or_refuse(fs, root, url)
    dataset = PublishedDataset(fs, root, url)
    if not probe(fs, dataset.path("data"), url) and not probe(
        fs, dataset.path(MANIFEST_PATH), url
    ):
        raise InputError(f"{url}: no data/ folder or {MANIFEST_PATH}: not a bids2hf dataset")
    return dataset
