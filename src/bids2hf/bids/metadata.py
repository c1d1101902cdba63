"""What scan reads besides file names: sidecars, bval/bvec texts, NIfTI header checks, participants and sessions tables.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from bids2hf.bids.nifti import NiftiCheck, check_nifti
from bids2hf.bids.options import ScanOptions
from bids2hf.bids.privacy import lint_nifti_text, lint_sidecar
from bids2hf.bids.source import source_of
from bids2hf.bids.tabular import read_tsv
from bids2hf.model.inventory import Inventory, Placement, Problem, Severity, SourceFile
from bids2hf.model.source import Source


def _unreadable(relpath: str, exc: OSError) -> Problem:
    reason = "permission denied" if isinstance(exc, PermissionError) else exc.strerror or str(exc)
    return Problem(
        Severity.ERROR,
        "unreadable",
        relpath,
        f"cannot be read ({reason})",
        "fix its permissions (chmod a+r) or --exclude it",
    )


def _not_utf8(relpath: str, exc: UnicodeDecodeError) -> Problem:
    """A metadata file whose bytes are no UTF-8 text (a table saved in Latin-1 by a spreadsheet,
    or as UTF-16, Excel's "Unicode text")."""
    head = bytes(exc.object[:4])
    if head[:2] in (b"\xff\xfe", b"\xfe\xff") and head != b"\xff\xfe\x00\x00":  # UTF-16 BOM
        return Problem(
            Severity.ERROR,
            "not-utf8",
            relpath,
            "UTF-16 text (as Excel's 'Unicode text' saves it), not UTF-8 (BIDS text files are "
            "UTF-8)",
            "save it as UTF-8, e.g. `iconv -f utf-16 -t utf-8 FILE > NEW` then replace FILE",
        )
    return Problem(
        Severity.ERROR,
        "not-utf8",
        relpath,
        f"not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start}; BIDS text "
        "files are UTF-8)",
        "save it as UTF-8, e.g. `iconv -f latin1 -t utf-8 FILE > NEW` then replace FILE",
    )


# [issue 15] every read goes through the source (a local folder or an fsspec URL)
def _read_text(
    source: Source, relpath: str, problems: list[Problem], encoding: str, errors: str = "strict"
) -> str | None:
    """The text of a small metadata file, or None (with an ``unreadable`` or ``not-utf8``
    problem)."""
    try:
        return source.read_text(relpath, encoding, errors)
    except (OSError, UnicodeDecodeError) as exc:
        return _text_or_problem(exc, relpath, problems)


def _text_or_problem(
    text: str | OSError | UnicodeDecodeError, relpath: str, problems: list[Problem]
) -> str | None:
    """``text``, or None with a problem (once per file) for a failed read: ``unreadable``, or
    ``not-utf8`` for bytes that are no text in the expected encoding."""
    if isinstance(text, str):
        return text
    code = "not-utf8" if isinstance(text, UnicodeDecodeError) else "unreadable"
    if not any(p.code == code and p.path == relpath for p in problems):
        problems.append(
            _not_utf8(relpath, text)
            if isinstance(text, UnicodeDecodeError)
            else _unreadable(relpath, text)
        )
    return None


def _load_json(
    read: str | OSError | UnicodeDecodeError, relpath: str, problems: list[Problem]
) -> dict[str, Any] | None:
    """A JSON sidecar's object, or None (with a problem) when it cannot be read or parsed."""
    text = _text_or_problem(read, relpath, problems)
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


def _read_metadata(inv: Inventory, options: ScanOptions) -> None:
    source = source_of(inv.root, inv.source)  # [issue 15]
    problems = inv.problems
    # Unreadable files already have their one problem; reading them would only add noise.
    unreadable = {p.path for p in problems if p.code == "unreadable"}
    present = [
        f
        for f in inv.files
        if f.placement is not Placement.LEFT_OUT and f.relpath not in unreadable
    ]
    _read_small_files(inv, source, present)
    niftis = [f for f in present if f.is_nifti and not f.reason.startswith("invalid")]

    def check(f: SourceFile) -> NiftiCheck:
        try:
            where = source.nifti_input(f.relpath)  # [issue 15] a path, or range reads
        except OSError as exc:
            return NiftiCheck(error=f"cannot be read ({exc})")
        return check_nifti(where, options.check)

    # Header checks are small reads spread over the disk (or range requests to a remote):
    # several in flight keep it busy.
    with ThreadPoolExecutor(source.scan_threads, thread_name_prefix="bids2hf-check") as pool:
        checked = list(zip(niftis, pool.map(check, niftis), strict=True))
    for f, result in checked:
        f.nifti_version = result.version
        f.header = result.facts
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


def _read_small_files(inv: Inventory, source: Source, present: list[SourceFile]) -> None:
    """JSON sidecars (needed for the inheritance principle and the privacy lint) and bval/bvec
    texts. Files that .bidsignore (or --on-invalid keep) exempts from BIDS are stored as they
    are, never parsed."""
    # [issue 15] read first (a remote source keeps many requests in flight), then parsed in
    # the order of the files, so that problems come out in the same order from any source.
    sidecars = [
        f.relpath
        for f in present
        if not f.reason and f.relpath.endswith(".json") and f.relpath != "dataset_description.json"
    ]
    vectors = [
        f.relpath
        for f in present
        if not f.reason and f.relpath.endswith((".bval", ".bvec")) and f.size <= 1 << 20
    ]
    texts = dict(zip(sidecars, source.read_texts(sidecars, "utf-8-sig"), strict=True))
    texts.update(zip(vectors, source.read_texts(vectors, "utf-8", "replace"), strict=True))
    problems = inv.problems
    for f in present:
        if f.relpath not in texts or f.reason:
            continue
        if f.relpath.endswith(".json"):
            data = _load_json(texts[f.relpath], f.relpath, problems)
            if data is not None:
                inv.sidecars[f.relpath] = data
                problems.extend(lint_sidecar(f.relpath, data))
        else:
            text = _text_or_problem(texts[f.relpath], f.relpath, problems)
            if text is not None:
                inv.texts[f.relpath] = text


def _read_tables(inv: Inventory) -> None:
    subjects = sorted(
        {f.subject for f in inv.files if f.row_key and f.derivative is None and f.subject}
        & {f.subject for f in inv.files if f.subject and f.subject.startswith("sub-")}
    )
    _read_participants(inv, subjects)
    _read_sessions(inv, subjects)


def _read_participants(inv: Inventory, subjects: list[str]) -> None:
    """participants.tsv, checked against the subject folders (each needs a row)."""
    source = source_of(inv.root, inv.source)  # [issue 15]
    text = (
        _read_text(source, "participants.tsv", inv.problems, encoding="utf-8-sig")
        if source.is_file("participants.tsv")
        else None
    )
    if text is None:
        return
    table, found = read_tsv(
        text,
        "participants.tsv",
        "participant_id",
        inv.sidecars.get("participants.json"),
    )
    inv.problems.extend(found)
    if table is None:
        return
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
                f"{len(extra)} participant(s) without a folder get no row: " + ", ".join(extra[:5]),
                "expected when participants were withdrawn",
            )
        )


def _read_sessions(inv: Inventory, subjects: list[str]) -> None:
    """Each subject's sub-X_sessions.tsv, with its own dictionary or the top-level one."""
    source = source_of(inv.root, inv.source)  # [issue 15]
    for subject in subjects:
        rel = f"{subject}/{subject}_sessions.tsv"
        text = (
            _read_text(source, rel, inv.problems, encoding="utf-8-sig")
            if source.is_file(rel)
            else None
        )
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
