"""Whether a published dataset can be read at all.

fsspec's ``exists()`` answers False for every error, so a refused token (HTTP 401/403), missing
credentials or an unreachable endpoint passed for "not a bids2hf dataset". :func:`probe` tells
"not there" (``FileNotFoundError``) from "not allowed" and "cannot be read", each in one line.
"""

from __future__ import annotations

from typing import Any

import fsspec

from bids2hf.errors import InputError, one_line

__all__ = ["is_hub", "pin_hf_revision", "pin_or_refuse", "probe", "unreadable"]


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
    except Exception as exc:  # OSErrors, and HTTP clients' own (a refused connection)
        raise unreadable(url, exc, hub=is_hub(fs)) from None
    return True


def pin_hf_revision(fs: fsspec.AbstractFileSystem, root: str) -> str:
    """``root`` of an ``hf://`` repository with its revision replaced by the commit it is at."""
    try:
        from huggingface_hub import HfApi, HfFileSystem, constants
        from huggingface_hub.hf_file_system import HfFileSystemResolvedRepositoryPath
    except ImportError:
        return root
    if not isinstance(fs, HfFileSystem):
        return root
    resolved = fs.resolve_path(root)
    if not isinstance(resolved, HfFileSystemResolvedRepositoryPath):  # a bucket: no revisions
        return root
    repo_type = resolved.repo_type
    info = HfApi(endpoint=fs.endpoint, token=fs.token).repo_info(
        resolved.repo_id, repo_type=repo_type, revision=resolved.revision
    )
    if not info.sha:
        return root
    pinned = f"{constants.REPO_TYPES_URL_PREFIXES.get(repo_type, '')}{resolved.repo_id}@{info.sha}"
    return f"{pinned}/{resolved.path_in_repo}" if resolved.path_in_repo else pinned


def pin_or_refuse(fs: fsspec.AbstractFileSystem, root: str, url: str) -> str:
    """:func:`pin_hf_revision`, its errors as one line naming ``url``.

    Raises:
        InputError: no such repository or revision; the token is refused; the request failed
            (an unreachable endpoint too); the URL names no repository.
    """
    try:
        return pin_hf_revision(fs, root)
    except FileNotFoundError:
        raise InputError(f"{url}: no such repository or revision") from None
    except OSError as exc:  # huggingface_hub's HTTP errors are OSErrors
        raise unreadable(url, exc, hub=True) from None
    except ValueError:  # huggingface_hub's HfUriError: no ORG/NAME in the URL
        raise InputError(f"{url}: expected hf://datasets/ORG/NAME[@REVISION]") from None
    except Exception as exc:  # the HTTP client's own (a refused connection...): one request
        raise unreadable(url, exc, hub=True) from None
