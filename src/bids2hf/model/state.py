"""The resume state of a conversion: typed records, kept in an append-only journal.

``OUT/.bids2hf/state.jsonl`` holds one JSON object per line, each a change: a run began (plan,
source, destination), a shard was written (with the files it embeds), a shard's checksum became
known, a dataset-level file was copied, paths are about to be written (ownership), paths were
deleted, the run completed. Loading replays the lines in order.

Why a journal: a run appends each record once, as it happens, so the state I/O of a run is
linear in its size (the single ``state.json`` it replaces was rewritten whole after every shard:
O(files x shards) bytes). Each append is one ``write`` followed by ``fsync``, so a kill can tear
only the last line: loading ignores a line without its newline (or that does not parse) and what
follows it, and the next append cuts that tail off first. When more than half of the journal is
superseded records, it is compacted: rewritten as one record per live item under a temporary
name, then renamed over the journal — so its size stays within twice the state's and compaction
costs at most as much again as the appends that made it necessary.

Ownership: ``owned`` lists every path of the folder bids2hf wrote (or is about to write: paths
are recorded *before* the file appears), ``remote_owned`` the same on the destination a staging
folder publishes to. Only these are ever deleted or replaced.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from bids2hf.model.format import DATASET_FILES_PREFIX, MANIFEST_PATH, EmbeddedFile

__all__ = ["DatasetFileRecord", "ResumeState", "ShardRecord", "UnknownRecordError"]


class UnknownRecordError(ValueError):
    """A journal record of a kind this version does not know (written by a newer bids2hf)."""


@dataclass(frozen=True)
class ShardRecord:
    """A complete shard: what it was written from, its size, checksum and embedded files."""

    path: str
    content_id: str
    size: int
    sha256: str | None  # None until hashed (only publishing needs it)
    files: tuple[EmbeddedFile, ...] = ()


@dataclass(frozen=True)
class DatasetFileRecord:
    """A dataset-level file copied to ``bids/``: the source's size and mtime then, and its sha256."""

    relpath: str
    size: int
    mtime_ns: int
    sha256: str
    version: str = ""  # [issue 15] remote sources: the source's version (ETag) then


@dataclass
class ResumeState:
    """Everything a later run needs to resume, update or clean up after this one."""

    plan_id: str | None = None
    source: str | None = None
    version: str | None = None
    destination: str | None = None  # the remote URL a staging folder publishes to
    complete: bool = False
    shards: dict[str, ShardRecord] = field(default_factory=dict)
    dataset_files: dict[str, DatasetFileRecord] = field(default_factory=dict)
    #: Files copied beside the shards (``files/<relpath>``), by relpath (same record fields).
    beside: dict[str, DatasetFileRecord] = field(default_factory=dict)
    owned: set[str] = field(default_factory=set)
    remote_owned: set[str] = field(default_factory=set)


# -- records ------------------------------------------------------------------------------------
def _shard_record(rec: ShardRecord) -> dict[str, Any]:
    # Embedded files as arrays, not objects: they are most of the journal's bytes.
    # The offset is a 7th element only when known: older journals have 6, and still load.
    # A file stored beside the shards adds its location as an 8th element (offset None).
    files = [
        [e.path, e.size, e.sha256, e.row, e.column, e.index]
        + ([] if e.offset is None and e.location is None else [e.offset])
        + ([] if e.location is None else [e.location])
        for e in rec.files
    ]
    return {
        "op": "shard",
        "path": rec.path,
        "content_id": rec.content_id,
        "size": rec.size,
        "sha256": rec.sha256,
        "files": files,
    }


def _dataset_file_record(rec: DatasetFileRecord, op: str = "dataset_file") -> dict[str, Any]:
    """The journal record of a dataset-level file (``op="beside_file"``: a file stored beside)."""
    record = {
        "op": op,
        "relpath": rec.relpath,
        "size": rec.size,
        "mtime_ns": rec.mtime_ns,
        "sha256": rec.sha256,
    }
    if rec.version:  # [issue 15] remote sources only: local journals stay as they were
        record["version"] = rec.version
    return record


def _embedded(f: list[Any]) -> EmbeddedFile:
    """[path, size, sha256, row, column, index], then when recorded the offset as a 7th element
    and the location of a file stored beside the shards as an 8th."""
    p, s, h, row, c, i, *rest = f
    if len(rest) > 2:
        raise ValueError(f"embedded file record of {len(f)} elements")
    offset = int(rest[0]) if rest and rest[0] is not None else None
    location = str(rest[1]) if len(rest) > 1 and rest[1] is not None else None
    return EmbeddedFile(str(p), int(s), str(h), int(row), str(c), int(i), offset, location)


