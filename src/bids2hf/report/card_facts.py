"""What the dataset card says about a dataset, as pure functions of what was read.

License mapping, the dataset_description.json summary, a shortened BIDS README, participant
aggregates (never per-subject values), per-image-kind header facts, and the user-written section
that survives re-runs. Per-image-kind header facts are in :mod:`bids2hf.image_facts`.
:mod:`bids2hf.card_render` turns these into the card; the HTML report
(:mod:`bids2hf.html_report`) shows the same facts.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from bids2hf.model.format import (
    USER_END,
    USER_PLACEHOLDER,
    USER_START,
    UserSectionError,
    user_section_span,
)

__all__ = [
    "USER_END",
    "USER_START",
    "DescriptionFacts",
    "ParticipantSummary",
    "ShortReadme",
    "UserSectionError",
    "description_facts",
    "extract_user_section",
    "hub_license",
    "license_name",
    "neutralize_markers",
    "participant_summary",
    "shorten_readme",
    "user_section",
]

# -- license ----------------------------------------------------------------------------------

#: BIDS ``License`` values, normalised (lower case, runs of spaces/underscores as "-", a trailing
#: "-universal"/"-international"/"-license" dropped) → Hub license identifier. Values the Hub
#: has no identifier for map to "other", with the text in the card's body.
HUB_LICENSES: dict[str, str] = {
    "cc0": "cc0-1.0",
    "cc0-1.0": "cc0-1.0",
    "cc-zero": "cc0-1.0",
    "creative-commons-zero-v1.0": "cc0-1.0",
    "pddl": "pddl",
    "pddl-1.0": "pddl",
    "odc-pddl": "pddl",
    "odbl": "odbl",
    "odbl-1.0": "odbl",
    "odc-odbl": "odbl",
    "odc-by": "odc-by",
    "odc-by-1.0": "odc-by",
    "cc-by-4.0": "cc-by-4.0",
    "cc-by-3.0": "cc-by-3.0",
    "cc-by-2.0": "cc-by-2.0",
    "cc-by-sa-4.0": "cc-by-sa-4.0",
    "cc-by-sa-3.0": "cc-by-sa-3.0",
    "cc-by-nc-4.0": "cc-by-nc-4.0",
    "cc-by-nc-3.0": "cc-by-nc-3.0",
    "cc-by-nc-sa-4.0": "cc-by-nc-sa-4.0",
    "cc-by-nc-sa-3.0": "cc-by-nc-sa-3.0",
    "cc-by-nd-4.0": "cc-by-nd-4.0",
    "cc-by-nc-nd-4.0": "cc-by-nc-nd-4.0",
    "cc-by-nc-nd-3.0": "cc-by-nc-nd-3.0",
    "mit": "mit",
    "apache-2.0": "apache-2.0",
    "odc-odbl-1.0": "odbl",
    "pd": "cc0-1.0",  # approximate: the Hub has no plain "public domain"; the text goes in the body
    "public-domain": "cc0-1.0",
}
#: Mappings that are approximations: the card's body quotes the original text beside the id.
_APPROXIMATE = {"pd", "public-domain"}
_CC_URL = re.compile(
    r"creativecommons\.org/(?:licenses/(by(?:-nc)?(?:-sa|-nd)?)/(\d\.\d)|publicdomain/zero/1\.0)"
)
_SUFFIX = re.compile(r"-(universal|international|license|licence|public)$")
_LONG_NAMES = (
    (re.compile(r"^open-data-commons-open-database$"), "odbl"),
    (re.compile(r"^open-data-commons-public-domain-dedication-and$"), "pddl"),
    (re.compile(r"^open-data-commons-attribution$"), "odc-by"),
    (re.compile(r"^creative-commons-zero"), "cc0"),
    (re.compile(r"^creative-commons-attribution-"), "cc-by-"),
    (re.compile(r"non-?commercial-?"), "nc-"),
    (re.compile(r"share-?alike-?"), "sa-"),
    (re.compile(r"no-?derivatives-?"), "nd-"),
)


def _license_key(text: str) -> str:
    key = re.sub(r"[\s_]+", "-", text.strip().lower()).strip("-")
    while (shorter := _SUFFIX.sub("", key)) != key:  # "...-4.0-international-license"
        key = shorter
    for pattern, short in _LONG_NAMES:
        key = pattern.sub(short, key)
    return key


def hub_license(value: Any) -> tuple[str, str | None]:
    """Map a dataset_description.json ``License`` to a Hub license id, and say what the card's
    body must add: the original text when the id is "other" or an approximation ("PD" →
    cc0-1.0), else None.

    Missing or empty → ("unknown", a sentence saying so). Never raises.
    """
    if not isinstance(value, str) or not value.strip():
        return "unknown", "dataset_description.json gives no License; ask the authors before reuse."
    text = value.strip()
    url = _CC_URL.search(text.lower())
    if url:
        key = f"cc-{url.group(1)}-{url.group(2)}" if url.group(1) else "cc0-1.0"
    else:
        key = _license_key(text)
    found = HUB_LICENSES.get(key)
    if found is None:
        return "other", text
    return found, (text if key in _APPROXIMATE else None)


def license_name(value: Any) -> str:
    """The ``license_name`` slug the Hub wants beside ``license: other`` (as card.py makes it)."""
    slug = re.sub(r"[^a-z0-9-]+", "-", str(value).lower()).strip("-")
    return slug[:64].strip("-") or "custom"


# -- dataset_description.json ----------------------------------------------------------------


def _texts(value: Any) -> list[str]:
    """A BIDS array-of-strings field, tolerating a single string (a common mistake)."""
    if value is None:
        return []
    items = value if isinstance(value, list) else [value]
    return [str(v).strip() for v in items if v is not None and str(v).strip()]


def _text(value: Any) -> str | None:
    if value is None:
        return None
    text = " ".join(_texts(value)) if isinstance(value, list) else str(value).strip()
    return text or None


def _doi(value: Any) -> str | None:
    """The bare DOI ("10.18112/openneuro.ds000001.v1.0.0") from any of the usual spellings."""
    text = _text(value)
    if not text:
        return None
    m = re.search(r"(10\.\d{4,9}/\S+)", text)
    return m.group(1).rstrip(".") if m else text


@dataclass
class DescriptionFacts:
    """The fields of dataset_description.json the card shows."""

    name: str
    bids_version: str | None = None
    dataset_type: str | None = None
    license: str | None = None
    authors: list[str] = field(default_factory=list)
    doi: str | None = None
    how_to_acknowledge: str | None = None
    acknowledgements: str | None = None
    funding: list[str] = field(default_factory=list)
    references: list[str] = field(default_factory=list)
    ethics_approvals: list[str] = field(default_factory=list)
    generated_by: list[str] = field(default_factory=list)  # "Name version" of pipelines

    @property
    def doi_url(self) -> str | None:
        return f"https://doi.org/{self.doi}" if self.doi and self.doi.startswith("10.") else None


def description_facts(description: Mapping[str, Any]) -> DescriptionFacts:
    """Read the card's fields from a parsed dataset_description.json (never raises)."""
    generated = []
    for item in description.get("GeneratedBy") or []:
        if isinstance(item, Mapping) and item.get("Name"):
            generated.append(f"{item['Name']} {item.get('Version', '')}".strip())
    return DescriptionFacts(
        name=_text(description.get("Name")) or "BIDS dataset",
        bids_version=_text(description.get("BIDSVersion")),
        dataset_type=_text(description.get("DatasetType")),
        license=_text(description.get("License")),
        authors=_texts(description.get("Authors")),
        doi=_doi(description.get("DatasetDOI")),
        how_to_acknowledge=_text(description.get("HowToAcknowledge")),
        acknowledgements=_text(description.get("Acknowledgements")),
        funding=_texts(description.get("Funding")),
        references=_texts(description.get("ReferencesAndLinks")),
        ethics_approvals=_texts(description.get("EthicsApprovals")),
        generated_by=generated,
    )


