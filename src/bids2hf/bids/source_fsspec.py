"""[issue 15] A BIDS dataset under an fsspec URL (``s3://openneuro.org/ds004884``), read in place.

The tree is listed once (one recursive ``find``: for S3, one request per 1,000 keys); small
files are read whole, several at a time; NIfTI headers are checked with range reads (header,
then the 4-byte gzip trailer); embedded files are fetched in 8 MiB ranges, several in flight,
straight into the row group's buffer, so memory stays bounded as for local sources and nothing
is staged on disk. A file's version is its ETag (or what the file system offers instead); after
a file is read its size and version are checked against the listing, so a file that changes on
the remote stops the run, naming it.

For S3, the standard AWS configuration applies (environment variables, including
``AWS_ENDPOINT_URL``, profiles, config files), and access is anonymous when no credentials are
configured (or when asked: ``anon=True``, ``--source-anon``), which is what public buckets such
as OpenNeuro's need. ``fsspec`` is imported only when the file system is opened.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_all
from typing import Any

from bids2hf.bids.remote_files import (
    Listed,
    RemoteNifti,
    access_hint,
    as_os_error,
    listing_from_find,
    storage_options_for,
    walked_from_listing,
)
from bids2hf.bids.remote_reads import differs, is_listed_version, md5_for, prefetch_ranges, ranges
from bids2hf.errors import RERUN_HINT, InputError, SourceChangedError
from bids2hf.model.rows import FileRef
from bids2hf.model.source import CHUNK, OnChunk, OnFile, Walked

__all__ = [
    "REMOTE_CONCURRENCY",
    "REMOTE_PREFETCH",
    "REMOTE_SCAN_CONCURRENCY",
    "FsspecSource",
]

#: Range requests in flight per remote source while embedding files.
REMOTE_CONCURRENCY = 8
#: Bytes of the next row group fetched while the current one is encoded and written (held in
#: memory on top of the row group's buffer, per writer process).
REMOTE_PREFETCH = 64 * 1024 * 1024
#: Small reads (sidecars, NIfTI headers) in flight per remote source while scanning.
REMOTE_SCAN_CONCURRENCY = 16


class FsspecSource:
    """A BIDS dataset under an fsspec URL (``s3://bucket/prefix``, ``gs://...``, ...).

    The file system is opened lazily, once per process (workers get the URL and options).
    """

    def __init__(
        self,
        url: str,
        storage_options: dict[str, Any] | None = None,
        *,
        anon: bool | None = None,
    ) -> None:
        self.location = url.rstrip("/")
        self.scan_threads = REMOTE_SCAN_CONCURRENCY
        self._options = storage_options_for(
            url, storage_options, anon, connections=2 * REMOTE_SCAN_CONCURRENCY
        )
        self._anon_asked = anon is True
        self._fs: Any = None
        self._root = ""
        self._listing: dict[str, Listed] | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._next: list[FileRef] = []  # files of the next row group (will_need)
        self._ahead: dict[tuple[FileRef, int, int], Future[bytes]] = {}  # ranges fetched ahead
        self._ahead_bytes = 0

    def __getstate__(self) -> dict[str, Any]:
        # Workers open their own file system and thread pool; the listing stays with the scan.
        return {
            "location": self.location,
            "scan_threads": self.scan_threads,
            "_options": self._options,
            "_anon_asked": self._anon_asked,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._fs, self._root, self._listing, self._pool = None, "", None, None
        self._next, self._ahead, self._ahead_bytes = [], {}, 0

    @property
    def anonymous(self) -> bool:
        return bool(self._options.get("anon"))

    @property
    def fs(self) -> Any:
        """The fsspec file system (opened on first use).

        Raises:
            InputError: the file system cannot be opened (e.g. s3fs missing).
        """
        if self._fs is None:
            try:
                import fsspec

                fs, root = fsspec.core.url_to_fs(self.location, **self._options)
            except (ImportError, ValueError) as exc:
                extra = " (install bids2hf[s3])" if self.location.startswith("s3") else ""
                raise InputError(f"{self.location}: cannot open ({exc}){extra}") from None
            self._fs, self._root = fs, str(root).rstrip("/")
        return self._fs

    def key(self, relpath: str) -> str:
        """The file system's path of ``relpath``."""
        _ = self.fs
        return f"{self._root}/{relpath}"

    def display(self, relpath: str) -> str:
        return f"{self.location}/{relpath}"

    def local_path(self, relpath: str) -> None:
        return None

    def resolved(self) -> FsspecSource:
        return self

    @property
    def denied_hint(self) -> str:
        return self._hint()

    def _hint(self) -> str:
        return access_hint(self.anonymous, self._anon_asked)

    def listing(self) -> dict[str, Listed]:
        """Every file under the URL (relative path → size, mtime, version): one recursive listing.

        Raises:
            InputError: the URL cannot be listed.
        """
        if self._listing is not None:
            return self._listing
        fs = self.fs
        try:
            found = fs.find(self._root, detail=True)
        except FileNotFoundError:
            found = {}
        except Exception as exc:
            raise InputError(
                f"{self.location}: cannot be listed ({type(exc).__name__}: {exc}); {self._hint()}"
            ) from None
        self._listing = listing_from_find(found, self._root)
        return self._listing

    def exists(self) -> bool:
        return bool(self.listing())

    def is_dir(self) -> bool:
        return self.exists()

    def walk(self, details: dict[str, str] | None = None) -> list[Walked]:
        return walked_from_listing(self.listing())

    def is_file(self, relpath: str) -> bool:
        return relpath in self.listing()

    def _cat(self, relpath: str, start: int | None = None, end: int | None = None) -> bytes:
        try:
            return bytes(self.fs.cat_file(self.key(relpath), start=start, end=end))
        except Exception as exc:
            raise as_os_error(exc) from None

    def read_text(self, relpath: str, encoding: str, errors: str = "strict") -> str:
        """A small file's text, with universal newlines (as ``Path.read_text``).

        Raises:
            OSError: the file is not listed or cannot be read (UnicodeDecodeError: not text).
        """
        listed = self.listing().get(relpath)
        if listed is None:
            raise FileNotFoundError(f"{self.display(relpath)}: not listed")
        # A range of the listed size: a plain GET of the whole object makes s3fs ask for its
        # size first (one more request per file).
        data = self._cat(relpath, 0, listed.size) if listed.size else b""
        # Decoded as Path.read_text decodes (universal newlines): the output must not differ
        # from a conversion of the same files on a local disk.
        with io.TextIOWrapper(io.BytesIO(data), encoding=encoding, errors=errors) as f:
            return f.read()

    def read_texts(
        self, relpaths: Sequence[str], encoding: str, errors: str = "strict"
    ) -> list[str | OSError | UnicodeDecodeError]:
        def one(relpath: str) -> str | OSError | UnicodeDecodeError:
            try:
                return self.read_text(relpath, encoding, errors)
            except (OSError, UnicodeDecodeError) as exc:
                return exc

        # One request each, latency-bound: many in flight.
        with ThreadPoolExecutor(self.scan_threads, thread_name_prefix="bids2hf-read") as pool:
            return list(pool.map(one, relpaths))

    def nifti_input(self, relpath: str) -> RemoteNifti:
        """Range reads of a listed file, for the NIfTI check.

        Raises:
            FileNotFoundError: the file is not listed.
        """
        listed = self.listing().get(relpath)
        if listed is None:
            raise FileNotFoundError(relpath)
        return RemoteNifti(self, relpath, listed.size)

    def will_need(self, refs: Iterable[FileRef]) -> None:
        """Remember the next row group's files: the end of :meth:`read_files` starts fetching them.

        The shard writer asks before it reads the current row group; fetching starts only once
        that one is read, so that the link stays busy while it is encoded and written (at most
        ``REMOTE_PREFETCH`` bytes are held for it).
        """
        self._next = list(refs)

    def _prefetch(self) -> None:
        refs, self._next = self._next, []
        pool = self._executor()
        for key in prefetch_ranges(refs, self._ahead, self._ahead_bytes, REMOTE_PREFETCH, CHUNK):
            ref, start, end = key
            self._ahead[key] = pool.submit(self._fetch, ref, start, end)
            self._ahead_bytes += end - start

    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(REMOTE_CONCURRENCY, thread_name_prefix="bids2hf-fetch")
        return self._pool

    def close(self) -> None:
        """Stop the fetching threads and drop what was fetched ahead (a later read starts anew)."""
        for fut in self._ahead.values():
            fut.cancel()
        self._ahead, self._ahead_bytes, self._next = {}, 0, []
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def check_unchanged(self, ref: FileRef) -> None:
        """Raise :class:`SourceChangedError` unless the file still has the planned size and version.

        Asked after a file was read: a change at any time since the listing shows here.

        Raises:
            SourceChangedError: removed, or another size or version.
            InputError: the file's details cannot be asked for.
        """
        try:
            info = self.fs.info(self.key(ref.relpath))
        except FileNotFoundError:
            raise SourceChangedError(
                f"{self.display(ref.relpath)}: removed after planning; {RERUN_HINT}"
            ) from None
        except Exception as exc:
            raise InputError(
                f"{self.display(ref.relpath)}: cannot be read ({as_os_error(exc)}); "
                f"{self._hint()}, or --exclude it"
            ) from None
        if differs(info, ref):
            raise SourceChangedError(
                f"{self.display(ref.relpath)}: changed after planning (size or ETag); {RERUN_HINT}"
            )

    def _fetch_into(self, ref: FileRef, start: int, out: memoryview) -> None:
        out[:] = self._fetch(ref, start, start + len(out))

    def _fetch(self, ref: FileRef, start: int, end: int) -> bytes:
        """Bytes ``start:end`` of a planned file (raises SourceChangedError or InputError)."""
        try:
            data = self._cat(ref.relpath, start, end)
        except FileNotFoundError:
            raise SourceChangedError(
                f"{self.display(ref.relpath)}: removed after planning; {RERUN_HINT}"
            ) from None
        except OSError as exc:
            # A file replaced by a shorter one fails a range read: name the change, not that.
            self.check_unchanged(ref)
            raise InputError(
                f"{self.display(ref.relpath)}: cannot be read ({exc}); {self._hint()}, "
                "or --exclude it"
            ) from None
        if len(data) != end - start:
            self.check_unchanged(ref)
            raise SourceChangedError(
                f"{self.display(ref.relpath)}: shorter than planned; {RERUN_HINT}"
            )
        return data

    def read_files(
        self, items: Sequence[tuple[FileRef, memoryview]], on_chunk: OnChunk, on_file: OnFile
    ) -> None:
        pool = self._executor()
        # Every range of every file is queued at once: REMOTE_CONCURRENCY requests run, each
        # writing into its own slice of the buffer, so memory holds the row group and no more.
        # Ranges fetched ahead (will_need) are copied from where they wait.
        jobs: list[tuple[FileRef, memoryview, list[tuple[int, Future[Any]]]]] = []
        for ref, out in items:
            spans: list[tuple[int, Future[Any]]] = []
            for start, end in ranges(ref.size, CHUNK):
                ahead = self._ahead.pop((ref, start, end), None)
                if ahead is not None:
                    self._ahead_bytes -= end - start
                    spans.append((start, ahead))
                else:
                    spans.append((start, pool.submit(self._fetch_into, ref, start, out[start:end])))
            jobs.append((ref, out, spans))
        checks: list[Future[None]] = []
        try:
            for i, (ref, out, spans) in enumerate(jobs):
                md5 = md5_for(ref)
                for start, fut in spans:
                    chunk = out[start : min(ref.size, start + CHUNK)]
                    data = fut.result()
                    if data is not None:  # fetched ahead: its bytes wait in memory
                        chunk[:] = data
                    if md5 is not None:
                        md5.update(chunk)
                    on_chunk(i, chunk)
                # Checked once all of it arrived: bytes whose MD5 is the listed ETag are the
                # listed version; otherwise a change since the listing shows in the ETag.
                if not is_listed_version(ref, md5):
                    checks.append(pool.submit(self.check_unchanged, ref))
                on_file(i)
            for fut in checks:
                fut.result()
            self._prefetch()  # the next row group, while this one is encoded and written
        except BaseException:
            pending = [f for _, _, spans in jobs for _, f in spans] + checks
            for fut in pending:
                fut.cancel()
            wait_all(pending)  # nothing may still write into the buffer once this returns
            raise

    def read_chunks(self, ref: FileRef | str) -> Iterator[bytes]:
        """A file's bytes, chunk by chunk (ranges fetched ahead); with a :class:`FileRef`,
        checked against the plan.

        Raises:
            SourceChangedError: the file is not the one planned (only with a ``FileRef``).
            OSError: the file cannot be read (only with a path).
            InputError: the file cannot be read (only with a ``FileRef``).
        """
        relpath = ref if isinstance(ref, str) else ref.relpath
        planned = None if isinstance(ref, str) else ref
        if planned is not None:
            size = planned.size
        else:
            listed = self.listing().get(relpath)
            size = (
                listed.size if listed is not None else int(self.fs.info(self.key(relpath))["size"])
            )
        pool = self._executor()
        spans = list(ranges(size, CHUNK))
        ahead: list[Future[bytes]] = []
        md5 = None if planned is None else md5_for(planned)
        try:
            for n, (start, end) in enumerate(spans):
                # A few ranges ahead of the consumer: bounded memory, the link kept busy.
                while len(ahead) < REMOTE_CONCURRENCY and n + len(ahead) < len(spans):
                    ahead.append(pool.submit(self._cat, relpath, *spans[n + len(ahead)]))
                try:
                    chunk = ahead.pop(0).result()
                except FileNotFoundError:
                    if planned is None:
                        raise
                    raise SourceChangedError(
                        f"{self.display(relpath)}: removed after planning; {RERUN_HINT}"
                    ) from None
                except OSError as exc:
                    if planned is None:
                        raise
                    self.check_unchanged(planned)
                    raise InputError(
                        f"{self.display(relpath)}: cannot be read ({exc}); {self._hint()}"
                    ) from None
                if len(chunk) != end - start:
                    if planned is None:
                        raise OSError(f"{self.display(relpath)}: shorter than listed")
                    self.check_unchanged(planned)
                    raise SourceChangedError(
                        f"{self.display(relpath)}: shorter than planned; {RERUN_HINT}"
                    )
                if md5 is not None:
                    md5.update(chunk)
                yield chunk
        finally:
            for fut in ahead:
                fut.cancel()
        if planned is not None and not is_listed_version(planned, md5):
            self.check_unchanged(planned)
