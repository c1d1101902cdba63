"""Converting straight from object storage (issue 15): BIDS_DIR as an ``s3://`` URL.

One moto S3 server on loopback for the module, behind a recorder that logs every request (method,
path, query, Range header) and can slow requests down, so that the tests can count requests and
kill a run in the middle. The AWS configuration comes from the environment, as for a user:
``AWS_ENDPOINT_URL`` points botocore/s3fs at the server, credentials come from
``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` (or are absent: anonymous access).
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result

from bids2hf.api import convert
from bids2hf.bids.options import ScanOptions
from bids2hf.bids.scan import scan
from bids2hf.bids.source import open_source
from bids2hf.bids.source_fsspec import FsspecSource
from bids2hf.model.source import CHUNK
from bids2hf.testing.spec import GeneratedDataset, SyntheticSpec
from bids2hf.testing.synthetic import generate_bids
from conftest import BIDS_EXAMPLES
from helpers import BIDS2HF, hub_env, run_bids2hf, sha256, tree, without_state
from hub_emulator import HubEmulator

pytest.importorskip("s3fs")
pytest.importorskip("moto.server")

OPTIONS = ("--derivatives", "all", "--max-shard-size", "150kB", "--row-group-size", "40kB")
#: bids-examples datasets uploaded as they are (0-byte placeholders, MEG folders, derivatives,
#: templates), converted with the options of test_bids_examples' CLI test.
EXAMPLES = ("asl001", "atlas-AAL", "dwi_deriv", "qmri_mp2rage", "ds000246")


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: str
    range: str | None


class Recorder:
    """moto's S3 app behind a WSGI layer that records requests and can delay each one."""

    def __init__(self) -> None:
        from moto.moto_server.werkzeug_app import (
            DomainDispatcherApplication,
            MotoRequestHandler,
            create_backend_app,
        )
        from werkzeug.serving import make_server

        self.requests: list[Request] = []
        self.delay = 0.0
        self.track = False  # count requests in flight (peak) while set
        self.peak = 0
        self._in_flight = 0
        self._lock = threading.Lock()
        app = DomainDispatcherApplication(create_backend_app)

        def recording(environ: dict[str, Any], start_response: Any) -> Any:
            with self._lock:
                self.requests.append(
                    Request(
                        environ["REQUEST_METHOD"],
                        environ.get("PATH_INFO", ""),
                        environ.get("QUERY_STRING", ""),
                        environ.get("HTTP_RANGE"),
                    )
                )
                self._in_flight += 1
                if self.track:
                    self.peak = max(self.peak, self._in_flight)
            try:
                if self.delay:
                    time.sleep(self.delay)
                return app(environ, start_response)
            finally:
                with self._lock:
                    self._in_flight -= 1

        self._server = make_server(
            "127.0.0.1", 0, recording, threaded=True, request_handler=MotoRequestHandler
        )
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._thread.join()

    def take(self) -> list[Request]:
        with self._lock:
            taken, self.requests = self.requests, []
        return taken


@pytest.fixture(scope="module")
def server() -> Iterator[Recorder]:
    # The server runs in this process: its request log must not reach the CLI's stderr.
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    recorder = Recorder()
    try:
        yield recorder
    finally:
        recorder.stop()


def _client(server: Recorder) -> Any:
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=server.endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )


def _bucket(server: Recorder, name: str, public: bool = False) -> str:
    client = _client(server)
    client.create_bucket(Bucket=name)
    if public:
        statement = {
            "Effect": "Allow",
            "Principal": "*",
            "Action": ["s3:GetObject", "s3:ListBucket"],
            "Resource": [f"arn:aws:s3:::{name}", f"arn:aws:s3:::{name}/*"],
        }
        policy = {"Version": "2012-10-17", "Statement": [statement]}
        client.put_bucket_policy(Bucket=name, Policy=json.dumps(policy))
    return name


