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
import io
import json
import posixpath
import tempfile
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import IO, Any, ClassVar

import fsspec
import pyarrow.parquet as pq
from fsspec.spec import AbstractBufferedFile

from bids2hf.errors import InputError
from bids2hf.model.format import FOOTER_KEY, MANIFEST_PATH
from bids2hf.model.ranges import RangeError, bytes_leaf, row_group_of
from bids2hf.readback.published import safe_relpath
from bids2hf.readback.ranges import cat_range, check_range

__all__ = ["BidsHfFile", "BidsHfFileSystem"]

_READ_ONLY = "bids2hf:// is read-only"
_CHUNK = 8 << 20
#: Bytes fetched from a shard's end to get its footer in one request in most cases.
_FOOTER_GUESS = 64 << 10


@dataclass
class _Entry:
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
        return self.column is not None


@dataclass
class _Footer:
    meta: pq.FileMetaData
    starts: list[int]
    index: list[dict[str, Any]] = field(default_factory=list)


def _footer_index(meta: pq.FileMetaData, where: str) -> list[dict[str, Any]]:
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


def _pin_hf_revision(fs: fsspec.AbstractFileSystem, root: str) -> str:
    """``root`` of an ``hf://`` repository with its revision replaced by the commit it is at."""
    try:
        from huggingface_hub import HfApi, HfFileSystem, constants
        from huggingface_hub.hf_file_system import HfFileSystemResolvedRepositoryPath
    except ImportError:
        return root
    if not isinstance(fs, HfFileSystem):
        return root
    resolved = fs.resolve_path(root)
    if not isinstance(resolved, HfFileSystemResolvedRepositoryPath):  # a bucket: no revisions
        return root
    repo_type = resolved.repo_type
    info = HfApi(endpoint=fs.endpoint, token=fs.token).repo_info(
        resolved.repo_id, repo_type=repo_type, revision=resolved.revision
    )
    if not info.sha:
        return root
    pinned = f"{constants.REPO_TYPES_URL_PREFIXES.get(repo_type, '')}{resolved.repo_id}@{info.sha}"
    return f"{pinned}/{resolved.path_in_repo}" if resolved.path_in_repo else pinned


class _RangeFile(io.RawIOBase):
    """A remote object as a seekable file where every read is one exact range request.

    Handed to pyarrow to read a footer or one column chunk without read-ahead.
    """

    def __init__(self, owner: BidsHfFileSystem, obj: str, size: int) -> None:
        super().__init__()
        self.owner, self.obj, self.size, self.pos = owner, obj, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        n = max(0, min(len(view), self.size - self.pos))
        if n:
            view[:n] = self.owner._cat(self.obj, self.pos, self.pos + n)
            self.pos += n
        return n


