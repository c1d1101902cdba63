"""Where a dataset is published: the Hugging Face Hub, or any fsspec file system.

Both targets offer the same small interface used by :mod:`bids2hf.publish`: list what the remote
holds, stage one file (upload it without making it visible where that is possible), and commit a
batch atomically. Writes are idempotent, so a re-run after any interruption is safe.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import posixpath
import re
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import httpx2

from .errors import DestinationError, InputError
from .retry import RetryPolicy, call_with_retries, is_transient, status_of
from .write import sha256_file

log = logging.getLogger(__name__)

_HF_URL = re.compile(r"^hf://(?:(datasets)/)?([\w.-]+/[\w.-]+)(?:@([^/]+))?/?$")


@dataclass(frozen=True)
class RemoteFile:
    """A file the destination holds."""

    path: str
    size: int
    sha256: str | None = None  # known for LFS files on the Hub and from our checksum record
    git_oid: str | None = None  # git blob sha1 (Hub regular files)


@dataclass
class StagedFile:
    """A local file handed to a target, with what we know of its content."""

    path: str  # path in the destination
    local: Path
    size: int
    sha256: str | None  # None until computed (the publisher hashes shards off the write path)
    handle: Any = None  # target-specific (a CommitOperationAdd for the Hub)
    uploaded: bool = False  # bytes are on the remote; the local copy may be deleted

    def checksum(self) -> str:
        """The sha256, computed from the local file the first time it is needed."""
        if self.sha256 is None:
            self.sha256 = sha256_file(self.local)
        return self.sha256


class Target(Protocol):
    url: str

    def ensure(self) -> None: ...
    def files(self) -> dict[str, RemoteFile]: ...
    def stage(self, item: StagedFile) -> None: ...
    def commit(
        self, items: Sequence[StagedFile], deletions: Sequence[str], message: str
    ) -> bool: ...


def git_blob_oid(path: Path) -> str:
    """The git blob sha1 of a file, as the Hub reports it for non-LFS files."""
    sha = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            sha.update(chunk)
    return sha.hexdigest()


def is_remote(url: str | os.PathLike[str]) -> bool:
    return isinstance(url, str) and "://" in url and not url.startswith("file://")


# -- Hugging Face Hub ------------------------------------------------------------------------
class HubTarget:
    """A dataset repository on the Hub (or any endpoint speaking its API, via HF_ENDPOINT)."""

    def __init__(
        self,
        url: str,
        *,
        private: bool = False,
        policy: RetryPolicy | None = None,
        timeout: float | None = 300.0,
    ) -> None:
        match = _HF_URL.match(url)
        if not match:
            raise InputError(
                f"{url}: expected hf://datasets/ORG/NAME or hf://datasets/ORG/NAME@REVISION"
            )
        if match.group(1) is None:
            raise InputError(
                f"{url}: only dataset repositories are supported (hf://datasets/ORG/NAME)"
            )
        from huggingface_hub import HfApi
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()  # bids2hf shows its own progress
        if timeout is not None:
            _set_timeouts(timeout)
        self.url = url
        self.repo_id = match.group(2)
        self.revision = match.group(3) or "main"
        self.private = private
        self.policy = policy or RetryPolicy()
        self.api = HfApi()

    def _retry(self, what: str, fn: Any) -> Any:
        return call_with_retries(f"{what} ({self.repo_id})", fn, self.policy)

    def ensure(self) -> None:
        from huggingface_hub.errors import HfHubHTTPError

        try:
            self._retry(
                "create_repo",
                lambda: self.api.create_repo(
                    self.repo_id, repo_type="dataset", private=self.private, exist_ok=True
                ),
            )
        except HfHubHTTPError as exc:
            if status_of(exc) in (401, 403):
                raise DestinationError(
                    f"{self.url}: not allowed to create or write this repository (HTTP {status_of(exc)}); "
                    "log in with `hf auth login` or set HF_TOKEN to a token with write access"
                ) from None
            raise
        if self.revision != "main":
            refs = self._retry(
                "list_repo_refs", lambda: self.api.list_repo_refs(self.repo_id, repo_type="dataset")
            )
            if self.revision not in {b.name for b in refs.branches}:
                self._retry(
                    "create_branch",
                    lambda: self.api.create_branch(
                        self.repo_id, branch=self.revision, repo_type="dataset", exist_ok=True
                    ),
                )

    def head(self) -> str:
        info = self._retry(
            "dataset_info", lambda: self.api.dataset_info(self.repo_id, revision=self.revision)
        )
        return str(info.sha)

    def files(self) -> dict[str, RemoteFile]:
        from huggingface_hub.hf_api import RepoFile

        entries = self._retry(
            "list_repo_tree",
            lambda: list(
                self.api.list_repo_tree(
                    self.repo_id, repo_type="dataset", revision=self.revision, recursive=True
                )
            ),
        )
        out = {}
        for e in entries:
            if isinstance(e, RepoFile):
                sha = e.lfs.sha256 if e.lfs is not None else None
                out[e.path] = RemoteFile(
                    e.path, e.size, sha, None if e.lfs is not None else e.blob_id
                )
        return out

    def stage(self, item: StagedFile) -> None:
        """Upload the bytes (LFS/Xet) without committing; small regular files wait for the commit."""
        from huggingface_hub import CommitOperationAdd
        from huggingface_hub.lfs import UploadInfo

        op = CommitOperationAdd(path_in_repo=item.path, path_or_fileobj=str(item.local))
        # The sha256 is already known from writing: spare the client a second read of the file.
        op.upload_info = UploadInfo(
            size=item.size, sample=op.upload_info.sample, sha256=bytes.fromhex(item.checksum())
        )
        self._retry(
            "preupload",
            lambda: self.api.preupload_lfs_files(
                self.repo_id, [op], repo_type="dataset", revision=self.revision, free_memory=True
            ),
        )
        item.handle = op
        item.uploaded = op._upload_mode == "lfs"

    def commit(self, items: Sequence[StagedFile], deletions: Sequence[str], message: str) -> bool:
        """One atomic commit; retried idempotently (a lost response does not commit twice).

        Returns False when there was nothing to commit.
        """
        from huggingface_hub import CommitOperationDelete
        from huggingface_hub.errors import HfHubHTTPError

        for item in items:
            if item.handle is None:
                self.stage(item)
        operations = [i.handle for i in items] + [
            CommitOperationDelete(path_in_repo=p) for p in deletions
        ]
        if not operations:
            return False
        parent = self.head()
        for attempt in range(self.policy.attempts):
            try:
                self.api.create_commit(
                    self.repo_id,
                    operations,
                    commit_message=message,
                    repo_type="dataset",
                    revision=self.revision,
                    parent_commit=parent,
                )
                return True
            except Exception as exc:
                conflict = isinstance(exc, HfHubHTTPError) and status_of(exc) in (409, 412)
                if not (conflict or is_transient(exc)) or attempt == self.policy.attempts - 1:
                    raise
                now = self.head()
                if now != parent and self._applied(items, deletions, now):
                    log.info("commit %r was applied although its response was lost", message)
                    return True
                parent = now
                time.sleep(self.policy.delay(attempt))
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _applied(
        self, items: Sequence[StagedFile], deletions: Sequence[str], revision: str
    ) -> bool:
        paths = [i.path for i in items] + list(deletions)
        infos = self._retry(
            "get_paths_info",
            lambda: self.api.get_paths_info(
                self.repo_id, paths, repo_type="dataset", revision=revision
            ),
        )
        found = {getattr(i, "path", None): i for i in infos}
        for item in items:
            info = found.get(item.path)
            if info is None or getattr(info, "size", None) != item.size:
                return False
            lfs = getattr(info, "lfs", None)
            if lfs is not None and lfs.sha256 != item.sha256:
                return False
        return not any(p in found for p in deletions)


def _set_timeouts(seconds: float) -> None:
    """Per-request timeouts (connect, and each read/write of a chunk), for multi-GB files."""
    from huggingface_hub.utils import _http

    def factory() -> httpx2.Client:
        return httpx2.Client(
            event_hooks={"request": [_http.hf_request_event_hook]},
            follow_redirects=True,
            timeout=httpx2.Timeout(seconds, connect=min(seconds, 30.0)),
        )

    _http.set_client_factory(factory)


# -- fsspec file systems (s3://, gs://, file://, ...) -----------------------------------------
CHECKSUMS_PATH = "bids2hf/checksums.json"


class FsspecTarget:
    """Any fsspec URL. Objects appear at their final key only when complete.

    Object stores make single uploads atomic, so files go straight to their key there; other file
    systems get a temporary name and a rename. ``bids2hf/checksums.json`` records the sha256 of
    each file written, so that re-runs and verification know what the remote holds.
    """

    def __init__(self, url: str) -> None:
        import fsspec

        self.url = url
        try:
            self.fs, self.root = fsspec.core.url_to_fs(url)
        except (ImportError, ValueError) as exc:
            raise InputError(f"{url}: cannot open ({exc}); for s3:// install bids2hf[s3]") from None
        self.root = self.root.rstrip("/")
        protocol = self.fs.protocol if isinstance(self.fs.protocol, str) else self.fs.protocol[0]
        self.atomic_put = protocol in ("s3", "s3a", "gs", "gcs", "az", "abfs", "memory")
        self._checksums: dict[str, str] | None = None

    def _key(self, path: str) -> str:
        return posixpath.join(self.root, path)

    def ensure(self) -> None:
        try:
            self.fs.makedirs(self.root, exist_ok=True)
        except (PermissionError, OSError) as exc:
            raise DestinationError(f"{self.url}: cannot create ({exc})") from None

    def checksums(self) -> dict[str, str]:
        if self._checksums is None:
            try:
                with self.fs.open(self._key(CHECKSUMS_PATH), "rb") as f:
                    self._checksums = dict(json.loads(f.read()))
            except (FileNotFoundError, ValueError):
                self._checksums = {}
        return self._checksums

    def files(self) -> dict[str, RemoteFile]:
        sums = self.checksums()
        prefix = self.root + "/"
        try:
            found = self.fs.find(self.root, detail=True)
        except FileNotFoundError:
            return {}
        out = {}
        for key, info in found.items():
            rel = key[len(prefix) :] if key.startswith(prefix) else key
            if info.get("type", "file") != "file" or rel == CHECKSUMS_PATH:
                continue
            out[rel] = RemoteFile(rel, int(info["size"]), sums.get(rel))
        return out

    def stage(self, item: StagedFile) -> None:
        key = self._key(item.path)
        self.fs.makedirs(posixpath.dirname(key), exist_ok=True)
        if self.atomic_put:
            self.fs.put_file(str(item.local), key)
        else:
            tmp = f"{posixpath.dirname(key)}/.{posixpath.basename(key)}.{uuid.uuid4().hex}.tmp"
            self.fs.put_file(str(item.local), tmp)
            self.fs.mv(tmp, key)
        self.checksums()[item.path] = item.checksum()
        item.uploaded = True

    def commit(self, items: Sequence[StagedFile], deletions: Sequence[str], message: str) -> bool:
        for item in items:
            if not item.uploaded:
                self.stage(item)
        sums = self.checksums()
        for path in deletions:
            self.fs.rm(self._key(path))
            sums.pop(path, None)
        data = json.dumps(sums, indent=0, sort_keys=True).encode()
        key = self._key(CHECKSUMS_PATH)
        self.fs.makedirs(posixpath.dirname(key), exist_ok=True)
        self.fs.pipe_file(key, data)
        return bool(items or deletions)


def open_target(url: str, *, private: bool = False, timeout: float | None = 300.0) -> Target:
    """The publishing target for a URL (hf:// or any fsspec protocol)."""
    if url.startswith("hf://"):
        return HubTarget(url, private=private, timeout=timeout)
    return FsspecTarget(url)
