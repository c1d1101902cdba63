"""End-to-end tests of the Hub emulator with the REAL huggingface_hub / datasets clients.

``HF_ENDPOINT`` is read by huggingface_hub and datasets at import time, so client code runs in a fresh
subprocess (``python -c``) whose environment points at the emulator. The script prints one JSON line
last; :func:`run_client` returns it parsed.

Retry behaviour of huggingface_hub 2.4 on the plain Git LFS path (``HF_HUB_DISABLE_XET=1``), read from
the client sources and checked by ``test_client_retries_*`` below:

* retried (``http_backoff``: 408/429/500/502/503/504, timeouts, network errors, dropped connections;
  5 retries, 1-8 s exponential backoff, ``Retry-After``/``RateLimit`` honoured on 429 with +1 s):
  ``preupload``, LFS ``objects/batch``, LFS ``PUT`` upload (file rewound), multipart part ``PUT`` and
  completion ``POST``, LFS ``verify``, tree listing and commit listing pages (``list_repo_tree``,
  ``list_repo_commits``), ``HfFileSystem`` range reads and streamed reads.
* ``hf_hub_download``: the metadata ``HEAD`` is first tried WITHOUT retry; on 429/5xx/network error it is
  re-done once with full backoff (so a transient 503 on HEAD is survived). The ``GET`` body download only
  retries status 408 and 429 (NOT 5xx: a 503 on the GET fails the download); broken connections and
  truncated bodies are resumed with a ``Range`` request.
* NOT retried at all -> our product code must retry them itself: ``create_commit`` (``POST .../commit``,
  plain ``get_session().post``; retry is only enabled inside the Xet upload pipeline, and a retried commit
  whose response was lost can create a duplicate commit - use ``parent_commit`` to make it safe),
  ``POST /api/validate-yaml`` (done by ``create_commit`` when README.md is committed), ``create_repo``,
  ``delete_repo``, ``repo_info``/``dataset_info``, ``get_paths_info``, ``whoami``.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

try:
    from hub_emulator import HubEmulator
except ImportError:  # tests/ imported as a package
    from tests.hub_emulator import HubEmulator

TOKEN = "test-token-not-a-secret"
REPO = "org/ds"


def run_client(emu: HubEmulator, tmp_path: Path, code: str, timeout: float = 60) -> Any:
    """Run ``code`` in a subprocess wired to the emulator; return the JSON printed on its last line."""
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower() and not k.startswith("HF_")}
    env |= {
        "HF_ENDPOINT": emu.url, "HF_HUB_DISABLE_XET": "1", "HF_TOKEN": TOKEN, "HF_HOME": str(tmp_path / "home"),
        "HF_HUB_DISABLE_TELEMETRY": "1", "HF_DATASETS_CACHE": str(tmp_path / "datasets-cache"),
        "HF_HUB_DISABLE_PROGRESS_BARS": "1", "NO_PROXY": "127.0.0.1,localhost", "PYTHONUNBUFFERED": "1",
    }
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True,
                          text=True, timeout=timeout, cwd=tmp_path)
    if proc.returncode != 0:
        raise AssertionError(f"client script failed ({proc.returncode}):\n{proc.stderr[-6000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def make_folder(root: Path) -> dict[str, bytes]:
    """A folder with small text files, a >1 MB binary and a Parquet file; returns rel path -> bytes."""
    (root / "data").mkdir(parents=True)
    pq.write_table(pa.table({"id": [1, 2, 3], "name": ["a", "b", "c"]}), root / "data" / "table.parquet")
    (root / "README.md").write_text("---\nlicense: mit\n---\n# Test dataset\n")
    (root / "notes.txt").write_text("just some text\n" * 10)
    (root / "data" / "blob.bin").write_bytes(os.urandom(1_500_000))
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


UPLOAD = """
from huggingface_hub import HfApi
api = HfApi()
api.create_repo({repo!r}, repo_type="dataset", private=True, exist_ok=True)
info = api.upload_folder(folder_path={folder!r}, repo_id={repo!r}, repo_type="dataset")
"""


def test_upload_folder_list_and_download_roundtrip(emu: HubEmulator, tmp_path: Path) -> None:
    expected = make_folder(tmp_path / "src")
    out = run_client(emu, tmp_path, UPLOAD.format(repo=REPO, folder=str(tmp_path / "src")) + """
