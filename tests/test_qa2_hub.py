"""Publishing to and reading from the Hub, found in QA: a branch (``@REVISION``), and the
lines that say why a published dataset cannot be read."""

from __future__ import annotations

from pathlib import Path

from bids2hf.model.format import USER_END, USER_START
from bids2hf.testing.synthetic import GeneratedDataset
from helpers import error_line, named_card, run_bids2hf, tree, with_sitecustomize
from hub_emulator import HubEmulator

ALL = ("--derivatives", "all", "-q")
URL = "hf://datasets/org/ds"


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


def _with_section(card: bytes, text: str) -> bytes:
    """``card`` with its user section holding ``text``."""
    start, end = USER_START.encode(), USER_END.encode()
    i, j = card.index(start) + len(start), card.index(end)
    return card[:i] + text.encode() + card[j:]


#: A dataset README that quotes the card's own code samples (the card quotes the README)
_README_QUOTING = """About this dataset.

```python
ds = load_dataset("ORG/NAME", split="train")
```

pip install bids2hf && bids2hf export hf://datasets/ORG/NAME ./bids
"""


def test_push_names_the_repository_in_the_card(
    emu: HubEmulator, hub_env: dict[str, str], bids_copy: Path, tmp_path: Path
) -> None:
    """QA: a folder converted locally, then pushed, published a card whose code samples said
    ``load_dataset("ORG/NAME")`` and ``bids2hf export hf://datasets/ORG/NAME``. They now name
    the repository, as a conversion straight to it writes them; the dataset's README quoted in
    the card, the user's own section and the folder are left as they are, and ``--dry-run``
    says what a push would do."""
    (bids_copy / "README").write_text(_README_QUOTING)
    out = tmp_path / "out"
    run_bids2hf("convert", bids_copy, out, "-q", env=hub_env)
    local = _with_section((out / "README.md").read_bytes(), '\nNot `load_dataset("ORG/NAME")`\n')
    (out / "README.md").write_bytes(local)
    run_bids2hf("push", out, URL, "-q", env=hub_env)
    published = emu.read_file("org/ds", "README.md").decode()
    direct = tmp_path / "direct"
    run_bids2hf("convert", bids_copy, URL.replace("org/ds", "org/direct"), "-q",
                "--staging", direct, env=hub_env)  # fmt: skip
    straight = emu.read_file("org/direct", "README.md").decode()
    samples = [line for line in published.splitlines() if "org/ds" in line]
    assert samples == [line.replace("org/direct", "org/ds") for line in straight.splitlines()
                       if "org/direct" in line]  # fmt: skip
    assert 'ds = load_dataset("org/ds", split="train")        # or streaming=True' in published
    assert "pip install bids2hf && bids2hf export hf://datasets/org/ds ./bids" in published
    assert published.count("ORG/NAME") == 3, "the README quoted and the user's section are kept"
    assert (out / "README.md").read_bytes() == local, "the folder is only read"
    dry = run_bids2hf("push", out, URL, "--dry-run", env=hub_env)
    assert "would upload 0 file(s)" in dry.stdout, dry.stdout
    emu.reset_stats()
    run_bids2hf("push", out, URL, "-q", env=hub_env)
    assert emu.stats["requests"]["POST commit"] == 0, "a re-push finds the card up to date"


#: sitecustomize: push as bids2hf did before it named the repository in the card
_PUSH_WITHOUT_NAMING = """
import contextlib
import bids2hf.publish.pipeline as pipeline

@contextlib.contextmanager
def _as_it_is(files, repo_id):
    yield list(files)

pipeline.card_naming_repository = _as_it_is
"""


def test_a_card_pushed_by_the_earlier_version_is_no_local_edit(
    emu: HubEmulator, hub_env: dict[str, str], synthetic: GeneratedDataset, tmp_path: Path
) -> None:
    """Review: the folder's card is recorded at each push as pushed, now named; one pushed by
    the version before, unnamed, with a section written on the Hub since, made the next push
    warn that the folder's section had been edited here. Nothing was."""
    earlier = with_sitecustomize(tmp_path, _PUSH_WITHOUT_NAMING, hub_env)
    out = tmp_path / "out"
    run_bids2hf("convert", synthetic.root, out, "-q", env=hub_env)
    run_bids2hf("push", out, URL, "-q", env=earlier)
    assert b'load_dataset("ORG/NAME"' in emu.read_file("org/ds", "README.md")
    hub = _with_section(emu.read_file("org/ds", "README.md"), "\nwritten on the Hub\n")
    emu.upload_bytes("org/ds", {"README.md": hub})
    proc = run_bids2hf("push", out, URL, env=hub_env)
    assert "edited here" not in proc.stderr, proc.stderr
    assert emu.read_file("org/ds", "README.md") == named_card(hub, "org/ds")


