"""Publishing to the Hugging Face Hub through huggingface_hub's public API, with bids2hf's retry policy.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any, TypeVar

import httpx2

from bids2hf.errors import DestinationError, InputError
from bids2hf.publish.retry import RetryPolicy, call_with_retries, is_transient, status_of
from bids2hf.publish.targets.base import RemoteFile, StagedFile

__all__ = ["HubTarget", "hub_call_settings"]

log = logging.getLogger(__name__)
T = TypeVar("T")

_HF_URL = re.compile(r"^hf://(?:(datasets)/)?([\w.-]+/[\w.-]+)(?:@([^/]+))?/?$")


# -- Hugging Face Hub ------------------------------------------------------------------------
class _HubCallSettings:
    """The two process-wide ``huggingface_hub`` settings bids2hf needs, held only while its calls run.

    ``huggingface_hub`` has no per-``HfApi`` timeout or progress switch: every request goes
    through one shared ``httpx2.Client`` (:func:`huggingface_hub.get_session`) and progress bars
    follow a process-wide flag. While at least one bids2hf Hub call runs (calls overlap: the
    upload thread and the main thread both call), the shared client's timeout is ours and the
    client's own per-file progress bars are off (bids2hf shows its own); when the last call
    ends, the client gets its previous timeout back and the bars come back. Nothing changes
    between calls, so a program that uses bids2hf as a library keeps its own settings.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._depth = 0
        self._clients: list[tuple[httpx2.Client, Any]] = []  # clients changed, previous timeouts
        self._bars: AbstractContextManager[Any] | None = None

    @contextmanager
    def __call__(self, timeout: float | None) -> Iterator[None]:
        self._enter(timeout)
        try:
            yield
        finally:
            self._exit()

    def _enter(self, timeout: float | None) -> None:
        from huggingface_hub import get_session

        with self._lock:
            if self._depth == 0:
                self._bars = _quiet_progress_bars()
            self._depth += 1
            if timeout is None:
                return
            # Asked at every call: huggingface_hub replaces its client after a connection error.
            client = get_session()
            if all(changed is not client for changed, _ in self._clients):
                self._clients.append((client, client.timeout))
            client.timeout = httpx2.Timeout(timeout, connect=min(timeout, 30.0))

    def _exit(self) -> None:
        with self._lock:
            self._depth -= 1
            if self._depth > 0:
                return
            for client, previous in self._clients:
                if not client.is_closed:
                    client.timeout = previous
            self._clients.clear()
            if self._bars is not None:
                self._bars.__exit__(None, None, None)
                self._bars = None


def _quiet_progress_bars() -> AbstractContextManager[Any] | None:
    """Turn huggingface_hub's progress bars off until the returned context is exited.

    None (nothing changed) when they are already off or when ``HF_HUB_DISABLE_PROGRESS_BARS`` is
    set: the user's explicit choice wins.
    """
    from huggingface_hub import constants
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars

    if constants.HF_HUB_DISABLE_PROGRESS_BARS is not None or are_progress_bars_disabled():
        return None
    return disable_progress_bars()  # a context manager: its exit turns them back on


hub_call_settings = _HubCallSettings()


