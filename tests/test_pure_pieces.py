"""Unit tests of small pure pieces: size parsing and printing, .bidsignore/--exclude matching,
the card's license mapping, the publisher's classification of planned shards."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from bids2hf.bids.source import LocalSource
from bids2hf.bids.walk import bidsignore_patterns, first_match
from bids2hf.model.rows import ShardPlan
from bids2hf.model.state import ShardRecord
from bids2hf.publish.compare import classify, same_content
from bids2hf.publish.targets.base import RemoteFile
from bids2hf.report.card_facts import hub_license, license_name
from bids2hf.units import human_bytes, parse_size


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1000", 1000),
        ("0", 0),
        ("500MB", 500_000_000),
        ("500mb", 500_000_000),
        ("500M", 500_000_000),
        ("1.5GB", 1_500_000_000),
        ("2kB", 2000),
        ("1TB", 10**12),
        ("1KiB", 1024),
        ("1MiB", 2**20),
        ("1GiB", 2**30),
        ("1gi", 2**30),
        ("1TiB", 2**40),
        (" 8 MiB ", 8 * 2**20),
        (".5k", 500),
        ("12B", 12),
    ],
)
def test_parse_size(text: str, value: int) -> None:
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "MB", "1PB", "-1MB", "1 M B", "one", "1e3", "1.2.3GB", "1bi"])
def test_parse_size_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="not a size"):
        parse_size(text)


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0 B"),
        (999, "999 B"),
        (1000, "1.0 kB"),
        (1_234_567, "1.2 MB"),
        (5 * 10**9, "5.0 GB"),
        (3 * 10**12, "3.0 TB"),
        (4 * 10**15, "4000.0 TB"),
    ],
)
def test_human_bytes(n: int, text: str) -> None:
    assert human_bytes(n) == text


@pytest.mark.parametrize(
    ("relpath", "patterns", "match"),
    [
        ("sub-01/anat/x.nii", ["*.nii"], "*.nii"),  # unanchored: any path part
        ("sub-01/anat/x.nii", ["anat"], "anat"),  # a folder name anywhere ignores its files
        ("sub-01/anat/x.nii", ["anat/"], "anat/"),  # a folder pattern: anchored at the root
        ("anat/x.nii", ["anat/"], "anat/"),
        ("sub-01/anat/x.nii", ["/anat"], None),  # anchored: only at the root
        ("anat/x.nii", ["/anat"], "/anat"),
        ("sub-01/anat/x.nii", ["sub-01/anat"], "sub-01/anat"),
        ("sub-01/anat/x.nii", ["sub-*/anat/*.nii"], "sub-*/anat/*.nii"),
        ("sub-01/anat/x.nii", ["func", "*.json"], None),
        ("sub-01/anat/x.nii", ["*.json", "x.*", "*.nii"], "x.*"),  # the first that matches
        ("extra_data/a/b.txt", ["extra_data"], "extra_data"),
        ("sub-01/extra_data_2/b.txt", ["extra_data"], None),  # whole parts, not prefixes
        ("Sub-01/x.nii", ["sub-*"], None),  # case-sensitive
    ],
)
def test_first_match(relpath: str, patterns: list[str], match: str | None) -> None:
    assert first_match(relpath, patterns) == match


def test_bidsignore_patterns(tmp_path: Path) -> None:
    assert bidsignore_patterns(LocalSource(tmp_path)) == []
    (tmp_path / ".bidsignore").write_text("# a comment\n\n  extra_data/  \n*_notes.txt\n #x\n")
    assert bidsignore_patterns(LocalSource(tmp_path)) == ["extra_data/", "*_notes.txt"]


@pytest.mark.parametrize(
    ("value", "license_id"),
    [
        ("CC0", "cc0-1.0"),
        ("cc0 1.0", "cc0-1.0"),
        ("Public Domain", "cc0-1.0"),
        ("public_domain", "cc0-1.0"),
        ("CC-BY-4.0", "cc-by-4.0"),
        ("CC BY 4.0", "cc-by-4.0"),
        ("cc_by_nc_sa_4.0", "cc-by-nc-sa-4.0"),
        (" PDDL ", "pddl"),
        ("ODbL-1.0", "odbl"),
        ("MIT", "mit"),
        ("my own license", "other"),
        ("", "unknown"),
        ("   ", "unknown"),
        (None, "unknown"),
        (["CC0"], "unknown"),
        (4, "unknown"),
    ],
)
def test_hub_license(value: object, license_id: str) -> None:
    # One mapping for the card and the report (card_facts); a missing License is "unknown", and
    # the card then puts no license in its YAML (tests/test_card_facts.py).
    assert hub_license(value)[0] == license_id


def _shard(name: str, content_id: str = "c1") -> ShardPlan:
    return ShardPlan(f"data/{name}.parquet", [], [], content_id, 10)


def _record(
    name: str, content_id: str = "c1", size: int = 100, sha: str | None = "aa"
) -> ShardRecord:
    return ShardRecord(f"data/{name}.parquet", content_id, size, sha)


def _names(shards: list[ShardPlan]) -> list[str]:
    return [s.path.removeprefix("data/").removesuffix(".parquet") for s in shards]


def test_classify_local_only() -> None:
    shards = [_shard("new"), _shard("done"), _shard("stale", "c2"), _shard("gone"), _shard("cut")]
    records = {
        r.path: r
        for r in (_record("done"), _record("stale"), _record("gone"), _record("cut", size=100))
    }
    sizes = {"data/done.parquet": 100, "data/stale.parquet": 100, "data/cut.parquet": 60}
    got = classify(shards, records, sizes, None)
    assert _names(got.reuse) == ["done"]
    assert _names(got.todo) == ["new", "stale", "gone", "cut"]  # planned order kept
    assert got.skip == [] and got.resubmit == []


def test_classify_with_a_remote() -> None:
    shards = [_shard(n) for n in ("uploaded", "local", "changed", "other", "unhashed")] + [
        _shard("stale", "c2")
    ]
    records = {
        r.path: r
        for r in (
            _record("uploaded"),
            _record("local"),
            _record("changed"),
            _record("other"),
            _record("unhashed", sha=None),
            _record("stale"),
        )
    }
    sizes = {r: 100 for r in records}
    remote = {
        "data/uploaded.parquet": RemoteFile("data/uploaded.parquet", 100, "aa"),
        "data/changed.parquet": RemoteFile("data/changed.parquet", 100, "bb"),
        "data/other.parquet": RemoteFile("data/other.parquet", 99, "aa"),
        "data/unhashed.parquet": RemoteFile("data/unhashed.parquet", 100, "aa"),
        "data/stale.parquet": RemoteFile("data/stale.parquet", 100, "aa"),
    }
    got = classify(shards, records, sizes, remote)
    assert _names(got.skip) == ["uploaded"]  # the very bytes are there
    # on disk but not (or not the same) on the remote: upload the local copy again
    assert _names(got.resubmit) == ["local", "changed", "other", "unhashed"]
    assert _names(got.todo) == ["stale"]  # the plan changed: the remote copy is no use
    assert got.reuse == []
    # Without the local files, what the remote lacks is written again.
    got = classify(shards, records, {}, remote)
    assert _names(got.skip) == ["uploaded"]
    assert _names(got.todo) == ["local", "changed", "other", "unhashed", "stale"]


def test_classify_skips_what_the_remote_holds_without_a_local_copy() -> None:
    """Staging may be cleared after upload: the remote's bytes count, the local file need not exist."""
    shards = [_shard("uploaded"), _shard("lost")]
    records = {r.path: r for r in (_record("uploaded"), _record("lost"))}
    remote = {"data/uploaded.parquet": RemoteFile("data/uploaded.parquet", 100, "aa")}
    got = classify(shards, records, {}, remote)
    assert _names(got.skip) == ["uploaded"]
    assert _names(got.todo) == ["lost"]  # neither on the remote nor on disk: written again
    assert got.resubmit == [] and got.reuse == []


