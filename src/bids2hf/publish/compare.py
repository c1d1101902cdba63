"""What is already at the destination: same-content checks, stale and owned remote paths, conflicts, verification.
"""

from __future__ import annotations

import logging
import posixpath
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from bids2hf.errors import DestinationError, VerificationError
from bids2hf.model.format import (
    FOOTER_KEY,
    MANIFEST_PATH,
    OWNED_PREFIXES,
    UserSectionError,
    user_section_span,
)
from bids2hf.model.manifest import loads
from bids2hf.model.rows import ShardPlan
from bids2hf.model.state import ShardRecord
from bids2hf.plan.previews import PREVIEWS_PATH, picture_path
from bids2hf.publish.retry import call_with_retries
from bids2hf.publish.targets.base import RemoteFile, Target, git_blob_oid
from bids2hf.publish.targets.fsspec import FsspecTarget
from bids2hf.publish.targets.hub import HubTarget, hub_call_settings

__all__ = [
    "Classified",
    "card_frame",
    "card_identities",
    "carries_bids2hf_index",
    "classify",
    "foreign_card",
    "kept_paths",
    "recorded_paths",
    "refuse_remote_conflicts",
    "remote_conflicts",
    "same_content",
    "stale_paths",
    "verify_remote",
]

log = logging.getLogger(__name__)


def same_content(
    remote: RemoteFile | None, size: int, sha256: str | None, local: Path | None = None
) -> bool:
    """Whether the remote already holds these bytes (sha256 for LFS/recorded files, git oid otherwise)."""
    if remote is None or remote.size != size or sha256 is None:
        return False
    if remote.sha256 is not None:
        return remote.sha256 == sha256
    if remote.git_oid is not None and local is not None and local.exists():
        return remote.git_oid == git_blob_oid(local)
    return False


@dataclass
class Classified:
    """What a run does with each planned shard."""

    skip: list[ShardPlan] = field(default_factory=list)  # the remote holds these very bytes
    resubmit: list[ShardPlan] = field(default_factory=list)  # on disk, not uploaded yet
    reuse: list[ShardPlan] = field(default_factory=list)  # on disk, complete (no remote)
    todo: list[ShardPlan] = field(default_factory=list)  # to write


def classify(
    shards: Iterable[ShardPlan],
    records: Mapping[str, ShardRecord],
    local_sizes: Mapping[str, int],
    remote: Mapping[str, RemoteFile] | None,
) -> Classified:
    """Sort planned shards by what is already done, from the resume state's ``records``, the
    sizes of the shard files on local disk (``local_sizes``, path → bytes; absent: no file) and
    the destination's listing (``remote``; None when converting to a local folder only).

    Pure: reads nothing. Never raises.
    """
    out = Classified()
    for shard in shards:
        rec = records.get(shard.path)
        current = rec is not None and rec.content_id == shard.content_id
        on_disk = current and rec is not None and local_sizes.get(shard.path) == rec.size
        if (
            remote is not None
            and rec is not None
            and current
            and same_content(remote.get(shard.path), rec.size, rec.sha256)
        ):
            out.skip.append(shard)
        elif on_disk and remote is not None:
            out.resubmit.append(shard)
        elif on_disk:
            out.reuse.append(shard)
        else:
            out.todo.append(shard)
    return out


def stale_paths(
    remote: Collection[str], keep: Iterable[str], owned: Collection[str] | None = None
) -> list[str]:
    """Remote files in bids2hf's folders that the new output lacks; with ``owned``, only those
    a bids2hf run recorded writing (the ones it may delete)."""
    wanted = set(keep)
    return sorted(
        p
        for p in remote
        if p.startswith(OWNED_PREFIXES) and p not in wanted and (owned is None or p in owned)
    )


def card_identities(path: Path) -> set[str]:
    """The identities a card file would have on a remote: its git blob oid (how the Hub lists a
    regular file), its sha256 (LFS files, fsspec checksums) and, when it has a user section,
    the digest of everything outside it (:func:`card_frame`). Raises OSError if unreadable."""
    from bids2hf.model.format import sha256_file

    ids = {f"git:{git_blob_oid(path)}", f"sha256:{sha256_file(path)}"}
    frame = card_frame(path.read_bytes())
    return ids | {frame} if frame else ids


def card_frame(card: bytes) -> str | None:
    """``frame:<sha256>`` of a card with its user section emptied: the same for every edit made
    inside the user section (which readers are invited to make), different for any other edit.
    None when the card has no single well-formed user section. Never raises."""
    import hashlib

    text = card.decode("utf-8", errors="replace")
    try:
        span = user_section_span(text, "README.md")
    except UserSectionError:
        return None
    if span is None:
        return None
    start, end = span
    return "frame:" + hashlib.sha256((text[:start] + text[end:]).encode()).hexdigest()


