"""Issue 14: shards as tasks on a Dask cluster (`--engine dask`), to a folder, S3 and the Hub.

Every test compares with a single-process run of the same plan: same shard bytes, same remote
sha256s. Worker processes are real (LocalCluster with processes, `dask worker`, SLURM jobs).
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from click.testing import Result

import bids2hf
from bids2hf.bids.options import ScanOptions
from bids2hf.bids.source import LocalSource
from bids2hf.errors import ClusterError, SourceChangedError
from bids2hf.model.rows import FileRef, RowPlan, ShardPlan
from bids2hf.plan.options import PlanOptions
from bids2hf.progress import ProgressBar
from bids2hf.scale.dask_engine import _DriverProgress
from bids2hf.scale.dask_tasks import FolderSink, HubSink, Secret, ShardTask, run_task, versions
from bids2hf.testing.synthetic import GeneratedDataset, SyntheticSpec, generate_bids
from helpers import hub_env, sha256, tree
from hub_emulator import HubEmulator

distributed = pytest.importorskip("distributed")

BIDS2HF = [sys.executable, "-m", "bids2hf"]
REPO = "org/ds"
SHARDS = ("--derivatives", "all", "-q", "--max-shard-size", "150kB")
DASK = ("--engine", "dask")


def _options() -> dict[str, Any]:
    return {
        "scan_options": ScanOptions(derivatives=("all",)),
        "plan_options": PlanOptions(max_shard_bytes=150_000),
        "progress": False,
    }


def _output(root: Path) -> dict[str, str]:
    """Every file of an output but its resume state."""
    return {p: h for p, h in tree(root).items() if not p.startswith(".bids2hf/")}


def _run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([*BIDS2HF, *args], env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    """Two worker processes with one thread each, as `--scheduler local:2` starts them."""
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    )
    with cluster, distributed.Client(cluster) as c:
        yield c


@pytest.fixture(scope="module")
def baseline(synthetic: GeneratedDataset, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The single-process output of the plan every test uses."""
    out = tmp_path_factory.mktemp("baseline") / "out"
    bids2hf.convert(synthetic.root, out, workers=1, **_options())
    return out


# -- a shared folder ---------------------------------------------------------------------------
def test_folder_identical_to_single_process(
    client: Any, synthetic: GeneratedDataset, baseline: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    with distributed.get_task_stream(client) as stream:
        report = bids2hf.convert(synthetic.root, out, client=client, **_options())
    shards = sorted(p for p in _output(baseline) if p.startswith("data/"))
    assert len(shards) > 3
    # Every shard was a task of the cluster, none written by the driver.
    tasks = [t for t in stream.data if str(t["key"]).startswith("bids2hf-")]
    assert len(tasks) == len(shards) == len(report.written)
    assert _output(out) == _output(baseline)
    # The driver's byte count: each shard's files once, whatever the workers reported.
    plan = report.plan
    assert report.bytes_read == sum(s.nbytes for s in plan.shards) + sum(
        f.size for f in plan.dataset_files
    )
    assert not any((out / ".bids2hf" / "tmp").glob("**/*")), "the run's temporary files are gone"
    # A re-run finds every shard complete.
    again = bids2hf.convert(synthetic.root, out, client=client, **_options())
    assert again.written == [] and sorted(again.reused) == shards


def _worker_patches() -> tuple[Callable[[str], None], Callable[[str], None], Callable[[], None]]:
    """Functions to run on the workers (nested: pickled by value, so that workers need not
    import this module): stop the cluster's first shard mid-way, fail one, undo."""

    def stop_first_shard(marks: str) -> None:
        """The first shard of the cluster stops after its first bytes (its temporary file
        open), writes where to marks/stopped, and waits to be killed."""
        import bids2hf.scale.dask_tasks as tasks
        import bids2hf.write.shard

        real = bids2hf.write.shard.write_shard

        def write_shard(*args: Any) -> Any:
            *head, tmp, progress = args

            def slow(nbytes: int, nfiles: int) -> None:
                try:
                    flags = os.O_CREAT | os.O_EXCL | os.O_WRONLY
                    fd = os.open(os.path.join(marks, "stopped"), flags)
                except FileExistsError:
                    pass
                else:
                    os.write(fd, json.dumps({"pid": os.getpid(), "tmp": str(tmp)}).encode())
                    os.close(fd)
                    time.sleep(120)  # killed long before
                progress(nbytes, nfiles)

            return real(*head, tmp, slow)

        tasks.write_shard = write_shard

    def fail_shard(path: str) -> None:
        """Writing shard ``path`` finds a source file changed (as write_shard reports it)."""
        import bids2hf.scale.dask_tasks as tasks
        import bids2hf.write.shard

        real = bids2hf.write.shard.write_shard

        def write_shard(shard: Any, *args: Any) -> Any:
            if shard.path == path:
                raise bids2hf.errors.SourceChangedError(f"{path}: a source changed (test)")
            return real(shard, *args)

        tasks.write_shard = write_shard

    def restore() -> None:
        import bids2hf.scale.dask_tasks as tasks
        import bids2hf.write.shard

        tasks.write_shard = bids2hf.write.shard.write_shard

    return stop_first_shard, fail_shard, restore


def _kill_first_shard_worker(
    client: Any, synthetic: GeneratedDataset, out: Path, marks: Path
) -> tuple[list[BaseException], Path]:
    """Convert with the cluster while its first shard's worker is SIGKILLed mid-shard: the
    errors of the run, and the partial file the killed worker left."""
    stop_first_shard, _, restore = _worker_patches()
    marks.mkdir()
    client.run(stop_first_shard, str(marks))
    failure: list[BaseException] = []

    def convert() -> None:
        try:
            bids2hf.convert(synthetic.root, out, client=client, **_options())
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=convert)
    thread.start()
    try:
        stopped = marks / "stopped"
        deadline = time.monotonic() + 60
        while not (stopped.is_file() and stopped.stat().st_size) and time.monotonic() < deadline:
            time.sleep(0.02)
        where = json.loads(stopped.read_text())
        partial = Path(where["tmp"])
        # Mid-shard: its temporary file exists, in the run's own temporary folder.
        assert partial.is_file() and partial.parent.parent == out / ".bids2hf" / "tmp"
        os.kill(where["pid"], signal.SIGKILL)
    finally:
        thread.join(120)
        client.run(restore)
        client.wait_for_workers(2, timeout=60)  # the nanny restarts the killed one
    return failure, partial