def test_push_keeps_the_user_section_written_on_the_hub(
    emu: HubEmulator, hub_env: dict[str, str], synthetic: GeneratedDataset, tmp_path: Path
) -> None:
    """README: 'when publishing, the section is taken from the destination's card, so an edit
    made on the Hub is kept'. push uploaded the folder's card as it was, replacing the text
    written on the Hub (convert kept it). A section edited locally, with the Hub's still the
    placeholder, is the one published."""
    out = tmp_path / "out"
    run_bids2hf("convert", synthetic.root, out, "-q", env=hub_env)
    local_card = (out / "README.md").read_bytes()
    mine = _with_section(local_card, "\nWritten locally.\n")
    (out / "README.md").write_bytes(mine)
    run_bids2hf("push", out, URL, "-q", env=hub_env)
    assert emu.read_file("org/ds", "README.md") == named_card(mine, "org/ds")

    theirs = _with_section(
        named_card(mine, "org/ds"), "\nKnown issue: sub-02's T2w is blurred (written on the Hub)\n"
    )
    emu.upload_bytes("org/ds", {"README.md": theirs})
    run_bids2hf("push", out, URL, "-q", env=hub_env)
    assert emu.read_file("org/ds", "README.md") == theirs
    emu.reset_stats()
    proc = run_bids2hf("push", out, URL, "-q", env=hub_env)
    assert emu.stats["requests"]["POST commit"] == 0, proc.stdout
    assert emu.read_file("org/ds", "README.md") == theirs
    assert (out / "README.md").read_bytes() == mine, "the folder is only read"


_READ_PINNED = """
import sys
from huggingface_hub import HfApi
from bids2hf.model.format import MANIFEST_PATH
from bids2hf.readback.published import open_dataset

dataset = open_dataset("hf://datasets/org/ds")
before = dataset.fs.cat(dataset.path(MANIFEST_PATH))
HfApi().delete_file(MANIFEST_PATH, "org/ds", repo_type="dataset")  # a push meanwhile
after = dataset.fs.cat(dataset.path(MANIFEST_PATH))
print(dataset.root)
print("same" if before == after and before else "changed")
"""


def test_export_and_verify_read_one_commit(
    emu: HubEmulator, hub_env: dict[str, str], synthetic: GeneratedDataset, tmp_path: Path
) -> None:
    """A published dataset is read at the commit it was at when opened (export, verify): a
    commit made meanwhile (a push while an export runs) changes nothing they read."""
    import subprocess
    import sys

    run_bids2hf("convert", synthetic.root, URL, "-q", env=hub_env)
    proc = subprocess.run(
        [sys.executable, "-c", _READ_PINNED], capture_output=True, text=True, env=hub_env
    )
    assert proc.returncode == 0, proc.stderr
    root, verdict = proc.stdout.split()
    assert root.startswith("datasets/org/ds@") and len(root.split("@")[1]) == 40, root
    assert verdict == "same"


def test_a_malformed_url_or_an_unreachable_hub_is_one_line(
    emu: HubEmulator, hub_env: dict[str, str], tmp_path: Path
) -> None:
    """`hf://datasets/onlyname` (no ORG/NAME) and a Hub that cannot be reached are named in
    one line, exit 2, for export and verify (they ended in 'internal error')."""
    out = tmp_path / "out"
    for url in ("hf://datasets/onlyname", "hf://onlyname"):
        line = error_line(run_bids2hf("export", url, out, "-q", env=hub_env, check=False), url)
        assert "hf://datasets/ORG/NAME" in line, line
    down = {**hub_env, "HF_ENDPOINT": "http://127.0.0.1:9"}  # nothing listens on port 9
    line = error_line(run_bids2hf("export", URL, out, "-q", env=down, check=False), URL)
    assert "cannot be read" in line, line
    assert not out.exists()


def test_push_publishes_a_section_edited_here_since_the_last_push(
    emu: HubEmulator, hub_env: dict[str, str], synthetic: GeneratedDataset, tmp_path: Path
) -> None:
    """Once the Hub's section held text, a later edit made in the folder was never pushed (the
    destination's section always won, silently). The folder's edit goes up when the Hub still
    holds what bids2hf pushed; when both were edited, the Hub's is kept with a warning."""
    out = tmp_path / "out"
    run_bids2hf("convert", synthetic.root, out, "-q", env=hub_env)
    card = (out / "README.md").read_bytes()
    (out / "README.md").write_bytes(_with_section(card, "\nA\n"))
    run_bids2hf("push", out, URL, "-q", env=hub_env)
    b = _with_section(card, "\nB\n")
    (out / "README.md").write_bytes(b)
    run_bids2hf("push", out, URL, "-q", env=hub_env)
    assert emu.read_file("org/ds", "README.md") == named_card(b, "org/ds")
    hub = _with_section(named_card(card, "org/ds"), "\nwritten on the Hub\n")
    emu.upload_bytes("org/ds", {"README.md": hub})
    (out / "README.md").write_bytes(_with_section(card, "\nC\n"))
    proc = run_bids2hf("push", out, URL, env=hub_env)
    assert emu.read_file("org/ds", "README.md") == hub
    assert "the destination's is kept" in proc.stderr, proc.stderr
    # The Hub still holds its text, which the folder never had: a new edit here is no
    # successor of it, and is not pushed over it either.
    (out / "README.md").write_bytes(_with_section(card, "\nD\n"))
    proc = run_bids2hf("push", out, URL, env=hub_env)
    assert emu.read_file("org/ds", "README.md") == hub
    assert "the destination's is kept" in proc.stderr, proc.stderr
