"""Helpers shared by the tests: file trees, the Hub emulator's environment, scripts in a subprocess."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from hub_emulator import HubEmulator


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tree(root: Path) -> dict[str, str]:
    """relative path → sha256 of every file under root (symlinks followed)."""
    return {
        p.relative_to(root).as_posix(): sha256(p)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


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
