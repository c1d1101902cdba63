"""A small Hugging Face Hub emulator speaking the Hub HTTP API on loopback.

The real ``huggingface_hub`` client (``HfApi``, ``HfFileSystem``, ``hf_hub_download``) and
``datasets.load_dataset`` run end to end against it when ``HF_ENDPOINT`` points at :attr:`HubEmulator.url`
and ``HF_HUB_DISABLE_XET=1`` (plain Git LFS path; Xet is never advertised). Standard library only.

State (repos, branches, immutable commit snapshots) lives in memory; file contents live on disk under
``root`` and are streamed in both directions. Fault injection, an upload bandwidth limit and counters are
controllable from tests through the Python API. Run standalone with
``python tests/hub_emulator.py --port 0 --root DIR`` (prints the URL, serves until interrupted).
"""

from __future__ import annotations

import argparse
import base64
import fnmatch
import hashlib
import io
import json
import re
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlencode

DEFAULT_USER = "emulator-user"
LFS_SIZE_THRESHOLD = 10 * 1024 * 1024  # the Hub's rule: files above 10 MB always go through LFS
_CHUNK = 256 * 1024
_HOLD_CHUNK = 16 * 1024  # LFS PUT bodies are read in pieces this small while an UploadHold is armed
_LFS_PATTERNS = [
    "*.7z", "*.arrow", "*.bin", "*.bz2", "*.ckpt", "*.ftz", "*.gz", "*.h5", "*.joblib", "*.lz4", "*.mds",
    "*.mlmodel", "*.model", "*.msgpack", "*.npy", "*.npz", "*.onnx", "*.ot", "*.parquet", "*.pb", "*.pickle",
    "*.pkl", "*.pt", "*.pth", "*.rar", "*.safetensors", "*.tar", "*.tar.*", "*.tflite", "*.tgz", "*.wasm",
    "*.xz", "*.zip", "*.zst", "*tfevents*", "*.mp3", "*.ogg", "*.wav", "*.jpg", "*.jpeg", "*.png", "*.webp",
]
DEFAULT_GITATTRIBUTES = "".join(f"{p} filter=lfs diff=lfs merge=lfs -text\n" for p in _LFS_PATTERNS)
_PREFIX = {"dataset": "datasets/", "space": "spaces/", "model": ""}
_PLURAL = {"datasets": "dataset", "models": "model", "spaces": "space"}


