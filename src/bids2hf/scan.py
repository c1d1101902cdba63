"""Walk a BIDS folder into an :class:`~bids2hf.inventory.Inventory`.

This is the only stage that looks at the source folder before writing: it lists every file,
decides where each one goes (a row, a dataset-level file, or left out with a reason), parses
names with the official schema, reads the small metadata files and checks NIfTI headers.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import stat
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from . import bids_schema
from .errors import InputError
from .inventory import Inventory, Placement, Problem, Severity, SourceFile
from .nifti_header import CheckLevel, check_nifti
from .privacy import lint_nifti_text, lint_sidecar
from .tabular import read_tsv

log = logging.getLogger(__name__)

OnInvalid = Literal["error", "skip", "keep"]

#: Folders that hold version-control bookkeeping, never data.
VCS_DIRS = frozenset({".git", ".datalad", ".svn", ".hg"})


@dataclass
class ScanOptions:
    """What to include and how strictly to check.

    Attributes:
        derivatives: derivative pipelines (folder names under ``derivatives/``) whose files join
            the rows; ``("all",)`` selects every pipeline.
        include_sourcedata: store ``sourcedata/`` as dataset-level files instead of leaving it out.
        exclude: glob patterns (on paths relative to the BIDS root) of files to leave out.
        on_invalid: what to do with files whose names are not valid BIDS.
        check: how thoroughly to check NIfTI files.
    """

    derivatives: Sequence[str] = ()
    include_sourcedata: bool = False
    exclude: Sequence[str] = ()
    on_invalid: OnInvalid = "error"
    check: CheckLevel = "header"


@dataclass
class Walked:
    """One entry found by :func:`walk`: a file, or a folder that was not entered.

    Folders that were not entered carry a trailing ``/`` in ``relpath``: version-control
    folders (``vcs_dir``) and folders given by ``not_followed`` (why they were not read).
    """

    relpath: str
    size: int = 0
    mtime_ns: int = 0
    is_symlink: bool = False
    broken: bool = False
    unreadable: bool = False
    vcs_dir: bool = False
    not_followed: str = ""

    @property
    def is_file(self) -> bool:
        """A regular file (or a symlink to one) whose size and mtime are known."""
        return not (self.broken or self.unreadable or self.vcs_dir or self.not_followed)


#: Reasons a folder is not read. They go into the published manifest, so they never name a path
#: outside the dataset (which could reveal a local user name).
LINK_INTO_DATASET = (
    "directory symlink back into the dataset (not followed: it would read a folder twice)"
)
LINK_OUT_OF_DATASET = "directory symlink leading out of the dataset (not followed)"
FOLDER_SEEN = "folder already read under another name (a bind mount loop?), not read again"


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
                if entry.name in VCS_DIRS:
                    out.append(Walked(rel + "/", vcs_dir=True))
                    continue
                if is_link:
                    reason, detail = _link_reason(real_root, entry.path)
                    out.append(Walked(rel + "/", is_symlink=True, not_followed=reason))
                    if details is not None:
                        details[rel + "/"] = detail
                    continue
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    out.append(Walked(rel, unreadable=True))
                    continue
                if (st.st_dev, st.st_ino) in seen:
                    out.append(Walked(rel + "/", not_followed=FOLDER_SEEN))
                    if details is not None:
                        details[rel + "/"] = "a folder already read under another name"
                    continue
                seen.add((st.st_dev, st.st_ino))
                stack.append(rel)
                continue
            try:
                st = entry.stat(follow_symlinks=True)
            except OSError as exc:
                # A symlink to nothing (unfetched git-annex content) or to itself (ELOOP).
                if is_link or isinstance(exc, FileNotFoundError):
                    out.append(Walked(rel, is_symlink=is_link, broken=True))
                else:
                    out.append(Walked(rel, unreadable=True))
                continue
            if not stat.S_ISREG(st.st_mode):
                continue
            readable = os.access(entry.path, os.R_OK)
            out.append(Walked(rel, st.st_size, st.st_mtime_ns, is_link, unreadable=not readable))
    out.sort(key=lambda w: w.relpath)
    return out


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


def _unreadable(relpath: str, exc: OSError) -> Problem:
    reason = "permission denied" if isinstance(exc, PermissionError) else exc.strerror or str(exc)
    return Problem(
        Severity.ERROR,
        "unreadable",
        relpath,
        f"cannot be read ({reason})",
        "fix its permissions (chmod a+r) or --exclude it",
    )


def _read_text(path: Path, relpath: str, problems: list[Problem], **kw: str) -> str | None:
    """The text of a small metadata file, or None (with an ``unreadable`` problem)."""
    try:
        return path.read_text(**kw)
    except OSError as exc:
        if not any(p.code == "unreadable" and p.path == relpath for p in problems):
            problems.append(_unreadable(relpath, exc))
        return None


def _load_json(path: Path, relpath: str, problems: list[Problem]) -> dict[str, Any] | None:
    text = _read_text(path, relpath, problems, encoding="utf-8-sig")
    if text is None:
        return None
    try:
        data = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        problems.append(
            Problem(
                Severity.ERROR,
                "bad-json",
                relpath,
                f"not valid JSON ({exc})",
                "fix the syntax, e.g. with `python -m json.tool`",
            )
        )
        return None
    if not isinstance(data, dict):
        problems.append(
            Problem(Severity.ERROR, "bad-json", relpath, "JSON top level is not an object", "")
        )
        return None
    return data


def _bidsignore_patterns(root: Path) -> list[str]:
    path = root / ".bidsignore"
    if not path.is_file():
        return []
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []  # the walk reports it as unreadable
    patterns = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            patterns.append(line)
    return patterns


def _matches(relpath: str, patterns: Sequence[str]) -> str | None:
    """The first gitignore-style pattern that matches ``relpath`` (or one of its folders)."""
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


def _unit(name: str, units: tuple[str, ...]) -> bool:
    return name.startswith(units) and len(name) > 4


def _parse_subject_path(rel: str, derivative_dataset: bool) -> bids_schema.ParsedName | None:
    parsed = bids_schema.parse_raw_path(rel)
    if parsed is None and derivative_dataset:
        parsed = bids_schema.parse_generic_name(rel)
    if parsed is None:
        # Data stored as a folder (MEG .ds/, microscopy .ome.zarr/, ...): its files belong to the
        # datum the folder names.
        parts = rel.split("/")
        for i in range(len(parts) - 1, 1, -1):
            folder = bids_schema.parse_raw_path("/".join(parts[:i]) + "/")
            if folder is not None and folder.extension.endswith("/"):
                return folder
    return parsed


def _classify(
    w: Walked,
    options: ScanOptions,
    bidsignore: list[str],
    derivative_names: Callable[[str], bool],
    units: tuple[str, ...],
    derivative_dataset: bool,
) -> SourceFile:
    rel = w.relpath
    f = SourceFile(rel, w.size, w.mtime_ns, Placement.DATASET_FILE, is_symlink=w.is_symlink)
    parts = rel.split("/")
    top = parts[0]
    if w.vcs_dir:
        f.placement, f.reason = Placement.LEFT_OUT, "version-control metadata (folder not read)"
        return f
    if w.not_followed:
        # A folder that was not read: the reason its path is left out anyway (--exclude,
        # sourcedata/, an unselected pipeline) wins; only otherwise is the link itself the reason.
        as_path = _classify(
            Walked(rel.rstrip("/")),
            options,
            bidsignore,
            derivative_names,
            units,
            derivative_dataset,
        )
        f.placement = Placement.LEFT_OUT
        f.reason = as_path.reason if as_path.placement is Placement.LEFT_OUT else w.not_followed
        return f
    pattern = _matches(rel, options.exclude)
    if pattern is not None:
        f.placement, f.reason = Placement.LEFT_OUT, f"--exclude {pattern}"
        return f
    if top == "sourcedata":
        if not options.include_sourcedata:
            f.placement = Placement.LEFT_OUT
            f.reason = "sourcedata/ is left out unless --include sourcedata"
        return f
    if top == "derivatives" and len(parts) >= 3:
        pipeline = parts[1]
        if not derivative_names(pipeline):
            f.placement = Placement.LEFT_OUT
            f.reason = f"derivatives/{pipeline} not selected (add --derivatives {pipeline})"
            return f
        f.derivative = pipeline
        if _unit(parts[2], ("sub-",)) and len(parts) >= 4:
            f.subject = parts[2]
            if parts[3].startswith("ses-") and len(parts) >= 5:
                f.session = parts[3]
            f.parsed = bids_schema.parse_generic_name("/".join(parts[2:]), lenient=True)
            if f.parsed is not None and f.session is None and len(parts) == 4:
                f.subject = None  # a subject-level file, not part of a row
            elif f.parsed is not None:
                f.placement = Placement.ROW
            else:
                f.subject = None
        return f
    if _unit(top, units) and len(parts) >= 2:
        ignored = _matches(rel, bidsignore)
        if ignored is not None:
            f.reason = f"matches .bidsignore ({ignored}); stored verbatim"
            return f
        f.parsed = _parse_subject_path(rel, derivative_dataset)
        if f.parsed is None:
            f.reason = "invalid BIDS name"
        f.subject = top
        if parts[1].startswith("ses-") and len(parts) >= 3:
            f.session = parts[1]
        # Files directly in sub-X/ (sessions.tsv, subject-level sidecars) describe the subject,
        # not one row; they are stored as dataset-level files.
        subject_level = len(parts) == 2 and f.session is None
        if f.parsed is not None and not subject_level:
            f.placement = Placement.ROW
        elif f.parsed is not None:
            f.subject = None
        return f
    return f


def scan(
    root: str | os.PathLike[str],
    options: ScanOptions | None = None,
) -> Inventory:
    """Scan a BIDS folder.

    Raises :class:`~bids2hf.errors.InputError` for problems that make the folder unusable
    (missing, not BIDS, no subjects). Problems with single files are collected in
    ``Inventory.problems`` so that ``inspect`` can list them all at once.
    """
    options = options or ScanOptions()
    root_path = Path(root)
    if not root_path.exists():
        raise InputError(f"{root}: no such folder (give the path to a BIDS dataset)")
    if not root_path.is_dir():
        raise InputError(f"{root}: not a folder (give the path to a BIDS dataset's top folder)")
    desc_path = root_path / "dataset_description.json"
    if not desc_path.is_file():
        raise InputError(
            f"{desc_path}: missing, so {root} is not a BIDS dataset "
            "(point at the folder that holds dataset_description.json)"
        )
    try:
        description = json.loads(desc_path.read_text(encoding="utf-8-sig"))
    except PermissionError:
        raise InputError(
            f"{desc_path}: cannot be read (permission denied); fix its permissions (chmod a+r)"
        ) from None
    except OSError as exc:
        raise InputError(f"{desc_path}: cannot be read ({exc.strerror or exc})") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError(f"{desc_path}: not valid JSON ({exc}); fix its syntax") from None
    if not isinstance(description, dict):
        raise InputError(f"{desc_path}: must hold a JSON object with Name and BIDSVersion")
    root_path = root_path.resolve()

    link_details: dict[str, str] = {}
    walked = walk(root_path, link_details)
    bidsignore = _bidsignore_patterns(root_path)
    wanted = set(options.derivatives)
    available = {w.relpath.split("/")[1] for w in walked if w.relpath.startswith("derivatives/")}
    for name in sorted(wanted - {"all"} - available):
        raise InputError(
            f"{root_path / 'derivatives' / name}: no such derivative pipeline "
            f"(found: {', '.join(sorted(available)) or 'none'})"
        )

    def derivative_selected(name: str) -> bool:
        return "all" in wanted or name in wanted

    derivative_dataset = str(description.get("DatasetType", "raw")).lower() == "derivative"
    # Template datasets (atlases) organise data by tpl-<label> where raw data use sub-<label>.
    units: tuple[str, ...] = ("sub-", "tpl-") if derivative_dataset else ("sub-",)
    problems: list[Problem] = []
    files: list[SourceFile] = []
    broken: list[str] = []
    not_followed: list[str] = []
    for w in walked:
        f = _classify(w, options, bidsignore, derivative_selected, units, derivative_dataset)
        files.append(f)
        if w.not_followed and f.reason == w.not_followed:
            not_followed.append(w.relpath)
        if f.placement is Placement.LEFT_OUT:
            continue
        if w.broken:
            broken.append(w.relpath)
            continue
        if w.unreadable:
            problems.append(_unreadable(w.relpath, PermissionError()))
        elif f.reason == "invalid BIDS name":
            _handle_invalid(f, options.on_invalid, problems)
    if broken:
        problems.append(
            Problem(
                Severity.ERROR,
                "broken-symlink",
                broken[0],
                f"{len(broken)} broken symlink(s), e.g. this one: git-annex/DataLad content "
                "not fetched",
                f"run `datalad get` in {root_path} (or `git annex get .`), then retry",
            )
        )
        broken_set = set(broken)
        for f in files:
            if f.relpath in broken_set:
                f.placement, f.reason = Placement.LEFT_OUT, "broken symlink (content not fetched)"

    if not_followed:
        problems.append(not_followed_problem(not_followed, link_details))

    if not any(f.subject for f in files if f.placement is Placement.ROW):
        raise InputError(
            f"{root_path}: no subjects found (no sub-*/ folder with valid BIDS files); "
            "check that this is a BIDS dataset's top folder"
        )

    inventory = Inventory(root=root_path, files=files, description=description)
    inventory.problems = problems
    _read_metadata(inventory, options)
    return inventory


def _handle_invalid(f: SourceFile, on_invalid: OnInvalid, problems: list[Problem]) -> None:
    if on_invalid == "skip":
        f.placement, f.reason = Placement.LEFT_OUT, "invalid BIDS name (--on-invalid skip)"
        return
    if on_invalid == "keep":
        # Kept files stay with their subject's row when they are inside one, so that export
        # puts them back where they were.
        parts = f.relpath.split("/")
        if f.subject is not None and len(parts) > 2:
            f.placement = Placement.ROW
        f.reason = "invalid BIDS name (--on-invalid keep)"
        return
    problems.append(
        Problem(
            Severity.ERROR,
            "invalid-name",
            f.relpath,
            "not a valid BIDS file name",
            "rename it, or pass --on-invalid skip|keep",
        )
    )


def _read_metadata(inv: Inventory, options: ScanOptions) -> None:
    root = inv.root
    problems = inv.problems
    # Unreadable files already have their one problem; reading them would only add noise.
    unreadable = {p.path for p in problems if p.code == "unreadable"}
    present = [
        f
        for f in inv.files
        if f.placement is not Placement.LEFT_OUT and f.relpath not in unreadable
    ]
    # JSON sidecars: needed for the inheritance principle and the privacy lint. Files that
    # .bidsignore (or --on-invalid keep) exempts from BIDS are stored as they are, never parsed.
    for f in present:
        if f.reason:
            continue
        if f.relpath.endswith(".json") and f.relpath != "dataset_description.json":
            data = _load_json(root / f.relpath, f.relpath, problems)
            if data is not None:
                inv.sidecars[f.relpath] = data
                problems.extend(lint_sidecar(f.relpath, data))
        elif f.relpath.endswith((".bval", ".bvec")) and f.size <= 1 << 20:
            text = _read_text(
                root / f.relpath, f.relpath, problems, encoding="utf-8", errors="replace"
            )
            if text is not None:
                inv.texts[f.relpath] = text
    niftis = [f for f in present if f.is_nifti and not f.reason.startswith("invalid")]
    # Header checks are small reads spread over the disk: several in flight keep it busy.
    with ThreadPoolExecutor(8, thread_name_prefix="bids2hf-check") as pool:
        results = pool.map(lambda f: check_nifti(str(root / f.relpath), options.check), niftis)
        checked = list(zip(niftis, results, strict=True))
    for f, result in checked:
        f.nifti_version = result.version
        if result.error:
            problems.append(
                Problem(
                    Severity.ERROR,
                    "bad-nifti",
                    f.relpath,
                    result.error,
                    "re-download or re-convert it, or --exclude it",
                )
            )
        if result.version == 2:
            problems.append(
                Problem(
                    Severity.WARNING,
                    "nifti2",
                    f.relpath,
                    "NIfTI-2 file: stored verbatim, but `datasets` cannot decode NIfTI-2",
                    "its column is published undecoded; read it with bids2hf.load_nifti()",
                )
            )
        problems.extend(lint_nifti_text(f.relpath, result.text_fields))
    _read_tables(inv)


def _read_tables(inv: Inventory) -> None:
    root = inv.root
    subjects = sorted(
        {f.subject for f in inv.files if f.row_key and f.derivative is None and f.subject}
        & {f.subject for f in inv.files if f.subject and f.subject.startswith("sub-")}
    )
    participants_path = root / "participants.tsv"
    text = (
        _read_text(participants_path, "participants.tsv", inv.problems, encoding="utf-8-sig")
        if participants_path.is_file()
        else None
    )
    if text is not None:
        table, found = read_tsv(
            text,
            "participants.tsv",
            "participant_id",
            inv.sidecars.get("participants.json"),
        )
        inv.problems.extend(found)
        if table is not None:
            inv.participants = table
            listed = {k if k.startswith("sub-") else f"sub-{k}" for k in table.rows}
            missing = [s for s in subjects if s not in listed]
            extra = sorted(listed - set(subjects))
            if missing:
                inv.problems.append(
                    Problem(
                        Severity.ERROR,
                        "participants-missing",
                        "participants.tsv",
                        f"no row for {len(missing)} subject folder(s): " + ", ".join(missing[:5]),
                        "add their rows (n/a for unknown values)",
                    )
                )
            if extra:
                inv.problems.append(
                    Problem(
                        Severity.WARNING,
                        "participants-extra",
                        "participants.tsv",
                        f"{len(extra)} participant(s) without a folder get no row: "
                        + ", ".join(extra[:5]),
                        "expected when participants were withdrawn",
                    )
                )
    for subject in subjects:
        rel = f"{subject}/{subject}_sessions.tsv"
        path = root / rel
        text = _read_text(path, rel, inv.problems, encoding="utf-8-sig") if path.is_file() else None
        if text is None:
            continue
        table, found = read_tsv(
            text,
            rel,
            "session_id",
            inv.sidecars.get(f"{subject}/{subject}_sessions.json")
            or inv.sidecars.get("sessions.json"),
        )
        inv.problems.extend(found)
        if table is not None:
            inv.sessions[subject] = table
