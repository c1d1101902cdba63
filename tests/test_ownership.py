"""Nothing foreign touched: bids2hf deletes or replaces only files it recorded writing, locally,
in a staging folder and on the remote; and one run at a time uses a folder.

Locking and the Hub go through the real CLI in subprocesses; the rest through click's runner.
"""

from __future__ import annotations

import hashlib
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path

import fsspec
import pytest

from bids2hf.publish.staging import default_staging
from bids2hf.testing.spec import SyntheticSpec
from bids2hf.testing.synthetic import generate_bids
from helpers import (
    BIDS2HF,
    FAST,
    Cli,
    error_line,
    hub_env,
    run_bids2hf,
    snapshot,
    tree,
    without_state,
)
from hub_emulator import HubEmulator

SMALL_SHARDS = ("--max-shard-size", "200kB")
FOREIGN_PARQUET = b"PAR1 not written by bids2hf PAR1"


def _shrink(bids: Path) -> None:
    """A different plan: a subject and a top-level file go away."""
    shutil.rmtree(bids / "sub-04")
    (bids / "CHANGES").unlink()


# -- local outputs (item 7) ----------------------------------------------------------------------
def test_overwrite_refuses_a_clone_of_a_hub_dataset(
    bids_copy: Path, tmp_path: Path, cli: Cli
) -> None:
    """A README.md and data/*.parquet do not make a bids2hf output: only bids2hf's state does."""
    clone = tmp_path / "clone"
    (clone / "data").mkdir(parents=True)
    (clone / "README.md").write_text("# my dataset\n")
    (clone / "data" / "other-00000.parquet").write_bytes(FOREIGN_PARQUET)
    before = snapshot(clone)
    line = error_line(cli("convert", bids_copy, clone, *FAST, "--overwrite"))
    assert str(clone) in line and "not a bids2hf output" in line
    assert snapshot(clone) == before


def test_foreign_files_in_an_output_survive_updates_and_overwrite(
    bids_copy: Path, tmp_path: Path, cli: Cli
) -> None:
    out, fresh = tmp_path / "out", tmp_path / "fresh"
    assert cli("convert", bids_copy, out, *FAST, *SMALL_SHARDS).exit_code == 0
    foreign = {
        "data/other-00000.parquet": FOREIGN_PARQUET,
        "bids/NOTES.txt": b"my notes",
        "analysis/results.csv": b"a,b\n",
    }
    for rel, data in foreign.items():
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_bytes(data)
    _shrink(bids_copy)  # stale shards and bids/CHANGES, written by bids2hf, must go
    result = cli("convert", bids_copy, out, *FAST, *SMALL_SHARDS, "--overwrite")
    assert result.exit_code == 0, result.output
    assert "replaced" in result.stdout
    assert cli("convert", bids_copy, fresh, *FAST, *SMALL_SHARDS).exit_code == 0
    expected = without_state(tree(fresh))
    expected.update({rel: hashlib.sha256(data).hexdigest() for rel, data in foreign.items()})
    assert without_state(tree(out)) == expected
    # And again: what this run wrote (card and manifest included) is recorded as bids2hf's.
    (bids_copy / "README").write_text("a new README\n")
    result = cli("convert", bids_copy, out, *FAST, *SMALL_SHARDS, "--overwrite")
    assert result.exit_code == 0, result.output
    shutil.rmtree(fresh)
    assert cli("convert", bids_copy, fresh, *FAST, *SMALL_SHARDS).exit_code == 0
    expected = without_state(tree(fresh))
    expected.update({rel: hashlib.sha256(data).hexdigest() for rel, data in foreign.items()})
    assert without_state(tree(out)) == expected


def test_a_file_in_the_way_is_refused(bids_copy: Path, tmp_path: Path, cli: Cli) -> None:
    """A dataset-level file new in the source, where the user put a file of their own."""
    out = tmp_path / "out"
    assert cli("convert", bids_copy, out, *FAST).exit_code == 0
    (out / "bids" / "code").mkdir()
    (out / "bids" / "code" / "run.py").write_text("mine")
    (bids_copy / "code").mkdir()
    (bids_copy / "code" / "run.py").write_text("print('theirs')\n")
    before = snapshot(out)
    line = error_line(cli("convert", bids_copy, out, *FAST, "--overwrite"))
    assert "bids/code/run.py" in line and "did not write" in line
    assert snapshot(out) == before


def test_staging_folder_of_the_user_is_refused(bids_copy: Path, tmp_path: Path, cli: Cli) -> None:
    """A folder that looks like a dataset (a card, data/) is still not a staging folder."""
    staging = tmp_path / "my-folder"
    (staging / "data").mkdir(parents=True)
    (staging / "README.md").write_text("# my dataset\n")
    (staging / "data" / "keep.parquet").write_bytes(FOREIGN_PARQUET)
    (staging / "bids").mkdir()
    (staging / "bids" / "keep.txt").write_text("mine")
    before = snapshot(staging)
    url = f"memory://ownership-{uuid.uuid4().hex}/ds"
    line = error_line(cli("convert", bids_copy, url, *FAST, "--staging", staging))
    assert str(staging) in line and "staging" in line
    assert snapshot(staging) == before


