"""The pieces both layouts share: `RowBuilder` (columns, left-out files, kind counts), feature inference, sort keys.

Each layout (plan/layouts/) is a `RowBuilder` that declares its columns and builds its rows.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Callable, Container, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import pyarrow as pa

import bids2hf.bids.schema as bids_schema
from bids2hf.bids.inheritance import SidecarIndex
from bids2hf.bids.tabular import merge_types
from bids2hf.model.inventory import (
    NIFTI_EXTENSIONS,
    Inventory,
    Placement,
    Problem,
    Severity,
    SourceFile,
    Table,
)
from bids2hf.model.rows import ColumnSpec, FileRef, Role, RowPlan
from bids2hf.plan.config import TableRule
from bids2hf.plan.features import (
    Feature,
    List,
    Nifti,
    NoArrowType,
    Struct,
    Value,
    infer_arrow_type,
)
from bids2hf.plan.options import PlanOptions

__all__ = [
    "ColumnFill",
    "KindSummary",
    "RowBuilder",
    "entities_of",
    "entity_feature",
    "file_ref",
    "infer_struct",
    "jsonify",
    "kind_column",
    "kind_of",
    "kind_sort",
    "natural_key",
    "stem",
]

#: fills a column (or a group of them) of one row from that row's images by kind; returns the
#: images it placed, so that the session layout can leave out the ones no column selected
ColumnFill = Callable[[RowPlan, Mapping[str, list[SourceFile]]], set[str]]

_DATATYPE_ORDER = ("anat", "func", "dwi", "fmap", "perf", "pet")


@dataclass
class KindSummary:
    """What one image kind (datatype + suffix) contributes, for the report and the card."""

    kind: str
    column: str
    files: int = 0
    bytes: int = 0
    rows: int = 0
    nifti2: bool = False


def natural_key(text: str) -> tuple[Any, ...]:
    """Sort key that puts sub-2 before sub-10."""
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text))


def file_ref(f: SourceFile) -> FileRef:
    """The reference a row keeps to a source file."""
    return FileRef(f.relpath, f.size, f.mtime_ns, f.version)  # [issue 15] version


def kind_of(f: SourceFile) -> str:
    """``[pipeline:]datatype/suffix[.cifti]`` of an image: the kind its column is named after."""
    assert f.parsed is not None
    datatype = f.parsed.datatype or "misc"
    prefix = f"{f.derivative}:" if f.derivative else ""
    return f"{prefix}{datatype}/{f.parsed.suffix}{_cifti_type(f.parsed.extension)}"


def _cifti_type(extension: str) -> str:
    """``".dtseries"`` for ``.dtseries.nii`` (CIFTI-2: ``.dscalar.nii``, ``.dlabel.nii``, ...).

    CIFTI-2 files share their suffix with volumes (``_bold.dtseries.nii`` beside
    ``_bold.nii.gz`` in fMRIPrep's output), but they are NIfTI-2, which `datasets` cannot
    decode: a kind of their own (``func/bold.dtseries``) keeps them out of the volumes' column,
    which stays decodable. Plain ``.nii``/``.nii.gz`` give "".
    """
    for nifti in NIFTI_EXTENSIONS:
        if extension.endswith(nifti) and extension != nifti:
            return extension[: -len(nifti)]
    return ""


def kind_column(kind: str) -> str:
    """The column name of a kind (``func/bold`` → ``func_bold``)."""
    return re.sub(r"[^0-9A-Za-z]+", "_", kind.replace(":", "_").replace("/", "_")).strip("_")


def kind_sort(kind: str) -> tuple[Any, ...]:
    """Sort key of kinds: by pipeline, then anat, func, dwi, ... order."""
    pipeline, _, rest = kind.rpartition(":")
    datatype, _, suffix = rest.partition("/")
    order = _DATATYPE_ORDER.index(datatype) if datatype in _DATATYPE_ORDER else len(_DATATYPE_ORDER)
    return (pipeline, order, datatype, suffix)


def stem(relpath: str) -> str:
    """The path without its BIDS extension (the name companions such as ``.bval`` share)."""
    return relpath[: len(relpath) - len(bids_schema.split_extension(relpath.rsplit("/", 1)[-1])[1])]


def entities_of(f: SourceFile) -> dict[str, str]:
    """The file's entities except subject and session (the row already says those)."""
    assert f.parsed is not None
    return {k: v for k, v in f.parsed.entities.items() if k not in ("subject", "session")}


def entity_feature(values: Iterable[str], name: str) -> tuple[Value, bool]:
    """(feature, as_int) for an entity column: index entities become int32 when they can."""
    entity = bids_schema.entity_by_name().get(name)
    as_int = bool(entity and entity.is_index and all(v.isdigit() for v in values))
    return Value("int32" if as_int else "string"), as_int


def infer_struct(dicts: Sequence[Mapping[str, Any]]) -> tuple[pa.DataType | None, set[str]]:
    """Arrow struct type holding all the dicts; keys whose values disagree fall back to JSON text."""
    keys: dict[str, list[Any]] = defaultdict(list)
    for d in dicts:
        for k, v in d.items():
            keys[k].append(v)
    fields = []
    as_json: set[str] = set()
    for k in sorted(keys):
        values = [v for v in keys[k] if v is not None]
        typ: pa.DataType | None
        try:
            typ = infer_arrow_type(values) if values else pa.string()
        except NoArrowType:
            typ = None
        if typ is None or _has_null_or_empty_struct(typ):  # no usable type: JSON text
            typ = pa.string()
            as_json.add(k)
        fields.append(pa.field(k, typ))
    if not fields:
        return None, set()
    return pa.struct(fields), as_json


def _has_null_or_empty_struct(typ: pa.DataType) -> bool:
    if pa.types.is_null(typ):
        return True
    if pa.types.is_struct(typ):
        return typ.num_fields == 0 or any(_has_null_or_empty_struct(f.type) for f in typ)
    if pa.types.is_list(typ) or pa.types.is_large_list(typ):
        return _has_null_or_empty_struct(typ.value_type)
    return False


def jsonify(d: Mapping[str, Any], as_json: Container[str]) -> dict[str, Any]:
    """``d`` with the values of the ``as_json`` keys as JSON text (see `infer_struct`)."""
    return {
        k: (json.dumps(v, sort_keys=True) if k in as_json and v is not None else v)
        for k, v in d.items()
    }


_TYPE_FEATURES: dict[str, Feature] = {
    "string": Value("string"),
    "int64": Value("int64"),
    "float64": Value("float64"),
}


def _table_columns(
    tables: Sequence[Table], rule: TableRule, where: str, problems: list[Problem]
) -> list[tuple[str, str, str]]:
    """(source column, output column, merged type) for a family of tables."""
    order: list[str] = []
    types: dict[str, str] = {}
    for t in tables:
        for c in t.columns:
            if c not in types:
                order.append(c)
                types[c] = t.types[c]
            else:
                types[c] = merge_types(types[c], t.types[c])
    if rule.columns is not None:
        missing = [c for c in rule.columns if c not in types]
        if missing:
            problems.append(
                Problem(
                    Severity.ERROR,
                    "config-column",
                    where,
                    f"config selects column(s) {', '.join(missing)} that no table has",
                    f"available: {', '.join(order) or 'none'}",
                )
            )
        order = [c for c in rule.columns if c in types]
    return [(c, rule.rename.get(c, c), rule.types.get(c, types[c])) for c in order]


def _cast(value: Any, typ: str) -> Any:
    if value is None:
        return None
    if typ == "string":
        return str(value)
    if typ == "float64":
        return float(value)
    if typ == "int64" and not isinstance(value, int):
        as_float = float(value)
        if not as_float.is_integer():
            raise ValueError(value)
        return int(as_float)
    return value


class RowBuilder:
    """Builds columns and rows for one inventory; a layout subclasses it and implements `rows`."""

    def __init__(self, inv: Inventory, options: PlanOptions) -> None:
        self.inv = inv
        self.options = options
        self.config = options.config
        self.problems: list[Problem] = []
        self.columns: list[ColumnSpec] = []
        self.index = SidecarIndex(inv.sidecars)
        self.left_out: list[SourceFile] = [
            f for f in inv.files if f.placement is Placement.LEFT_OUT
        ]
        self.row_files: dict[tuple[str, str], list[SourceFile]] = defaultdict(list)
        for f in inv.files:
            if f.row_key is not None:
                self.row_files[f.row_key].append(f)
        self.nifti2 = {f.relpath for f in inv.files if f.nifti_version == 2}
        self.kinds: dict[str, KindSummary] = {}

    # -- shared pieces -------------------------------------------------------------------
    def add(self, spec: ColumnSpec) -> None:
        if any(c.name == spec.name for c in self.columns):
            spec = ColumnSpec(**{**spec.__dict__, "name": f"{spec.name}_"})
        self.columns.append(spec)

    def used(self) -> set[str]:
        return {c.name for c in self.columns}

    def leave_out(self, f: SourceFile, reason: str) -> None:
        # A copy: planning never changes the inventory, so it can be planned again differently.
        self.left_out.append(replace(f, placement=Placement.LEFT_OUT, reason=reason))

    def meta_columns(self) -> tuple[list[tuple[str, str, str]], list[tuple[str, str, str]]]:
        parts = [self.inv.participants] if self.inv.participants is not None else []
        p_cols = _table_columns(parts, self.config.participants, "participants.tsv", self.problems)
        s_cols = _table_columns(
            list(self.inv.sessions.values()), self.config.sessions, "sessions.tsv", self.problems
        )
        return p_cols, s_cols

    def add_meta_columns(
        self, p_cols: list[tuple[str, str, str]], s_cols: list[tuple[str, str, str]]
    ) -> tuple[list[tuple[str, str, str]], list[tuple[str, str, str]]]:
        out = []
        for family, cols in (("participants", p_cols), ("sessions", s_cols)):
            renamed = []
            for src, dst, typ in cols:
                if dst in self.used():
                    dst = f"{family}_{dst}"
                self.add(ColumnSpec(dst, Role.VALUE, _TYPE_FEATURES[typ], single=True))
                renamed.append((src, dst, typ))
            out.append(renamed)
        return out[0], out[1]

    def meta_values(
        self,
        subject: str,
        session: str,
        p_cols: list[tuple[str, str, str]],
        s_cols: list[tuple[str, str, str]],
    ) -> dict[str, Any]:
        values: dict[str, Any] = {}
        table = self.inv.participants
        prow = (table.rows.get(subject) or table.rows.get(subject[4:]) or {}) if table else {}
        for src, dst, typ in p_cols:
            values[dst] = self._cast(prow.get(src), typ, "participants.tsv", subject, src)
        stable = self.inv.sessions.get(subject)
        srow = (stable.rows.get(session) or stable.rows.get(session[4:]) or {}) if stable else {}
        for src, dst, typ in s_cols:
            values[dst] = self._cast(
                srow.get(src), typ, f"{subject}/{subject}_sessions.tsv", session, src
            )
        return values

    def _cast(self, value: Any, typ: str, where: str, row: str, column: str) -> Any:
        try:
            return _cast(value, typ)
        except (TypeError, ValueError):
            self.problems.append(
                Problem(
                    Severity.ERROR,
                    "tsv-type",
                    where,
                    f"{row}: {column}={value!r} is not a valid {typ}",
                    "fix the value, or the type given in the config",
                )
            )
            return None

    def effective(self, f: SourceFile) -> dict[str, Any]:
        assert f.parsed is not None and f.parsed.suffix is not None
        return self.index.effective(f.relpath, f.parsed.entities, f.parsed.suffix)

    def nifti_feature(self, files: Iterable[SourceFile]) -> Nifti:
        return Nifti(decode=not any(f.relpath in self.nifti2 for f in files))

    def count(self, kind: str, column: str, files: Sequence[SourceFile]) -> None:
        s = self.kinds.setdefault(f"{kind}\0{column}", KindSummary(kind, column))
        s.files += len(files)
        s.bytes += sum(f.size for f in files)
        s.rows += 1 if files else 0
        s.nifti2 = s.nifti2 or any(f.relpath in self.nifti2 for f in files)

    def add_other_files_columns(self) -> None:
        """The ``files`` column (every other file of the row, embedded) and its hashes."""
        self.add(
            ColumnSpec(
                "files",
                Role.FILE,
                List(Struct.of({"path": Value("string"), "bytes": Value("binary")})),
            )
        )
        self.add(ColumnSpec("files_sha256", Role.SHA256, List(Value("string"))))

    def rows(self) -> list[RowPlan]:
        """Declare the layout's columns (into `columns`) and return its rows."""
        raise NotImplementedError