class HubTarget:
    """A dataset repository on the Hub (or any endpoint speaking its API, via HF_ENDPOINT).

    Every request goes through :func:`bids2hf.retry.call_with_retries` (one policy, ``Retry-After``
    honoured) inside :data:`hub_call_settings` (``timeout`` per read/write; no client progress
    bars). Creating a target changes nothing in the process.
    """

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

        from bids2hf._version import __version__

        self.url = url
        self.repo_id = match.group(2)
        self.revision = match.group(3) or "main"
        self.private = private
        self.policy = policy or RetryPolicy()
        self.timeout = timeout
        self.api = HfApi(library_name="bids2hf", library_version=__version__)

    def _call(
        self,
        what: str,
        fn: Callable[[], T],
        retry_if: Callable[[BaseException], bool] = is_transient,
    ) -> T:
        def attempt() -> T:
            with hub_call_settings(self.timeout):
                return fn()

        return call_with_retries(
            f"{what} ({self.repo_id})", attempt, self.policy, retry_if=retry_if
        )

    def ensure(self) -> None:
        """Create the repository (and the branch) if needed.

        Raises:
            DestinationError: the token may not create or write the repository.
            HfHubHTTPError: any other refusal, or a transient one that outlasted the retries.
        """
        from huggingface_hub.errors import HfHubHTTPError

        try:
            self._call(
                "create_repo",
                lambda: self.api.create_repo(
                    self.repo_id, repo_type="dataset", private=self.private, exist_ok=True
                ),
            )
        except HfHubHTTPError as exc:
            self._raise_if_refused(exc)
            raise
        if self.revision != "main":
            refs = self._call(
                "list_repo_refs", lambda: self.api.list_repo_refs(self.repo_id, repo_type="dataset")
            )
            if self.revision not in {b.name for b in refs.branches}:
                self._call(
                    "create_branch",
                    lambda: self.api.create_branch(
                        self.repo_id, branch=self.revision, repo_type="dataset", exist_ok=True
                    ),
                )

    def _raise_if_refused(self, exc: BaseException) -> None:
        """Raises :class:`DestinationError` if ``exc`` is the Hub refusing the token (401/403).

        A token that may read an existing repository but not write it gets through
        ``create_repo(exist_ok=True)`` (the client then only checks that the repository exists):
        the refusal comes with the first upload or commit, which call this too.
        """
        if (status := status_of(exc)) in (401, 403):
            raise DestinationError(
                f"{self.url}: not allowed to create or write this repository (HTTP {status}); "
                "log in with `hf auth login` or set HF_TOKEN to a token with write access"
            ) from None

    def head(self) -> str:
        """The commit the branch points at."""
        info = self._call(
            "dataset_info",
            # This call sets its own timeout (None: none), overriding the client's.
            lambda: self.api.dataset_info(
                self.repo_id, revision=self.revision, timeout=self.timeout
            ),
        )
        return str(info.sha)

    def files(self) -> dict[str, RemoteFile]:
        """Every file of the branch, with sizes, LFS sha256 and git blob ids."""
        from huggingface_hub import RepoFile

        # The one call the timeout does not reach: the client's pagination sends its requests
        # with no timeout, whatever the shared client says (and retries them itself).
        entries = self._call(
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
        """Upload the bytes (LFS/Xet) without committing; small regular files wait for the commit.

        Raises:
            DestinationError: the token may not write the repository (HTTP 401/403).
            HfHubHTTPError: the upload failed past the retries.
        """
        from huggingface_hub import CommitOperationAdd

        op = CommitOperationAdd(path_in_repo=item.path, path_or_fileobj=str(item.local))
        # The sha256 is already known from writing: spare the client a second read of the file
        # (`upload_info.sha256` is settable; the client hashes lazily, on first access).
        op.upload_info.sha256 = bytes.fromhex(item.checksum())
        try:
            self._call(
                "preupload",
                lambda: self.api.preupload_lfs_files(
                    self.repo_id, [op], repo_type="dataset", revision=self.revision,
                    free_memory=True,
                ),
            )
        except Exception as exc:
            self._raise_if_refused(exc)
            raise
        item.handle = op
        item.uploaded = _uploaded(op)

    def adopt(self, item: StagedFile) -> None:
        """[issue 14] Take on a file a Dask worker staged (:meth:`stage` ran there): its
        ``handle``, the client's ``CommitOperationAdd`` after the preupload, is all the commit
        needs.

        Raises:
            ValueError: the item carries no handle.
        """
        if item.handle is None:
            raise ValueError(f"{item.path}: staged elsewhere but without its commit operation")

    def commit(self, items: Sequence[StagedFile], deletions: Sequence[str], message: str) -> bool:
        """One atomic commit, retried like every Hub call, and idempotent.

        Each attempt names the commit it builds on (``parent_commit``). Before sending the commit
        again after a failure (once the wait, ``Retry-After`` included, is over), bids2hf looks
        whether the branch moved and the files are there: a commit applied although its answer
        was lost is then not made twice.

        Returns False when there was nothing to commit.

        Raises:
            DestinationError: the token may not write the repository (HTTP 401/403).
            HfHubHTTPError: the Hub refused the commit, or kept failing past the retries.
        """
        operations = self._operations(items, deletions)
        if not operations:
            return False
        parent = self.head()
        sent = False  # a commit was sent and failed: it may have been applied all the same

        def landed() -> bool:
            nonlocal parent
            now = self.head()
            if now != parent and self._applied(items, deletions, now):
                log.info("commit %r was applied although its response was lost", message)
                return True
            parent = now  # a conflict (409/412) means the branch moved: build on its new head
            return False

        def attempt() -> None:
            nonlocal sent
            if sent and landed():
                return
            sent = True
            with hub_call_settings(self.timeout):
                self.api.create_commit(
                    self.repo_id,
                    operations,
                    commit_message=message,
                    repo_type="dataset",
                    revision=self.revision,
                    parent_commit=parent,
                )

        try:
            call_with_retries(
                f"create_commit ({self.repo_id})", attempt, self.policy, retry_if=_commit_retryable
            )
        except Exception as exc:
            if _commit_retryable(exc):
                try:
                    applied = landed()  # the last attempt's answer may have been lost too
                except Exception:
                    applied = False
                if applied:
                    return True
            self._raise_if_refused(exc)
            raise
        return True

    def _operations(self, items: Sequence[StagedFile], deletions: Sequence[str]) -> list[Any]:
        """The commit's operations: every item staged (pre-uploaded) first, then the deletions.

        Raises:
            HfHubHTTPError: staging an item failed past the retries.
        """
        from huggingface_hub import CommitOperationDelete

        for item in items:
            if item.handle is None:
                self.stage(item)
        return [i.handle for i in items] + [CommitOperationDelete(path_in_repo=p) for p in deletions]

    def _applied(
        self, items: Sequence[StagedFile], deletions: Sequence[str], revision: str
    ) -> bool:
        paths = [i.path for i in items] + list(deletions)
        infos = self._call(
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


def _uploaded(op: Any) -> bool:
    """Whether ``preupload_lfs_files(..., free_memory=True)`` uploaded this operation's bytes.

    The client documents that it replaces the content of each file it uploaded with ``b""``;
    files it leaves in place (regular, non-LFS files) are only read when the commit is sent, so
    their local copy must stay until then.
    """
    return isinstance(op.path_or_fileobj, bytes) and op.path_or_fileobj == b""


def _commit_retryable(exc: BaseException) -> bool:
    """Transient failures, and conflicts (409/412: the branch moved, maybe by our own lost commit)."""
    return is_transient(exc) or status_of(exc) in (409, 412)
