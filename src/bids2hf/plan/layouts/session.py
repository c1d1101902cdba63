"""``--layout session``: one row per subject/session, a list column per image kind (or per config column)."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

import bids2hf.bids.schema as bids_schema
from bids2hf.model.inventory import Problem, Severity, SourceFile
from bids2hf.model.rows import ColumnSpec, Role, RowPlan
from bids2hf.plan.builder import (
    ColumnFill,
    RowBuilder,
    entities_of,
    entity_feature,
    file_ref,
    infer_struct,
    jsonify,
    kind_column,
    kind_of,
    kind_sort,
    natural_key,
    stem,
)
from bids2hf.plan.config import ColumnRule
from bids2hf.plan.features import List, Value, generate_from_arrow_type

__all__ = ["DERIVED_ENTITIES", "KindColumns", "RuleColumn", "SessionLayout", "source_index"]

#: Entities a derivative adds to the name of its source image, ignored when matching the two
DERIVED_ENTITIES = frozenset({"description", "space", "resolution", "density", "label",
                              "segmentation", "hemisphere", "atlas", "cohort"})  # fmt: skip

_Key = tuple[str, str]


class SessionLayout(RowBuilder):
    """One row per subject/session: kind columns, or the config's ``[[columns]]``."""

    def rows(self) -> list[RowPlan]:
        cfg = self.config
        self.add(ColumnSpec("subject_id", Role.VALUE, Value("string"), single=True))
        self.add(ColumnSpec("session_id", Role.VALUE, Value("string"), single=True))
        images, others, all_by_kind = self._group()
        fills: list[ColumnFill]
        if cfg.selects_columns:
            fills = [c.fill for c in self._config_columns(all_by_kind)]
        else:
            fills = [c.fill for c in self._kind_columns(all_by_kind)]
        p_cols, s_cols = self.add_meta_columns(*self.meta_columns())
        if cfg.other_files:
            self.add_other_files_columns()
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
            for fill in fills:
                selected |= fill(row, images[key])
            for files in images[key].values():
                for f in files:
                    if f.relpath not in selected:
                        self.leave_out(f, "image not selected by the config's columns")
            self._fill_other_files(row, others[key])
            rows.append(row)
        return rows

    def _group(
        self,
    ) -> tuple[
        dict[_Key, dict[str, list[SourceFile]]],
        dict[_Key, list[SourceFile]],
        dict[str, list[SourceFile]],
    ]:
        """(images by kind per row, the other files per row, every image by kind)."""
        images: dict[_Key, dict[str, list[SourceFile]]] = {}
        others: dict[_Key, list[SourceFile]] = {}
        all_by_kind: dict[str, list[SourceFile]] = defaultdict(list)
        for key, files in self.row_files.items():
            by_kind: dict[str, list[SourceFile]] = defaultdict(list)
            rest = []
            for f in files:
                if f.is_nifti and f.parsed is not None and f.parsed.suffix:
                    by_kind[kind_of(f)].append(f)
                    all_by_kind[kind_of(f)].append(f)
                else:
                    rest.append(f)
            images[key] = by_kind
            others[key] = rest
        return images, others, all_by_kind

    def _fill_other_files(self, row: RowPlan, rest: list[SourceFile]) -> None:
        if self.config.other_files:
            row.files["files"] = [file_ref(f) for f in rest]
            row.files["files_sha256"] = row.files["files"]
        else:
            for f in rest:
                self.leave_out(f, "non-image file, and the config sets other_files = false")

    def _kind_columns(self, all_by_kind: Mapping[str, list[SourceFile]]) -> list[KindColumns]:
        return [
            KindColumns.declare(self, kind, all_by_kind[kind])
            for kind in sorted(all_by_kind, key=kind_sort)
        ]

    def _config_columns(self, all_by_kind: Mapping[str, list[SourceFile]]) -> list[RuleColumn]:
        columns: list[RuleColumn] = []
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
                        _empty_hint(rule),
                    )
                )
            source = next((c for c in columns if c.rule.name == rule.source), None)
            columns.append(RuleColumn.declare(self, rule, matching, source))
        return columns


def _empty_hint(rule: ColumnRule) -> str:
    pipelines = sorted({k.split(":", 1)[0] for k in rule.kinds if ":" in k})
    if pipelines:  # derivatives are read only when asked for
        return f"check its kinds/where, and convert with --derivatives {' '.join(pipelines)}"
    return "check its kinds/where"


def source_index(f: SourceFile, candidates: list[SourceFile]) -> int | None:
    """The position in ``candidates`` of the one file whose entities, apart from
    :data:`DERIVED_ENTITIES`, equal those of ``f`` (its name says it was made from that file:
    same subject, session, acquisition, run, ...); ``None`` when no file or several do."""

    def key(x: SourceFile) -> dict[str, str]:
        return {k: v for k, v in (x.parsed.entities if x.parsed else {}).items()
                if k not in DERIVED_ENTITIES}  # fmt: skip

    mine = key(f)
    found = [i for i, c in enumerate(candidates) if key(c) == mine]
    return found[0] if len(found) == 1 else None


