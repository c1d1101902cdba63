"""Which files a synthetic dataset has: subjects, sessions and acquisitions, as planned items."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping

import numpy as np

from bids2hf.testing.spec import SyntheticSpec, _Acq, _NiftiItem, _Subject, _TextItem, bids_filename
from bids2hf.testing.texts import (
    _BIDS_VERSION,
    _OVERRIDE_REST_TR,
    _TOP_REST_TR,
    _file_rng,
    _json_bytes,
    _tsv_bytes,
)


class _Planner:
    """Builds the list of files (text content fully, NIfTIs as shapes) for a spec."""

    def __init__(self, spec: SyntheticSpec) -> None:
        self.spec = spec
        self.items: list[_NiftiItem | _TextItem] = []
        self._hashes: set[bytes] = set()
        self.missing_participants: list[str] = []

    # -- helpers -------------------------------------------------------------------------

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

    def nifti(self, rel: str, four_d: bool, zooms: tuple[float, ...]) -> None:
        self.items.append(
            _NiftiItem(rel, self.spec.image_shape, self.spec.n_volumes if four_d else None, zooms)
        )

    @property
    def ext(self) -> str:
        return ".nii.gz" if self.spec.compress else ".nii"

    # -- top level -----------------------------------------------------------------------

    def plan(self) -> None:
        spec = self.spec
        subjects = self._subjects()
        rest_subjects: list[str] = []
        session_acqs: list[tuple[_Subject, str | None, int, list[_Acq]]] = []
        real = subjects[: spec.n_subjects]  # the rest are participants without a folder
        g = 0
        for subject in real:
            for ses in subject.sessions:
                acqs = self._arc_acqs(g) if spec.arc_shaped else self._default_acqs(g)
                session_acqs.append((subject, ses, g, acqs))
                has_rest = any(a.entities.get("task") == "rest" for a in acqs)
                if has_rest and subject.label not in rest_subjects:
                    rest_subjects.append(subject.label)
                g += 1
        override = rest_subjects[min(1, len(rest_subjects) - 1)] if rest_subjects else None

        self._top_level(subjects)
        lesion_sessions = self._lesion_sessions(session_acqs)
        for subject, ses, g, acqs in session_acqs:
            self._session(subject, ses, g, acqs, subject.label == override, lesion_sessions)
        for subject in real:
            if subject.sessions != [None]:
                self._sessions_tsv(subject)
        if spec.derivatives and lesion_sessions:
            self._derivatives_description()

    def _subjects(self) -> list[_Subject]:
        spec = self.spec
        n = spec.n_subjects
        rng = _file_rng(spec.seed, "participants.tsv", "rows")
        total = n + (1 if spec.participant_without_folder else 0)
        subjects: list[_Subject] = []
        width = max(2, len(str(total)))
        wab_types = ("Anomic", "Broca", "Conduction", "Global", "Wernicke")
        for i in range(1, total + 1):
            if spec.arc_shaped:
                label = f"M{2000 + i}"
                labels = spec.sessions or ("1",)
                count = len(labels) - (i - 1) % len(labels)
                sessions: list[str | None] = list(labels[:count])
                low, high = (93.8, 100.0) if rng.random() < 0.25 else (10.0, 93.7)
                wab_aq = round(float(rng.uniform(low, high)), 1)
                row: dict[str, object] = {
                    "participant_id": f"sub-{label}",
                    "sex": "M" if rng.random() < 0.6 else "F",
                    "age_at_stroke": int(rng.integers(20, 81)),
                    "race": "n/a" if i == 1 else ("b" if rng.random() < 0.2 else "w"),
                    "wab_days": int(rng.integers(42, 8799)),
                    "wab_aq": wab_aq,
                    "wab_type": "None" if wab_aq >= 93.8 else str(rng.choice(wab_types)),
                }
            else:
                label = f"{i:0{width}d}"
                sessions = list(spec.sessions) if spec.sessions else [None]
                row = {
                    "participant_id": f"sub-{label}",
                    "age": round(float(rng.uniform(18.0, 85.0)), 1),
                    "sex": "M" if rng.random() < 0.5 else "F",
                    "group": "n/a" if i > n else ("patient" if i % 2 else "control"),
                }
            subjects.append(_Subject(label, sessions, row))
        self.missing_participants = [f"sub-{s.label}" for s in subjects[n:]]
        return subjects

    # -- acquisition layouts ---------------------------------------------------------------

    def _default_acqs(self, g: int) -> list[_Acq]:
        spec = self.spec
        acqs = [_Acq("anat", {}, "T1w", False, 0)]
        if spec.multi_run and g % 3 == 1:
            acqs += [_Acq("anat", {"acq": "spc"}, "T2w", False, 0)]
            acqs += [_Acq("anat", {"acq": "tse"}, "T2w", False, 0)]
        else:
            acqs.append(_Acq("anat", {}, "T2w", False, 0))
        if g % 2 == 1:
            acqs.append(_Acq("anat", {}, "FLAIR", False, 0))
        if not (spec.missing_modalities and g % 4 == 2):
            runs = ["1", "2"] if spec.multi_run and g % 3 == 0 else [None]
            for run in runs:
                ent = {"task": "rest"} | ({"run": run} if run else {})
                acqs.append(_Acq("func", dict(ent), "bold", True, 0))
                acqs.append(_Acq("func", dict(ent), "sbref", False, 0))
            if g % 3 != 2:
                acqs.append(_Acq("func", {"task": "naming40"}, "bold", True, 0))
        if not (spec.missing_modalities and g % 4 == 3):
            acqs.append(_Acq("dwi", {"dir": "AP"}, "dwi", True, 0))
            acqs.append(_Acq("fmap", {"dir": "PA"}, "epi", False, 0))
        for i, acq in enumerate(acqs, start=1):
            acq.series = i
        return acqs

    def _arc_acqs(self, g: int) -> list[_Acq]:
        spec = self.spec
        series = 0

        def nxt() -> str:
            nonlocal series
            series += 1
            return str(series)

        acqs: list[_Acq] = []
        has_func = not (spec.missing_modalities and g % 4 == 2)
        has_dwi = not (spec.missing_modalities and g % 4 == 3)
        multi = spec.multi_run and g % 3 == 0
        if has_dwi:
            acqs.append(_Acq("dwi", {"acq": "epb0p2", "dir": "AP", "run": nxt()}, "dwi", True, 0))
            if multi:
                ent = {"acq": "epb5m2", "dir": "AP", "run": nxt()}
                acqs.append(_Acq("dwi", ent, "dwi", True, 0))
        if has_func and g % 3 != 2:
            ent = {"task": "naming40", "acq": "epfid2", "dir": "AP", "run": nxt()}
            acqs.append(_Acq("func", ent, "bold", True, 0))
        t1_acq = "tfl3" if g % 5 == 4 else "tfl3p2"
        acqs.append(_Acq("anat", {"acq": t1_acq, "run": nxt()}, "T1w", False, 0))
        if spec.multi_run and g % 3 == 1:
            t2_acqs = ["spc3p2", "tse3"]
        else:
            t2_acqs = [("spc3p2", "spc3", "tse3")[g % 3]]
        for t2 in t2_acqs:
            acqs.append(_Acq("anat", {"acq": t2, "run": nxt()}, "T2w", False, 0))
        if g % 2 == 1:
            acqs.append(_Acq("anat", {"acq": "spcir2p2", "run": nxt()}, "FLAIR", False, 0))
        if has_func:
            for _ in range(2 if multi else 1):
                ent = {"task": "rest", "acq": "epfid2p2m2", "dir": "AP", "run": nxt()}
                acqs.append(_Acq("func", dict(ent), "bold", True, 0))
                acqs.append(_Acq("func", dict(ent), "sbref", False, 0))
        for acq in acqs:
            acq.series = int(acq.entities.get("run", "0"))
        return acqs

    def _lesion_sessions(
        self, session_acqs: list[tuple[_Subject, str | None, int, list[_Acq]]]
    ) -> dict[tuple[str, str | None], _Acq | None]:
        """Sessions that get a lesion mask, with the T2w it is drawn on (ARC naming)."""
        out: dict[tuple[str, str | None], _Acq | None] = {}
        if not self.spec.derivatives:
            return out
        if not self.spec.arc_shaped:
            for subject, ses, g, _ in session_acqs:
                if g % 2 == 0:
                    out[(subject.label, ses)] = None
            return out
        labels = [s.label for s, *_ in session_acqs]
        last = labels[-1] if len(set(labels)) >= 3 else None
        for subject, ses, _, acqs in session_acqs:
            if subject.label == last or any(k[0] == subject.label for k in out):
                continue
            out[(subject.label, ses)] = next(a for a in acqs if a.suffix == "T2w")
        return out

    # -- files -----------------------------------------------------------------------------

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

    def _session(
        self,
        subject: _Subject,
        ses: str | None,
        g: int,
        acqs: list[_Acq],
        rest_override: bool,
        lesion_sessions: Mapping[tuple[str, str | None], _Acq | None],
    ) -> None:
        spec = self.spec
        sub = subject.label
        prefix = {"sub": sub} | ({"ses": ses} if ses is not None else {})
        sdir = f"sub-{sub}" + (f"/ses-{ses}" if ses is not None else "")
        srng = _file_rng(spec.seed, sdir, "session")
        start_minutes = int(srng.integers(7 * 60, 17 * 60))
        date = f"{int(srng.integers(2012, 2024))}-{int(srng.integers(1, 13)):02d}-" \
               f"{int(srng.integers(1, 29)):02d}"  # fmt: skip
        scans: list[tuple[str, str]] = []
        dwi_names: list[str] = []

        def acq_time(series: int) -> tuple[int, int]:
            total = start_minutes + 6 * series
            return total // 60, total % 60

        for acq in acqs:
            ent = prefix | acq.entities
            name = bids_filename(ent, acq.suffix, self.ext)
            rel = f"{sdir}/{acq.datatype}/{name}"
            stem = rel[: -len(self.ext)]
            zooms: tuple[float, ...] = (1.0, 1.0, 1.0)
            if acq.four_d:
                tr = 1.0 if acq.suffix == "dwi" else self._tr(acq, rest_override)
                zooms = (2.0, 2.0, 2.0, tr)
            elif acq.datatype != "anat":
                zooms = (2.0, 2.0, 2.0)
            self.nifti(rel, acq.four_d, zooms)
            hh, mm = acq_time(acq.series)
            scans.append((f"{acq.datatype}/{name}", f"{date}T{hh:02d}:{mm:02d}:00"))
            sidecar = self._sidecar(acq, rest_override, hh, mm, dwi_names, sdir)
            if sidecar is not None:
                self.text(f"{stem}.json", sidecar)
            if acq.suffix == "bold":
                self.text(f"{stem[: -len('_bold')]}_events.tsv", self._events(acq))
            if acq.suffix == "dwi":
                dwi_names.append(f"{sdir}/dwi/{name}")
                self.text(f"{stem}.bval", self._bval)
                self.text(f"{stem}.bvec", self._bvec)

        scans_rel = f"{sdir}/{bids_filename(prefix, 'scans', '.tsv')}"

        def build_scans(rng: np.random.Generator) -> bytes:
            rows = [[f, t] for f, t in scans]
            return _tsv_bytes(["filename", "acq_time"], rows)

        self.text(scans_rel, build_scans)

        if (sub, ses) in lesion_sessions:
            self._lesion(prefix, sdir, lesion_sessions[(sub, ses)], acqs)

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

    def _lesion(
        self, prefix: dict[str, str], sdir: str, t2w: _Acq | None, acqs: list[_Acq]
    ) -> None:
        if t2w is not None:  # ARC naming: <T2w stem>_desc-lesion_mask
            source = bids_filename(prefix | t2w.entities, "T2w", self.ext)
            name = source[: -len(self.ext)] + "_desc-lesion_mask" + self.ext
        else:
            source = next(
                bids_filename(prefix | a.entities, a.suffix, self.ext)
                for a in acqs
                if a.suffix == "T1w"
            )
            name = bids_filename(prefix | {"desc": "lesion"}, "mask", self.ext)
        rel = f"derivatives/lesion_masks/{sdir}/anat/{name}"
        self.nifti(rel, False, (1.0, 1.0, 1.0))

        def build(rng: np.random.Generator) -> bytes:
            return _json_bytes(
                {
                    "Type": "Lesion",
                    "Description": "Manually traced lesion mask (synthetic noise).",
                    "Sources": [f"bids:raw:{sdir}/anat/{source}"],
                    "RaterConfidence": round(float(rng.uniform(0.5, 1.0)), 4),
                }
            )

        self.text(rel[: -len(self.ext)] + ".json", build)

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
