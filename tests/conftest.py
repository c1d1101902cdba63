"""Shared fixtures: generated BIDS datasets, CLI runner, and helpers to read outputs back."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from bids2hf.cli import main
from bids2hf.synthetic import GeneratedDataset, SyntheticSpec, generate_bids
from hub_emulator import HubEmulator

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
if not SHARED.is_dir():
    SHARED = Path(os.environ.get("BIDS2HF_SHARED", "/nonexistent"))
BIDS_EXAMPLES = SHARED / "bids-examples"


@pytest.fixture(autouse=True)
def _isolated_hf_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    # `datasets` writes caches under HF_HOME; keep tests off the user's cache.
    cache = tmp_path_factory.getbasetemp() / "hf-cache"
    monkeypatch.setenv("HF_DATASETS_CACHE", str(cache / "datasets"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


@pytest.fixture(scope="session")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> GeneratedDataset:
    """A small generated dataset (read-only: copy it before changing it)."""
    return generate_bids(tmp_path_factory.mktemp("synthetic") / "bids", SyntheticSpec(n_subjects=4))


@pytest.fixture
def bids_copy(synthetic: GeneratedDataset, tmp_path: Path) -> Path:
    """A private, writable copy of the synthetic dataset."""
    dest = tmp_path / "bids"
    shutil.copytree(synthetic.root, dest)
    return dest


@pytest.fixture
def cli() -> Callable[..., Result]:
    runner = CliRunner()

    def run(*args: str) -> Result:
        return runner.invoke(main, [str(a) for a in args], catch_exceptions=False)

    return run


@pytest.fixture
def emu(tmp_path: Path) -> Iterator[HubEmulator]:
    """A Hub emulator on loopback; the test fails if the emulator itself hit a bug."""
    emulator = HubEmulator(tmp_path / "hub").start()
    try:
        yield emulator
    finally:
        emulator.stop()
    assert emulator.errors == [], emulator.errors[0] if emulator.errors else ""
