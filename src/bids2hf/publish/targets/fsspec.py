"""Publishing to any fsspec filesystem (s3://, gs://, file://, ...)."""

from __future__ import annotations

import json
import posixpath
import uuid
from collections.abc import Sequence

from bids2hf.errors import DestinationError, InputError
from bids2hf.model.format import CHECKSUMS_PATH
from bids2hf.publish.targets.base import RemoteFile, StagedFile

__all__ = ["FsspecTarget"]


class FsspecTarget:
    """Any fsspec URL. Objects appear at their final key only when complete.

    Object stores make single uploads atomic, so files go straight to their key there; other file
    systems get a temporary name and a rename. ``bids2hf/checksums.json`` records the sha256 of
    each file written, so that re-runs and verification know what the remote holds.
    """

    def __init__(self, url: str) -> None:
        import fsspec

        self.url = url
        self.repo_id: str | None = None
        try:
            self.fs, self.root = fsspec.core.url_to_fs(url)
        except (ImportError, ValueError) as exc:
            raise InputError(f"{url}: cannot open ({exc}); for s3:// install bids2hf[s3]") from None
        self.root = self.root.rstrip("/")
        protocol = self.fs.protocol if isinstance(self.fs.protocol, str) else self.fs.protocol[0]
        self.atomic_put = protocol in ("s3", "s3a", "gs", "gcs", "az", "abfs", "memory")
        self._checksums: dict[str, str] | None = None
        self._saved: dict[str, str] = {}  # the record as bids2hf/checksums.json holds it

    def _key(self, path: str) -> str:
        return posixpath.join(self.root, path)

    def ensure(self) -> None:
        """Create the destination folder if needed.

        Raises:
            DestinationError: it cannot be created.
        """
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
            self._saved = dict(self._checksums)
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
        self.forget([item.path])
        self.upload(item)
        self.adopt(item)

    # [issue 14] stage() in three steps, so that a Dask worker uploads while the driver keeps
    # the checksum record (forget before the workers start, adopt as each shard arrives)
    def forget(self, paths: Sequence[str]) -> None:
        """Drop the checksums of keys about to hold other bytes, and write the record out.

        The old checksum goes first, so that a kill between the upload and the next commit never
        leaves a record claiming the old sha256 for the new bytes (same size would pass for
        unchanged).
        """
        sums = self.checksums()
        if [sums.pop(p) for p in paths if p in sums]:
            self._write_checksums()

    def upload(self, item: StagedFile) -> None:
        """Put the file at its final key, complete or not at all (nothing is recorded)."""
        key = self._key(item.path)
        self.fs.makedirs(posixpath.dirname(key), exist_ok=True)
        if self.atomic_put:
            self.fs.put_file(str(item.local), key)
        else:
            tmp = f"{posixpath.dirname(key)}/.{posixpath.basename(key)}.{uuid.uuid4().hex}.tmp"
            self.fs.put_file(str(item.local), tmp)
            self.fs.mv(tmp, key)
        item.uploaded = True

    def adopt(self, item: StagedFile) -> None:
        """Record the checksum of a file uploaded (by :meth:`upload`, here or on a Dask worker);
        written to ``bids2hf/checksums.json`` by the next commit."""
        self.checksums()[item.path] = item.checksum()

    def commit(self, items: Sequence[StagedFile], deletions: Sequence[str], message: str) -> bool:
        if not items and not deletions and self.checksums() == self._saved:
            return False  # nothing changed: the checksum record stays as it is
        for item in items:
            if not item.uploaded:
                self.stage(item)
        sums = self.checksums()
        for path in deletions:
            self.fs.rm(self._key(path))
            sums.pop(path, None)
        self._write_checksums()
        return True

    def _write_checksums(self) -> None:
        data = json.dumps(self.checksums(), indent=0, sort_keys=True).encode()
        key = self._key(CHECKSUMS_PATH)
        self.fs.makedirs(posixpath.dirname(key), exist_ok=True)
        self.fs.pipe_file(key, data)
        self._saved = dict(self.checksums())
