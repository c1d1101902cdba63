"""Publishing to the Hub, end to end, against the Hub emulator with the real huggingface_hub client.

The client reads HF_ENDPOINT at import time, so bids2hf runs in subprocesses pointed at the
emulator. These tests cover the plain Git LFS path (HF_HUB_DISABLE_XET=1); production uses Xet
through the same `preupload_lfs_files`/`create_commit` calls.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from bids2hf.model.format import MANIFEST_PATH
from bids2hf.publish.pipeline import FINAL_MESSAGE
from bids2hf.testing.spec import GeneratedDataset, SyntheticSpec
from bids2hf.testing.synthetic import generate_bids
from helpers import BIDS2HF, error_line, named_card, run_bids2hf, sha256, tree
from hub_emulator import HubEmulator

REPO = "org/ds"
URL = f"hf://datasets/{REPO}"
ALL_SMALL_SHARDS = ("--derivatives", "all", "-q", "--max-shard-size", "150kB", "-j", "1")


@pytest.fixture
def env(hub_env: dict[str, str]) -> dict[str, str]:
    return hub_env


def staging_dir(env: dict[str, str]) -> Path:
    return next((Path(env["BIDS2HF_CACHE"]) / "staging").iterdir())


def remote_tree(emu: HubEmulator) -> dict[str, str]:
    return {path: sha256(blob) for path, blob in emu.files(REPO).items()}


def test_convert_to_hub_and_back(
    emu: HubEmulator, env: dict[str, str], synthetic: GeneratedDataset, tmp_path: Path
) -> None:
    run_bids2hf("convert", str(synthetic.root), URL, *ALL_SMALL_SHARDS, "--private", env=env)
    assert emu._repos[("dataset", REPO)].private, "--private creates a private repository"
    files = emu.files(REPO)
    shards = [p for p in files if p.startswith("data/")]
    assert len(shards) > 2 and "README.md" in files and "bids2hf/manifest.jsonl" in files
    # The card and manifest arrive in the last commit, after every data shard.
    assert "card" in emu.commits(REPO)[0]["title"]
    # Back from the Hub, byte for byte.
    run_bids2hf("export", URL, str(tmp_path / "back"), "-q", env=env)
    assert tree(tmp_path / "back") == tree(synthetic.root)
    # `verify` against the remote reads metadata only and finds nothing.
    proc = run_bids2hf("verify", str(synthetic.root), URL, "-q", env=env)
    assert "identical" in proc.stdout
    # Staging keeps only the resume state.
    assert not list(staging_dir(env).glob("data/*.parquet"))


def test_load_dataset_from_the_hub(
    emu: HubEmulator, env: dict[str, str], synthetic: GeneratedDataset
) -> None:
    run_bids2hf(
        "convert", str(synthetic.root), URL, "-q", "--max-shard-size", "200kB", "-j", "1", env=env
    )
    script = textwrap.dedent(
        f"""
        import hashlib, json
        import datasets
        datasets.config.USE_PARQUET_EXPORT = False  # stay on loopback (no datasets-server lookup)
        from datasets import Nifti, List, load_dataset
        out = {{}}
        for streaming in (False, True):
            ds = load_dataset("{REPO}", split="train", streaming=streaming)
            ds = ds.cast_column("anat_T1w", List(Nifti(decode=False)))
            out[str(streaming)] = {{v["path"]: hashlib.sha256(v["bytes"]).hexdigest() for row in ds for v in row["anat_T1w"]}}
        img = load_dataset("{REPO}", split="train")[0]["anat_T1w"][0]
        out["shape"] = list(img.shape)
        print(json.dumps(out))
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    expected = {
        p.relative_to(synthetic.root).as_posix(): sha256(p)
        for p in synthetic.nifti_files
        if p.name.endswith("_T1w.nii.gz") and "derivatives" not in p.parts
    }
    assert result["False"] == expected
    assert result["True"] == expected
    assert result["shape"] == [16, 16, 8]


def _watch_staging(root: Path, stop: threading.Event, peak: list[int]) -> None:
    while not stop.is_set():
        try:
            # Shards (and their temporary files) only: the previews file is staged at the end.
            data = root / "data"
            count = sum(1 for p in data.rglob("*.parquet*") if p.is_file()) if data.exists() else 0
        except FileNotFoundError:
            count = 0
        peak[0] = max(peak[0], count)
        time.sleep(0.005)


