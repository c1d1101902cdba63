"""The ``previews`` config: thumbnails the Hub's dataset viewer can show, beside the full data.

The viewer cannot render ``Nifti`` cells, so the default config's tab is an error page. This
module makes a second config: one small Parquet file (``previews/previews.parquet``) holding, per
row, the row's keys, which file each thumbnail shows, and one ``Image`` (PNG) per image column.
``load_dataset(REPO)`` still gives the full data (config ``default``);
``load_dataset(REPO, "previews")`` gives PIL images.

Cost is bounded before anything is read (:func:`choose_previews`): a thumbnail costs a gzip
decompression of the file it shows, which for real (compressible) images takes 4-5 times as long
as converting the same bytes (measured: 0.13 s of CPU for a 10 MB T1). So by default only the
leading rows whose shown files add up to 0.5 % of the embedded bytes get a preview row (always
at least the first), plus the first file of every column (the card's pictures).
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from datasets import DatasetInfo, Features, Image, SplitDict, SplitInfo, Value
from datasets.info import DatasetInfosDict
from huggingface_hub import DatasetCardData

__all__ = [
    "IMAGES_DIR",
    "PREVIEWS_CONFIG",
    "PREVIEWS_PATH",
    "PreviewChoice",
    "PreviewRow",
    "add_previews_config",
    "choose_previews",
    "picture_path",
    "previews_config",
    "previews_features",
    "previews_parquet",
]

PREVIEWS_CONFIG = "previews"
#: Where the previews file goes in the output (one file: a few MB at most).
PREVIEWS_PATH = "previews/previews.parquet"
#: Folder of the card's pictures (one PNG per image column).
IMAGES_DIR = "images"
#: Default cost budget, as a fraction of the embedded bytes (see the module docstring).
DEFAULT_BUDGET_FRACTION = 0.005
_ROWS_PER_GROUP = 100  # the viewer reads row groups; 100 rows of a few thumbnails is a few MB


@dataclass(frozen=True)
class PreviewRow:
    """One row of the previews file.

    Attributes:
        keys: the identifying values (e.g. ``subject_id``, ``session_id``), as text.
        images: image column → PNG bytes of its thumbnail (None: no image, or none could be made).
        shown: image column → path (relative to the BIDS root) of the file the thumbnail shows.
    """

    keys: Mapping[str, str | None]
    images: Mapping[str, bytes | None]
    shown: Mapping[str, str | None] = field(default_factory=dict)


@dataclass
class PreviewChoice:
    """What to make thumbnails of, decided from the plan before anything is read."""

    rows: list[int]  # indexes (in plan order) of the rows that get a preview row
    files: dict[str, tuple[int, str]]  # relpath → (row index, column) of each file to thumbnail
    pictures: dict[str, str]  # column → relpath of its card picture (the column's first file)
    cost: int  # estimated bytes to decompress


def _shown_suffix(column: str) -> str:
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

    Rows are taken in order while the estimated cost of their shown files (the first file of
    each image column) stays within the budget, and up to ``max_rows``. The first file of every
    column is always taken, for the card's picture of that column, wherever it is.

    Args:
        rows: per row (plan order), image column → its files as (relpath, size), in cell order.
        embedded_bytes: the dataset's embedded bytes (the default budget is 0.5 % of them).
        max_rows: at most this many preview rows (``--previews N``); 0 turns previews off
            (the pictures are still chosen); None: as many as the budget allows.
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
    for index, row in enumerate(rows[:limit]):
        shown = [(column, files[0]) for column, files in row.items() if files]
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


def previews_features(key_columns: Sequence[str], image_columns: Sequence[str]) -> Features:
    """Features of the previews file: keys (text), then per image column an ``Image`` and the
    path of the file it shows (``<column>_file``)."""
    features: dict[str, Any] = {name: Value("string") for name in key_columns}
    for column in image_columns:
        features[column] = Image()
        features[_shown_suffix(column)] = Value("string")
    return Features(features)


def previews_parquet(
    rows: Sequence[PreviewRow], key_columns: Sequence[str], image_columns: Sequence[str]
) -> bytes:
    """The previews file's bytes (its schema carries the HF features, so ``datasets`` decodes
    the ``Image`` columns to PIL images).

    Raises:
        ValueError: a key or image column of a row is not among the declared columns.
    """
    features = previews_features(key_columns, image_columns)
    known_keys, known_images = set(key_columns), set(image_columns)
    columns: dict[str, list[Any]] = {name: [] for name in features}
    for row in rows:
        if extra := (set(row.keys) - known_keys) | (set(row.images) - known_images):
            raise ValueError(f"undeclared preview column(s): {sorted(extra)}")
        for name in key_columns:
            columns[name].append(row.keys.get(name))
        for column in image_columns:
            png = row.images.get(column)
            shown = row.shown.get(column)
            name = shown.rsplit("/", 1)[-1] if shown else column
            columns[column].append(None if png is None else {"bytes": png, "path": _png_name(name)})
            columns[_shown_suffix(column)].append(shown)
    schema = features.arrow_schema
    table = pa.Table.from_pydict(columns, schema=schema)
    buf = io.BytesIO()
    # PNG bytes are compressed already; the rest is tiny.
    pq.write_table(
        table,
        buf,
        row_group_size=_ROWS_PER_GROUP,
        compression="zstd",
        use_dictionary=False,
        write_statistics=False,
    )
    return buf.getvalue()


def _png_name(source_name: str) -> str:
    for ext in (".nii.gz", ".nii"):
        if source_name.endswith(ext):
            return source_name[: -len(ext)] + ".png"
    return source_name + ".png"


def previews_config(split: str = "train") -> dict[str, Any]:
    """The card's ``configs:`` entry of the previews (beside the ``default`` one)."""
    return {
        "config_name": PREVIEWS_CONFIG,
        "data_files": [{"split": split, "path": PREVIEWS_PATH}],
    }


def add_previews_config(
    data: DatasetCardData,
    key_columns: Sequence[str],
    image_columns: Sequence[str],
    rows: int,
    nbytes: int,
    split: str = "train",
) -> None:
    """Declare the previews config in a card's metadata: its ``configs`` entry (after the
    default one, which stays the default) and its ``dataset_info`` (features, split sizes),
    in ``datasets``' own format beside the default config's.

    Raises:
        ValueError: the card already declares a config named ``previews`` that is not ours.
    """
    configs = list(data.get("configs") or [])
    entry = previews_config(split)
    for existing in configs:
        if existing.get("config_name") == PREVIEWS_CONFIG:
            if existing != entry:
                raise ValueError(f"the card already has a different {PREVIEWS_CONFIG!r} config")
            break
    else:
        configs.append(entry)
    data["configs"] = configs
    splits = SplitDict()
    splits.add(SplitInfo(name=split, num_bytes=nbytes, num_examples=rows))
    info = DatasetInfo(features=previews_features(key_columns, image_columns), splits=splits)
    DatasetInfosDict({PREVIEWS_CONFIG: info}).to_dataset_card_data(data)
