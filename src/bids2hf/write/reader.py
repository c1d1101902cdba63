"""Reading a row group's source files into one reusable buffer, hashing them on the way."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

from bids2hf.model.rows import FileRef
from bids2hf.model.source import Source

__all__ = ["FileReader", "Progress"]

Progress = Callable[[int, int], None]  # (bytes, files) just read


class FileReader:
    """Reads source files into one reusable buffer per row group, hashing as it goes.

    Hashing runs on a second thread (``hashlib`` releases the GIL), chunk by chunk right behind
    the reads, so sha256 costs no time on the read/write path; :meth:`flush` waits for it.
    """

    def __init__(self, source: Source, progress: Progress | None) -> None:
        self.source = source
        self.progress = progress
        self._arena = np.empty(0, dtype=np.uint8)
        self.hashes: dict[str, str] = {}
        self._hasher = ThreadPoolExecutor(1, thread_name_prefix="bids2hf-sha256")
        self._pending: list[Future[None]] = []

    def close(self) -> None:
        self._hasher.shutdown(wait=True)

    def flush(self) -> None:
        """Wait until every chunk read so far is hashed (before the buffer is reused)."""
        for fut in self._pending:
            fut.result()
        self._pending.clear()

    def _finish(self, relpath: str, sha: Any) -> None:
        self.hashes[relpath] = sha.hexdigest()

    def arena(self, size: int) -> np.ndarray:
        """One buffer for all the files of a row group, reused from one row group to the next.

        Reuse spares the kernel from faulting in fresh pages for every row group; the buffer only
        grows when a row group is larger than any before it.
        """
        if self._arena.nbytes < size:
            self._arena = np.empty(0, dtype=np.uint8)  # release the old one before allocating
            self._arena = np.empty(size, dtype=np.uint8)
        return self._arena

    def read_files(self, items: Sequence[tuple[FileRef, memoryview]]) -> None:
        """Read each file into its buffer, hashing each chunk as it arrives.

        Raises :class:`SourceChangedError` (the file is not the planned one) or
        :class:`~bids2hf.errors.InputError` (it cannot be read).
        """
        shas = [hashlib.sha256() for _ in items]

        def on_chunk(i: int, chunk: memoryview) -> None:
            # One hashing thread: updates run in submission order (the source calls this in
            # order for each file).
            self._pending.append(self._hasher.submit(shas[i].update, chunk))
            if self.progress:
                self.progress(len(chunk), 0)

        def on_file(i: int) -> None:
            self._pending.append(self._hasher.submit(self._finish, items[i][0].relpath, shas[i]))
            if self.progress:
                self.progress(0, 1)

        self.source.read_files(items, on_chunk, on_file)

    def read_into(self, ref: FileRef, out: memoryview) -> None:
        self.read_files([(ref, out)])

    def sha256(self, ref: FileRef) -> str:
        if ref.relpath not in self.hashes:
            self.flush()
        if ref.relpath not in self.hashes:
            scratch = np.empty(ref.size, dtype=np.uint8)
            self.read_into(ref, memoryview(scratch.data))
            self.flush()
        return self.hashes[ref.relpath]
