"""The optional TOML config: rename, select, group and split columns.

Example (the Aphasia Recovery Cohort schema ships as ``examples/arc.toml``)::

    other_files = false            # no generic `files` column: unselected files are left out
    [participants]
    columns = ["age_at_stroke", "sex", "race"]
    [[columns]]
    name = "t1w"
    kinds = ["anat/T1w"]           # datatype/suffix, or PIPELINE:datatype/suffix for derivatives
    single = true                  # one image per row (an error if a row has more, unless:)
    prefer = { acquisition = ["spc3p2", "tse3"] }   # take the best; the others are left out
    [[columns]]
    name = "bold_rest"
    kinds = ["func/bold"]
    where = { task = "rest" }      # split a kind by entity values
    [[columns]]
    name = "dwi_bvals"
    kinds = ["dwi/dwi"]
    value = "bval"                 # image | sha256 | path | bval | bvec | meta | entity:NAME
    [[columns]]
    name = "t2w_acquisition"
    kinds = ["anat/T2w"]
    value = "entity:acquisition"
    map = { spc3p2 = "space_2x" }  # readable names; values not listed are kept as they are
    [[columns]]
    name = "lesion"
    kinds = ["lesion_masks:anat/mask"]
    source = "t2w"                 # + lesion_source_index: the t2w element the mask belongs to
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bids2hf.errors import InputError

__all__ = [
    "TABLE_TYPES", "VALUE_KINDS", "ColumnRule", "Config", "TableRule", "load_config",
    "parse_config",
]

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

VALUE_KINDS = ("image", "sha256", "path", "bval", "bvec", "meta")
TABLE_TYPES = ("string", "int64", "float64")


@dataclass(frozen=True)
class ColumnRule:
    """One output column selected from images of one or more kinds."""

    name: str
    kinds: tuple[str, ...]  # "anat/T1w" or "lesion_masks:anat/mask"
    where: Mapping[str, str] = field(default_factory=dict)
    value: str = "image"
    single: bool = False
    # For single columns: entity → preferred values, best first. When several files match, the
    # best one is taken and the others are listed as left out (never dropped silently).
    prefer: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    description: str = ""
    # For entity:NAME and meta:KEY columns: value → readable name (values not listed are kept).
    map: Mapping[str, str] = field(default_factory=dict)
    # An earlier image column whose elements this column's files are matched with by entities
    # (the match goes into a `<name>_source_index` column).
    source: str = ""

    def rank(self, entities: Mapping[str, str]) -> tuple[int, ...]:
        ranks = []
        for key, values in self.prefer.items():
            value = str(entities.get(key))
            ranks.append(values.index(value) if value in values else len(values))
        return tuple(ranks)

    def matches(self, kind: str, entities: Mapping[str, str]) -> bool:
        return kind in self.kinds and all(
            str(entities.get(k)) == str(v) for k, v in self.where.items()
        )


@dataclass(frozen=True)
class TableRule:
    """Which columns of participants.tsv or sessions.tsv to keep, and their new names."""

    columns: tuple[str, ...] | None = None  # None: all
    rename: Mapping[str, str] = field(default_factory=dict)
    types: Mapping[str, str] = field(default_factory=dict)  # column → string | int64 | float64


@dataclass(frozen=True)
class Config:
    """A parsed config file."""

    columns: tuple[ColumnRule, ...] = ()
    participants: TableRule = TableRule()
    sessions: TableRule = TableRule()
    other_files: bool = True  # embed non-image files of a row in a `files` column
    sha256_columns: bool = True  # a <column>_sha256 column beside each image column
    source: str = ""

    @property
    def selects_columns(self) -> bool:
        return bool(self.columns)


def _table_rule(raw: Any, where: str) -> TableRule:
    if raw is None:
        return TableRule()
    if not isinstance(raw, dict):
        raise InputError(f"{where}: must be a table with `columns` and/or `rename`")
    cols = raw.get("columns")
    rename = raw.get("rename", {})
    if cols is not None and not (isinstance(cols, list) and all(isinstance(c, str) for c in cols)):
        raise InputError(f"{where}.columns: must be a list of column names")
    if not isinstance(rename, dict):
        raise InputError(f"{where}.rename: must map old names to new names")
    types = raw.get("types", {})
    if not isinstance(types, dict) or not all(t in TABLE_TYPES for t in types.values()):
        raise InputError(f"{where}.types: must map column names to one of {TABLE_TYPES}")
    unknown = sorted(set(raw) - {"columns", "rename", "types"})
    if unknown:
        raise InputError(
            f"{where}: unknown key(s) {', '.join(unknown)} (known: columns, rename, types)"
        )
    return TableRule(tuple(cols) if cols is not None else None, dict(rename), dict(types))


def parse_config(data: Mapping[str, Any], source: str = "config") -> Config:
    """Validate a config mapping (as loaded from TOML).

    Raises:
        InputError: an unknown key, or a column rule or table rule that is not valid.
    """
    known = {"columns", "participants", "sessions", "other_files", "sha256_columns"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise InputError(f"{source}: unknown key(s) {', '.join(unknown)} (known: {sorted(known)})")
    rules: list[ColumnRule] = []
    for i, raw in enumerate(data.get("columns", [])):
        rules.append(_column_rule(raw, f"{source}: columns[{i}]", rules))
    return Config(
        columns=tuple(rules),
        participants=_table_rule(data.get("participants"), f"{source}: [participants]"),
        sessions=_table_rule(data.get("sessions"), f"{source}: [sessions]"),
        other_files=bool(data.get("other_files", True)),
        sha256_columns=bool(data.get("sha256_columns", True)),
        source=source,
    )


_COLUMN_KEYS = (
    "name", "kinds", "kind", "where", "value", "single", "prefer", "description", "map", "source",
)  # fmt: skip


def _column_rule(raw: Any, where: str, earlier: list[ColumnRule]) -> ColumnRule:
    """One ``[[columns]]`` entry, checked against the rules before it."""
    if not isinstance(raw, dict) or "name" not in raw:
        raise InputError(f"{where}: each [[columns]] entry needs a name")
    name = raw["name"]
    unknown = sorted(set(raw) - set(_COLUMN_KEYS))
    if unknown:
        raise InputError(
            f"{where} ({name}): unknown key(s) {', '.join(unknown)} "
            f"(known: {', '.join(_COLUMN_KEYS)})"
        )
    kinds = raw.get("kinds", raw.get("kind"))
    if isinstance(kinds, str):
        kinds = [kinds]
    if not kinds or not all(isinstance(k, str) and "/" in k for k in kinds):
        raise InputError(f"{where} ({name}): `kinds` must list datatype/suffix, e.g. anat/T1w")
    value = raw.get("value", "image")
    if value not in VALUE_KINDS and not str(value).startswith(("entity:", "meta:")):
        raise InputError(
            f"{where} ({name}): value {value!r} must be one of {VALUE_KINDS}, "
            "entity:NAME or meta:KEY"
        )
    if any(r.name == name for r in earlier):
        raise InputError(f"{where}: column {name!r} defined twice")
    return ColumnRule(
        name=name,
        kinds=tuple(kinds),
        where={str(k): str(v) for k, v in raw.get("where", {}).items()},
        value=value,
        single=bool(raw.get("single", False)),
        prefer={
            str(k): tuple(str(x) for x in (v if isinstance(v, list) else [v]))
            for k, v in raw.get("prefer", {}).items()
        },
        description=str(raw.get("description", "")),
        map=_value_map(raw.get("map"), value, f"{where} ({name})"),
        source=_source(raw.get("source"), value, earlier, f"{where} ({name})"),
    )


def _value_map(raw: Any, value: str, where: str) -> dict[str, str]:
    if raw is None:
        return {}
    if not str(value).startswith(("entity:", "meta:")):
        raise InputError(f"{where}: `map` applies to entity:NAME or meta:KEY columns only")
    if not isinstance(raw, dict) or not all(isinstance(v, str) for v in raw.values()):
        raise InputError(f'{where}: `map` must map values to names, e.g. {{ spc3p2 = "space_2x" }}')
    return {str(k): v for k, v in raw.items()}


def _source(raw: Any, value: str, earlier: list[ColumnRule], where: str) -> str:
    if raw is None:
        return ""
    images = [r.name for r in earlier if r.value == "image"]
    if value != "image" or raw not in images:
        raise InputError(
            f"{where}: `source` must name an image column declared before this image column "
            f"(declared so far: {', '.join(images) or 'none'})"
        )
    return str(raw)


def load_config(path: str | Path) -> Config:
    """Read and validate a TOML config file.

    Raises:
        InputError: the file is missing or unreadable, is not UTF-8 text, is not valid TOML,
            or its content is not valid.
    """
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path}: config file not found") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a folder; give the path of the TOML config file") from None
    except UnicodeDecodeError as exc:
        raise InputError(
            f"{path}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start}); "
            "save it as UTF-8 (TOML files are UTF-8)"
        ) from None
    except OSError as exc:
        raise InputError(
            f"{path}: config file cannot be read ({exc.strerror or exc}); fix its permissions"
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"{path}: not valid TOML ({exc})") from None
    return parse_config(data, str(path))