def test_same_content_of_a_regular_hub_file_compares_git_blob_ids(tmp_path: Path) -> None:
    """Non-LFS files on the Hub carry a git blob sha1, not a sha256: compared with the local file."""
    local = tmp_path / "shard.parquet"
    local.write_bytes(b"x" * 100)
    other = "0" * 40
    blob = hashlib.sha1(b"blob 100\0" + b"x" * 100).hexdigest()
    assert same_content(RemoteFile("s", 100, git_oid=blob), 100, "aa", local)
    assert not same_content(RemoteFile("s", 100, git_oid=other), 100, "aa", local)
    assert not same_content(RemoteFile("s", 100, git_oid=blob), 100, "aa", None)  # nothing to hash
    assert not same_content(RemoteFile("s", 100, git_oid=blob), 100, None, local)  # no record
    assert not same_content(RemoteFile("s", 99, git_oid=blob), 100, "aa", local)  # size differs
    assert not same_content(None, 100, "aa", local)


@pytest.mark.parametrize(
    ("value", "slug"),
    [
        ("My Own License v2", "my-own-license-v2"),
        ("  Data Use Agreement (DUA) ", "data-use-agreement-dua"),
        ("ÄÖÜ", "custom"),
        ("", "custom"),
        ("x" * 63 + " y", "x" * 63),
        (None, "none"),
    ],
)
def test_license_name(value: object, slug: str) -> None:
    # The Hub wants a lower-case slug of at most 64 characters beside ``license: other``.
    assert license_name(value) == slug


def test_push_names_the_repository_only_in_the_card_s_own_samples(tmp_path: Path) -> None:
    """Review: the dataset's README quoted in the card, the user's section and the rest of the
    card kept ``ORG/NAME``; only the code samples of bids2hf's "## Loading" section (the last
    one: the user section comes before it) name the repository. Broken user-section markers are
    no reason to refuse the push (they were not, before the samples were named)."""
    from bids2hf.model.format import USER_END, USER_START
    from bids2hf.publish.push_card import card_naming_repository
    from bids2hf.publish.targets.base import StagedFile

    sample = 'ds = load_dataset("ORG/NAME", split="train")        # or streaming=True'
    export = "pip install bids2hf && bids2hf export hf://datasets/ORG/NAME ./bids"
    card = "\n".join([
        "# Title", "", "## Description", "", "```python", sample, "```", "", export, "",
        USER_START, "## Loading", sample, USER_END, USER_END, "",
        "## Loading", "", "```python", sample, "```", "", "```bash", export, "```", "",
        "## Columns", "", sample, "",
    ])  # fmt: skip
    path = tmp_path / "README.md"
    path.write_text(card)
    with card_naming_repository([StagedFile("README.md", path, path.stat().st_size, None)], "o/n") as (
        named,
    ):
        text = named.local.read_text()
    lines, before = text.split("\n"), card.split("\n")
    changed = [i for i, (a, b) in enumerate(zip(before, lines, strict=True)) if a != b]
    assert [lines[i] for i in changed] == [
        sample.replace("ORG/NAME", "o/n"),
        export.replace("ORG/NAME", "o/n"),
    ]
    assert all(i > before.index(USER_END) for i in changed)
    assert all(i < before.index("## Columns") for i in changed)
    with card_naming_repository([StagedFile("README.md", path, 1, None)], None) as (same,):
        assert same.local == path, "not a Hub repository: the card as it is"
