"""The resume state: its journal, threads writing it, state I/O per run, and the source changing.

Timing and process behaviour is tested through the real CLI in subprocesses.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import bids2hf.api as convert_module
from bids2hf.model.format import EmbeddedFile
from bids2hf.model.state import DatasetFileRecord, ShardRecord
from bids2hf.testing.spec import SyntheticSpec
from bids2hf.testing.synthetic import generate_bids
from bids2hf.write.state_store import StateStore
from helpers import BIDS2HF, Cli, hub_env, kill_tree, tree, without_state
from hub_emulator import HubEmulator


# -- the journal ---------------------------------------------------------------------------------
def _store(tmp_path: Path) -> StateStore:
    return StateStore(tmp_path / ".bids2hf", tmp_path / ".bids2hf" / "tmp")


def _shard(path: str, content_id: str = "c1", sha: str | None = None) -> ShardRecord:
    files = (EmbeddedFile("sub-01/anat/sub-01_T1w.nii.gz", 10, "ab" * 32, 0, "anat_T1w", 0),)
    return ShardRecord(path, content_id, 100, sha, files)


def test_journal_round_trip(tmp_path: Path) -> None:
    store = _store(tmp_path)
    assert store.load() is None
    store.begin("plan1", "/src", "1.0", "hf://datasets/a/b")
    store.own(["data/a.parquet", "data/b.parquet", "README.md"])
    store.remote_own(["data/a.parquet"])
    store.put_shard(_shard("data/a.parquet"))
    store.put_shard(_shard("data/b.parquet"))
    store.set_shard_sha256("data/a.parquet", "cd" * 32)
    store.drop_shards(["data/b.parquet"])
    store.disown(["data/b.parquet"])
    store.put_dataset_file(DatasetFileRecord("CHANGES", 5, 123, "ef" * 32))
    store.mark_complete()
    store.close()
    state = _store(tmp_path).load()
    assert state is not None
    assert (state.plan_id, state.source, state.destination, state.complete) == (
        "plan1",
        "/src",
        "hf://datasets/a/b",
        True,
    )
    assert state.shards == {"data/a.parquet": _shard("data/a.parquet", sha="cd" * 32)}
    assert state.owned == {"data/a.parquet", "README.md"}
    assert state.remote_owned == {"data/a.parquet"}
    assert state.dataset_files["CHANGES"].sha256 == "ef" * 32
    # Another destination: what was written on the first one is not owned there.
    store = _store(tmp_path)
    store.load()
    store.begin("plan2", "/src", "1.0", "s3://bucket/x")
    assert store.state.remote_owned == set() and not store.state.complete


def test_torn_last_line_is_ignored_then_cut_off(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.begin("plan1", "/src", "1.0", None)
    store.put_shard(_shard("data/a.parquet"))
    store.close()
    journal = tmp_path / ".bids2hf" / "state.jsonl"
    whole = journal.read_bytes()
    line = json.dumps({"op": "shard", "path": "data/b.parquet"}).encode()
    journal.write_bytes(whole + line[: len(line) // 2])  # a kill in the middle of an append
    store = _store(tmp_path)
    state = store.load()
    assert state is not None and set(state.shards) == {"data/a.parquet"}
    assert journal.read_bytes() == whole + line[: len(line) // 2], "loading writes nothing"
    store.put_shard(_shard("data/c.parquet"))
    store.close()
    state = _store(tmp_path).load()
    assert state is not None and set(state.shards) == {"data/a.parquet", "data/c.parquet"}
    assert journal.read_bytes().startswith(whole) and journal.read_bytes().endswith(b"\n")


def test_journal_removed_since_loading_is_written_again(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.begin("plan1", "/src", "1.0", None)
    store.put_shard(_shard("data/a.parquet"))
    store.close()
    store = _store(tmp_path)
    store.load()
    (tmp_path / ".bids2hf" / "state.jsonl").unlink()
    store.put_shard(_shard("data/b.parquet"))
    store.close()
    state = _store(tmp_path).load()
    assert state is not None and set(state.shards) == {"data/a.parquet", "data/b.parquet"}


def test_compaction_keeps_the_journal_within_twice_the_state(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.begin("plan1", "/src", "1.0", None)
    for cycle in range(30):  # one shard rewritten again and again (an update per cycle)
        store.put_shard(_shard("data/a.parquet", content_id=f"c{cycle}"))
        store.compact_if_wasteful()
    store.close()
    journal = tmp_path / ".bids2hf" / "state.jsonl"
    one = len(json.dumps({"op": "shard"})) + 300  # about one shard record
    assert journal.stat().st_size < 2 * max(4096, 2 * one)
    state = _store(tmp_path).load()
    assert state is not None and state.shards["data/a.parquet"].content_id == "c29"
    assert not list((tmp_path / ".bids2hf" / "tmp").glob("*"))


def test_state_of_an_older_version_is_migrated(tmp_path: Path) -> None:
    state_dir = tmp_path / ".bids2hf"
    state_dir.mkdir()
    legacy = {
        "plan_id": "p",
        "source": "/src",
        "version": "0.1",
        "complete": True,
        "shards": {
            "data/a.parquet": {
                "content_id": "c",
                "size": 100,
                "sha256": None,
                "files": [
                    {
                        "path": "x.nii.gz",
                        "size": 1,
                        "sha256": "0" * 64,
                        "row": 0,
                        "column": "c",
                        "index": -1,
                    }
                ],
            }
        },
        "dataset_files": {"CHANGES": {"size": 1, "mtime_ns": 2, "sha256": "1" * 64}},
    }
    (state_dir / "state.json").write_text(json.dumps(legacy))
    store = _store(tmp_path)
    state = store.load()
    assert state is not None and state.complete
    assert state.owned == {"data/a.parquet", "bids/CHANGES", "bids2hf/manifest.jsonl", "README.md"}
    store.begin("p2", "/src", "0.2", None)
    store.close()
    assert not (state_dir / "state.json").exists()
    again = _store(tmp_path).load()
    assert again is not None and again.plan_id == "p2" and set(again.shards) == {"data/a.parquet"}


# -- item 1: the state written from two threads --------------------------------------------------
@pytest.fixture(scope="module")
def mid_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    spec = SyntheticSpec(n_subjects=6, target_bytes=200_000_000, derivatives=False)
    return generate_bids(tmp_path_factory.mktemp("mid") / "bids", spec).root


def _resave_t1w(path: Path, bump: int) -> None:
    """Change some voxels and save with nibabel (its own compression: the size changes)."""
    import nibabel as nib
    import numpy as np

    img = nib.load(path)
    data = np.asanyarray(img.dataobj).copy()
    data.flat[: 50 + bump] += 1
    size = path.stat().st_size
    nib.save(nib.Nifti1Image(data, img.affine, img.header), path)
    assert path.stat().st_size != size


def test_update_to_the_hub_while_shards_are_hashed(
    emu: HubEmulator, mid_dataset: Path, tmp_path: Path
) -> None:
    """Issue 9, item 1: convert to the Hub, change a T1w, convert again — with shard sizes for
    which the last shard is still being hashed (and its checksum recorded by the upload side)
    while the dataset files, manifest and card are written. Every run must succeed."""
    env = hub_env(emu, tmp_path)
    bids = tmp_path / "bids"
    shutil.copytree(mid_dataset, bids)
    t1w = sorted(bids.rglob("*_T1w.nii.gz"))
    failures = []
    for i, size in enumerate(("36MB", "45MB", "60MB")):
        args = [
            *BIDS2HF,
            "convert",
            str(bids),
            f"hf://datasets/me/inc{i}",
            "-q",
            "--max-shard-size",
            size,
            "--workers",
            "1",
            "--staging",
            str(tmp_path / f"ST{i}"),
        ]
        for run in range(2):
            if run:
                _resave_t1w(t1w[i % len(t1w)], i)
            proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
            if proc.returncode != 0:
                failures.append(f"{size} run {run}: {proc.stderr.strip()[-300:]}")
        assert not list((tmp_path / f"ST{i}").rglob("*.tmp"))
    assert not failures, failures
    proc = subprocess.run(
        [*BIDS2HF, "verify", str(bids), "hf://datasets/me/inc2", "-q"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0 and "identical" in proc.stdout, proc.stdout + proc.stderr


# -- item 2: dataset-level files change during the run --------------------------------------------
def test_dataset_file_changed_during_run(
    bids_copy: Path, tmp_path: Path, cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CHANGES edited after planning: the run stops naming it; a re-run converts the new version,
    and the export is identical to the source."""
    real = convert_module.write_shards

    def edit_then_write(*args: Any, **kwargs: Any) -> Any:
        with open(bids_copy / "CHANGES", "a") as f:
            f.write("1.0.1 2024-01-01\n  - a late fix\n")
        return real(*args, **kwargs)

    monkeypatch.setattr(convert_module, "write_shards", edit_then_write)
    out = tmp_path / "out"
    result = cli("convert", bids_copy, out, "-q", "-j", "1", "--derivatives", "all")
    assert result.exit_code == 2, result.output
    line = result.stderr.strip()
    assert line.startswith("error: ") and "\n" not in line
    assert str(bids_copy / "CHANGES") in line and "re-run" in line
    assert not (out / "bids" / "CHANGES").exists(), "nothing of the changed file is copied"
    assert not (out / "README.md").exists()
    monkeypatch.setattr(convert_module, "write_shards", real)
    result = cli("convert", bids_copy, out, "-q", "-j", "1", "--derivatives", "all")
    assert result.exit_code == 0, result.output
    result = cli("export", out, tmp_path / "back", "-q")
    assert result.exit_code == 0, result.output
    assert tree(tmp_path / "back") == tree(bids_copy)


