"""Which files a synthetic dataset has: subjects, sessions and acquisitions, as planned items."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from bids2hf.testing.spec import SyntheticSpec, _Acq, _NiftiItem, _Subject, _TextItem, bids_filename
from bids2hf.testing.texts import (
    _file_rng,
    _json_bytes,
    _TextFiles,
    _tsv_bytes,
)


class _Planner(_TextFiles):
    """Builds the list of files (text content fully, NIfTIs as shapes) for a spec."""

    def __init__(self, spec: SyntheticSpec) -> None:
        self.spec = spec
        self.items: list[_NiftiItem | _TextItem] = []
        self._hashes: set[bytes] = set()
        self.missing_participants: list[str] = []

    # -- helpers -------------------------------------------------------------------------

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
        # ARC's repeated T2w (lesion mask on the later run): the second subject's first session
        self._t2w_repeat_g = len(real[0].sessions) if len(real) > 1 else -1
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
        repeats = spec.arc_repeated_runs
        if has_dwi:
            for code in ("epb0p2", "epb5m2") if multi else ("epb0p2",):
                if repeats and g % 2 == 0:  # ARC's single-band references sit in dwi/
                    ent = {"acq": code, "dir": "AP", "run": nxt()}
                    acqs.append(_Acq("dwi", ent, "sbref", False, 0))
                acqs.append(_Acq("dwi", {"acq": code, "dir": "AP", "run": nxt()}, "dwi", True, 0))
        if has_func and g % 3 != 2:
            ent = {"task": "naming40", "acq": "epfid2", "dir": "AP", "run": nxt()}
            acqs.append(_Acq("func", ent, "bold", True, 0))
        t1_acq = "tfl3" if g % 5 == 4 else "tfl3p2"
        for _ in range(2 if repeats and g == 1 else 1):
            acqs.append(_Acq("anat", {"acq": t1_acq, "run": nxt()}, "T1w", False, 0))
        t2w_repeat = repeats and g == self._t2w_repeat_g
        if t2w_repeat:
            t2_acqs = ["spc3"]  # and once more at the end of the session
        elif spec.multi_run and g % 3 == 1:
            t2_acqs = ["spc3p2", "tse3"]
        else:
            t2_acqs = [("spc3p2", "spc3", "tse3")[g % 3]]
        for t2 in t2_acqs:
            acqs.append(_Acq("anat", {"acq": t2, "run": nxt()}, "T2w", False, 0))
        if g % 2 == 1:
            for _ in range(2 if repeats and g == 3 else 1):
                acqs.append(_Acq("anat", {"acq": "spcir2p2", "run": nxt()}, "FLAIR", False, 0))
        if has_func:
            for _ in range(2 if multi else 1):
                ent = {"task": "rest", "acq": "epfid2p2m2", "dir": "AP", "run": nxt()}
                acqs.append(_Acq("func", dict(ent), "bold", True, 0))
                if not repeats:  # real ARC has no sbref in func/
                    acqs.append(_Acq("func", dict(ent), "sbref", False, 0))
        if t2w_repeat:  # as sub-M2105/ses-964: T2w run-6, later run-11, the one the mask is on
            series = max(series + 3, 10)  # series not exported (localizers, derived images)
            acqs.append(_Acq("anat", {"acq": "spc3", "run": nxt()}, "T2w", False, 0, True))
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
            t2ws = [a for a in acqs if a.suffix == "T2w"]
            out[(subject.label, ses)] = next((a for a in t2ws if a.lesion_source), t2ws[0])
        return out

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
