"""Updating a published dataset, over and over (issue 9).

Each test publishes a generated BIDS dataset, then changes the source at random (an image's voxels
re-saved with nibabel so that its size changes, a dataset-level file edited, a subject added, a
subject removed) and runs the same `convert` command again, ``CYCLES`` times, through the real CLI
in a subprocess, with 1 and 2 workers in turn. After every run:

- the destination holds exactly what a clean conversion of the current source holds (paths and
  sha256 of every file); the reference is a fresh local conversion, and at the end a clean
  upload of the last source to a fresh repository / prefix must agree with it;
- the run made exactly one commit (Hub: the emulator's commit log and counter) and said so once;
  local and S3 destinations: the run reported success once and left no temporary file;
- the staging folder (hf://, s3://) holds only the resume state: no shard, no temporary file, no
  folder left by a writer that was still running when the run cleaned up.

The old code failed here because the thread hashing shards wrote state.json while the main
thread wrote it too and removed the temporary folder: a crash (FileNotFoundError renaming
`.bids2hf/tmp/.bids2hf__state.json.<pid>.tmp`), or a `.bids2hf/tmp/` made again after the run
had removed it. Every problem of every cycle is collected and reported together. The random
changes are seeded: the seed is in the failure message, and BIDS2HF_STRESS_SEED /
BIDS2HF_STRESS_CYCLES change the seed and the number of cycles.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bids2hf.api import convert
from bids2hf.plan.options import PlanOptions
from bids2hf.testing.spec import SyntheticSpec
from bids2hf.testing.synthetic import generate_bids
from helpers import hub_env, run_bids2hf, tree
from hub_emulator import HubEmulator

CYCLES = int(os.environ.get("BIDS2HF_STRESS_CYCLES", "20"))
SEED = int(os.environ.get("BIDS2HF_STRESS_SEED", "9"))
# About 40 MB in shards of at most 12 MB (the size): 6 shards of 4-9 MB at first, and an
# update rewrites one or two of them. Hashing the last one then takes about as long as the end of
# the run (dataset-level files, manifest, card, state): when the old code's threads collided.
SPEC = SyntheticSpec(n_subjects=4, sessions=("1", "2"), derivatives=False, target_bytes=40_000_000)
MAX_SHARD = 12_000_000
SHARD_ARGS = ("--max-shard-size", str(MAX_SHARD), "-q")
REPO = "me/inc"
STATE_FILES = {".bids2hf/state.json", ".bids2hf/state.jsonl"}  # resume state (older, newer name)
CHECKSUMS = "bids2hf/checksums.json"
S3_BUCKET = "neuro"  # created by the s3_env fixture (conftest.py)


# -- the changing source ---------------------------------------------------------------------
class Source:
    """A BIDS folder changed at random between runs; ``log`` says what was done, for failures."""

    def __init__(self, root: Path, rng: random.Random) -> None:
        self.root = root
        self.rng = rng
        self.next_label = 50  # participants.tsv may list labels without folders: stay clear
        self.log: list[str] = []

    def subjects(self) -> list[str]:
        return sorted(p.name for p in self.root.glob("sub-*") if p.is_dir())

    def change(self) -> str:
        kinds = ["image", "image", "image", "dataset file", "add subject"]
        if len(self.subjects()) > 2:
            kinds.append("remove subject")
        kind = self.rng.choice(kinds)
        if kind == "image":
            what = self._change_image()
        elif kind == "dataset file":
            what = self._change_dataset_file()
        elif kind == "add subject":
            what = self._add_subject()
        else:
            what = self._remove_subject()
        self.log.append(what)
        return what

    def _resave(self, path: Path) -> None:
        """New random voxels, one axis 1-2 voxels longer or shorter: the file's size changes."""
        img = nib.load(path)
        assert isinstance(img, nib.Nifti1Image), path
        shape = list(img.shape)
        axis = self.rng.randrange(len(shape))
        shape[axis] = max(1, shape[axis] + self.rng.choice([-2, -1, 1, 2]))
        noise = np.random.default_rng(self.rng.getrandbits(64))
        data = noise.integers(-32768, 32767, size=shape, dtype=np.int16)
        header = img.header.copy()
        header.set_data_dtype(np.int16)
        nib.save(nib.Nifti1Image(data, img.affine, header), path)

    def _change_image(self) -> str:
        images = sorted(self.root.glob("sub-*/**/*.nii.gz"))
        path = self.rng.choice(images)
        before = path.stat().st_size
        self._resave(path)
        rel = path.relative_to(self.root).as_posix()
        return f"re-saved {rel} ({before} -> {path.stat().st_size} bytes)"

    def _change_dataset_file(self) -> str:
        path = self.root / self.rng.choice(["README", "CHANGES"])
        with path.open("a") as f:
            f.write(f"\nedit {self.rng.getrandbits(32):08x}\n")
        return f"edited {path.name}"

    def _participants(self) -> tuple[str, list[str]]:
        header, *rows = (self.root / "participants.tsv").read_text().splitlines()
        return header, rows

    def _write_participants(self, header: str, rows: list[str]) -> None:
        (self.root / "participants.tsv").write_text("\n".join([header, *rows]) + "\n")

    def _add_subject(self) -> str:
        model = self.rng.choice(self.subjects())
        label = f"sub-{self.next_label}"
        self.next_label += 1
        dest = self.root / label
        shutil.copytree(self.root / model, dest)
        for path in sorted(dest.rglob("*")):
            if not path.is_file():
                continue
            if path.suffix in (".json", ".tsv", ".bval", ".bvec"):
                path.write_text(path.read_text().replace(model, label))
            if model in path.name:
                path.rename(path.with_name(path.name.replace(model, label)))
        # Its own bytes for one image at least, so that no two subjects are identical.
        self._resave(self.rng.choice(sorted(dest.rglob("*.nii.gz"))))
        header, rows = self._participants()
        row = next(r for r in rows if r.split("\t")[0] == model)
        self._write_participants(header, [*rows, row.replace(model, label, 1)])
        return f"added {label} (copy of {model})"

    def _remove_subject(self) -> str:
        label = self.rng.choice(self.subjects())
        shutil.rmtree(self.root / label)
        header, rows = self._participants()
        self._write_participants(header, [r for r in rows if r.split("\t")[0] != label])
        return f"removed {label}"


