"""The stateless pieces of the fsspec source (bids/remote_files, bids/remote_reads), without a
file system: what a listing gives, and which ranges are fetched ahead."""

from __future__ import annotations

from bids2hf.bids.remote_files import Listed, access_hint, listing_from_find, walked_from_listing
from bids2hf.bids.remote_reads import differs, prefetch_ranges, ranges
from bids2hf.model.rows import FileRef


def test_ranges_cover_the_file_in_chunks() -> None:
    assert list(ranges(10, 4)) == [(0, 4), (4, 8), (8, 10)]
    assert list(ranges(0, 4)) == []


def test_prefetch_stops_at_the_limit_and_skips_what_is_ahead_or_repeated() -> None:
    a, b = FileRef("a", 6, 0), FileRef("b", 6, 0)
    got = prefetch_ranges([a, a, b], ahead={(a, 0, 4)}, ahead_bytes=4, limit=10, chunk=4)
    # a's second range (2 bytes), a again (nothing new), then b's first range (4 bytes): 10
    assert got == [(a, 4, 6), (b, 0, 4)]


def test_listing_keeps_files_under_the_root_and_walks_past_vcs_folders() -> None:
    found = {
        "bkt/ds/sub-01/x.nii.gz": {"size": 3, "ETag": '"e1"'},
        "bkt/ds/sub-01/": {"size": 0},  # a console's folder placeholder
        "bkt/ds/.git/HEAD": {"size": 1, "ETag": "e2"},
        "bkt/ds/deriv": {"size": 0, "type": "directory"},
        "bkt/other/y": {"size": 1},
    }
    listing = listing_from_find(found, "bkt/ds")
    assert listing == {
        "sub-01/x.nii.gz": Listed(3, 0, '"e1"'),
        ".git/HEAD": Listed(1, 0, "e2"),
    }
    walked = walked_from_listing(listing)
    assert [(w.relpath, w.vcs_dir, w.version) for w in walked] == [
        (".git/", True, ""),
        ("sub-01/x.nii.gz", False, '"e1"'),
    ]


def test_a_change_is_another_size_or_version() -> None:
    ref = FileRef("a", 3, 0, '"e1"')
    assert not differs({"size": 3, "ETag": '"e1"'}, ref)
    assert differs({"size": 4, "ETag": '"e1"'}, ref)
    assert differs({"size": 3, "ETag": '"e2"'}, ref)
    assert not differs({"size": 3, "ETag": '"e2"'}, FileRef("a", 3, 0))  # local: size only


def test_the_access_hint_names_how_the_source_was_read() -> None:
    assert "--source-anon" in access_hint(anonymous=True, anon_asked=True)
    assert "no AWS credentials" in access_hint(anonymous=True, anon_asked=False)
    assert "check the credentials" in access_hint(anonymous=False, anon_asked=False)
