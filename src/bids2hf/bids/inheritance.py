"""The BIDS inheritance principle: the effective metadata of a data file.

A JSON sidecar applies to a data file when it has the same suffix, its entities are a subset of
the file's entities (with equal values), and it sits in the file's folder or a folder above it
(up to the dataset root). Values from deeper, more specific sidecars override shallower ones.
"""

from __future__ import annotations

import posixpath
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import bids2hf.bids.schema as bids_schema

__all__ = ["SidecarIndex"]


@dataclass(frozen=True)
class _Sidecar:
    relpath: str
    entities: Mapping[str, str]
    data: Mapping[str, Any]


class SidecarIndex:
    """Sidecars indexed by (folder, suffix) for fast lookups of many data files."""

    def __init__(self, sidecars: Mapping[str, Mapping[str, Any]]) -> None:
        self._sidecars = sidecars
        self._by_dir: dict[tuple[str, str], list[_Sidecar]] = defaultdict(list)
        for relpath, data in sidecars.items():
            parsed = _parse_any(relpath)
            if parsed is None or parsed.suffix is None:
                continue
            folder = posixpath.dirname(relpath)
            self._by_dir[(folder, parsed.suffix)].append(_Sidecar(relpath, parsed.entities, data))

    def applicable(self, relpath: str, entities: Mapping[str, str], suffix: str) -> list[str]:
        """Paths of the sidecars that apply to a data file, least specific first."""
        folders = []
        folder = posixpath.dirname(relpath)
        while True:
            folders.append(folder)
            if folder == "" or _is_dataset_root(folder):
                break
            folder = posixpath.dirname(folder)
        chosen: list[_Sidecar] = []
        for folder in reversed(folders):
            level = [
                s
                for s in self._by_dir.get((folder, suffix), [])
                if all(entities.get(k) == v for k, v in s.entities.items())
            ]
            level.sort(key=lambda s: (len(s.entities), s.relpath))
            chosen.extend(level)
        return [s.relpath for s in chosen]

    def effective(self, relpath: str, entities: Mapping[str, str], suffix: str) -> dict[str, Any]:
        """Merged metadata of a data file; deeper and more specific sidecars win."""
        merged: dict[str, Any] = {}
        for path in self.applicable(relpath, entities, suffix):
            merged.update(self._sidecars[path])
        return merged


def _is_dataset_root(folder: str) -> bool:
    # derivatives/NAME is the root of a nested derivative dataset.
    parts = folder.split("/")
    return len(parts) == 2 and parts[0] == "derivatives"


def _parse_any(relpath: str) -> bids_schema.ParsedName | None:
    if relpath.startswith("derivatives/"):
        inner = relpath.split("/", 2)[2] if relpath.count("/") >= 2 else relpath
        return bids_schema.parse_generic_name(inner)
    return bids_schema.parse_raw_path(relpath) or bids_schema.parse_generic_name(relpath)
