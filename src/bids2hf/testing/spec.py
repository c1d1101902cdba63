"""The synthetic dataset's specification and the description of what was generated."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["ENTITY_ORDER", "GeneratedDataset", "SyntheticSpec", "bids_filename"]

#: BIDS entity order (BIDS 1.9, Appendix "Entity table").
ENTITY_ORDER: tuple[str, ...] = (
    "sub", "ses", "sample", "task", "tracksys", "acq", "nuc", "voi", "ce", "trc", "stain",
    "rec", "dir", "run", "mod", "echo", "flip", "inv", "mt", "part", "proc", "hemi", "space",
    "split", "recording", "chunk", "seg", "res", "den", "label", "desc",
)  # fmt: skip


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
        arc_repeated_runs: In ARC mode, also mimic what real ARC has and a schema that takes
            "the single file" gets wrong: a session with two T1w runs, one with two T2w runs
            (the lesion mask drawn on the later one), one with two FLAIR runs, and
            single-band references in ``dwi/`` (none in ``func/``).  ``False`` gives the ARC
            layout of earlier versions, file for file.
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
    arc_repeated_runs: bool = True
    gzip_level: int = 1
    compress: bool = True
    threads: int | None = None
    fast_deflate: bool = True

    def validate(self) -> None:
        """Check the fields.

        Raises:
            ValueError: a field is out of range.
        """
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

    Raises:
        ValueError: an entity the specification does not know.
    """
    unknown = set(entities) - set(ENTITY_ORDER)
    if unknown:
        raise ValueError(f"unknown BIDS entities: {sorted(unknown)}")
    parts = [f"{key}-{entities[key]}" for key in ENTITY_ORDER if key in entities]
    return "_".join([*parts, suffix]) + extension


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
    lesion_source: bool = False  # the image a lesion mask of its session is drawn on


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
