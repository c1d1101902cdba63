"""[issue 15] What a BIDS source is to its readers: the :class:`Source` and :class:`NiftiInput`
protocols, and :class:`Walked`, one entry of a source's listing.

Typing only (and the read size): the implementations, a local folder and an fsspec URL, live in
:mod:`bids2hf.bids.source` and :mod:`bids2hf.bids.source_fsspec`. The shard writer (``write/``,
which may import only ``model/``) receives a :class:`Source` object and never imports them:
worker processes unpickle the object, which imports its module at run time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from bids2hf.model.rows import FileRef

__all__ = ["CHUNK", "NiftiInput", "OnChunk", "OnFile", "Source", "Walked"]

#: Bytes read at a time (local ``readinto``, remote range request).
CHUNK = 8 * 1024 * 1024

OnChunk = Callable[[int, memoryview], None]  # (index of the item, bytes just read into it)
OnFile = Callable[[int], None]  # (index of the item): the file was read completely


@dataclass
class Walked:
    """One entry found by a walk of a source: a file, or a folder that was not entered.

    Folders that were not entered carry a trailing ``/`` in ``relpath``: version-control
    folders (``vcs_dir``) and folders given by ``not_followed`` (why they were not read).
    """

    relpath: str
    size: int = 0
    mtime_ns: int = 0
    is_symlink: bool = False
    broken: bool = False
    unreadable: bool = False
    vcs_dir: bool = False
    not_followed: str = ""
    version: str = ""  # [issue 15] remote sources: the listing's version token (ETag)

    @property
    def is_file(self) -> bool:
        """A regular file (or a symlink to one) whose size and mtime are known."""
        return not (self.broken or self.unreadable or self.vcs_dir or self.not_followed)


class Source(Protocol):
    """A BIDS dataset to read. Paths are POSIX paths relative to the dataset's top folder.

    Implementations are picklable (shard-writing workers receive them) and thread-safe.
    """

    @property
    def location(self) -> str:
        """The local folder (absolute once resolved) or the URL; recorded as the run's source."""
        ...

    @property
    def scan_threads(self) -> int:
        """Small reads (sidecars, NIfTI headers) worth keeping in flight at once."""
        ...

    @property
    def denied_hint(self) -> str:
        """What to do when reading is denied (for messages)."""
        ...

    def display(self, relpath: str) -> str:
        """``relpath`` as a user finds it: a local path or a URL (for messages)."""
        ...

    def local_path(self, relpath: str) -> Path | None:
        """The local file, where the source is a local folder (for os-level fast paths)."""
        ...

    def resolved(self) -> Source:
        """The same source with an absolute location (what is recorded and compared)."""
        ...

    def exists(self) -> bool:
        """The top folder exists (a remote prefix exists when something is listed under it)."""
        ...

    def is_dir(self) -> bool:
        """The top folder is a folder."""
        ...

    def walk(self, details: dict[str, str] | None = None) -> list[Walked]:
        """Every file, sorted by relative path, as :func:`bids2hf.bids.walk.walk` returns them.

        Raises:
            InputError: the top folder cannot be listed.
        """
        ...

    def is_file(self, relpath: str) -> bool:
        """``relpath`` is a file of the source."""
        ...

    def read_text(self, relpath: str, encoding: str, errors: str = "strict") -> str:
        """A small file's text, with universal newlines (as ``Path.read_text``).

        Raises:
            OSError: the file cannot be read.
            UnicodeDecodeError: its bytes are not text in ``encoding`` (with ``errors="strict"``).
        """
        ...

    def read_texts(
        self, relpaths: Sequence[str], encoding: str, errors: str = "strict"
    ) -> list[str | OSError | UnicodeDecodeError]:
        """:meth:`read_text` of several files (in parallel where that helps), in order: each
        file's text, or the error that reading (OSError) or decoding (UnicodeDecodeError) it
        raised."""
        ...

    def nifti_input(self, relpath: str) -> str | NiftiInput:
        """What :func:`bids2hf.bids.nifti.check_nifti` reads the file from.

        Raises:
            OSError: the file is not there.
        """
        ...

    def will_need(self, refs: Iterable[FileRef]) -> None:
        """Hint that these files are read soon (readahead)."""
        ...

    def read_files(
        self, items: Sequence[tuple[FileRef, memoryview]], on_chunk: OnChunk, on_file: OnFile
    ) -> None:
        """Read each planned file into its buffer (exactly ``ref.size`` bytes).

        ``on_chunk(i, view)`` is called for the chunks of item ``i`` in order, then
        ``on_file(i)``; items are completed in order.

        Raises:
            SourceChangedError: a file is not the one planned (removed, other size or version,
                changed while read).
            InputError: a file cannot be read.
        """
        ...

    def read_chunks(self, ref: FileRef | str) -> Iterator[bytes]:
        """A file's bytes, chunk by chunk; with a :class:`FileRef`, checked against the plan.

        Raises:
            SourceChangedError: the file is not the one planned (only with a ``FileRef``).
            OSError: the file cannot be read (only with a path).
            InputError: the file cannot be read (only with a ``FileRef``).
        """
        ...


class NiftiInput(Protocol):
    """A file that :func:`bids2hf.bids.nifti.check_nifti` reads (its name ends as on disk)."""

    name: str

    def size(self) -> int:
        """The file's size in bytes.

        Raises:
            OSError: it cannot be known.
        """
        ...

    def open(self, whole: bool = False) -> BinaryIO:
        """A seekable binary stream; ``whole``: the caller will read all of it.

        Raises:
            OSError: the file cannot be opened.
        """
        ...
