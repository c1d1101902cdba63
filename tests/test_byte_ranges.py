"""Byte ranges of embedded files: located in real shards, checked by sha256, read back exactly."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import shutil
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bids2hf.model.format import FOOTER_KEY, read_footer_index
from bids2hf.model.ranges import FileRange, RangeError
from bids2hf.readback.ranges import coalesce, fetch_ranges, read_range
from bids2hf.testing.spec import GeneratedDataset
from bids2hf.write.ranges import (
    locate_ranges,
    locate_written,
    record_offsets,
    replace_footer_value,
)


def shards(out: Path) -> list[Path]:
    found = sorted((out / "data").glob("*.parquet"))
    assert found
    return found


def test_every_nifti_is_located_and_holds_the_source_bytes(
    converted_ranges: Path, synthetic: GeneratedDataset
) -> None:
    located = 0
    for shard in shards(converted_ranges):
        meta = pq.read_metadata(shard)
        assert meta.num_row_groups > 1
        index = read_footer_index(meta)
        ranges = locate_ranges(shard, index, metadata=meta)
        data = shard.read_bytes()
        for e in index:
            key = (e.column, e.row, e.index)
            if e.path.endswith((".nii", ".nii.gz")):
                # NIfTI columns are stored verbatim: every one of them has a range.
                r = ranges[key]
                assert (
                    data[r.offset : r.offset + r.length] == (synthetic.root / e.path).read_bytes()
                )
                located += 1
            else:
                # The zstd `files` column: no range, read through the column chunk.
                assert e.column == "files" and key not in ranges
    assert located == sum(1 for p in synthetic.root.rglob("*.nii*"))


def test_an_index_that_disagrees_with_the_shard_is_refused(converted_ranges: Path) -> None:
    shard = shards(converted_ranges)[0]
    index = read_footer_index(pq.read_metadata(shard))
    nifti = [i for i, e in enumerate(index) if e.path.endswith(".nii.gz")]
    # A wrong sha256: no range of the chunk hashes to it.
    bad = list(index)
    bad[nifti[0]] = dataclasses.replace(index[nifti[0]], sha256="0" * 64)
    with pytest.raises(RangeError, match="not stored verbatim"):
        locate_ranges(shard, bad)
    # Two files swapped between rows: each is searched in the wrong column chunk.
    a = next(e for e in index if e.path.endswith("_T1w.nii.gz") and e.row == 0)
    b = next(e for e in index if e.path.endswith("_T1w.nii.gz") and e.row > 0)
    swapped = [dataclasses.replace(a, row=b.row), dataclasses.replace(b, row=a.row)]
    with pytest.raises(RangeError):
        locate_ranges(shard, swapped)
    with pytest.raises(RangeError, match="column"):
        locate_ranges(shard, [dataclasses.replace(a, column="no_such_column")])


def test_record_offsets_rewrites_only_the_footer(converted_ranges: Path, tmp_path: Path) -> None:
    for original in shards(converted_ranges):
        shard = tmp_path / original.name
        shutil.copy(original, shard)
        before = pq.read_table(original)
        index = read_footer_index(pq.read_metadata(original))
        # The writer's offsets (found by comparing with the bytes it wrote) are the ones the
        # independent, hash-checked search finds.
        located = locate_ranges(original, index)
        assert {e.key: e.offset for e in index if e.offset is not None} == {
            k: r.offset for k, r in located.items()
        }
        # A footer index without offsets: record_offsets finds them and rewrites the footer.
        bare = [dataclasses.replace(e, offset=None) for e in index]
        plain = json.dumps([e.record() for e in bare], separators=(",", ":")).encode()
        replace_footer_value(shard, FOOTER_KEY, plain)
        original = tmp_path / f"bare-{original.name}"
        shutil.copy(shard, original)
        meta = pq.read_metadata(original)
        ranges = record_offsets(shard, bare, FOOTER_KEY, {})
        assert ranges == located
        after = pq.ParquetFile(shard)
        assert after.read().equals(before)
        assert after.schema_arrow.equals(pq.ParquetFile(original).schema_arrow, check_metadata=True)
        data_end = min(
            meta.row_group(g).column(c).data_page_offset
            for g in range(meta.num_row_groups)
            for c in range(meta.num_columns)
        )
        # Data pages are untouched: everything before the old footer is identical.
        old, new = original.read_bytes(), shard.read_bytes()
        footer_start = len(old) - 8 - int.from_bytes(old[-8:-4], "little")
        assert new[:footer_start] == old[:footer_start] and data_end < footer_start
        stored = json.loads(after.metadata.metadata[FOOTER_KEY])
        assert [{k: v for k, v in e.items() if k != "offset"} for e in stored] == [
            e.record() for e in bare
        ]
        for e in stored:
            key = (e["column"], e["row"], e["index"])
            assert e.get("offset") == (ranges[key].offset if key in ranges else None)
        # The offsets still point at the right bytes once the footer is rewritten.
        assert locate_ranges(shard, index) == ranges


def test_record_offsets_keeps_a_footer_whose_offsets_are_settled(
    converted_ranges: Path, tmp_path: Path
) -> None:
    original = shards(converted_ranges)[0]
    shard = tmp_path / original.name
    shutil.copy(original, shard)
    index = read_footer_index(pq.read_metadata(shard))
    found = {e.key: FileRange(e.offset, e.size) for e in index if e.offset is not None}
    assert record_offsets(shard, index, FOOTER_KEY, found) == found
    assert shard.read_bytes() == original.read_bytes()


def test_locate_written_accepts_only_the_written_bytes(tmp_path: Path) -> None:
    """A value is accepted where the shard holds exactly the expected bytes, nowhere else."""
    schema = pa.schema([("f", pa.struct([("bytes", pa.binary()), ("path", pa.string())]))])
    first, second = b"\x01" * 5000 + b"A", b"\x01" * 5000 + b"B"  # same length, same start
    table = pa.table({"f": [{"bytes": first, "path": "a"}, {"bytes": second, "path": "b"}]})
    shard = tmp_path / "s.parquet"
    with pq.ParquetWriter(shard, schema, compression="none", use_dictionary=False) as writer:
        writer.write_table(table.cast(schema))
        end = shard.stat().st_size
    data = shard.read_bytes()
    keys = [("f", 0, -1), ("f", 1, -1)]
    found = locate_written(shard, 0, end, [(keys[0], "a", memoryview(first)),
                                           (keys[1], "b", memoryview(second))])
    for key, want in zip(keys, (first, second), strict=True):
        r = found[key]
        assert data[r.offset : r.offset + r.length] == want
    # Expected bytes the writer was not given: refused, not matched to a value of that length.
    with pytest.raises(RangeError, match="not stored verbatim"):
        locate_written(shard, 0, end, [(keys[0], "a", memoryview(b"\x01" * 5000 + b"C"))])
    # Order matters: after the second value there is no first one.
    with pytest.raises(RangeError):
        locate_written(shard, 0, end, [(keys[1], "b", memoryview(second)),
                                       (keys[0], "a", memoryview(first))])


def test_replace_footer_value_refuses_a_footer_it_cannot_rebuild(tmp_path: Path) -> None:
    path = tmp_path / "x.parquet"
    path.write_bytes(b"not parquet at all")
    with pytest.raises(ValueError):
        replace_footer_value(path, b"k", b"v")
    assert path.read_bytes() == b"not parquet at all"


def test_read_range_never_returns_wrong_bytes() -> None:
    data = b"...." + b"hello world" + b"...."
    sha = hashlib.sha256(b"hello world").hexdigest()
    assert read_range(io.BytesIO(data), 4, 11, sha) == b"hello world"
    for offset in (3, 5):
        with pytest.raises(RangeError, match="do not match its sha256"):
            read_range(io.BytesIO(data), offset, 11, sha)
    with pytest.raises(RangeError):
        read_range(io.BytesIO(data), 10, 11, sha)  # short


def test_coalesce_merges_neighbours_within_the_gap() -> None:
    ranges = [(100, 10), (0, 10), (15, 5), (1000, 1), (112, 3)]
    spans = coalesce(ranges, gap=5)
    assert [(s.start, s.end, sorted(s.members)) for s in spans] == [
        (0, 20, [1, 2]),
        (100, 115, [0, 4]),
        (1000, 1001, [3]),
    ]
    # A span stops growing at max_span, unless it holds a single range.
    assert len(coalesce([(0, 10), (10, 10)], gap=0, max_span=15)) == 2
    assert coalesce([(0, 100)], max_span=10)[0].end == 100
    assert coalesce([]) == []


def test_fetch_ranges_checks_each_file(converted_ranges: Path) -> None:
    shard = shards(converted_ranges)[0]
    index = read_footer_index(pq.read_metadata(shard))
    ranges = locate_ranges(shard, index)
    fs = fsspec.filesystem("file")
    items = [
        (r.offset, r.length, e.sha256)
        for e in index
        if (r := ranges.get((e.column, e.row, e.index))) is not None
    ]
    got = dict(fetch_ranges(fs, str(shard), items, gap=1 << 20, workers=2))
    data = shard.read_bytes()
    assert {i: data[o : o + n] for i, (o, n, _) in enumerate(items)} == got
    wrong = list(items)
    wrong[1] = (items[1][0] + 1, items[1][1], items[1][2])
    seen = []
    with pytest.raises(RangeError):
        for i, piece in fetch_ranges(fs, str(shard), wrong, gap=0, workers=2):
            seen.append(i)
            assert piece == data[items[i][0] : items[i][0] + items[i][1]]
    assert 1 not in seen


def test_file_range_is_a_plain_value() -> None:
    assert FileRange(1, 2) == FileRange(1, 2)
