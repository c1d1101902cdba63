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

from bids2hf.model.rows import FileRef

__all__ = ["ThumbnailJobs", "make_thumbnail"]

log = logging.getLogger(__name__)


def make_thumbnail(data: bytes | memoryview, relpath: str) -> bytes | None:
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
