"""Helpers shared by the tests: file trees and snapshots, the manifest, conversions, the real
command in a subprocess and its error line, the Hub emulator's environment.

Plain functions; the fixtures built on them live in conftest.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from click.testing import Result

from bids2hf.api import ConvertReport
from bids2hf.api import convert as api_convert
from bids2hf.bids.options import ScanOptions
from bids2hf.model.format import MANIFEST_PATH
from bids2hf.model.manifest import ManifestEntry, loads
from hub_emulator import HubEmulator

#: The ``cli`` fixture: runs bids2hf in this process through click's CliRunner.
Cli = Callable[..., Result]
#: The real command, as a user runs it.
BIDS2HF = [sys.executable, "-m", "bids2hf"]
#: CLI options for a quiet run in one process (monkeypatches reach the writer; no progress bar).
FAST = ("-q", "-j", "1")
#: The private state folder at the top of an output.
STATE_DIR = ".bids2hf"


# -- files ---------------------------------------------------------------------------------------
def sha256(path: Path) -> str:
    """The hex sha256 of a file's bytes (a symlink is followed)."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def with_sitecustomize(
    tmp_path: Path, code: str, base: Mapping[str, str] | None = None
) -> dict[str, str]:
    """``base`` (the environment by default) for a Python that runs ``code`` as it starts (its
    sitecustomize, written under ``tmp_path/hook``)."""
    base = os.environ if base is None else base
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(code)
    paths = [str(hook), *filter(None, [base.get("PYTHONPATH")])]
    return dict(base, PYTHONPATH=os.pathsep.join(paths))


def named_card(card: bytes, repo: str) -> bytes:
    """``card``, converted to a local folder, as ``push`` to ``repo`` publishes it: the code
    samples of its "## Loading" section name the repository (the card of a test dataset has no
    other such line)."""
    for form in ('load_dataset("{}"', "hf://datasets/{} "):
        card = card.replace(form.format("ORG/NAME").encode(), form.format(repo).encode())
    return card


def tree(
    root: Path, *, skip_dirs: frozenset[str] = frozenset(), follow_dir_links: bool = False
) -> dict[str, str]:
    """relative path → sha256 of every file under ``root``, sorted by path.

    Symlinked files are followed; symlinked folders only with ``follow_dir_links``; broken
    symlinks are left out. Folders named in ``skip_dirs`` are skipped at any depth.
    """
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=follow_dir_links):
        dirnames[:] = [d for d in dirnames if d not in skip_dirs]
        for name in filenames:
            full = Path(dirpath) / name
            if full.is_file():
                out[full.relative_to(root).as_posix()] = sha256(full)
    return dict(sorted(out.items()))


def without_state(files: dict[str, str]) -> dict[str, str]:
    """``files`` (from :func:`tree` or :func:`snapshot`) without the private state folder."""
    return {k: v for k, v in files.items() if k != STATE_DIR and not k.startswith(STATE_DIR + "/")}


def snapshot(root: Path, *, mtimes: bool = False) -> dict[str, str] | None:
    """Every entry under ``root``, to prove nothing changed: folders, symlinks (their target,
    not followed) and file contents (sha256), with each entry's mtime if ``mtimes``.

    None if ``root`` does not exist; a file ``root`` is the one entry ``""``.
    """
    if not os.path.lexists(root):
        return None
    entries = [root] if not root.is_dir() else sorted(root.rglob("*"))
    out: dict[str, str] = {}
    for p in entries:
        rel = "" if p == root else p.relative_to(root).as_posix()
        if p.is_symlink():
            out[rel] = "-> " + os.readlink(p)
        elif p.is_dir():
            out[rel] = "dir"
        else:
            out[rel] = sha256(p)
        if mtimes:
            out[rel] += f" mtime {p.lstat().st_mtime_ns}"
    return out