def test_worker_killed_mid_shard(
    client: Any, synthetic: GeneratedDataset, baseline: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    failure, partial = _kill_first_shard_worker(client, synthetic, out, tmp_path / "marks")
    assert not failure, failure
    assert _output(out) == _output(baseline)
    assert not partial.exists() and not any((out / ".bids2hf" / "tmp").glob("**/*"))


def test_worker_dying_too_often_stops_the_run(
    client: Any, synthetic: GeneratedDataset, baseline: Path, tmp_path: Path
) -> None:
    def allow(failures: int, dask_scheduler: Any = None) -> int:
        before = int(dask_scheduler.allowed_failures)
        dask_scheduler.allowed_failures = failures
        return before

    before = client.run_on_scheduler(allow, 0)
    try:
        out = tmp_path / "out"
        failure, partial = _kill_first_shard_worker(client, synthetic, out, tmp_path / "marks")
    finally:
        client.run_on_scheduler(allow, before)
    assert len(failure) == 1 and isinstance(failure[0], ClusterError), failure
    assert "died again and again" in str(failure[0]) and "data/train-" in str(failure[0])
    # Nothing partial is left; what was written is complete, and a re-run finishes the job.
    assert not partial.exists() and not any((out / ".bids2hf" / "tmp").glob("**/*"))
    for name, digest in _output(out).items():
        assert _output(baseline)[name] == digest
    bids2hf.convert(synthetic.root, out, client=client, **_options())
    assert _output(out) == _output(baseline)


def test_task_error_reaches_the_driver(
    client: Any, synthetic: GeneratedDataset, baseline: Path, tmp_path: Path
) -> None:
    _, fail_shard, restore = _worker_patches()
    shards = sorted(p for p in _output(baseline) if p.startswith("data/"))
    client.run(fail_shard, shards[1])
    out = tmp_path / "out"
    try:
        with pytest.raises(SourceChangedError, match=f"{shards[1]}: a source changed"):
            bids2hf.convert(synthetic.root, out, client=client, **_options())
    finally:
        client.run(restore)
    assert shards[1] not in _output(out)
    assert not any((out / ".bids2hf" / "tmp").glob("**/*"))
    report = bids2hf.convert(synthetic.root, out, client=client, **_options())
    assert shards[1] in report.written
    assert _output(out) == _output(baseline)
    # Workers never import `datasets` (the driver's columns travel without their features).
    assert not any(client.run(lambda: "datasets" in sys.modules).values())


def test_driver_progress_counts_each_shard_once() -> None:
    bar = ProgressBar(0, 0, enabled=False)
    row = RowPlan(key="r", values={}, files={"c": [FileRef("a", 60, 0), FileRef("b", 40, 0)]})
    shard = ShardPlan("data/x.parquet", [row], [1], "id", 100)
    progress = _DriverProgress(bar.update, [shard])
    progress.event((0.0, {"shard": shard.path, "bytes": 60, "files": 1}))
    # A second attempt (the first one's worker died) starts from zero again.
    progress.event((0.0, {"shard": shard.path, "bytes": 30, "files": 0}))
    progress.event((0.0, {"shard": shard.path, "bytes": 90, "files": 1}))
    assert (bar.bytes, bar.files) == (90, 1)
    progress.finish(shard)
    progress.event((0.0, {"shard": shard.path, "bytes": 100, "files": 2}))  # late: ignored
    progress.event((0.0, {"nonsense": 1}))
    assert (bar.bytes, bar.files) == (100, 2)


def test_task_refuses_other_versions_and_unseen_folders(tmp_path: Path) -> None:
    shard = ShardPlan("data/train-x.parquet", [], [], "content", 0)
    task = ShardTask(
        shard=shard,
        columns=[],
        schema=pa.schema([]),
        source=LocalSource(tmp_path),
        sink=FolderSink(str(tmp_path), str(tmp_path / "gone")),
        versions=("0.0.1", versions()[1]),
    )
    with pytest.raises(ClusterError, match=r"runs bids2hf .* the driver bids2hf 0\.0\.1"):
        run_task(task)
    task.versions = versions()
    task.source = LocalSource(tmp_path / "elsewhere")
    with pytest.raises(ClusterError, match="not visible on the Dask worker"):
        run_task(task)
    task.source = LocalSource(tmp_path)
    with pytest.raises(ClusterError, match="run that started this task has ended"):
        run_task(task)
    # The token never shows where Dask could log it (the repr of a failed task's arguments).
    secret = Secret("hf_very_secret")
    task.sink = HubSink("hf://datasets/o/n", "http://x", secret, 1.0)
    assert "hf_very_secret" not in repr(secret) + str(secret) + repr(task) + repr(task.sink)
    assert pickle.loads(pickle.dumps(secret)).reveal() == "hf_very_secret"


# -- the CLI -----------------------------------------------------------------------------------
def test_cli_scheduler_errors(
    tmp_path: Path, synthetic: GeneratedDataset, cli: Callable[..., Result]
) -> None:
    import dask

    out = str(tmp_path / "out")
    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}):
        for args, message in [
            (("--scheduler", "local:2"), "--scheduler: only with --engine dask"),
            ((*DASK, "--scheduler", str(tmp_path / "none.json")), "no such scheduler file"),
            ((*DASK, "--scheduler", "tcp://127.0.0.1:9"), "cannot reach the Dask scheduler"),
        ]:
            result = cli("convert", synthetic.root, out, "-q", *args)
            assert result.exit_code == 2, result.output
            assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
            assert not os.path.exists(out)


