"""Columns and rows for one inventory: the shared column pieces, feature inference and both layouts' row builders.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import pyarrow as pa
from datasets import List, Nifti, Value
from datasets.features.features import generate_from_arrow_type

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
from bids2hf.plan.config import ColumnRule, TableRule
from bids2hf.plan.options import PlanOptions

__all__ = ["KindSummary", "natural_key"]

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


def _ref(f: SourceFile) -> FileRef:
    return FileRef(f.relpath, f.size, f.mtime_ns)


def _kind_of(f: SourceFile) -> str:
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


def _kind_column(kind: str) -> str:
    return re.sub(r"[^0-9A-Za-z]+", "_", kind.replace(":", "_").replace("/", "_")).strip("_")


def _kind_sort(kind: str) -> tuple[Any, ...]:
    pipeline, _, rest = kind.rpartition(":")
    datatype, _, suffix = rest.partition("/")
    order = _DATATYPE_ORDER.index(datatype) if datatype in _DATATYPE_ORDER else len(_DATATYPE_ORDER)
    return (pipeline, order, datatype, suffix)


def _stem(relpath: str) -> str:
    return relpath[: len(relpath) - len(bids_schema.split_extension(relpath.rsplit("/", 1)[-1])[1])]


def _entities(f: SourceFile) -> dict[str, str]:
    assert f.parsed is not None
    return {k: v for k, v in f.parsed.entities.items() if k not in ("subject", "session")}


def _entity_feature(values: Iterable[str], name: str) -> tuple[Any, bool]:
    """(feature, as_int) for an entity column: index entities become int32 when they can."""
    entity = bids_schema.entity_by_name().get(name)
    as_int = bool(entity and entity.is_index and all(v.isdigit() for v in values))
    return Value("int32" if as_int else "string"), as_int


def _infer_struct(dicts: Sequence[Mapping[str, Any]]) -> tuple[pa.DataType | None, set[str]]:
    """Arrow struct type holding all the dicts; keys whose values disagree fall back to JSON text."""
    keys: dict[str, list[Any]] = defaultdict(list)
    for d in dicts:
        for k, v in d.items():
            keys[k].append(v)
    fields = []
    as_json: set[str] = set()
    for k in sorted(keys):
        values = [v for v in keys[k] if v is not None]
        try:
            typ = pa.array(values).type if values else pa.string()
            if pa.types.is_null(typ) or _has_null_or_empty_struct(typ):
                raise pa.ArrowInvalid("no usable type")
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, TypeError):
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


def _jsonify(d: Mapping[str, Any], as_json: set[str]) -> dict[str, Any]:
    return {
        k: (json.dumps(v, sort_keys=True) if k in as_json and v is not None else v)
        for k, v in d.items()
    }


_TYPE_FEATURES = {"string": Value("string"), "int64": Value("int64"), "float64": Value("float64")}


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


class _Builder:
    """Builds columns and rows for one inventory; a helper object to keep `make_plan` short."""

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

    # -- layouts -------------------------------------------------------------------------
    def session_rows(self) -> list[RowPlan]:
        cfg = self.config
        self.add(ColumnSpec("subject_id", Role.VALUE, Value("string"), single=True))
        self.add(ColumnSpec("session_id", Role.VALUE, Value("string"), single=True))
        images: dict[tuple[str, str], dict[str, list[SourceFile]]] = {}
        others: dict[tuple[str, str], list[SourceFile]] = {}
        all_by_kind: dict[str, list[SourceFile]] = defaultdict(list)
        for key, files in self.row_files.items():
            by_kind: dict[str, list[SourceFile]] = defaultdict(list)
            rest = []
            for f in files:
                if f.is_nifti and f.parsed is not None and f.parsed.suffix:
                    by_kind[_kind_of(f)].append(f)
                    all_by_kind[_kind_of(f)].append(f)
                else:
                    rest.append(f)
            images[key] = by_kind
            others[key] = rest
        if cfg.selects_columns:
            builders = self._config_columns(all_by_kind)
        else:
            builders = self._kind_columns(all_by_kind)
        p_cols, s_cols = self.add_meta_columns(*self.meta_columns())
        if cfg.other_files:
            self.add(
                ColumnSpec(
                    "files", Role.FILE, List({"path": Value("string"), "bytes": Value("binary")})
                )
            )
            self.add(ColumnSpec("files_sha256", Role.SHA256, List(Value("string"))))
        rows = []
        for key in sorted(self.row_files, key=lambda k: (natural_key(k[0]), natural_key(k[1]))):
            subject, session = key
            values: dict[str, Any] = {
                "subject_id": subject,
                "session_id": session or None,
            }
            values.update(self.meta_values(subject, session, p_cols, s_cols))
            row = RowPlan(subject + (f"_{session}" if session else ""), values)
            selected: set[str] = set()
            for build in builders:
                selected |= build(row, images[key])
            for files in images[key].values():
                for f in files:
                    if f.relpath not in selected:
                        self.leave_out(f, "image not selected by the config's columns")
            rest = others[key]
            if cfg.other_files:
                row.files["files"] = [_ref(f) for f in rest]
                row.files["files_sha256"] = row.files["files"]
            else:
                for f in rest:
                    self.leave_out(f, "non-image file, and the config sets other_files = false")
            rows.append(row)
        return rows

    def _kind_columns(self, all_by_kind: Mapping[str, list[SourceFile]]) -> list[Any]:
        builders = []
        for kind in sorted(all_by_kind, key=_kind_sort):
            files = all_by_kind[kind]
            base = _kind_column(kind)
            entity_names = sorted(
                {e for f in files for e in _entities(f)}, key=bids_schema.entity_order_key
            )
            self.add(ColumnSpec(base, Role.FILE, List(self.nifti_feature(files)), nifti=True))
            if self.config.sha256_columns:
                self.add(ColumnSpec(f"{base}_sha256", Role.SHA256, List(Value("string"))))
            entity_specs = []
            for name in entity_names:
                feature, as_int = _entity_feature(
                    [_entities(f)[name] for f in files if name in _entities(f)], name
                )
                self.add(ColumnSpec(f"{base}_{name}", Role.VALUE, List(feature)))
                entity_specs.append((name, f"{base}_{name}", as_int))
            texts = {
                ext: any(f"{_stem(f.relpath)}.{ext}" in self.inv.texts for f in files)
                for ext in ("bval", "bvec")
            }
            for ext, present in texts.items():
                if present:
                    self.add(ColumnSpec(f"{base}_{ext}", Role.VALUE, List(Value("string"))))
            metas = {f.relpath: self.effective(f) for f in files}
            struct, as_json = _infer_struct(list(metas.values()))
            if struct is not None:
                self.add(
                    ColumnSpec(f"{base}_meta", Role.VALUE, List(generate_from_arrow_type(struct)))
                )
            names = {c.name for c in self.columns}
            builders.append(
                self._kind_builder(kind, base, entity_specs, texts, metas, struct, as_json, names)
            )
        return builders

    def _kind_builder(
        self,
        kind: str,
        base: str,
        entity_specs: list[tuple[str, str, bool]],
        texts: Mapping[str, bool],
        metas: Mapping[str, dict[str, Any]],
        struct: pa.DataType | None,
        as_json: set[str],
        names: set[str],
    ) -> Any:
        sha = f"{base}_sha256" if f"{base}_sha256" in names else None

        def build(row: RowPlan, by_kind: Mapping[str, list[SourceFile]]) -> set[str]:
            files = sorted(by_kind.get(kind, []), key=lambda f: natural_key(f.relpath))
            self.count(kind, base, files)
            refs = [_ref(f) for f in files]
            row.files[base] = refs
            if sha:
                row.files[sha] = refs
            for name, column, as_int in entity_specs:
                vals = [_entities(f).get(name) for f in files]
                row.values[column] = [int(v) if as_int and v is not None else v for v in vals]
            for ext, present in texts.items():
                if present:
                    row.values[f"{base}_{ext}"] = [
                        self.inv.texts.get(f"{_stem(f.relpath)}.{ext}") for f in files
                    ]
            if struct is not None:
                row.values[f"{base}_meta"] = [_jsonify(metas[f.relpath], as_json) for f in files]
            return {f.relpath for f in files}

        return build

    def _config_columns(self, all_by_kind: Mapping[str, list[SourceFile]]) -> list[Any]:
        builders = []
        for rule in self.config.columns:
            matching = [
                f
                for k in rule.kinds
                for f in all_by_kind.get(k, [])
                if rule.matches(k, f.parsed.entities if f.parsed else {})
            ]
            if not matching:
                self.problems.append(
                    Problem(
                        Severity.WARNING,
                        "config-empty",
                        self.config.source,
                        f"column {rule.name} matches no file (kinds {', '.join(rule.kinds)})",
                        "check its kinds/where",
                    )
                )
            builders.append(self._rule_column(rule, matching))
        return builders

    def _rule_column(self, rule: ColumnRule, matching: list[SourceFile]) -> Any:
        value = rule.value

        def wrap(feature: Any) -> Any:
            return feature if rule.single else List(feature)

        as_json: set[str] = set()
        as_int = False
        if value == "image":
            self.add(
                ColumnSpec(
                    rule.name,
                    Role.FILE,
                    wrap(self.nifti_feature(matching)),
                    rule.single,
                    nifti=True,
                    description=rule.description,
                )
            )
        elif value == "sha256":
            self.add(ColumnSpec(rule.name, Role.SHA256, wrap(Value("string")), rule.single))
        elif value.startswith("entity:"):
            name = value.split(":", 1)[1]
            feature, as_int = _entity_feature(
                [
                    f.parsed.entities[name]
                    for f in matching
                    if f.parsed and name in f.parsed.entities
                ],
                name,
            )
            self.add(ColumnSpec(rule.name, Role.VALUE, wrap(feature), rule.single))
        elif value.startswith("meta:"):
            key = value.split(":", 1)[1]
            struct, as_json = _infer_struct([{key: self.effective(f).get(key)} for f in matching])
            typ = struct.field(key).type if struct is not None else pa.string()
            self.add(
                ColumnSpec(rule.name, Role.VALUE, wrap(generate_from_arrow_type(typ)), rule.single)
            )
        else:  # path, bval, bvec, meta (JSON text)
            self.add(ColumnSpec(rule.name, Role.VALUE, wrap(Value("string")), rule.single))
        name = self.columns[-1].name

        def one(f: SourceFile) -> Any:
            if value in ("bval", "bvec"):
                return self.inv.texts.get(f"{_stem(f.relpath)}.{value}")
            if value == "path":
                return f.relpath
            if value == "meta":
                return json.dumps(self.effective(f), sort_keys=True)
            if value.startswith("meta:"):
                return _jsonify(self.effective(f), as_json).get(value.split(":", 1)[1])
            if value.startswith("entity:"):
                v = f.parsed.entities.get(value.split(":", 1)[1]) if f.parsed else None
                return int(v) if as_int and v is not None else v
            raise AssertionError(value)

        def build(row: RowPlan, by_kind: Mapping[str, list[SourceFile]]) -> set[str]:
            files = sorted(
                (
                    f
                    for k in rule.kinds
                    for f in by_kind.get(k, [])
                    if rule.matches(k, f.parsed.entities if f.parsed else {})
                ),
                key=lambda f: natural_key(f.relpath),
            )
            if rule.single and len(files) > 1 and rule.prefer:
                files.sort(key=lambda f: rule.rank(f.parsed.entities if f.parsed else {}))
                ranks = [rule.rank(f.parsed.entities if f.parsed else {}) for f in files]
                if ranks[0] != ranks[1]:
                    for f in files[1:]:
                        if value == "image":
                            self.leave_out(
                                f, f"column {rule.name} holds one image per row and prefers another"
                            )
                    files = files[:1]
            if rule.single and len(files) > 1:
                self.problems.append(
                    Problem(
                        Severity.ERROR,
                        "config-single",
                        files[1].relpath,
                        f"row {row.key}: column {rule.name} is single but {len(files)} files match",
                        "drop `single` to keep every run, or narrow it with `where`",
                    )
                )
                files = files[:1]
            if value == "image":
                self.count(",".join(rule.kinds), name, files)
            if value in ("image", "sha256"):
                row.files[name] = [_ref(f) for f in files]
                return {f.relpath for f in files} if value == "image" else set()
            vals = [one(f) for f in files]
            row.values[name] = (vals[0] if vals else None) if rule.single else vals
            return set()

        return build

    def scan_rows(self) -> list[RowPlan]:
        if self.config.selects_columns:
            self.problems.append(
                Problem(
                    Severity.ERROR,
                    "config-layout",
                    self.config.source,
                    "config [[columns]] apply to --layout session",
                    "drop them or use --layout session",
                )
            )
        self.add(ColumnSpec("subject_id", Role.VALUE, Value("string"), single=True))
        self.add(ColumnSpec("session_id", Role.VALUE, Value("string"), single=True))
        p_cols, s_cols = self.add_meta_columns(*self.meta_columns())
        niftis = [
            f
            for files in self.row_files.values()
            for f in files
            if f.is_nifti and f.parsed and f.parsed.suffix
        ]
        for name in ("derivative", "datatype", "suffix"):
            self.add(ColumnSpec(name, Role.VALUE, Value("string"), single=True))
        entity_names = sorted(
            {e for f in niftis for e in _entities(f)}, key=bids_schema.entity_order_key
        )
        entity_cols = []
        for e in entity_names:
            feature, as_int = _entity_feature(
                [_entities(f)[e] for f in niftis if e in _entities(f)], e
            )
            col = e if e not in self.used() else f"entity_{e}"
            self.add(ColumnSpec(col, Role.VALUE, feature, single=True))
            entity_cols.append((e, col, as_int))
        self.add(
            ColumnSpec("nifti", Role.FILE, self.nifti_feature(niftis), single=True, nifti=True)
        )
        if self.config.sha256_columns:
            self.add(ColumnSpec("nifti_sha256", Role.SHA256, Value("string"), single=True))
        self.add(ColumnSpec("metadata", Role.VALUE, Value("string"), single=True))
        self.add(ColumnSpec("bval", Role.VALUE, Value("string"), single=True))
        self.add(ColumnSpec("bvec", Role.VALUE, Value("string"), single=True))
        self.add(
            ColumnSpec(
                "files", Role.FILE, List({"path": Value("string"), "bytes": Value("binary")})
            )
        )
        self.add(ColumnSpec("files_sha256", Role.SHA256, List(Value("string"))))
        rows = []
        for (subject, session), files in self.row_files.items():
            base = {"subject_id": subject, "session_id": session or None}
            base.update(self.meta_values(subject, session, p_cols, s_cols))
            images = sorted((f for f in files if f in niftis), key=lambda f: natural_key(f.relpath))
            attached: dict[str, list[SourceFile]] = {f.relpath: [] for f in images}
            loose = []
            for g in files:
                if g in images:
                    continue
                owner = next((f for f in images if self._belongs(g, f)), None)
                if owner is None:
                    loose.append(g)
                else:
                    attached[owner.relpath].append(g)
            for f in images:
                assert f.parsed is not None
                kind = _kind_of(f)
                self.count(kind, "nifti", [f])
                ents = _entities(f)
                values: dict[str, Any] = dict(base)
                values.update(
                    derivative=f.derivative,
                    datatype=f.parsed.datatype,
                    suffix=f.parsed.suffix,
                    metadata=json.dumps(self.effective(f), sort_keys=True),
                    bval=self.inv.texts.get(f"{_stem(f.relpath)}.bval"),
                    bvec=self.inv.texts.get(f"{_stem(f.relpath)}.bvec"),
                )
                for e, col, as_int in entity_cols:
                    v = ents.get(e)
                    values[col] = int(v) if as_int and v is not None else v
                row = RowPlan(f.relpath, values)
                row.files["nifti"] = [_ref(f)]
                if self.config.sha256_columns:
                    row.files["nifti_sha256"] = [_ref(f)]
                row.files["files"] = row.files["files_sha256"] = [
                    _ref(g) for g in sorted(attached[f.relpath], key=lambda g: g.relpath)
                ]
                rows.append(row)
            if loose:
                folder = subject + (f"/{session}" if session else "")
                values = dict(base)
                values.update(
                    {
                        c.name: None
                        for c in self.columns
                        if c.role is Role.VALUE and c.name not in values
                    }
                )
                row = RowPlan(folder + "/", values)
                row.files["nifti"] = []
                if self.config.sha256_columns:
                    row.files["nifti_sha256"] = []
                row.files["files"] = row.files["files_sha256"] = [
                    _ref(g) for g in sorted(loose, key=lambda g: g.relpath)
                ]
                rows.append(row)
        rows.sort(key=lambda r: natural_key(r.key))
        return rows

    @staticmethod
    def _belongs(companion: SourceFile, image: SourceFile) -> bool:
        if companion.parsed is None or image.parsed is None:
            return False
        same_dir = companion.relpath.rsplit("/", 1)[0] == image.relpath.rsplit("/", 1)[0]
        return same_dir and companion.parsed.entities == image.parsed.entities
