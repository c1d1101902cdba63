"""The bad-input policy.

Bad input gets ONE line (``error: ...``) that names the file concerned and says what to do, exit
code 2, no traceback unless ``--debug``, and nothing left at the destination: the output folder
is not created, or is left exactly as it was. ``bids2hf inspect`` exits 2 wherever ``convert``
would refuse.

Runs go through the CLI in-process (click's runner) with ``-j 1``, so that monkeypatched
failures (unreadable files as root, a full disk, a file changing mid-run) reach the code that
handles them; one test runs the real ``bids2hf`` process to see exactly what a user sees.
"""

from __future__ import annotations

import builtins
import errno
import gzip
import hashlib
import io
import json
import os
import re
import shutil
from collections import namedtuple
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import Result

import bids2hf.api as convert_module
from bids2hf.api import scan_and_plan
from bids2hf.bids.options import ScanOptions
from bids2hf.errors import DestinationError, InputError
from bids2hf.model.format import EmbeddedFile, read_footer_index
from bids2hf.plan.options import PlanOptions
from bids2hf.testing.spec import GeneratedDataset
from bids2hf.write.output_folder import OutputFolder
from bids2hf.write.shard import write_shard
from helpers import (
    FAST,
    Cli,
    convert,
    error_line,
    manifest,
    run_bids2hf,
    snapshot,
    tree,
    without_state,
)

T1W = "sub-01/ses-1/anat/sub-01_ses-1_T1w.nii.gz"
T1W_JSON = "sub-01/ses-1/anat/sub-01_ses-1_T1w.json"
REST_1 = "sub-01/ses-1/func/sub-01_ses-1_task-rest_run-1_bold.nii.gz"
REST_2 = "sub-01/ses-1/func/sub-01_ses-1_task-rest_run-2_bold.nii.gz"
EVENTS = "sub-01/ses-1/func/sub-01_ses-1_task-rest_run-1_events.tsv"
STRAY = "sub-01/ses-1/anat/sub-01_ses-1_scout.nii.gz"  # `scout` is no BIDS suffix
SMALL_SHARDS = ("--max-shard-size", "200kB")  # several shards from the small dataset
SMALL_PLAN = PlanOptions(max_shard_bytes=200_000)  # the same through the API


# -- helpers -------------------------------------------------------------------------------
def refused(cli: Cli, bids: Path, out: Path, *options: str, names: tuple[str | Path, ...]) -> str:
    """Run convert, expect a one-line refusal naming ``names``, and the destination untouched."""
    before = snapshot(out)
    line = error_line(cli("convert", bids, out, *FAST, *options), *names)
    assert snapshot(out) == before, "a refused run changed the destination"
    return line


def inspect_refuses(cli: Cli, bids: Path, *options: str, names: tuple[str | Path, ...]) -> None:
    """``inspect`` exits 2 and names ``names`` (in its problem list or its error line)."""
    result = cli("inspect", bids, "-q", *options)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    for name in names:
        assert str(name) in result.output, f"{name} not named by inspect:\n{result.output}"


def converts(cli: Cli, bids: Path, out: Path, *options: str) -> Result:
    result = cli("convert", bids, out, *FAST, *options)
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    return result


def leftover_tmp(out: Path) -> list[str]:
    """Temporary files anywhere under ``out`` (the tmp folder must be empty or gone)."""
    found = [p.relative_to(out).as_posix() for p in out.rglob("*") if p.name.endswith(".tmp")]
    tmp_dir = out / ".bids2hf" / "tmp"
    if tmp_dir.is_dir():
        found += [p.relative_to(out).as_posix() for p in tmp_dir.iterdir()]
    return sorted(set(found))


def footer(shard: Path) -> list[EmbeddedFile]:
    return read_footer_index(pq.ParquetFile(shard).metadata)




# -- the BIDS folder itself ---------------------------------------------------------------------
@pytest.mark.parametrize(
    "case", ["missing", "not-a-folder", "no-description", "bad-description", "no-subjects"]
)
def test_unusable_folder(case: str, bids_copy: Path, tmp_path: Path, cli: Cli) -> None:
    description = bids_copy / "dataset_description.json"
    if case == "missing":
        bids = name = tmp_path / "no-such-folder"
        hint = "give the path"
    elif case == "not-a-folder":
        bids = name = description
        hint = "top folder"
    elif case == "no-description":
        description.unlink()
        bids, name, hint = bids_copy, description, "point at the folder"
    elif case == "bad-description":
        description.write_text('{"Name": "broken", "BIDSVersion": "1.9.0",\n')
        bids, name, hint = bids_copy, description, "fix"
    else:
        for folder in bids_copy.glob("sub-*"):
            shutil.rmtree(folder)
        bids, name, hint = bids_copy, bids_copy.resolve(), "check"
    out = tmp_path / "out"
    line = refused(cli, bids, out, names=(name,))
    assert hint in line
    inspect_refuses(cli, bids, names=(name,))