def foreign_card(
    remote: RemoteFile | None,
    recorded: Collection[str],
    fetch: Callable[[], bytes] | None = None,
) -> bool:
    """Whether the remote card is none of the cards bids2hf recorded publishing there (edited
    on the Hub since, so someone else's). An edit inside the card's user section keeps it
    bids2hf's: when the listed identity is unknown and ``fetch`` is given, the remote card is
    read and its :func:`card_frame` compared. Without a record, or without an identity in the
    listing, nothing says so: False. Never raises (a card that cannot be read counts as edited).
    """
    if remote is None or not recorded:
        return False
    ids = set()
    if remote.git_oid is not None:
        ids.add(f"git:{remote.git_oid}")
    if remote.sha256 is not None:
        ids.add(f"sha256:{remote.sha256}")
    if not ids or ids & set(recorded):
        return False
    if fetch is None or not any(r.startswith("frame:") for r in recorded):
        return True
    try:
        frame = card_frame(fetch())
    except Exception as exc:  # unreadable: as if edited (the run then asks for --overwrite)
        log.debug("reading the remote card failed: %s", exc)
        return True
    return frame is None or frame not in recorded


def recorded_paths(target: Target, remote: dict[str, RemoteFile]) -> set[str]:
    """Remote paths that a bids2hf run recorded writing, as far as the remote itself says.

    That is the files its manifest places (shards, dataset-level files), the manifest, the
    card and the previews committed with it, and on fsspec targets every file in ``bids2hf/checksums.json``.
    A staging folder's state adds the paths its own runs wrote (see ``ResumeState.remote_owned``).
    A manifest that does not parse records nothing (a warning says so): unknown files are never
    deleted. Raises :class:`DestinationError` if the manifest cannot be fetched at all.
    """
    owned: set[str] = set()
    if isinstance(target, FsspecTarget):
        owned.update(target.checksums())
    if MANIFEST_PATH not in remote:
        return owned
    try:
        data = _read_remote(target, MANIFEST_PATH)
    except FileNotFoundError:
        return owned
    except Exception as exc:
        # Without it, bids2hf's own files there would pass for someone else's.
        raise DestinationError(
            f"{target.url}/{MANIFEST_PATH}: cannot be read ({type(exc).__name__}: "
            f"{str(exc)[:200]}); it records what bids2hf wrote there: re-run later"
        ) from None
    try:
        entries = loads(data)
    except (ValueError, TypeError, KeyError) as exc:
        log.warning(
            "%s/%s: unreadable (%s); files it would place are treated as not written by bids2hf",
            target.url,
            MANIFEST_PATH,
            exc,
        )
        return owned
    owned.update((MANIFEST_PATH, "README.md"))
    owned.update(e.location for e in entries if e.location)
    # [issue 13] the previews file and the pictures of the image columns the manifest names,
    # committed with it: bids2hf's only where the remote card links them (a picture someone put
    # there after a run with --previews 0, or before previews existed, is theirs).
    images = {e.column for e in entries if e.column and e.path.endswith((".nii", ".nii.gz"))}
    previews = [p for p in (PREVIEWS_PATH, *(picture_path(c) for c in images)) if p in remote]
    if previews and "README.md" in remote:
        try:
            card = _read_remote(target, "README.md").decode("utf-8", errors="replace")
        except Exception as exc:  # unreadable: none of them counts as bids2hf's
            log.debug("reading the remote card failed: %s", exc)
            card = ""
        owned.update(p for p in previews if p in card)
    return owned


def read_remote(target: Target, path: str) -> bytes:
    """The bytes of the file ``path`` of the destination.

    Raises:
        FileNotFoundError: no such file there.
        TypeError: a target kind that cannot be read.
    """
    return _read_remote(target, path)


def _read_remote(target: Target, path: str) -> bytes:
    if isinstance(target, HubTarget):
        from huggingface_hub import get_session, hf_hub_url
        from huggingface_hub.utils import build_hf_headers, hf_raise_for_status

        url = hf_hub_url(target.repo_id, path, repo_type="dataset", revision=target.revision)

        def read() -> bytes:
            # One GET through the shared client, inside hub_call_settings: --timeout bounds it.
            # (HfFileSystem would first list the folder, with no timeout, then read with its own.)
            with hub_call_settings(target.timeout):
                response = get_session().get(url, headers=build_hf_headers())
                if response.status_code == 404:
                    raise FileNotFoundError(path)
                hf_raise_for_status(response)
                return bytes(response.content)

        return bytes(call_with_retries(f"read {path} ({target.repo_id})", read, target.policy))
    if isinstance(target, FsspecTarget):
        with target.fs.open(posixpath.join(target.root, path), "rb") as f:
            return bytes(f.read())
    raise TypeError(f"cannot read from {type(target).__name__}")


