"""The ``previews`` config, planned: which files get a thumbnail, and how the config is described.

The Hub's dataset viewer cannot render ``Nifti`` cells, so the default config's tab is an error
page. A second config, ``previews``, is one small Parquet file (``previews/previews.parquet``)
holding per row the row's keys, which file each thumbnail shows and one ``Image`` (PNG) per image
column; the card shows one picture per image column (``images/<column>.png``).
``load_dataset(REPO)`` still gives the full data (config ``default``);
``load_dataset(REPO, "previews")`` gives PIL images.

Everything here is pure and decided before anything is read, from the plan's sizes only (so a
re-run makes the same choice), and imports no `datasets`: the types are plan/features.py's.
Cost: a thumbnail costs a gzip decompression of the file it shows, which for real (compressible)
images takes 4-5 times as long as converting the same bytes (0.13 s of CPU for a 10 MB T1). So
by default only the leading rows whose shown files add up to 0.5 % of the embedded bytes get a
preview row (always at least the first), plus the first file of every column (the pictures).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bids2hf.model.rows import ColumnSpec, Role, RowPlan
from bids2hf.plan.features import Features, Image, Value

__all__ = [
    "DEFAULT_BUDGET_FRACTION",
    "IMAGES_DIR",
    "PREVIEWS_CONFIG",
    "PREVIEWS_PATH",
    "PreviewChoice",
    "choose_previews",
    "image_columns",
    "key_columns",
    "picture_path",
    "plan_previews",
    "previews_config",
    "previews_dataset_info",
    "previews_features",
    "shown_column",
]

PREVIEWS_CONFIG = "previews"
#: Where the previews file goes in the output (one file: a few MB at most).
PREVIEWS_PATH = "previews/previews.parquet"
#: Folder of the card's pictures (one PNG per image column).
IMAGES_DIR = "images"
#: Default cost budget, as a fraction of the embedded bytes (see the module docstring).
DEFAULT_BUDGET_FRACTION = 0.005
#: Keys of a previews row beyond subject and session, when the plan has them (scan layout).
_EXTRA_KEYS = ("datatype", "suffix")


@dataclass
class PreviewChoice:
    """What to make thumbnails of, decided from the plan before anything is read."""

    rows: list[int]  # indexes (in plan order) of the rows that get a preview row
    files: dict[str, tuple[int, str]]  # relpath → (row index, column) of each file to thumbnail
    pictures: dict[str, str]  # column → relpath of its card picture (the column's first file)
    cost: int  # estimated bytes to decompress


def shown_column(column: str) -> str:
    """Name of the previews column holding the path of the file a thumbnail shows."""
    return f"{column}_file"


def picture_path(column: str) -> str:
    """Path, in the output, of the card picture of an image column (``images/<column>.png``)."""
    return f"{IMAGES_DIR}/{column}.png"


def choose_previews(
    rows: Sequence[Mapping[str, Sequence[tuple[str, int]]]],
    embedded_bytes: int,
    max_rows: int | None = None,
    budget_bytes: int | None = None,
    per_file_cap: int = 16 << 20,
    max_images: int = 2000,
) -> PreviewChoice:
    """Pick the files to make thumbnails of: pure, deterministic, from sizes only.

    Rows with images are taken in order while the estimated cost of their shown files (the first file of
    each image column) stays within the budget, and up to ``max_rows``. The first file of every
    column is always taken, for the card's picture of that column, wherever it is.

    Args:
        rows: per row (plan order), image column → its files as (relpath, size), in cell order.
        embedded_bytes: the dataset's embedded bytes (the default budget is 0.5 % of them).
        max_rows: at most this many preview rows; 0: no preview rows (the pictures are still
            chosen); None: as many as the budget allows.
        budget_bytes: estimated bytes to decompress, overriding the default budget.
        max_images: at most this many thumbnails in preview rows (the previews file's size
            budget: about 30 kB a thumbnail, so 60 MB by default).
        per_file_cap: estimated cost of one file at most (a 4-D file is only decompressed up
            to the volume shown: ``ThumbnailOptions.max_decompressed``, about half of that in
            compressed bytes).

    Raises:
        ValueError: ``max_rows`` is negative.
    """
    if max_rows is not None and max_rows < 0:
        raise ValueError(f"--previews must be 0 or more (got {max_rows})")
    budget = (
        budget_bytes if budget_bytes is not None else int(embedded_bytes * DEFAULT_BUDGET_FRACTION)
    )
    choice = PreviewChoice(rows=[], files={}, pictures={}, cost=0)
    limit = len(rows) if max_rows is None else min(max_rows, len(rows))
    for index, row in enumerate(rows):
        shown = [(column, files[0]) for column, files in row.items() if files]
        if len(choice.rows) >= limit:
            break
        if not shown:
            continue  # a row without images (the scan layout's other files) shows nothing
        cost = sum(min(size, per_file_cap) for _, (_, size) in shown)
        if choice.rows and (
            choice.cost + cost > budget or len(choice.files) + len(shown) > max_images
        ):
            break  # the first row is always shown: a preview tab with nothing would be useless
        choice.rows.append(index)
        choice.cost += cost
        for column, (relpath, _) in shown:
            choice.files.setdefault(relpath, (index, column))
    for index, row in enumerate(rows):
        for column, files in row.items():
            if files and column not in choice.pictures:
                relpath, size = files[0]
                choice.pictures[column] = relpath
                if relpath not in choice.files:
                    choice.files[relpath] = (index, column)
                    choice.cost += min(size, per_file_cap)
    return choice


def image_columns(columns: Sequence[ColumnSpec]) -> list[str]:
    """The plan's NIfTI columns: each gets an ``Image`` column in the previews."""
    return [c.name for c in columns if c.role is Role.FILE and c.nifti]