# -- the loop --------------------------------------------------------------------------------
def stress(
    source: Source,
    update: Callable[[int, list[str]], subprocess.CompletedProcess[str]],
    check: Callable[[int, str], list[str]],
) -> list[str]:
    """Run ``update(cycle, worker_args)`` CYCLES times, changing the source before every run but
    the first, and ``check(cycle, stdout)`` after each successful one. Returns the problems."""
    problems: list[str] = []
    for cycle in range(CYCLES):
        what = source.change() if cycle else "first upload"
        proc = update(cycle, ["-j", str(1 + cycle % 2)])
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
            problems.append(f"cycle {cycle} ({what}): exit {proc.returncode}: {last}")
            continue
        problems += [f"cycle {cycle} ({what}): {p}" for p in check(cycle, proc.stdout)]
    return problems


def report(problems: list[str], source: Source) -> str:
    return (
        f"seed {SEED} (BIDS2HF_STRESS_SEED), {CYCLES} cycles, {len(problems)} problem(s):\n  "
        + "\n  ".join(problems)
        + "\nchanges: "
        + "; ".join(f"{i + 1}: {c}" for i, c in enumerate(source.log))
    )


def reference(source: Path, dest: Path, repo_hint: str | None) -> dict[str, str]:
    """What a clean conversion of the current source holds (path -> sha256, no resume state)."""
    shutil.rmtree(dest, ignore_errors=True)
    convert(
        source,
        dest,
        plan_options=PlanOptions(max_shard_bytes=MAX_SHARD),
        workers=1,
        progress=False,
        repo_hint=repo_hint,
    )
    return published(dest)


def published(folder: Path) -> dict[str, str]:
    """A local output without its resume state."""
    return {k: v for k, v in tree(folder).items() if not k.startswith(".bids2hf/")}


def diff(got: dict[str, str], want: dict[str, str]) -> str:
    missing = sorted(set(want) - set(got))
    extra = sorted(set(got) - set(want))
    changed = sorted(p for p in set(got) & set(want) if got[p] != want[p])
    return f"missing {missing[:5]}, unexpected {extra[:5]}, different {changed[:5]}"