import json
from huggingface_hub import hf_hub_download, HfFileSystem
from huggingface_hub.errors import HfHubHTTPError
try:
    api.create_repo("org/ds", repo_type="dataset")
    conflict = None
except HfHubHTTPError as e:
    conflict = e.response.status_code
tree = {f.path: (f.size, f.lfs is not None) for f in api.list_repo_tree("org/ds", repo_type="dataset",
        recursive=True) if hasattr(f, "size")}
paths = sorted(tree)
files = {p: open(hf_hub_download("org/ds", p, repo_type="dataset"), "rb").read().hex() for p in paths}
ds = api.dataset_info("org/ds")
fs_ls = sorted(HfFileSystem().ls("datasets/org/ds/data", detail=False))
me = api.whoami()["name"]
api.delete_repo("org/ds", repo_type="dataset")
print(json.dumps({"oid": info.oid, "tree": tree, "files": files, "sha": ds.sha, "private": ds.private,
                  "conflict": conflict, "me": me, "ls": fs_ls, "gone": not api.repo_exists("org/ds",
                  repo_type="dataset")}))
""")
    assert out["conflict"] == 409
    assert out["sha"] == out["oid"]
    assert out["private"] is True and out["me"] == "emulator-user" and out["gone"]
    assert set(expected) <= set(out["tree"])
    lfs = {p for p, (_, is_lfs) in out["tree"].items() if is_lfs}
    assert lfs == {"data/blob.bin", "data/table.parquet"}
    for path, data in expected.items():
        assert bytes.fromhex(out["files"][path]) == data
    assert out["ls"] == ["datasets/org/ds/data/blob.bin", "datasets/org/ds/data/table.parquet"]
    assert emu.stats["commits"] == 2  # initial commit + upload_folder


def test_reupload_sends_no_lfs_bytes(emu: HubEmulator, tmp_path: Path) -> None:
    make_folder(tmp_path / "src")
    run_client(emu, tmp_path, UPLOAD.format(repo=REPO, folder=str(tmp_path / "src")) + "print('{}')")
    first = emu.stats
    assert first["bytes_uploaded"] > 1_500_000 and first["requests"]["PUT lfs_upload"] == 2
    (tmp_path / "src" / "copy").mkdir()  # same LFS content under a new path: new commit, no new upload
    (tmp_path / "src" / "copy" / "blob.bin").write_bytes((tmp_path / "src" / "data" / "blob.bin").read_bytes())
    run_client(emu, tmp_path, UPLOAD.format(repo=REPO, folder=str(tmp_path / "src")) + """
info2 = api.upload_folder(folder_path={folder!r}, repo_id="org/ds", repo_type="dataset")
print('{{}}')
""".format(folder=str(tmp_path / "src")))
    after = emu.stats
    assert after["bytes_uploaded"] == first["bytes_uploaded"]
    assert after["requests"]["PUT lfs_upload"] == 2
    assert after["commits"] == first["commits"] + 1  # second identical upload_folder made no commit
    assert emu.read_file(REPO, "copy/blob.bin") == emu.read_file(REPO, "data/blob.bin")


def test_multipart_upload(tmp_path: Path) -> None:
    with HubEmulator(tmp_path / "hub", multipart_threshold=1_000_000, multipart_chunk_size=400_000) as emu:
        data = make_folder(tmp_path / "src")["data/blob.bin"]
        run_client(emu, tmp_path, UPLOAD.format(repo=REPO, folder=str(tmp_path / "src")) + "print('{}')")
        assert emu.stats["requests"]["POST lfs_complete"] == 1  # only the 1.5 MB blob goes multipart
        assert emu.stats["requests"]["PUT lfs_upload"] == 4 + 1  # 4 parts + the small parquet
        assert emu.read_file(REPO, "data/blob.bin") == data
        assert emu.errors == []


def test_stale_parent_commit_is_rejected_with_412(emu: HubEmulator, tmp_path: Path) -> None:
    emu.create_repo(REPO)
    old = emu.head(REPO)
    emu.upload_bytes(REPO, {"a.txt": b"a"})
    out = run_client(emu, tmp_path, f"""
import json
from huggingface_hub import HfApi, CommitOperationAdd
from huggingface_hub.errors import HfHubHTTPError
api = HfApi()
def commit(parent):
    return api.create_commit("org/ds", repo_type="dataset", commit_message="b", parent_commit=parent,
                             operations=[CommitOperationAdd("b.txt", b"b")])
