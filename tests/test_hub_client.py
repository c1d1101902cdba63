"""bids2hf's use of huggingface_hub: public API only, and nothing changed for the rest of the process.

``huggingface_hub`` has one shared HTTP client and one progress-bar switch per process. bids2hf
sets its timeout and turns the client's bars off only while its own calls run
(``targets.hub_call_settings``), then puts both back. These tests run ``HubTarget`` against the
Hub emulator in a subprocess (``huggingface_hub`` reads ``HF_ENDPOINT`` at import time) and look
at the process-wide state before, during and after its calls.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from datasets import Features
from datasets.info import DatasetInfosDict
from huggingface_hub import DatasetCard

from bids2hf.api import convert
from bids2hf.bids.options import ScanOptions
from bids2hf.testing.spec import GeneratedDataset
from helpers import run_json_script
from hub_emulator import HubEmulator

PRELUDE = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    from huggingface_hub import get_session
    from huggingface_hub.utils import are_progress_bars_disabled
    from bids2hf.publish.targets.base import StagedFile
    from bids2hf.publish.targets.hub import HubTarget
    from bids2hf.model.format import sha256_file

    work = Path(sys.argv[1])
    out = {}

    def state():
        return {"bars_off": are_progress_bars_disabled(), "timeout": repr(get_session().timeout)}

    def staged(name, data):
        path = work / name.replace("/", "_")
        path.write_bytes(data)
        return StagedFile(name, path, path.stat().st_size, sha256_file(path))
    """
)


@pytest.fixture
def hub_env(hub_env: dict[str, str]) -> dict[str, str]:
    env = dict(hub_env)
    env.pop("HF_HUB_DISABLE_PROGRESS_BARS", None)  # the default: bars on
    return env


def run_script(env: dict[str, str], tmp_path: Path, body: str) -> dict[str, Any]:
    code = PRELUDE + textwrap.dedent(body) + "\nprint(json.dumps(out))\n"
    return run_json_script(code, env, tmp_path)[0]


def test_hub_calls_leave_the_process_settings_as_they_were(
    emu: HubEmulator, hub_env: dict[str, str], tmp_path: Path
) -> None:
    emu.inject("/tree/", "GET", status=404)  # one call that fails for good
    result = run_script(
        hub_env,
        tmp_path,
        """
        out["before"] = state()
        target = HubTarget("hf://datasets/org/ds", timeout=7.0)
        out["after_init"] = state()
        during = []
        real_commit = target.api.create_commit
        def spy(*args, **kwargs):
            during.append(state())
            return real_commit(*args, **kwargs)
        target.api.create_commit = spy
        target.ensure()
        try:
            target.files()
        except Exception as exc:
            out["failed"] = type(exc).__name__
        out["after_failure"] = state()
        lfs = staged("data/train-0.parquet", b"PAR1\\0" * 5000)
        regular = staged("notes.txt", b"hello\\n")
        target.commit([lfs, regular], [], "test")
        out["during"] = during
        out["after"] = state()
        out["uploaded"] = {"lfs": lfs.uploaded, "regular": regular.uploaded}
        """,
    )
    before = result["before"]
    assert before == {"bars_off": False, "timeout": "Timeout(timeout=None)"}
    assert result["after_init"] == before, "creating a target changes nothing"
    assert result.get("failed"), "the injected 404 made the listing fail"
    assert result["after_failure"] == before, "a failed call puts the settings back too"
    assert result["during"] == [{"bars_off": True, "timeout": "Timeout(timeout=7.0)"}]
    assert result["after"] == before
    # The LFS file's bytes went up with the preupload (its local copy may go); the regular
    # file is only sent with the commit.
    assert result["uploaded"] == {"lfs": True, "regular": False}
    assert set(emu.files("org/ds")) == {".gitattributes", "data/train-0.parquet", "notes.txt"}


def test_settings_the_user_made_are_kept(
    emu: HubEmulator, hub_env: dict[str, str], tmp_path: Path
) -> None:
    """Bars the user turned off stay off; a timeout the user set on the client comes back."""
    result = run_script(
        hub_env,
        tmp_path,
        """
        import httpx2
        from huggingface_hub.utils import disable_progress_bars
        disable_progress_bars()
        get_session().timeout = httpx2.Timeout(42.0)
        target = HubTarget("hf://datasets/org/ds", timeout=None)
        target.ensure()
        target.commit([staged("notes.txt", b"hello\\n")], [], "test")
        out["after"] = state()
        """,
    )
    assert result["after"] == {
        "bars_off": True,
        "timeout": "Timeout(timeout=42.0)",
    }


def test_the_timeout_bounds_each_request(
    emu: HubEmulator, hub_env: dict[str, str], tmp_path: Path
) -> None:
    """Answers that come after 3 s with a 0.5 s timeout are given up and the requests retried.

    The head request sets its timeout itself; the LFS upload takes the shared client's.
    """
    emu.inject("/api/datasets/org/ds/revision/", "GET", delay=3.0)
    emu.inject("/_lfs/", "PUT", delay=3.0)
    emu.create_repo("org/ds")
    result = run_script(
        hub_env,
        tmp_path,
        """
        import time
        target = HubTarget("hf://datasets/org/ds", timeout=0.5)
        start = time.monotonic()
        out["head"] = target.head()
        target.stage(staged("data/train-0.parquet", b"PAR1\\0" * 5000))
        out["seconds"] = time.monotonic() - start
        """,
    )
    assert result["head"] == emu.head("org/ds")
    requests = emu.stats["requests"]
    assert requests["GET repo_info"] == 2 and requests["PUT lfs_upload"] == 2, requests
    assert result["seconds"] < 4.0


def test_card_metadata_is_what_datasets_reads_back(
    synthetic: GeneratedDataset, tmp_path: Path
) -> None:
    """The card's dataset_info, written through `datasets`' public API, reads back identical."""
    out = tmp_path / "hf"
    convert(
        synthetic.root,
        out,
        scan_options=ScanOptions(derivatives=("all",)),
        progress=False,
        workers=1,
    )
    card = DatasetCard.load(out / "README.md")
    info = DatasetInfosDict.from_dataset_card_data(card.data)["default"]
    shards = sorted((out / "data").glob("*.parquet"))
    assert info.features == Features.from_arrow_schema(pq.read_schema(shards[0]))
    rows = sum(pq.ParquetFile(p).metadata.num_rows for p in shards)
    assert info.splits is not None and info.splits["train"].num_examples == rows
