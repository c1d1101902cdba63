"""[issue 14] ``--engine``/``--scheduler``: the Dask client a conversion runs on, if any."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from typing import Any

from bids2hf.errors import InputError

__all__ = ["engine_client"]


@contextlib.contextmanager
def engine_client(engine: str, scheduler: str | None, workers: int | None) -> Iterator[Any]:
    """[issue 14] The Dask client ``convert`` gets (None for the local engine), closed at the end.

    Raises:
        InputError: --scheduler without --engine dask.
        ClusterError: Dask is missing, or the scheduler cannot be reached.
    """
    if engine != "dask":
        if scheduler is not None:
            raise InputError("--scheduler: only with --engine dask; add --engine dask")
        yield None
        return
    from bids2hf.scale.dask_engine import dask_client

    with contextlib.suppress(ImportError):  # (dask_client says what to install)
        import distributed  # noqa: F401 - imported first: it sets its loggers to INFO

        # The CLI's --quiet/--debug decide, not distributed's defaults (its INFO lines would
        # drown the summary).
        if logging.getLogger().level > logging.DEBUG:
            logging.getLogger("distributed").setLevel(
                max(logging.WARNING, logging.getLogger().level)
            )
    with dask_client(scheduler or f"local:{workers or os.cpu_count() or 1}") as client:
        yield client