# -- remote outputs (item 7) ---------------------------------------------------------------------
def test_fsspec_remote_deletes_only_what_bids2hf_wrote(
    bids_copy: Path, tmp_path: Path, cli: Cli
) -> None:
    url = f"memory://ownership-{uuid.uuid4().hex}/ds"
    fs, root = fsspec.core.url_to_fs(url)
    fs.pipe_file(f"{root}/data/other-00000.parquet", FOREIGN_PARQUET)
    fs.pipe_file(f"{root}/README.md", b"# their card\n")
    args = (*FAST, *SMALL_SHARDS, "--staging", str(tmp_path / "staging"))
    line = error_line(cli("convert", bids_copy, url, *args))
    assert "README.md" in line and "--overwrite" in line
    assert fs.cat_file(f"{root}/README.md") == b"# their card\n"
    result = cli("convert", bids_copy, url, *args, "--overwrite")
    assert result.exit_code == 0, result.output
    assert fs.cat_file(f"{root}/README.md") != b"# their card\n"
    assert len(fs.find(f"{root}/data")) > 2
    # An update removes bids2hf's stale shards, never the foreign one; the staging folder is
    # gone this time, so ownership comes from the remote's own records.
    _shrink(bids_copy)
    shutil.rmtree(tmp_path / "staging")
    result = cli("convert", bids_copy, url, *args)
    assert result.exit_code == 0, result.output
    after = set(fs.find(f"{root}/data"))
    assert f"{root}/data/other-00000.parquet" in after
    assert not any("sub-04" in p for p in after), "stale shards of bids2hf are deleted"
    assert not fs.exists(f"{root}/bids/CHANGES")
    assert fs.cat_file(f"{root}/data/other-00000.parquet") == FOREIGN_PARQUET


def test_hub_keeps_files_bids2hf_did_not_write(
    emu: HubEmulator, bids_copy: Path, tmp_path: Path
) -> None:
    env = hub_env(emu, tmp_path)
    emu.create_repo("org/mixed")
    emu.upload_bytes("org/mixed", {"data/other-00000.parquet": FOREIGN_PARQUET})
    args = ("convert", bids_copy, "hf://datasets/org/mixed", *FAST, *SMALL_SHARDS)

    def run(*extra: str) -> subprocess.CompletedProcess[str]:
        return run_bids2hf(*args, *extra, env=env)

    run()
    files = emu.files("org/mixed")
    assert "data/other-00000.parquet" in files and "README.md" in files
    _shrink(bids_copy)
    shutil.rmtree(tmp_path / "bids2hf-cache")  # no local state: the remote manifest tells
    proc = run()
    assert "kept 1 file(s)" in proc.stdout and "other-00000.parquet" in proc.stdout
    files = emu.files("org/mixed")
    assert emu.read_file("org/mixed", "data/other-00000.parquet") == FOREIGN_PARQUET
    assert not any("sub-04" in p for p in files) and "bids/CHANGES" not in files


def test_hub_card_of_someone_else_needs_overwrite(
    emu: HubEmulator, bids_copy: Path, tmp_path: Path
) -> None:
    env = hub_env(emu, tmp_path)
    emu.create_repo("org/theirs")
    emu.upload_bytes("org/theirs", {"README.md": b"# their card\n"})
    args = ("convert", bids_copy, "hf://datasets/org/theirs", *FAST)
    assert "--overwrite" in error_line(run_bids2hf(*args, env=env, check=False), "README.md")
    assert emu.read_file("org/theirs", "README.md") == b"# their card\n"
    assert not [p for p in emu.files("org/theirs") if p.startswith("data/")]
    run_bids2hf(*args, "--overwrite", env=env)
    assert emu.read_file("org/theirs", "README.md") != b"# their card\n"


# -- one run at a time (item 8) ------------------------------------------------------------------
@pytest.fixture(scope="module")
def slow_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Large enough, in small shards, for a run to last a few seconds."""
    spec = SyntheticSpec(n_subjects=6, target_bytes=40_000_000, derivatives=False)
    return generate_bids(tmp_path_factory.mktemp("slow") / "bids", spec).root


def _start(bids: Path, out: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*BIDS2HF, "convert", str(bids), str(out), *FAST, "--max-shard-size", "1MB"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_until_writing(proc: subprocess.Popen[str], out: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if (out / "data").is_dir() and any((out / "data").glob("*.parquet")):
            return
        time.sleep(0.005)
    pytest.fail(f"the first run did not start writing: {proc.communicate()}")


def test_a_second_run_on_the_same_folder_is_refused(slow_dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    first = _start(slow_dataset, out)
    try:
        _wait_until_writing(first, out)
        # Paused mid-run, the first run holds the folder for as long as the second one needs.
        first.send_signal(signal.SIGSTOP)
        second = _start(slow_dataset, out)
        _, err = second.communicate(timeout=120)
    finally:
        first.send_signal(signal.SIGCONT)
        _, first_err = first.communicate(timeout=300)
    assert second.returncode == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert f"another run is using this folder (pid {first.pid})" in lines[0]
    assert str(out) in lines[0]
    assert first.returncode == 0, first_err
    clean = tmp_path / "clean"
    assert _start(slow_dataset, clean).wait(timeout=300) == 0
    assert without_state(tree(out)) == without_state(tree(clean))
    assert not (out / ".bids2hf" / "lock").exists()


def test_the_lock_does_not_survive_sigkill(slow_dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    first = _start(slow_dataset, out)
    _wait_until_writing(first, out)
    first.send_signal(signal.SIGKILL)
    first.communicate()
    second = _start(slow_dataset, out)
    _, err = second.communicate(timeout=300)
    assert second.returncode == 0, err
    assert not (out / ".bids2hf" / "lock").exists()


def test_default_staging_names_do_not_collide(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BIDS2HF_CACHE", "/cache")
    a = default_staging("hf://datasets/org/a_b")
    b = default_staging("hf://datasets/org_a/b")
    assert a != b
    assert a.parent == b.parent == Path("/cache/staging")
    assert default_staging("hf://datasets/org/a_b/") == a
    assert default_staging("s3://bucket/org/a_b") not in (a, b)