# -- README -----------------------------------------------------------------------------------

_MARKER = re.compile(r"bids2hf:user-section", re.IGNORECASE)


def neutralize_markers(text: str) -> str:
    """Text with anything that looks like a user-section marker defused (for generated parts)."""
    return _MARKER.sub("bids2hf user-section", text)


@dataclass
class ShortReadme:
    text: str  # markdown, headings demoted below the card's own
    shortened: bool


def shorten_readme(text: str, max_chars: int = 1500) -> ShortReadme:
    """The first paragraphs of a BIDS README, up to about ``max_chars``, markdown kept.

    Headings are demoted to level 3 and below (``#`` → ``###``; setext/reStructuredText
    underlines too) so they nest under the card's "Description"; an unfinished code fence is
    closed; user-section markers are defused. Never raises.
    """
    text = text.replace("\r\n", "\n").replace("\r", "\n").lstrip("\ufeff")
    lines = _demote(text.strip("\n").split("\n"))
    paragraphs: list[list[str]] = [[]]
    fence = False
    for line in lines:
        if line.lstrip().startswith(("```", "~~~")):
            fence = not fence
        if not line.strip() and not fence:
            if paragraphs[-1]:
                paragraphs.append([])
            continue
        paragraphs[-1].append(line)
    paragraphs = [p for p in paragraphs if p]
    kept: list[str] = []
    used = 0
    shortened = False
    for i, para in enumerate(paragraphs):
        block = "\n".join(para)
        if used + len(block) > max_chars:
            shortened = True
            if not kept:  # one long first paragraph: cut it at a word boundary
                cut = block[:max_chars].rsplit(" ", 1)[0].rstrip()
                kept.append(cut + " …")
            break
        kept.append(block)
        used += len(block) + 2
        shortened = i + 1 < len(paragraphs)
    out = "\n\n".join(kept)
    if sum(1 for ln in out.split("\n") if ln.lstrip().startswith(("```", "~~~"))) % 2:
        out += "\n```"
    return ShortReadme(neutralize_markers(out), shortened)