def test_staging_stays_bounded(emu: HubEmulator, env: dict[str, str], tmp_path: Path) -> None:
    bids = generate_bids(
        tmp_path / "bids", SyntheticSpec(n_subjects=6, target_bytes=6_000_000)
    ).root
    emu.upload_bandwidth = 4_000_000  # slow uploads: the writer must wait for room
    staging = tmp_path / "staging"
    stop, peak = threading.Event(), [0]
    watcher = threading.Thread(target=_watch_staging, args=(staging, stop, peak))
    watcher.start()
    try:
        run_bids2hf(
            "convert",
            str(bids),
            URL,
            "-q",
            "--max-shard-size",
            "400kB",
            "-j",
            "1",
            "--max-staged",
            "2",
            "--staging",
            str(staging),
            env=env,
        )
    finally:
        stop.set()
        watcher.join()
    shards = [p for p in emu.files(REPO) if p.startswith("data/")]
    assert len(shards) >= 8
    assert 1 <= peak[0] <= 2, f"at most 2 shards may be staged, saw {peak[0]}"


def test_incremental_update_uploads_only_changed_shards(
    emu: HubEmulator, env: dict[str, str], synthetic: GeneratedDataset, tmp_path: Path
) -> None:
    import shutil

    bids = tmp_path / "bids"
    shutil.copytree(synthetic.root, bids)
    args = ("-q", "--max-shard-size", "150kB", "-j", "1")
    run_bids2hf("convert", str(bids), URL, *args, env=env)
    before = remote_tree(emu)
    shard_sizes = [
        os.path.getsize(p) for path, p in emu.files(REPO).items() if path.startswith("data/")
    ]
    emu.reset_stats()
    # Change one image's content.
    target = next(p for p in sorted(bids.rglob("*_T1w.nii.gz")) if "sub-03" in p.parts)
    data = bytearray(target.read_bytes())
    data[-20] ^= 0xFF
    target.write_bytes(bytes(data))
    commits_before = len(emu.commits(REPO))
    run_bids2hf("convert", str(bids), URL, *args, "--check", "none", env=env)
    after = remote_tree(emu)
    changed = {p for p in after if before.get(p) != after[p]}
    assert {p for p in changed if p.startswith("data/")}, "the shard holding the file changed"
    assert len([p for p in changed if p.startswith("data/")]) <= 2
    assert emu.stats["bytes_uploaded"] <= 2 * max(shard_sizes) + 100_000
    assert len(emu.commits(REPO)) - commits_before == 1
    # Add a subject: new shards appear, stale ones go in the same last commit.
    shutil.copytree(bids / "sub-04", bids / "sub-05")
    for p in sorted((bids / "sub-05").rglob("*")):
        if p.is_file():
            p.rename(p.with_name(p.name.replace("sub-04", "sub-05")))
    (bids / "participants.tsv").write_text(
        "participant_id\tage\tsex\tgroup\n"
        + "".join(f"sub-0{i}\t3{i}\tF\tpatient\n" for i in range(1, 7))
    )
    run_bids2hf("convert", str(bids), URL, *args, "--check", "none", env=env)
    files = emu.files(REPO)
    assert any("sub-05" in p for p in files if p.startswith("data/"))
    proc = run_bids2hf("verify", str(bids), URL, "-q", env=env)
    assert "identical" in proc.stdout


def test_dry_run_changes_nothing(
    emu: HubEmulator, env: dict[str, str], synthetic: GeneratedDataset
) -> None:
    run_bids2hf(
        "convert", str(synthetic.root), URL, "-q", "--max-shard-size", "200kB", "-j", "1", env=env
    )
    before = remote_tree(emu)
    commits = len(emu.commits(REPO))
    proc = run_bids2hf(
        "convert", str(synthetic.root), URL, "-q", "--max-shard-size", "100kB", "--dry-run", env=env
    )
    assert "would upload" in proc.stdout and "would delete" in proc.stdout
    assert remote_tree(emu) == before and len(emu.commits(REPO)) == commits


