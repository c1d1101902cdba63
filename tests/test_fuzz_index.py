"""Damaged or crafted indexes: ``export`` and ``verify`` never crash on them.

The manifest (``bids2hf/manifest.jsonl``) and each shard's footer index (the ``bids2hf`` key of
its Parquet metadata) are damaged at random with a fixed seed: truncation, wrong types, missing
keys, out-of-range rows and indices, huge sizes, swapped paths, flipped bytes. Whatever the
damage, ``export`` either rebuilds the dataset exactly or refuses with one line: exit 2 when the
index is unusable (types, ranges, paths, an index that contradicts the shard), exit 1 when
published bytes or files do not match what the index records. It never writes outside the
target, and never leaves a partial or wrong file in it.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import random
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from bids2hf.api import convert
from bids2hf.bids.options import ScanOptions
from bids2hf.errors import Bids2HfError
from bids2hf.model.format import FOOTER_KEY, MANIFEST_PATH
from bids2hf.plan.options import PlanOptions
from bids2hf.readback.export import export
from bids2hf.readback.verify import verify
from bids2hf.testing.spec import SyntheticSpec
from bids2hf.testing.synthetic import generate_bids
from helpers import manifest_records, snapshot, tree

SEED = 20261127
EXPORT_TMP = ".bids2hf-export-*"  # each run's own temporary folder
Records = list[Any]


# -- the dataset ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    spec = SyntheticSpec(n_subjects=2, sessions=("1",), threads=1, derivatives=False)
    return generate_bids(tmp_path_factory.mktemp("fuzz") / "bids", spec).root


@pytest.fixture(scope="module")
def published(source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The dataset converted over a few shards; nothing is left out (read-only)."""
    out = tmp_path_factory.mktemp("fuzz") / "hf"
    convert(
        source,
        out,
        scan_options=ScanOptions(),
        plan_options=PlanOptions(max_shard_bytes=150_000),
        workers=1,
        progress=False,
    )
    assert len(list((out / "data").glob("*.parquet"))) >= 2
    lines = (out / MANIFEST_PATH).read_text().splitlines()
    assert not [line for line in lines if '"left_out"' in line]
    return out


# -- damage ------------------------------------------------------------------------------------
WRONG_VALUES: list[Any] = ["x", "", -1, -2, 1.5, None, [], {}, True, 10**30, "../x", "/etc/passwd"]


def _damage_records(
    records: Records, rng: random.Random, n_rows: int, serialize: Callable[[Records], bytes]
) -> tuple[str, bytes]:
    """Apply one random kind of damage to a list of index records; return (kind, new bytes)."""
    records = copy.deepcopy(records)
    kind = rng.choice(
        [
            "wrong-type",
            "out-of-range",
            "huge-size",
            "drop-key",
            "swap-paths",
            "truncate",
            "flip-byte",
            "not-an-object",
        ]
    )
    dicts = [r for r in records if isinstance(r, dict)]
    victim = rng.choice(dicts)
    if kind == "wrong-type":
        victim[rng.choice(sorted(victim))] = rng.choice(WRONG_VALUES)
    elif kind == "out-of-range":
        key = rng.choice([k for k in ("row", "index") if k in victim] or ["row"])
        victim[key] = rng.choice([n_rows, n_rows + rng.randint(1, 5), 10**9, -2, 2**63, 2**64])
    elif kind == "huge-size":
        victim["size"] = rng.choice([victim.get("size", 0) + 1, 2**40, 2**63, 10**30])
    elif kind == "drop-key":
        victim.pop(rng.choice(sorted(victim)))
    elif kind == "swap-paths":
        other = rng.choice(dicts)
        victim["path"], other["path"] = other.get("path"), victim.get("path")
    elif kind == "not-an-object":
        records.insert(rng.randrange(len(records) + 1), rng.choice([[1, 2], None, "x", 3]))
    data = serialize(records)
    if kind == "truncate":
        data = data[: rng.randrange(len(data))]
    elif kind == "flip-byte":
        at = rng.randrange(len(data))
        data = data[:at] + bytes([data[at] ^ (1 << rng.randrange(8))]) + data[at + 1 :]
    return kind, data


def damage_manifest(hf: Path, rng: random.Random, n_rows: int) -> str:
    kind, data = _damage_records(manifest_records(hf), rng, n_rows, _jsonl)
    (hf / MANIFEST_PATH).write_bytes(data)
    return kind


def _jsonl(records: Records) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in records).encode()


def _json(records: Records) -> bytes:
    return json.dumps(records).encode()