def _demote(lines: list[str]) -> list[str]:
    out: list[str] = []
    fence = False
    for line in lines:
        stripped = line.strip()
        if stripped.startswith(("```", "~~~")):
            fence = not fence
        if not fence and re.fullmatch(r"#{1,6}\s.*", stripped):
            level = len(stripped) - len(stripped.lstrip("#"))
            out.append("#" * min(6, level + 2) + stripped[level:])
        elif (
            not fence
            and out
            and out[-1].strip()
            and not out[-1].lstrip().startswith("#")
            and re.fullmatch(r"(=+|-+|~+|\^+)", stripped)
            and len(stripped) >= 3
        ):
            level = {"=": 3, "-": 4}.get(stripped[0], 5)
            out[-1] = "#" * level + " " + out[-1].strip()
        else:
            out.append(line)
    return out


# -- user section -----------------------------------------------------------------------------


def extract_user_section(previous: str | None) -> str | None:
    """The text between the markers of a previous card, verbatim; None if it has none.

    Raises:
        UserSectionError: a marker is missing, repeated, or the end comes before the start
            (the section's limits are then unknown: rewriting the card could lose text).
    """
    if not previous:
        return None
    span = user_section_span(previous, "README.md")
    return None if span is None else previous[span[0] : span[1]]


def user_section(content: str | None) -> str:
    """The marked section, holding ``content`` (a previous card's) or a placeholder."""
    return f"{USER_START}{USER_PLACEHOLDER if content is None else content}{USER_END}"


# -- participants -----------------------------------------------------------------------------

_SEX = {
    "m": "male", "male": "male", "man": "male",
    "f": "female", "female": "female", "woman": "female",
    "o": "other", "other": "other",
}  # fmt: skip
_MISSING = {"", "n/a", "na", "nan", "none", "null", "unknown", "?"}


@dataclass
class ParticipantSummary:
    """Aggregates over participants.tsv: counts only, never a per-subject value."""

    participants: int
    age_column: str | None = None
    age_count: int = 0  # participants with a numeric age
    age_min: int | None = None  # whole years (floor), shown only from 2 ages on
    age_max: int | None = None  # whole years (ceil)
    sex: dict[str, int] = field(default_factory=dict)
    groups: dict[str, dict[str, int]] = field(default_factory=dict)  # column → level → count


def _age_column(columns: Sequence[str]) -> str | None:
    if "age" in columns:
        return "age"
    return next((c for c in columns if c.lower().startswith("age")), None)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value) if math.isfinite(value) else None
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*\+?\s*", str(value))  # "89+" is top-coded 89
    return float(m.group(1)) if m else None


def participant_summary(
    rows: Iterable[Mapping[str, Any]],
    levels: Mapping[str, Mapping[str, str]] | None = None,
    group_columns: Sequence[str] = ("group", "handedness"),
) -> ParticipantSummary:
    """Counts, age range and sex counts (plus ``group``/``handedness`` counts) of participants.

    Args:
        rows: participants.tsv rows (column → value; "n/a" or None for missing).
        levels: per column, participants.json ``Levels`` (value → meaning), to read sex codes.
        group_columns: categorical columns to count, when present.

    The age range needs at least two ages: one age alone would be a person's value. Never
    raises.
    """
    rows = list(rows)
    columns = list(dict.fromkeys(k for r in rows for k in r))
    summary = ParticipantSummary(participants=len(rows))
    levels = levels or {}
    age_col = _age_column(columns)
    if age_col:
        ages = [a for a in (_number(r.get(age_col)) for r in rows) if a is not None]
        summary.age_column, summary.age_count = age_col, len(ages)
        if len(ages) >= 2:
            summary.age_min, summary.age_max = math.floor(min(ages)), math.ceil(max(ages))
    sex_col = next((c for c in columns if c.lower() in ("sex", "gender")), None)
    if sex_col:
        counts: Counter[str] = Counter()
        for r in rows:
            raw = "" if r.get(sex_col) is None else str(r.get(sex_col)).strip()
            meaning = str(levels.get(sex_col, {}).get(raw, raw)).strip().lower()
            counts["n/a" if meaning in _MISSING else _SEX.get(meaning, meaning)] += 1
        summary.sex = dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
    for col in group_columns:
        if col in columns:
            values = Counter(
                "n/a"
                if str(r.get(col, "")).strip().lower() in _MISSING
                else str(r.get(col)).strip()
                for r in rows
            )
            summary.groups[col] = dict(sorted(values.items(), key=lambda kv: (-kv[1], kv[0])))
    return summary