def test_broken_annex_symlinks(bids_copy: Path, tmp_path: Path, cli: Cli) -> None:
    """git-annex content not fetched: symlinks into a missing .git/annex/objects/... target."""
    annexed = [T1W, "sub-02/ses-1/anat/sub-02_ses-1_T1w.nii.gz", REST_1]
    (bids_copy / ".git" / "annex" / "objects").mkdir(parents=True)
    for rel in annexed:
        path = bids_copy / rel
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        key = f"SHA256E-s{path.stat().st_size}--{digest}.nii.gz"
        path.unlink()
        path.symlink_to("../" * rel.count("/") + f".git/annex/objects/Qx/9v/{key}/{key}")
        assert path.is_symlink() and not path.exists()
    line = refused(cli, bids_copy, tmp_path / "out", names=(T1W,))
    assert "3 broken symlink" in line
    assert "datalad get" in line
    inspect_refuses(cli, bids_copy, names=(T1W, "datalad get"))


def test_symlink_loop(bids_copy: Path, tmp_path: Path, cli: Cli) -> None:
    """A symlink that points at itself is a broken symlink, not a crash."""
    path = bids_copy / T1W
    path.unlink()
    path.symlink_to(path.name)
    line = refused(cli, bids_copy, tmp_path / "out", names=(T1W,))
    assert "1 broken symlink" in line
    inspect_refuses(cli, bids_copy, names=(T1W,))


