"""The dataset card (README.md): YAML metadata the Hub and ``datasets`` read, and a human summary.

Built only from the inventory's description and the plan, so it is deterministic: the same input
gives the same card (no timestamps).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from huggingface_hub import DatasetCardData

import bids2hf.bids.schema as bids_schema
from bids2hf._version import __version__
from bids2hf.model.format import REPO_PLACEHOLDER
from bids2hf.model.image_header import HeaderFacts
from bids2hf.model.inventory import Table
from bids2hf.model.rows import Role
from bids2hf.plan.plan import ConversionPlan
from bids2hf.plan.previews import previews_config, previews_dataset_info
from bids2hf.report.card_facts import (
    description_facts,
    hub_license,
    license_name,
    participant_summary,
    shorten_readme,
)
from bids2hf.report.card_render import CardFacts, GeneratedSections, render
from bids2hf.report.image_facts import KindFacts, summarize_kind
from bids2hf.units import human_bytes
from bids2hf.write.previews_output import PreviewsWritten

__all__ = ["CardInputs", "render_card"]

def _size_category(rows: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K")):
        if rows < limit:
            return name
    return "100K<n<1M"


@dataclass
class CardInputs:
    """What the card needs beyond the plan and dataset_description.json, known at finish time."""

    manifest: bytes = b""  # the manifest's bytes (its sha256 goes into the provenance)
    readme: str | None = None  # the dataset-level README's text
    readme_path: str = "bids/README"  # where the full README is in the output
    participants: Table | None = None
    previous: str | None = None  # the card this one replaces (its user section is kept)
    headers: Mapping[str, HeaderFacts | None] = field(default_factory=dict)  # relpath → facts
    previews: PreviewsWritten | None = None  # [issue 13] the previews file and pictures written


def render_card(
    plan: ConversionPlan,
    description: dict[str, Any],
    repo_hint: str = REPO_PLACEHOLDER,
    inputs: CardInputs | None = None,
) -> str:
    """The README.md text for a converted dataset.

    Raises:
        UserSectionError: ``inputs.previous`` has broken user-section markers.
    """
    inputs = inputs or CardInputs()
    layout = "one per subject and session" if plan.options.layout == "session" else "one per image file"
    intro = (
        f"A [BIDS](https://bids.neuroimaging.io) dataset converted by bids2hf {__version__} "
        f"(BIDS schema {bids_schema.schema_version()}): "
        f"{plan.rows} rows ({layout}), "
        f"{plan.embedded_files} embedded files, {human_bytes(plan.embedded_bytes)} in {len(plan.shards)} Parquet shard(s). "
        "Every NIfTI file is stored byte for byte, with its sha256 beside it."
    )
    participants = inputs.participants
    facts = CardFacts(
        description=description_facts(description),
        repo_id=repo_hint,
        split=plan.options.split,
        readme=shorten_readme(inputs.readme) if inputs.readme else None,
        readme_path=inputs.readme_path,
        participants=(
            participant_summary(participants.rows.values()) if participants is not None else None
        ),
        bids2hf_version=__version__,
        schema_version=bids_schema.schema_version(),
        manifest_sha256=hashlib.sha256(inputs.manifest).hexdigest() if inputs.manifest else None,
        kinds=_kind_facts(plan, inputs.headers),
        pictures=dict(inputs.previews.pictures) if inputs.previews else {},
        previews=bool(inputs.previews and inputs.previews.rows),
    )
    sections = GeneratedSections(
        intro=intro,
        loading="\n".join(_loading_lines(plan, repo_hint)),
        columns="\n".join(_columns_lines(plan)),
        notes="\n".join(_notes_lines(plan)),
        contents="\n".join(_contents_lines(plan)),
    )
    data = _card_data(plan, description)
    if inputs.previews is not None and inputs.previews.rows:
        _add_previews(data, inputs.previews, plan.options.split)
    return render(data, facts, sections, inputs.previous)


def _add_previews(data: DatasetCardData, previews: PreviewsWritten, split: str) -> None:
    """[issue 13] The ``previews`` config after ``default`` (which stays what
    ``load_dataset(REPO)`` loads), and its ``dataset_info`` beside the default one: with two
    configs, `datasets` writes a list of entries named by ``config_name``, sorted by name."""
    data["configs"] = [*data["configs"], previews_config(split)]
    default = {"config_name": "default", **data["dataset_info"]}
    info = previews_dataset_info(
        previews.keys, previews.images, previews.rows, previews.nbytes, split
    )
    data["dataset_info"] = sorted([default, info], key=lambda entry: entry["config_name"])


def _kind_facts(
    plan: ConversionPlan, headers: Mapping[str, HeaderFacts | None]
) -> list[KindFacts]:
    """Per kind, what the headers the scan read say (none known: the plain kinds table)."""
    files: dict[str, list[tuple[str, int]]] = {}
    for shard in plan.shards:
        for row in shard.rows:
            for column, refs in row.files.items():
                files.setdefault(column, []).extend((r.relpath, r.size) for r in refs)
    if not any(headers.get(p) for listed in files.values() for p, _ in listed):
        return []
    return [
        summarize_kind(
            k.kind,
            k.column,
            [headers.get(p) for p, _ in files.get(k.column, [])],
            [size for _, size in files.get(k.column, [])],
            k.rows,
        )
        for k in plan.kinds
    ]


def _card_data(plan: ConversionPlan, description: dict[str, Any]) -> DatasetCardData:
    """The card's YAML metadata: license, tags, the data files and `datasets`' dataset_info."""
    split = plan.options.split
    bids_license = description.get("License")
    # No License in dataset_description.json: say nothing rather than guess.
    license_id: str | None = hub_license(bids_license)[0] if bids_license else None
    datatypes = sorted({k.kind.rpartition(":")[2].split("/")[0] for k in plan.kinds})
    extra: dict[str, Any] = {}
    if license_id == "other":
        extra["license_name"] = license_name(bids_license)
    data = DatasetCardData(
        license=license_id,
        pretty_name=str(description.get("Name") or "BIDS dataset"),
        size_categories=_size_category(plan.rows),
        tags=["bids", "neuroimaging", "nifti", "medical-imaging", *datatypes],
        configs=[
            {
                "config_name": "default",
                "data_files": [{"split": split, "path": f"data/{split}-*.parquet"}],
            }
        ],
        # what `datasets`' DatasetInfosDict.to_dataset_card_data writes for one "default" config
        dataset_info={
            "features": plan.features.to_yaml(),
            "splits": [
                {"name": split, "num_bytes": plan.embedded_bytes, "num_examples": plan.rows}
            ],
        },
        **extra,
    )
    return data


def _loading_lines(plan: ConversionPlan, repo_hint: str) -> list[str]:
    """The "## Loading" code blocks: with `datasets`, with nibabel for NIfTI-2, and back to BIDS."""
    lines = [
        "```python",
        "from datasets import load_dataset",
        "",
        f'ds = load_dataset("{repo_hint}", split="{plan.options.split}")        # or streaming=True',
        "row = ds[0]",
    ]
    first_image = next((c.name for c in plan.columns if c.role is Role.FILE and c.nifti), None)
    if first_image:
        lines.append(
            f'img = row["{first_image}"]{"" if _single(plan, first_image) else "[0]"}   # a nibabel image'
        )
        lines.append("data = img.get_fdata()")
    lines += ["```", ""]
    if any(k.nifti2 for k in plan.kinds):
        lines += [
            "Some columns hold NIfTI-2 files, which `datasets` cannot decode; they are published "
            "undecoded (`{'bytes', 'path'}`). Read them with `bids2hf.load_nifti(value)`.",
            "",
        ]
    lines += [
        "To rebuild the original BIDS folder, byte for byte:",
        "",
        "```bash",
        f"pip install bids2hf && bids2hf export hf://datasets/{repo_hint} ./bids",
        "```",
        "",
    ]
    return lines


def _contents_lines(plan: ConversionPlan) -> list[str]:
    """The images-by-kind table (the card's "## Contents")."""
    lines = [
        "| images | column | files | size | rows with it |",
        "|---|---|---:|---:|---:|",
    ]
    for k in plan.kinds:
        lines.append(f"| {k.kind} | `{k.column}` | {k.files} | {human_bytes(k.bytes)} | {k.rows} |")
    return lines


def _columns_lines(plan: ConversionPlan) -> list[str]:
    """The "## Columns" table: every feature."""
    lines = ["| column | type |", "|---|---|"]
    for name, feature in plan.features.items():
        lines.append(f"| `{name}` | {_describe(feature)} |")
    return lines


def _notes_lines(plan: ConversionPlan) -> list[str]:
    """Where the dataset-level files and the manifest are; how many files were left out."""
    lines = [
        "Dataset-level files (dataset_description.json, README, participants.tsv, ...) are stored "
        "verbatim under `bids/`. `bids2hf/manifest.jsonl` lists every source file with its size, "
        "sha256 and where it is.",
    ]
    if plan.left_out:
        lines += ["", f"{len(plan.left_out)} file(s) were left out (reasons in the manifest)."]
    return lines


def _single(plan: ConversionPlan, name: str) -> bool:
    return next(c.single for c in plan.columns if c.name == name)


def _describe(feature: Any) -> str:
    text = repr(feature)
    return text if len(text) <= 80 else text[:77] + "..."
