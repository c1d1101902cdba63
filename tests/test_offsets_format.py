"""Issue 12's ``offset`` field: optional in the footer index, the manifest and the resume journal.

Entries without an offset are written exactly as before (the golden digests check the bytes);
loaders ignore fields a newer bids2hf may add; a 6-element journal record still loads.
"""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bids2hf.errors import InputError
from bids2hf.model import manifest
from bids2hf.model.format import FOOTER_KEY, EmbeddedFile, read_footer_index
from bids2hf.model.manifest import ManifestEntry
from bids2hf.model.state import ResumeState, ShardRecord, _apply, _shard_record
from bids2hf.readback.published import check_embedded, parse_manifest

SHA = "a" * 64


def _meta(index: list[dict[str, object]]) -> pq.FileMetaData:
    table = pa.table({"x": pa.array([1], pa.int8())})
    table = table.replace_schema_metadata({FOOTER_KEY: json.dumps(index)})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return pq.ParquetFile(pa.BufferReader(sink.getvalue())).metadata


def test_embedded_record_omits_a_missing_offset() -> None:
    e = EmbeddedFile("a.nii.gz", 3, SHA, 0, "anat_T1w", -1)
    assert list(e.record()) == ["path", "size", "sha256", "row", "column", "index"]
    with_offset = EmbeddedFile("a.nii.gz", 3, SHA, 0, "anat_T1w", -1, 128)
    assert with_offset.record()["offset"] == 128 and list(with_offset.record())[-1] == "offset"


def test_footer_index_loader_keeps_offsets_and_ignores_unknown_keys() -> None:
    index = [
        {"path": "a", "size": 3, "sha256": SHA, "row": 0, "column": "c", "index": -1,
         "offset": 4, "future_field": [1, 2]},
        {"path": "b", "size": 3, "sha256": SHA, "row": 1, "column": "c", "index": -1},
    ]
    got = read_footer_index(_meta(index))
    assert [e.offset for e in got] == [4, None]
    # A crafted offset is refused by the readers' check.
    bad = EmbeddedFile("a", 3, SHA, 0, "c", -1, -5)
    with pytest.raises(InputError, match="offset"):
        check_embedded(bad, "x")


def test_manifest_offset_round_trip_and_unknown_fields_ignored() -> None:
    plain = ManifestEntry("a", 3, "row", SHA, "data/s.parquet", "c", 0, -1)
    assert b"offset" not in manifest.dumps([plain])
    placed = ManifestEntry("a", 3, "row", SHA, "data/s.parquet", "c", 0, -1, offset=77)
    data = manifest.dumps([placed])
    assert manifest.loads(data) == [placed] and parse_manifest(data) == [placed]
    record = json.loads(data)
    record["added_by_a_newer_version"] = {"x": 1}
    newer = (json.dumps(record) + "\n").encode()
    assert manifest.loads(newer) == [placed] and parse_manifest(newer) == [placed]
    record["offset"] = "12"
    with pytest.raises(InputError, match="offset"):
        parse_manifest((json.dumps(record) + "\n").encode())


def test_journal_offset_is_an_optional_seventh_element() -> None:
    files = (
        EmbeddedFile("a", 3, SHA, 0, "c", -1, 4),
        EmbeddedFile("b", 3, SHA, 1, "c", 0),
    )
    rec = _shard_record(ShardRecord("data/s.parquet", "cid", 10, None, files))
    assert [len(f) for f in rec["files"]] == [7, 6]  # old records keep their 6 elements
    state = ResumeState()
    _apply(state, json.loads(json.dumps(rec)))
    assert state.shards["data/s.parquet"].files == files
    # An old record (6 elements everywhere) loads with no offsets.
    old = {**rec, "files": [f[:6] for f in rec["files"]]}
    state = ResumeState()
    _apply(state, old)
    assert [e.offset for e in state.shards["data/s.parquet"].files] == [None, None]
    # [issue 11] a file stored beside the shards adds its location as an 8th element.
    beside = EmbeddedFile("d", 3, SHA, 2, "c", 1, None, "files/d")
    rec8 = _shard_record(ShardRecord("data/s.parquet", "cid", 10, None, (beside,)))
    assert rec8["files"] == [["d", 3, SHA, 2, "c", 1, None, "files/d"]]
    state = ResumeState()
    _apply(state, json.loads(json.dumps(rec8)))
    assert state.shards["data/s.parquet"].files == (beside,)
    with pytest.raises(ValueError):
        _apply(ResumeState(), {**rec, "files": [[*rec["files"][0], "files/a", 1]]})
