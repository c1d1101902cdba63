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
With ``arc_repeated_runs`` (default), as real ARC: session ``g == 1`` has two T1w runs,
``g == 3`` two FLAIR runs, the second subject's first session two ``acq-spc3`` T2w runs
(``run-4`` and, at the end of the session, ``run-11``; its lesion mask is drawn on ``run-11``),
and sessions with ``g % 2 == 0`` a single-band reference in ``dwi/`` before each dwi run
(``..._acq-epb0p2_dir-AP_run-1_sbref``); ``func/`` then holds no sbref.
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
import os
import time
from collections.abc import Sequence
from pathlib import Path

from bids2hf.testing.layout import _Planner
from bids2hf.testing.nifti import _choose_factor, _NiftiWriter, _scaled_shape
from bids2hf.testing.spec import GeneratedDataset, SyntheticSpec, _NiftiItem, _TextItem
from bids2hf.units import parse_size

__all__ = ["generate_bids", "main"]


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
    root_path.mkdir(parents=True, exist_ok=True)
    writer = _NiftiWriter(spec, threads)
    try:
        files, nifti_shapes = _write_items(root_path, planner.items, writer, factor)
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


def _write_items(
    root: Path, items: Sequence[_TextItem | _NiftiItem], writer: _NiftiWriter, factor: float
) -> tuple[list[Path], dict[Path, tuple[int, ...]]]:
    """Write every planned item under ``root``: (the files, the NIfTI files' shapes)."""
    files: list[Path] = []
    nifti_shapes: dict[Path, tuple[int, ...]] = {}
    made: set[Path] = set()
    for item in items:
        path = root / item.rel
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
    return files, nifti_shapes


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m bids2hf.synthetic OUT [--target-bytes 1G] [--arc] ...``."""
    parser = argparse.ArgumentParser(description="Write a synthetic BIDS dataset.")
    parser.add_argument("root")
    parser.add_argument("--subjects", type=int, default=4)
    parser.add_argument("--sessions", default="1,2", help="comma separated; '' for none")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--target-bytes", type=parse_size, default=None, help="e.g. 500M, 2G")
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