# -- damaged NIfTI files ------------------------------------------------------------------------
def _truncated(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _not_gzip(path: Path) -> Path:
    path.write_bytes(gzip.decompress(path.read_bytes()))  # a plain NIfTI under a .nii.gz name
    return path


def _bad_sizeof_hdr(path: Path) -> Path:
    raw = bytearray(gzip.decompress(path.read_bytes()))
    raw[0:4] = (1234).to_bytes(4, "little")  # neither 348 (NIfTI-1) nor 540 (NIfTI-2)
    path.unlink()
    nii = path.with_name(path.name.removesuffix(".gz"))
    nii.write_bytes(bytes(raw))
    return nii


def _bad_magic(path: Path) -> Path:
    raw = bytearray(gzip.decompress(path.read_bytes()))
    raw[344:348] = b"xyz\0"  # right header size, wrong magic
    path.unlink()
    nii = path.with_name(path.name.removesuffix(".gz"))
    nii.write_bytes(bytes(raw))
    return nii


def _bad_sidecar(path: Path) -> Path:
    sidecar = path.with_name(path.name.replace(".nii.gz", ".json"))
    sidecar.write_text('{"RepetitionTime": 2.0,,}')
    return sidecar


@pytest.mark.parametrize(
    "damage",
    [_truncated, _not_gzip, _bad_sizeof_hdr, _bad_magic, _bad_sidecar],
    ids=["truncated", "not-gzip", "nii-not-nifti", "nii-bad-magic", "sidecar-not-json"],
)
def test_damaged_file_caught_by_default_check(
    damage: Callable[[Path], Path], bids_copy: Path, tmp_path: Path, cli: Cli
) -> None:
    rel = damage(bids_copy / T1W).relative_to(bids_copy).as_posix()
    line = refused(cli, bids_copy, tmp_path / "out", names=(rel,))
    assert "--exclude" in line or "fix" in line  # says what to do
    inspect_refuses(cli, bids_copy, names=(rel,))


def test_corrupt_crc_caught_by_full_check(bids_copy: Path, tmp_path: Path, cli: Cli) -> None:
    """A flipped bit inside the deflate data with the length trailer intact: only the CRC tells."""
    path = bids_copy / T1W
    raw = gzip.decompress(path.read_bytes())
    # Stored (level 0) deflate blocks, so that the flipped byte changes one voxel and nothing else.
    blob = bytearray(gzip.compress(raw, compresslevel=0, mtime=0))
    blob[len(blob) // 2] ^= 0x5A
    path.write_bytes(bytes(blob))
    assert int.from_bytes(blob[-4:], "little") == len(raw), "ISIZE must stay right"
    with pytest.raises(gzip.BadGzipFile, match="CRC"):
        gzip.decompress(bytes(blob))

    default = cli("convert", bids_copy, tmp_path / "default", *FAST)
    if default.exit_code != 0:  # the cheap check may catch it too; then it must say so properly
        error_line(default, T1W)
    refused(cli, bids_copy, tmp_path / "out", "--check", "full", names=(T1W,))
    inspect_refuses(cli, bids_copy, "--check", "full", names=(T1W,))


# -- names that are not BIDS --------------------------------------------------------------------
@pytest.fixture
def with_stray(bids_copy: Path) -> Path:
    shutil.copyfile(bids_copy / T1W, bids_copy / STRAY)
    return bids_copy


def test_invalid_name_error(with_stray: Path, tmp_path: Path, cli: Cli) -> None:
    line = refused(cli, with_stray, tmp_path / "out", names=(STRAY,))
    assert "--on-invalid" in line
    inspect_refuses(cli, with_stray, names=(STRAY,))


def test_invalid_name_skip(with_stray: Path, tmp_path: Path, cli: Cli) -> None:
    out = tmp_path / "out"
    converts(cli, with_stray, out, "--on-invalid", "skip")
    entry = next(e for e in manifest(out) if e.path == STRAY)
    assert entry.placement == "left_out"
    assert "invalid" in str(entry.reason)
    embedded = {e.path for shard in (out / "data").glob("*.parquet") for e in footer(shard)}
    assert STRAY not in embedded and T1W in embedded


def test_invalid_name_keep(with_stray: Path, tmp_path: Path, cli: Cli) -> None:
    out = tmp_path / "out"
    converts(cli, with_stray, out, "--on-invalid", "keep")
    rows = pq.read_table(out / "data", columns=["subject_id", "session_id", "files"]).to_pylist()
    row = next(r for r in rows if (r["subject_id"], r["session_id"]) == ("sub-01", "ses-1"))
    kept = [f for f in row["files"] if f["path"] == STRAY]
    assert len(kept) == 1 and kept[0]["bytes"] == (with_stray / STRAY).read_bytes()
    assert [e.placement for e in manifest(out) if e.path == STRAY] == ["row"]


def test_file_name_with_a_newline_keeps_the_error_on_one_line(
    bids_copy: Path, tmp_path: Path, cli: Cli
) -> None:
    (bids_copy / "sub-01" / "ses-1" / "anat" / "notes\nold.txt").write_text("x")
    line = refused(cli, bids_copy, tmp_path / "out", names=("sub-01/ses-1/anat/notes",))
    assert "old.txt" in line  # the whole name, with its line break escaped
    inspect_refuses(cli, bids_copy, names=("sub-01/ses-1/anat/notes",))


# -- unreadable files -----------------------------------------------------------------------------
@pytest.fixture
def make_unreadable(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[Path], None]]:
    """Make files or folders unreadable.

    ``chmod 000`` when not root. Root reads through permission bits (as in CI), so there every
    way bids2hf opens, lists or checks a locked path fails with EACCES, as the kernel would for
    another user: ``open``/``io.open``/``os.open`` raise PermissionError, ``os.access(R_OK)`` is
    False, ``os.scandir`` raises. ``stat`` still works, as it does for an unreadable file.
    """
    locked: set[str] = set()
    chmodded: list[tuple[Path, int]] = []
    real_open, real_os_open, real_access, real_scandir = (
        builtins.open, os.open, os.access, os.scandir,
    )  # fmt: skip

    def denied(path: Any) -> bool:
        if isinstance(path, int) or not isinstance(path, (str, bytes, os.PathLike)):
            return False
        return os.path.realpath(os.fsdecode(path)) in locked

    def refuse(path: Any) -> None:
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fsdecode(path))

    def fake_open(file: Any, *args: Any, **kwargs: Any) -> Any:
        if denied(file):
            refuse(file)
        return real_open(file, *args, **kwargs)

    def fake_os_open(path: Any, *args: Any, **kwargs: Any) -> int:
        if denied(path):
            refuse(path)
        return real_os_open(path, *args, **kwargs)

    def fake_access(path: Any, mode: int, *args: Any, **kwargs: Any) -> bool:
        if denied(path) and mode != os.F_OK:
            return False
        return real_access(path, mode, *args, **kwargs)

    def fake_scandir(path: Any = ".") -> Any:
        if denied(path):
            refuse(path)
        return real_scandir(path)

    def lock(path: Path) -> None:
        if os.geteuid() != 0:
            chmodded.append((path, path.stat().st_mode))
            path.chmod(0)
            return
        if not locked:
            monkeypatch.setattr(builtins, "open", fake_open)
            monkeypatch.setattr(io, "open", fake_open)
            monkeypatch.setattr(os, "open", fake_os_open)
            monkeypatch.setattr(os, "access", fake_access)
            monkeypatch.setattr(os, "scandir", fake_scandir)
        locked.add(os.path.realpath(path))

    yield lock
    for path, mode in chmodded:
        path.chmod(mode)


