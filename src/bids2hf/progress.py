"""A progress bar in bytes and files (tqdm), silent when disabled or not wanted."""

from __future__ import annotations

import threading
from types import TracebackType

from tqdm.auto import tqdm

from bids2hf.interrupts import stop_if_interrupted

__all__ = ["ProgressBar"]


class ProgressBar:
    """Thread-safe byte/file counter with an optional tqdm bar on stderr."""

    def __init__(
        self, total_bytes: int, total_files: int, *, enabled: bool = True, desc: str = ""
    ) -> None:
        self.total_files = total_files
        self.bytes = 0
        self.files = 0
        self._lock = threading.Lock()
        self._bar = (
            tqdm(
                total=total_bytes,
                unit="B",
                unit_scale=True,
                unit_divisor=1000,
                desc=desc,
                dynamic_ncols=True,
            )
            if enabled
            else None
        )

    def update(self, nbytes: int, nfiles: int = 0) -> None:
        """Count ``nbytes`` and ``nfiles`` more done.

        Raises:
            KeyboardInterrupt: on the command line's main thread, a Ctrl-C came and its
                KeyboardInterrupt was dropped (see :mod:`bids2hf.interrupts`).
        """
        stop_if_interrupted()
        with self._lock:
            self.bytes += nbytes
            self.files += nfiles
            if self._bar is not None:
                if nfiles:
                    self._bar.set_postfix_str(
                        f"{self.files}/{self.total_files} files", refresh=False
                    )
                self._bar.update(nbytes)

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._bar is not None:
            self._bar.close()
