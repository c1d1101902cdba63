#!/usr/bin/env python
"""Converting from object storage vs from a local disk (issue 15).

Run from the repository root::

    .venv/bin/python benchmarks/bench_source.py --size 512MB --limits 0,100MB \
        --out benchmarks/results/SOURCE-S3.md

One synthetic BIDS dataset is generated, uploaded to moto's S3 server on loopback, and converted
by ``bids2hf convert -q -j 1`` (a child process, the CLI) into a local folder:

* ``local``   -- from the local folder;
* ``s3``      -- from ``s3://bench/ds`` with the server's bandwidth unlimited (moto itself, a
  Python server sharing the 2 cores, is then the limit);
* ``s3@RATE`` -- the same with every response body throttled to RATE bytes/s in total (one
  token bucket for all connections: a link of that speed).

Measured: wall time and throughput (dataset bytes / time, including the ~2 s the CLI takes to
start), the time to merely download every object once (boto3, 8 at a time: what the emulated link
and moto allow, the floor for any conversion), peak RSS of the bids2hf process tree
(psutil, polled every 50 ms), peak disk used besides the output (the output's own size is
reported apart: converting from S3 writes no copy of the source), and the S3 requests (listing,
ranged GETs, whole GETs, HEADs). The output of every run is checked to be byte-identical to the
local run's.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil

from bids2hf.testing.spec import SyntheticSpec
from bids2hf.testing.synthetic import generate_bids
from bids2hf.units import human_bytes, parse_size


class Throttled:
    """moto's S3 app behind a WSGI layer: a bandwidth limit on response bodies, request counts."""

    def __init__(self) -> None:
        from moto.moto_server.werkzeug_app import (
            DomainDispatcherApplication,
            MotoRequestHandler,
            create_backend_app,
        )
        from werkzeug.serving import make_server

        self.rate = 0.0  # bytes/s; 0: unlimited
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._next = time.monotonic()
        app = DomainDispatcherApplication(create_backend_app)

        def throttled(environ: dict[str, Any], start_response: Any) -> Any:
            method, query = environ["REQUEST_METHOD"], environ.get("QUERY_STRING", "")
            kind = (
                "list"
                if "list-type" in query
                else "ranged GET"
                if method == "GET" and environ.get("HTTP_RANGE")
                else method
            )
            with self._lock:
                self.counts[kind] += 1
            body = app(environ, start_response)
            return body if not self.rate else self._paced(body)

        self._server = make_server(
            "127.0.0.1", 0, throttled, threaded=True, request_handler=MotoRequestHandler
        )
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def _paced(self, body: Any) -> Any:
        for data in body:
            for at in range(0, len(data), 64 * 1024):
                piece = data[at : at + 64 * 1024]
                with self._lock:  # one link shared by every connection
                    start = max(self._next, time.monotonic())
                    self._next = start + len(piece) / self.rate
                time.sleep(max(0.0, start - time.monotonic()))
                yield piece

    def stop(self) -> None:
        self._server.shutdown()


def _upload(endpoint: str, root: Path) -> None:
    import boto3

    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id="bench",
        aws_secret_access_key="bench",
        region_name="us-east-1",
    )
    client.create_bucket(Bucket="bench")
    files = [p for p in sorted(root.rglob("*")) if p.is_file()]
    with ThreadPoolExecutor(8) as pool:
        list(
            pool.map(
                lambda p: client.upload_file(
                    str(p), "bench", f"ds/{p.relative_to(root).as_posix()}"
                ),
                files,
            )
        )


