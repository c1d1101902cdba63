"""``bids2hf://``: a converted dataset seen as its BIDS folder, through fsspec, read-only.

Follows fsspec's convention for archives (``zip://``): the dataset is the target of a chained
URL, and paths are BIDS paths::

    fsspec.open("bids2hf://sub-01/anat/sub-01_T1w.nii.gz::hf://datasets/ORG/NAME")
    fsspec.open("bids2hf://participants.tsv::s3://bucket/prefix")
    BidsHfFileSystem("out/")                         # a local output folder

The index is ``bids2hf/manifest.jsonl`` (read once, kept). A file is read from where it is:

- a row file with a recorded ``offset`` (manifest, or the shard's footer index): byte ranges of
  its shard, one request per read;
- a row file without one (compressed ``files`` column, or an output written before offsets
  were recorded): its row group's column chunk, read once with pyarrow; every file of that
  chunk is then kept in a small cache, since sidecars come in groups;
- a dataset-level file: its copy under ``bids/``.

Checksums. A range read cannot be checked against a whole-file sha256, so with ``verify=True``
(the default) the first read of each file fetches the whole file, checks its sha256 and only
then returns bytes: a wrong offset is refused, never returned. The file is then known good for
this filesystem instance, whose index and (on the Hub) revision are fixed, and later reads of it
are plain range reads. Files up to ``cache_file_bytes`` stay in memory (``cache_bytes`` in all);
larger ones are spooled to a temporary file for the open file object that read them first.
``verify=False`` trusts the index: seek + read is then always one range request.

On ``hf://`` the revision is pinned to the commit the index was read from, so that an update of
the dataset never mixes a new shard with an old index.
"""

from __future__ import annotations

import errno
import hashlib
import posixpath
import threading
from collections import OrderedDict
from typing import IO, Any, ClassVar

import fsspec
import pyarrow.parquet as pq

from bids2hf.errors import InputError
from bids2hf.model.format import MANIFEST_PATH
from bids2hf.model.ranges import RangeError
from bids2hf.readback.access import pin_or_refuse
from bids2hf.readback.bids_fs_file import READ_ONLY, BidsHfFile, ReadOnlyFileSystem
from bids2hf.readback.bids_fs_index import (
    IndexEntry,
    ShardFooter,
    bids_copies,
    entries_from_manifest,
    entry_from_footer,
    folder_tree,
    footer_length,
    offset_in_footer,
    parse_footer,
    row_group_in_footer,
)
from bids2hf.readback.bids_fs_reads import (
    RangeReader,
    bids_paths,
    cell_bytes,
    dir_info,
    file_info,
    listing,
    spool_checked,
    wanted_range,
)
from bids2hf.readback.ranges import cat_range, check_range

__all__ = ["BidsHfFile", "BidsHfFileSystem"]

#: Bytes fetched from a shard's end to get its footer in one request in most cases.
_FOOTER_GUESS = 64 << 10


