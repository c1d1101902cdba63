"""Issue 13 (A): the complete card, written by ``bids2hf convert`` itself (not card_render alone)."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from bids2hf.report.card_facts import USER_END, USER_START
from helpers import run_bids2hf
from hub_emulator import HubEmulator


def test_card_has_facts_and_keeps_user_section(bids_copy: Path, tmp_path: Path) -> None:
    desc_path = bids_copy / "dataset_description.json"
    desc = json.loads(desc_path.read_text())
    desc.update(
        License="CC-BY-4.0",
        Authors=["Ada Lovelace", "Alan Turing"],
        DatasetDOI="doi:10.18112/openneuro.ds000001.v1.0.0",
        HowToAcknowledge="Cite the paper.",
        Funding=["Grant 42"],
        EthicsApprovals=["IRB 7"],
        ReferencesAndLinks=["https://example.org/paper"],
    )
    desc_path.write_text(json.dumps(desc))
    (bids_copy / "README").write_text("A study of things.\n\nSecond paragraph.\n")
    out = tmp_path / "hf"
    first = run_bids2hf("convert", bids_copy, out, "-j", "1", check=False)
    assert first.returncode == 0, first.stderr
    card = (out / "README.md").read_text()
    manifest = (out / "bids2hf" / "manifest.jsonl").read_bytes()
    assert "license: cc-by-4.0" in card
    for text in (
        "A study of things.",
        "**Authors:** Ada Lovelace, Alan Turing",
        "**How to acknowledge:** Cite the paper.",
        "- Grant 42",
        "- IRB 7",
        "- https://example.org/paper",
        "10.18112/openneuro.ds000001.v1.0.0",
        "## Participants",
        f"sha256 `{hashlib.sha256(manifest).hexdigest()}`",
        "BIDS version",
        "| typical shape | voxel size (mm) | TR (s) |",
        USER_START,
        USER_END,
    ):
        assert text in card, text
    # Header facts from the scan's header check (no extra read): every T1w row has a shape.
    t1w = next(line for line in card.splitlines() if line.startswith("| anat/T1w |"))
    assert re.search(r"\| \d+x\d+x\d+ \| [\d.]+x[\d.]+x[\d.]+ \|", t1w), t1w
    # participants: aggregates only, never a participant id
    assert "sub-01" not in card.split("## Participants")[1].split("##")[0]

    # The user writes between the markers; a re-run after a source change keeps it verbatim.
    mine = "My notes: **keep me** <b>exactly</b>.\n"
    start, end = card.index(USER_START) + len(USER_START), card.index(USER_END)
    (out / "README.md").write_text(card[:start] + "\n" + mine + card[end:])
    (bids_copy / "README").write_text("A new description.\n")
    second = run_bids2hf("convert", bids_copy, out, "-j", "1", "--overwrite", check=False)
    assert second.returncode == 0, second.stderr
    again = (out / "README.md").read_text()
    assert "A new description." in again and "A study of things." not in again
    assert mine in again.split(USER_START)[1].split(USER_END)[0]


def test_broken_markers_refused_in_one_line(bids_copy: Path, tmp_path: Path) -> None:
    out = tmp_path / "hf"
    assert run_bids2hf("convert", bids_copy, out, "-j", "1", check=False).returncode == 0
    card = (out / "README.md").read_text()
    broken = card.replace(USER_END, "")
    (out / "README.md").write_text(broken)
    (bids_copy / "README").write_text("Changed.\n")
    result = run_bids2hf("convert", bids_copy, out, "-j", "1", "--overwrite", check=False)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert (out / "README.md").read_text() == broken  # the user's text is not lost


def test_user_section_written_on_the_hub_survives_a_rerun(
    emu: HubEmulator, hub_env: dict[str, str], bids_copy: Path, tmp_path: Path
) -> None:
    url = "hf://datasets/org/ds"
    first = run_bids2hf("convert", bids_copy, url, "-q", "-j", "1", env=hub_env)
    assert first.returncode == 0, first.stderr
    card = emu.files("org/ds")["README.md"].read_text()
    assert "org/ds" in card  # the loading snippet names the real repository
    # Someone edits the card on the Hub (not in the staging folder).
    mine = "\nEdited on the Hub: *keep me*.\n"
    start, end = card.index(USER_START) + len(USER_START), card.index(USER_END)
    emu.upload_bytes("org/ds", {"README.md": (card[:start] + mine + card[end:]).encode()})
    (bids_copy / "README").write_text("Changed description.\n")
    second = run_bids2hf("convert", bids_copy, url, "-q", "-j", "1", env=hub_env)
    assert second.returncode == 0, second.stderr
    again = emu.files("org/ds")["README.md"].read_text()
    assert "Changed description." in again
    assert again.split(USER_START)[1].split(USER_END)[0] == mine