def key_columns(columns: Sequence[ColumnSpec]) -> list[str]:
    """The identifying columns a previews row repeats (as text): subject, session, and in the
    scan layout the datatype and suffix of the row's image."""
    names = {c.name for c in columns if c.role is Role.VALUE}
    keys = ["subject_id", "session_id"]
    return keys + [k for k in _EXTRA_KEYS if k in names]


def plan_previews(
    rows: Sequence[RowPlan],
    columns: Sequence[ColumnSpec],
    embedded_bytes: int,
    max_rows: int | None,
) -> PreviewChoice | None:
    """The choice for a plan's rows (in plan order). ``max_rows`` (``--previews N``): the first
    N rows, whatever they cost; None: the size budget decides. None with ``max_rows == 0`` (no
    previews file, no pictures) or when the plan has no NIfTI column.

    Raises:
        ValueError: ``max_rows`` is negative.
    """
    names = image_columns(columns)
    if max_rows == 0 or not names:
        if max_rows is not None and max_rows < 0:
            raise ValueError(f"--previews must be 0 or more (got {max_rows})")
        return None
    sizes = [
        {c: [(f.relpath, f.size) for f in row.files.get(c, [])] for c in names} for row in rows
    ]
    budget = None if max_rows is None else 1 << 62  # asked for N rows: no budget but N
    return choose_previews(sizes, embedded_bytes, max_rows=max_rows, budget_bytes=budget)


def previews_features(keys: Sequence[str], images: Sequence[str]) -> Features:
    """Features of the previews file: keys (text), then per image column an ``Image`` and the
    path of the file it shows (``<column>_file``)."""
    features: dict[str, Any] = {name: Value("string") for name in keys}
    for column in images:
        features[column] = Image()
        features[shown_column(column)] = Value("string")
    return Features(features)


def previews_config(split: str = "train") -> dict[str, Any]:
    """The card's ``configs:`` entry of the previews (after the ``default`` one)."""
    return {
        "config_name": PREVIEWS_CONFIG,
        "data_files": [{"split": split, "path": PREVIEWS_PATH}],
    }


def previews_dataset_info(
    keys: Sequence[str], images: Sequence[str], rows: int, nbytes: int, split: str = "train"
) -> dict[str, Any]:
    """The card's ``dataset_info`` entry of the previews config, as `datasets`'
    ``DatasetInfosDict.to_dataset_card_data`` writes it beside the default config's."""
    return {
        "config_name": PREVIEWS_CONFIG,
        "features": previews_features(keys, images).to_yaml(),
        "splits": [{"name": split, "num_bytes": nbytes, "num_examples": rows}],
    }
