"""Shared fixtures: generated BIDS datasets, CLI runner, and helpers to read outputs back."""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

import helpers
from bids2hf.bids.options import ScanOptions
from bids2hf.cli.commands import main
from bids2hf.plan.options import PlanOptions
from bids2hf.testing.spec import GeneratedDataset, SyntheticSpec
from bids2hf.testing.synthetic import generate_bids
from golden import BIDS_EXAMPLES, FILL_PLACEHOLDERS, SHARED, example_names, fill_examples
from hub_emulator import HubEmulator

__all__ = ["BIDS_EXAMPLES", "SHARED"]

S3_BUCKET = "neuro"  # the bucket the `s3_env` fixture creates


@pytest.fixture(autouse=True)
def _isolated_hf_cache(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each test gets a `datasets` cache of its own: off the user's cache, and no test reads
    what another prepared (the cache key of a local folder is its name and its files' sizes,
    so two outputs named alike could share an entry)."""
    import datasets.config

    cache = tmp_path_factory.mktemp("hf-cache")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(cache / "datasets"))  # for subprocesses
    # In this process the environment is too late: `datasets` read it once, when imported.
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache / "datasets")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


@pytest.fixture(scope="session")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> GeneratedDataset:
    """A small generated dataset (read-only: copy it before changing it)."""
    return generate_bids(tmp_path_factory.mktemp("synthetic") / "bids", SyntheticSpec(n_subjects=4))


@pytest.fixture
def hub_env(emu: HubEmulator, tmp_path: Path) -> dict[str, str]:
    """Environment for a bids2hf subprocess that publishes to the emulator."""
    return helpers.hub_env(emu, tmp_path)


@pytest.fixture(scope="session")
def filled_examples(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """All bids-examples copied once, every empty NIfTI placeholder turned into a tiny valid
    image (read-only: shared by the round-trip and golden-output tests)."""
    if not example_names():
        pytest.skip(f"{BIDS_EXAMPLES} not found")
    if not FILL_PLACEHOLDERS.is_file():
        pytest.skip(f"{FILL_PLACEHOLDERS} not found")
    return fill_examples(tmp_path_factory.mktemp("bids-examples-filled"))


@pytest.fixture(scope="session")
def converted(synthetic: GeneratedDataset, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthetic dataset converted through the API with every derivative over several
    shards (read-only: copy it before changing it)."""
    out = tmp_path_factory.mktemp("converted") / "hf"
    helpers.convert(synthetic.root, out, plan_options=PlanOptions(max_shard_bytes=200_000))
    assert len(list((out / "data").glob("*.parquet"))) > 1
    return out


@pytest.fixture(scope="session")
def converted_raw(synthetic: GeneratedDataset, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthetic dataset converted with default options: derivatives are left out
    (read-only)."""
    out = tmp_path_factory.mktemp("converted_raw") / "hf"
    helpers.convert(synthetic.root, out, scan_options=ScanOptions())
    return out


@pytest.fixture(scope="session")
def converted_ranges(synthetic: GeneratedDataset, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthetic dataset converted by the real command into shards of several rows and
    row groups (lists of runs share pages; the writer records offsets), for the byte-range
    readers (read-only)."""
    out = tmp_path_factory.mktemp("converted_ranges") / "out"
    return helpers.convert_cli(
        synthetic.root, out, "--max-shard-size", "400kB", "--row-group-size", "60kB"
    )


@pytest.fixture
def bids_copy(synthetic: GeneratedDataset, tmp_path: Path) -> Path:
    """A private, writable copy of the synthetic dataset."""
    dest = tmp_path / "bids"
    shutil.copytree(synthetic.root, dest)
    return dest


@pytest.fixture
def cli() -> helpers.Cli:
    """Runs ``bids2hf ARGS`` in this process (exceptions propagate); the click result."""
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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def s3_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    """moto's S3 server on loopback with bucket ``S3_BUCKET``; the environment for bids2hf
    subprocesses to reach it through fsspec/s3fs (skips without s3fs or moto's server)."""
    pytest.importorskip("s3fs")
    moto_server = pytest.importorskip("moto.server")
    import boto3

    port = _free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "FSSPEC_S3_ENDPOINT_URL": endpoint,  # fsspec passes FSSPEC_<PROTOCOL>_<KWARG> to s3fs
        "BIDS2HF_CACHE": str(tmp_path / "cache"),
    }
    boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    ).create_bucket(Bucket=S3_BUCKET)
    try:
        yield env
    finally:
        server.stop()