class BidsHfFileSystem(ReadOnlyFileSystem):
    """The BIDS tree of a bids2hf output (local, ``hf://``, ``s3://``, any fsspec URL).

    Args:
        fo: the dataset: a URL (``hf://datasets/ORG/NAME``, ``s3://b/p``, a local folder), or,
            when ``target_protocol`` or ``fs`` is given, a path of that filesystem (fsspec's
            archive convention: chained URLs pass the inner path here).
        target_protocol, target_options: the filesystem holding the dataset and its options.
        fs: a filesystem instance to use instead (``fo`` is then a path of it).
        verify: check each file's sha256 on its first read (see the module docstring).
        block_size: read-ahead block of open files (reads never go past the file's end).
        cache_bytes, cache_file_bytes: memory kept for verified small files, in all and per file.

    Raises (on first use, not at construction):
        InputError: ``fo`` is not a bids2hf dataset, or its manifest/index is unreadable or
            names unsafe paths.
    """

    protocol: ClassVar[str | tuple[str, ...]] = "bids2hf"
    root_marker = ""

    def __init__(
        self,
        fo: str = "",
        *,
        target_protocol: str | None = None,
        target_options: dict[str, Any] | None = None,
        fs: fsspec.AbstractFileSystem | None = None,
        verify: bool = True,
        block_size: int = 4 << 20,
        cache_bytes: int = 64 << 20,
        cache_file_bytes: int = 16 << 20,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if fs is not None:
            self.target, root = fs, str(fo)
        elif target_protocol is not None:
            self.target = fsspec.filesystem(target_protocol, **(target_options or {}))
            root = str(fo)
        else:
            try:
                self.target, root = fsspec.core.url_to_fs(str(fo), **(target_options or {}))
            except (ValueError, ImportError) as exc:
                raise InputError(f"{fo}: cannot open ({exc})") from None
        self.fo = str(fo)
        self.root = root.rstrip("/")
        self.verify = verify
        self.blocksize = block_size
        self.cache_bytes = cache_bytes
        self.cache_file_bytes = cache_file_bytes
        #: Bytes and requests sent to the underlying filesystem (index and data).
        self.stats = {"bytes": 0, "requests": 0}
        self._lock = threading.RLock()
        self._files: dict[str, IndexEntry] | None = None
        self._members: dict[tuple[str, str], list[IndexEntry]] = {}
        self._dirs: dict[str, list[str]] = {}
        self._sizes: dict[str, int] = {}
        self._footers: dict[str, ShardFooter] = {}
        self._verified: set[str] = set()
        self._cache: OrderedDict[str, bytes] = OrderedDict()
        self._cached = 0

    # -- paths ---------------------------------------------------------------------------------
    @classmethod
    def _strip_protocol(cls, path: Any) -> Any:
        return bids_paths(path)

    def _obj(self, relpath: str) -> str:
        return f"{self.root}/{relpath}" if self.root else relpath

    def ukey(self, path: str) -> str:
        return hashlib.sha256(f"{self.fo}\0{self.root}\0{path}".encode()).hexdigest()

    # -- underlying reads ----------------------------------------------------------------------
    def _count(self, n: int) -> None:
        with self._lock:
            self.stats["bytes"] += n
            self.stats["requests"] += 1

    def _cat(self, obj: str, start: int, end: int) -> bytes:
        data = cat_range(self.target, self._obj(obj), start, end)
        self._count(len(data))
        return data

    def _cat_whole(self, obj: str) -> bytes:
        data = bytes(self.target.cat_file(self._obj(obj)))
        self._count(len(data))
        return data

    def _size(self, obj: str) -> int:
        with self._lock:
            known = self._sizes.get(obj)
        if known is None:
            known = int(self.target.size(self._obj(obj)))
            with self._lock:
                self._sizes[obj] = known
        return known

    # -- the index -----------------------------------------------------------------------------
    def _index(self) -> dict[str, IndexEntry]:
        with self._lock:
            if self._files is None:
                self._load()
            assert self._files is not None
            return self._files

    def _load(self) -> None:
        self.root = pin_or_refuse(self.target, self.root, self.fo).rstrip("/")
        try:
            manifest = self._cat_whole(MANIFEST_PATH)
        except FileNotFoundError:
            manifest = None
        entries = (
            entries_from_manifest(manifest, f"{self.fo}/{MANIFEST_PATH}")
            if manifest is not None
            else self._from_footers()
        )
        files, self._dirs, self._members = folder_tree(entries, self.fo)
        self._files = files

    def _from_footers(self) -> list[IndexEntry]:
        """No manifest (an interrupted upload, an older tool): shard footers and ``bids/``."""
        out: list[IndexEntry] = []
        try:
            listed = self.target.ls(self._obj("data"), detail=True)
        except FileNotFoundError:
            raise InputError(
                f"{self.fo}: no data/ folder or {MANIFEST_PATH}: not a bids2hf dataset"
            ) from None
        for info in listed:
            name = str(info["name"])
            if not name.endswith(".parquet"):
                continue
            shard = "data/" + posixpath.basename(name)  # data/ is flat
            self._sizes[shard] = int(info["size"])
            out += [entry_from_footer(e, shard) for e in self._footer(shard).index]
        try:
            found = self.target.find(self._obj("bids"), detail=True)
        except FileNotFoundError:
            found = {}
        out += bids_copies(found, self._obj("bids") + "/")
        return out

    def _footer(self, shard: str) -> ShardFooter:
        with self._lock:
            cached = self._footers.get(shard)
        if cached is not None:
            return cached
        where = f"{self.fo}/{shard}"
        try:
            size = self._size(shard)
            # One request for the tail, a second only for a footer longer than that.
            tail = self._cat(shard, max(0, size - _FOOTER_GUESS), size)
        except FileNotFoundError:
            raise RangeError(f"{where}: listed in the index but missing") from None
        length = footer_length(tail, size, where)
        if length > len(tail):
            tail = self._cat(shard, size - length, size - len(tail)) + tail
        footer = parse_footer(tail[-length:], where)
        with self._lock:
            self._footers[shard] = footer
        return footer

    def _entry(self, path: str) -> IndexEntry:
        path = self._strip_protocol(path)
        entry = self._index().get(path)
        if entry is None:
            if path in self._dirs:
                raise IsADirectoryError(errno.EISDIR, "is a directory", path)
            raise FileNotFoundError(errno.ENOENT, "no such file in the dataset", path)
        return entry

    # -- reading -------------------------------------------------------------------------------
    def _location(self, entry: IndexEntry) -> int | None:
        """The entry's offset in its object; looks in the shard footer if the manifest has none."""
        if entry.offset is not None or not entry.in_row:
            return entry.offset
        entry.offset = offset_in_footer(self._footer(entry.obj), entry)
        return entry.offset

    def _remember(self, path: str, data: bytes) -> None:
        if len(data) > self.cache_file_bytes:
            return
        with self._lock:
            if path in self._cache:
                return
            self._cache[path] = data
            self._cached += len(data)
            while self._cached > self.cache_bytes and self._cache:
                _, old = self._cache.popitem(last=False)
                self._cached -= len(old)

    def _recall(self, path: str) -> bytes | None:
        with self._lock:
            data = self._cache.get(path)
            if data is not None:
                self._cache.move_to_end(path)
            return data

    def _trusted(self, entry: IndexEntry) -> bool:
        return not self.verify or entry.sha256 is None or entry.path in self._verified

    def _whole(self, entry: IndexEntry) -> bytes | IO[bytes]:
        """The whole file, sha256 checked: bytes, or a spooled temporary file if it is large.

        Raises:
            RangeError: the bytes do not hash to the recorded sha256 (nothing is returned).
        """
        data = self._recall(entry.path)
        if data is not None:
            return data
        offset = self._location(entry)
        if offset is None:
            return self._from_column(entry)
        what = f"{self.fo}: {entry.path}"
        if entry.size <= self.cache_file_bytes:
            data = self._cat(entry.obj, offset, offset + entry.size)
            if entry.sha256 is not None:
                check_range(data, entry.sha256, what)
            self._mark_verified(entry)
            self._remember(entry.path, data)
            return data
        spool = spool_checked(self._cat, entry, offset, self.cache_file_bytes, what)
        self._mark_verified(entry)
        spool.seek(0)
        return spool

    def _mark_verified(self, entry: IndexEntry) -> None:
        with self._lock:
            self._verified.add(entry.path)

    def _from_column(self, entry: IndexEntry) -> bytes:
        """Read the entry's row group column chunk; check and keep every file found in it."""
        assert entry.row is not None and entry.column is not None
        footer = self._footer(entry.obj)
        where = f"{self.fo}/{entry.obj}"
        group = row_group_in_footer(footer, entry, where)
        parquet = pq.ParquetFile(RangeReader(self._cat, entry.obj, self._size(entry.obj)), metadata=footer.meta)
        table = parquet.read_row_group(group, columns=[entry.column])
        col = table.column(entry.column)
        start = footer.starts[group]
        stop = start + table.num_rows
        wanted: bytes | None = None
        for e in self._members.get((entry.obj, entry.column), []):
            assert e.row is not None
            if not start <= e.row < stop or (e is not entry and self._recall(e.path) is not None):
                continue
            data = cell_bytes(col[e.row - start], e, where, self.fo)
            self._mark_verified(e)
            if e is entry:
                wanted = data
            else:
                self._remember(e.path, data)
        del table
        assert wanted is not None
        self._remember(entry.path, wanted)
        return wanted

    def _read(self, entry: IndexEntry, start: int, end: int) -> bytes:
        """Bytes ``[start, end)`` of a file (clipped to its size), checked as the class says."""
        start, end = max(0, start), min(end, entry.size)
        if end <= start:
            return b""
        cached = self._recall(entry.path)
        if cached is not None:
            return cached[start:end]
        offset = self._location(entry)
        if offset is not None and self._trusted(entry):
            return self._cat(entry.obj, offset + start, offset + end)
        whole = self._whole(entry)
        if isinstance(whole, bytes):
            return whole[start:end]
        try:
            whole.seek(start)
            return whole.read(end - start)
        finally:
            whole.close()

    # -- fsspec API ----------------------------------------------------------------------------
    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        path = self._strip_protocol(path)
        files = self._index()
        if path in files:
            return file_info(files[path])
        if path in self._dirs:
            return dir_info(path)
        raise FileNotFoundError(errno.ENOENT, "no such file in the dataset", path)

    def ls(self, path: str = "", detail: bool = True, **kwargs: Any) -> list[Any]:
        out = listing(self._strip_protocol(path), self._index(), self._dirs)  # _index: _dirs
        return out if detail else [o["name"] for o in out]

    def cat_file(
        self, path: str, start: int | None = None, end: int | None = None, **kwargs: Any
    ) -> bytes:
        entry = self._entry(path)
        return self._read(entry, *wanted_range(start, end, entry.size))

    def _open(
        self,
        path: str,
        mode: str = "rb",
        block_size: int | None = None,
        autocommit: bool = True,
        cache_options: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> BidsHfFile:
        if mode != "rb":
            raise OSError(errno.EROFS, READ_ONLY, path)
        entry = self._entry(path)
        return BidsHfFile(
            self,
            entry,
            block_size=block_size or self.blocksize,
            cache_type=kwargs.get("cache_type", "readahead"),
            cache_options=cache_options,
        )