def rewrite_footer_index(shard: Path, change: Callable[[bytes, int], bytes]) -> None:
    """Write ``shard`` again with its footer index replaced by ``change(index, rows)``."""
    index = pq.ParquetFile(shard).metadata.metadata[FOOTER_KEY]
    table = pq.read_table(shard)
    with pq.ParquetWriter(shard, table.schema) as writer:
        writer.write_table(table)
        writer.add_key_value_metadata({FOOTER_KEY: change(index, table.num_rows)})


def damage_footer(hf: Path, rng: random.Random) -> str:
    shard = rng.choice(sorted((hf / "data").glob("*.parquet")))
    kinds = []

    def change(index: bytes, n_rows: int) -> bytes:
        kind, data = _damage_records(json.loads(index), rng, n_rows, _json)
        kinds.append(kind)
        return data

    rewrite_footer_index(shard, change)
    return kinds[0]


CLASHES = [
    "bids/ file, no manifest",
    "bids/ file in the manifest",
    "bids/ file not in the manifest",
    "file in the output",
    "broken symlink in the output",
    "folder in the output",
]


def damage_clash(hf: Path, rng: random.Random, kind: str) -> str:
    """Put a file (or folder) where export needs a folder (or file), in hf/ or in ``out``."""
    records = manifest_records(hf)
    path = rng.choice(sorted(r["path"] for r in records if "/" in r["path"]))
    folders = [str(p) for p in Path(path).parents if str(p) != "."]
    folder = rng.choice([f for f in folders if not (hf / "bids" / f).is_dir()] or folders)
    out = hf.parent / "out"
    data = rng.randbytes(rng.randrange(1, 64))
    if kind.startswith("bids/"):
        (hf / "bids" / folder).parent.mkdir(parents=True, exist_ok=True)
        (hf / "bids" / folder).write_bytes(data)
        if kind == "bids/ file, no manifest":
            (hf / MANIFEST_PATH).unlink()
        elif kind == "bids/ file in the manifest":
            sha256 = hashlib.sha256(data).hexdigest()
            entry = {"path": folder, "size": len(data), "placement": "dataset_file"}
            records.append({**entry, "sha256": sha256, "location": f"bids/{folder}"})
            (hf / MANIFEST_PATH).write_bytes(_jsonl(records))
    elif kind == "folder in the output":
        (out / path).mkdir(parents=True)
    else:
        (out / folder).parent.mkdir(parents=True, exist_ok=True)
        if kind == "file in the output":
            (out / folder).write_bytes(data)
        else:
            (out / folder).symlink_to("nowhere")
    return f"{kind}: {folder if kind != 'folder in the output' else path}"


def damage_pages(hf: Path, rng: random.Random) -> str:
    """Flip a few bits inside one column chunk of a shard (its page headers or data)."""
    shard = rng.choice(sorted((hf / "data").glob("*.parquet")))
    meta = pq.ParquetFile(shard).metadata
    chunks = [
        meta.row_group(g).column(c)
        for g in range(meta.num_row_groups)
        for c in range(meta.num_columns)
    ]
    # Mostly the leaves export reads (paths and bytes of files), some of the others.
    files = [c for c in chunks if c.path_in_schema.rsplit(".", 1)[-1] in ("path", "bytes")]
    chunk = rng.choice(files if rng.random() < 0.8 else chunks)
    start = chunk.dictionary_page_offset or chunk.data_page_offset
    end = start + chunk.total_compressed_size
    if rng.random() < 0.5:  # anywhere in the chunk
        flips = [rng.randrange(start, end) for _ in range(3)]
    else:  # in or near a page header, where sizes, counts and encodings are
        page = rng.choice([start, chunk.data_page_offset])
        flips = [min(end - 1, page + rng.randrange(40)) for _ in range(3)]
    flips = sorted(flips[: rng.randint(1, 3)])
    data = bytearray(shard.read_bytes())
    for at in flips:
        data[at] ^= 1 << rng.randrange(8)
    shard.write_bytes(bytes(data))
    return f"{shard.name} {chunk.path_in_schema} bytes {flips}"


# -- checking one outcome ---------------------------------------------------------------------
def run_export(hf: Path, out: Path) -> tuple[int, str]:
    """Exit code and message of an export through the API; anything else is a crash."""
    try:
        export(str(hf), out, progress=False)
    except Bids2HfError as exc:
        return exc.exit_code, str(exc)
    return 0, ""


def _listed(hf: Path) -> set[str] | None:
    """The paths the manifest lists, if it parses (a manifest cut at a line end does)."""
    try:
        lines = (hf / MANIFEST_PATH).read_text("utf-8").split("\n")
        return {r["path"] for r in map(json.loads, filter(str.strip, lines))}
    except (OSError, ValueError, TypeError, KeyError):
        return None


