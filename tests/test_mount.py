"""``bids2hf mount``: the BIDS tree as a read-only FUSE folder, checked with diff, pybids and the
official BIDS validator; clean unmount on SIGTERM/SIGINT; one-line errors without FUSE.

The mount runs through the real entry point in a subprocess. Tests that mount skip where FUSE
cannot work here (no /dev/fuse, no mfusepy or libfuse); CI installs both (.ci/run).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bids2hf.model.format import MANIFEST_PATH
from bids2hf.testing.spec import GeneratedDataset
from helpers import error_line, manifest_records, run_bids2hf

MOUNT = [sys.executable, "-m", "bids2hf", "mount"]
T1W = "sub-01/ses-1/anat/sub-01_ses-1_T1w.nii.gz"


def _fuse_usable() -> str | None:
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing"
    try:
        import mfusepy  # noqa: F401
    except (ImportError, OSError) as exc:
        return f"mfusepy/libfuse unavailable: {exc}"
    return None


class Mount:
    """A running ``bids2hf mount`` process and its mount point."""

    def __init__(self, source: Path, point: Path, env: dict[str, str] | None = None) -> None:
        point.mkdir(parents=True, exist_ok=True)
        self.point = point
        self.proc = subprocess.Popen(
            [*MOUNT, str(source), str(point)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 60
        while not os.path.ismount(point):
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"mount exited {self.proc.returncode}: {self.proc.stderr.read() if self.proc.stderr else ''}"
                )
            if time.monotonic() > deadline:
                self.proc.kill()
                raise AssertionError("not mounted after 60 s")
            time.sleep(0.05)

    def stop(self, sig: int = signal.SIGTERM) -> tuple[int, str]:
        self.proc.send_signal(sig)
        try:
            _, err = self.proc.communicate(timeout=30)
        finally:
            if os.path.ismount(self.point):  # never leave a mount behind, even when failing
                subprocess.run(["fusermount3", "-u", "-z", str(self.point)], check=False)
        return self.proc.returncode, err


@pytest.fixture(scope="module")
def mounted(converted_ranges: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    if _fuse_usable() is not None:
        pytest.skip(str(_fuse_usable()))
    m = Mount(converted_ranges, tmp_path_factory.mktemp("mnt") / "bids")
    try:
        yield m.point
    finally:
        code, err = m.stop()
    assert code == 0, err
    assert not os.path.ismount(m.point)


def test_diff_shows_no_difference(mounted: Path, synthetic: GeneratedDataset) -> None:
    proc = subprocess.run(
        ["diff", "-r", str(synthetic.root), str(mounted)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    with pytest.raises(OSError) as info:
        (mounted / "new.txt").write_text("x")
    assert info.value.errno in (errno.EROFS, errno.EACCES)


def test_pybids_sees_the_same_dataset(mounted: Path, synthetic: GeneratedDataset) -> None:
    bids = pytest.importorskip("bids")

    def summary(root: Path) -> tuple[Any, ...]:
        layout = bids.BIDSLayout(str(root))
        # Entities may hold absolute paths (``scans``: the scans.tsv that applies).
        files = sorted(
            (
                os.path.relpath(f.path, root),
                json.dumps(f.get_entities(), sort_keys=True, default=str).replace(
                    str(root), "ROOT"
                ),
            )
            for f in layout.get()
        )
        bold = layout.get(suffix="bold", extension=".nii.gz")[0]
        return (
            files,
            layout.get_subjects(),
            layout.get_sessions(),
            layout.get_tasks(),
            os.path.relpath(bold.path, root),
            layout.get_metadata(bold.path),
        )

    original, seen = summary(synthetic.root), summary(mounted)
    assert original[0], "pybids found no file"
    assert seen == original


def _validator() -> str | None:
    found = Path(sys.executable).parent / "bids-validator-deno"
    return str(found) if found.exists() else shutil.which("bids-validator-deno")


def test_the_bids_validator_gives_the_same_result(
    mounted: Path, synthetic: GeneratedDataset, tmp_path: Path
) -> None:
    validator = _validator()
    if validator is None:
        pytest.skip("bids-validator-deno is not installed")
    env = {**os.environ, "DENO_DIR": str(tmp_path / "deno"), "NO_COLOR": "1"}

    def validate(root: Path) -> dict[str, Any]:
        proc = subprocess.run(
            [validator, "--format", "json", str(root)],
            capture_output=True,
            text=True,
            timeout=300,
            env=env,
        )
        assert proc.returncode in (0, 16), proc.stderr[-2000:]  # 16: the dataset has errors
        result = json.loads(proc.stdout)
        issues = sorted(json.dumps(i, sort_keys=True) for i in result["issues"]["issues"])
        summary = {
            k: sorted(map(str, v)) if isinstance(v, list) else v
            for k, v in result["summary"].items()
        }
        return {"issues": issues, "summary": summary, "code": proc.returncode}

    original = validate(synthetic.root)
    assert original["summary"]["totalFiles"] > 100
    assert validate(mounted) == original


def test_a_damaged_file_reads_as_an_io_error(
    converted_ranges: Path, synthetic: GeneratedDataset, tmp_path: Path
) -> None:
    if _fuse_usable() is not None:
        pytest.skip(str(_fuse_usable()))
    damaged = tmp_path / "damaged"
    shutil.copytree(converted_ranges, damaged)
    entries = manifest_records(damaged)
    for e in entries:
        if e["path"] == T1W:
            e["offset"] += 1
    (damaged / MANIFEST_PATH).write_text("".join(json.dumps(e) + "\n" for e in entries))
    m = Mount(damaged, tmp_path / "mnt")
    try:
        with pytest.raises(OSError) as info:
            (m.point / T1W).read_bytes()
        assert info.value.errno == errno.EIO
        assert (m.point / "participants.tsv").read_bytes() == (
            synthetic.root / "participants.tsv"
        ).read_bytes()
    finally:
        code, err = m.stop()
    assert code == 0
    assert "do not match its sha256" in err


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_unmounts_cleanly(converted_ranges: Path, tmp_path: Path, sig: int) -> None:
    if _fuse_usable() is not None:
        pytest.skip(str(_fuse_usable()))
    m = Mount(converted_ranges, tmp_path / "mnt")
    # A file held open does not keep the mount alive (the view is read-only, nothing to flush).
    fd = os.open(m.point / T1W, os.O_RDONLY)
    assert os.read(fd, 2) == b"\x1f\x8b"
    code, err = m.stop(sig)
    try:
        os.close(fd)
    except OSError as exc:  # the mount is gone: closing has no daemon to tell
        assert exc.errno == errno.ENOTCONN
    assert code == 0, err
    assert not os.path.ismount(m.point) and list(m.point.iterdir()) == []
    assert "Traceback" not in err


def test_without_fuse_the_error_is_one_line(converted_ranges: Path, tmp_path: Path) -> None:
    (tmp_path / "mnt").mkdir()
    env = {**os.environ, "BIDS2HF_FUSE_DEVICE": str(tmp_path / "no-such-device")}
    proc = run_bids2hf("mount", converted_ranges, tmp_path / "mnt", env=env, check=False)
    assert "FUSE is unavailable" in error_line(proc)
    # Not a folder / not empty: one line too, nothing mounted.
    (tmp_path / "mnt" / "x").write_text("x")
    proc = run_bids2hf("mount", converted_ranges, tmp_path / "mnt", check=False)
    assert "not empty" in error_line(proc)


def test_a_missing_binding_names_the_extra(
    converted_ranges: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bids2hf.readback.mount import FuseUnavailableError, mount

    device = tmp_path / "fuse"
    device.write_text("")
    monkeypatch.setenv("BIDS2HF_FUSE_DEVICE", str(device))
    monkeypatch.setitem(sys.modules, "mfusepy", None)  # import fails as if not installed
    (tmp_path / "mnt").mkdir()
    with pytest.raises(FuseUnavailableError, match=r"bids2hf\[mount\]"):
        mount(str(converted_ranges), tmp_path / "mnt")