def test_push_converted_folder(
    emu: HubEmulator, env: dict[str, str], synthetic: GeneratedDataset, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    run_bids2hf(
        "convert", str(synthetic.root), str(out), "-q", "--max-shard-size", "200kB", env=env
    )
    run_bids2hf("push", str(out), URL, "-q", "--commit-every", "2", env=env)
    local = {k: v for k, v in tree(out).items() if not k.startswith(".bids2hf")}
    card = named_card((out / "README.md").read_bytes(), REPO)  # (push names the repository)
    local["README.md"] = hashlib.sha256(card).hexdigest()
    remote = {k: v for k, v in remote_tree(emu).items() if k != ".gitattributes"}
    assert remote == local
    emu.reset_stats()
    run_bids2hf("push", str(out), URL, "-q", env=env)
    assert emu.stats["bytes_uploaded"] == 0 and emu.stats["requests"]["POST commit"] == 0


def test_survives_faults(
    emu: HubEmulator, env: dict[str, str], synthetic: GeneratedDataset, tmp_path: Path
) -> None:
    faults = [
        emu.inject(r"/commit/", "POST", status=429, retry_after=1),
        emu.inject(r"/commit/", "POST", status=503),
        emu.inject(r"/preupload/", "POST", status=500),
        emu.inject(r"/commit/", "POST", lose_response=True),  # applied, but the answer is lost
        emu.inject(r"objects/batch", "POST", drop=True),
        emu.inject(r"/api/datasets/org/ds/revision", "GET", status=502),
        emu.inject(r"/tree/", "GET", delay=0.5),
    ]
    run_bids2hf(
        "convert", str(synthetic.root), URL, *ALL_SMALL_SHARDS, "--commit-every", "2", env=env
    )
    # Every injected fault was served (a fault no request met would test nothing).
    unmet = emu.unmet_faults()
    assert not unmet, [(f.pattern.pattern, f.method, f.fired, f.times) for f in unmet]
    assert emu.stats["faults_fired"] == len(faults)
    run_bids2hf("export", URL, str(tmp_path / "back"), "-q", env=env)
    assert tree(tmp_path / "back") == tree(synthetic.root)
    # The lost response did not produce a duplicate commit: no two commits hold the same change.
    titles = [c["title"] for c in emu.commits(REPO)]
    assert titles.count("bids2hf: dataset card, manifest and dataset-level files") == 1


def test_sigkill_and_resume(emu: HubEmulator, env: dict[str, str], tmp_path: Path) -> None:
    """Kill the streaming upload in the middle of an LFS upload, at random points; re-runs end
    identical to an uninterrupted run."""
    bids = generate_bids(
        tmp_path / "bids", SyntheticSpec(n_subjects=5, target_bytes=3_000_000)
    ).root
    args = (
        "convert",
        str(bids),
        URL,
        "-q",
        "--max-shard-size",
        "250kB",
        "-j",
        "1",
        "--commit-every",
        "2",
    )
    seed = 7
    rng = random.Random(seed)
    for kill in range(3):
        # The emulator pauses an upload mid-body (the first, second or third of this run, after
        # a random number of bytes; shards are larger), so the kill lands while it is in progress.
        hold = emu.hold_upload(rng.randrange(1, 50_000), skip=rng.randrange(3))
        proc = subprocess.Popen(
            [*BIDS2HF, *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        where = f"seed {seed}, kill {kill}"
        try:
            deadline = time.monotonic() + 120
            while not hold.wait(0.05) and proc.poll() is None and time.monotonic() < deadline:
                pass
            assert hold.reached.is_set(), f"{where}: no upload reached the kill point"
            where += f", upload of {hold.oid} held after {hold.received} bytes"
            # At this moment an upload has started and is not answered: the kill lands mid-upload.
            assert proc.poll() is None, f"{where}: the run had ended ({proc.returncode})"
            assert emu.lfs_uploads_in_progress == 1, where
            proc.send_signal(signal.SIGKILL)
            assert proc.wait() == -signal.SIGKILL, where
            assert not hold.answered.is_set(), f"{where}: answered before the kill"
        finally:
            hold.release()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        deadline = time.monotonic() + 30
        while emu.lfs_uploads_in_progress and time.monotonic() < deadline:
            time.sleep(0.01)
        assert emu.lfs_uploads_in_progress == 0, f"{where}: the held upload never ended"
    run_bids2hf(*args, env=env)
    resumed = remote_tree(emu)
    staging = staging_dir(env)
    assert not list(staging.rglob("*.parquet")) and not list(staging.rglob("*.tmp"))
    # A clean, uninterrupted upload of the same input to another repository.
    clean_env = dict(env, BIDS2HF_CACHE=str(tmp_path / "clean-cache"))
    run_bids2hf(
        "convert",
        str(bids),
        "hf://datasets/org/clean",
        "-q",
        "--max-shard-size",
        "250kB",
        "-j",
        "1",
        env=clean_env,
    )
    clean = {path: sha256(blob) for path, blob in emu.files("org/clean").items()}
    # The cards differ only by the repository name in their code samples.
    assert resumed.pop("README.md") != clean.pop("README.md")
    card = emu.read_file(REPO, "README.md").replace(b"org/ds", b"org/clean")
    assert card == emu.read_file("org/clean", "README.md")
    assert resumed == clean


def test_token_is_never_printed(
    emu: HubEmulator, env: dict[str, str], synthetic: GeneratedDataset
) -> None:
    env = dict(env, HF_TOKEN="hf_secretTOKENvalue123")
    proc = run_bids2hf(
        "convert",
        str(synthetic.root),
        URL,
        "--debug",
        "--max-shard-size",
        "200kB",
        "-j",
        "1",
        env=env,
    )
    assert "secretTOKEN" not in proc.stdout + proc.stderr
    assert "DEBUG" in proc.stderr, "debug logging was on"


@pytest.mark.parametrize("command", ["convert", "push"])
def test_a_remote_changed_after_the_last_commit_fails_verification(
    command: str, emu: HubEmulator, env: dict[str, str], synthetic: GeneratedDataset, tmp_path: Path
) -> None:
    """README "Publishing", Verification: after the last commit the remote file list, sizes and
    LFS sha256 are compared with what was written; any difference exits non-zero with a list.
    Another writer changes the repository right after bids2hf's last commit: one shard replaced
    by other bytes of another size, one by other bytes of the same size, the manifest deleted."""
    changed: list[str] = []

    def tamper(repo_id: str, title: str) -> None:
        if title != FINAL_MESSAGE or changed:
            return
        shards = sorted(p for p in emu.files(repo_id) if p.startswith("data/"))
        resized, same_size = shards[0], shards[1]
        size = len(emu.read_file(repo_id, same_size))
        emu.upload_bytes(repo_id, {resized: b"\0not a shard", same_size: b"\0" * size})
        repo = emu._get(repo_id, "dataset")
        delete = [{"key": "deletedFile", "value": {"path": MANIFEST_PATH}}]
        emu._commit(repo, "main", delete, "someone else", "", None, False)
        changed.extend([resized, same_size])

    emu.after_commit = tamper
    if command == "convert":
        args: tuple[str | Path, ...] = ("convert", synthetic.root, URL, *ALL_SMALL_SHARDS)
    else:
        out = tmp_path / "out"
        run_bids2hf("convert", synthetic.root, out, *ALL_SMALL_SHARDS, env=env)
        args = ("push", out, URL, "-q")
    proc = run_bids2hf(*args, env=env, check=False)
    assert changed, "the last commit was never made"
    line = error_line(proc, URL, exit_code=1)
    assert "the remote differs from what was written" in line
    resized, same_size = changed
    assert f"size {resized}: 12 != " in line
    assert f"sha256 {same_size}" in line
    assert f"missing {MANIFEST_PATH}" in line


@pytest.mark.parametrize("command", ["convert", "push"])
def test_shards_are_committed_in_batches_of_commit_every(
    command: str, emu: HubEmulator, env: dict[str, str], synthetic: GeneratedDataset, tmp_path: Path
) -> None:
    """README "Publishing", Commits: data shards go in batches of ``--commit-every``; the card,
    the manifest (and the shards left over) in the last commit: N shards take N // k + 1
    commits (1,000 shards at the default 100: 11)."""
    every = 3
    many = ("--derivatives", "all", "-q", "--max-shard-size", "60kB", "-j", "1")
    options = ("--commit-every", str(every))
    if command == "convert":
        run_bids2hf("convert", synthetic.root, URL, *many, *options, env=env)
    else:
        out = tmp_path / "out"
        run_bids2hf("convert", synthetic.root, out, *many, env=env)
        run_bids2hf("push", out, URL, "-q", *options, env=env)
    shards = {p for p in emu.files(REPO) if p.startswith("data/")}
    n = len(shards)
    assert n > 2 * every and n % every, f"{n} shards: choose another --max-shard-size"
    history = emu.commits(REPO)[::-1]  # oldest first
    assert history[0]["title"] == "initial commit"  # the emulator's, when the repo is created
    ours = history[1:]
    assert len(ours) == n // every + 1, [c["title"] for c in ours]
    before = set(history[0]["files"])
    for i, c in enumerate(ours):
        added = set(c["files"]) - before
        before = set(c["files"])
        if i < len(ours) - 1:
            assert c["title"] == f"bids2hf: add {every} shard(s)"
            assert len(added) == every and added <= shards, added
        else:
            assert c["title"] == FINAL_MESSAGE
            assert {"README.md", MANIFEST_PATH} <= added
            assert len(added & shards) == n % every


def test_the_default_commit_every_is_100(
    emu: HubEmulator, env: dict[str, str], tmp_path: Path
) -> None:
    """README "Publishing", Commits: by default 100 shards per commit (one row per shard here,
    over a hundred of them: two commits)."""
    spec = SyntheticSpec(n_subjects=8, image_shape=(4, 4, 4), n_volumes=2)
    bids = generate_bids(tmp_path / "bids", spec).root
    tiny = ("--layout", "scan", "--max-shard-size", "1kB", "--derivatives", "all", "-q", "-j", "1")
    run_bids2hf("convert", bids, URL, *tiny, env=env)
    n = sum(p.startswith("data/") for p in emu.files(REPO))
    assert 100 < n < 200 and n % 100
    titles = [c["title"] for c in emu.commits(REPO)[::-1]][1:]  # after the emulator's own
    assert titles == ["bids2hf: add 100 shard(s)", FINAL_MESSAGE]


@pytest.mark.parametrize(
    ("token", "status", "exists"),
    [("read-token", 403, False), ("read-token", 403, True), ("wrong-token", 401, False)],
    ids=["read-only-new-repo", "read-only-existing-repo", "invalid-token"],
)
@pytest.mark.parametrize("command", ["convert", "push"])
def test_a_token_without_write_access_is_one_line(
    command: str,
    token: str,
    status: int,
    exists: bool,
    emu: HubEmulator,
    env: dict[str, str],
    synthetic: GeneratedDataset,
    tmp_path: Path,
) -> None:
    """README "Messages": the Hub refusing the token (403 for a read-only token, 401 for an
    invalid one) ends the run with one line, ``not allowed to create or write this repository``,
    exit 2, no traceback, the token never printed."""
    out = tmp_path / "out"
    if command == "push":
        run_bids2hf("convert", synthetic.root, out, "-q", "-j", "1", env=env)
    if exists:
        emu.create_repo(REPO)
    before = {path: sha256(blob) for path, blob in emu.files(REPO).items()} if exists else None
    emu.tokens = {env["HF_TOKEN"], "read-token"}
    emu.read_only_tokens = {"read-token"}
    env = dict(env, HF_TOKEN=token)
    if command == "convert":
        proc = run_bids2hf("convert", synthetic.root, URL, "-q", "-j", "1", env=env, check=False)
    else:
        proc = run_bids2hf("push", out, URL, "-q", env=env, check=False)
    line = error_line(proc, URL)
    assert f"not allowed to create or write this repository (HTTP {status})" in line
    assert "HF_TOKEN" in line and token not in line
    if exists:
        assert remote_tree(emu) == before and len(emu.commits(REPO)) == 1
    else:
        assert ("dataset", REPO) not in emu._repos


def test_a_refused_commit_is_one_line(
    emu: HubEmulator, env: dict[str, str], synthetic: GeneratedDataset
) -> None:
    """The uploads pass but the commit is refused (403): the same one line, exit 2."""
    refused = emu.inject(r"/commit/", "POST", status=403, times=None)
    proc = run_bids2hf("convert", synthetic.root, URL, "-q", "-j", "1", env=env, check=False)
    assert "not allowed to create or write this repository (HTTP 403)" in error_line(proc, URL)
    assert refused.fired == 1, "a refusal is not retried"
    assert len(emu.commits(REPO)) == 1  # the emulator's own