def check_outcome(
    case: Path,
    out: Path,
    source: Path,
    code: int,
    message: str,
    what: str,
    out_before: dict[str, str] | None = None,
) -> None:
    """``out_before``: what ``out`` held before the export (None: it did not exist)."""
    expected = tree(source)
    listed = _listed(case / "hf")
    if code == 0 and listed is not None:
        # A manifest that parses says what the dataset holds: what it no longer lists (a
        # manifest cut at a line end) is not exported.
        expected = {rel: digest for rel, digest in expected.items() if rel in listed}
    assert code in (0, 1, 2), what
    if code:
        assert message and "\n" not in message and "Traceback" not in message, what
        assert "internal error" not in message, what
        if code == 1:
            # Exit 1 is for published bytes that differ from the recorded size/sha256, or for
            # files the index lists that are not there; an unusable index is exit 2.
            words = ("sha256", "size", "missing", "damaged")
            assert any(w in message for w in words), (what, message)
        if code == 2:
            # Exit 2 is a refusal before the first write: the output folder is as it was.
            if out_before is None:
                assert not out.exists(), f"{what}: refused, yet {out} was created"
            else:
                assert snapshot(out) == out_before, f"{what}: refused, yet {out} changed"
    assert not (out.is_dir() and list(out.glob(EXPORT_TMP))), what
    written = {
        rel: digest
        for rel, digest in (tree(out) if out.exists() else {}).items()
        if rel not in (out_before or {})
    }
    for rel, digest in written.items():
        assert expected.get(rel) == digest, f"{what}: {rel} is partial, wrong or foreign"
    if code == 0:
        assert written == expected, f"{what}: exported without error but incomplete"


# -- the fuzz tests ---------------------------------------------------------------------------
def _cases(
    published: Path, tmp_path: Path, n: int, damage: Callable[[Path, random.Random], str]
) -> list[tuple[Path, Path, str]]:
    rng = random.Random(SEED + n)
    cases = []
    for i in range(n):
        case = tmp_path / f"case{i}"
        hf = case / "hf"
        shutil.copytree(published, hf)
        kind = damage(hf, rng)
        cases.append((case, hf, f"case {i} ({kind})"))
    return cases


def _n_rows(published: Path) -> int:
    return max(pq.ParquetFile(p).metadata.num_rows for p in (published / "data").glob("*.parquet"))


def _outside(case: Path, out: Path) -> dict[str, str]:
    """The files of ``case`` outside the export's target ``out``."""
    return {k: v for k, v in tree(case).items() if not k.startswith(f"{out.name}/")}


def _run(cases: list[tuple[Path, Path, str]], source: Path) -> dict[int, int]:
    """Export (and verify) every case and check its outcome; the count of each exit code."""
    outcomes: dict[int, int] = {}
    for case, hf, what in cases:
        out = case / "out"
        out_before = snapshot(out)
        before = _outside(case, out)
        code, message = run_export(hf, out)
        check_outcome(case, out, source, code, message, what, out_before)
        assert _outside(case, out) == before, f"{what}: wrote outside the target"
        outcomes[code] = outcomes.get(code, 0) + 1
        try:
            verify(source, str(hf), progress=False)
        except Bids2HfError as exc:
            assert "\n" not in str(exc), what
    return outcomes


def test_fuzzed_manifest(published: Path, source: Path, tmp_path: Path) -> None:
    n_rows = _n_rows(published)
    outcomes = _run(
        _cases(published, tmp_path, 60, lambda hf, rng: damage_manifest(hf, rng, n_rows)), source
    )
    assert outcomes.get(2, 0) >= 30, outcomes  # most damage is refused, not tolerated


@pytest.mark.parametrize("with_manifest", [True, False])
def test_fuzzed_footer_index(
    published: Path, source: Path, tmp_path: Path, with_manifest: bool
) -> None:
    def damage(hf: Path, rng: random.Random) -> str:
        if not with_manifest:
            (hf / MANIFEST_PATH).unlink()
        return damage_footer(hf, rng)

    outcomes = _run(_cases(published, tmp_path, 25, damage), source)
    assert outcomes.get(2, 0) >= 10, outcomes


@pytest.mark.parametrize("with_manifest", [True, False])
def test_fuzzed_data_pages(
    published: Path, source: Path, tmp_path: Path, with_manifest: bool
) -> None:
    """Damaged data pages (a bad download): a one-line refusal or a correct export."""

    def damage(hf: Path, rng: random.Random) -> str:
        if not with_manifest:
            (hf / MANIFEST_PATH).unlink()
        return damage_pages(hf, rng)

    outcomes = _run(_cases(published, tmp_path, 30, damage), source)
    # Images with a recorded offset are fetched as byte ranges and checked by sha256 alone, so
    # flips in their page headers are never read: those exports succeed, and check_outcome
    # proves them byte-identical. Damage to the file bytes themselves is still refused.
    assert outcomes.get(1, 0) >= 5, outcomes


