"""The manifest: every source file, its checksum, and where it went in the output.

Written as ``bids2hf/manifest.jsonl`` (one JSON object per line, sorted by path), so that
``verify`` and ``export`` can account for every file, and people can read it too.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields

__all__ = ["FIELDS", "ManifestEntry", "dumps", "loads"]


@dataclass(frozen=True)
class ManifestEntry:
    """One source file.

    ``placement`` is ``row`` (``location`` is the shard, ``column``/``row``/``index`` say where),
    ``dataset_file`` (``location`` is its path in the output) or ``left_out`` (``reason``).
    ``offset`` is where a row file's bytes start in its shard, when it is stored verbatim.
    ``beside``: a row's file too large for its cell, stored at ``location`` (``files/<path>``);
    ``shard``/``column``/``row``/``index`` say which cell points at it.
    """

    path: str
    size: int
    placement: str
    sha256: str | None = None
    location: str | None = None
    column: str | None = None
    row: int | None = None
    index: int | None = None
    reason: str | None = None
    offset: int | None = None
    shard: str | None = None


#: Fields this version knows; a manifest from a newer bids2hf may carry more, which are ignored.
FIELDS = frozenset(f.name for f in fields(ManifestEntry))


def dumps(entries: Iterable[ManifestEntry]) -> bytes:
    lines = []
    for e in sorted(entries, key=lambda e: (e.path, e.location or "", e.column or "")):
        record = {k: v for k, v in asdict(e).items() if v is not None}
        lines.append(json.dumps(record, sort_keys=True, ensure_ascii=False))
    return ("\n".join(lines) + "\n").encode("utf-8")


def loads(data: bytes) -> list[ManifestEntry]:
    """Parse a manifest, ignoring fields a newer bids2hf may have added.

    Raises:
        ValueError: a line is no JSON (or the data no UTF-8).
        TypeError: a record lacks a required field.
    """
    return [
        ManifestEntry(**{k: v for k, v in json.loads(line).items() if k in FIELDS})
        for line in data.decode("utf-8").splitlines()
        if line
    ]