def _download_all(endpoint: str, root: Path) -> float:
    """Seconds to read every object once, 8 at a time, and nothing else: what the link allows."""
    import boto3

    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id="bench",
        aws_secret_access_key="bench",
        region_name="us-east-1",
    )
    keys = [f"ds/{p.relative_to(root).as_posix()}" for p in sorted(root.rglob("*")) if p.is_file()]

    def read(key: str) -> int:
        body = client.get_object(Bucket="bench", Key=key)["Body"]
        total = 0
        while chunk := body.read(1 << 20):
            total += len(chunk)
        return total

    started = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(read, keys))
    return time.monotonic() - started


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def _digest(out: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(out.rglob("*")):
        rel = p.relative_to(out).as_posix()
        if p.is_file() and not rel.startswith(".bids2hf/"):
            h.update(rel.encode() + b"\0" + hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


def _run(args: list[str], env: dict[str, str], out: Path, scratch: Path) -> dict[str, Any]:
    """Run the CLI; poll RSS of the tree and disk use (output and anything else in scratch)."""
    shutil.rmtree(out, ignore_errors=True)
    started = time.monotonic()
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    peak_rss = peak_other = 0
    parent = psutil.Process(proc.pid)
    while proc.poll() is None:
        try:
            tree = [parent, *parent.children(recursive=True)]
            peak_rss = max(peak_rss, sum(p.memory_info().rss for p in tree))
        except psutil.Error:
            pass
        peak_other = max(peak_other, _size(scratch) - _size(out))
        time.sleep(0.05)
    seconds = time.monotonic() - started
    _, stderr = proc.communicate()
    if proc.returncode:
        raise SystemExit(f"{' '.join(args)} failed:\n{stderr.decode()[-2000:]}")
    return {
        "seconds": seconds,
        "peak_rss": peak_rss,
        "peak_disk_besides_output": peak_other,
        "output_bytes": _size(out),
        "digest": _digest(out),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="512MB", help="dataset size (default 512MB)")
    parser.add_argument(
        "--limits", default="0,100MB", help="bandwidth limits per second, 0: none (default 0,100MB)"
    )
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--out", help="write Markdown here (and JSON beside it)")
    opts = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="bench-source-"))
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
    server = Throttled()
    try:
        spec = SyntheticSpec(n_subjects=8, target_bytes=parse_size(opts.size))
        data = generate_bids(scratch / "bids", spec)
        _upload(server.endpoint, data.root)
        work = scratch / "work"
        work.mkdir()
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "FSSPEC_"))},
            "AWS_ENDPOINT_URL": server.endpoint,
            "AWS_ACCESS_KEY_ID": "bench",
            "AWS_SECRET_ACCESS_KEY": "bench",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
            "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1",
        }
        cli = [sys.executable, "-m", "bids2hf", "convert"]
        common = ["--derivatives", "all", "-q", "-j", "1"]
        cases: list[tuple[str, str, float]] = [("local", str(data.root), 0.0)]
        for limit in opts.limits.split(","):
            rate = float(parse_size(limit)) if limit.strip() != "0" else 0.0
            cases.append(("s3" if not rate else f"s3@{human_bytes(rate)}/s", "s3://bench/ds", rate))
        results: list[dict[str, Any]] = []
        for name, source, rate in cases:
            for _ in range(opts.repeats):
                server.rate, server.counts = rate, Counter()
                r = _run([*cli, source, str(work / "out"), *common], env, work / "out", work)
                r |= {"case": name, "requests": dict(server.counts)}
                r["throughput"] = data.total_bytes / r["seconds"]
                if source.startswith("s3://"):
                    r["download_only"] = _download_all(server.endpoint, data.root)
                results.append(r)
                print(
                    f"{name:>14}  {r['seconds']:6.1f} s  {human_bytes(r['throughput'])}/s  "
                    f"rss {human_bytes(r['peak_rss'])}  other disk "
                    f"{human_bytes(r['peak_disk_besides_output'])}  {dict(server.counts)}",
                    flush=True,
                )
        reference = results[0]["digest"]
        for r in results:
            r["identical_to_local"] = r["digest"] == reference
        report = {
            "dataset_bytes": data.total_bytes,
            "files": len(data.files),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
            "results": results,
        }
        text = _markdown(report)
        print(text)
        if opts.out:
            Path(opts.out).write_text(text)
            Path(opts.out).with_suffix(".json").write_text(json.dumps(report, indent=1))
    finally:
        server.stop()
        shutil.rmtree(scratch, ignore_errors=True)


def _markdown(report: dict[str, Any]) -> str:
    lines = [
        "# Converting from S3 vs from a local disk",
        "",
        f"Dataset: synthetic, {human_bytes(report['dataset_bytes'])} in {report['files']} files; "
        f"`bids2hf convert -q -j 1 --derivatives all` into a local folder; {report['machine']}; "
        "S3 = moto's server on loopback (benchmarks/bench_source.py).",
        "",
        "| source | time | throughput | download only | peak RSS | disk besides the output | "
        "output | requests | same bytes as local |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        requests = ", ".join(f"{k} {v}" for k, v in sorted(r["requests"].items()))
        alone = f"{r['download_only']:.1f} s" if "download_only" in r else "-"
        lines.append(
            f"| {r['case']} | {r['seconds']:.1f} s | {human_bytes(r['throughput'])}/s | {alone} | "
            f"{human_bytes(r['peak_rss'])} | {human_bytes(r['peak_disk_besides_output'])} | "
            f"{human_bytes(r['output_bytes'])} | {requests or '-'} | "
            f"{'yes' if r['identical_to_local'] else 'NO'} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
