"""Read access to a converted dataset wherever it is: a local folder, ``hf://``, or any fsspec URL.

Only metadata is read here: the manifest and each shard's Parquet footer (whose bids2hf index
lists the embedded files with their sha256). Image bytes are never fetched by these functions.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import fsspec
import pyarrow.parquet as pq

from .errors import InputError
from .manifest import MANIFEST_PATH, ManifestEntry, loads
from .write import EmbeddedFile, read_footer_index


@dataclass
class PublishedDataset:
    """A converted dataset opened through fsspec."""

    fs: Any  # fsspec.AbstractFileSystem
    root: str
    url: str

    def path(self, relpath: str) -> str:
        return posixpath.join(self.root, relpath) if self.root else relpath

    def exists(self, relpath: str) -> bool:
        return bool(self.fs.exists(self.path(relpath)))

    def read_bytes(self, relpath: str) -> bytes:
        with self.fs.open(self.path(relpath), "rb") as f:
            return bytes(f.read())

    def _relative(self, found: Iterable[str]) -> set[str]:
        prefix = self.root.rstrip("/") + "/" if self.root else ""
        return {p[len(prefix) :] if p.startswith(prefix) else p for p in found}

    def shards(self) -> list[str]:
        return sorted(self._relative(self.fs.glob(self.path("data/*.parquet"))))

    def listing(self, folder: str) -> set[str]:
        """Every file under ``folder``, in one listing (not one request per file)."""
        try:
            return self._relative(self.fs.find(self.path(folder)))
        except FileNotFoundError:
            return set()

    def manifest(self) -> list[ManifestEntry] | None:
        if not self.exists(MANIFEST_PATH):
            return None
        try:
            return loads(self.read_bytes(MANIFEST_PATH))
        except (ValueError, TypeError) as exc:
            raise InputError(f"{self.url}/{MANIFEST_PATH}: unreadable manifest ({exc})") from None

    def footer(self, shard: str) -> tuple[pq.FileMetaData, list[EmbeddedFile]]:
        with self.fs.open(self.path(shard), "rb") as f:
            meta = pq.ParquetFile(f).metadata
        try:
            return meta, read_footer_index(meta)
        except (ValueError, TypeError) as exc:
            raise InputError(f"{self.url}/{shard}: unreadable bids2hf index ({exc})") from None

    def embedded(self) -> dict[str, list[EmbeddedFile]]:
        """Shard → the files its footer says it holds."""
        return {shard: self.footer(shard)[1] for shard in self.shards()}


def open_dataset(url: str) -> PublishedDataset:
    """Open a local folder, ``hf://datasets/ORG/NAME[@REV]`` or fsspec URL for reading."""
    try:
        fs, root = fsspec.core.url_to_fs(url)
    except (ValueError, ImportError) as exc:
        raise InputError(f"{url}: cannot open ({exc})") from None
    dataset = PublishedDataset(fs, root.rstrip("/"), url)
    if not dataset.exists("data") and not dataset.exists(MANIFEST_PATH):
        raise InputError(f"{url}: no data/ folder or {MANIFEST_PATH}: not a bids2hf dataset")
    return dataset
