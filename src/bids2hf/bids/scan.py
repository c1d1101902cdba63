"""Walk a BIDS folder into an :class:`~bids2hf.inventory.Inventory`.

This is the only stage that looks at the source folder before writing: it lists every file,
decides where each one goes (a row, a dataset-level file, or left out with a reason), parses
names with the official schema, reads the small metadata files and checks NIfTI headers.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import bids2hf.bids.schema as bids_schema
from bids2hf.bids.metadata import _read_metadata, _unreadable
from bids2hf.bids.options import OnInvalid, ScanOptions
from bids2hf.bids.source import LocalSource, open_source
from bids2hf.bids.walk import (
    NOT_REGULAR,
    Walked,
    bidsignore_patterns,
    first_match,
    not_followed_problem,
)
from bids2hf.errors import InputError
from bids2hf.model.inventory import Inventory, Placement, Problem, Severity, SourceFile
from bids2hf.model.source import Source

__all__ = ["scan"]


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
    f = SourceFile(
        rel, w.size, w.mtime_ns, Placement.DATASET_FILE, is_symlink=w.is_symlink, version=w.version
    )
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
    pattern = first_match(rel, options.exclude)
    if pattern is not None:
        f.placement, f.reason = Placement.LEFT_OUT, f"--exclude {pattern}"
        return f
    if top == "sourcedata":
        if not options.include_sourcedata:
            f.placement = Placement.LEFT_OUT
            f.reason = "sourcedata/ is left out unless --include sourcedata"
        return f
    if top == "derivatives" and len(parts) >= 3:
        return _classify_derivative(f, parts, derivative_names)
    if _unit(top, units) and len(parts) >= 2:
        return _classify_subject(f, parts, bidsignore, derivative_dataset)
    return f


def _classify_derivative(
    f: SourceFile, parts: list[str], derivative_names: Callable[[str], bool]
) -> SourceFile:
    """A file under derivatives/PIPELINE/: left out unless the pipeline is selected."""
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


def _classify_subject(
    f: SourceFile, parts: list[str], bidsignore: list[str], derivative_dataset: bool
) -> SourceFile:
    """A file under sub-X/ (or tpl-X/): in a row if its name is valid BIDS."""
    rel = f.relpath
    ignored = first_match(rel, bidsignore)
    if ignored is not None:
        f.reason = f"matches .bidsignore ({ignored}); stored verbatim"
        return f
    f.parsed = _parse_subject_path(rel, derivative_dataset)
    if f.parsed is None:
        f.reason = "invalid BIDS name"
    f.subject = parts[0]
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


def scan(
    root: str | os.PathLike[str] | Source,
    options: ScanOptions | None = None,
) -> Inventory:
    """Scan a BIDS folder: a local path, an fsspec URL (``s3://bucket/ds``) or a
    :class:`~bids2hf.model.source.Source`.

    Raises :class:`~bids2hf.errors.InputError` for problems that make the folder unusable
    (missing, not BIDS, no subjects, a URL that cannot be listed). Problems with single files
    are collected in ``Inventory.problems`` so that ``inspect`` can list them all at once.
    """
    options = options or ScanOptions()
    source, description = _read_description(root)  # [issue 15] local folder or fsspec URL
    root_path = source.location
    link_details: dict[str, str] = {}
    walked = source.walk(link_details)
    bidsignore = bidsignore_patterns(source)
    wanted = set(options.derivatives)
    _check_derivatives(walked, wanted, source)

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
        if w.not_followed and f.reason == w.not_followed != NOT_REGULAR:  # folders not read
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
        problems.append(_broken_symlinks(files, broken, root_path))
    if not_followed:
        problems.append(not_followed_problem(not_followed, link_details))
    problems += [*_not_regular_problem(files), *_description_problems(description)]

    if not any(f.subject for f in files if f.placement is Placement.ROW):
        raise InputError(
            f"{root_path}: no subjects found (no sub-*/ folder with valid BIDS files); "
            "check that this is a BIDS dataset's top folder"
        )

    inventory = Inventory(_inventory_root(source), files, description, source=source)
    inventory.problems = problems
    _read_metadata(inventory, options)
    return inventory


def _inventory_root(source: Source) -> Path | str:
    """[issue 15] ``Inventory.root``: the resolved local folder, or a remote source's URL."""
    return source.root if isinstance(source, LocalSource) else source.location


def _read_description(root: str | os.PathLike[str] | Source) -> tuple[Source, dict[str, Any]]:
    """(the resolved source, its dataset_description.json); InputError if either is unusable."""
    source = open_source(root)
    if not isinstance(root, (str, os.PathLike)):
        root = source.location
    if not source.exists():
        raise InputError(f"{root}: no such folder (give the path to a BIDS dataset)")
    if not source.is_dir():
        raise InputError(f"{root}: not a folder (give the path to a BIDS dataset's top folder)")
    desc_path = source.display("dataset_description.json")
    if not source.is_file("dataset_description.json"):
        raise InputError(
            f"{desc_path}: missing, so {root} is not a BIDS dataset "
            "(point at the folder that holds dataset_description.json)"
        )
    try:
        description = json.loads(source.read_text("dataset_description.json", "utf-8-sig"))
    except PermissionError:
        raise InputError(
            f"{desc_path}: cannot be read (permission denied); {source.denied_hint}"
        ) from None
    except OSError as exc:
        raise InputError(f"{desc_path}: cannot be read ({exc.strerror or exc})") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError(f"{desc_path}: not valid JSON ({exc}); fix its syntax") from None
    if not isinstance(description, dict):
        raise InputError(
            f"{desc_path}: must hold a JSON object with Name and BIDSVersion "
            '(e.g. {"Name": "My study", "BIDSVersion": "1.10.0"})'
        )
    return source.resolved(), description


def _check_derivatives(walked: list[Walked], wanted: set[str], source: Source) -> None:
    """InputError naming the first selected pipeline that derivatives/ does not hold."""
    available = {w.relpath.split("/")[1] for w in walked if w.relpath.startswith("derivatives/")}
    for name in sorted(wanted - {"all"} - available):
        raise InputError(
            f"{source.display('derivatives/' + name)}: no such derivative pipeline "
            f"(found: {', '.join(sorted(available)) or 'none'})"
        )


def _description_problems(description: dict[str, Any]) -> list[Problem]:
    """A warning when dataset_description.json lacks a field BIDS requires: the conversion goes
    on (nothing is lost), but the exported folder fails the BIDS validator as the source does."""
    missing = [
        key
        for key in ("Name", "BIDSVersion")
        if (value := description.get(key)) is None or (isinstance(value, str) and not value.strip())
    ]
    if not missing:
        return []
    return [
        Problem(
            Severity.WARNING,
            "description-incomplete",
            "dataset_description.json",
            f"no {' and no '.join(missing)}, which BIDS requires",
            'add them, e.g. "Name": "My study", "BIDSVersion": "1.10.0"',
        )
    ]


def _not_regular_problem(files: list[SourceFile]) -> list[Problem]:
    """One warning naming the first named pipe, socket or device left out as such ([] if none)."""
    special = [f.relpath for f in files if f.reason == NOT_REGULAR]
    if not special:
        return []
    return [
        Problem(
            Severity.WARNING,
            "not-regular-file",
            special[0],
            f"{NOT_REGULAR}; {len(special)} such file(s) left out (listed in the manifest)",
            "put the file it stands for in its place to convert it, or --exclude it",
        )
    ]


def _broken_symlinks(files: list[SourceFile], broken: list[str], root_path: str) -> Problem:
    """Leave the broken symlinks out; the one problem that names the first and the fix."""
    broken_set = set(broken)
    for f in files:
        if f.relpath in broken_set:
            f.placement, f.reason = Placement.LEFT_OUT, "broken symlink (content not fetched)"
    return Problem(
        Severity.ERROR,
        "broken-symlink",
        broken[0],
        f"{len(broken)} broken symlink(s), e.g. this one: git-annex/DataLad content not fetched",
        f"run `datalad get` in {root_path} (or `git annex get .`), then retry",
    )


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
