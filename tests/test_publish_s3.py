"""Publishing to S3 through fsspec/s3fs, against moto's S3 server on loopback."""

from __future__ import annotations

from pathlib import Path

import pytest

from bids2hf.testing.spec import GeneratedDataset
from helpers import run_bids2hf, tree

pytest.importorskip("s3fs")
pytest.importorskip("moto.server")

BUCKET = "neuro"  # created by the s3_env fixture (conftest.py)


def _objects(env: dict[str, str]) -> dict[str, int]:
    import boto3

    client = boto3.client(
        "s3",
        endpoint_url=env["FSSPEC_S3_ENDPOINT_URL"],
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
    return {o["Key"]: o["Size"] for page in pages for o in page.get("Contents", [])}


def test_s3_round_trip_resume_and_update(
    s3_env: dict[str, str], synthetic: GeneratedDataset, tmp_path: Path
) -> None:
    url = f"s3://{BUCKET}/datasets/synthetic"
    args = ("--derivatives", "all", "-q", "--max-shard-size", "150kB", "-j", "1")
    run_bids2hf("convert", str(synthetic.root), url, *args, env=s3_env)
    objects = _objects(s3_env)
    assert any(k.startswith("datasets/synthetic/data/train-") for k in objects)
    assert "datasets/synthetic/README.md" in objects
    assert "datasets/synthetic/bids2hf/checksums.json" in objects
    assert not [k for k in objects if k.endswith(".tmp")]
    # Back from S3, byte for byte; verify agrees.
    run_bids2hf("export", url, str(tmp_path / "back"), "-q", env=s3_env)
    assert tree(tmp_path / "back") == tree(synthetic.root)
    assert "identical" in run_bids2hf("verify", str(synthetic.root), url, "-q", env=s3_env).stdout
    # A re-run uploads nothing.
    proc = run_bids2hf("convert", str(synthetic.root), url, *args[:-2], env=s3_env)
    assert "uploaded 0 file(s)" in proc.stdout
    assert _objects(s3_env) == objects
