"""The dataset card (README.md): YAML metadata the Hub and ``datasets`` read, and a human summary.

Built only from the inventory's description and the plan, so it is deterministic: the same input
gives the same card (no timestamps).
"""

from __future__ import annotations

import re
from typing import Any

from huggingface_hub import DatasetCardData

import bids2hf.bids.schema as bids_schema
from bids2hf._version import __version__
from bids2hf.model.rows import Role
from bids2hf.plan.plan import ConversionPlan
from bids2hf.units import human_bytes

__all__ = ["hub_license", "render_card"]

# BIDS `License` values as people write them → Hub license identifiers.
_LICENSES = {
    "cc0": "cc0-1.0",
    "cc0-1.0": "cc0-1.0",
    "pddl": "pddl",
    "pddl-1.0": "pddl",
    "odbl": "odbl",
    "odbl-1.0": "odbl",
    "odc-by": "odc-by",
    "cc-by-4.0": "cc-by-4.0",
    "cc-by-3.0": "cc-by-3.0",
    "cc-by-sa-4.0": "cc-by-sa-4.0",
    "cc-by-nc-4.0": "cc-by-nc-4.0",
    "cc-by-nc-sa-4.0": "cc-by-nc-sa-4.0",
    "cc-by-nd-4.0": "cc-by-nd-4.0",
    "mit": "mit",
    "apache-2.0": "apache-2.0",
}


def hub_license(bids_license: Any) -> str:
    """Map a dataset_description.json License to a Hub license id ("other" if unknown)."""
    if not isinstance(bids_license, str) or not bids_license.strip():
        return "other"
    key = re.sub(r"[\s_]+", "-", bids_license.strip().lower())
    key = key.replace("public-domain", "cc0")
    return _LICENSES.get(key, "other")


def _size_category(rows: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K")):
        if rows < limit:
            return name
    return "100K<n<1M"


def render_card(
    plan: ConversionPlan, description: dict[str, Any], repo_hint: str = "ORG/NAME"
) -> str:
    """The README.md text for a converted dataset."""
    name = description.get("Name") or "BIDS dataset"
    layout = "one per subject and session" if plan.options.layout == "session" else "one per image file"
    lines = [
        "---",
        _card_data(plan, description).to_yaml().strip(),
        "---",
        "",
        f"# {name}",
        "",
        f"A [BIDS](https://bids.neuroimaging.io) dataset converted by bids2hf {__version__} "
        f"(BIDS schema {bids_schema.schema_version()}): "
        f"{plan.rows} rows ({layout}), "
        f"{plan.embedded_files} embedded files, {human_bytes(plan.embedded_bytes)} in {len(plan.shards)} Parquet shard(s). "
        "Every NIfTI file is stored byte for byte, with its sha256 beside it.",
        "",
        *_loading_lines(plan, repo_hint),
        *_contents_lines(plan),
        *_credits_lines(description),
    ]
    return "\n".join(lines) + "\n"


def _card_data(plan: ConversionPlan, description: dict[str, Any]) -> DatasetCardData:
    """The card's YAML metadata: license, tags, the data files and `datasets`' dataset_info."""
    split = plan.options.split
    bids_license = description.get("License")
    # No License in dataset_description.json: say nothing rather than guess.
    license_id: str | None = hub_license(bids_license) if bids_license else None
    datatypes = sorted({k.kind.rpartition(":")[2].split("/")[0] for k in plan.kinds})
    extra: dict[str, Any] = {}
    if license_id == "other":
        slug = re.sub(r"[^a-z0-9-]+", "-", str(bids_license).lower()).strip("-")
        extra["license_name"] = slug[:64].strip("-") or "custom"
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
    """"## Loading": with `datasets`, with nibabel for NIfTI-2, and back to BIDS."""
    lines = [
        "## Loading",
        "",
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
    """"## Contents" (images by kind) and "## Columns" (every feature)."""
    lines = [
        "## Contents",
        "",
        "| images | column | files | size | rows with it |",
        "|---|---|---:|---:|---:|",
    ]
    for k in plan.kinds:
        lines.append(f"| {k.kind} | `{k.column}` | {k.files} | {human_bytes(k.bytes)} | {k.rows} |")
    lines += ["", "## Columns", "", "| column | type |", "|---|---|"]
    for name, feature in plan.features.items():
        lines.append(f"| `{name}` | {_describe(feature)} |")
    lines += [
        "",
        "Dataset-level files (dataset_description.json, README, participants.tsv, ...) are stored "
        "verbatim under `bids/`. `bids2hf/manifest.jsonl` lists every source file with its size, "
        "sha256 and where it is.",
    ]
    if plan.left_out:
        lines += ["", f"{len(plan.left_out)} file(s) were left out (reasons in the manifest)."]
    return lines


def _credits_lines(description: dict[str, Any]) -> list[str]:
    """License, authors, how to acknowledge and DOI, as dataset_description.json gives them."""
    lines: list[str] = []
    bids_license = description.get("License")
    if bids_license:
        lines += ["", f"**License (from dataset_description.json):** {bids_license}"]
    for key, title in (
        ("Authors", "Authors"),
        ("HowToAcknowledge", "How to acknowledge"),
        ("DatasetDOI", "DOI"),
    ):
        value = description.get(key)
        if value:
            text = ", ".join(map(str, value)) if isinstance(value, list) else str(value)
            lines += ["", f"**{title}:** {text}"]
    return lines


def _single(plan: ConversionPlan, name: str) -> bool:
    return next(c.single for c in plan.columns if c.name == name)


def _describe(feature: Any) -> str:
    text = repr(feature)
    return text if len(text) <= 80 else text[:77] + "..."