def test_fuzzed_name_clashes(published: Path, source: Path, tmp_path: Path) -> None:
    """A file where another file's folder is (in the dataset or in the output folder), or a
    folder where a file goes: refused with exit 2 before the first write, unless a manifest
    that does not list the clashing file makes it no part of the dataset."""
    kinds = itertools.cycle(CLASHES)
    cases = _cases(
        published, tmp_path, 3 * len(CLASHES), lambda hf, rng: damage_clash(hf, rng, next(kinds))
    )
    for case, hf, what in cases:
        outcomes = _run([(case, hf, what)], source)
        assert outcomes == ({0: 1} if "not in the manifest" in what else {2: 1}), what


# -- targeted damage: each is refused with exit 2 before anything is written -------------------
def _row_entry(records: Records, column_is_list: bool = True) -> dict[str, Any]:
    return next(
        r
        for r in records
        if r.get("placement", "row") == "row" and (r["index"] >= 0) == column_is_list
    )


TARGETED: list[tuple[str, Callable[[Records, int], None]]] = [
    ("index out of range", lambda rs, n: _row_entry(rs).update(index=10_000)),
    ("negative index", lambda rs, n: _row_entry(rs).update(index=-7)),
    ("row out of range", lambda rs, n: _row_entry(rs).update(row=n)),
    ("row as text", lambda rs, n: _row_entry(rs).update(row="0")),
    ("size as text", lambda rs, n: _row_entry(rs).update(size="12")),
    ("huge size", lambda rs, n: _row_entry(rs).update(size=2**62)),
    ("column of no file", lambda rs, n: _row_entry(rs).update(column="subject_id")),
    ("unknown column", lambda rs, n: _row_entry(rs).update(column="nope")),
    ("path of another file", lambda rs, n: _row_entry(rs).update(path="sub-01/other.json")),
    ("bad sha256", lambda rs, n: _row_entry(rs).update(sha256="xyz")),
]


@pytest.mark.parametrize("index", ["manifest", "footer"])
@pytest.mark.parametrize("name", [name for name, _ in TARGETED])
def test_targeted_damage_is_refused_before_writing(
    published: Path, source: Path, tmp_path: Path, index: str, name: str
) -> None:
    change = dict(TARGETED)[name]
    hf = tmp_path / "hf"
    shutil.copytree(published, hf)
    n_rows = _n_rows(published)
    if index == "manifest":
        records = manifest_records(hf)
        change(records, n_rows)
        (hf / MANIFEST_PATH).write_bytes(_jsonl(records))
    else:
        (hf / MANIFEST_PATH).unlink()  # the footers are then the only index

        def edit(index: bytes, n_rows: int) -> bytes:
            records = json.loads(index)
            change(records, n_rows)
            return _json(records)

        rewrite_footer_index(sorted((hf / "data").glob("*.parquet"))[0], edit)
    out = tmp_path / "out"
    code, message = run_export(hf, out)
    assert code == 2, message
    assert "\n" not in message and "internal error" not in message
    assert not out.exists(), "refused before anything was written"


def test_cli_refuses_damaged_indexes_in_one_line(published: Path, tmp_path: Path) -> None:
    """The real command: one line on stderr, no traceback, exit 2, nothing written."""
    damaged = []
    for name in ("index out of range", "row as text", "huge size"):
        hf = tmp_path / name.replace(" ", "-")
        shutil.copytree(published, hf)
        records = manifest_records(hf)
        dict(TARGETED)[name](records, _n_rows(published))
        (hf / MANIFEST_PATH).write_bytes(_jsonl(records))
        damaged.append(hf)
    truncated = tmp_path / "truncated-footer"
    shutil.copytree(published, truncated)
    (truncated / MANIFEST_PATH).unlink()
    shard = sorted((truncated / "data").glob("*.parquet"))[0]
    rewrite_footer_index(shard, lambda index, n_rows: index[: len(index) // 2])
    damaged.append(truncated)
    for hf in damaged:
        out = hf.parent / (hf.name + "-out")
        run = subprocess.run(
            [sys.executable, "-m", "bids2hf", "export", str(hf), str(out), "-q"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert run.returncode == 2, (hf.name, run.stderr)
        assert run.stderr.count("\n") == 1 and run.stderr.startswith("error: "), run.stderr
        assert "Traceback" not in run.stderr and "internal error" not in run.stderr
        assert not out.exists()
