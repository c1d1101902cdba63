"""Whether a published dataset can be read at all.

fsspec's ``exists()`` answers False for every error, so a refused token (HTTP 401/403), missing
credentials or an unreachable endpoint passed for "not a bids2hf dataset". :func:`probe` tells
"not there" (``FileNotFoundError``) from "not allowed" and "cannot be read", each in one line.
"""

from __future__ import annotations

from typing import Any

from bids2hf.errors import InputError, one_line

__all__ = ["is_hub", "probe", "unreadable"]


def _status(exc: BaseException) -> int | None:
    """The HTTP status of the response ``exc`` (or what caused it) carries, if any."""
    seen: BaseException | None = exc
    while seen is not None:
        status = getattr(getattr(seen, "response", None), "status_code", None)
        if isinstance(status, int):
            return status
        seen = seen.__cause__ or seen.__context__
    return None


def is_hub(fs: Any) -> bool:
    """``fs`` is the Hugging Face Hub's file system (``hf://``)."""
    protocol = getattr(fs, "protocol", ())
    return "hf" in ((protocol,) if isinstance(protocol, str) else tuple(protocol))


def unreadable(url: str, exc: BaseException, *, hub: bool) -> InputError:
    """The one line for a request on ``url`` (on the Hub if ``hub``) that failed with ``exc``,
    other than with "not found"."""
    status = _status(exc)
    if status in (401, 403) or isinstance(exc, PermissionError):
        how = f" (HTTP {status})" if status else ""
        fix = (
            "log in with `hf auth login` or set HF_TOKEN to a valid token that may read it"
            if hub
            else "configure credentials that may read it (AWS_PROFILE, AWS_ACCESS_KEY_ID, ...)"
        )
        return InputError(f"{url}: not allowed to read it{how}; {fix}")
    return InputError(f"{url}: cannot be read ({one_line(str(exc))})")


def probe(fs: Any, path: str, url: str) -> bool:
    """Whether ``path`` exists on ``fs``.

    Raises:
        InputError: the request failed otherwise than with "not found" (a refused token or
            credentials, an unreachable endpoint), naming ``url``.
    """
    try:
        fs.info(path)
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise unreadable(url, exc, hub=is_hub(fs)) from None
    return True
