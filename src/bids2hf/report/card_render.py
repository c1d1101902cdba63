"""The dataset card's text, in the format of huggingface_hub's ``DatasetCard``, from the card's facts.

:func:`render` takes the YAML metadata (``DatasetCardData``: configs, dataset_info, ... as
card.py makes it), the sections card.py already writes (intro, loading snippet, columns table,
notes), and the facts of :mod:`bids2hf.card_facts`; it adds pictures, the README description,
image-header facts, participant aggregates, license, citation and provenance, and keeps the
user-written section of the previous card. Deterministic: no timestamps, sorted where unordered.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from huggingface_hub import DatasetCardData

from bids2hf.model.format import REPO_PLACEHOLDER
from bids2hf.report.card_facts import (
    DescriptionFacts,
    ParticipantSummary,
    ShortReadme,
    extract_user_section,
    hub_license,
    license_name,
    neutralize_markers,
    user_section,
)
from bids2hf.report.image_facts import KindFacts
from bids2hf.units import human_bytes

__all__ = ["CardFacts", "GeneratedSections", "bibtex", "render"]


@dataclass
class GeneratedSections:
    """The parts of the card that card.py writes today, as markdown (kept as they are)."""

    intro: str = ""  # "A BIDS dataset converted by bids2hf ...: N rows ..."
    loading: str = ""  # the code blocks of "## Loading" (load_dataset, export)
    columns: str = ""  # the "## Columns" table
    notes: str = ""  # dataset-level files, left-out count, NIfTI-2 note
    contents: str = ""  # card.py's kinds table: used only when no KindFacts are given


@dataclass
class CardFacts:
    """Everything the card says beyond card.py's sections."""

    description: DescriptionFacts
    repo_id: str = REPO_PLACEHOLDER
    split: str = "train"
    readme: ShortReadme | None = None
    readme_path: str = "bids/README"  # where the full README is in the output
    kinds: list[KindFacts] = field(default_factory=list)
    participants: ParticipantSummary | None = None
    pictures: Mapping[str, str] = field(default_factory=dict)  # column → "images/<column>.png"
    previews: bool = False  # the ``previews`` config exists
    bids2hf_version: str = ""
    schema_version: str | None = None
    manifest_sha256: str | None = None


def _cell(text: object) -> str:
    return str(text).replace("\n", " ").replace("|", "\\|")


def _inline(text: str) -> str:
    return " ".join(text.split())


def bibtex(facts: DescriptionFacts) -> str | None:
    """A BibTeX entry for the dataset (title, authors, DOI), or None without a DOI."""
    if not facts.doi:
        return None
    key = "".join(ch for ch in facts.name.lower() if ch.isalnum())[:32] or "dataset"

    def braced(text: str) -> str:
        return text.replace("{", "(").replace("}", ")")

    lines = [f"@misc{{{key},", f"  title = {{{braced(facts.name)}}},"]
    if facts.authors:
        lines.append(f"  author = {{{braced(' and '.join(facts.authors))}}},")
    lines.append(f"  doi = {{{braced(facts.doi)}}},")
    if facts.doi_url:
        lines.append(f"  url = {{{facts.doi_url}}},")
    lines.append("}")
    return "\n".join(lines)


def _pictures(facts: CardFacts) -> list[str]:
    if not facts.pictures:
        return []
    by_column = {k.column: k.kind for k in facts.kinds}
    lines = ["## At a glance", ""]
    for column, path in facts.pictures.items():
        kind = by_column.get(column, column)
        lines += [f"**{kind}** (`{column}`)", "", f"![{kind}]({path})", ""]
    lines += [
        "Mid-slices of the first image of each kind (axial, coronal, sagittal; subject's left on "
        "the left, as the letters say; the middle volume of 4-D images).",
        "",
    ]
    return lines


def _description(facts: CardFacts) -> list[str]:
    if facts.readme is None or not facts.readme.text.strip():
        return []
    lines = ["## Description", "", facts.readme.text, ""]
    if facts.readme.shortened:
        lines += [
            f"*Shortened; the full text is in [`{facts.readme_path}`]({facts.readme_path}).*",
            "",
        ]
    return lines


def _loading(facts: CardFacts, sections: GeneratedSections) -> list[str]:
    if not sections.loading and not facts.previews:
        return []
    lines = ["## Loading", ""]
    if sections.loading:
        lines += [sections.loading.strip("\n"), ""]
    if facts.previews:
        lines += [
            "Thumbnails for browsing (the `previews` config, PIL images; the default config "
            "above is the full data):",
            "",
            "```python",
            f'previews = load_dataset("{facts.repo_id}", "previews", split="{facts.split}")',
            "```",
            "",
        ]
    return lines


def _kinds(facts: CardFacts, sections: GeneratedSections) -> list[str]:
    if not facts.kinds:
        return ["## Contents", "", sections.contents.strip("\n"), ""] if sections.contents else []
    lines = [
        "## Images",
        "",
        "| images | column | files | size | rows with it | typical shape | voxel size (mm) | TR (s) |",
        "|---|---|---:|---:|---:|---|---|---|",
    ]
    for k in facts.kinds:
        lines.append(
            f"| {_cell(k.kind)} | `{k.column}` | {k.files} | {human_bytes(k.bytes)} | {k.rows} "
            f"| {k.typical_shape or '-'} | {k.typical_voxel_size or '-'} | {k.typical_tr or '-'} |"
        )
    lines += [
        "",
        "Shape, voxel size and TR (4-D images): the most common value in the NIfTI headers "
        "(a sidecar's RepetitionTime, which BIDS makes authoritative, is in the `_meta` column).",
        "",
    ]
    return lines