try:
    commit({old!r})
    status = None
except HfHubHTTPError as e:
    status = e.response.status_code
ok = commit(api.dataset_info("org/ds").sha).oid
print(json.dumps({{"status": status, "ok": ok}}))
""")
    assert out["status"] == 412
    assert out["ok"] == emu.head(REPO)
    assert [c["title"] for c in emu.commits(REPO)] == ["b", "Seed files", "initial commit"]


def test_client_retries_survive_transient_errors(emu: HubEmulator, tmp_path: Path) -> None:
    emu.create_repo(REPO)
    payload = os.urandom(300_000)
    emu.upload_bytes(REPO, {"data/x.bin": payload})
    faults = [
        emu.inject(r"/resolve/.*/data/x\.bin$", "HEAD", status=503),  # HEAD re-done with backoff
        emu.inject(r"/resolve/.*/data/x\.bin$", "GET", status=429, retry_after=1),  # GET retries 429
        emu.inject(r"/resolve/.*/data/y\.bin$", "GET", truncate=1000),  # resumed with a Range request
        emu.inject(r"/preupload/", status=503),
        emu.inject(r"\.git/info/lfs/objects/batch$", drop=True),
        emu.inject(r"^/_lfs/", "PUT", status=500),
    ]
    out = run_client(emu, tmp_path, """
import json
from huggingface_hub import HfApi, CommitOperationAdd, hf_hub_download
api = HfApi()
x = open(hf_hub_download("org/ds", "data/x.bin", repo_type="dataset"), "rb").read().hex()
info = api.create_commit("org/ds", repo_type="dataset", commit_message="y",
                         operations=[CommitOperationAdd("data/y.bin", bytes(range(256)) * 4000)])
y = open(hf_hub_download("org/ds", "data/y.bin", repo_type="dataset"), "rb").read()
print(json.dumps({"x": x, "y_ok": y == bytes(range(256)) * 4000, "oid": info.oid}))
""")
    assert bytes.fromhex(out["x"]) == payload and out["y_ok"]
    assert out["oid"] == emu.head(REPO)
    assert [f.fired for f in faults] == [1] * len(faults)


@pytest.mark.parametrize(("route", "method"), [(r"/commit/main$", "POST"), (r"/resolve/", "GET")])
def test_client_does_not_retry_commit_nor_download_get_on_503(
    emu: HubEmulator, tmp_path: Path, route: str, method: str
) -> None:
    emu.create_repo(REPO)
    emu.upload_bytes(REPO, {"a.txt": b"hello"})
    fault = emu.inject(route, method, status=503)
    out = run_client(emu, tmp_path, f"""
import json
from huggingface_hub import HfApi, CommitOperationAdd, hf_hub_download
from huggingface_hub.errors import HfHubHTTPError
try:
    if {method!r} == "POST":
        HfApi().create_commit("org/ds", repo_type="dataset", commit_message="x",
                              operations=[CommitOperationAdd("b.txt", b"b")])
    else:
        hf_hub_download("org/ds", "a.txt", repo_type="dataset")
    print(json.dumps(None))
except HfHubHTTPError as e:
    print(json.dumps(e.response.status_code))
""")
    assert out == 503 and fault.fired == 1
    assert emu.stats["requests"][f"{method} {'commit' if method == 'POST' else 'resolve'}"] == 1


def test_load_dataset_regular_and_streaming(emu: HubEmulator, tmp_path: Path) -> None:
    src = tmp_path / "tiny"
    (src / "data").mkdir(parents=True)
    pq.write_table(pa.table({"id": [0, 1, 2], "text": ["zero", "one", "two"]}), src / "data" / "train-0.parquet")
    (src / "README.md").write_text(
        "---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n    path: data/train-*.parquet\n"
        "---\n# tiny\n"
    )
    out = run_client(emu, tmp_path, UPLOAD.format(repo="org/tiny", folder=str(src)) + """
