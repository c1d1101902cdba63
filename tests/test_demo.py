"""``bids2hf demo DIR``: writes only into a new or empty folder and never deletes anything."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from helpers import Cli, error_line, snapshot


def test_demo_keeps_a_users_bids_folder(cli: Cli, tmp_path: Path) -> None:
    """Seen: ``bids2hf demo DIR`` deleted DIR/bids, and the user's file in it."""
    root = tmp_path / "work"
    (root / "bids").mkdir(parents=True)
    (root / "bids" / "mine.txt").write_text("the user's own file\n")
    before = snapshot(root)
    result = cli("demo", root, "--quiet")
    assert result.exit_code == 2, result.output
    line = error_line(result)
    assert str(root) in line and "not empty" in line
    assert snapshot(root) == before


def test_demo_refuses_any_non_empty_folder(cli: Cli, tmp_path: Path) -> None:
    root = tmp_path / "work"
    (root / "hf").mkdir(parents=True)
    (root / "hf" / "notes.md").write_text("mine\n")
    (root / "other.txt").write_text("mine too\n")
    before = snapshot(root)
    result = cli("demo", root, "--quiet")
    assert result.exit_code == 2, result.output
    assert "not empty" in error_line(result)
    assert snapshot(root) == before

    a_file = tmp_path / "a-file"
    a_file.write_text("x\n")
    result = cli("demo", a_file, "--quiet")
    assert result.exit_code == 2, result.output
    assert "not a folder" in error_line(result)
    assert a_file.read_text() == "x\n"


def test_demo_twice_keeps_the_first_run(tmp_path: Path) -> None:
    """Through the real command: an empty folder is fine; running again refuses, deletes nothing."""
    root = tmp_path / "demo"
    root.mkdir()
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "bids2hf", "demo", str(root), "--quiet", "--subjects", "1"]
    first = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert first.returncode == 0, first.stdout + first.stderr
    assert (root / "bids" / "dataset_description.json").is_file()
    assert (root / "hf" / "bids2hf" / "manifest.jsonl").is_file()
    before = snapshot(root)
    again = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert again.returncode == 2, again.stdout + again.stderr
    assert again.stderr.count("\n") == 1 and "Traceback" not in again.stderr
    assert "not empty" in again.stderr
    assert snapshot(root) == before