def test_cli_engine_dask_defaults_to_a_local_cluster(
    synthetic: GeneratedDataset,
    baseline: Path,
    tmp_path: Path,
    cli: Callable[..., Result],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`--engine dask` without `--scheduler`: a LocalCluster of `--workers` processes."""
    import bids2hf.scale.dask_engine as dask_engine

    asked: list[str] = []
    real = dask_engine.dask_client

    def recording(scheduler: str) -> Any:
        asked.append(scheduler)
        return real(scheduler)

    monkeypatch.setattr(dask_engine, "dask_client", recording)
    out = tmp_path / "out"
    result = cli("convert", synthetic.root, out, *SHARDS, *DASK, "-j", "1")
    assert result.exit_code == 0, result.output
    assert asked == ["local:1"]
    assert _output(out) == _output(baseline)


def _kill_tree_members(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def test_driver_killed_then_rerun(tmp_path: Path) -> None:
    psutil = pytest.importorskip("psutil")
    bids = generate_bids(
        tmp_path / "bids", SyntheticSpec(n_subjects=10, target_bytes=30_000_000)
    ).root
    baseline = tmp_path / "baseline"
    bids2hf.convert(
        bids,
        baseline,
        workers=1,
        plan_options=PlanOptions(max_shard_bytes=1_500_000),
        progress=False,
    )
    out = tmp_path / "out"
    args = [
        "convert",
        str(bids),
        str(out),
        "-q",
        "--max-shard-size",
        "1.5MB",
        *DASK,
        "--scheduler",
        "local:2",
    ]
    driver = subprocess.Popen([*BIDS2HF, *args], stderr=subprocess.PIPE, text=True)
    journal = out / ".bids2hf" / "state.jsonl"
    helpers: list[int] = []
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and driver.poll() is None:
            if journal.is_file() and b'"op":"shard"' in journal.read_bytes():
                break
            time.sleep(0.01)
        assert driver.poll() is None, driver.stderr.read() if driver.stderr else ""
        time.sleep(random.uniform(0, 0.3))
        helpers = [p.pid for p in psutil.Process(driver.pid).children(recursive=True)]
        assert len(helpers) >= 2  # the LocalCluster's worker processes (and their nannies)
        driver.kill()
        driver.wait()
        assert not (out / "README.md").exists(), "killed before the end"
        # The driver's workers end with it: nothing keeps writing into the folder.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(
            psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
            for p in helpers
        ):
            time.sleep(0.1)
        alive = [
            p
            for p in helpers
            if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
        ]
        assert not alive, f"worker processes outlived their driver: {alive}"
    finally:
        if driver.poll() is None:
            driver.kill()
        _kill_tree_members(helpers)
    proc = _run(dict(os.environ), *args)
    assert _output(out) == _output(baseline), proc.stderr
    assert not any((out / ".bids2hf" / "tmp").glob("**/*"))


# -- S3 (moto) ---------------------------------------------------------------------------------
def _bucket(env: dict[str, str], bucket: str = "neuro") -> Any:
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=env["FSSPEC_S3_ENDPOINT_URL"],
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )


def _objects(env: dict[str, str]) -> dict[str, str]:
    import hashlib

    s3 = _bucket(env)
    found = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket="neuro"):
        for o in page.get("Contents", []):
            body = s3.get_object(Bucket="neuro", Key=o["Key"])["Body"].read()
            found[o["Key"]] = hashlib.sha256(body).hexdigest()
    return found


def test_s3_identical_to_single_process(
    s3_env: dict[str, str], synthetic: GeneratedDataset, tmp_path: Path
) -> None:
    url = "s3://neuro/ds"
    env = {**s3_env, "BIDS2HF_CACHE": str(tmp_path / "cache-1")}
    _run(env, "convert", str(synthetic.root), url, *SHARDS, "-j", "1")
    single = _objects(env)
    s3 = _bucket(env)
    for key in single:
        s3.delete_object(Bucket="neuro", Key=key)
    env["BIDS2HF_CACHE"] = str(tmp_path / "cache-2")
    proc = _run(env, "convert", str(synthetic.root), url, *SHARDS, *DASK, "--scheduler", "local:2")
    assert _objects(env) == single  # shards, card, manifest, bids/ and checksums.json
    assert sum(k.startswith("ds/data/") for k in single) > 3
    assert "verified" in proc.stdout
    assert "distributed" not in proc.stderr, "-q: no log lines of Dask's"
    # The driver's disk never held a shard: its staging folder has only the resume state.
    staging = next((tmp_path / "cache-2" / "staging").iterdir())
    assert not list(staging.glob("data/*"))


def test_s3_source_read_by_the_workers(
    client: Any,
    s3_env: dict[str, str],
    synthetic: GeneratedDataset,
    baseline: Path,
    tmp_path: Path,
) -> None:
    """A BIDS source given as a URL: each task reads its files from S3 itself (the driver only
    lists it and copies the dataset-level files); the output is that of a single-process run
    from the local folder."""
    s3 = _bucket(s3_env)
    for path in sorted(p for p in synthetic.root.rglob("*") if p.is_file()):
        key = f"bids/{path.relative_to(synthetic.root).as_posix()}"
        s3.put_object(Bucket="neuro", Key=key, Body=path.read_bytes())
    from bids2hf.bids.source import open_source

    # The options travel with the pickled source: the workers reach moto as the driver does.
    options = {
        "endpoint_url": s3_env["FSSPEC_S3_ENDPOINT_URL"],
        "key": "testing",
        "secret": "testing",
    }
    source = open_source("s3://neuro/bids", anon=False, storage_options=options)
    out = tmp_path / "out"
    with distributed.get_task_stream(client) as stream:
        bids2hf.convert(source, out, client=client, **_options())
    assert _output(out) == _output(baseline)
    assert any(str(t["key"]).startswith("bids2hf-") for t in stream.data)


def test_fsspec_record_of_shards_the_workers_upload(tmp_path: Path) -> None:
    """Before workers upload, the driver drops (and writes out) the old checksums of the keys
    they will overwrite, as FsspecTarget.stage does for its own uploads; a shard that turns out
    unchanged gets its record back at the last commit."""
    import hashlib

    from bids2hf.publish.targets.base import StagedFile
    from bids2hf.publish.targets.fsspec import FsspecTarget
    from bids2hf.publish.uploader import Publisher, PublishReport

    url = f"memory://dask-{tmp_path.name}/ds"
    local = tmp_path / "train-0.parquet"
    local.write_bytes(b"a" * 100)
    sha = hashlib.sha256(local.read_bytes()).hexdigest()
    target = FsspecTarget(url)
    target.ensure()
    item = StagedFile("data/train-0.parquet", local, 100, sha)
    target.stage(item)
    target.commit([item], [], "first")
    remote = target.files()
    target.forget([item.path])  # RemoteRun.before_worker_uploads
    assert FsspecTarget(url).files()[item.path].sha256 is None, "the old record was kept"
    publisher = Publisher(target, remote, max_staged=2, report=PublishReport(url))
    publisher.submit(StagedFile(item.path, local, 100, sha, uploaded=True), holds_slot=False)
    publisher.finish([], [], "last")
    assert FsspecTarget(url).files()[item.path].sha256 == sha, "the record was lost"


# -- the Hub (emulator) ------------------------------------------------------------------------
def _hub_env(emu: HubEmulator, tmp_path: Path, token: str) -> dict[str, str]:
    return {**hub_env(emu, tmp_path), "HF_TOKEN": token}


@pytest.fixture
def external_cluster(tmp_path: Path) -> Iterator[Path]:
    """`dask scheduler` and `dask worker --nworkers 2` as separate processes whose environment
    holds no Hub endpoint or token (as on other hosts): the scheduler file's path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_HUB_DISABLE_XET="1", HF_HOME=str(tmp_path / "worker-hf-home"))
    scheduler_file = tmp_path / "scheduler.json"
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "distributed.cli.dask_scheduler",
                "--scheduler-file",
                str(scheduler_file),
                "--port",
                "0",
                "--no-dashboard",
            ],
            env=env,
            stderr=subprocess.DEVNULL,
        ),
    ]
    try:
        deadline = time.monotonic() + 60
        while not scheduler_file.is_file() and time.monotonic() < deadline:
            time.sleep(0.05)
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "distributed.cli.dask_worker",
                    "--scheduler-file",
                    str(scheduler_file),
                    "--nworkers",
                    "2",
                    "--nthreads",
                    "1",
                    "--no-dashboard",
                ],
                env=env,
                stderr=subprocess.DEVNULL,
            )
        )
        client = distributed.Client(scheduler_file=str(scheduler_file))
        try:
            client.wait_for_workers(2, timeout=60)
            yield scheduler_file
        finally:
            client.shutdown()  # the scheduler and its workers, at once
    finally:
        for proc in reversed(procs):
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def test_hub_identical_to_single_process(
    emu: HubEmulator, synthetic: GeneratedDataset, tmp_path: Path, external_cluster: Path
) -> None:
    url = f"hf://datasets/{REPO}"
    _run(
        _hub_env(emu, tmp_path / "one", "test-token"),
        "convert",
        str(synthetic.root),
        url,
        *SHARDS,
        "-j",
        "1",
        "--commit-every",
        "3",
    )
    token = "hf_dask_worker_secret_0123456789"
    emu2 = HubEmulator(tmp_path / "hub2", tokens=[token]).start()
    try:
        proc = _run(
            _hub_env(emu2, tmp_path / "two", token),
            "convert",
            str(synthetic.root),
            url,
            *SHARDS,
            "--commit-every",
            "3",
            *DASK,
            "--scheduler",
            str(external_cluster),
            "--debug",
        )
        files = {p: sha256(b) for p, b in emu.files(REPO).items()}
        assert {p: sha256(b) for p, b in emu2.files(REPO).items()} == files
        assert sum(p.startswith("data/") for p in files) > 3
        # Batched commits, the card last, as in a single-process run.
        titles = [c["title"] for c in emu2.commits(REPO)]
        assert titles == [c["title"] for c in emu.commits(REPO)]
        assert "card" in titles[0]
        assert token not in proc.stdout + proc.stderr, "the token was printed"
        assert emu2.errors == []
    finally:
        emu2.stop()


