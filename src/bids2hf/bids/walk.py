"""The one walk of a BIDS folder (scan and verify share it): .bidsignore and --exclude, VCS folders, symlinks."""

from __future__ import annotations

import fnmatch
import os
import stat
from collections.abc import Sequence
from pathlib import Path

from bids2hf.errors import InputError
from bids2hf.model.format import VCS_DIRS
from bids2hf.model.inventory import Problem, Severity
from bids2hf.model.source import Source, Walked  # [issue 15] Walked moved to model/

__all__ = [
    "FOLDER_SEEN",
    "LINK_INTO_DATASET",
    "LINK_OUT_OF_DATASET",
    "NOT_REGULAR",
    "Walked",
    "bidsignore_patterns",
    "first_match",
    "not_followed_problem",
    "walk",
]


#: Reasons a folder is not read. They go into the published manifest, so they never name a path
#: outside the dataset (which could reveal a local user name).
LINK_INTO_DATASET = (
    "directory symlink back into the dataset (not followed: it would read a folder twice)"
)
LINK_OUT_OF_DATASET = "directory symlink leading out of the dataset (not followed)"
FOLDER_SEEN = "folder already read under another name (a bind mount loop?), not read again"
#: Why a named pipe, socket or device is left out: it has no content to store (and reading a
#: pipe would wait for a writer forever).
NOT_REGULAR = "not a regular file (a named pipe, socket or device): no content to store"


def _link_reason(root: Path, link: str) -> tuple[str, str]:
    """Why a directory symlink is not followed: (reason for the manifest, detail for the user)."""
    target = Path(os.path.realpath(link))
    if target == root or target.is_relative_to(root):
        inside = target.relative_to(root).as_posix()
        where = "the dataset's top folder" if inside == "." else f"{inside}/"
        return LINK_INTO_DATASET, f"a directory symlink to {where} (a loop, or a folder read twice)"
    return LINK_OUT_OF_DATASET, f"a directory symlink to {target}, outside the dataset"


def walk(root: str | os.PathLike[str], details: dict[str, str] | None = None) -> list[Walked]:
    """Every file under ``root``, sorted by relative path, as ``scan`` and ``verify`` see them.

    Symlinked files are followed wherever they point (git-annex/DataLad keep content in
    ``.git/annex`` or elsewhere). Symlinked folders are never followed: inside the dataset they
    would read a folder twice or loop (``loop -> ..``), outside it they could pull in anything.
    A real folder already read (same device and inode: a bind mount) is not read again either.
    Such folders are returned with ``not_followed`` set; ``details`` (if given) receives, for
    each, a longer explanation for the user (which may name paths outside the dataset).
    Version-control folders are returned, not entered.

    Raises:
        InputError: ``root`` itself cannot be listed.
    """
    root = Path(root)
    real_root = root.resolve()
    out: list[Walked] = []
    try:
        top = root.stat()
    except OSError as exc:
        raise InputError(f"{root}: cannot be read ({exc.strerror or exc})") from None
    seen = {(top.st_dev, top.st_ino)}
    stack = [""]
    while stack:
        rel_dir = stack.pop()
        full_dir = root / rel_dir if rel_dir else root
        try:
            entries = sorted(os.scandir(full_dir), key=lambda e: e.name)
        except PermissionError:
            if not rel_dir:
                raise InputError(
                    f"{root}: cannot be listed (permission denied); fix its permissions "
                    "(chmod a+rx)"
                ) from None
            out.append(Walked(rel_dir, unreadable=True))
            continue
        for entry in entries:
            rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
            is_link = entry.is_symlink()
            try:
                is_dir = entry.is_dir(follow_symlinks=True)
            except OSError:  # a symlink loop (ELOOP) is no folder; stat below says what it is
                is_dir = False
            if is_dir:
                folder = _folder(entry, rel, is_link, real_root, seen, details)
                if folder is None:
                    stack.append(rel)
                else:
                    out.append(folder)
                continue
            out.append(_file(entry, rel, is_link))
    out.sort(key=lambda w: w.relpath)
    return out