def git_blob_oid(data: bytes) -> str:
    """Git blob sha1 of ``data`` (what the Hub reports as ``oid`` for regular files)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    """The Git LFS pointer file for an object; its git oid is the file ``oid`` of an LFS file."""
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


@dataclass(frozen=True)
class _Entry:
    """One file of a snapshot: size, git oid, blob on disk and, for LFS files, the sha256."""

    size: int
    oid: str
    blob: Path
    sha256: str | None = None

    def lfs_info(self, key: str = "oid") -> dict[str, Any] | None:
        if self.sha256 is None:
            return None
        return {key: self.sha256, "size": self.size, "pointerSize": len(lfs_pointer(self.sha256, self.size))}


@dataclass
class _Commit:
    id: str
    parent: str | None
    title: str
    message: str
    date: str
    tree: dict[str, _Entry]


@dataclass
class _Repo:
    rtype: str
    repo_id: str
    private: bool
    root: Path
    created: str = field(default_factory=_now)
    branches: dict[str, str] = field(default_factory=dict)
    commits: dict[str, _Commit] = field(default_factory=dict)
    announced: dict[str, int] = field(default_factory=dict)  # LFS oid -> size from the batch call

    def resolve(self, rev: str) -> _Commit | None:
        """Resolve a branch name, a full commit sha or an unambiguous sha prefix (>= 7 chars)."""
        if rev in self.branches:
            return self.commits[self.branches[rev]]
        if rev in self.commits:
            return self.commits[rev]
        hits = [c for c in self.commits if len(rev) >= 7 and c.startswith(rev)]
        return self.commits[hits[0]] if len(hits) == 1 else None


@dataclass
class Fault:
    """An injected fault; ``fired`` counts how many requests it affected."""

    pattern: re.Pattern[str]
    method: str | None
    status: int | None
    times: int | None
    retry_after: int | None
    drop: bool
    delay: float
    truncate: int | None
    lose_response: bool = False
    fired: int = 0


@dataclass
class UploadHold:
    """A pause in the middle of one LFS upload (see :meth:`HubEmulator.hold_upload`).

    The upload request that reaches it stops reading its body, and so cannot be answered, until
    :meth:`release` (or ``timeout`` seconds, so that a forgotten hold never hangs the emulator).
    ``oid`` and ``received`` tell which upload was held and how many bytes of it had arrived;
    ``answered`` is set once its answer has been sent.
    """

    after_bytes: int
    skip: int
    timeout: float
    reached: threading.Event = field(default_factory=threading.Event)
    released: threading.Event = field(default_factory=threading.Event)
    answered: threading.Event = field(default_factory=threading.Event)
    oid: str | None = None
    received: int = 0

    def wait(self, timeout: float | None = None) -> bool:
        """Block until an upload is held; False if none was within ``timeout`` seconds."""
        return self.reached.wait(timeout)

    def release(self) -> None:
        """Let the held upload go on (whatever its client has become)."""
        self.released.set()


class HubError(Exception):
    """An error answer in the Hub's format (JSON body + ``X-Error-Code``/``X-Error-Message`` headers)."""

    def __init__(self, status: int, message: str, code: str | None = None,
                 headers: dict[str, str] | None = None, extra: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code = status, message, code
        self.headers, self.extra = headers or {}, extra or {}


def _q(query: dict[str, list[str]], key: str, default: str = "") -> str:
    return query.get(key, [default])[-1]


def _truthy(value: str) -> bool:
    return value.lower() in ("1", "true", "yes")


_REPO = r"(?P<repo>[^/]+/[^/]+)"
_API = r"^/api/(?P<rtype>models|datasets|spaces)/" + _REPO
_ROUTES: list[tuple[str, str, re.Pattern[str]]] = [
    (m, name, re.compile(rx))
    for m, name, rx in [
        ("GET", "whoami", r"^/api/whoami-v2$"),
        ("POST", "validate_yaml", r"^/api/validate-yaml$"),
        ("POST", "create_repo", r"^/api/repos/create$"),
        ("DELETE", "delete_repo", r"^/api/repos/delete$"),
        ("POST", "preupload", _API + r"/preupload/(?P<rev>.+)$"),
        ("POST", "commit", _API + r"/commit/(?P<rev>.+)$"),
        ("GET", "tree", _API + r"/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?$"),
        ("POST", "paths_info", _API + r"/paths-info/(?P<rev>[^/]+)$"),
        ("GET", "commits", _API + r"/commits/(?P<rev>[^/]+)$"),
        ("GET", "refs", _API + r"/refs$"),
        ("POST", "create_branch", _API + r"/branch/(?P<branch>.+)$"),
        ("GET", "repo_info", _API + r"(?:/revision/(?P<rev>.+))?$"),
        ("POST", "lfs_batch", r"^/(?:(?P<rtype>datasets|spaces)/)?" + _REPO + r"\.git/info/lfs/objects/batch$"),
        ("PUT", "lfs_upload", r"^/_lfs/(?P<rtype>\w+)/" + _REPO + r"/(?P<oid>[0-9a-f]{64})$"),
        ("POST", "lfs_complete", r"^/_lfs/(?P<rtype>\w+)/" + _REPO + r"/(?P<oid>[0-9a-f]{64})$"),
        ("POST", "lfs_verify", r"^/_lfs/(?P<rtype>\w+)/" + _REPO + r"/(?P<oid>[0-9a-f]{64})/verify$"),
        ("GET HEAD", "resolve", r"^/(?:(?P<rtype>datasets|spaces)/)?" + _REPO + r"/resolve/(?P<rev>[^/]+)/(?P<path>.+)$"),
    ]
]
_WRITES = {"create_repo", "delete_repo", "create_branch", "preupload", "commit", "lfs_batch", "lfs_verify"}


class HubEmulator:
    """In-process Hub emulator. Use as ``emu = HubEmulator(tmp_path).start()`` ... ``emu.stop()``.

    Args:
        root: directory for blobs, LFS objects and temporary uploads.
        upload_bandwidth: global limit (bytes/second) for LFS PUT bodies, shared by all connections.
        multipart_threshold: LFS objects larger than this get a multipart upload (``chunk_size`` parts
            + completion POST) instead of a single PUT. ``None`` disables multipart.
        multipart_chunk_size: part size for multipart uploads.
        require_auth_for_writes: answer 401 to write routes sent without a token.
        tokens: if given, only these bearer tokens are valid; otherwise any token is accepted.
        read_only_tokens: bearer tokens that may read but not write: write routes sent with one are
            answered 403, as the Hub answers a read token.
        tree_page_size: page size of the tree listing (the Hub uses 1000, and 50 with ``expand``).
    """

    def __init__(self, root: Path | str, *, host: str = "127.0.0.1", port: int = 0,
                 upload_bandwidth: float | None = None, multipart_threshold: int | None = None,
                 multipart_chunk_size: int = 5 * 1024 * 1024, require_auth_for_writes: bool = True,
                 tokens: Collection[str] | None = None, tree_page_size: int = 1000,
                 read_only_tokens: Collection[str] = ()) -> None:
        self.root = Path(root)
        self.host, self.port = host, port
        self.upload_bandwidth = upload_bandwidth
        self.multipart_threshold = multipart_threshold
        self.multipart_chunk_size = multipart_chunk_size
        self.require_auth_for_writes = require_auth_for_writes
        self.tokens = set(tokens) if tokens is not None else None
        self.read_only_tokens = set(read_only_tokens)
        self.tree_page_size = tree_page_size
        self.errors: list[str] = []  # tracebacks of unexpected handler exceptions (emulator bugs)
        self._lock = threading.RLock()
        self._bw_lock = threading.Lock()
        self._bw_next = 0.0
        self._repos: dict[tuple[str, str], _Repo] = {}
        self._dir_cache: dict[str, dict[str, str]] = {}
        self._faults: list[Fault] = []
        self._hold: UploadHold | None = None
        self._uploading = 0
        self._stats: dict[str, Any] = {}
        #: (time.monotonic(), "METHOD route") of every request, in arrival order (e.g. to measure
        #: how long a client waited before retrying).
        self.request_log: list[tuple[float, str]] = []
        #: called as ``after_commit(repo_id, title)`` once a commit sent over HTTP is applied, before
        #: it is answered: a test changes the repo there behind the client's back (e.g. with
        #: :meth:`upload_bytes`), as another writer would between two of its requests.
        self.after_commit: Callable[[str, str], None] | None = None
        self.reset_stats()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> HubEmulator:
        """Bind the socket and serve in a background thread."""
        self.root.mkdir(parents=True, exist_ok=True)
        self._server = _Server((self.host, self.port), _Handler)
        self._server.emulator = self
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the listening socket."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> HubEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """Base URL to use as ``HF_ENDPOINT``."""
        return f"http://{self.host}:{self.port}"

    # ------------------------------------------------------------------ faults & stats
    def inject(self, route_regex: str, method: str | None = None, *, status: int | None = None,
               times: int | None = 1, retry_after: int | None = None, drop: bool = False, delay: float = 0.0,
               truncate: int | None = None, lose_response: bool = False) -> Fault:
        """Inject a fault on requests whose unquoted path matches ``route_regex`` (``re.search``).

        ``status``: answer with this status (JSON error body, ``Retry-After`` if ``retry_after``).
        ``drop``: read the request body then close the connection without any response.
        ``delay``: sleep before handling (alone: the request is then served normally).
        ``truncate``: for file downloads, send the headers and only this many body bytes, then close.
        ``lose_response``: handle the request fully (a commit IS applied), then close the connection
        without sending the answer, as when a response is lost on the way back.
        ``times``: how many requests are affected (``None``: all of them until :meth:`clear_faults`).
        """
        if status is None and not drop and not delay and truncate is None and not lose_response:
            raise ValueError("inject() needs one of status, drop, delay, truncate or lose_response")
        fault = Fault(re.compile(route_regex), method.upper() if method else None, status, times,
                      retry_after, drop, delay, truncate, lose_response)
        with self._lock:
            self._faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        """Remove every injected fault."""
        with self._lock:
            self._faults.clear()

    def unmet_faults(self) -> list[Fault]:
        """Injected faults with a ``times`` that not as many requests met: each fault counts a
        request in ``fired`` as it serves it, so an empty list means every fault was served."""
        with self._lock:
            return [f for f in self._faults if f.times is not None and f.fired < f.times]

    def hold_upload(self, after_bytes: int = 1, *, skip: int = 0, timeout: float = 60.0) -> UploadHold:
        """Hold the next LFS upload (PUT, or one part of a multipart upload) once ``after_bytes``
        bytes of its body have arrived, after letting ``skip`` such uploads through.

        The held request is in progress (``lfs_uploads_in_progress`` counts it) and unanswered
        until :meth:`UploadHold.release`: a test can kill the client exactly mid-upload. Uploads
        smaller than ``after_bytes`` pass. One hold at a time; it is used once (releasing it
        unused disarms it).
        """
        hold = UploadHold(after_bytes, skip, timeout)
        with self._lock:
            if self._hold is not None and not self._hold.released.is_set():
                raise RuntimeError("an upload hold is already armed")
            self._hold = hold
        return hold

    def _claim_hold(self, hold: UploadHold) -> bool:
        """Whether the upload that just reached ``hold.after_bytes`` is the one to hold."""
        with self._lock:
            if self._hold is not hold or hold.released.is_set():  # used, or given up
                return False
            if hold.skip > 0:
                hold.skip -= 1
                return False
            self._hold = None
            return True

    @property
    def lfs_uploads_in_progress(self) -> int:
        """LFS upload requests whose body is being received or whose answer is not sent yet."""
        with self._lock:
            return int(self._uploading)

    @contextmanager
    def _upload_request(self) -> Iterator[None]:
        """Count one LFS upload request: started, then completed (answered) or interrupted."""
        with self._lock:
            self._stats["lfs_uploads_started"] += 1
            self._uploading += 1
        try:
            yield
        except (ConnectionError, TimeoutError):
            self._add("lfs_uploads_interrupted")
            raise
        else:
            self._add("lfs_uploads_completed")
        finally:
            with self._lock:
                self._uploading -= 1

    def _take_fault(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for f in self._faults:
                if (f.method in (None, method) and f.pattern.search(path)
                        and (f.times is None or f.fired < f.times)):
                    f.fired += 1
                    self._stats["faults_fired"] += 1
                    return f
        return None

    @property
    def stats(self) -> dict[str, Any]:
        """Snapshot of the counters: ``requests`` ("METHOD route" -> n), ``bytes_uploaded`` (LFS PUT
        bodies, parts included), ``bytes_downloaded``, ``commits``, ``lfs_objects_stored``, ``faults_fired``,
        and LFS upload requests (PUTs and parts) ``lfs_uploads_started``, ``lfs_uploads_completed``
        (answered) and ``lfs_uploads_interrupted`` (the client went away mid-body or before the answer)."""
        with self._lock:
            return {k: (Counter(v) if isinstance(v, Counter) else v) for k, v in self._stats.items()}

    def reset_stats(self) -> None:
        """Zero every counter."""
        with self._lock:
            self._stats = {"requests": Counter(), "bytes_uploaded": 0, "bytes_downloaded": 0, "commits": 0,
                           "lfs_objects_stored": 0, "faults_fired": 0, "lfs_uploads_started": 0,
                           "lfs_uploads_completed": 0, "lfs_uploads_interrupted": 0}

    def _add(self, key: str, n: int = 1) -> None:
        with self._lock:
            self._stats[key] += n

    def _throttle(self, n: int) -> None:
        bandwidth = self.upload_bandwidth
        if not bandwidth:
            return
        with self._bw_lock:
            now = time.monotonic()
            # Up to 50 ms of unused budget carries over, so the time spent receiving and hashing
            # a chunk does not come on top of the link's own time (the rate stays the one set).
            self._bw_next = max(now - 0.05, self._bw_next) + n / bandwidth
            wait = self._bw_next - now
        if wait > 0:
            time.sleep(wait)

    # ------------------------------------------------------------------ inspection helpers
    def create_repo(self, repo_id: str, *, repo_type: str = "dataset", private: bool = False) -> None:
        """Create a repo directly (initial commit with a default ``.gitattributes``)."""
        with self._lock:
            if (repo_type, repo_id) in self._repos:
                raise HubError(409, f"You already created this {repo_type} repo", "RepoExists")
            root = self.root / "repos" / f"{repo_type}--{repo_id.replace('/', '--')}--{uuid.uuid4().hex[:8]}"
            for sub in ("blobs", "lfs", "tmp"):
                (root / sub).mkdir(parents=True)
            repo = _Repo(repo_type, repo_id, private, root)
            self._repos[(repo_type, repo_id)] = repo
            self._commit(repo, "main", [{"key": "file", "value": {
                "path": ".gitattributes", "content": base64.b64encode(DEFAULT_GITATTRIBUTES.encode()).decode()}}],
                "initial commit", "", None, False)

    def upload_bytes(self, repo_id: str, files: dict[str, bytes], *, message: str = "Seed files",
                     repo_type: str = "dataset", branch: str = "main") -> str:
        """Commit ``files`` directly (no HTTP; the Hub's LFS rule applies). Returns the new commit sha."""
        repo = self._get(repo_id, repo_type)
        ops: list[dict[str, Any]] = []
        for path, data in files.items():
            if self._wants_lfs(repo.resolve(branch).tree if branch in repo.branches else {}, path, len(data),
                               data[:512]) and data:
                oid = hashlib.sha256(data).hexdigest()
                self._store_upload(repo, oid, iter([data]), len(data))
                ops.append({"key": "lfsFile", "value": {"path": path, "oid": oid, "size": len(data)}})
            else:
                ops.append({"key": "file", "value": {"path": path, "content": base64.b64encode(data).decode()}})
        return self._commit(repo, branch, ops, message, "", None, False)[0].id

    def _get(self, repo_id: str, repo_type: str) -> _Repo:
        with self._lock:
            repo = self._repos.get((repo_type, repo_id))
        if repo is None:
            raise KeyError(f"no {repo_type} repo {repo_id!r}")
        return repo

    def files(self, repo_id: str, revision: str = "main", *, repo_type: str = "dataset") -> dict[str, Path]:
        """Remote files at ``revision``: path in repo -> blob on disk (``.read_bytes()`` for content)."""
        repo = self._get(repo_id, repo_type)
        with self._lock:
            commit = repo.resolve(revision)
        if commit is None:
            raise KeyError(f"unknown revision {revision!r}")
        return {path: e.blob for path, e in sorted(commit.tree.items())}

    def read_file(self, repo_id: str, path: str, revision: str = "main", *, repo_type: str = "dataset") -> bytes:
        """Content of one remote file."""
        return self.files(repo_id, revision, repo_type=repo_type)[path].read_bytes()

    def commits(self, repo_id: str, *, repo_type: str = "dataset", branch: str = "main") -> list[dict[str, Any]]:
        """History of ``branch``, newest first: id, parent, title, message, date, files."""
        repo = self._get(repo_id, repo_type)
        with self._lock:
            out, cur = [], repo.commits[repo.branches[branch]]
            while True:
                out.append({"id": cur.id, "parent": cur.parent, "title": cur.title, "message": cur.message,
                            "date": cur.date, "files": sorted(cur.tree)})
                if cur.parent is None:
                    return out
                cur = repo.commits[cur.parent]

    def head(self, repo_id: str, branch: str = "main", *, repo_type: str = "dataset") -> str:
        """Commit sha at the tip of ``branch``."""
        repo = self._get(repo_id, repo_type)
        with self._lock:
            return repo.branches[branch]

    # ------------------------------------------------------------------ core state changes
    def _commit(self, repo: _Repo, branch: str, ops: list[dict[str, Any]], title: str, message: str,
                parent_commit: str | None, create_pr: bool) -> tuple[_Commit, str]:
        """Apply NDJSON operations atomically on ``branch``; returns (commit, branch actually written)."""
        with self._lock:
            head = repo.resolve(branch) if branch in repo.branches else None
            if branch not in repo.branches and repo.branches:
                raise HubError(404, f"Invalid rev id: {branch}", "RevisionNotFound")
            base = head
            if parent_commit:
                parent = repo.resolve(parent_commit)
                if parent is None:
                    raise HubError(404, f"Invalid parent commit: {parent_commit}", "RevisionNotFound")
                if create_pr:
                    base = parent
                elif head is None or head.id != parent.id:
                    raise HubError(412, "A commit has happened since. Please refresh and try again.")
            if create_pr:
                n = 1 + sum(1 for b in repo.branches if b.startswith("refs/pr/"))
                branch = f"refs/pr/{n}"
            tree = dict(base.tree) if base else {}
            for op in ops:
                self._apply_op(repo, tree, op.get("key", ""), op.get("value") or {})
            parent_id = base.id if base else None
            cid = hashlib.sha1(f"{parent_id}\n{title}\n{time.time_ns()}\n{uuid.uuid4()}".encode(),
                               usedforsecurity=False).hexdigest()
            commit = _Commit(cid, parent_id, title, message, _now(), tree)
            repo.commits[cid] = commit
            repo.branches[branch] = cid
            self._stats["commits"] += 1
            return commit, branch

    def _apply_op(self, repo: _Repo, tree: dict[str, _Entry], key: str, value: dict[str, Any]) -> None:
        path = str(value.get("path", "")).strip("/")
        if not path or ".." in path.split("/"):
            raise HubError(400, f"Invalid path {value.get('path')!r}")
        if key == "file":
            data = base64.b64decode(value.get("content", ""))
            oid = git_blob_oid(data)
            blob = repo.root / "blobs" / oid
            if not blob.exists():
                tmp = repo.root / "tmp" / uuid.uuid4().hex
                tmp.write_bytes(data)
                tmp.replace(blob)
            tree[path] = _Entry(len(data), oid, blob)
        elif key == "lfsFile":
            sha = str(value.get("oid", ""))
            blob = repo.root / "lfs" / sha
            if not re.fullmatch(r"[0-9a-f]{64}", sha) or not blob.exists():
                raise HubError(422, f"Your push was rejected because an LFS pointer pointed to a file that "
                                    f"does not exist ({path}, oid {sha})")
            size = blob.stat().st_size
            if value.get("size") is not None and int(value["size"]) != size:
                raise HubError(422, f"LFS object size mismatch for {path}")
            tree[path] = _Entry(size, git_blob_oid(lfs_pointer(sha, size)), blob, sha)
        elif key == "deletedFile":
            if tree.pop(path, None) is None:
                raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
        elif key == "deletedFolder":
            prefix = path + "/"
            doomed = [p for p in tree if p.startswith(prefix)]
            if not doomed:
                raise HubError(404, f"A folder with this name doesn't exist: {path}", "EntryNotFound")
            for p in doomed:
                del tree[p]
        else:
            raise HubError(400, f"Unknown commit operation {key!r}")

    def _wants_lfs(self, tree: dict[str, _Entry], path: str, size: int, sample: bytes) -> bool:
        """The Hub's rule: size > 10 MB, binary sample, or a ``filter=lfs`` pattern of ``.gitattributes``."""
        if size > LFS_SIZE_THRESHOLD or b"\x00" in sample:
            return True
        try:
            sample.decode("utf-8")
        except UnicodeDecodeError as e:
            if e.start < len(sample) - 3:  # not just a multi-byte char cut at the sample boundary
                return True
        attrs = tree.get(".gitattributes")
        lines = attrs.blob.read_text(errors="replace").splitlines() if attrs else []
        patterns = [ln.split()[0] for ln in lines if "filter=lfs" in ln and ln.split()]
        name = path.rsplit("/", 1)[-1]
        return any(fnmatch.fnmatch(name, p) or fnmatch.fnmatch(path, p) for p in patterns)

    def _store_upload(self, repo: _Repo, oid: str, chunks: Iterator[bytes], expected: int | None) -> int:
        """Stream ``chunks`` into the LFS store as object ``oid``, verifying sha256 (and size if known)."""
        tmp = repo.root / "tmp" / f"{oid}.{uuid.uuid4().hex}"
        sha, size = hashlib.sha256(), 0
        try:
            with tmp.open("wb") as fh:
                for chunk in chunks:
                    sha.update(chunk)
                    fh.write(chunk)
                    size += len(chunk)
            if sha.hexdigest() != oid:
                raise HubError(400, f"sha256 mismatch: expected {oid}, got {sha.hexdigest()}")
            if expected is not None and size != expected:
                raise HubError(400, f"size mismatch for {oid}: expected {expected}, got {size}")
            tmp.replace(repo.root / "lfs" / oid)
            self._add("lfs_objects_stored")
            return size
        finally:
            tmp.unlink(missing_ok=True)

    # ------------------------------------------------------------------ JSON views
    def _dir_oids(self, commit: _Commit) -> dict[str, str]:
        """Tree id of every directory of a snapshot ("" is the root), computed once per commit."""
        with self._lock:
            cached = self._dir_cache.get(commit.id)
        if cached is None:
            hashers: dict[str, Any] = {}
            for p, e in sorted(commit.tree.items()):
                parts = p.split("/")
                for i in range(len(parts)):
                    hasher = hashers.setdefault("/".join(parts[:i]), hashlib.sha1(usedforsecurity=False))
                    hasher.update(f"{p} {e.oid}\n".encode())
            cached = {d: h.hexdigest() for d, h in hashers.items()}
            with self._lock:
                self._dir_cache[commit.id] = cached
        return cached

    def _last_commit(self, repo: _Repo, commit: _Commit, path: str, is_dir: bool) -> dict[str, str]:
        def sig(c: _Commit) -> str | None:
            entry = None if is_dir else c.tree.get(path)
            return self._dir_oids(c).get(path) if is_dir else (entry.oid if entry else None)

        target, cur = sig(commit), commit
        while cur.parent is not None and sig(repo.commits[cur.parent]) == target:
            cur = repo.commits[cur.parent]
        return {"id": cur.id, "title": cur.title, "date": cur.date}

    def _path_json(self, repo: _Repo, commit: _Commit, path: str, expand: bool) -> dict[str, Any]:
        entry = commit.tree.get(path)
        out: dict[str, Any]
        if entry is None:
            out = {"type": "directory", "oid": self._dir_oids(commit)[path], "size": 0, "path": path}
        else:
            out = {"type": "file", "oid": entry.oid, "size": entry.size, "path": path}
            if entry.sha256:
                out["lfs"] = entry.lfs_info()
        if expand:
            out["lastCommit"] = self._last_commit(repo, commit, path, entry is None)
        return out

    def _repo_json(self, repo: _Repo, commit: _Commit) -> dict[str, Any]:
        org = repo.repo_id.split("/")[0]
        return {
            "_id": hashlib.md5(repo.repo_id.encode(), usedforsecurity=False).hexdigest()[:24],
            "id": repo.repo_id, "author": org, "sha": commit.id, "private": repo.private, "gated": False,
            "disabled": False, "downloads": 0, "likes": 0, "tags": [], "createdAt": repo.created,
            "lastModified": commit.date, "usedStorage": sum(e.size for e in commit.tree.values()),
            "siblings": [{"rfilename": p, "size": e.size, "blobId": e.oid, **({"lfs": e.lfs_info("sha256")}
                          if e.sha256 else {})} for p, e in sorted(commit.tree.items())],
        }


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128
    emulator: HubEmulator


class _Handler(BaseHTTPRequestHandler):
    """HTTP/1.1 keep-alive handler: routing, faults, auth, body streaming and the route handlers."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are separate writes: avoid 40 ms delayed-ACK stalls
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # never log (headers carry tokens)
        pass

    def do_GET(self) -> None:
        self._dispatch()

    do_HEAD = do_POST = do_PUT = do_DELETE = do_GET

    # ------------------------------------------------------------------ plumbing
    def _dispatch(self) -> None:
        self.emu = self.server.emulator
        self.raw_path, _, query = self.path.partition("?")
        self.query = parse_qs(query, keep_blank_values=True)
        self._body_read = False
        self._truncate: int | None = None
        self._held: UploadHold | None = None  # the UploadHold this request met, if any
        name, groups = "unknown", {}
        for method, rname, rx in _ROUTES:
            m = rx.match(self.raw_path)
            if m and self.command in method.split():
                name, groups = rname, {k: unquote(v) for k, v in m.groupdict().items() if v is not None}
                break
        with self.emu._lock:
            self.emu._stats["requests"][f"{self.command} {name}"] += 1
            self.emu.request_log.append((time.monotonic(), f"{self.command} {name}"))
        try:
            fault = self.emu._take_fault(self.command, unquote(self.raw_path))
            if fault is not None:
                time.sleep(fault.delay)
                if fault.drop:
                    self._drain()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if fault.lose_response:
                    real, self.wfile = self.wfile, io.BytesIO()
                    try:
                        self._auth(name)
                        getattr(self, f"_h_{name}")(**groups)
                    finally:
                        self.wfile = real
                        self.close_connection = True
                        self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if fault.status is not None:
                    extra = {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else {}
                    raise HubError(fault.status, f"Injected fault ({fault.status})", headers=extra)
                self._truncate = fault.truncate
            if name == "unknown":
                raise HubError(404, "Not Found")
            self._auth(name)
            getattr(self, f"_h_{name}")(**groups)
        except HubError as e:
            self._drain()
            headers = dict(e.headers)
            if e.code:
                headers["X-Error-Code"] = e.code
            headers["X-Error-Message"] = e.message
            self._json(e.status, {"error": e.message, **e.extra}, headers)
        except (ConnectionError, TimeoutError):
            self.close_connection = True
        except Exception:
            self.emu.errors.append(traceback.format_exc())
            self.close_connection = True
            self._json(500, {"error": "emulator bug, see HubEmulator.errors"})
        if not self._body_read:
            self._drain()

    def _iter_body(self, chunk: int = _CHUNK) -> Iterator[bytes]:
        """Yield the request body (Content-Length or chunked) in chunks; never buffers it whole."""
        self._body_read = True
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            while True:
                size = int(self.rfile.readline(65537).split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537).strip():
                        pass
                    return
                yield from self._read_exact(size, chunk)
                self.rfile.readline(65537)
        else:
            yield from self._read_exact(int(self.headers.get("Content-Length") or 0), chunk)

    def _read_exact(self, remaining: int, chunk: int = _CHUNK) -> Iterator[bytes]:
        while remaining > 0:
            data = self.rfile.read(min(chunk, remaining))
            if not data:
                raise ConnectionError("client closed the connection mid-body")
            remaining -= len(data)
            yield data

    def _body(self) -> bytes:
        return b"".join(self._iter_body())

    def _json_body(self) -> Any:
        try:
            return json.loads(self._body() or b"{}")
        except ValueError as e:
            raise HubError(400, f"Invalid JSON body: {e}") from e

    def _drain(self) -> None:
        if not self._body_read:
            for _ in self._iter_body():
                pass

    def _send(self, status: int, body: bytes, headers: dict[str, str], ctype: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, obj: Any, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(obj).encode(), headers or {}, "application/json; charset=utf-8")

    def _base(self) -> str:
        return f"http://{self.headers.get('Host') or f'{self.emu.host}:{self.emu.port}'}"

    def _token(self) -> str | None:
        auth = self.headers.get("Authorization", "")
        if not auth.lower().startswith("bearer "):
            return None
        return auth[7:].strip() or None

    def _auth(self, route: str) -> None:
        token = self._token()
        if token is not None and self.emu.tokens is not None and token not in self.emu.tokens:
            raise HubError(401, "Invalid credentials in Authorization header")
        if token is None and route in _WRITES and self.emu.require_auth_for_writes:
            raise HubError(401, "Invalid credentials in Authorization header")
        if token in self.emu.read_only_tokens and route in _WRITES:
            raise HubError(403, "You don't have the rights to write to this repository", "Forbidden")

    def _repo(self, rtype: str, repo: str, presigned: bool = False) -> _Repo:
        """Look a repo up; ``presigned`` routes (LFS upload hrefs, like S3 URLs) need no token."""
        kind = _PLURAL.get(rtype, rtype) if rtype else "model"
        with self.emu._lock:
            found = self.emu._repos.get((kind, repo))
        if found is None or (found.private and not presigned and self._token() is None):
            raise HubError(404 if found is None else 401, "Repository not found", "RepoNotFound")
        return found

    def _commit_at(self, repo: _Repo, rev: str) -> _Commit:
        with self.emu._lock:
            commit = repo.resolve(rev)
        if commit is None:
            raise HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        return commit

    def _page(self, items: list[Any], page_size: int, render: Callable[[Any], Any] = lambda x: x) -> None:
        """Send one page of ``render(item)`` with a GitHub-style ``Link: <...>; rel="next"`` header."""
        offset = int(_q(self.query, "cursor", "0") or 0)
        headers = {}
        if offset + page_size < len(items):
            query = {k: v[-1] for k, v in self.query.items()} | {"cursor": str(offset + page_size)}
            headers["Link"] = f'<{self._base()}{self.raw_path}?{urlencode(query)}>; rel="next"'
        self._json(200, [render(x) for x in items[offset:offset + page_size]], headers)

    # ------------------------------------------------------------------ account / repo routes
    def _h_whoami(self) -> None:
        if self._token() is None:
            raise HubError(401, "Invalid credentials in Authorization header")
        self._json(200, {"type": "user", "id": "0" * 24, "name": DEFAULT_USER, "fullname": "Hub Emulator",
                         "email": f"{DEFAULT_USER}@example.invalid", "emailVerified": True, "orgs": [],
                         "auth": {"type": "access_token",
                                  "accessToken": {"displayName": "emulator", "role": "write"}}})

    def _h_validate_yaml(self) -> None:
        self._drain()
        self._json(200, {"errors": [], "warnings": []})

    def _h_create_repo(self) -> None:
        body = self._json_body()
        rtype = body.get("type") or "model"
        repo_id = f"{body.get('organization') or DEFAULT_USER}/{body.get('name', '')}"
        if not re.fullmatch(r"[\w.-]+/[\w.-]+", repo_id) or rtype not in _PREFIX:
            raise HubError(400, f"Invalid repo name or type: {repo_id!r} ({rtype})")
        url = f"{self._base()}/{_PREFIX[rtype]}{repo_id}"
        private = body.get("visibility", "private" if body.get("private") else "public") != "public"
        try:
            self.emu.create_repo(repo_id, repo_type=rtype, private=private)
        except HubError as e:
            e.extra["url"] = url  # the client reads it even on 409 (exist_ok=True)
            raise
        self._json(200, {"url": url, "name": repo_id, "id": repo_id})

    def _h_delete_repo(self) -> None:
        body = self._json_body()
        key = (body.get("type") or "model", f"{body.get('organization') or DEFAULT_USER}/{body.get('name')}")
        with self.emu._lock:
            repo = self.emu._repos.pop(key, None)
        if repo is None:
            raise HubError(404, "Repository not found", "RepoNotFound")
        shutil.rmtree(repo.root, ignore_errors=True)
        self._json(200, {})

    def _h_repo_info(self, rtype: str, repo: str, rev: str = "main") -> None:
        found = self._repo(rtype, repo)
        self._json(200, self.emu._repo_json(found, self._commit_at(found, rev)))

    def _h_refs(self, rtype: str, repo: str) -> None:
        found = self._repo(rtype, repo)
        with self.emu._lock:
            branches = [{"name": b, "ref": f"refs/heads/{b}", "targetCommit": c}
                        for b, c in found.branches.items() if not b.startswith("refs/")]
        self._json(200, {"branches": branches, "tags": [], "converts": []})

    def _h_create_branch(self, rtype: str, repo: str, branch: str) -> None:
        """Create ``branch`` at ``startingPoint`` (default: the head of ``main``); 409 if it exists."""
        body = self._json_body()
        found = self._repo(rtype, repo)
        with self.emu._lock:
            if branch in found.branches:
                raise HubError(409, f"Reference already exists: refs/heads/{branch}")
            start = self._commit_at(found, body.get("startingPoint") or "main")
            found.branches[branch] = start.id
        self._json(200, {})

    def _h_commits(self, rtype: str, repo: str, rev: str) -> None:
        found = self._repo(rtype, repo)
        cur: _Commit | None = self._commit_at(found, rev)
        items = []
        with self.emu._lock:
            while cur is not None:
                items.append({"id": cur.id, "title": cur.title, "message": cur.message, "date": cur.date,
                              "authors": [{"user": DEFAULT_USER}]})
                cur = found.commits[cur.parent] if cur.parent else None
        self._page(items, 50)

    def _h_tree(self, rtype: str, repo: str, rev: str, path: str = "") -> None:
        found = self._repo(rtype, repo)
        commit = self._commit_at(found, rev)
        base = path.strip("/")
        pre = base + "/" if base else ""
        recursive, expand = _truthy(_q(self.query, "recursive")), _truthy(_q(self.query, "expand"))
        paths: set[str] = set()
        for p in commit.tree:
            if not p.startswith(pre):
                continue
            parts = p[len(pre):].split("/")
            if recursive:
                paths.update(pre + "/".join(parts[:i]) for i in range(1, len(parts) + 1))
            else:
                paths.add(pre + parts[0])
        if base and not paths:
            raise HubError(404, f"Entry not found: {base}", "EntryNotFound")
        self._page(sorted(paths), min(self.emu.tree_page_size, 50) if expand else self.emu.tree_page_size,
                   lambda p: self.emu._path_json(found, commit, p, expand))

    def _h_paths_info(self, rtype: str, repo: str, rev: str) -> None:
        found = self._repo(rtype, repo)
        commit = self._commit_at(found, rev)
        raw = self._body()
        if "json" in self.headers.get("Content-Type", ""):
            body = json.loads(raw or b"{}")
            paths, expand = list(body.get("paths", [])), bool(body.get("expand"))
        else:
            form = parse_qs(raw.decode(), keep_blank_values=True)
            paths, expand = form.get("paths", []), _truthy(_q(form, "expand"))
        out = []
        for p in dict.fromkeys(x.strip("/") for x in paths):
            if p and (p in commit.tree or p in self.emu._dir_oids(commit)):
                out.append(self.emu._path_json(found, commit, p, expand))
        self._json(200, out)

    # ------------------------------------------------------------------ upload routes
    def _h_preupload(self, rtype: str, repo: str, rev: str) -> None:
        found, body = self._repo(rtype, repo), self._json_body()
        with self.emu._lock:
            commit = found.resolve(rev) if rev in found.branches else None
        tree = commit.tree if commit else self._commit_at(found, "main").tree
        files = []
        for f in body.get("files", []):
            path, size = str(f["path"]), int(f.get("size", 0))
            lfs = self.emu._wants_lfs(tree, path, size, base64.b64decode(f.get("sample", "")))
            entry = tree.get(path)
            oid = (entry.sha256 if lfs else entry.oid) if entry and bool(entry.sha256) == lfs else None
            files.append({"path": path, "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False,
                          "oid": oid})
        self._json(200, {"files": files, "commitOid": commit.id if commit else None})

    def _h_lfs_batch(self, repo: str, rtype: str = "") -> None:
        found, body = self._repo(rtype, repo), self._json_body()
        if body.get("operation") != "upload":
            raise HubError(400, "Only the upload operation is supported")
        base = f"{self._base()}/_lfs/{found.rtype}/{found.repo_id}"
        objects, multipart = [], False
        for obj in body.get("objects", []):
            oid, size = str(obj.get("oid", "")), obj.get("size")
            if not re.fullmatch(r"[0-9a-f]{64}", oid) or not isinstance(size, int) or size < 0:
                objects.append({"oid": oid, "size": size if isinstance(size, int) else 0,
                                "error": {"code": 422, "message": "Invalid oid or size"}})
                continue
            stored = found.root / "lfs" / oid
            if stored.exists() and stored.stat().st_size == size:
                objects.append({"oid": oid, "size": size})  # no actions: client skips the upload
                continue
            with self.emu._lock:
                found.announced[oid] = size
            threshold, chunk = self.emu.multipart_threshold, self.emu.multipart_chunk_size
            upload: dict[str, Any] = {"href": f"{base}/{oid}"}
            if threshold is not None and size > threshold:
                multipart = True
                n_parts = -(-size // chunk)
                upload["header"] = {"chunk_size": str(chunk),
                                    **{str(i): f"{base}/{oid}?part={i}" for i in range(1, n_parts + 1)}}
            objects.append({"oid": oid, "size": size, "authenticated": True, "actions": {
                "upload": upload, "verify": {"href": f"{base}/{oid}/verify"}}})
        self._json(200, {"transfer": "multipart" if multipart else "basic", "objects": objects,
                         "hash_algo": "sha256"})

    def _counted_body(self, oid: str) -> Iterator[bytes]:
        hold = self.emu._hold
        received, crossed = 0, False
        for chunk in self._iter_body(_CHUNK if hold is None else _HOLD_CHUNK):
            self.emu._throttle(len(chunk))
            self.emu._add("bytes_uploaded", len(chunk))
            received += len(chunk)
            if hold is not None and not crossed and received >= hold.after_bytes:
                crossed = True
                if self.emu._claim_hold(hold):
                    self._held = hold
                    hold.oid, hold.received = oid, received
                    hold.reached.set()
                    hold.released.wait(hold.timeout)
            yield chunk

    def _h_lfs_upload(self, rtype: str, repo: str, oid: str) -> None:
        found = self._repo(rtype, repo, presigned=True)
        part = _q(self.query, "part")
        if part and not part.isdigit():
            raise HubError(400, f"Invalid part number {part!r}")
        with self.emu._upload_request():
            if not part:
                self.emu._store_upload(found, oid, self._counted_body(oid), found.announced.get(oid))
                self._json(200, {})
                if self._held is not None:
                    self._held.answered.set()
                return
            dest = found.root / "tmp" / f"{oid}.part{int(part)}"
            tmp, md5 = dest.with_suffix(f".{uuid.uuid4().hex}"), hashlib.md5(usedforsecurity=False)
            try:
                with tmp.open("wb") as fh:
                    for chunk in self._counted_body(oid):
                        md5.update(chunk)
                        fh.write(chunk)
                tmp.replace(dest)
            finally:
                tmp.unlink(missing_ok=True)
            self._json(200, {}, {"ETag": f'"{md5.hexdigest()}"'})
            if self._held is not None:
                self._held.answered.set()

    def _h_lfs_complete(self, rtype: str, repo: str, oid: str) -> None:
        found, body = self._repo(rtype, repo, presigned=True), self._json_body()
        parts = sorted(body.get("parts", []), key=lambda p: int(p["partNumber"]))
        files = [found.root / "tmp" / f"{oid}.part{int(p['partNumber'])}" for p in parts]
        if not files or [int(p["partNumber"]) for p in parts] != list(range(1, len(parts) + 1)):
            raise HubError(400, "Invalid multipart completion payload")
        for f, p in zip(files, parts, strict=True):
            if not f.exists():
                raise HubError(400, f"Part {p['partNumber']} was not uploaded")

        def chunks() -> Iterator[bytes]:
            for f in files:
                with f.open("rb") as fh:
                    while data := fh.read(_CHUNK):
                        yield data

        self.emu._store_upload(found, oid, chunks(), found.announced.get(oid))
        for f in files:
            f.unlink(missing_ok=True)
        self._json(200, {})

    def _h_lfs_verify(self, rtype: str, repo: str, oid: str) -> None:
        found, body = self._repo(rtype, repo), self._json_body()
        stored = found.root / "lfs" / oid
        if not stored.exists() or stored.stat().st_size != body.get("size"):
            raise HubError(422, f"LFS object {oid} missing or with the wrong size")
        self._json(200, {"oid": oid, "size": body.get("size")})

    def _h_commit(self, rtype: str, repo: str, rev: str) -> None:
        found = self._repo(rtype, repo)
        try:
            lines = [json.loads(ln) for ln in self._body().splitlines() if ln.strip()]
        except ValueError as e:
            raise HubError(400, f"Invalid NDJSON commit payload: {e}") from e
        header = next((ln.get("value") or {} for ln in lines if ln.get("key") == "header"), {})
        ops = [ln for ln in lines if ln.get("key") != "header"]
        create_pr = _truthy(_q(self.query, "create_pr"))
        commit, branch = self.emu._commit(found, rev, ops, str(header.get("summary") or "Commit"),
                                          str(header.get("description") or ""), header.get("parentCommit"),
                                          create_pr)
        if self.emu.after_commit is not None:
            self.emu.after_commit(found.repo_id, commit.title)
        base = f"{self._base()}/{_PREFIX[found.rtype]}{found.repo_id}"
        pr_url = f"{base}/discussions/{branch.rsplit('/', 1)[-1]}" if create_pr else None
        self._json(200, {"success": True, "commitOid": commit.id, "commitUrl": f"{base}/commit/{commit.id}",
                         "pullRequestUrl": pr_url})

    # ------------------------------------------------------------------ downloads
    def _h_resolve(self, repo: str, rev: str, path: str, rtype: str = "") -> None:
        found = self._repo(rtype, repo)
        special = re.match(r"^((?:pr/\d+|convert/[^/]+))/(.+)$", path)
        if rev == "refs" and special:  # unquoted special refs: /resolve/refs/pr/1/file
            rev, path = f"refs/{special.group(1)}", special.group(2)
        commit = self._commit_at(found, rev)
        entry = commit.tree.get(path)
        if entry is None:
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound", {"X-Repo-Commit": commit.id})
        headers = {"X-Repo-Commit": commit.id, "ETag": f'"{entry.sha256 or entry.oid}"', "Accept-Ranges": "bytes",
                   "Content-Disposition": f'inline; filename="{path.rsplit("/", 1)[-1]}"'}
        if entry.sha256:
            headers |= {"X-Linked-Etag": f'"{entry.sha256}"', "X-Linked-Size": str(entry.size)}
        start, end, status = 0, entry.size - 1, 200
        ranges = self.headers.get("Range")
        m = re.fullmatch(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", ranges or "")
        if ranges and m and (m.group(1) or m.group(2)):
            if m.group(1):
                start = int(m.group(1))
                end = min(int(m.group(2)), entry.size - 1) if m.group(2) else entry.size - 1
            else:
                start = max(entry.size - int(m.group(2)), 0)
            if start >= entry.size or start > end:
                raise HubError(416, "Range Not Satisfiable", None, {"Content-Range": f"bytes */{entry.size}"})
            status, headers["Content-Range"] = 206, f"bytes {start}-{end}/{entry.size}"
        length = end - start + 1 if entry.size else 0
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(length))
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        if self.command == "HEAD":
            return
        budget = length if self._truncate is None else min(length, self._truncate)
        with entry.blob.open("rb") as fh:
            fh.seek(start)
            while budget > 0 and (data := fh.read(min(_CHUNK, budget))):
                self.wfile.write(data)
                budget -= len(data)
                self.emu._add("bytes_downloaded", len(data))
        if self._truncate is not None and self._truncate < length:
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)


def main(argv: list[str] | None = None) -> None:
    """CLI entry point: serve until interrupted, printing the URL on the first line of stdout."""
    parser = argparse.ArgumentParser(description="Hugging Face Hub emulator (loopback, Git LFS, no Xet)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--root", type=Path, default=None, help="storage directory (default: a temp dir)")
    parser.add_argument("--upload-bandwidth", type=float, default=None, help="bytes/second for LFS PUTs")
    parser.add_argument("--multipart-threshold", type=int, default=None)
    parser.add_argument("--multipart-chunk-size", type=int, default=5 * 1024 * 1024)
    args = parser.parse_args(argv)
    root = args.root or Path(tempfile.mkdtemp(prefix="hub-emulator-"))
    emu = HubEmulator(root, host=args.host, port=args.port, upload_bandwidth=args.upload_bandwidth,
                      multipart_threshold=args.multipart_threshold,
                      multipart_chunk_size=args.multipart_chunk_size).start()
    print(emu.url, flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        emu.stop()


if __name__ == "__main__":
    main()
