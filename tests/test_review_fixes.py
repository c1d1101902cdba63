"""Fixes of the issue-9 review (M1-M6, L1-L8): each test fails on the code before its fix."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import BIDS2HF, FAST, Cli, error_line, run_bids2hf, tree, with_sitecustomize
from hub_emulator import HubEmulator


# -- M1: a complete local output given as --staging ----------------------------------------------
def test_local_output_as_staging_is_refused(bids_copy: Path, tmp_path: Path, cli: Cli) -> None:
    out = tmp_path / "out"
    assert cli("convert", bids_copy, out, *FAST).exit_code == 0
    before = tree(out)
    url = f"memory://m1-{tmp_path.name}/ds"
    line = error_line(cli("convert", bids_copy, url, *FAST, "--staging", out))
    assert str(out) in line and "push" in line
    assert tree(out) == before, "the local output is left as it was"


# -- L8: a lock file that cannot be opened -------------------------------------------------------
def test_unwritable_lock_is_one_line(
    bids_copy: Path, tmp_path: Path, cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read-only .bids2hf (simulated: the tests may run as root, whom chmod does not stop)."""
    import os

    out = tmp_path / "out"
    assert cli("convert", bids_copy, out, *FAST).exit_code == 0
    real_open = os.open

    def refuse_lock(path: object, *args: object, **kwargs: object) -> int:
        if str(path).endswith(os.path.join(".bids2hf", "lock")):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", refuse_lock)
    line = error_line(cli("convert", bids_copy, out, *FAST))
    assert ".bids2hf" in line and "permission" in line.lower()


