"""Typed reading of BIDS TSV tables (participants.tsv, sessions.tsv) with their JSON dictionaries."""

from __future__ import annotations

import csv
from collections.abc import Mapping
from typing import Any

from bids2hf.model.inventory import Problem, Severity, Table

__all__ = ["NA", "merge_types", "read_tsv"]

NA = "n/a"


def _infer(values: list[str]) -> str:
    present = [v for v in values if v != NA and v != ""]
    if not present:
        return "string"
    try:
        for v in present:
            int(v)
        return "int64"
    except ValueError:
        pass
    try:
        for v in present:
            float(v)
        return "float64"
    except ValueError:
        return "string"


_FORMAT_TYPES = {"integer": "int64", "number": "float64", "index": "int64"}


def _convert(value: str, kind: str) -> Any:
    if value in (NA, ""):
        return None
    if kind == "int64":
        return int(value)
    if kind == "float64":
        return float(value)
    return value


def read_tsv(
    text: str,
    relpath: str,
    id_column: str,
    dictionary: Mapping[str, Any] | None = None,
) -> tuple[Table | None, list[Problem]]:
    """Parse a TSV table whose rows are keyed by ``id_column``.

    Column types come from the JSON dictionary (``Levels`` → string, ``Format``) where it says,
    else they are inferred (integer, float, string); ``n/a`` is null. Problems name the row.
    """
    rows = [r for r in csv.reader(text.splitlines(), delimiter="\t") if r]
    problems = _check_shape(rows, relpath, id_column)
    if problems:
        return None, problems
    header = [h.strip() for h in rows[0]]
    body = rows[1:]
    types, descriptions, problems = _column_types(
        header, body, id_column, dictionary or {}, relpath
    )
    if problems:
        return None, problems
    table_rows, problems = _typed_rows(header, body, id_column, types, relpath)
    columns = [c for c in header if c != id_column]
    return Table(columns=columns, types=types, rows=table_rows, descriptions=descriptions), problems


def _check_shape(rows: list[list[str]], relpath: str, id_column: str) -> list[Problem]:
    """A header with the id column, and as many fields in every line as in the header."""
    if not rows:
        return [Problem(Severity.ERROR, "tsv-empty", relpath, "empty table", "add a header row")]
    header = [h.strip() for h in rows[0]]
    if id_column not in header:
        return [
            Problem(
                Severity.ERROR,
                "tsv-no-id",
                relpath,
                f"no {id_column} column",
                f"the first column must be {id_column}",
            )
        ]
    return [
        Problem(
            Severity.ERROR,
            "tsv-shape",
            relpath,
            f"line {lineno} has {len(row)} fields, the header has {len(header)}",
            "fix the tabs in that line",
        )
        for lineno, row in enumerate(rows[1:], start=2)
        if len(row) != len(header)
    ]


def _column_types(
    header: list[str],
    body: list[list[str]],
    id_column: str,
    dictionary: Mapping[str, Any],
    relpath: str,
) -> tuple[dict[str, str], dict[str, str], list[Problem]]:
    """(type, description) of every column but the id, checked against the JSON dictionary."""
    problems: list[Problem] = []
    types: dict[str, str] = {}
    descriptions: dict[str, str] = {}
    for i, col in enumerate(header):
        if col == id_column:
            continue
        meta = dictionary.get(col)
        meta = meta if isinstance(meta, Mapping) else {}
        values = [r[i] for r in body]
        levels = meta.get("Levels")
        if isinstance(levels, Mapping) and levels:
            types[col] = "string"
            allowed = {str(k) for k in levels}
            for lineno, v in enumerate(values, start=2):
                if v not in (NA, "") and v not in allowed:
                    problems.append(
                        Problem(
                            Severity.ERROR,
                            "tsv-level",
                            relpath,
                            f"line {lineno}: {col}={v!r} is not one of the Levels "
                            f"{sorted(allowed)} in the JSON dictionary",
                            "fix the value or add it to Levels",
                        )
                    )
        elif meta.get("Format") in _FORMAT_TYPES:
            types[col] = _FORMAT_TYPES[str(meta["Format"])]
            inferred = _infer(values)
            if (types[col] == "int64" and inferred != "int64") or inferred == "string":
                problems.append(
                    Problem(
                        Severity.ERROR,
                        "tsv-format",
                        relpath,
                        f"column {col} is declared {meta['Format']} in the JSON dictionary "
                        "but holds other values",
                        "fix the values or the Format",
                    )
                )
        else:
            types[col] = _infer(values)
        if isinstance(meta.get("Description"), str):
            descriptions[col] = meta["Description"]
    return types, descriptions, problems


def _typed_rows(
    header: list[str], body: list[list[str]], id_column: str, types: dict[str, str], relpath: str
) -> tuple[dict[str, dict[str, Any]], list[Problem]]:
    """The rows by id, their values typed; a repeated id is an error (its first row is kept)."""
    problems: list[Problem] = []
    id_index = header.index(id_column)
    table_rows: dict[str, dict[str, Any]] = {}
    for lineno, row in enumerate(body, start=2):
        key = row[id_index]
        if key in table_rows:
            problems.append(
                Problem(
                    Severity.ERROR,
                    "tsv-duplicate",
                    relpath,
                    f"line {lineno}: {id_column} {key} appears twice",
                    "merge or remove the duplicate row",
                )
            )
            continue
        table_rows[key] = {
            col: _convert(row[i], types[col]) for i, col in enumerate(header) if col != id_column
        }
    return table_rows, problems


def merge_types(a: str, b: str) -> str:
    """A type that holds values of both (for tables split over files, like sessions.tsv)."""
    if a == b:
        return a
    if {a, b} == {"int64", "float64"}:
        return "float64"
    return "string"
