"""The text files of a synthetic dataset: JSON sidecars, TSV tables, bval/bvec (the `_TextFiles`
mixin of the layout planner), and the helpers that write them."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence

import numpy as np

from bids2hf.testing.spec import SyntheticSpec, _Acq, _NiftiItem, _Subject, _TextItem

_BIDS_VERSION = "1.9.0"
_TOP_REST_TR = 2.0
_OVERRIDE_REST_TR = 2.5


def _file_rng(seed: int, rel: str, salt: str = "") -> np.random.Generator:
    """Random generator seeded from the seed, a relative path and a salt."""
    digest = hashlib.sha256(f"{seed}\x00{salt}\x00{rel}".encode()).digest()
    return np.random.default_rng(np.random.SeedSequence(int.from_bytes(digest, "little")))


def _json_bytes(obj: object) -> bytes:
    return (json.dumps(obj, indent=2) + "\n").encode()


def _tsv_bytes(
    header: Sequence[str], rows: Sequence[Sequence[object]], newline: bool = True
) -> bytes:
    lines = ["\t".join(header)] + ["\t".join(str(v) for v in row) for row in rows]
    return ("\n".join(lines) + ("\n" if newline else "")).encode()


class _TextFiles:
    """The planner's text files: dataset-level files, tables, sidecars, events, bval/bvec.

    A mixin of ``layout._Planner``, which sets the attributes below and adds the NIfTI files.
    """

    spec: SyntheticSpec
    items: list[_NiftiItem | _TextItem]
    _hashes: set[bytes]
    missing_participants: list[str]

    def text(self, rel: str, build: Callable[[np.random.Generator], bytes]) -> None:
        """Add a text file; rebuild it with a new random stream if it duplicates another.

        After 100 attempts a duplicate is accepted: this can only happen for tiny files with
        few possible contents (``.bval`` with ``n_volumes <= 2`` in very large datasets).
        """
        data = b""
        for attempt in range(100):
            data = build(_file_rng(self.spec.seed, rel, f"text{attempt}"))
            if hashlib.sha256(data).digest() not in self._hashes:
                break
        self._hashes.add(hashlib.sha256(data).digest())
        self.items.append(_TextItem(rel, data))

    def _top_level(self, subjects: list[_Subject]) -> None:
        spec = self.spec
        arc = spec.arc_shaped
        name = "Aphasia Recovery Cohort (synthetic)" if arc else "bids2hf synthetic dataset"
        self.text(
            "dataset_description.json",
            lambda _: _json_bytes(
                {
                    "Name": f"{name}, seed {spec.seed}",
                    "BIDSVersion": _BIDS_VERSION,
                    "DatasetType": "raw",
                    "License": "CC0",
                    "Authors": ["Synthetic Author A", "Synthetic Author B"],
                    "GeneratedBy": [
                        {"Name": "bids2hf.synthetic", "Description": "random int16 noise"}
                    ],
                }
            ),
        )
        self.text(
            "README",
            lambda _: (
                f"# {name}\n\nSynthetic BIDS dataset written by bids2hf.synthetic "
                f"(seed {spec.seed}, {spec.n_subjects} subjects).\nImages contain random "
                "noise; metadata values are random but plausible.\n"
            ).encode(),
        )
        self.text(
            "CHANGES",
            lambda _: b"1.0.0 2024-01-01\n  - Initial synthetic release.\n",
        )
        self.text(
            "task-rest_bold.json",
            lambda _: _json_bytes(
                {
                    "TaskName": "rest",
                    "TaskDescription": "Eyes open resting state.",
                    "RepetitionTime": _TOP_REST_TR,
                }
            ),
        )
        self._participants(subjects)

    def _participants(self, subjects: list[_Subject]) -> None:
        arc = self.spec.arc_shaped
        rows = [s.row for s in subjects]
        if arc:
            header = ["participant_id", "sex", "age_at_stroke", "race", "wab_days", "wab_aq",
                      "wab_type"]  # fmt: skip
            rows.sort(key=lambda r: (int(str(r["age_at_stroke"])), str(r["participant_id"])))
            sidecar: dict[str, object] = {
                "participant_id": {"Description": "Unique participant identifier."},
                "sex": {
                    "Description": "Self-reported sex.",
                    "Levels": {"M": "male", "F": "female"},
                },
                "age_at_stroke": {"Description": "Age at stroke onset.", "Units": "years"},
                "race": {
                    "Description": "Self-reported race.",
                    "Levels": {"b": "Black or African American", "w": "White"},
                },
                "wab_days": {
                    "Description": "Days between stroke and the WAB assessment.",
                    "Units": "days",
                },
                "wab_aq": {
                    "Description": "Western Aphasia Battery-Revised Aphasia Quotient (0-100).",
                },
                "wab_type": {
                    "Description": "Aphasia type from the WAB; None if not aphasic by WAB.",
                    "Levels": {
                        k: f"{k} aphasia" if k != "None" else "not aphasic by WAB"
                        for k in ("Anomic", "Broca", "Conduction", "Global", "Wernicke", "None")
                    },
                },
            }
        else:
            header = ["participant_id", "age", "sex", "group"]
            sidecar = {
                "participant_id": {"Description": "Unique participant identifier."},
                "age": {"Description": "Age at the first session.", "Units": "years"},
                "sex": {
                    "Description": "Sex of the participant.",
                    "Levels": {"M": "male", "F": "female"},
                },
                "group": {
                    "Description": "Study group.",
                    "Levels": {"patient": "patient", "control": "healthy control"},
                },
            }
        table = [[r[h] for h in header] for r in rows]
        self.text("participants.tsv", lambda _: _tsv_bytes(header, table, newline=not arc))
        self.text("participants.json", lambda _: _json_bytes(sidecar))

    def _sessions_tsv(self, subject: _Subject) -> None:
        if self.spec.arc_shaped:  # first scan some time after the stroke
            days = float(str(subject.row["wab_days"]))
            base_age = float(str(subject.row["age_at_stroke"])) + days / 365.25
        else:
            base_age = float(str(subject.row["age"]))
        labels = [s for s in subject.sessions if s is not None]

        def build(rng: np.random.Generator) -> bytes:
            age = base_age
            rows = []
            for label in labels:
                rows.append([f"ses-{label}", f"{age:.2f}", str(rng.choice(["Prisma", "Trio"]))])
                age += float(rng.uniform(0.1, 2.0))
            return _tsv_bytes(["session_id", "age", "scanner"], rows)

        self.text(f"sub-{subject.label}/sub-{subject.label}_sessions.tsv", build)

    def _tr(self, acq: _Acq, rest_override: bool) -> float:
        if acq.entities.get("task") == "rest":
            return _OVERRIDE_REST_TR if rest_override else _TOP_REST_TR
        return 1.65

    def _sidecar(
        self,
        acq: _Acq,
        rest_override: bool,
        hh: int,
        mm: int,
        dwi_names: list[str],
        sdir: str,
    ) -> Callable[[np.random.Generator], bytes] | None:
        suffix = acq.suffix
        if suffix == "sbref":
            return None
        task = acq.entities.get("task")

        def build(rng: np.random.Generator) -> bytes:
            micro = int(rng.integers(0, 60_000_000))
            meta: dict[str, object] = {
                "Manufacturer": "Siemens",
                "ManufacturersModelName": "Prisma_fit",
                "MagneticFieldStrength": 3,
                "SeriesNumber": acq.series,
                "AcquisitionTime": f"{hh:02d}:{mm:02d}:{micro // 1_000_000:02d}."
                f"{micro % 1_000_000:06d}",
            }
            if suffix in ("T1w", "T2w", "FLAIR"):
                te = {"T1w": 0.00226, "T2w": 0.408, "FLAIR": 0.388}[suffix]
                tr = {"T1w": 2.25, "T2w": 3.2, "FLAIR": 5.0}[suffix]
                if acq.entities.get("acq", "").startswith("tse"):
                    te, tr = 0.1, 6.0
                meta["EchoTime"] = round(te * float(rng.uniform(0.98, 1.02)), 6)
                meta["RepetitionTime"] = tr
                if suffix != "T2w":
                    meta["InversionTime"] = 0.9 if suffix == "T1w" else 1.8
            elif suffix == "bold":
                meta["EchoTime"] = round(0.03 + float(rng.uniform(0, 0.005)), 6)
                meta["PhaseEncodingDirection"] = "j-"
                if task != "rest":
                    meta["TaskName"] = task
                    meta["RepetitionTime"] = self._tr(acq, rest_override)
                elif rest_override:
                    meta["RepetitionTime"] = _OVERRIDE_REST_TR
            elif suffix == "dwi":
                meta["EchoTime"] = round(0.08 + float(rng.uniform(0, 0.01)), 6)
                meta["RepetitionTime"] = 5.9
                meta["PhaseEncodingDirection"] = "j-" if acq.entities.get("dir") == "AP" else "j"
                meta["TotalReadoutTime"] = 0.0512
            elif suffix == "epi":
                meta["EchoTime"] = round(0.08 + float(rng.uniform(0, 0.01)), 6)
                meta["RepetitionTime"] = 5.9
                meta["PhaseEncodingDirection"] = "j"
                meta["TotalReadoutTime"] = 0.0512
                meta["IntendedFor"] = [f"bids::{n}" for n in dwi_names]
            return _json_bytes(meta)

        return build

    def _events(self, acq: _Acq) -> Callable[[np.random.Generator], bytes]:
        duration = self.spec.n_volumes * self._tr(acq, False)
        naming = acq.entities.get("task") == "naming40"

        def build(rng: np.random.Generator) -> bytes:
            rows: list[list[object]] = []
            onset = float(rng.uniform(0.0, 1.0))
            while onset < duration or not rows:
                dur = f"{float(rng.uniform(0.5, 3.0)):.3f}"
                if naming:
                    rt: object = round(float(rng.uniform(0.4, 2.5)), 3)
                    if rng.random() < 0.15:
                        rt = "n/a"
                    kind = "picture" if rng.random() < 0.75 else "abstract"
                    rows.append([f"{onset:.3f}", dur, kind, rt])
                else:
                    rows.append([f"{onset:.3f}", dur, "fixation"])
                onset += float(dur) + float(rng.uniform(0.5, 4.0))
            header = ["onset", "duration", "trial_type"] + (["response_time"] if naming else [])
            return _tsv_bytes(header, rows)

        return build

    def _bval(self, rng: np.random.Generator) -> bytes:
        n = self.spec.n_volumes
        shells = rng.choice([1000, 2000, 3000], size=n) + 5 * rng.integers(-10, 11, size=n)
        values = [int(v) for v in shells]
        if n >= 2:
            values[0] = 0
        return (" ".join(str(v) for v in values) + "\n").encode()

    def _bvec(self, rng: np.random.Generator) -> bytes:
        n = self.spec.n_volumes
        vecs = rng.normal(size=(3, n))
        vecs /= np.linalg.norm(vecs, axis=0, keepdims=True)
        if n >= 2:
            vecs[:, 0] = 0.0
        rows = [" ".join(f"{v:.6f}" for v in row) for row in vecs]
        return ("\n".join(rows) + "\n").encode()

    def _derivatives_description(self) -> None:
        self.text(
            "derivatives/lesion_masks/dataset_description.json",
            lambda _: _json_bytes(
                {
                    "Name": "Lesion masks",
                    "BIDSVersion": _BIDS_VERSION,
                    "DatasetType": "derivative",
                    "License": "CC0",
                    "GeneratedBy": [{"Name": "Manual", "Description": "Manual tracing."}],
                    "DatasetLinks": {"raw": "../../"},
                }
            ),
        )