@pytest.mark.parametrize(
    "rel",
    [T1W, T1W_JSON, EVENTS, "participants.tsv", "dataset_description.json", "sub-02/ses-1/anat"],
)
def test_unreadable(
    rel: str, bids_copy: Path, tmp_path: Path, cli: Cli, make_unreadable: Callable[[Path], None]
) -> None:
    make_unreadable(bids_copy / rel)
    line = refused(cli, bids_copy, tmp_path / "out", names=(rel,))
    assert "permission" in line.lower()
    inspect_refuses(cli, bids_copy, names=(rel,))


def test_unreadable_after_planning(
    bids_copy: Path,
    tmp_path: Path,
    cli: Cli,
    monkeypatch: pytest.MonkeyPatch,
    make_unreadable: Callable[[Path], None],
) -> None:
    """Permissions that change between planning and writing: one line naming the file."""
    real = convert_module.write_shards

    def lock_then_write(*args: Any, **kwargs: Any) -> Any:
        make_unreadable(bids_copy / REST_2)
        return real(*args, **kwargs)

    monkeypatch.setattr(convert_module, "write_shards", lock_then_write)
    out = tmp_path / "out"
    line = error_line(cli("convert", bids_copy, out, *FAST), REST_2)
    assert "permission" in line.lower()
    assert leftover_tmp(out) == []


# -- files too large for one Parquet value: stored beside the shards (tests/test_beside.py) -----
def test_max_row_size_out_of_range(bids_copy: Path, tmp_path: Path, cli: Cli) -> None:
    """Over 2 GiB - 1 MiB a cell could not be written: one line naming the option and its range."""
    line = refused(
        cli, bids_copy, tmp_path / "out", "--max-row-size", "3GiB", names=("--max-row-size",)
    )
    assert "2047MiB" in line


# -- participants.tsv ---------------------------------------------------------------------------
def _edit_participants(bids: Path, edit: Callable[[list[list[str]]], list[list[str]]]) -> None:
    path = bids / "participants.tsv"
    rows = [line.split("\t") for line in path.read_text().splitlines()]
    path.write_text("\n".join("\t".join(r) for r in edit(rows)) + "\n")


@pytest.mark.parametrize(
    ("edit", "said"),
    [
        pytest.param(
            lambda rows: [r for r in rows if r[0] != "sub-04"], "sub-04", id="folder-not-listed"
        ),
        pytest.param(lambda rows: [*rows, rows[1]], "twice", id="duplicate-id"),
        pytest.param(
            lambda rows: [r if r[0] != "sub-02" else [r[0], r[1], "X", r[3]] for r in rows],
            "Levels",
            id="not-a-level",
        ),
    ],
)
def test_participants_table_errors(
    edit: Callable[[list[list[str]]], list[list[str]]],
    said: str,
    bids_copy: Path,
    tmp_path: Path,
    cli: Cli,
) -> None:
    _edit_participants(bids_copy, edit)
    refused(cli, bids_copy, tmp_path / "out", names=("participants.tsv", said))
    inspect_refuses(cli, bids_copy, names=("participants.tsv",))


def test_participant_without_folder_is_a_warning(
    synthetic: GeneratedDataset, tmp_path: Path, cli: Cli
) -> None:
    assert synthetic.missing_participants == ["sub-05"]
    result = converts(cli, synthetic.root, tmp_path / "out")
    warning = next(line for line in result.output.splitlines() if "sub-05" in line)
    assert "warning" in warning and "participants.tsv" in warning