def renamed_card(files: dict[str, str], card: bytes, old: str, new: str) -> dict[str, str]:
    """``files`` with the card's sha256 as if the card named ``new`` instead of ``old``."""
    renamed = card.replace(old.encode(), new.encode())
    return {**files, "README.md": hashlib.sha256(renamed).hexdigest()}


def leftovers(root: Path) -> list[str]:
    """Every file and folder under ``root`` but the resume state (``.bids2hf/state.json``, or
    the journal ``state.jsonl``) and its folder; a missing state counts as a leftover too."""
    found = sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))
    states = [p for p in found if p in STATE_FILES]
    # The record of the card bids2hf published (so that a card edited on the Hub is recognised
    # as someone else's) is part of the resume state too.
    kept = {*STATE_FILES, ".bids2hf", ".bids2hf/published_cards.json"}
    # [issue 13] and the thumbnails of the files the previews show, by sha256, so that a
    # resumed run needs no second read; only the current ones (the folder must not grow)
    thumbs = [p for p in found if re.fullmatch(r"\.bids2hf/thumbs/[0-9a-f]{64}\.(png|none)", p)]
    kept |= {".bids2hf/thumbs", *thumbs} if len(thumbs) <= 14 else set()
    left = [p for p in found if p not in kept]
    return left if len(states) == 1 else [*left, f"(resume state: {states})"]


def commits_reported(stdout: str) -> list[str]:
    """The run's summary says it verified the remote after exactly one commit."""
    found = re.findall(r"(\d+) commit\(s\)", stdout)
    if found != ["1"] or stdout.count("verified") != 1:
        return [f"reported {found} commit(s): {stdout[-300:]!r}"]
    return []


@pytest.fixture
def source(tmp_path: Path) -> Source:
    return Source(generate_bids(tmp_path / "src", SPEC).root, random.Random(SEED))


@pytest.fixture
def work(tmp_path: Path) -> Iterator[Path]:
    """A scratch folder for staging, outputs and references: on tmpfs where there is one. With
    fsync free the end of a run is as quick as on a fast disk, and it then overlaps the hashing
    of the last shard — where the old code's threads collided. (And the suite runs faster.)"""
    shm = Path("/dev/shm")
    if not shm.is_dir():
        yield tmp_path
        return
    work = Path(tempfile.mkdtemp(prefix="bids2hf-stress-", dir=shm))
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


# -- Hub ------------------------------------------------------------------------------------
def hub_files(emu: HubEmulator, repo: str) -> dict[str, str]:
    """The repository's files and the sha256 of their stored bytes (blob or LFS object)."""
    return {
        path: hashlib.sha256(blob.read_bytes()).hexdigest()
        for path, blob in emu.files(repo).items()
        if path != ".gitattributes"
    }


def _convert(
    source: Source, dest: str, env: dict[str, str], *extra: str
) -> subprocess.CompletedProcess[str]:
    """``bids2hf convert`` of the stress source into ``dest`` with the stress test's shard sizes."""
    return run_bids2hf("convert", str(source.root), dest, *SHARD_ARGS, *extra, env=env, check=False)


