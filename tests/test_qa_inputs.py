"""Awkward inputs a new data steward meets, found in QA: each gets one line, exit 2.

Text that is not UTF-8 (a participants.tsv saved by a spreadsheet in Latin-1, a sidecar or a
config written by an old editor), and an output folder inside the BIDS folder it is converted
from (a later run would read the output as part of the dataset).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bids2hf.errors import InputError
from bids2hf.plan.config import load_config
from helpers import FAST, Cli, error_line, manifest, snapshot, without_state

T1W_JSON = "sub-01/ses-1/anat/sub-01_ses-1_T1w.json"
SESSIONS = "sub-01/sub-01_sessions.tsv"


@pytest.mark.parametrize("relpath", ["participants.tsv", T1W_JSON, SESSIONS, "participants.json"])
def test_text_not_utf8_is_one_line(cli: Cli, bids_copy: Path, tmp_path: Path, relpath: str) -> None:
    """A metadata file in Latin-1 is named, with the fix, in one line (no internal error)."""
    path = bids_copy / relpath
    path.write_bytes(path.read_bytes().replace(b"\n", " caf\xe9\n".encode("latin-1"), 1))
    out = tmp_path / "out"
    line = error_line(cli("convert", bids_copy, out, *FAST), relpath, "UTF-8")
    assert "internal error" not in line
    assert not out.exists()
    result = cli("inspect", bids_copy, "-q")
    assert result.exit_code == 2, result.output
    assert relpath in result.output and "Traceback" not in result.output


def test_config_not_utf8_is_one_line(cli: Cli, bids_copy: Path, tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_bytes("# caf\xe9\nother_files = false\n".encode("latin-1"))
    out = tmp_path / "out"
    error_line(cli("convert", bids_copy, out, *FAST, "--config", config), config, "UTF-8")
    assert not out.exists()


@pytest.mark.parametrize("where", [".", "out", "derivatives/hf"])
def test_output_inside_source_is_refused(cli: Cli, bids_copy: Path, where: str) -> None:
    """Converting into the BIDS folder itself (or a folder in it) is refused before anything is
    written: the output would become part of the dataset on the next run (and --overwrite would
    then delete its own files while reading them)."""
    before = snapshot(bids_copy)
    out = bids_copy / where
    error_line(cli("convert", bids_copy, out, *FAST), out.resolve(), "outside")
    assert snapshot(bids_copy) == before


def test_file_url_destination_is_a_local_folder(
    cli: Cli, bids_copy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`file:///abs/out` is the local folder /abs/out (it made a folder named `file:` in the
    working folder and ended in an internal error), and one inside the BIDS folder is refused."""
    out, clean = tmp_path / "out", tmp_path / "clean"
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    result = cli("convert", bids_copy, f"file://{out}", *FAST)
    assert result.exit_code == 0, result.output
    assert cli("convert", bids_copy, clean, *FAST).exit_code == 0
    assert without_state(snapshot(out) or {}) == without_state(snapshot(clean) or {})
    assert not any(work.iterdir())
    inside = bids_copy / "derivatives" / "hf"
    error_line(cli("convert", bids_copy, f"file://{inside}", *FAST), inside.resolve(), "outside")


def test_fifo_is_listed_as_left_out(cli: Cli, bids_copy: Path, tmp_path: Path) -> None:
    """A named pipe (or socket) in the dataset has no content to store; it was dropped without
    a word ("left out: nothing"). It is now listed as left out, with the reason, and warned."""
    fifo = "sub-01/ses-1/anat/sub-01_ses-1_T2star.nii.gz"
    os.mkfifo(bids_copy / fifo)
    out = tmp_path / "out"
    result = cli("convert", bids_copy, out, *FAST)
    assert result.exit_code == 0, result.output
    assert fifo in result.output  # the warning names it
    left = {e.path: e for e in manifest(out) if e.placement == "left_out"}
    assert fifo in left and "not a regular file" in (left[fifo].reason or "")
    assert cli("verify", bids_copy, out, "-q").exit_code == 0


def test_description_without_name_or_version_is_a_warning(
    cli: Cli, bids_copy: Path, tmp_path: Path
) -> None:
    """`{}` converts (nothing is lost) but is named with what BIDS requires; a JSON value that
    is no object is refused with an example of what it should hold."""
    description = bids_copy / "dataset_description.json"
    description.write_text("{}")
    result = cli("inspect", bids_copy)
    assert result.exit_code == 0, result.output
    assert "dataset_description.json: no Name and no BIDSVersion, which BIDS requires" in (
        result.output
    )
    assert cli("convert", bids_copy, tmp_path / "out", *FAST).exit_code == 0
    description.write_text('{"Name": "x", "BIDSVersion": "1.10.0"}')
    assert "BIDSVersion" not in cli("inspect", bids_copy).output
    description.write_text('{"Name": "x", "BIDSVersion": 1.8}')  # there, if not as text
    assert "which BIDS requires" not in cli("inspect", bids_copy).output
    description.write_text("[1, 2]")
    line = error_line(cli("inspect", bids_copy), "dataset_description.json", "JSON object")
    assert '"BIDSVersion": "1.10.0"' in line


@pytest.mark.parametrize("into", [".", "bids", "sub/folder"])
def test_export_into_its_own_output_is_refused(
    cli: Cli, bids_copy: Path, tmp_path: Path, into: str
) -> None:
    """`export OUT OUT` (or a folder inside OUT) would mix the BIDS tree with the shards, bids/
    and the card: refused in one line before anything is written."""
    out = tmp_path / "out"
    assert cli("convert", bids_copy, out, *FAST).exit_code == 0
    before = snapshot(out)
    line = error_line(cli("export", out, out / into, "-q"), "inside the converted dataset")
    assert "outside" in line
    assert snapshot(out) == before
    back = tmp_path / "back"  # beside it is fine
    assert cli("export", f"file://{out}", back, "-q").exit_code == 0
    assert (back / "dataset_description.json").is_file()


def test_utf16_table_and_a_folder_as_config(cli: Cli, bids_copy: Path, tmp_path: Path) -> None:
    """A participants.tsv saved as Excel's "Unicode text" (UTF-16) is named as such, with the
    iconv that fixes it; a folder given as --config is named as a folder."""
    table = bids_copy / "participants.tsv"
    table.write_bytes(table.read_text(encoding="utf-8").encode("utf-16"))
    out = tmp_path / "out"
    line = error_line(cli("convert", bids_copy, out, *FAST), "participants.tsv", "UTF-16")
    assert "iconv -f utf-16" in line
    folder = tmp_path / "configs"
    folder.mkdir()  # (the CLI's option refuses a folder itself; the Python API names it)
    with pytest.raises(InputError, match="is a folder; give the path of the TOML config file"):
        load_config(folder)