# -- the destination --------------------------------------------------------------------------
def test_destination_not_empty(bids_copy: Path, tmp_path: Path, cli: Cli) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    line = refused(cli, bids_copy, out, names=(out,))
    assert "--overwrite" in line
    # --overwrite only replaces bids2hf outputs.
    line = refused(cli, bids_copy, out, "--overwrite", names=(out,))
    assert "not a bids2hf output" in line


def test_destination_is_a_file(bids_copy: Path, tmp_path: Path, cli: Cli) -> None:
    out = tmp_path / "out.parquet"
    out.write_text("not a folder")
    refused(cli, bids_copy, out, names=(out,))
    refused(cli, bids_copy, out, "--overwrite", names=(out,))


def test_destination_holds_another_plan(bids_copy: Path, tmp_path: Path, cli: Cli) -> None:
    out = tmp_path / "out"
    converts(cli, bids_copy, out, *SMALL_SHARDS)
    # The same command again resumes (nothing to do) without --overwrite.
    assert "already complete" in converts(cli, bids_copy, out, *SMALL_SHARDS).output
    # The source changes: a subject and a top-level file go away.
    shutil.rmtree(bids_copy / "sub-04")
    (bids_copy / "CHANGES").unlink()
    line = refused(cli, bids_copy, out, *SMALL_SHARDS, names=(out,))
    assert "different plan" in line and "--overwrite" in line


def test_overwrite_replaces_another_plan(bids_copy: Path, tmp_path: Path, cli: Cli) -> None:
    out, fresh = tmp_path / "out", tmp_path / "fresh"
    converts(cli, bids_copy, out, *SMALL_SHARDS)
    shutil.rmtree(bids_copy / "sub-04")
    (bids_copy / "CHANGES").unlink()
    converts(cli, bids_copy, out, *SMALL_SHARDS, "--overwrite")
    converts(cli, bids_copy, fresh, *SMALL_SHARDS)
    assert without_state(tree(out)) == without_state(tree(fresh))


# -- a full disk --------------------------------------------------------------------------------
DiskUsage = namedtuple("DiskUsage", "total used free")


@pytest.fixture
def disk_fills_in_second_shard(monkeypatch: pytest.MonkeyPatch) -> Callable[[], None]:
    """The disk fills up as the second shard file gets its first rows.

    pyarrow's file sink raises ``OSError(errno.ENOSPC, ...)`` for a full disk; the patched
    ``ParquetWriter.write_table`` raises the same. Returns a function that frees the space.
    """
    real = pq.ParquetWriter.write_table
    shard_writers: list[int] = []  # ids of writers that got rows (schema probes write none)

    def write_table(self: pq.ParquetWriter, table: Any, *args: Any, **kwargs: Any) -> None:
        if table.num_rows and id(self) not in shard_writers:
            shard_writers.append(id(self))
        if len(shard_writers) >= 2:
            raise OSError(
                errno.ENOSPC,
                "Error writing bytes to file. Detail: [errno 28] No space left on device",
            )
        real(self, table, *args, **kwargs)

    monkeypatch.setattr(pq.ParquetWriter, "write_table", write_table)
    return lambda: monkeypatch.setattr(pq.ParquetWriter, "write_table", real)


def test_disk_full_while_writing(
    bids_copy: Path, tmp_path: Path, disk_fills_in_second_shard: Callable[[], None]
) -> None:
    out = tmp_path / "out"
    with pytest.raises(DestinationError) as info:
        convert(bids_copy, out, scan_options=ScanOptions(), plan_options=SMALL_PLAN)
    message = str(info.value)
    assert info.value.exit_code == 2
    assert "\n" not in message
    assert str(out) in message
    assert "disk full" in message and re.search(r"\d.* needed", message), message
    assert leftover_tmp(out) == []
    shards = sorted((out / "data").glob("*.parquet"))
    assert len(shards) == 1, "the first shard was complete and is kept"
    assert pq.read_metadata(shards[0]).num_rows > 0
    state = OutputFolder(out).load_state()
    assert state is not None and not state.complete
    assert set(state.shards) == {f"data/{shards[0].name}"}
    assert not (out / "README.md").exists(), "the card is written last"
    # Space freed: the same command finishes and keeps the complete shard.
    disk_fills_in_second_shard()
    report = convert(bids_copy, out, scan_options=ScanOptions(), plan_options=SMALL_PLAN)
    assert report.reused == [f"data/{shards[0].name}"]
    assert leftover_tmp(out) == []


