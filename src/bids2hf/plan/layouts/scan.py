"""``--layout scan``: one row per image, with the files that belong to it; one more row per
subject/session for the files no image claims."""

from __future__ import annotations

import json
from typing import Any

import bids2hf.bids.schema as bids_schema
from bids2hf.model.inventory import Problem, Severity, SourceFile
from bids2hf.model.rows import ColumnSpec, Role, RowPlan
from bids2hf.plan.builder import (
    RowBuilder,
    entities_of,
    entity_feature,
    file_ref,
    kind_of,
    natural_key,
    stem,
)
from bids2hf.plan.features import Value

__all__ = ["ScanLayout"]

#: (entity, column, as_int)
_EntityColumns = list[tuple[str, str, bool]]


class ScanLayout(RowBuilder):
    """One row per image (``nifti``), its companions in ``files``."""

    def rows(self) -> list[RowPlan]:
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
        entity_cols = self._declare_columns(niftis)
        rows = []
        for (subject, session), files in self.row_files.items():
            base = {"subject_id": subject, "session_id": session or None}
            base.update(self.meta_values(subject, session, p_cols, s_cols))
            images = sorted((f for f in files if f in niftis), key=lambda f: natural_key(f.relpath))
            attached, loose = self._attach(files, images)
            rows += [self._image_row(f, base, attached[f.relpath], entity_cols) for f in images]
            if loose:
                rows.append(self._loose_row(subject, session, base, loose))
        rows.sort(key=lambda r: natural_key(r.key))
        return rows

    def _declare_columns(self, niftis: list[SourceFile]) -> _EntityColumns:
        """The columns after subject, session and the tables' (in this order: the digests pin it)."""
        for name in ("derivative", "datatype", "suffix"):
            self.add(ColumnSpec(name, Role.VALUE, Value("string"), single=True))
        entity_names = sorted(
            {e for f in niftis for e in entities_of(f)}, key=bids_schema.entity_order_key
        )
        entity_cols = []
        for e in entity_names:
            feature, as_int = entity_feature(
                [entities_of(f)[e] for f in niftis if e in entities_of(f)], e
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
        self.add_other_files_columns()
        return entity_cols

    def _attach(
        self, files: list[SourceFile], images: list[SourceFile]
    ) -> tuple[dict[str, list[SourceFile]], list[SourceFile]]:
        """(the companions of each image by its path, the files no image claims)."""
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
        return attached, loose

    def _image_row(
        self,
        f: SourceFile,
        base: dict[str, Any],
        companions: list[SourceFile],
        entity_cols: _EntityColumns,
    ) -> RowPlan:
        assert f.parsed is not None
        kind = kind_of(f)
        self.count(kind, "nifti", [f])
        ents = entities_of(f)
        values: dict[str, Any] = dict(base)
        values.update(
            derivative=f.derivative,
            datatype=f.parsed.datatype,
            suffix=f.parsed.suffix,
            metadata=json.dumps(self.effective(f), sort_keys=True),
            bval=self.inv.texts.get(f"{stem(f.relpath)}.bval"),
            bvec=self.inv.texts.get(f"{stem(f.relpath)}.bvec"),
        )
        for e, col, as_int in entity_cols:
            v = ents.get(e)
            values[col] = int(v) if as_int and v is not None else v
        row = RowPlan(f.relpath, values)
        row.files["nifti"] = [file_ref(f)]
        if self.config.sha256_columns:
            row.files["nifti_sha256"] = [file_ref(f)]
        row.files["files"] = row.files["files_sha256"] = [
            file_ref(g) for g in sorted(companions, key=lambda g: g.relpath)
        ]
        return row

    def _loose_row(
        self, subject: str, session: str, base: dict[str, Any], loose: list[SourceFile]
    ) -> RowPlan:
        folder = subject + (f"/{session}" if session else "")
        values = dict(base)
        values.update(
            {c.name: None for c in self.columns if c.role is Role.VALUE and c.name not in values}
        )
        row = RowPlan(folder + "/", values)
        row.files["nifti"] = []
        if self.config.sha256_columns:
            row.files["nifti_sha256"] = []
        row.files["files"] = row.files["files_sha256"] = [
            file_ref(g) for g in sorted(loose, key=lambda g: g.relpath)
        ]
        return row

    @staticmethod
    def _belongs(companion: SourceFile, image: SourceFile) -> bool:
        if companion.parsed is None or image.parsed is None:
            return False
        same_dir = companion.relpath.rsplit("/", 1)[0] == image.relpath.rsplit("/", 1)[0]
        return same_dir and companion.parsed.entities == image.parsed.entities