# -- item 11: state I/O is linear in the size of the run -----------------------------------------
def tiny_bids(root: Path, n_files: int, per_subject: int = 100, size: int = 700) -> Path:
    """A BIDS folder of ``n_files`` tiny placeholder images (converted with --check none)."""
    rng = random.Random(n_files)
    root.mkdir(parents=True)
    (root / "dataset_description.json").write_text(
        json.dumps({"Name": "tiny", "BIDSVersion": "1.9.0"})
    )
    for s in range(n_files // per_subject):
        folder = root / f"sub-{s:04d}" / "func"
        folder.mkdir(parents=True)
        for r in range(per_subject):
            name = f"sub-{s:04d}_task-rest_run-{r + 1:03d}_bold.nii.gz"
            (folder / name).write_bytes(rng.randbytes(size))
    return root


_MEASURED = """
import sys
from bids2hf.cli import main
code = 0
try:
    main(sys.argv[2:])
except SystemExit as exc:
    code = exc.code or 0
with open("/proc/self/io") as f:
    counters = f.read()
with open(sys.argv[1], "w") as f:
    f.write(counters)
sys.exit(code)
"""

TINY_ARGS = ("-q", "-j", "1", "--check", "none", "--max-shard-size", "100KB")


def _state_io(tmp_path: Path, n_files: int) -> tuple[int, int, float]:
    """Convert ``n_files`` tiny files in a subprocess; return (bytes the process wrote beyond the
    output it produced, bytes of state left in .bids2hf/, seconds)."""
    if not Path("/proc/self/io").exists():
        pytest.skip("needs /proc/self/io (Linux)")
    bids = tiny_bids(tmp_path / "bids", n_files)
    out = tmp_path / "out"
    counters = tmp_path / "io.txt"
    started = time.monotonic()
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            _MEASURED,
            str(counters),
            "convert",
            str(bids),
            str(out),
            *TINY_ARGS,
        ],
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},  # no .pyc writes in the count
        capture_output=True,
        timeout=300,
    )
    seconds = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr[-2000:]
    # wchar: every byte passed to write() by the process (stdout included, which is counted as
    # overhead too). The output's files are each written once; the rest is state I/O.
    wchar = int(dict(line.split(": ") for line in counters.read_text().splitlines())["wchar"])
    files = [p for p in out.rglob("*") if p.is_file()]
    output = sum(p.stat().st_size for p in files if ".bids2hf" not in p.relative_to(out).parts)
    state = sum(p.stat().st_size for p in files if ".bids2hf" in p.relative_to(out).parts)
    shards = list((out / "data").glob("*.parquet"))
    assert len(shards) >= 40
    # Each shard's footer is written twice: by the Parquet writer, then again with the byte
    # offsets of its files (write/ranges.record_offsets). That is output, not state.
    footers = sum(_footer_length(p) for p in shards)
    return wchar - output - footers, state, seconds