@dataclass(frozen=True)
class KindColumns:
    """The columns of one image kind: images, hashes, entities, bval/bvec and sidecar metadata."""

    builder: RowBuilder
    kind: str
    base: str
    sha: str | None
    #: (entity, column, as_int)
    entity_columns: tuple[tuple[str, str, bool], ...]
    #: the companion texts ("bval", "bvec") some image of the kind has
    texts: tuple[str, ...]
    metas: Mapping[str, dict[str, Any]]
    struct: pa.DataType | None
    as_json: frozenset[str]

    @classmethod
    def declare(cls, builder: RowBuilder, kind: str, files: list[SourceFile]) -> KindColumns:
        """Add the kind's columns to ``builder`` (in this order: the digests pin it)."""
        base = kind_column(kind)
        entity_names = sorted(
            {e for f in files for e in entities_of(f)}, key=bids_schema.entity_order_key
        )
        builder.add(ColumnSpec(base, Role.FILE, List(builder.nifti_feature(files)), nifti=True))
        if builder.config.sha256_columns:
            builder.add(ColumnSpec(f"{base}_sha256", Role.SHA256, List(Value("string"))))
        entity_columns = []
        for name in entity_names:
            feature, as_int = entity_feature(
                [entities_of(f)[name] for f in files if name in entities_of(f)], name
            )
            builder.add(ColumnSpec(f"{base}_{name}", Role.VALUE, List(feature)))
            entity_columns.append((name, f"{base}_{name}", as_int))
        texts = tuple(
            ext
            for ext in ("bval", "bvec")
            if any(f"{stem(f.relpath)}.{ext}" in builder.inv.texts for f in files)
        )
        for ext in texts:
            builder.add(ColumnSpec(f"{base}_{ext}", Role.VALUE, List(Value("string"))))
        metas = {f.relpath: builder.effective(f) for f in files}
        struct, as_json = infer_struct(list(metas.values()))
        if struct is not None:
            builder.add(
                ColumnSpec(f"{base}_meta", Role.VALUE, List(generate_from_arrow_type(struct)))
            )
        sha = f"{base}_sha256" if f"{base}_sha256" in builder.used() else None
        return cls(
            builder,
            kind,
            base,
            sha,
            tuple(entity_columns),
            texts,
            metas,
            struct,
            frozenset(as_json),
        )

    def fill(self, row: RowPlan, by_kind: Mapping[str, list[SourceFile]]) -> set[str]:
        """Fill the kind's columns of ``row``; the images placed."""
        base = self.base
        files = sorted(by_kind.get(self.kind, []), key=lambda f: natural_key(f.relpath))
        self.builder.count(self.kind, base, files)
        refs = [file_ref(f) for f in files]
        row.files[base] = refs
        if self.sha:
            row.files[self.sha] = refs
        for name, column, as_int in self.entity_columns:
            vals = [entities_of(f).get(name) for f in files]
            row.values[column] = [int(v) if as_int and v is not None else v for v in vals]
        for ext in self.texts:
            row.values[f"{base}_{ext}"] = [
                self.builder.inv.texts.get(f"{stem(f.relpath)}.{ext}") for f in files
            ]
        if self.struct is not None:
            row.values[f"{base}_meta"] = [
                jsonify(self.metas[f.relpath], self.as_json) for f in files
            ]
        return {f.relpath for f in files}


