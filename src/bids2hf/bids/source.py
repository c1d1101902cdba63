"""[issue 15] Where a BIDS dataset is read from: a local folder, or an fsspec URL such as
``s3://bucket/ds``.

Every read of the source goes through a :class:`~bids2hf.model.source.Source`, so that ``scan``,
the shard writer, the copy of dataset-level files and ``verify`` work the same on both:
:class:`LocalSource` is the local folder, read exactly as before (``os.scandir`` walk,
``posix_fadvise`` readahead, ``readinto`` straight into the row group's buffer, size and mtime
checked before and after reading); :class:`~bids2hf.bids.source_fsspec.FsspecSource` is any
fsspec URL (imported only when a URL is opened, so that this module stays fsspec-free).

Light like :mod:`bids2hf.bids.walk` (standard library, ``errors``, ``model/``): shard-writing
worker processes unpickle a :class:`LocalSource`.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bids2hf.bids.walk import walk
from bids2hf.errors import RERUN_HINT, InputError, SourceChangedError
from bids2hf.model.rows import FileRef
from bids2hf.model.source import CHUNK, OnChunk, OnFile, Source, Walked

__all__ = ["LocalSource", "open_source", "sha256_of", "source_of"]


def open_source(
    location: str | os.PathLike[str] | Source,
    *,
    anon: bool | None = None,
    storage_options: dict[str, Any] | None = None,
) -> Source:
    """The source for a local path, a ``file://`` URL or any fsspec URL (a Source is returned as is).

    Args:
        location: the BIDS dataset's top folder.
        anon: S3 only: read anonymously (``True``), with credentials (``False``), or anonymously
            only when the AWS configuration holds no credentials (``None``).
        storage_options: passed to the fsspec file system (they win over ``anon``).

    Raises:
        InputError: the URL's protocol is not available (e.g. ``s3://`` without s3fs), or the
            AWS configuration is broken (a profile that does not exist).
    """
    if not isinstance(location, (str, os.PathLike)):
        return location
    text = os.fspath(location)
    if text.startswith("file://"):
        return LocalSource(Path(text[len("file://") :]))
    if "://" in text:
        # Imported here: a local source never loads fsspec (nor do workers that only read one).
        from bids2hf.bids.source_fsspec import FsspecSource

        return FsspecSource(text, storage_options, anon=anon)
    return LocalSource(Path(text))


def source_of(root: Path | str, source: Source | None) -> Source:
    """The source an inventory was scanned from (inventories built in memory have only a root)."""
    if source is not None:
        return source
    return open_source(root)


# -- local folders ------------------------------------------------------------------------------
_WILLNEED = getattr(os, "POSIX_FADV_WILLNEED", None)


@dataclass(frozen=True)
class LocalSource:
    """A local folder, read with os-level calls (readahead hints, ``readinto`` into the buffer)."""

    root: Path
    scan_threads: int = 8  # header checks are small reads spread over the disk

    @property
    def location(self) -> str:
        return str(self.root)

    @property
    def denied_hint(self) -> str:
        return "fix its permissions (chmod a+r)"

    def display(self, relpath: str) -> str:
        return str(self.root / relpath)

    def local_path(self, relpath: str) -> Path:
        return self.root / relpath

    def resolved(self) -> LocalSource:
        return LocalSource(self.root.resolve(), self.scan_threads)

    def exists(self) -> bool:
        return self.root.exists()

    def is_dir(self) -> bool:
        return self.root.is_dir()

    def walk(self, details: dict[str, str] | None = None) -> list[Walked]:
        return walk(self.root, details)

    def is_file(self, relpath: str) -> bool:
        return (self.root / relpath).is_file()

    def read_text(self, relpath: str, encoding: str, errors: str = "strict") -> str:
        return (self.root / relpath).read_text(encoding=encoding, errors=errors)

    def read_texts(
        self, relpaths: Sequence[str], encoding: str, errors: str = "strict"
    ) -> list[str | OSError | UnicodeDecodeError]:
        out: list[str | OSError | UnicodeDecodeError] = []
        for relpath in relpaths:  # one after the other: a local disk gains nothing from threads
            try:
                out.append(self.read_text(relpath, encoding, errors))
            except (OSError, UnicodeDecodeError) as exc:
                out.append(exc)
        return out

    def nifti_input(self, relpath: str) -> str:
        return str(self.root / relpath)

    def will_need(self, refs: Iterable[FileRef]) -> None:
        """The kernel reads these files while the current row group is encoded and written."""
        if _WILLNEED is None:
            return
        for ref in refs:
            try:
                fd = os.open(self.root / ref.relpath, os.O_RDONLY)
            except OSError:
                continue  # reported when the file is read
            try:
                os.posix_fadvise(fd, 0, 0, _WILLNEED)
            finally:
                os.close(fd)

    def read_files(
        self, items: Sequence[tuple[FileRef, memoryview]], on_chunk: OnChunk, on_file: OnFile
    ) -> None:
        for i, (ref, out) in enumerate(items):
            self._read_into(i, ref, out, on_chunk)
            on_file(i)

    def _read_into(self, i: int, ref: FileRef, out: memoryview, on_chunk: OnChunk) -> None:
        path = self.root / ref.relpath
        fd = _open_planned(path)
        try:
            st = os.fstat(fd)
            if st.st_size != ref.size or st.st_mtime_ns != ref.mtime_ns:
                raise SourceChangedError(
                    f"{path}: changed after planning (size or modification time); {RERUN_HINT}"
                )
            if hasattr(os, "posix_fadvise"):
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
            done = 0
            with os.fdopen(fd, "rb", buffering=0, closefd=False) as f:
                while done < ref.size:
                    n = f.readinto(out[done : min(ref.size, done + CHUNK)])
                    if not n:
                        raise SourceChangedError(
                            f"{path}: shorter than planned ({done} of {ref.size} bytes); {RERUN_HINT}"
                        )
                    on_chunk(i, out[done : done + n])
                    done += n
            if os.fstat(fd).st_mtime_ns != ref.mtime_ns:
                raise SourceChangedError(f"{path}: modified while being read; {RERUN_HINT}")
        finally:
            os.close(fd)

    def read_chunks(self, ref: FileRef | str) -> Iterator[bytes]:
        """A file's bytes, chunk by chunk; with a :class:`FileRef`, checked against the plan.

        Raises:
            SourceChangedError: the file is not the one planned (only with a ``FileRef``).
            OSError: the file cannot be read (only with a path).
            InputError: the file cannot be read (only with a ``FileRef``).
        """
        if isinstance(ref, str):
            with open(self.root / ref, "rb") as f:
                while chunk := f.read(CHUNK):
                    yield chunk
            return
        path = self.root / ref.relpath
        fd = _open_planned(path)
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(fd)
            if st.st_size != ref.size or st.st_mtime_ns != ref.mtime_ns:
                raise SourceChangedError(
                    f"{path}: changed after planning (size or modification time); {RERUN_HINT}"
                )
            done = 0
            while chunk := f.read(CHUNK):
                done += len(chunk)
                yield chunk
            after = os.fstat(fd)
            if done != ref.size or after.st_size != ref.size or after.st_mtime_ns != ref.mtime_ns:
                raise SourceChangedError(f"{path}: modified while being read; {RERUN_HINT}")


def _open_planned(path: Path) -> int:
    """``os.open`` a planned file; a missing file was removed after planning."""
    try:
        return os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        raise SourceChangedError(f"{path}: removed after planning; {RERUN_HINT}") from None
    except PermissionError:
        raise InputError(
            f"{path}: cannot be read (permission denied); fix its permissions (chmod a+r) "
            "or --exclude it"
        ) from None
    except OSError as exc:
        raise InputError(
            f"{path}: cannot be read ({exc.strerror or exc}); fix or --exclude it"
        ) from None


def sha256_of(source: Source, relpath: str, on_bytes: Callable[[int], object] | None = None) -> str:
    """sha256 of a source file.

    Raises:
        OSError: it cannot be read.
    """
    sha = hashlib.sha256()
    for chunk in source.read_chunks(relpath):
        sha.update(chunk)
        if on_bytes is not None:
            on_bytes(len(chunk))
    return sha.hexdigest()
