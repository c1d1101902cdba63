"""The target for a destination URL, by its protocol: ``hf://`` the Hub, anything else fsspec."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bids2hf.publish.targets.base import Target

__all__ = ["is_remote", "open_target"]


def is_remote(url: str | os.PathLike[str]) -> bool:
    """Whether ``url`` names a remote destination (any ``scheme://`` but ``file://``)."""
    return isinstance(url, str) and "://" in url and not url.startswith("file://")


def open_target(url: str, *, private: bool = False, timeout: float | None = 300.0) -> Target:
    """The publishing target for a URL (hf:// or any fsspec protocol).

    Raises :class:`~bids2hf.errors.InputError` for a URL the target cannot open.
    """
    if url.startswith("hf://"):
        from bids2hf.publish.targets.hub import HubTarget

        return HubTarget(url, private=private, timeout=timeout)
    from bids2hf.publish.targets.fsspec import FsspecTarget

    return FsspecTarget(url)