def _footer_length(shard: Path) -> int:
    with open(shard, "rb") as f:
        f.seek(-8, os.SEEK_END)
        return int.from_bytes(f.read(4), "little") + 8


def _check_state_io(tmp_path: Path, n_files: int) -> None:
    overhead, state, seconds = _state_io(tmp_path, n_files)
    print(
        f"{n_files} files: {overhead} bytes of state I/O, {state} bytes of state, {seconds:.1f} s"
    )
    assert state > 0
    assert overhead < 2 * state, f"{overhead} bytes written for {state} bytes of state"


def test_state_io_is_linear_5000_files(tmp_path: Path) -> None:
    _check_state_io(tmp_path, 5_000)


@pytest.mark.slow
def test_state_io_is_linear_20000_files(tmp_path: Path) -> None:
    _check_state_io(tmp_path, 20_000)


def test_kill_at_random_points_resumes_byte_identically(tmp_path: Path) -> None:
    """SIGKILL at random points of a run writing many small shards (state recorded after each);
    the re-run ends byte-identical to an uninterrupted run."""
    bids = tiny_bids(tmp_path / "bids", 3_000, per_subject=20)
    clean, out = tmp_path / "clean", tmp_path / "out"
    subprocess.run([*BIDS2HF, "convert", str(bids), str(clean), *TINY_ARGS], check=True)
    shards = len(list((clean / "data").glob("*.parquet")))
    assert shards >= 20
    rng = random.Random(99)
    kills = 0
    # Kill once shard k is in place, plus a random delay, for increasing random k.
    for target in sorted(rng.sample(range(1, shards - 2), 3)):
        proc = subprocess.Popen(
            [*BIDS2HF, "convert", str(bids), str(out), *TINY_ARGS],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            if (out / "data").is_dir() and len(list((out / "data").glob("*.parquet"))) >= target:
                time.sleep(rng.uniform(0, 0.02))
                break
            time.sleep(0.001)
        if proc.poll() is None:
            kill_tree(proc)
            kills += 1
    assert kills >= 2, "the runs ended before they could be killed"
    subprocess.run([*BIDS2HF, "convert", str(bids), str(out), *TINY_ARGS], check=True)
    assert without_state(tree(out)) == without_state(tree(clean))
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    assert not (out / ".bids2hf" / "tmp").exists()
    # Another run finds it complete and writes nothing but its state.
    before = without_state(tree(out))
    done = subprocess.run(
        [*BIDS2HF, "convert", str(bids), str(out), *TINY_ARGS], capture_output=True, text=True
    )
    assert done.returncode == 0 and "0 written" in done.stdout, done.stdout + done.stderr
    assert without_state(tree(out)) == before