def test_hub_update_cycles(emu: HubEmulator, source: Source, work: Path, tmp_path: Path) -> None:
    env = hub_env(emu, tmp_path)
    url, staging = f"hf://datasets/{REPO}", work / "ST"
    log_before = 1  # creating the repository commits once

    def update(cycle: int, jobs: list[str]) -> subprocess.CompletedProcess[str]:
        nonlocal log_before
        if cycle:
            log_before = len(emu.commits(REPO))
        emu.reset_stats()
        return _convert(source, url, env, *jobs, "--staging", str(staging))

    def check(cycle: int, stdout: str) -> list[str]:
        problems = commits_reported(stdout)
        made = len(emu.commits(REPO)) - log_before
        if made != 1 or emu.stats["commits"] != made + (0 if cycle else 1):
            problems.append(f"{made} commit(s) on main, {emu.stats['commits']} in all")
        want, got = reference(source.root, work / "ref", REPO), hub_files(emu, REPO)
        if got != want:
            problems.append(f"remote != clean conversion: {diff(got, want)}")
        if left := leftovers(staging):
            problems.append(f"staging keeps more than the resume state: {left[:10]}")
        return problems

    problems = stress(source, update, check)
    assert not problems, report(problems, source)
    # The reference is what a clean upload holds: upload the last source to a fresh repository.
    clean_env = dict(env, BIDS2HF_CACHE=str(work / "clean-cache"))
    proc = _convert(source, "hf://datasets/me/clean", clean_env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    card = emu.read_file("me/clean", "README.md")
    assert renamed_card(hub_files(emu, "me/clean"), card, "me/clean", REPO) == hub_files(emu, REPO)


# -- local folder -----------------------------------------------------------------------------
def test_local_update_cycles(source: Source, work: Path) -> None:
    dest = work / "out"

    def update(cycle: int, jobs: list[str]) -> subprocess.CompletedProcess[str]:
        # A folder holding the output of another plan is replaced only with --overwrite.
        again = ["--overwrite"] if cycle else []
        return _convert(source, str(dest), dict(os.environ), *jobs, *again)

    def check(cycle: int, stdout: str) -> list[str]:
        problems = []
        if stdout.count(f"wrote {dest}") != 1:
            problems.append(f"reported: {stdout[-300:]!r}")
        want, got = reference(source.root, work / "ref", None), published(dest)
        if got != want:
            problems.append(f"output != clean conversion: {diff(got, want)}")
        # Temporary files live in .bids2hf/; the rest of the output was compared above.
        if left := [p for p in leftovers(dest) if p.startswith(".bids2hf/")]:
            problems.append(f"leftovers: {left[:10]}")
        return problems

    problems = stress(source, update, check)
    assert not problems, report(problems, source)
    proc = _convert(source, str(work / "clean"), dict(os.environ))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert published(work / "clean") == published(dest)


# -- S3 (moto) --------------------------------------------------------------------------------
class Bucket:
    """Objects under a prefix and the sha256 of their bytes (fetched again only when the ETag
    changed, which S3 derives from the content)."""

    def __init__(self, env: dict[str, str]) -> None:
        import boto3

        self.client = boto3.client(
            "s3",
            endpoint_url=env["FSSPEC_S3_ENDPOINT_URL"],
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        )
        self._sums: dict[tuple[str, str], str] = {}

    def files(self, prefix: str) -> dict[str, str]:
        out = {}
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=S3_BUCKET, Prefix=prefix + "/"
        )
        for page in pages:
            for obj in page.get("Contents", []):
                key = (obj["Key"], obj["ETag"])
                if key not in self._sums:
                    self._sums[key] = hashlib.sha256(self.read(obj["Key"])).hexdigest()
                out[obj["Key"][len(prefix) + 1 :]] = self._sums[key]
        return out

    def read(self, key: str) -> bytes:
        return bytes(self.client.get_object(Bucket=S3_BUCKET, Key=key)["Body"].read())


def test_s3_update_cycles(s3_env: dict[str, str], source: Source, work: Path) -> None:
    bucket = Bucket(s3_env)
    url, staging = f"s3://{S3_BUCKET}/inc", work / "ST"

    def update(cycle: int, jobs: list[str]) -> subprocess.CompletedProcess[str]:
        return _convert(source, url, s3_env, *jobs, "--staging", str(staging))

    def check(cycle: int, stdout: str) -> list[str]:
        problems = commits_reported(stdout)
        want, got = reference(source.root, work / "ref", url), bucket.files("inc")
        # bids2hf/checksums.json records the sha256 of every other object (resume, verify).
        sums = json.loads(bucket.read(f"inc/{CHECKSUMS}"))
        if sums != want:
            problems.append(f"{CHECKSUMS} != clean conversion: {diff(sums, want)}")
        got.pop(CHECKSUMS, None)
        if got != want:
            problems.append(f"objects != clean conversion: {diff(got, want)}")
        if left := leftovers(staging):
            problems.append(f"staging keeps more than the resume state: {left[:10]}")
        return problems

    problems = stress(source, update, check)
    assert not problems, report(problems, source)
    clean_env = dict(s3_env, BIDS2HF_CACHE=str(work / "clean-cache"))
    clean_url = f"s3://{S3_BUCKET}/clean"
    proc = _convert(source, clean_url, clean_env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    clean = {k: v for k, v in bucket.files("clean").items() if k != CHECKSUMS}
    want = renamed_card(clean, bucket.read("clean/README.md"), clean_url, url)
    assert want == {k: v for k, v in bucket.files("inc").items() if k != CHECKSUMS}