import json
import datasets
# The parquet-export lookup goes to http://datasets-server.<HF_ENDPOINT host>/ (a DNS lookup, not loopback):
# switch it off to stay on loopback. It fails quietly and falls back to the repo files anyway.
datasets.config.USE_PARQUET_EXPORT = False
rows = datasets.load_dataset("org/tiny", split="train").to_list()
streamed = list(datasets.load_dataset("org/tiny", split="train", streaming=True))
print(json.dumps({"rows": rows, "streamed": streamed}))
""", timeout=120)
    expected = [{"id": 0, "text": "zero"}, {"id": 1, "text": "one"}, {"id": 2, "text": "two"}]
    assert out["rows"] == expected
    assert out["streamed"] == expected


def _http(emu: HubEmulator, path: str, method: str = "GET", **headers: str) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(emu.url + path, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def test_range_requests_and_headers(emu: HubEmulator) -> None:
    emu.create_repo(REPO)
    data = os.urandom(100_000)
    sha = emu.upload_bytes(REPO, {"f.bin": data, "t.txt": b"text"})
    status, headers, body = _http(emu, "/datasets/org/ds/resolve/main/f.bin", Range="bytes=10-19")
    assert (status, body, headers["Content-Range"]) == (206, data[10:20], "bytes 10-19/100000")
    assert _http(emu, f"/datasets/org/ds/resolve/{sha}/f.bin", Range="bytes=-5")[2] == data[-5:]
    assert _http(emu, "/datasets/org/ds/resolve/main/f.bin", Range="bytes=99990-")[2] == data[99990:]
    assert _http(emu, "/datasets/org/ds/resolve/main/f.bin", Range="bytes=100000-")[0] == 416
    status, headers, body = _http(emu, "/datasets/org/ds/resolve/main/f.bin", "HEAD")
    assert status == 200 and body == b"" and headers["X-Repo-Commit"] == sha
    assert headers["X-Linked-Size"] == headers["Content-Length"] == "100000"
    assert headers["Accept-Ranges"] == "bytes" and not any(k.lower().startswith("x-xet") for k in headers)
    status, headers, _ = _http(emu, "/datasets/org/ds/resolve/main%2Fx/t.txt")
    assert (status, headers["X-Error-Code"]) == (404, "RevisionNotFound")
    status, headers, _ = _http(emu, "/datasets/org/ds/resolve/main/missing.txt")
    assert (status, headers["X-Error-Code"], headers["X-Repo-Commit"]) == (404, "EntryNotFound", sha)
    assert _http(emu, "/api/datasets/org/ds/commit/main", "POST")[0] == 401  # writes need a token


def test_lfs_put_checks_oid_and_honours_bandwidth_limit(emu: HubEmulator) -> None:
    emu.create_repo(REPO, private=True)
    data = os.urandom(400_000)
    oid = hashlib.sha256(data).hexdigest()
    conn = http.client.HTTPConnection("127.0.0.1", emu.port, timeout=10)
    conn.request("PUT", f"/_lfs/dataset/{REPO}/{'0' * 64}", body=data)  # wrong oid -> rejected
    resp = conn.getresponse()
    assert resp.status == 400 and b"sha256 mismatch" in resp.read()
    assert emu.stats["lfs_objects_stored"] == 0
    emu.upload_bandwidth = 1_000_000
    start = time.monotonic()
    conn.request("PUT", f"/_lfs/dataset/{REPO}/{oid}", body=data)  # upload hrefs are "presigned": no token
    assert conn.getresponse().status == 200
    assert time.monotonic() - start >= 0.35
    assert emu.stats["bytes_uploaded"] == 2 * len(data) and emu.stats["lfs_objects_stored"] == 1
    emu.upload_bandwidth = None
    assert _http(emu, "/datasets/org/ds/resolve/main/.gitattributes")[0] == 401  # private, no token
    assert _http(emu, "/datasets/org/ds/resolve/main/.gitattributes", Authorization="Bearer x")[0] == 200
    emu.inject(r"^/api/whoami-v2$", delay=0.3)
    start = time.monotonic()
    assert _http(emu, "/api/whoami-v2", Authorization=f"Bearer {TOKEN}")[0] == 200
    assert time.monotonic() - start >= 0.3
    assert _http(emu, "/api/whoami-v2")[0] == 401


def test_standalone_cli_prints_url(tmp_path: Path) -> None:
    script = Path(__file__).with_name("hub_emulator.py")
    proc = subprocess.Popen([sys.executable, str(script), "--port", "0", "--root", str(tmp_path / "hub")],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        req = urllib.request.Request(url + "/api/whoami-v2", headers={"Authorization": f"Bearer {TOKEN}"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert json.load(resp)["name"] == "emulator-user"
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0