def _apply(state: ResumeState, r: dict[str, Any]) -> None:
    """Apply one journal record (raises KeyError/TypeError/ValueError on a malformed one)."""
    op = r["op"]
    if op == "run":
        if r.get("destination") != state.destination:
            state.remote_owned = set()  # what we wrote on another destination is not ours here
        state.plan_id, state.source = str(r["plan_id"]), str(r["source"])
        state.version, state.destination = r.get("version"), r.get("destination")
        state.complete = False
    elif op == "shard":
        files = tuple(_embedded(f) for f in r["files"])
        sha = r.get("sha256")
        state.shards[r["path"]] = ShardRecord(
            str(r["path"]), str(r["content_id"]), int(r["size"]), sha and str(sha), files
        )
    elif op == "sha256":
        old = state.shards.get(r["path"])
        if old is not None:
            state.shards[old.path] = ShardRecord(
                old.path, old.content_id, old.size, str(r["sha256"]), old.files
            )
    elif op == "drop_shards":
        for path in r["paths"]:
            state.shards.pop(path, None)
    elif op == "dataset_file":
        state.dataset_files[r["relpath"]] = DatasetFileRecord(
            str(r["relpath"]),
            int(r["size"]),
            int(r["mtime_ns"]),
            str(r["sha256"]),
            str(r.get("version", "")),  # [issue 15]
        )
    elif op == "drop_dataset_files":
        for relpath in r["relpaths"]:
            state.dataset_files.pop(relpath, None)
    elif op == "beside_file":
        state.beside[r["relpath"]] = DatasetFileRecord(
            str(r["relpath"]),
            int(r["size"]),
            int(r["mtime_ns"]),
            str(r["sha256"]),
            str(r.get("version", "")),
        )
    elif op == "drop_beside_files":
        for relpath in r["relpaths"]:
            state.beside.pop(relpath, None)
    elif op == "own":
        state.owned.update(map(str, r["paths"]))
    elif op == "disown":
        state.owned.difference_update(r["paths"])
    elif op == "remote_own":
        state.remote_owned.update(map(str, r["paths"]))
    elif op == "remote_disown":
        state.remote_owned.difference_update(r["paths"])
    elif op == "complete":
        state.complete = True
    else:
        raise UnknownRecordError(str(op))


def _snapshot(state: ResumeState) -> Iterator[dict[str, Any]]:
    """The records that rebuild ``state`` from nothing (what compaction writes)."""
    if state.plan_id is not None:
        yield {
            "op": "run",
            "plan_id": state.plan_id,
            "source": state.source,
            "version": state.version,
            "destination": state.destination,
        }
    for path in sorted(state.shards):
        yield _shard_record(state.shards[path])
    for relpath in sorted(state.dataset_files):
        yield _dataset_file_record(state.dataset_files[relpath])
    for relpath in sorted(state.beside):
        yield _dataset_file_record(state.beside[relpath], "beside_file")
    if state.owned:
        yield {"op": "own", "paths": sorted(state.owned)}
    if state.remote_owned:
        yield {"op": "remote_own", "paths": sorted(state.remote_owned)}
    if state.complete:
        yield {"op": "complete"}


def _line(record: dict[str, Any]) -> bytes:
    return (json.dumps(record, separators=(",", ":"), ensure_ascii=False) + "\n").encode()


def _from_legacy(data: dict[str, Any]) -> ResumeState:
    """The state an older bids2hf kept in ``state.json`` (one JSON document, rewritten whole).

    Ownership was not recorded then, and that version treated every file at its paths as its
    own: the files its records name, the manifest and the card. (The loader adds the shards
    found in ``data/``, which this pure function cannot list.)
    """
    state = ResumeState(
        plan_id=str(data["plan_id"]),
        source=str(data["source"]),
        version=data.get("version"),
        complete=bool(data.get("complete")),
    )
    for path, rec in dict(data.get("shards", {})).items():
        files = tuple(EmbeddedFile.from_record(e) for e in rec.get("files", []))
        state.shards[path] = ShardRecord(
            path, str(rec["content_id"]), int(rec["size"]), rec.get("sha256"), files
        )
        state.owned.add(path)
    for relpath, rec in dict(data.get("dataset_files", {})).items():
        state.dataset_files[relpath] = DatasetFileRecord(
            relpath, int(rec["size"]), int(rec["mtime_ns"]), str(rec["sha256"])
        )
        state.owned.add(DATASET_FILES_PREFIX + relpath)
    # That version wrote the manifest and card of every run (an interrupted update still has
    # those of the run before): they are its own, complete or not.
    state.owned.update((MANIFEST_PATH, "README.md"))
    return state