def _upload(server: Recorder, root: Path, bucket: str, prefix: str) -> str:
    """Every file under ``root`` to ``s3://bucket/prefix/``; returns the URL."""
    client = _client(server)
    files = [p for p in sorted(root.rglob("*")) if p.is_file()]
    with ThreadPoolExecutor(8) as pool:
        list(
            pool.map(
                lambda p: client.put_object(
                    Bucket=bucket,
                    Key=f"{prefix}/{p.relative_to(root).as_posix()}",
                    Body=p.read_bytes(),
                ),
                files,
            )
        )
    return f"s3://{bucket}/{prefix}"


def _aws_env(server: Recorder, tmp: Path, credentials: bool) -> dict[str, str]:
    """The AWS part of the environment: the endpoint, and credentials or none at all."""
    env = {
        "AWS_ENDPOINT_URL": server.endpoint,
        "AWS_DEFAULT_REGION": "us-east-1",
        # No network beyond loopback: botocore must not ask the EC2 metadata service, and no
        # configuration of the machine's user may leak in.
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": str(tmp / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp / "no-aws-credentials"),
    }
    if credentials:
        env |= {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    return env


_CLEARED = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "FSSPEC_S3_ENDPOINT_URL",  # the endpoint must come from AWS_ENDPOINT_URL alone
)


def _subprocess_env(server: Recorder, tmp: Path, credentials: bool = True) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _CLEARED}
    return env | _aws_env(server, tmp, credentials)


