"""Publishing to and reading from the Hub, found in QA: a branch (``@REVISION``), and the
lines that say why a published dataset cannot be read."""

from __future__ import annotations

from pathlib import Path

from bids2hf.testing.synthetic import GeneratedDataset
from helpers import error_line, run_bids2hf, tree
from hub_emulator import HubEmulator

ALL = ("--derivatives", "all", "-q")


def test_convert_to_a_new_branch_and_read_it_back(
    emu: HubEmulator, hub_env: dict[str, str], synthetic: GeneratedDataset, tmp_path: Path
) -> None:
    """``hf://datasets/ORG/NAME@dev`` creates the branch ``dev`` and publishes there alone;
    export and verify read that branch (the emulator had no branch route, so this was untested:
    the run ended in 'internal error: HfHubHTTPError' against it)."""
    url = "hf://datasets/org/ds"
    run_bids2hf("convert", synthetic.root, url + "@dev", *ALL, env=hub_env)
    main_files = emu.commits("org/ds", branch="main")[0]["files"]
    assert not any(f.startswith("data/") for f in main_files), "main is left alone"
    out = tmp_path / "back"
    run_bids2hf("export", url + "@dev", out, "-q", env=hub_env)
    assert tree(out) == tree(synthetic.root)
    run_bids2hf("verify", synthetic.root, url + "@dev", "-q", env=hub_env)
    # The same command again: nothing to upload, the branch exists already.
    proc = run_bids2hf("convert", synthetic.root, url + "@dev", *ALL, env=hub_env)
    assert "uploaded 0 file(s)" in proc.stdout
    proc = run_bids2hf("export", url, tmp_path / "main", "-q", env=hub_env, check=False)
    error_line(proc, url)


def test_reading_with_a_refused_token_says_so(
    emu: HubEmulator, hub_env: dict[str, str], synthetic: GeneratedDataset, tmp_path: Path
) -> None:
    """export and verify with a token the Hub refuses (401) said 'no data/ folder or
    bids2hf/manifest.jsonl: not a bids2hf dataset' (fsspec's exists() takes every error for
    "not there"); a missing repository or revision said the same. Now each says what it is."""
    url = "hf://datasets/org/ds"
    run_bids2hf("convert", synthetic.root, url, "-q", env=hub_env)
    emu.tokens = {hub_env["HF_TOKEN"]}
    bad = {**hub_env, "HF_TOKEN": "expired-token"}
    out = tmp_path / "out"
    for args in (("export", url, out), ("verify", synthetic.root, url)):
        line = error_line(run_bids2hf(*args, "-q", env=bad, check=False), url)
        assert "not allowed to read it (HTTP 401)" in line and "HF_TOKEN" in line, line
        for missing in ("hf://datasets/org/nothing", url + "@nobranch"):
            cmd = [a if a != url else missing for a in args]
            line = error_line(run_bids2hf(*cmd, "-q", env=hub_env, check=False), missing)
            assert "no such repository or revision" in line, line
    assert not out.exists()