def _counts(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{_inline(k)} {v}" for k, v in counts.items())


def _participants(summary: ParticipantSummary | None) -> list[str]:
    if summary is None:
        return []
    lines = ["## Participants", "", f"- participants: {summary.participants}"]
    if summary.age_min is not None:
        lines.append(
            f"- age (`{summary.age_column}`): {summary.age_min} to {summary.age_max} years "
            f"({summary.age_count} with a value)"
        )
    if summary.sex:
        lines.append(f"- sex: {_counts(summary.sex)}")
    for column, counts in summary.groups.items():
        lines.append(f"- {column}: {_counts(counts)}")
    lines += [
        "",
        "Aggregates of `bids/participants.tsv`; the card shows no per-subject values.",
        "",
    ]
    return lines


def _license(d: DescriptionFacts) -> list[str]:
    hub_id, text = hub_license(d.license)
    if d.license is None:
        return ["## License", "", text or "", ""]
    lines = ["## License", "", f"`{hub_id}` (from dataset_description.json: {_inline(d.license)})"]
    if text is not None and hub_id != "other":
        lines.append(f"The Hub has no identifier for this license; `{hub_id}` is the closest.")
    return [*lines, ""]


def _credits(d: DescriptionFacts) -> list[str]:
    lines: list[str] = []
    if d.how_to_acknowledge:
        lines += [f"**How to acknowledge:** {_inline(d.how_to_acknowledge)}", ""]
    if d.doi:
        shown = f"[{d.doi}]({d.doi_url})" if d.doi_url else d.doi
        lines += [f"**DOI:** {shown}", ""]
    if d.authors:
        lines += [f"**Authors:** {', '.join(_inline(a) for a in d.authors)}", ""]
    if d.acknowledgements:
        lines += [f"**Acknowledgements:** {_inline(d.acknowledgements)}", ""]
    for title, items in (
        ("Funding", d.funding),
        ("References and links", d.references),
        ("Ethics approvals", d.ethics_approvals),
    ):
        if items:
            lines += [f"**{title}:**", "", *(f"- {_inline(i)}" for i in items), ""]
    if entry := bibtex(d):
        lines += ["```bibtex", entry, "```", ""]
    return ["## Citation", "", *lines] if lines else []


def _provenance(facts: CardFacts) -> list[str]:
    d = facts.description
    rows = [
        ("BIDS version", d.bids_version),
        ("dataset type", d.dataset_type),
        ("generated by", ", ".join(d.generated_by) or None),
        (
            "converted by",
            f"bids2hf {facts.bids2hf_version}".strip()
            + (f" (BIDS schema {facts.schema_version})" if facts.schema_version else ""),
        ),
        (
            "manifest",
            f"`bids2hf/manifest.jsonl`, sha256 `{facts.manifest_sha256}`"
            if facts.manifest_sha256
            else None,
        ),
    ]
    lines = ["## Provenance", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {_cell(v)} |" for k, v in rows if v]
    return [*lines, ""]


def render(
    data: DatasetCardData,
    facts: CardFacts,
    sections: GeneratedSections | None = None,
    previous: str | None = None,
) -> str:
    """The README.md text: ``data`` as the YAML header (license set from the facts), then the
    body; the user section of ``previous`` (the card this one replaces) is kept verbatim.

    Raises:
        UserSectionError: ``previous`` has broken user-section markers (nothing is written, so
            the user's text cannot be lost).
    """
    sections = sections or GeneratedSections()
    kept = extract_user_section(previous)
    d = facts.description
    if d.license is not None:
        hub_id, _ = hub_license(d.license)
        data["license"] = hub_id
        if hub_id == "other":
            data["license_name"] = license_name(d.license)
    if data.get("pretty_name") is None:
        data["pretty_name"] = d.name
    generated: list[str] = [f"# {_inline(d.name)}", ""]
    if sections.intro:
        generated += [sections.intro.strip("\n"), ""]
    generated += _pictures(facts) + _description(facts)
    rest: list[str] = [
        *_loading(facts, sections),
        *_kinds(facts, sections),
        *_participants(facts.participants),
    ]
    if sections.columns:
        rest += ["## Columns", "", sections.columns.strip("\n"), ""]
    if sections.notes:
        rest += [sections.notes.strip("\n"), ""]
    rest += _license(d) + _credits(d) + _provenance(facts)
    body = "\n".join(
        [
            neutralize_markers("\n".join(generated)),
            user_section(kept),
            "",
            neutralize_markers("\n".join(rest)).rstrip("\n"),
            "",
        ]
    )
    # What huggingface_hub's DatasetCard(...) gives back (tests/test_card_facts.py loads it with
    # DatasetCard.load), without importing huggingface_hub.hf_api on the convert path (~50 ms).
    return f"---\n{data.to_yaml()}\n---\n\n{body}"
