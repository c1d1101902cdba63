"""Deterministic generator of synthetic BIDS datasets.

Used by ``bids2hf demo``, by the test suite and by benchmarks.  Only numpy, nibabel and the
standard library are needed.

Every file written is unique (no two files share their bytes): NIfTI voxels are uniform
random ``int16`` noise drawn from a generator seeded with the file's relative path and the
spec's seed, and every text file carries some per-file random value (a text file that happens
to repeat another is redrawn).  Uniform noise does not compress, so the ``.nii.gz`` size of an
image is its raw size plus a tiny, predictable overhead; this is what lets
:attr:`SyntheticSpec.target_bytes` be honoured closely (the scale factor is computed before
anything is written, so generation is a single pass).

Images are streamed: voxels are produced in 4 MiB pieces, each piece is deflated
independently in a thread pool (as ``pigz`` does) and the pieces are joined into one ordinary
single-member gzip stream (no file name, mtime 0), so only a few pieces are in memory at any
time.  The output is byte-identical whatever the number of threads.  By default the deflate
strategy is Huffman-only (see :attr:`SyntheticSpec.fast_deflate`).

Layouts
-------
Default layout (``arc_shaped=False``), per subject ``sub-01``, ``sub-02``, ... and per session
(or without a session level when ``sessions=()``); ``g`` below is the running index of the
(subject, session) pair, starting at 0:

* ``anat``: ``T1w`` always; ``T2w`` always, as two acquisitions ``acq-spc``/``acq-tse`` when
  ``multi_run`` and ``g % 3 == 1``; ``FLAIR`` when ``g % 2 == 1``.
* ``func`` (absent when ``missing_modalities`` and ``g % 4 == 2``): ``task-rest`` bold, as
  ``run-1`` and ``run-2`` when ``multi_run`` and ``g % 3 == 0`` (otherwise no run entity),
  each with an ``sbref``; ``task-naming40`` bold when ``g % 3 != 2``.  Every bold has a JSON
  sidecar and an ``_events.tsv``.
* ``dwi`` (absent when ``missing_modalities`` and ``g % 4 == 3``): ``dir-AP`` dwi with
  ``.bval``/``.bvec``/``.json``, plus ``fmap/..._dir-PA_epi`` whose ``IntendedFor`` points at it.
* ``derivatives/lesion_masks/.../anat/..._desc-lesion_mask.nii.gz`` (+ ``.json``) when
  ``derivatives`` and ``g % 2 == 0``.

The top-level ``task-rest_bold.json`` holds ``TaskName`` and ``RepetitionTime`` (2.0 s);
rest-bold sidecars inherit them, except those of one subject (the second subject with a rest
run), whose sidecars override ``RepetitionTime`` with 2.5 s.

ARC layout (``arc_shaped=True``) mimics the Aphasia Recovery Cohort (OpenNeuro ds004884):
subjects ``sub-M2001``, ``sub-M2002``, ...; subject ``i`` has the first
``len(sessions) - (i - 1) % len(sessions)`` labels of ``spec.sessions`` (so the count varies);
every NIfTI carries ``acq-`` and a ``run-`` number that counts the session's series, as ARC's
scanner series numbers do (``sub-M2001_ses-1_acq-epb0p2_dir-AP_run-1_dwi``,
``..._task-naming40_acq-epfid2_dir-AP_run-2_bold``, ``..._acq-tfl3p2_run-3_T1w``,
``..._acq-spc3p2_run-4_T2w``, ...).  T2w acquisitions cycle through ``spc3p2``/``spc3``/``tse3``.
Lesion masks live in ``derivatives/lesion_masks/sub-*/ses-*/anat/`` and, as in ARC, are named
after the T2w image they were drawn on (``<T2w stem>_desc-lesion_mask.nii.gz``; this matches
``sub-*_ses-*_desc-lesion_mask.nii.gz`` but, like ARC itself, keeps ``T2w`` inside the name).
One mask per subject (first session), none for the last subject when there are 3 or more.
``participants.tsv`` has ARC's columns in ARC's order (``participant_id, sex, age_at_stroke,
race, wab_days, wab_aq, wab_type``; ARC keeps the WAB scores per participant), rows sorted by
``age_at_stroke`` (as ARC's file appears to be), ``race`` ``b``/``w`` and ``n/a`` for the first
subject, ``wab_type`` the literal ``None`` for non-aphasic scores (WAB-AQ >= 93.8), and no
trailing newline (ARC quirks).  ARC mode writes no ``fmap``; it keeps the generic
``sub-*_sessions.tsv``, ``scans.tsv``, sidecars, events and top-level files.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import os
import struct
import time
import zlib
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import nibabel as nib
import numpy as np

__all__ = [
    "ENTITY_ORDER",
    "GeneratedDataset",
    "SyntheticSpec",
    "bids_filename",
    "generate_bids",
    "main",
]

#: BIDS entity order (BIDS 1.9, Appendix "Entity table").
ENTITY_ORDER: tuple[str, ...] = (
    "sub", "ses", "sample", "task", "tracksys", "acq", "nuc", "voi", "ce", "trc", "stain",
    "rec", "dir", "run", "mod", "echo", "flip", "inv", "mt", "part", "proc", "hemi", "space",
    "split", "recording", "chunk", "seg", "res", "den", "label", "desc",
)  # fmt: skip

_CHUNK = 4 * 1024 * 1024  # bytes of voxel data per independently deflated piece
_NIFTI_HEADER_BYTES = 352  # 348-byte NIfTI-1 header + 4-byte empty extension flag
_BIDS_VERSION = "1.9.0"
_TOP_REST_TR = 2.0
_OVERRIDE_REST_TR = 2.5


# --------------------------------------------------------------------------------------------
# Public data classes
# --------------------------------------------------------------------------------------------


@dataclass
class SyntheticSpec:
    """What to generate.  All fields have defaults giving a small (~1 MB) dataset.

    Attributes:
        n_subjects: Number of subjects that get a ``sub-*`` folder.
        sessions: Session labels; ``()`` gives a dataset without a session level (ignored in
            ARC mode, which always has sessions and falls back to ``("1",)``).
        seed: Seed; the same spec always produces byte-identical files.
        image_shape: 3-D shape of anatomical images (and spatial shape of every image).
        n_volumes: Number of volumes of 4-D images (bold and dwi).
        target_bytes: If set, spatial image sizes are scaled (one factor for all images,
            computed before anything is written) so the dataset's total size on disk is close
            to this (within a few percent unless the target is below the size of the
            text files plus minimal images).
        multi_run: Some sessions get two ``task-rest`` bold runs and two T2w acquisitions.
        missing_modalities: Some sessions lack ``func`` or ``dwi`` entirely.
        derivatives: Write ``derivatives/lesion_masks`` with masks for some sessions.
        participant_without_folder: Add one ``participants.tsv`` row without a ``sub-*``
            folder.
        arc_shaped: Mimic the Aphasia Recovery Cohort layout (see module docstring).
        gzip_level: Deflate level of ``.nii.gz`` files (0-9; 1 is fastest that compresses).
        compress: Write ``.nii.gz`` (default) or raw ``.nii`` files.
        threads: Threads used to deflate images (``None``: ``os.cpu_count()``).  The output
            does not depend on it.
        fast_deflate: Deflate with the Huffman-only strategy: noise has no repeated strings,
            so searching for them (what levels 1-9 add) finds nothing; the output is an
            ordinary gzip stream of the same size, made about 3x faster.  ``False`` uses
            zlib's default strategy at ``gzip_level``.
    """

    n_subjects: int = 4
    sessions: tuple[str, ...] = ("1", "2")
    seed: int = 0
    image_shape: tuple[int, int, int] = (16, 16, 8)
    n_volumes: int = 4
    target_bytes: int | None = None
    multi_run: bool = True
    missing_modalities: bool = True
    derivatives: bool = True
    participant_without_folder: bool = True
    arc_shaped: bool = False
    gzip_level: int = 1
    compress: bool = True
    threads: int | None = None
    fast_deflate: bool = True

    def validate(self) -> None:
        """Raise :class:`ValueError` if a field is out of range."""
        if self.n_subjects < 1:
            raise ValueError("n_subjects must be >= 1")
        if len(self.image_shape) != 3 or min(self.image_shape) < 1:
            raise ValueError("image_shape must be three positive integers")
        if self.n_volumes < 1:
            raise ValueError("n_volumes must be >= 1")
        if self.target_bytes is not None and self.target_bytes <= 0:
            raise ValueError("target_bytes must be positive")
        if not 0 <= self.gzip_level <= 9:
            raise ValueError("gzip_level must be in 0..9")
        if self.threads is not None and self.threads < 1:
            raise ValueError("threads must be >= 1")
        if len(set(self.sessions)) != len(self.sessions):
            raise ValueError("session labels must be unique")
        for label in self.sessions:
            if not label or not label.isalnum() or not label.isascii():
                raise ValueError(f"session label {label!r} is not alphanumeric")


@dataclass
class GeneratedDataset:
    """Result of :func:`generate_bids`.

    Attributes:
        root: Dataset root.
        files: Every file written (absolute paths), sorted.
        nifti_files: The NIfTI files among ``files``, sorted.
        total_bytes: Sum of the sizes of ``files``.
        nifti_shapes: Shape of each NIfTI file's image.
        missing_participants: ``participants.tsv`` ids that have no ``sub-*`` folder.
        elapsed_seconds: Wall time of the generation.
        spec: The spec used.
    """

    root: Path
    files: list[Path]
    nifti_files: list[Path]
    total_bytes: int
    nifti_shapes: dict[Path, tuple[int, ...]] = field(default_factory=dict)
    missing_participants: list[str] = field(default_factory=list)
    elapsed_seconds: float = 0.0
    spec: SyntheticSpec = field(default_factory=SyntheticSpec)

    @property
    def throughput_mb_s(self) -> float:
        """Generation speed in MB (10^6 bytes) per second."""
        return self.total_bytes / 1e6 / max(self.elapsed_seconds, 1e-9)


# --------------------------------------------------------------------------------------------
# Naming helpers
# --------------------------------------------------------------------------------------------


def bids_filename(entities: Mapping[str, str], suffix: str, extension: str) -> str:
    """Build a BIDS file name with the entities in the specification's order.

    >>> bids_filename({"run": "1", "sub": "01", "task": "rest"}, "bold", ".nii.gz")
    'sub-01_task-rest_run-1_bold.nii.gz'
    """
    unknown = set(entities) - set(ENTITY_ORDER)
    if unknown:
        raise ValueError(f"unknown BIDS entities: {sorted(unknown)}")
    parts = [f"{key}-{entities[key]}" for key in ENTITY_ORDER if key in entities]
    return "_".join([*parts, suffix]) + extension


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


# --------------------------------------------------------------------------------------------
# Planning
# --------------------------------------------------------------------------------------------


@dataclass
class _Acq:
    """One acquired image of a session, before naming."""

    datatype: str  # anat, func, dwi, fmap
    entities: dict[str, str]  # without sub/ses
    suffix: str
    four_d: bool
    series: int


@dataclass
class _NiftiItem:
    rel: str
    spatial: tuple[int, int, int]
    n_vols: int | None
    zooms: tuple[float, ...]


@dataclass
class _TextItem:
    rel: str
    data: bytes


@dataclass
class _Subject:
    label: str
    sessions: list[str | None]
    row: dict[str, object]


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


# --------------------------------------------------------------------------------------------
# Sizing
# --------------------------------------------------------------------------------------------


def _scaled_shape(item: _NiftiItem, factor: float) -> tuple[int, ...]:
    spatial = tuple(max(1, math.floor(d * factor + 0.5)) for d in item.spatial)
    return spatial if item.n_vols is None else (*spatial, item.n_vols)


def _nifti_size(shape: tuple[int, ...], spec: SyntheticSpec) -> int:
    """Predicted size on disk of a noise NIfTI of this shape."""
    raw = _NIFTI_HEADER_BYTES + 2 * math.prod(shape)
    if not spec.compress:
        return raw
    data = raw - _NIFTI_HEADER_BYTES
    pieces = max(1, -(-data // _CHUNK))
    block = 65535 if spec.gzip_level == 0 else 16384  # stored blocks of random data
    return raw + 5 * -(-raw // block) + 5 * pieces + 18


def _choose_factor(spec: SyntheticSpec, niftis: list[_NiftiItem], text_bytes: int) -> float:
    """Spatial scale factor making the predicted total closest to ``spec.target_bytes``."""
    if spec.target_bytes is None:
        return 1.0
    target = spec.target_bytes

    def total(f: float) -> int:
        return text_bytes + sum(_nifti_size(_scaled_shape(n, f), spec) for n in niftis)

    lo, hi = 0.0, 1.0
    while total(hi) < target:
        lo, hi = hi, hi * 2
    for _ in range(60):
        mid = (lo + hi) / 2
        if total(mid) <= target:
            lo = mid
        else:
            hi = mid
    return lo if abs(total(lo) - target) <= abs(total(hi) - target) else hi


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


def _nifti_header(shape: tuple[int, ...], zooms: tuple[float, ...], descrip: str) -> bytes:
    hdr = nib.Nifti1Header()
    hdr.set_data_dtype(np.int16)
    hdr.set_data_shape(shape)
    hdr.set_zooms(zooms)
    hdr.set_xyzt_units("mm", "sec")
    affine = np.diag([*zooms[:3], 1.0])
    affine[:3, 3] = -(np.array(shape[:3], dtype=float) - 1) * np.array(zooms[:3]) / 2
    hdr.set_qform(affine, code=1)
    hdr.set_sform(affine, code=1)
    hdr.set_slope_inter(1.0, 0.0)
    hdr["descrip"] = descrip.encode()[:79]
    hdr["vox_offset"] = (
        _NIFTI_HEADER_BYTES  # single-file .nii: data right after header + extension flag
    )
    buf = io.BytesIO()
    hdr.write_to(buf)
    out = buf.getvalue()
    assert len(out) == _NIFTI_HEADER_BYTES
    return out


def _pieces(header: bytes, n_data: int, rng: np.random.Generator) -> Iterator[bytes]:
    """Header + voxel noise, in pieces of ``_CHUNK`` voxel bytes (header on the first)."""
    remaining = n_data
    first = True
    while first or remaining > 0:
        n = min(_CHUNK, remaining)
        data = rng.integers(-32768, 32768, size=n // 2, dtype=np.int16).tobytes()
        yield header + data if first else data
        first = False
        remaining -= n


def _deflate(data: bytes, level: int, strategy: int, last: bool) -> bytes:
    comp = zlib.compressobj(level, zlib.DEFLATED, -15, 8, strategy)
    out = comp.compress(data)
    return out + comp.flush(zlib.Z_FINISH if last else zlib.Z_SYNC_FLUSH)


class _NiftiWriter:
    """Writes noise NIfTI files, deflating pieces in a thread pool.

    Compressed pieces are written in order; files stay open until their last piece is
    written, so pieces of consecutive (small) files are compressed concurrently too.  At most
    ``max_pending`` pieces (and so at most that many open files) are in flight.
    """

    def __init__(self, spec: SyntheticSpec, threads: int) -> None:
        self.spec = spec
        self.pool = ThreadPoolExecutor(threads) if threads > 1 and spec.compress else None
        self.max_pending = 2 * threads
        self.strategy = zlib.Z_HUFFMAN_ONLY if spec.fast_deflate else zlib.Z_DEFAULT_STRATEGY
        self.pending: deque[tuple[BinaryIO, Future[bytes] | bytes, bytes | None]] = deque()
        xfl = 4 if spec.gzip_level == 1 else 2 if spec.gzip_level == 9 else 0
        # gzip member header: no file name, mtime 0 (deterministic), OS unknown.
        self.gz_header = b"\x1f\x8b\x08\x00" + struct.pack("<I", 0) + bytes([xfl, 255])

    def write(
        self, path: Path, shape: tuple[int, ...], zooms: tuple[float, ...], seed_rel: str
    ) -> None:
        """Write one image (possibly finishing asynchronously; see :meth:`close`)."""
        spec = self.spec
        rng = _file_rng(spec.seed, seed_rel, "nifti")
        header = _nifti_header(shape, zooms, "")
        n_data = 2 * math.prod(shape)
        n_pieces = max(1, -(-n_data // _CHUNK))
        fh = open(path, "wb")  # noqa: SIM115 - closed in _drain_one / close
        if not spec.compress:
            with fh:
                for piece in _pieces(header, n_data, rng):
                    fh.write(piece)
            return
        fh.write(self.gz_header)
        crc = 0
        size = 0
        for i, piece in enumerate(_pieces(header, n_data, rng)):
            crc = zlib.crc32(piece, crc)
            size += len(piece)
            last = i == n_pieces - 1
            trailer = struct.pack("<II", crc & 0xFFFFFFFF, size & 0xFFFFFFFF) if last else None
            job: Future[bytes] | bytes
            if self.pool is None:
                job = _deflate(piece, spec.gzip_level, self.strategy, last)
            else:
                job = self.pool.submit(_deflate, piece, spec.gzip_level, self.strategy, last)
            self.pending.append((fh, job, trailer))
            while len(self.pending) > self.max_pending:
                self._drain_one()

    def _drain_one(self) -> None:
        fh, job, trailer = self.pending.popleft()
        try:
            fh.write(job if isinstance(job, bytes) else job.result())
            if trailer is not None:
                fh.write(trailer)
        except BaseException:
            fh.close()
            raise
        if trailer is not None:
            fh.close()

    def close(self) -> None:
        """Finish every pending file and stop the threads."""
        try:
            while self.pending:
                self._drain_one()
        finally:
            for fh, _, _ in self.pending:
                fh.close()
            if self.pool is not None:
                self.pool.shutdown()


def generate_bids(
    root: str | os.PathLike[str], spec: SyntheticSpec | None = None
) -> GeneratedDataset:
    """Write a synthetic BIDS dataset under ``root`` and describe what was written.

    Args:
        root: Output directory; created if needed, and it must be empty if it exists.
        spec: What to generate (defaults to ``SyntheticSpec()``).

    Returns:
        The written files, NIfTI files and shapes, and the total size.

    Raises:
        FileExistsError: ``root`` exists and is not an empty directory.
        ValueError: The spec is invalid.
    """
    spec = spec if spec is not None else SyntheticSpec()
    spec.validate()
    t0 = time.perf_counter()
    root_path = Path(root).absolute()
    if root_path.exists() and (not root_path.is_dir() or any(root_path.iterdir())):
        raise FileExistsError(f"{root_path} exists and is not an empty directory")

    planner = _Planner(spec)
    planner.plan()
    niftis = [i for i in planner.items if isinstance(i, _NiftiItem)]
    text_bytes = sum(len(i.data) for i in planner.items if isinstance(i, _TextItem))
    factor = _choose_factor(spec, niftis, text_bytes)

    threads = spec.threads if spec.threads is not None else (os.cpu_count() or 1)
    threads = min(threads, 32)
    files: list[Path] = []
    nifti_shapes: dict[Path, tuple[int, ...]] = {}
    root_path.mkdir(parents=True, exist_ok=True)
    writer = _NiftiWriter(spec, threads)
    try:
        made: set[Path] = set()
        for item in planner.items:
            path = root_path / item.rel
            if path.parent not in made:
                path.parent.mkdir(parents=True, exist_ok=True)
                made.add(path.parent)
            if isinstance(item, _TextItem):
                path.write_bytes(item.data)
            else:
                shape = _scaled_shape(item, factor)
                writer.write(path, shape, item.zooms, item.rel)
                nifti_shapes[path] = shape
            files.append(path)
    finally:
        writer.close()
    files.sort()
    return GeneratedDataset(
        root=root_path,
        files=files,
        nifti_files=sorted(nifti_shapes),
        total_bytes=sum(p.stat().st_size for p in files),
        nifti_shapes=nifti_shapes,
        missing_participants=planner.missing_participants,
        elapsed_seconds=time.perf_counter() - t0,
        spec=spec,
    )


def _parse_size(text: str) -> int:
    units = {"k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}
    text = text.strip().lower().removesuffix("b")
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m bids2hf.synthetic OUT [--target-bytes 1G] [--arc] ...``."""
    parser = argparse.ArgumentParser(description="Write a synthetic BIDS dataset.")
    parser.add_argument("root")
    parser.add_argument("--subjects", type=int, default=4)
    parser.add_argument("--sessions", default="1,2", help="comma separated; '' for none")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--target-bytes", type=_parse_size, default=None, help="e.g. 500M, 2G")
    parser.add_argument("--arc", action="store_true", help="ARC-shaped layout")
    parser.add_argument("--gzip-level", type=int, default=1)
    parser.add_argument("--raw-nii", action="store_true", help="write .nii instead of .nii.gz")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument(
        "--standard-deflate", action="store_true", help="zlib default strategy (3x slower)"
    )
    args = parser.parse_args(argv)
    spec = SyntheticSpec(
        n_subjects=args.subjects,
        sessions=tuple(s for s in args.sessions.split(",") if s),
        seed=args.seed,
        target_bytes=args.target_bytes,
        arc_shaped=args.arc,
        gzip_level=args.gzip_level,
        compress=not args.raw_nii,
        threads=args.threads,
        fast_deflate=not args.standard_deflate,
    )
    ds = generate_bids(args.root, spec)
    print(
        f"wrote {len(ds.files)} files ({len(ds.nifti_files)} NIfTI), {ds.total_bytes:,} bytes "
        f"in {ds.elapsed_seconds:.2f} s ({ds.throughput_mb_s:.0f} MB/s) to {ds.root}"
    )
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