# -- outputs -------------------------------------------------------------------------------------
def manifest(out: Path) -> list[ManifestEntry]:
    """The manifest of output ``out``, read by the product's own parser, in file order."""
    return loads((out / MANIFEST_PATH).read_bytes())


def manifest_records(out: Path) -> list[dict[str, Any]]:
    """The manifest of output ``out`` as raw JSON objects (to edit, or to see every field)."""
    return [json.loads(line) for line in (out / MANIFEST_PATH).read_text().splitlines()]


def convert(bids: Path, out: Path, **kw: Any) -> ConvertReport:
    """Convert ``bids`` into ``out`` through the API in this process: every derivative, one
    worker, no progress bar, unless ``kw`` (the API's keywords) says otherwise."""
    kw.setdefault("scan_options", ScanOptions(derivatives=("all",)))
    kw.setdefault("progress", False)
    kw.setdefault("workers", 1)
    return api_convert(bids, out, **kw)


# -- the real command ----------------------------------------------------------------------------
def run_bids2hf(
    *args: str | Path, env: dict[str, str] | None = None, check: bool = True, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """``bids2hf ARGS`` in a subprocess; with ``check``, fails the test unless it exits 0."""
    proc = subprocess.run(
        [*BIDS2HF, *map(str, args)], env=env, capture_output=True, text=True, timeout=timeout
    )
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def convert_cli(bids: Path, out: Path, *options: str) -> Path:
    """``bids2hf convert`` in a subprocess with every derivative, quiet, one process; ``out``."""
    run_bids2hf("convert", bids, out, "--derivatives", "all", *FAST, *options)
    return out


def error_line(
    result: Result | subprocess.CompletedProcess[str], *names: str | Path, exit_code: int = 2
) -> str:
    """A refusal's single ``error:`` line (from a CliRunner result or a subprocess): checks the
    exit code, no traceback, that the line is all the run printed, and that it names ``names``."""
    if isinstance(result, Result):
        code, stdout, stderr = result.exit_code, result.stdout, result.stderr
    else:
        code, stdout, stderr = result.returncode, result.stdout, result.stderr
    assert code == exit_code, stdout + stderr
    assert "Traceback" not in stdout + stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got {stderr!r}"
    assert not stdout.strip(), f"expected nothing on stdout, got {stdout!r}"
    line = lines[0]
    assert line.startswith("error: "), line
    for name in names:
        assert str(name) in line, f"{name} not named in {line!r}"
    return line


def kill_tree(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL a bids2hf run and its spawned shard writers. The multiprocessing resource
    tracker is spared: it sees the parent die and removes the semaphores the run left."""
    import psutil

    for child in psutil.Process(proc.pid).children(recursive=True):
        try:
            if "resource_tracker" in " ".join(child.cmdline()):
                continue
            child.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:  # also ZombieProcess: it exited while we looked
            continue
    proc.send_signal(signal.SIGKILL)
    proc.wait()


# -- the Hub emulator ----------------------------------------------------------------------------
def hub_env(emu: HubEmulator, tmp_path: Path) -> dict[str, str]:
    """Environment for a bids2hf process that publishes to the emulator (never the real Hub)."""
    return {
        **os.environ,
        "HF_ENDPOINT": emu.url,
        "HF_HUB_DISABLE_XET": "1",
        "HF_TOKEN": "test-token",
        "HF_HOME": str(tmp_path / "hf-home"),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_OFFLINE": "0",
        "HF_DATASETS_OFFLINE": "0",
        "BIDS2HF_CACHE": str(tmp_path / "bids2hf-cache"),
        "BIDS2HF_RETRY_BASE_DELAY": "0.05",
    }


def run_json_script(code: str, env: dict[str, str], tmp_path: Path) -> tuple[dict[str, Any], str]:
    """Run ``code`` in a fresh interpreter with a work folder as argv[1]; the JSON object it
    prints last, and its stderr."""
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    proc = subprocess.run(
        [sys.executable, "-c", code, str(work)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result, proc.stderr
