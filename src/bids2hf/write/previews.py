"""Thumbnails made in the writer's streaming pass, from the bytes it already holds in memory.

The shard writer reads each row group's files into one buffer; :class:`ThumbnailJobs` makes the
thumbnails of the chosen files (plan/previews.py) from that buffer on a thread of its own, while
the writer hashes, encodes and writes the same row group: zlib, numpy and Pillow release the GIL,
and the write leaves a core idle. The writer waits for them before it reuses the buffer.

nibabel and Pillow are imported only when a shard holds a chosen file (write/thumbnails.py loads
them lazily), so a worker with nothing to show never loads them. A thumbnail that cannot be made
never fails a conversion: one warning line, and no picture.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

from bids2hf.model.nifti_bytes import (
    DEFAULT_MAX_DECOMPRESSED,
    VOLUME_PROBE,
    volume_ranges,
)
from bids2hf.model.rows import FileRef
from bids2hf.model.sparse_bytes import SparseBytes

__all__ = ["ThumbnailJobs", "VolumeBytes", "make_thumbnail"]

log = logging.getLogger(__name__)


def make_thumbnail(data: bytes | memoryview | SparseBytes, relpath: str) -> bytes | None:
    """The PNG thumbnail of a NIfTI file held in memory, or None (logged) if none can be made.

    Never raises (but for ``BaseException``s such as KeyboardInterrupt): a damaged, CIFTI or
    otherwise unshowable image gets no picture, and the conversion goes on.
    """
    from bids2hf.write.thumbnails import ThumbnailError, thumbnail_png  # nibabel, PIL: lazily

    try:
        return thumbnail_png(data)
    except ThumbnailError as exc:  # names the problem itself
        log.warning("%s: no thumbnail (%s)", relpath, exc)
        return None
    except Exception as exc:  # any failure: a picture is never worth a failed conversion
        log.warning("%s: no thumbnail (%s: %s)", relpath, type(exc).__name__, str(exc)[:200])
        return None


class VolumeBytes:
    """The bytes of a NIfTI file that its thumbnail needs, kept from a stream of its chunks.

    A file streamed past (copied beside the shards, or read again for its sha256) is not held:
    only the ranges :func:`volume_ranges` names are kept, the header and the volume shown (an
    uncompressed file) or the compressed prefix that holds them (gzip). :meth:`view` gives them
    as a :class:`SparseBytes` of the file's size, which :func:`make_thumbnail` reads exactly as
    it reads a whole file in memory: the picture is the same, for about one volume's memory.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._probe = bytearray()
        self._ranges: list[tuple[int, int]] | None = None
        self._kept: list[bytearray] = []
        self._pos = 0

    def feed(self, chunk: bytes | memoryview) -> None:
        """Take the file's next chunk (chunks arrive in order, from its first byte)."""
        start = self._pos
        self._pos += len(chunk)
        if self._ranges is None:
            self._probe += chunk
            if len(self._probe) < VOLUME_PROBE and self._pos < self.size:
                return
            self._decide()
            return
        self._keep(start, chunk)

    def _decide(self) -> None:
        self._ranges = volume_ranges(self._probe, self.size, DEFAULT_MAX_DECOMPRESSED)
        self._kept = [bytearray() for _ in self._ranges]
        probe, self._probe = self._probe, bytearray()
        self._keep(0, probe)

    def _keep(self, start: int, chunk: bytes | bytearray | memoryview) -> None:
        assert self._ranges is not None
        for (lo, hi), kept in zip(self._ranges, self._kept, strict=True):
            # chunks come in order: what a range keeps grows from its start, without gaps
            a, b = max(lo + len(kept), start), min(hi, start + len(chunk))
            if a < b and a == lo + len(kept):
                kept += chunk[a - start : b - start]

    def view(self) -> SparseBytes:
        """The file as :func:`make_thumbnail` reads it (bytes not kept read as zeros)."""
        if self._ranges is None:  # a file shorter than the probe
            self._decide()
        assert self._ranges is not None
        return SparseBytes(
            self.size, [(lo, k) for (lo, _), k in zip(self._ranges, self._kept, strict=True)]
        )


class ThumbnailJobs:
    """Thumbnails of the ``wanted`` files of a shard, made on one thread as row groups are read.

    Usage, per row group: :meth:`submit` the files just read (only wanted ones are taken), then
    :meth:`wait` before their buffer is reused. :attr:`results` maps relpath → PNG or None.
    """

    def __init__(self, wanted: Collection[str]) -> None:
        self.wanted = wanted
        self.results: dict[str, bytes | None] = {}
        self._pool: ThreadPoolExecutor | None = None
        self._pending: list[tuple[str, Future[bytes | None]]] = []

    def submit(self, items: Sequence[tuple[FileRef, memoryview]]) -> None:
        """Start the thumbnails of the wanted files among ``items`` (file, its bytes in memory).

        The bytes must stay untouched until :meth:`wait` returns.
        """
        if not self.wanted:
            return
        started = {path for path, _ in self._pending}
        for ref, view in items:
            path = ref.relpath
            if path in self.wanted and path not in self.results and path not in started:
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(1, thread_name_prefix="bids2hf-thumbnail")
                self._pending.append((path, self._pool.submit(make_thumbnail, view, path)))
                started.add(path)

    def wait(self) -> None:
        """Wait for every thumbnail started (their buffers are free again afterwards)."""
        for path, fut in self._pending:
            self.results[path] = fut.result()
        self._pending.clear()

    def close(self) -> None:
        """Stop the thread (waiting for a running thumbnail: its buffer may be freed next)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        self._pending.clear()