class BidsHfFileSystem(fsspec.AbstractFileSystem):
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
        self._files: dict[str, _Entry] | None = None
        self._members: dict[tuple[str, str], list[_Entry]] = {}
        self._dirs: dict[str, list[str]] = {}
        self._sizes: dict[str, int] = {}
        self._footers: dict[str, _Footer] = {}
        self._verified: set[str] = set()
        self._cache: OrderedDict[str, bytes] = OrderedDict()
        self._cached = 0

    # -- paths ---------------------------------------------------------------------------------
    @classmethod
    def _strip_protocol(cls, path: Any) -> Any:
        if isinstance(path, list):
            return [cls._strip_protocol(p) for p in path]
        path = str(path)
        if path.startswith("bids2hf://"):
            path = path[len("bids2hf://") :]
        return path.strip("/")

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
    def _index(self) -> dict[str, _Entry]:
        with self._lock:
            if self._files is None:
                self._load()
            assert self._files is not None
            return self._files

    def _load(self) -> None:
        try:
            self.root = _pin_hf_revision(self.target, self.root).rstrip("/")
        except FileNotFoundError:
            raise InputError(f"{self.fo}: no such repository or revision") from None
        except OSError as exc:  # huggingface_hub's HTTP errors are OSErrors
            raise InputError(f"{self.fo}: cannot read the repository ({exc})") from None
        try:
            manifest = self._cat_whole(MANIFEST_PATH)
        except FileNotFoundError:
            manifest = None
        entries = self._from_manifest(manifest) if manifest is not None else self._from_footers()
        files: dict[str, _Entry] = {}
        for e in entries:
            safe_relpath(e.path)
            safe_relpath(e.obj)
            files.setdefault(e.path, e)  # the first placement wins, as in export
        dirs: dict[str, set[str]] = {"": set()}
        members: dict[tuple[str, str], list[_Entry]] = {}
        for path, e in files.items():
            parts = path.split("/")
            parent = ""
            for i, part in enumerate(parts):
                dirs.setdefault(parent, set()).add(part)
                if i < len(parts) - 1:
                    parent = "/".join(parts[: i + 1])
                    if parent in files:
                        raise InputError(f"{self.fo}: {parent!r} is both a file and a folder")
            if e.column is not None:
                members.setdefault((e.obj, e.column), []).append(e)
        self._members = members
        self._dirs = {d: sorted(children) for d, children in dirs.items()}
        self._files = files

    def _from_manifest(self, data: bytes) -> list[_Entry]:
        out = []
        try:
            for line in data.decode("utf-8").splitlines():
                if not line.strip():
                    continue
                r = json.loads(line)
                placement = r.get("placement")
                # [issue 11] a file stored beside the shards is read like a dataset-level file
                if placement in ("dataset_file", "beside"):
                    out.append(_Entry(r["path"], int(r["size"]), r.get("sha256"), r["location"], 0))
                elif placement == "row":
                    offset = r.get("offset")
                    out.append(
                        _Entry(
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
            raise InputError(f"{self.fo}/{MANIFEST_PATH}: unreadable manifest ({exc})") from None
        return out

    def _from_footers(self) -> list[_Entry]:
        """No manifest (an interrupted upload, an older tool): shard footers and ``bids/``."""
        out: list[_Entry] = []
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
            for e in self._footer(shard).index:
                offset = e.get("offset")
                if e.get("location") is not None:  # [issue 11] stored beside the shards
                    out.append(_Entry(e["path"], int(e["size"]), e.get("sha256"), e["location"], 0))
                    continue
                out.append(
                    _Entry(
                        e["path"],
                        int(e["size"]),
                        e.get("sha256"),
                        shard,
                        None if offset is None else int(offset),
                        e["column"],
                        int(e["row"]),
                        int(e.get("index", -1)),
                    )
                )
        try:
            found = self.target.find(self._obj("bids"), detail=True)
        except FileNotFoundError:
            found = {}
        bids_prefix = self._obj("bids") + "/"
        for name, info in found.items():
            if info.get("type") == "directory" or not str(name).startswith(bids_prefix):
                continue
            rel = str(name)[len(bids_prefix) :]
            # No manifest, so no sha256 to check these copies against.
            out.append(_Entry(rel, int(info["size"]), None, "bids/" + rel, 0))
        return out

    def _footer(self, shard: str) -> _Footer:
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
        if len(tail) < 12 or tail[-4:] != b"PAR1":
            raise RangeError(f"{where}: not a Parquet file")
        length = int.from_bytes(tail[-8:-4], "little") + 8
        if length > size - 4:
            raise RangeError(f"{where}: footer longer than the file")
        if length > len(tail):
            tail = self._cat(shard, size - length, size - len(tail)) + tail
        try:
            meta = pq.read_metadata(io.BytesIO(b"PAR1" + tail[-length:]))
        except (OSError, ValueError) as exc:
            raise RangeError(f"{where}: unreadable footer ({exc})") from None
        starts, n = [], 0
        for i in range(meta.num_row_groups):
            starts.append(n)
            n += meta.row_group(i).num_rows
        footer = _Footer(meta, starts, _footer_index(meta, where))
        with self._lock:
            self._footers[shard] = footer
        return footer

    def _entry(self, path: str) -> _Entry:
        path = self._strip_protocol(path)
        entry = self._index().get(path)
        if entry is None:
            if path in self._dirs:
                raise IsADirectoryError(errno.EISDIR, "is a directory", path)
            raise FileNotFoundError(errno.ENOENT, "no such file in the dataset", path)
        return entry

    # -- reading -------------------------------------------------------------------------------
    def _location(self, entry: _Entry) -> int | None:
        """The entry's offset in its object; looks in the shard footer if the manifest has none."""
        if entry.offset is not None or not entry.in_row:
            return entry.offset
        footer = self._footer(entry.obj)
        for e in footer.index:
            if (e.get("column"), e.get("row"), e.get("index", -1)) == (
                entry.column,
                entry.row,
                entry.index,
            ) and e.get("offset") is not None:
                entry.offset = int(e["offset"])
                break
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

    def _trusted(self, entry: _Entry) -> bool:
        return not self.verify or entry.sha256 is None or entry.path in self._verified

    def _whole(self, entry: _Entry) -> bytes | IO[bytes]:
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
        # Handed to the caller, who closes it.
        spool: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=self.cache_file_bytes)  # noqa: SIM115
        try:
            sha = hashlib.sha256()
            for start in range(0, entry.size, _CHUNK):
                piece = self._cat(entry.obj, offset + start, offset + min(entry.size, start + _CHUNK))
                sha.update(piece)
                spool.write(piece)
            if entry.sha256 is not None and sha.hexdigest() != entry.sha256:
                raise RangeError(
                    f"{what}: the bytes at its recorded offset do not match its sha256; "
                    "refusing them (the index or the shard is damaged)"
                )
        except BaseException:
            spool.close()
            raise
        self._mark_verified(entry)
        spool.seek(0)
        return spool

    def _mark_verified(self, entry: _Entry) -> None:
        with self._lock:
            self._verified.add(entry.path)

    def _from_column(self, entry: _Entry) -> bytes:
        """Read the entry's row group column chunk; check and keep every file found in it."""
        assert entry.row is not None and entry.column is not None
        footer = self._footer(entry.obj)
        where = f"{self.fo}/{entry.obj}"
        if not 0 <= entry.row < footer.meta.num_rows:
            raise RangeError(f"{where}: has no row {entry.row}, where the index puts {entry.path!r}")
        group = row_group_of(footer.starts, entry.row)
        leaves = [footer.meta.schema.column(i).path for i in range(footer.meta.num_columns)]
        if bytes_leaf(entry.column, leaves) is None:
            raise RangeError(f"{where}: has no column {entry.column!r} for {entry.path!r}")
        parquet = pq.ParquetFile(_RangeFile(self, entry.obj, self._size(entry.obj)), metadata=footer.meta)
        table = parquet.read_row_group(group, columns=[entry.column])
        col = table.column(entry.column)
        start = footer.starts[group]
        stop = start + table.num_rows
        wanted: bytes | None = None
        for e in self._members.get((entry.obj, entry.column), []):
            assert e.row is not None
            if not start <= e.row < stop or (e is not entry and self._recall(e.path) is not None):
                continue
            cell = col[e.row - start]
            item = cell if e.index is None or e.index < 0 else cell.values[e.index]
            if item["path"].as_py() != e.path:
                raise RangeError(
                    f"{where}: row {e.row} column {e.column} holds {item['path'].as_py()!r}, "
                    f"the index says {e.path!r}"
                )
            value = item["bytes"]
            data = value.as_buffer().to_pybytes() if value.is_valid else b""
            if len(data) != e.size:
                raise RangeError(f"{self.fo}: {e.path}: {len(data)} bytes stored, {e.size} recorded")
            if e.sha256 is not None:
                check_range(data, e.sha256, f"{self.fo}: {e.path}")
            self._mark_verified(e)
            if e is entry:
                wanted = data
            else:
                self._remember(e.path, data)
        del table
        assert wanted is not None
        self._remember(entry.path, wanted)
        return wanted

    def _read(self, entry: _Entry, start: int, end: int) -> bytes:
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
    def _dir_info(self, path: str) -> dict[str, Any]:
        return {"name": path, "size": 0, "type": "directory"}

    def _file_info(self, entry: _Entry) -> dict[str, Any]:
        return {"name": entry.path, "size": entry.size, "type": "file", "sha256": entry.sha256}

    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        path = self._strip_protocol(path)
        files = self._index()
        if path in files:
            return self._file_info(files[path])
        if path in self._dirs:
            return self._dir_info(path)
        raise FileNotFoundError(errno.ENOENT, "no such file in the dataset", path)

    def ls(self, path: str = "", detail: bool = True, **kwargs: Any) -> list[Any]:
        path = self._strip_protocol(path)
        files = self._index()
        if path in files:
            out = [self._file_info(files[path])]
        elif path in self._dirs:
            out = []
            for name in self._dirs[path]:
                child = f"{path}/{name}" if path else name
                out.append(self._file_info(files[child]) if child in files else self._dir_info(child))
        else:
            raise FileNotFoundError(errno.ENOENT, "no such file or folder in the dataset", path)
        return out if detail else [o["name"] for o in out]

    def cat_file(
        self, path: str, start: int | None = None, end: int | None = None, **kwargs: Any
    ) -> bytes:
        entry = self._entry(path)
        s = 0 if start is None else (start if start >= 0 else max(0, entry.size + start))
        e = entry.size if end is None else (end if end >= 0 else entry.size + end)
        return self._read(entry, s, e)

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
            raise OSError(errno.EROFS, _READ_ONLY, path)
        entry = self._entry(path)
        return BidsHfFile(
            self,
            entry,
            block_size=block_size or self.blocksize,
            cache_type=kwargs.get("cache_type", "readahead"),
            cache_options=cache_options,
        )

    def created(self, path: str) -> Any:
        raise NotImplementedError("bids2hf:// keeps no timestamps")

    def modified(self, path: str) -> Any:
        raise NotImplementedError("bids2hf:// keeps no timestamps")

    def mkdir(self, path: str, create_parents: bool = True, **kwargs: Any) -> None:
        raise OSError(errno.EROFS, _READ_ONLY, path)

    def makedirs(self, path: str, exist_ok: bool = False) -> None:
        raise OSError(errno.EROFS, _READ_ONLY, path)

    def rm(self, path: Any, recursive: bool = False, maxdepth: int | None = None) -> None:
        raise OSError(errno.EROFS, _READ_ONLY, str(path))

    def pipe_file(self, path: str, value: bytes, mode: str = "overwrite", **kwargs: Any) -> None:
        raise OSError(errno.EROFS, _READ_ONLY, path)

    def cp_file(self, path1: str, path2: str, **kwargs: Any) -> None:
        raise OSError(errno.EROFS, _READ_ONLY, path2)


class BidsHfFile(AbstractBufferedFile):
    """An open BIDS file: buffered reads mapped to range reads of its shard or ``bids/`` copy.

    With verification pending, the first read fetches and checks the whole file and serves
    every read of this handle from that copy.
    """

    def __init__(
        self,
        fs: BidsHfFileSystem,
        entry: _Entry,
        block_size: int,
        cache_type: str = "readahead",
        cache_options: dict[str, Any] | None = None,
    ) -> None:
        self.entry = entry
        self._copy: bytes | IO[bytes] | None = None
        super().__init__(
            fs,
            entry.path,
            mode="rb",
            block_size=block_size,
            cache_type=cache_type,
            cache_options=cache_options,
            size=entry.size,
        )

    def _fetch_range(self, start: int, end: int) -> bytes:
        fs: BidsHfFileSystem = self.fs
        end = min(end, self.entry.size)
        if end <= start:
            return b""
        if self._copy is None and not fs._trusted(self.entry) and fs._recall(self.entry.path) is None:
            self._copy = fs._whole(self.entry)
        if self._copy is None:
            return fs._read(self.entry, start, end)
        if isinstance(self._copy, bytes):
            return self._copy[start:end]
        self._copy.seek(start)
        return self._copy.read(end - start)

    def close(self) -> None:
        if self._copy is not None and not isinstance(self._copy, bytes):
            self._copy.close()
        self._copy = None
        super().close()