@dataclass(frozen=True)
class RuleColumn:
    """One column a config ``[[columns]]`` rule declares (its ``value``: image, sha256, path,
    bval, bvec, meta, ``meta:KEY`` or ``entity:NAME``)."""

    builder: RowBuilder
    rule: ColumnRule
    #: the column's name as declared (a clash gets a trailing ``_``)
    name: str
    as_json: frozenset[str]
    as_int: bool
    #: the image column ``rule.source`` names, and the name of ``<name>_source_index``
    source: RuleColumn | None = None
    index_name: str = ""
    #: row key → the files the row's column holds, in order (what ``source`` matches against)
    placed: dict[str, list[SourceFile]] = field(default_factory=dict)

    @classmethod
    def declare(
        cls,
        builder: RowBuilder,
        rule: ColumnRule,
        matching: list[SourceFile],
        source: RuleColumn | None = None,
    ) -> RuleColumn:
        """Add the rule's column to ``builder`` (and ``<name>_source_index`` if it has a
        ``source``); its feature comes from the files it matches."""
        value = rule.value

        def wrap(feature: Any) -> Any:
            return feature if rule.single else List(feature)

        as_json: set[str] = set()
        as_int = False
        if value == "image":
            builder.add(
                ColumnSpec(
                    rule.name,
                    Role.FILE,
                    wrap(builder.nifti_feature(matching)),
                    rule.single,
                    nifti=True,
                    description=rule.description,
                )
            )
        elif value == "sha256":
            builder.add(ColumnSpec(rule.name, Role.SHA256, wrap(Value("string")), rule.single))
        elif rule.map:  # readable names for entity:NAME or meta:KEY values: text
            builder.add(ColumnSpec(rule.name, Role.VALUE, wrap(Value("string")), rule.single))
        elif value.startswith("entity:"):
            name = value.split(":", 1)[1]
            found = [f.parsed.entities.get(name) for f in matching if f.parsed]
            feature, as_int = entity_feature([v for v in found if v is not None], name)
            builder.add(ColumnSpec(rule.name, Role.VALUE, wrap(feature), rule.single))
        elif value.startswith("meta:"):
            key = value.split(":", 1)[1]
            struct, as_json = infer_struct([{key: builder.effective(f).get(key)} for f in matching])
            typ = struct.field(key).type if struct is not None else pa.string()
            builder.add(
                ColumnSpec(rule.name, Role.VALUE, wrap(generate_from_arrow_type(typ)), rule.single)
            )
        else:  # path, bval, bvec, meta (JSON text)
            builder.add(ColumnSpec(rule.name, Role.VALUE, wrap(Value("string")), rule.single))
        name = builder.columns[-1].name
        if source is not None:  # the position of each file's source in that column's list
            idx = ColumnSpec(f"{name}_source_index", Role.VALUE, wrap(Value("int32")), rule.single)
            builder.add(idx)
        index_name = builder.columns[-1].name if source is not None else ""
        return cls(builder, rule, name, frozenset(as_json), as_int, source, index_name)

    def value_of(self, f: SourceFile) -> Any:
        """The cell value ``f`` gives (for the value kinds: not image or sha256)."""
        value = self.rule.value
        if value in ("bval", "bvec"):
            return self.builder.inv.texts.get(f"{stem(f.relpath)}.{value}")
        if value == "path":
            return f.relpath
        if value == "meta":
            return json.dumps(self.builder.effective(f), sort_keys=True)
        if value.startswith("meta:"):
            key = value.split(":", 1)[1]
            if self.rule.map:
                return self.mapped(self.builder.effective(f).get(key))
            return jsonify(self.builder.effective(f), self.as_json).get(key)
        if value.startswith("entity:"):
            v = f.parsed.entities.get(value.split(":", 1)[1]) if f.parsed else None
            if self.rule.map:
                return self.mapped(v)
            return int(v) if self.as_int and v is not None else v
        raise AssertionError(value)

    def mapped(self, v: Any) -> str | None:
        """``v``'s name in the rule's ``map``; a value the map does not list is kept, as text
        (JSON text unless it is a string)."""
        if v is None:
            return None
        text = v if isinstance(v, str) else json.dumps(v, sort_keys=True)
        return self.rule.map.get(text, text)

    def pick(self, row: RowPlan, by_kind: Mapping[str, list[SourceFile]]) -> list[SourceFile]:
        """The row's files for this column: every match, or for a single column the one
        ``prefer`` ranks first (the others left out); more than one left is an error."""
        rule = self.rule
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
                    if rule.value == "image":
                        self.builder.leave_out(
                            f, f"column {rule.name} holds one image per row and prefers another"
                        )
                files = files[:1]
        if rule.single and len(files) > 1:
            self.builder.problems.append(
                Problem(
                    Severity.ERROR,
                    "config-single",
                    files[1].relpath,
                    f"row {row.key}: column {rule.name} is single but {len(files)} files match",
                    "drop `single` to keep every run, or narrow it with `where`",
                )
            )
            files = files[:1]
        return files

    def fill(self, row: RowPlan, by_kind: Mapping[str, list[SourceFile]]) -> set[str]:
        """Fill the column of ``row``; the images placed (none unless its value is image)."""
        value, name = self.rule.value, self.name
        files = self.pick(row, by_kind)
        if value == "image":
            self.builder.count(",".join(self.rule.kinds), name, files)
            self.placed[row.key] = files
        if self.source is not None:
            candidates = self.source.placed.get(row.key, [])
            indexes = [source_index(f, candidates) for f in files]
            single = indexes[0] if indexes else None
            row.values[self.index_name] = single if self.rule.single else indexes
        if value in ("image", "sha256"):
            row.files[name] = [file_ref(f) for f in files]
            return {f.relpath for f in files} if value == "image" else set()
        vals = [self.value_of(f) for f in files]
        row.values[name] = (vals[0] if vals else None) if self.rule.single else vals
        return set()
