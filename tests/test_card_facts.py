"""Card facts and the card: license table, description, README, participants, headers, the user
section across re-runs, and a round trip through huggingface_hub's DatasetCard."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from datasets import load_dataset
from huggingface_hub import DatasetCard, DatasetCardData

import bids2hf
from bids2hf.report.card_facts import (
    USER_END,
    USER_START,
    UserSectionError,
    description_facts,
    extract_user_section,
    hub_license,
    participant_summary,
    shorten_readme,
)
from bids2hf.report.card_render import CardFacts, GeneratedSections, render
from bids2hf.report.image_facts import HeaderFacts, facts_from_header, header_facts, summarize_kind
from bids2hf.testing.spec import GeneratedDataset


@pytest.mark.parametrize(
    ("value", "hub_id", "body"),
    [
        ("CC0", "cc0-1.0", None),
        ("CC0-1.0", "cc0-1.0", None),
        ("CC0 1.0 Universal", "cc0-1.0", None),
        ("cc0_1.0", "cc0-1.0", None),
        ("https://creativecommons.org/publicdomain/zero/1.0/", "cc0-1.0", None),
        ("PD", "cc0-1.0", "PD"),  # approximation: the original text goes in the body
        ("Public Domain", "cc0-1.0", "Public Domain"),
        ("PDDL", "pddl", None),
        ("PDDL-1.0", "pddl", None),
        ("ODbL", "odbl", None),
        ("ODC-ODbL-1.0", "odbl", None),
        ("Open Data Commons Open Database License", "odbl", None),
        ("ODC-By", "odc-by", None),
        ("CC-BY-4.0", "cc-by-4.0", None),
        ("CC BY 4.0", "cc-by-4.0", None),
        ("Creative Commons Attribution 4.0 International", "cc-by-4.0", None),
        ("https://creativecommons.org/licenses/by/4.0/", "cc-by-4.0", None),
        ("CC-BY-SA-4.0", "cc-by-sa-4.0", None),
        ("CC-BY-NC-4.0", "cc-by-nc-4.0", None),
        ("CC-BY-NC-SA-4.0", "cc-by-nc-sa-4.0", None),
        (
            "Creative Commons Attribution-NonCommercial-ShareAlike 4.0 International",
            "cc-by-nc-sa-4.0",
            None,
        ),
        ("CC-BY-NC-ND-4.0", "cc-by-nc-nd-4.0", None),
        ("CC-BY-3.0", "cc-by-3.0", None),
        ("MIT", "mit", None),
        ("Apache-2.0", "apache-2.0", None),
        ("Apache License 2.0", "other", "Apache License 2.0"),
        ("see LICENSE file", "other", "see LICENSE file"),
        (
            "Data use agreement of the XYZ consortium",
            "other",
            "Data use agreement of the XYZ consortium",
        ),
    ],
)
def test_license_table(value: str, hub_id: str, body: str | None) -> None:
    assert hub_license(value) == (hub_id, body)


@pytest.mark.parametrize("value", [None, "", "   ", 3, ["CC0"]])
def test_missing_license_is_unknown(value: object) -> None:
    hub_id, body = hub_license(value)
    assert hub_id == "unknown" and body and "no License" in body


# card.py's table before issue 13 (value → id); every value keeps its id.
_CARD_PY = {
    "cc0": "cc0-1.0", "cc0-1.0": "cc0-1.0", "pddl": "pddl", "pddl-1.0": "pddl", "odbl": "odbl",
    "odbl-1.0": "odbl", "odc-by": "odc-by", "cc-by-4.0": "cc-by-4.0", "cc-by-3.0": "cc-by-3.0",
    "cc-by-sa-4.0": "cc-by-sa-4.0", "cc-by-nc-4.0": "cc-by-nc-4.0",
    "cc-by-nc-sa-4.0": "cc-by-nc-sa-4.0", "cc-by-nd-4.0": "cc-by-nd-4.0", "mit": "mit",
    "apache-2.0": "apache-2.0", "Public Domain": "cc0-1.0", "CC0 1.0": "cc0-1.0",
}  # fmt: skip


def test_compatible_with_card_py() -> None:
    for value, old_id in _CARD_PY.items():
        assert hub_license(value)[0] == old_id, value


def test_description_facts_tolerate_common_mistakes() -> None:
    d = description_facts(
        {
            "Name": "  A study ",
            "BIDSVersion": "1.8.0",
            "Authors": "Ada Lovelace",  # a string instead of a list
            "DatasetDOI": "doi:10.18112/openneuro.ds000001.v1.0.0",
            "Funding": ["NIH R01", "", None],
            "ReferencesAndLinks": ["https://example.org/paper"],
            "EthicsApprovals": "IRB 123",
            "HowToAcknowledge": "Cite the paper.",
            "GeneratedBy": [{"Name": "fMRIPrep", "Version": "23.1"}, "junk"],
        }
    )
    assert d.name == "A study" and d.authors == ["Ada Lovelace"]
    assert d.doi == "10.18112/openneuro.ds000001.v1.0.0"
    assert d.doi_url == "https://doi.org/10.18112/openneuro.ds000001.v1.0.0"
    assert d.funding == ["NIH R01"] and d.ethics_approvals == ["IRB 123"]
    assert d.generated_by == ["fMRIPrep 23.1"]
    assert description_facts({}).name == "BIDS dataset"


def test_readme_is_shortened_with_markdown_kept() -> None:
    text = (
        "# My dataset\r\n\r\nFirst paragraph with **bold**.\r\n\r\n## Methods\r\n\r\n"
        + "Long paragraph. " * 200
        + "\n\nnever reached"
    )
    short = shorten_readme(text, max_chars=300)
    assert short.shortened
    assert short.text.startswith("### My dataset\n\nFirst paragraph with **bold**.")
    assert (
        "#### Methods" in short.text
        and "never reached" not in short.text
        and "\r" not in short.text
    )
    assert not shorten_readme("one\n\ntwo").shortened


def test_readme_edge_cases() -> None:
    # One long paragraph: cut at a word, marked.
    cut = shorten_readme("word " * 1000, max_chars=100)
    assert cut.shortened and len(cut.text) <= 103 and cut.text.endswith("…")
    # reStructuredText/setext headings are demoted too (=== would be a level-1 heading).
    assert shorten_readme("Title\n=====\n\ntext").text.startswith("### Title")
    # A cut inside a code fence closes it; markers are defused.
    fenced = shorten_readme("```\n" + "x = 1\n" * 50 + "\n\n" + "y\n" * 10 + "```", max_chars=120)
    assert fenced.text.count("```") % 2 == 0
    assert USER_START not in shorten_readme(f"hi {USER_START} there").text


def test_participant_aggregates_only() -> None:
    rows = [
        {"participant_id": "sub-01", "age": 23.4, "sex": "M", "group": "patient"},
        {"participant_id": "sub-02", "age": "45", "sex": "F", "group": "control"},
        {"participant_id": "sub-03", "age": "89+", "sex": "f", "group": "patient"},
        {"participant_id": "sub-04", "age": "n/a", "sex": "n/a", "group": "n/a"},
    ]
    s = participant_summary(rows)
    assert (s.participants, s.age_count, s.age_min, s.age_max) == (4, 3, 23, 89)
    assert s.sex == {"female": 2, "male": 1, "n/a": 1}
    assert s.groups == {"group": {"patient": 2, "control": 1, "n/a": 1}}
    # participants.json Levels decode codes.
    coded = participant_summary(
        [{"sex": "1"}, {"sex": "2"}], levels={"sex": {"1": "male", "2": "female"}}
    )
    assert coded.sex == {"female": 1, "male": 1}
    # One age alone would be a person's age: no range.
    assert participant_summary([{"age": 30}]).age_min is None
    # Other age column names (ARC: age_at_stroke).
    assert (
        participant_summary([{"age_at_stroke": 50}, {"age_at_stroke": 60}]).age_column
        == "age_at_stroke"
    )


def _nifti(
    shape: tuple[int, ...],
    zooms: tuple[float, ...],
    version: int = 1,
    gz: bool = True,
    msec: bool = False,
) -> bytes:
    cls = nib.Nifti1Image if version == 1 else nib.Nifti2Image
    img = cls(np.zeros(shape, dtype=np.int16), np.diag([*zooms[:3], 1.0]))
    img.header.set_zooms(zooms)
    img.header.set_xyzt_units("mm", "msec" if msec else "sec")
    raw = img.to_bytes()
    return gzip.compress(raw) if gz else raw


def test_header_facts() -> None:
    t1 = header_facts(_nifti((8, 9, 10), (1.0, 1.0, 1.2)))
    assert t1 == HeaderFacts((8, 9, 10), (1.0, 1.0, 1.2), None, "int16", 1)
    bold = header_facts(
        _nifti((4, 4, 3, 5), (3.0, 3.0, 3.5, 2000.0), version=2, gz=False, msec=True)
    )
    assert (bold.shape, bold.tr, bold.version) == ((4, 4, 3, 5), 2.0, 2)
    # Only the start of the file is needed.
    assert header_facts(_nifti((8, 9, 10), (1.0, 1.0, 1.0), gz=False)[:348]).shape == (8, 9, 10)
    with pytest.raises(ValueError, match="NIfTI"):
        header_facts(b"not a nifti file at all")
    # The same from a header the scan already parsed (no read at all).
    img = nib.Nifti1Image(np.zeros((8, 9, 10), dtype=np.int16), np.diag([1.0, 1.0, 1.2, 1.0]))
    assert facts_from_header(img.header) == t1


def test_summarize_kind() -> None:
    a = HeaderFacts((64, 64, 36, 200), (3.0, 3.0, 3.5), 2.0, "int16", 1)
    b = HeaderFacts((64, 64, 36, 150), (3.0, 3.0, 3.5), 2.0, "int16", 1)
    k = summarize_kind(
        "func/bold",
        "func_bold",
        [a, a, b, None],
        [10, 20, 30, 40],
        rows=3,
        sidecar_trs=[None, 1.5, None],
    )
    assert (k.files, k.bytes, k.unreadable, k.median_size) == (4, 100, 1, 25)
    assert k.typical_shape == "64x64x36x200" and k.shapes == {"64x64x36x200": 2, "64x64x36x150": 1}
    assert k.typical_voxel_size == "3x3x3.5"
    assert k.trs == {"2": 2, "1.5": 1}  # the sidecar's TR wins where given


def test_user_section_markers() -> None:
    assert extract_user_section(None) is None
    assert extract_user_section("no markers here") is None
    assert extract_user_section(f"a{USER_START}\nmine\n{USER_END}b") == "\nmine\n"
    for broken in (
        f"{USER_START} no end",
        f"{USER_END} x {USER_START}",
        f"{USER_START}{USER_START}{USER_END}",
    ):
        with pytest.raises(UserSectionError, match="exactly one"):
            extract_user_section(broken)


def _facts(**kw: object) -> CardFacts:
    description = description_facts(
        {
            "Name": "Demo",
            "License": "CC0",
            "Authors": ["A. B."],
            "DatasetDOI": "10.1/x",
            "BIDSVersion": "1.9.0",
        }
    )
    defaults: dict[str, object] = {
        "description": description,
        "repo_id": "org/demo",
        "readme": shorten_readme("A demo dataset.\n\nSecond paragraph."),
        "participants": participant_summary([{"age": 20, "sex": "F"}, {"age": 30, "sex": "M"}]),
        "kinds": [
            summarize_kind(
                "anat/T1w",
                "anat_T1w",
                [HeaderFacts((8, 8, 8), (1.0, 1.0, 1.0), None, "int16", 1)],
                [1000],
                rows=1,
            )
        ],
        "pictures": {"anat_T1w": "images/anat_T1w.png"},
        "previews": True,
        "bids2hf_version": "0.1.0",
        "manifest_sha256": "ab" * 32,
    }
    defaults.update(kw)
    return CardFacts(**defaults)  # type: ignore[arg-type]


def _data() -> DatasetCardData:
    return DatasetCardData(
        pretty_name="Demo",
        configs=[
            {
                "config_name": "default",
                "data_files": [{"split": "train", "path": "data/train-*.parquet"}],
            }
        ],
        dataset_info={"features": [{"name": "subject_id", "dtype": "string"}]},
    )


def test_card_round_trips_through_dataset_card(tmp_path: Path) -> None:
    text = render(
        _data(),
        _facts(),
        GeneratedSections(intro="Intro line.", loading="```python\nx\n```", columns="| a | b |"),
    )
    (tmp_path / "README.md").write_text(text)
    card = DatasetCard.load(tmp_path / "README.md")
    assert card.data.license == "cc0-1.0"
    assert card.data.configs[0]["config_name"] == "default"
    assert card.data.dataset_info == {"features": [{"name": "subject_id", "dtype": "string"}]}
    assert str(card) == text  # nothing lost or reordered by a load/save cycle
    body = card.text
    for expected in (
        "# Demo",
        "Intro line.",
        "![anat/T1w](images/anat_T1w.png)",
        "A demo dataset.",
        'load_dataset("org/demo", "previews", split="train")',
        "| anat/T1w | `anat_T1w` | 1 |",
        "8x8x8",
        "- age (`age`): 20 to 30 years",
        "- sex: female 1, male 1",
        "**DOI:** [10.1/x](https://doi.org/10.1/x)",
        "@misc{demo,",
        "sha256 `" + "ab" * 32 + "`",
        "| BIDS version | 1.9.0 |",
        USER_START,
        USER_END,
    ):
        assert expected in body, expected


def test_other_license_goes_in_the_body() -> None:
    facts = _facts(description=description_facts({"Name": "X", "License": "Custom DUA v2"}))
    card = DatasetCard(render(_data(), facts))
    assert card.data.license == "other" and card.data.license_name == "custom-dua-v2"
    assert "Custom DUA v2" in card.text


def test_user_section_survives_a_rerun(tmp_path: Path) -> None:
    first = render(_data(), _facts())
    mine = "\n## Notes from the curators\n\nSubject 3 moved a lot; see `bids/README`.\n"
    edited = first.replace(
        first[first.index(USER_START) : first.index(USER_END) + len(USER_END)],
        USER_START + mine + USER_END,
    )
    # The re-run changes the generated parts (new README text) and keeps the user's section.
    second = render(_data(), _facts(readme=shorten_readme("Updated description.")), previous=edited)
    assert mine in second and "Updated description." in second and "A demo dataset." not in second
    assert second.count(USER_START) == 1
    # Generated text can never forge a marker (it would break the next re-run).
    hostile = _facts(description=description_facts({"Name": f"x {USER_START}", "License": "CC0"}))
    assert render(_data(), hostile).count(USER_START) == 1
    with pytest.raises(UserSectionError):
        render(_data(), _facts(), previous=f"{USER_START} oops")


def test_render_on_a_real_converted_card(synthetic: GeneratedDataset, tmp_path: Path) -> None:
    """What card.py will do: keep its YAML (configs, dataset_info) and add the facts; the
    dataset still loads, with the same features."""
    out = tmp_path / "hf"
    bids2hf.convert(synthetic.root, out, workers=1, progress=False)
    before = load_dataset(str(out), split="train").features
    inventory, plan = bids2hf.inspect(synthetic.root)
    old = DatasetCard.load(out / "README.md")
    assert inventory.participants is not None
    facts = CardFacts(
        description=description_facts(inventory.description),
        repo_id="org/ds",
        readme=shorten_readme((synthetic.root / "README").read_text()),
        participants=participant_summary(inventory.participants.rows.values()),
        kinds=[
            summarize_kind(
                k.kind, k.column, [None] * k.files, [k.bytes // max(1, k.files)] * k.files, k.rows
            )
            for k in plan.kinds
        ],
    )
    text = render(
        old.data,
        facts,
        GeneratedSections(columns="(columns)"),
        previous=(out / "README.md").read_text(),
    )
    (out / "README.md").write_text(text)
    new = DatasetCard.load(out / "README.md")
    assert new.data.configs == old.data.configs and new.data.dataset_info == old.data.dataset_info
    assert new.data.license == old.data.license == "cc0-1.0"
    assert load_dataset(str(out), split="train").features == before
    assert "sub-01" not in new.text.split("## Participants")[1].split("##")[0]