# -- SLURM (dask-jobqueue) ---------------------------------------------------------------------
README = Path(__file__).resolve().parents[1] / "README.md"


def _readme_slurm_cluster() -> dict[str, Any]:
    """The SLURMCluster arguments of the README's SLURM example."""
    text = README.read_text()
    block = text.split("from dask_jobqueue import SLURMCluster", 1)[1].split("```", 1)[0]
    call = block.split("SLURMCluster(", 1)[1].split("\n)", 1)[0]
    return dict(eval(f"dict({call})", {}))  # our own README


def test_slurm_job_script_of_the_readme() -> None:
    jobqueue = pytest.importorskip("dask_jobqueue")
    kwargs = _readme_slurm_cluster()
    with jobqueue.SLURMCluster(**kwargs, scheduler_options={"dashboard_address": ":0"}) as cluster:
        script = cluster.job_script()
    assert "#SBATCH" in script and "distributed.cli.dask_worker" in script
    assert "--nthreads 1" in script  # one shard (one row group in memory) per worker process
    assert "--memory-limit" in script and "--local-directory" in script


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def _stop(pid: int) -> None:
    """SIGTERM, then SIGKILL after 10 s (a daemon the fixture started)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not _gone(pid):
            time.sleep(0.05)
        if _gone(pid):
            return


def _stop_slurm(where: Path) -> None:
    """Jobs first (their steps report to slurmctld, which needs munge), then the daemons."""
    env = {**os.environ, "SLURM_CONF": str(where / "slurm.conf")}
    if (where / "slurmctld.pid").is_file():
        subprocess.run(["scancel", "--partition", "ci"], env=env, capture_output=True, timeout=30)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            queue = subprocess.run(["squeue", "-h"], env=env, capture_output=True, text=True)
            if queue.returncode != 0 or not queue.stdout.strip():
                break
            time.sleep(0.2)
    for name in ("slurmd", "slurmctld", "munged"):
        with contextlib.suppress(OSError, ValueError):
            _stop(int((where / f"{name}.pid").read_text().split()[0]))


@pytest.fixture(scope="module")
def slurm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A single-node SLURM (Debian's slurm-wlm) started by .ci/slurm-single-node.sh: the path of
    its slurm.conf. A second attempt, in a fresh folder, if the first does not come up."""
    script = Path(__file__).resolve().parents[1] / ".ci" / "slurm-single-node.sh"
    if os.geteuid() != 0 or not Path("/usr/sbin/slurmctld").exists():
        pytest.skip("needs root and Debian's slurm-wlm (.ci/run installs it)")
    errors = []
    for _ in range(2):
        where = tmp_path_factory.mktemp("slurm")
        proc = subprocess.run(
            [str(script), str(where)], capture_output=True, text=True, timeout=120
        )
        if proc.returncode == 0:
            try:
                yield str(where / "slurm.conf")
            finally:
                _stop_slurm(where)
            return
        errors.append(proc.stderr)
        _stop_slurm(where)
    raise AssertionError("single-node SLURM did not start:\n" + "\n".join(errors))


def test_slurm_cluster_identical_to_single_process(
    slurm: str,
    synthetic: GeneratedDataset,
    baseline: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    jobqueue = pytest.importorskip("dask_jobqueue")
    monkeypatch.setenv("SLURM_CONF", slurm)
    kwargs = {
        **_readme_slurm_cluster(),
        "queue": "ci",
        "walltime": "00:10:00",
        "local_directory": str(tmp_path / "scratch"),
        "memory": "1GB",
        "job_extra_directives": [f"--output={tmp_path}/slurm-%j.out"],
        "scheduler_options": {"dashboard_address": ":0"},
    }
    kwargs.pop("account", None)
    with jobqueue.SLURMCluster(**kwargs) as cluster, distributed.Client(cluster) as c:
        cluster.scale(jobs=2)
        c.wait_for_workers(2, timeout=90)
        out = tmp_path / "out"
        bids2hf.convert(synthetic.root, out, client=c, **_options())
    assert _output(out) == _output(baseline)
    assert len(list(tmp_path.glob("slurm-*.out"))) == 2, "the workers ran as SLURM jobs"