# -- L2: the journal after a failed append, and records of a newer version ------------------------
def test_failed_append_does_not_glue_later_records(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno
    import os

    import bids2hf.write.state_store as store_module
    from bids2hf.write.state_store import StateStore

    store = StateStore(tmp_path / ".bids2hf", tmp_path / ".bids2hf" / "tmp")
    store.begin("plan", "/src", "0", None)
    store.own(["a"])
    real_write = os.write
    failed = []

    def half_then_enospc(fd: int, data: object) -> int:
        if not failed:
            failed.append(True)
            real_write(fd, bytes(data)[: len(bytes(data)) // 2])  # type: ignore[call-overload]
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)  # type: ignore[arg-type]

    monkeypatch.setattr(store_module.os, "write", half_then_enospc)
    with pytest.raises(OSError):
        store.own(["b"])
    monkeypatch.setattr(store_module.os, "write", real_write)
    store.own(["c"])
    store.close()
    again = StateStore(tmp_path / ".bids2hf", tmp_path / ".bids2hf" / "tmp")
    state = again.load()
    assert state is not None and state.owned == {"a", "c"}


def test_record_of_newer_version_is_refused_not_cut(tmp_path: Path) -> None:
    from bids2hf.errors import DestinationError
    from bids2hf.write.state_store import StateStore

    store = StateStore(tmp_path / ".bids2hf", tmp_path / ".bids2hf" / "tmp")
    store.begin("plan", "/src", "0", None)
    store.own(["a"])
    store.close()
    journal = tmp_path / ".bids2hf" / "state.jsonl"
    with open(journal, "ab") as f:
        f.write(b'{"op":"from_the_future","x":1}\n{"op":"own","paths":["b"]}\n')
    data = journal.read_bytes()
    again = StateStore(tmp_path / ".bids2hf", tmp_path / ".bids2hf" / "tmp")
    with pytest.raises(DestinationError, match="newer bids2hf"):
        again.load()
    assert journal.read_bytes() == data


# -- M5: an interrupted run of the old state.json format resumes ----------------------------------
def test_legacy_state_of_an_interrupted_run_resumes(
    bids_copy: Path, tmp_path: Path, cli: Cli
) -> None:
    import dataclasses
    import json

    from bids2hf.write.state_store import StateStore

    out = tmp_path / "out"
    # --previews 0: that version wrote no previews (a legacy state cannot record them as ours)
    first = cli("convert", bids_copy, out, *FAST, "--max-shard-size", "200kB", "--previews", "0")
    assert first.exit_code == 0
    state = StateStore(out / ".bids2hf", out / ".bids2hf" / "tmp").load()
    assert state is not None and len(state.shards) > 1
    # What the old version left when killed near the end: its last shard not recorded yet.
    last = sorted(state.shards)[-1]
    legacy = {
        "plan_id": state.plan_id,
        "source": state.source,
        "version": "0.1.0",
        "complete": False,
        "shards": {
            p: {
                "content_id": r.content_id,
                "size": r.size,
                "sha256": r.sha256,
                "files": [dataclasses.asdict(e) for e in r.files],
            }
            for p, r in state.shards.items()
            if p != last
        },
        "dataset_files": {
            k: {"size": r.size, "mtime_ns": r.mtime_ns, "sha256": r.sha256}
            for k, r in state.dataset_files.items()
        },
    }
    (out / ".bids2hf" / "state.jsonl").unlink()
    (out / ".bids2hf" / "state.json").write_text(json.dumps(legacy))
    result = cli("convert", bids_copy, out, *FAST, "--max-shard-size", "200kB")
    assert result.exit_code == 0, result.output
    assert cli("verify", bids_copy, out, "-q").exit_code == 0


# -- M2: abort waits for the uploader, which then commits and deletes nothing ---------------------
def test_abort_waits_and_commits_nothing(tmp_path: Path) -> None:
    import threading

    from bids2hf.publish.targets.base import RemoteFile, StagedFile
    from bids2hf.publish.uploader import Publisher, PublishReport

    in_stage, release = threading.Event(), threading.Event()
    commits: list[list[str]] = []

    class SlowTarget:
        url = "slow://x"

        def ensure(self) -> None: ...

        def files(self) -> dict[str, RemoteFile]:
            return {}

        def stage(self, item: StagedFile) -> None:
            in_stage.set()
            release.wait(10)
            item.uploaded = True

        def commit(self, items: list[StagedFile], deletions: list[str], message: str) -> bool:
            commits.append([i.path for i in items])
            return True

    shard = tmp_path / "s.parquet"
    shard.write_bytes(b"x" * 10)
    publisher = Publisher(SlowTarget(), {}, max_staged=2, commit_every=1, report=PublishReport("u"))
    publisher.acquire(True)
    publisher.submit(StagedFile("data/s.parquet", shard, 10, "0" * 64), holds_slot=True)
    assert in_stage.wait(10)
    threading.Timer(0.3, release.set).start()  # the upload in flight ends during the abort
    publisher.abort()
    assert not any(t.is_alive() for t in publisher._threads), "abort returned with threads running"
    assert commits == [], "an aborted publisher committed"
    assert shard.exists(), "an aborted publisher deleted a staged shard"


# -- L7: push skips unchanged files of every kind, and then commits nothing ----------------------
def test_second_push_uploads_and_commits_nothing(bids_copy: Path, tmp_path: Path, cli: Cli) -> None:
    out = tmp_path / "out"
    assert cli("convert", bids_copy, out, *FAST).exit_code == 0
    url = f"memory://l7-{tmp_path.name}/ds"
    first = cli("push", out, url)
    assert first.exit_code == 0, first.output
    second = cli("push", out, url)
    assert second.exit_code == 0, second.output
    assert "uploaded 0 file(s)" in second.output and "0 commit(s)" in second.output, second.output


# -- L5: an overwritten fsspec key never keeps its old checksum ----------------------------------
def test_fsspec_overwrite_drops_the_old_checksum_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bids2hf.publish.compare import same_content
    from bids2hf.publish.targets.base import StagedFile
    from bids2hf.publish.targets.fsspec import FsspecTarget

    url = f"memory://l5-{tmp_path.name}/ds"
    old, new = tmp_path / "old", tmp_path / "new"
    old.write_bytes(b"a" * 100)
    new.write_bytes(b"b" * 100)  # same size, other bytes
    target = FsspecTarget(url)
    target.ensure()
    item = StagedFile(
        "data/train-0.parquet", old, 100, hashlib.sha256(old.read_bytes()).hexdigest()
    )
    target.stage(item)
    target.commit([item], [], "first")
    real_put = target.fs.put_file

    def put_then_die(lpath: str, rpath: str, **kwargs: object) -> None:
        real_put(lpath, rpath, **kwargs)
        raise KeyboardInterrupt  # killed after the new bytes landed, before any commit

    monkeypatch.setattr(target.fs, "put_file", put_then_die)
    with pytest.raises(KeyboardInterrupt):
        target.stage(StagedFile(item.path, new, 100, hashlib.sha256(new.read_bytes()).hexdigest()))
    monkeypatch.undo()
    again = FsspecTarget(url)
    remote = again.files()[item.path]
    assert not same_content(remote, 100, item.sha256), "the old checksum claims the new bytes"


# -- M4: resuming a Hub upload with a fresh staging folder --------------------------------------
def test_batch_committed_shards_are_ours_with_a_fresh_staging(
    emu: object, hub_env: dict[str, str], bids_copy: Path, tmp_path: Path
) -> None:
    """What an upload killed after a batch commit leaves: shards on the Hub, no manifest or card
    (made here by deleting them); its staging folder removed. The re-run takes the shards as
    bids2hf's (their footer says so) and finishes."""
    import shutil

    url = "hf://datasets/org/m4"
    args = ("convert", bids_copy, url, *FAST, "--max-shard-size", "200kB", "--commit-every", "1")
    run_bids2hf(*args, env=hub_env)
    # The last commit (dataset-level files, manifest, card) never happened.
    drop = (
        "from huggingface_hub import HfApi, CommitOperationDelete as D\n"
        "api = HfApi()\n"
        "files = api.list_repo_files('org/m4', repo_type='dataset')\n"
        "last = [D(f) for f in files if f.startswith(('bids', 'images/', 'previews/'))\n"
        "        or f == 'README.md']\n"
        "api.create_commit('org/m4', last, commit_message='as if killed', repo_type='dataset')\n"
    )
    _python(hub_env, drop)
    shutil.rmtree(Path(hub_env["BIDS2HF_CACHE"]) / "staging")
    run_bids2hf(*args, env=hub_env)


# -- M3: workers die with the run that started them ---------------------------------------------
_SLOW_WORKER_FSYNC = """
import multiprocessing, os, time
_real_fsync = os.fsync
def _slow_fsync(fd):
    if multiprocessing.parent_process() is not None:  # only in worker processes
        time.sleep(0.7)
    return _real_fsync(fd)
os.fsync = _slow_fsync
"""


def test_workers_of_a_killed_run_write_nothing(bids_copy: Path, tmp_path: Path) -> None:
    """SIGKILL of the parent alone, while both workers are writing shards (each worker's fsync
    is slowed through a sitecustomize, so that a shard is always in flight): within a few seconds
    no worker of that run is alive and no shard lands in data/ after the kill."""
    import contextlib
    import signal
    import subprocess
    import time

    import psutil

    env = with_sitecustomize(tmp_path, _SLOW_WORKER_FSYNC)
    out = tmp_path / "out"
    args = [*BIDS2HF, "convert", str(bids_copy), str(out), "-q", "-j", "2"]
    proc = subprocess.Popen([*args, "--max-shard-size", "100kB"], env=env)
    workers: list[psutil.Process] = []
    try:
        data = out / "data"
        deadline = time.monotonic() + 120
        while not (data.is_dir() and any(data.glob("*.parquet"))):
            assert proc.poll() is None, "the run ended before its first shard was seen"
            assert time.monotonic() < deadline, "no shard written"
            time.sleep(0.02)
        workers[:] = psutil.Process(proc.pid).children(recursive=True)
        assert workers, "no worker processes"
        proc.send_signal(signal.SIGKILL)
        assert proc.wait() == -signal.SIGKILL
        shards = sorted(p.name for p in data.glob("*.parquet"))
        _, alive = psutil.wait_procs(workers, timeout=5)
        assert not alive, f"workers outlived the killed run: {alive}"
        time.sleep(1.0)  # a worker still alive would rename its shard by now
        assert sorted(p.name for p in data.glob("*.parquet")) == shards, (
            "a shard landed after the kill"
        )
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for worker in workers:
            with contextlib.suppress(psutil.NoSuchProcess):
                worker.kill()


# -- M6: a card edited on the Hub is someone else's ----------------------------------------------
_EDIT_CARD = """
import sys
from huggingface_hub import CommitOperationAdd, HfApi
HfApi().create_commit(sys.argv[1], [CommitOperationAdd("README.md", b"# edited on the Hub\\n")],
                      commit_message="Update README.md", repo_type="dataset")
"""


def _python(env: dict[str, str], code: str, *args: str) -> None:
    """Run ``code`` in a fresh interpreter (a Hub client acting behind bids2hf's back)."""
    proc = subprocess.run(
        [sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_card_edited_on_the_hub_stops_convert(
    emu: HubEmulator, hub_env: dict[str, str], bids_copy: Path
) -> None:
    url = "hf://datasets/org/m6"
    convert = ("convert", bids_copy, url, *FAST)
    run_bids2hf(*convert, env=hub_env)
    _python(hub_env, _EDIT_CARD, "org/m6")
    edited = emu.files("org/m6")["README.md"]
    with open(bids_copy / "README", "a") as f:
        f.write("\nA change in the source.\n")
    line = error_line(run_bids2hf(*convert, env=hub_env, check=False), "README.md")
    assert "README.md" in line and "--overwrite" in line, line
    assert emu.files("org/m6")["README.md"] == edited, "the edited card was replaced"
    run_bids2hf(*convert, "--overwrite", env=hub_env)
    assert emu.files("org/m6")["README.md"] != edited
    # The card bids2hf published is its own again: a later update needs no --overwrite.
    with open(bids_copy / "README", "a") as f:
        f.write("\nAnother change.\n")
    run_bids2hf(*convert, env=hub_env)


def test_card_edited_on_the_hub_stops_push(
    emu: HubEmulator, hub_env: dict[str, str], bids_copy: Path, tmp_path: Path
) -> None:
    url = "hf://datasets/org/m6p"
    out = tmp_path / "out"
    run_bids2hf("convert", bids_copy, out, *FAST, env=hub_env)
    run_bids2hf("push", out, url, "-q", env=hub_env)
    _python(hub_env, _EDIT_CARD, "org/m6p")
    edited = emu.files("org/m6p")["README.md"]
    line = error_line(run_bids2hf("push", out, url, "-q", env=hub_env, check=False), "README.md")
    assert "README.md" in line and "--overwrite" in line, line
    assert emu.files("org/m6p")["README.md"] == edited


# -- L1: --timeout bounds the manifest read ------------------------------------------------------
def test_slow_manifest_read_is_bounded_by_timeout(
    emu: HubEmulator, hub_env: dict[str, str], bids_copy: Path
) -> None:
    """Every read of the remote manifest answers after 4 s; with --timeout 1 each attempt gives
    up after a second, and the run stops with one line naming the manifest (it used to wait for
    every answer, HfFileSystem's own 10 s read timeout never reached, and succeed late)."""
    import time

    url = "hf://datasets/org/l1"
    convert = ("convert", bids_copy, url, *FAST)
    run_bids2hf(*convert, env=hub_env)
    emu.inject(r"/resolve/[^/]+/bids2hf/manifest\.jsonl$", "GET", delay=4.0, times=None)
    env = dict(hub_env, BIDS2HF_RETRY_BASE_DELAY="0.01")
    start = time.monotonic()
    proc = run_bids2hf(*convert, "--timeout", "1", env=env, check=False)
    elapsed = time.monotonic() - start
    line = error_line(proc)
    assert "bids2hf/manifest.jsonl" in line and "cannot be read" in line, line
    assert elapsed < 8 * 4, f"{elapsed:.1f} s: the reads were not cut at --timeout"


# -- regular (non-LFS) files hold their slot until committed: they must not starve the writer ------
def test_regular_files_holding_every_slot_are_committed(tmp_path: Path) -> None:
    """A file the Hub takes as a regular file is read at commit time, so it keeps its staging
    slot until a commit. With every slot held that way and fewer than ``commit_every`` files
    pending, the writer waited for a slot forever (seen as a hang converting small files stored
    beside the shards to the Hub); the publisher now commits as soon as they hold every slot."""
    import threading

    from bids2hf.publish.targets.base import RemoteFile, StagedFile
    from bids2hf.publish.uploader import Publisher, PublishReport

    commits: list[list[str]] = []

    class RegularFiles:
        url = "regular://x"

        def ensure(self) -> None: ...

        def files(self) -> dict[str, RemoteFile]:
            return {}

        def stage(self, item: StagedFile) -> None:
            pass  # not uploaded: a regular file goes into the commit itself

        def commit(self, items: list[StagedFile], deletions: list[str], message: str) -> bool:
            commits.append([i.path for i in items])
            return True

    publisher = Publisher(RegularFiles(), {}, max_staged=2, commit_every=100, report=PublishReport("u"))
    paths = []
    for n in range(6):
        local = tmp_path / f"f{n}.json"
        local.write_bytes(b"{}")
        paths.append(f"files/f{n}.json")

    def writer() -> None:
        for n, path in enumerate(paths):
            publisher.acquire(True)
            publisher.submit(StagedFile(path, tmp_path / f"f{n}.json", 2, "0" * 64), holds_slot=True)

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    thread.join(20)
    alive = thread.is_alive()
    if alive:
        publisher.abort(1)
    assert not alive, "the writer waited for a staging slot that regular files never freed"
    publisher.finish([], [], "last")
    assert [p for batch in commits for p in batch] == paths


# -- a picture someone put under images/ is theirs, even where bids2hf would write pictures ------
def test_foreign_picture_on_the_hub_is_kept_without_local_state(
    bids_copy: Path, hub_env: dict[str, str]
) -> None:
    """After a run with ``--previews 0`` (no pictures), the maintainer adds their own
    ``images/func_bold.png`` for the card. A later run from another machine (no staging state)
    must not take it for bids2hf's: it used to, since the manifest names a func_bold column.
    It is kept by a ``--previews 0`` run, and a run with previews refuses to replace it."""
    import shutil

    url = "hf://datasets/org/pictures"
    args = ("convert", bids_copy, url, *FAST, "--previews", "0")
    run_bids2hf(*args, env=hub_env)
    put = (
        "from huggingface_hub import HfApi\n"
        "HfApi().upload_file(path_or_fileobj=b'not bids2hf', path_in_repo='images/func_bold.png',"
        " repo_id='org/pictures', repo_type='dataset')\n"
    )
    _python(hub_env, put)
    shutil.rmtree(Path(hub_env["BIDS2HF_CACHE"]) / "staging")
    run_bids2hf(*args, env=hub_env)
    files = (
        "import json\nfrom huggingface_hub import HfApi\n"
        "print(json.dumps(HfApi().list_repo_files('org/pictures', repo_type='dataset')))\n"
    )
    listed = subprocess.run(
        [sys.executable, "-c", files], env=hub_env, capture_output=True, text=True, timeout=300
    )
    assert "images/func_bold.png" in json.loads(listed.stdout), listed.stderr[-2000:]
    shutil.rmtree(Path(hub_env["BIDS2HF_CACHE"]) / "staging")
    refused = run_bids2hf("convert", bids_copy, url, *FAST, env=hub_env, check=False)
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert "images/func_bold.png" in refused.stderr