def test_disk_full_message_gives_a_useful_amount(
    bids_copy: Path, tmp_path: Path, disk_fills_in_second_shard: Callable[[], None]
) -> None:
    with pytest.raises(DestinationError) as info:
        convert(bids_copy, tmp_path / "out", scan_options=ScanOptions(), plan_options=SMALL_PLAN)
    amount = re.search(r"([0-9.]+) ?([kMGT]?B)\b", str(info.value))
    if amount is None or float(amount.group(1)) == 0:
        pytest.fail(f"no useful amount in {str(info.value)!r}", pytrace=False)


def test_disk_full_via_cli(
    bids_copy: Path, tmp_path: Path, cli: Cli, disk_fills_in_second_shard: Callable[[], None]
) -> None:
    out = tmp_path / "out"
    line = error_line(cli("convert", bids_copy, out, *FAST, *SMALL_SHARDS), out)
    assert "disk full" in line and "re-run" in line
    assert leftover_tmp(out) == []


def test_write_shard_cleans_up_when_fsync_fails(
    bids_copy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ENOSPC can surface only at fsync (delayed allocation, NFS): no temporary file, no open fd."""
    inventory, plan = scan_and_plan(bids_copy)
    shard = plan.shards[0]
    out = OutputFolder(tmp_path / "out")
    out.prepare()
    tmp = out.tmp_path(shard.path)

    def no_space(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(OSError) as info:
        write_shard(
            shard, plan.columns, plan.arrow_schema, inventory.source, out.root / shard.path, tmp
        )
    assert info.value.errno == errno.ENOSPC
    assert not tmp.exists() and not (out.root / shard.path).exists()
    if Path("/proc/self/fd").is_dir():
        open_files = {os.path.realpath(p) for p in Path("/proc/self/fd").iterdir() if p.exists()}
        assert str(tmp) not in open_files, "the temporary file was left open"


def test_not_enough_space_refused_up_front(
    bids_copy: Path, tmp_path: Path, cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shutil, "disk_usage", lambda path: DiskUsage(10**12, 10**12 - 1000, 1000))
    out = tmp_path / "out"
    line = refused(cli, bids_copy, out, names=(out,))
    assert "needed" in line and "free" in line
    assert not re.search(r"\b0\.00 GB needed", line), "the amount must not round to zero"


def test_not_enough_space_leaves_existing_output_untouched(
    bids_copy: Path, tmp_path: Path, cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    converts(cli, bids_copy, out, *SMALL_SHARDS)
    shutil.rmtree(bids_copy / "sub-04")  # its shards become stale
    monkeypatch.setattr(shutil, "disk_usage", lambda path: DiskUsage(10**12, 10**12 - 1000, 1000))
    before = snapshot(out)
    error_line(cli("convert", bids_copy, out, *FAST, *SMALL_SHARDS, "--overwrite"), out)
    if snapshot(out) != before:
        pytest.fail("the refused run changed the existing output", pytrace=False)


# -- tracebacks -----------------------------------------------------------------------------------
def test_traceback_only_with_debug(bids_copy: Path, tmp_path: Path) -> None:
    """What a user's terminal shows, from the real process (a bad NIfTI header: nibabel's
    logger must not add its own lines)."""
    rel = _bad_magic(bids_copy / T1W).relative_to(bids_copy).as_posix()
    out = tmp_path / "out"
    error_line(run_bids2hf("convert", bids_copy, out, *FAST, check=False), rel)
    debug = run_bids2hf("convert", bids_copy, out, *FAST, "--debug", check=False)
    assert debug.returncode != 0
    assert "Traceback" in debug.stderr and "InputError" in debug.stderr
    assert rel in debug.stderr
    assert not out.exists()


# -- privacy --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "place",
    [
        lambda name: {"PatientName": name},
        lambda name: {"DicomHeader": {"PatientName": {"Alphabetic": name}}},
        lambda name: {"Sources": [{"Series": 3}, {"PatientName": name}]},
    ],
    ids=["top-level", "nested", "in-a-list"],
)
def test_identifying_sidecar_field(
    place: Callable[[str], dict[str, Any]], bids_copy: Path, tmp_path: Path, cli: Cli
) -> None:
    name = "Doe^Jane Quentin"
    sidecar = bids_copy / T1W_JSON
    sidecar.write_text(json.dumps({**json.loads(sidecar.read_text()), **place(name)}))
    result = cli("inspect", bids_copy, "-q")
    assert result.exit_code == 0, result.output
    warning = next(
        line for line in result.output.splitlines() if "warning:" in line and "PatientName" in line
    )
    assert T1W_JSON in warning
    assert "Jane" not in result.output and "Doe^" not in result.output
    line = refused(cli, bids_copy, tmp_path / "out", "--strict-privacy", names=(T1W_JSON,))
    assert "PatientName" in line and "--strict-privacy" in line and "Jane" not in line
    # Without --strict-privacy it converts, warning without printing the value.
    result = converts(cli, bids_copy, tmp_path / "out")
    assert "PatientName" in result.output and "Jane" not in result.output


def test_free_text_in_a_nifti_header(bids_copy: Path, tmp_path: Path, cli: Cli) -> None:
    """README "Privacy lint": free text in NIfTI header fields is warned about, naming the file
    and the field, its value masked; --strict-privacy refuses; a converter's signature in
    ``descrip`` is no warning."""
    import nibabel as nib

    path = bids_copy / T1W
    image = nib.load(path)
    header = image.header.copy()
    header["descrip"] = b"Scan of Quentin Doe-Smith 2021-03-04"
    header["aux_file"] = b"Zyxwvut"
    nib.save(nib.Nifti1Image(np.asanyarray(image.dataobj), image.affine, header), path)
    result = cli("inspect", bids_copy, "-q")
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.output.splitlines() if "warning:" in line and T1W in line]
    for field, masked in (("descrip", "S…(36 chars)"), ("aux_file", "Z…(7 chars)")):
        assert any(
            f"NIfTI header field {field} holds free text (value {masked})" in w for w in warnings
        ), (field, warnings)
    assert "Quentin" not in result.output and "Doe-Smith" not in result.output
    assert "Zyxwvut" not in result.output
    line = refused(cli, bids_copy, tmp_path / "out", "--strict-privacy", names=(T1W,))
    assert "descrip" in line and "Quentin" not in line
    result = converts(cli, bids_copy, tmp_path / "out")
    assert "descrip" in result.output and "Quentin" not in result.output
    # What converters write there is not reported.
    header["descrip"] = b"TE=2.9;Time=101010.000;phase=1"
    header["aux_file"] = b""
    nib.save(nib.Nifti1Image(np.asanyarray(image.dataobj), image.affine, header), path)
    result = cli("inspect", bids_copy, "-q")
    assert result.exit_code == 0 and "NIfTI header field" not in result.output, result.output


# -- the source changes during the run --------------------------------------------------------------
def _touch(path: Path) -> None:
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


def _append(path: Path) -> None:
    with open(path, "a") as f:
        f.write("5.0\t1.0\tlate\n")


@pytest.mark.parametrize(
    ("rel", "change"),
    [(T1W, _touch), (EVENTS, _append), (REST_2, Path.unlink)],
    ids=["mtime", "size", "removed"],
)
def test_source_changed_during_run(
    rel: str,
    change: Callable[[Path], None],
    bids_copy: Path,
    tmp_path: Path,
    cli: Cli,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = convert_module.write_shards

    def change_then_write(*args: Any, **kwargs: Any) -> Any:
        change(bids_copy / rel)  # after scan_and_plan, before any file is read for writing
        return real(*args, **kwargs)

    monkeypatch.setattr(convert_module, "write_shards", change_then_write)
    out = tmp_path / "out"
    line = error_line(cli("convert", bids_copy, out, *FAST), rel)
    assert leftover_tmp(out) == []
    assert not list((out / "data").glob("*.parquet")), "no partial shard"
    # Following the advice converts the new version.
    monkeypatch.setattr(convert_module, "write_shards", real)
    again = ["--overwrite"] if "--overwrite" in line else []
    assert "re-run" in line
    converts(cli, bids_copy, out, *again)
    assert next((e.size for e in manifest(out) if e.path == rel), None) == (
        (bids_copy / rel).stat().st_size if (bids_copy / rel).exists() else None
    )


def test_errors_are_one_line_even_with_line_breaks_inside() -> None:
    error = InputError("sub-01/a\nb.nii.gz: not a valid BIDS file name\r\n(rename it)")
    assert "\n" not in str(error) and "\r" not in str(error)
    assert "sub-01/a\\nb.nii.gz" in str(error)