@pytest.fixture
def aws(
    server: Recorder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Callable[[bool], None]:
    """Set this process's AWS environment: ``aws(True)`` with credentials, ``aws(False)`` without."""

    def use(credentials: bool) -> None:
        for name in _CLEARED:
            monkeypatch.delenv(name, raising=False)
        for name, value in _aws_env(server, tmp_path, credentials).items():
            monkeypatch.setenv(name, value)

    use(True)
    return use


def _local(source: Path, out: Path, **kw: Any) -> dict[str, str]:
    convert(source, out, workers=1, progress=False, **kw)
    return without_state(tree(out))


_ALL = ScanOptions(derivatives=("all",))
_SMALL = {"max_shard_bytes": 150_000, "row_group_bytes": 40_000}


def _plan_options() -> Any:
    from bids2hf.plan.options import PlanOptions

    return PlanOptions(**_SMALL)


# -- same bytes as from a local folder --------------------------------------------------------------
def test_convert_from_s3_gives_the_same_output_as_from_the_local_folder(
    server: Recorder, synthetic: GeneratedDataset, tmp_path: Path
) -> None:
    """Through the CLI, two spawned writers (the source is pickled into them), credentials from
    the environment, the endpoint from AWS_ENDPOINT_URL; inspect and verify accept the URL."""
    url = _upload(server, synthetic.root, _bucket(server, "private-src"), "datasets/synthetic")
    env = _subprocess_env(server, tmp_path)
    local = _local(
        synthetic.root, tmp_path / "local", scan_options=_ALL, plan_options=_plan_options()
    )
    run_bids2hf("convert", url, str(tmp_path / "remote"), *OPTIONS, "-q", "-j", "2", env=env)
    assert without_state(tree(tmp_path / "remote")) == local
    assert sum(k.startswith("data/") for k in local) > 3, "several shards"
    state = (tmp_path / "remote" / ".bids2hf" / "state.jsonl").read_text()
    assert json.dumps(url) in state, "the run records its source URL"
    # inspect: the same report, but for the source it names.
    shown = run_bids2hf("inspect", url, *OPTIONS, env=env).stdout
    here = run_bids2hf("inspect", str(synthetic.root), *OPTIONS, env=env).stdout
    assert shown.replace(url, "ROOT") == here.replace(str(synthetic.root.resolve()), "ROOT")
    assert "identical" in run_bids2hf("verify", url, str(tmp_path / "local"), "-q", env=env).stdout


def test_bids_examples_from_s3_match_the_local_conversion(
    server: Recorder, aws: Callable[[bool], None], tmp_path: Path
) -> None:
    if not BIDS_EXAMPLES.is_dir():
        pytest.skip(f"{BIDS_EXAMPLES} not found")
    bucket = _bucket(server, "examples")
    options = ScanOptions(check="none", on_invalid="keep", derivatives=("all",))
    for name in EXAMPLES:
        url = _upload(server, BIDS_EXAMPLES / name, bucket, name)
        local = _local(BIDS_EXAMPLES / name, tmp_path / f"{name}-local", scan_options=options)
        convert(url, tmp_path / name, scan_options=options, workers=1, progress=False)
        assert without_state(tree(tmp_path / name)) == local, name


# -- requests ------------------------------------------------------------------------------------------
def test_scan_lists_once_and_checks_headers_with_range_requests(
    server: Recorder, aws: Callable[[bool], None], tmp_path: Path
) -> None:
    """One listing request per 1,000 keys, no request per folder or per file to stat it, and
    NIfTI headers read with range requests of the header and the gzip trailer only."""
    spec = SyntheticSpec(n_subjects=2, sessions=("1",), image_shape=(48, 48, 32))
    data = generate_bids(tmp_path / "bids", spec)
    extra = data.root / "stimuli"
    extra.mkdir()
    for i in range(1100):  # dataset-level files: listed, never read by the scan
        (extra / f"s{i:04d}.txt").write_text(str(i))
    url = _upload(server, data.root, _bucket(server, "counted"), "ds")
    keys = sum(1 for p in data.root.rglob("*") if p.is_file())
    server.take()
    inventory = scan(url, _ALL)
    requests = server.take()
    assert not inventory.errors, inventory.errors
    listings = [r for r in requests if r.method == "GET" and r.path.strip("/") == "counted"]
    assert len(listings) == math.ceil(keys / 1000) == 2, listings
    assert not [r for r in requests if r.method == "HEAD"], "no request per file to stat it"
    niftis = {f.relpath: f.size for f in inventory.files if f.is_nifti}
    assert niftis and all(size > 64 * 1024 + 4 for size in niftis.values()), "files > one block"
    reads: dict[str, list[Request]] = {}
    for r in requests:
        if r.method == "GET" and r.path.startswith("/counted/ds/"):
            reads.setdefault(r.path.removeprefix("/counted/ds/"), []).append(r)
    assert not [p for p in reads if p.startswith("stimuli/")]
    for relpath, size in niftis.items():
        got = reads[relpath]
        assert all(r.range for r in got), f"{relpath}: read whole"
        assert len(got) <= 2, got  # the header block, then the trailer
        spans = [tuple(map(int, r.range.removeprefix("bytes=").split("-"))) for r in got]  # type: ignore[union-attr]
        assert sum(end - start + 1 for start, end in spans) <= 64 * 1024 + 4 < size
        if relpath.endswith(".gz"):
            assert (size - 4, size - 1) in spans, "the gzip trailer (ISIZE)"


def test_embedding_reads_ranges_with_several_requests_in_flight(
    server: Recorder, aws: Callable[[bool], None], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Files are fetched in ranges straight into the row group's buffer, several requests in
    flight (counted at the server, with every request slowed down so that they overlap)."""
    import bids2hf.bids.source_fsspec as source_module

    chunk = 32 * 1024
    monkeypatch.setattr(source_module, "CHUNK", chunk)  # several ranges per file
    spec = SyntheticSpec(n_subjects=2, sessions=("1",), image_shape=(48, 48, 32))
    data = generate_bids(tmp_path / "bids", spec)
    url = _upload(server, data.root, _bucket(server, "ranges"), "ds")
    local = _local(data.root, tmp_path / "local", scan_options=_ALL)
    read_files = FsspecSource.read_files

    def tracked(self: FsspecSource, *args: Any) -> None:
        server.track = True
        try:
            read_files(self, *args)
        finally:
            server.track = False

    monkeypatch.setattr(FsspecSource, "read_files", tracked)
    server.delay, server.peak = 0.05, 0
    try:
        server.take()
        convert(url, tmp_path / "remote", scan_options=_ALL, workers=1, progress=False)
    finally:
        server.delay = 0.0
    assert without_state(tree(tmp_path / "remote")) == local
    assert server.peak >= 4, server.peak  # REMOTE_CONCURRENCY (8) at most
    gets = [r for r in server.take() if r.method == "GET" and r.path.startswith("/ranges/ds/")]
    spans = [tuple(map(int, r.range[6:].split("-"))) for r in gets if r.range]
    assert sum(1 for start, end in spans if end - start + 1 == chunk and start % chunk == 0) > 20
    assert CHUNK == 8 * 1024 * 1024, "the default: 8 MiB per request"


# -- access ---------------------------------------------------------------------------------------------
def test_anonymous_access_to_a_public_bucket_and_credentials_for_a_private_one(
    server: Recorder,
    aws: Callable[[bool], None],
    synthetic: GeneratedDataset,
    tmp_path: Path,
    cli: Callable[..., Result],
) -> None:
    public = _upload(server, synthetic.root, _bucket(server, "public-src", public=True), "ds")
    private = _upload(server, synthetic.root, _bucket(server, "closed-src"), "ds")
    # With credentials configured, they are used; --source-anon reads anonymously anyway.
    assert not open_source(private).anonymous  # type: ignore[attr-defined]
    assert open_source(private, anon=True).anonymous  # type: ignore[attr-defined]
    assert not scan(private, _ALL).errors
    result = cli("inspect", private, "--source-anon", "--derivatives", "all")
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    error = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(error) == 1 and error[0].startswith(f"error: {private}/"), result.stderr
    assert "permission denied" in error[0] and "--source-anon" in error[0]
    # Without credentials anywhere: anonymous, which a public bucket allows.
    aws(False)
    source = open_source(public)
    assert isinstance(source, FsspecSource) and source.anonymous
    local = _local(synthetic.root, tmp_path / "local", scan_options=_ALL)
    convert(public, tmp_path / "anon", scan_options=_ALL, workers=1, progress=False)
    assert without_state(tree(tmp_path / "anon")) == local
    result = cli("inspect", private, "--derivatives", "all")
    assert result.exit_code == 2, result.output
    assert "read anonymously" in result.stderr and "configure credentials" in result.stderr


def test_a_missing_prefix_is_one_line(
    server: Recorder, aws: Callable[[bool], None], cli: Callable[..., Result]
) -> None:
    _bucket(server, "empty-src")
    result = cli("inspect", "s3://empty-src/nothing-here")
    assert result.exit_code == 2, result.output
    assert result.stderr.strip() == (
        "error: s3://empty-src/nothing-here: no such folder (give the path to a BIDS dataset)"
    )


# -- changes on the remote during a run ----------------------------------------------------------------
def test_an_object_changed_mid_run_stops_the_run_naming_it(
    server: Recorder,
    aws: Callable[[bool], None],
    synthetic: GeneratedDataset,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    cli: Callable[..., Result],
) -> None:
    bucket = _bucket(server, "changing")
    url = _upload(server, synthetic.root, bucket, "ds")
    target = next(
        p.relative_to(synthetic.root).as_posix()
        for p in synthetic.files
        if p.name.endswith("_T1w.nii.gz") and p.name.startswith("sub-02")
    )
    client = _client(server)
    fetch = FsspecSource._fetch
    changed: list[str] = []

    def overwrite_then_fetch(self: FsspecSource, ref: Any, start: int, end: int) -> bytes:
        if ref.relpath == target and not changed:
            # Another writer replaces the object while bids2hf reads it: same size, new bytes.
            body = bytearray((synthetic.root / target).read_bytes())
            body[len(body) // 2] ^= 0xFF
            client.put_object(Bucket=bucket, Key=f"ds/{target}", Body=bytes(body))
            changed.append(target)
        return fetch(self, ref, start, end)

    monkeypatch.setattr(FsspecSource, "_fetch", overwrite_then_fetch)
    out = tmp_path / "out"
    args = ("convert", url, out, *OPTIONS, "-q", "-j", "1")
    result = cli(*args)
    assert changed == [target]
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: {url}/{target}: changed after planning"), lines[0]
    assert "re-run the same command" in lines[0]
    assert not (out / "bids2hf" / "manifest.jsonl").exists()
    assert not list(out.glob("data/*.tmp")) and not list((out / ".bids2hf").glob("tmp/*"))
    # The re-run converts the remote as it is now.
    result = cli(*args)
    assert result.exit_code == 0, result.output
    assert cli("verify", url, out, "-q").exit_code == 0

    # A dataset-level file (copied verbatim to bids/) that changes is refused the same way.
    stream = FsspecSource.read_chunks

    def overwrite_then_stream(self: FsspecSource, ref: Any) -> Iterator[bytes]:
        if not isinstance(ref, str) and ref.relpath == "participants.tsv":
            client.put_object(Bucket=bucket, Key="ds/participants.tsv", Body=b"replaced\n")
        return stream(self, ref)

    monkeypatch.setattr(FsspecSource, "read_chunks", overwrite_then_stream)
    shutil.rmtree(out)
    result = cli(*args)
    assert result.exit_code == 2, result.output
    assert f"error: {url}/participants.tsv: changed after planning" in result.stderr
    assert not (out / "bids" / "participants.tsv").exists()


def test_sigkill_and_rerun_resume_to_the_same_output(
    server: Recorder, synthetic: GeneratedDataset, tmp_path: Path
) -> None:
    url = _upload(server, synthetic.root, _bucket(server, "killed"), "ds")
    env = _subprocess_env(server, tmp_path)
    local = _local(
        synthetic.root, tmp_path / "local", scan_options=_ALL, plan_options=_plan_options()
    )
    out = tmp_path / "out"
    args = ["convert", url, str(out), *OPTIONS, "-q", "-j", "1"]
    server.delay = 0.05  # a slow link: the run is still going when the first shard is done
    try:
        proc = subprocess.Popen([*BIDS2HF, *args], env=env, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while not list((out / "data").glob("*.parquet")) and proc.poll() is None:
            assert time.monotonic() < deadline, "no shard written"
            time.sleep(0.01)
        time.sleep(random.uniform(0, 0.5))  # anywhere in the second shard
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        server.delay = 0.0
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read() if proc.stderr else ""
    assert not (out / "README.md").exists(), "killed before the end"
    rerun = run_bids2hf(*args[:-3], "-j", "1", env=env)
    found = re.search(r"\((\d+) written, (\d+) already complete", rerun.stdout)
    assert found and int(found.group(2)) >= 1, rerun.stdout  # resumed: shards were kept
    assert without_state(tree(out)) == local


# -- source → Hub in one pass ----------------------------------------------------------------------------
def test_s3_to_hub_in_one_pass(
    server: Recorder, emu: HubEmulator, synthetic: GeneratedDataset, tmp_path: Path
) -> None:
    url = _upload(server, synthetic.root, _bucket(server, "to-hub"), "ds")
    # The S3 environment, plus the emulator's settings from the shared helper.
    hub = {k: v for k, v in hub_env(emu, tmp_path).items() if k.startswith(("HF_", "BIDS2HF_"))}
    env = _subprocess_env(server, tmp_path) | hub
    local = _local(
        synthetic.root,
        tmp_path / "local",
        scan_options=_ALL,
        plan_options=_plan_options(),
        repo_hint="org/from-s3",  # the card's code samples name the repository
    )
    run_bids2hf("convert", url, "hf://datasets/org/from-s3", *OPTIONS, "-q", "-j", "1", env=env)
    published = {p: sha256(blob) for p, blob in emu.files("org/from-s3").items()}
    assert {p: h for p, h in published.items() if p in local} == local
    assert set(local) <= set(published)
    staging = next((Path(env["BIDS2HF_CACHE"]) / "staging").iterdir())
    assert not list(staging.rglob("*.parquet")), "the staging folder keeps no shard"


@pytest.mark.parametrize("md5", [True, False], ids=["small-file-md5", "large-file-etag"])
def test_read_files_refuses_an_object_changed_since_the_listing(
    server: Recorder,
    aws: Callable[[bool], None],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    md5: bool,
) -> None:
    """Small files are checked by the MD5 of their bytes against the listed ETag (no request);
    large ones by asking for the current ETag after reading. Both see a replaced object."""
    import numpy as np

    import bids2hf.bids.remote_reads as remote_reads
    from bids2hf.errors import SourceChangedError
    from bids2hf.model.rows import FileRef

    if not md5:
        monkeypatch.setattr(remote_reads, "_MD5_MAX", 0)
    bucket = _bucket(server, f"replaced-{'md5' if md5 else 'etag'}")
    client = _client(server)
    client.put_object(Bucket=bucket, Key="ds/a.bin", Body=b"a" * 1000)
    source = open_source(f"s3://{bucket}/ds")
    assert isinstance(source, FsspecSource)
    listed = source.listing()["a.bin"]
    ref = FileRef("a.bin", listed.size, listed.mtime_ns, listed.version)
    buffer = np.zeros(1000, dtype=np.uint8)
    items = [(ref, memoryview(buffer.data))]
    server.take()
    source.read_files(items, lambda i, chunk: None, lambda i: None)
    heads = [r for r in server.take() if r.method == "HEAD"]
    assert len(heads) == (0 if md5 else 1)
    client.put_object(Bucket=bucket, Key="ds/a.bin", Body=b"b" * 1000)
    with pytest.raises(SourceChangedError, match=f"s3://{bucket}/ds/a.bin: changed after planning"):
        source.read_files(items, lambda i, chunk: None, lambda i: None)
    source.close()


def test_the_next_row_group_is_fetched_while_the_current_one_is_written(
    server: Recorder, aws: Callable[[bool], None], monkeypatch: pytest.MonkeyPatch
) -> None:
    """will_need(next files) before reading the current ones: once those are read, the next
    files are fetched ahead (within REMOTE_PREFETCH bytes), and reading them asks for nothing."""
    import numpy as np

    import bids2hf.bids.source_fsspec as source_module
    from bids2hf.model.rows import FileRef

    monkeypatch.setattr(source_module, "REMOTE_PREFETCH", 2500)  # room for b and c, not d
    bucket = _bucket(server, "ahead")
    client = _client(server)
    for name in "abcd":
        client.put_object(Bucket=bucket, Key=f"ds/{name}.bin", Body=name.encode() * 1000)
    source = open_source(f"s3://{bucket}/ds")
    assert isinstance(source, FsspecSource)
    listing = source.listing()
    refs = {
        n: FileRef(f"{n}.bin", listing[f"{n}.bin"].size, 0, listing[f"{n}.bin"].version)
        for n in "abcd"
    }
    buffers = {n: np.zeros(1000, dtype=np.uint8) for n in "abcd"}

    def read(*names: str) -> None:
        items = [(refs[n], memoryview(buffers[n].data)) for n in names]
        source.read_files(items, lambda i, chunk: None, lambda i: None)

    server.take()
    source.will_need([refs["b"], refs["c"], refs["d"]])
    assert not [r for r in server.take() if r.path.startswith("/ahead/ds/")], "not before a"
    read("a")
    for fut in list(source._ahead.values()):
        fut.result()
    fetched = {r.path for r in server.take() if r.method == "GET"}
    assert fetched == {f"/ahead/ds/{n}.bin" for n in "abc"}, fetched  # d: over the budget
    read("b", "c", "d")
    assert {r.path for r in server.take() if r.method == "GET"} == {"/ahead/ds/d.bin"}
    for name in "abcd":
        assert buffers[name].tobytes() == name.encode() * 1000
    source.close()