def _folder(
    entry: os.DirEntry[str],
    rel: str,
    is_link: bool,
    real_root: Path,
    seen: set[tuple[int, int]],
    details: dict[str, str] | None,
) -> Walked | None:
    """None for a folder to enter (now in ``seen``); else the entry that stands for it."""
    if entry.name in VCS_DIRS:
        return Walked(rel + "/", vcs_dir=True)
    if is_link:
        reason, detail = _link_reason(real_root, entry.path)
        if details is not None:
            details[rel + "/"] = detail
        return Walked(rel + "/", is_symlink=True, not_followed=reason)
    try:
        st = entry.stat(follow_symlinks=False)
    except OSError:
        return Walked(rel, unreadable=True)
    if (st.st_dev, st.st_ino) in seen:
        if details is not None:
            details[rel + "/"] = "a folder already read under another name"
        return Walked(rel + "/", not_followed=FOLDER_SEEN)
    seen.add((st.st_dev, st.st_ino))
    return None


def _file(entry: os.DirEntry[str], rel: str, is_link: bool) -> Walked:
    """The entry for a file (symlinks followed); what is no regular file (a fifo) is not read
    and carries ``not_followed`` = :data:`NOT_REGULAR`."""
    try:
        st = entry.stat(follow_symlinks=True)
    except OSError as exc:
        # A symlink to nothing (unfetched git-annex content) or to itself (ELOOP).
        if is_link or isinstance(exc, FileNotFoundError):
            return Walked(rel, is_symlink=is_link, broken=True)
        return Walked(rel, unreadable=True)
    if not stat.S_ISREG(st.st_mode):
        return Walked(rel, is_symlink=is_link, not_followed=NOT_REGULAR)
    readable = os.access(entry.path, os.R_OK)
    return Walked(rel, st.st_size, st.st_mtime_ns, is_link, unreadable=not readable)


def not_followed_problem(
    folders: Sequence[str],
    details: dict[str, str],
    consequence: str = "listed as left out in the manifest",
) -> Problem:
    """One warning for every folder that :func:`walk` did not enter (``folders`` non-empty)."""
    first = folders[0]
    return Problem(
        Severity.WARNING,
        "symlink-not-followed",
        first.rstrip("/"),
        f"{details.get(first, 'a folder')}, not followed; {len(folders)} folder(s) not read in all",
        f"{consequence}; copy a linked folder into the dataset to convert its files, or remove "
        "a link that loops",
    )


def bidsignore_patterns(source: Source) -> list[str]:
    """The patterns of the source's ``.bidsignore`` (comments and blank lines dropped); [] if it
    is absent or unreadable (the walk reports an unreadable file). Never raises."""
    # [issue 15] read through the source: a local folder or an fsspec URL
    if not source.is_file(".bidsignore"):
        return []
    try:
        text = source.read_text(".bidsignore", encoding="utf-8", errors="replace")
    except OSError:
        return []  # the walk reports it as unreadable
    patterns = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            patterns.append(line)
    return patterns


def first_match(relpath: str, patterns: Sequence[str]) -> str | None:
    """The first gitignore-style pattern that matches ``relpath`` (or one of its folders), or
    None. A pattern with a slash is anchored at the root; one without matches any path part.
    Never raises."""
    parts = relpath.split("/")
    for pattern in patterns:
        pat = pattern.strip("/")
        anchored = pattern.startswith("/") or "/" in pat
        for i in range(len(parts)):
            candidates = ["/".join(parts[: i + 1])] if anchored else [parts[i]]
            if not anchored:
                candidates.append("/".join(parts[: i + 1]))
            if any(fnmatch.fnmatchcase(c, pat) for c in candidates):
                return pattern
        if fnmatch.fnmatchcase(relpath, pat):
            return pattern
    return None
