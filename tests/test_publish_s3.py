"""Publishing to S3 through fsspec/s3fs, against moto's S3 server on loopback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bids2hf.testing.spec import GeneratedDataset
from helpers import tree

pytest.importorskip("s3fs")
pytest.importorskip("moto.server")

BUCKET = "neuro"  # created by the s3_env fixture (conftest.py)


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "bids2hf", *args], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _objects(env: dict[str, str]) -> dict[str, int]:
    import boto3

    client = boto3.client("s3", endpoint_url=env["FSSPEC_S3_ENDPOINT_URL"], aws_access_key_id="testing",
                          aws_secret_access_key="testing", region_name="us-east-1")
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
    return {o["Key"]: o["Size"] for page in pages for o in page.get("Contents", [])}


def test_s3_round_trip_resume_and_update(s3_env: dict[str, str], synthetic: GeneratedDataset, tmp_path: Path) -> None:
    url = f"s3://{BUCKET}/datasets/synthetic"
    args = ("--derivatives", "all", "-q", "--max-shard-size", "150kB", "-j", "1")
    run(s3_env, "convert", str(synthetic.root), url, *args)
    objects = _objects(s3_env)
    assert any(k.startswith("datasets/synthetic/data/train-") for k in objects)
    assert "datasets/synthetic/README.md" in objects
    assert "datasets/synthetic/bids2hf/checksums.json" in objects
    assert not [k for k in objects if k.endswith(".tmp")]
    # Back from S3, byte for byte; verify agrees.
    run(s3_env, "export", url, str(tmp_path / "back"), "-q")
    assert tree(tmp_path / "back") == tree(synthetic.root)
    assert "identical" in run(s3_env, "verify", str(synthetic.root), url, "-q").stdout
    # A re-run uploads nothing.
    proc = run(s3_env, "convert", str(synthetic.root), url, *args[:-2])
    assert "uploaded 0 file(s)" in proc.stdout
    assert _objects(s3_env) == objects