def carries_bids2hf_index(target: Target, path: str) -> bool:
    """Whether the remote Parquet file at ``path`` carries bids2hf's index in its footer: a shard
    bids2hf wrote, committed before any record of it was (an upload killed after a batch
    commit, resumed with a fresh staging folder). Only the footer is read (range reads).

    A file that cannot be read as Parquet carries none. Raises nothing of its own.
    """
    import pyarrow.parquet as pq

    def footer() -> bool:
        fs, key = _remote_fs(target, path)
        with fs.open(key, "rb") as f:
            meta = pq.ParquetFile(f).metadata
        return FOOTER_KEY in (meta.metadata or {})

    try:
        if isinstance(target, HubTarget):

            def bounded() -> bool:
                # Metadata requests on the shared client get --timeout; HfFileSystem's byte
                # reads carry their own (HF_HUB_DOWNLOAD_TIMEOUT), its folder listing none.
                with hub_call_settings(target.timeout):
                    return footer()

            return bool(call_with_retries(f"read footer of {path}", bounded, target.policy))
        return footer()
    except Exception as exc:  # not Parquet, or unreadable: not shown to be ours
        log.debug("%s/%s: no bids2hf footer read (%s)", target.url, path, exc)
        return False


def _remote_fs(target: Target, path: str) -> tuple[Any, str]:
    if isinstance(target, HubTarget):
        from huggingface_hub import HfFileSystem

        # A fresh instance: a cached one may hold a listing from before the last commit.
        fs = HfFileSystem(skip_instance_cache=True)
        revision = quote(target.revision, safe="")
        return fs, f"datasets/{target.repo_id}@{revision}/{path}"
    if isinstance(target, FsspecTarget):
        return target.fs, posixpath.join(target.root, path)
    raise TypeError(f"cannot read from {type(target).__name__}")


def remote_conflicts(
    remote: dict[str, RemoteFile], owned: Collection[str], paths: Iterable[str]
) -> list[str]:
    """Paths this run writes where the remote holds a file no bids2hf run recorded writing."""
    return sorted(p for p in set(paths) if p in remote and p not in owned)


def refuse_remote_conflicts(url: str, conflicts: Sequence[str], overwrite: bool) -> None:
    """Refuse to replace files bids2hf did not write, unless ``overwrite`` (then say which).

    Raises :class:`DestinationError` naming the first file.
    """
    if not conflicts:
        return
    more = f" [+{len(conflicts) - 1} more]" if len(conflicts) > 1 else ""
    if not overwrite:
        raise DestinationError(
            f"{url}: {conflicts[0]} exists there and no bids2hf record says bids2hf wrote it"
            f"{more}; pass --overwrite to replace such files, or publish to another repository"
        )
    log.warning(
        "%s: --overwrite: replacing %d file(s) bids2hf did not write: %s",
        url,
        len(conflicts),
        ", ".join(conflicts[:10]) + (" ..." if len(conflicts) > 10 else ""),
    )


def verify_remote(
    target: Target,
    expected: dict[str, tuple[int, str]],
    local: dict[str, Path],
    owned: Collection[str] | None = None,
) -> None:
    """Compare the remote file list, sizes and checksums with what was written.

    A file in bids2hf's folders that is not expected counts as a difference if bids2hf wrote it
    (in ``owned``; any such file if ``owned`` is None). Raises :class:`VerificationError`.
    """
    remote = target.files()
    problems = []
    for path, (size, sha) in sorted(expected.items()):
        got = remote.get(path)
        if got is None:
            problems.append(f"missing {path}")
        elif got.size != size:
            problems.append(f"size {path}: {got.size} != {size}")
        elif got.sha256 is not None and got.sha256 != sha:
            problems.append(f"sha256 {path}")
        elif (
            got.sha256 is None
            and got.git_oid is not None
            and path in local
            and local[path].exists()
            and got.git_oid != git_blob_oid(local[path])
        ):
            problems.append(f"content {path}")
    extra = stale_paths(remote, expected, owned)
    problems += [f"unexpected {p}" for p in extra]
    if problems:
        shown = "; ".join(problems[:10]) + (
            f"; +{len(problems) - 10} more" if len(problems) > 10 else ""
        )
        raise VerificationError(f"{target.url}: the remote differs from what was written: {shown}")


def kept_paths(stale: Iterable[str], owned: Collection[str]) -> list[str]:
    """Files the new output lacks that stay, since no record says bids2hf wrote them."""
    return [p for p in stale if p not in owned]
