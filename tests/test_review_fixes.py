"""Fixes of the issue-9 review (M1-M6, L1-L8): each test fails on the code before its fix."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import Result

from helpers import tree

Cli = Callable[..., Result]
FAST = ("-q", "-j", "1")


def one_error_line(result: Result) -> str:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


# -- M1: a complete local output given as --staging ----------------------------------------------
def test_local_output_as_staging_is_refused(bids_copy: Path, tmp_path: Path, cli: Cli) -> None:
    out = tmp_path / "out"
    assert cli("convert", bids_copy, out, *FAST).exit_code == 0
    before = tree(out)
    url = f"memory://m1-{tmp_path.name}/ds"
    line = one_error_line(cli("convert", bids_copy, url, *FAST, "--staging", out))
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
    line = one_error_line(cli("convert", bids_copy, out, *FAST))
    assert ".bids2hf" in line and "permission" in line.lower()
