"""A file's bytes of which only some ranges are held: what is kept of a file streamed past."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["SparseBytes"]


class SparseBytes:
    """A file's bytes of which only some ranges are held (the others read as zeros): what
    :func:`read_volume` needs of a file streamed past, without holding the file. Sliced like
    ``bytes``; ``len`` is the file's size.
    """

    def __init__(self, size: int, pieces: Sequence[tuple[int, bytes | bytearray]]) -> None:
        self.size = size
        self.pieces = sorted(pieces, key=lambda p: p[0])  # (offset in the file, bytes held)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, key: slice) -> bytes | memoryview:
        start, stop, _ = key.indices(self.size)
        stop = max(start, stop)
        for at, piece in self.pieces:  # within one piece: no copy
            if at <= start and stop <= at + len(piece):
                return memoryview(piece)[start - at : stop - at]
        out = bytearray(stop - start)
        for at, piece in self.pieces:
            lo, hi = max(start, at), min(stop, at + len(piece))
            if lo < hi:
                out[lo - start : hi - start] = piece[lo - at : hi - at]
        return bytes(out)
