"""bids2hf's own feature types (plan/features.py) write exactly what `datasets` writes.

The convert path no longer imports `datasets`; these tests do, so that a `datasets` release that
changes its JSON, YAML, Arrow types or reprs is caught here (and re-recording the golden outputs
is then a decision, not an accident).
"""

from __future__ import annotations

import json
import random
from typing import Any

import datasets
import pyarrow as pa
import pytest
from datasets.features.features import generate_from_arrow_type as hf_from_arrow
from datasets.info import DatasetInfosDict
from huggingface_hub import DatasetCardData

from bids2hf.plan.features import (
    Feature,
    Features,
    Image,
    List,
    Nifti,
    NoArrowType,
    Struct,
    Value,
    generate_from_arrow_type,
    infer_arrow_type,
)

DTYPES = ["bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
          "float16", "float32", "float64", "string", "large_string", "binary",
          "large_binary"]  # fmt: skip

META = Struct.of(
    {
        "EchoTime": Value("float64"),
        "Manufacturer": Value("string"),
        "SeriesNumber": Value("int64"),
        "MultibandAccelerationFactor": Value("bool"),
        "SliceTiming": List(Value("float64")),
        "ImageType": List(Value("string")),
        "Nested": Struct.of(
            {"a": List(List(Value("int64"))), "b": Struct.of({"c": Value("string")})}
        ),
        "Lists": List(Struct.of({"x": Value("float64"), "y": List(Value("string"))})),
    }
)
#: every kind of column the layouts declare, and deeper nestings than they need
COLUMNS: dict[str, Feature] = {
    "subject_id": Value("string"),
    "run": Value("int32"),
    "age": Value("float64"),
    "count": Value("int64"),
    "nifti": Nifti(),
    "nifti2": Nifti(decode=False),
    "image": Image(),  # the previews config
    "images": List(Image()),
    "anat_T1w": List(Nifti()),
    "anat_T1w_nifti2": List(Nifti(decode=False)),
    "anat_T1w_sha256": List(Value("string")),
    "anat_T1w_run": List(Value("int32")),
    "anat_T1w_meta": List(META),
    "single_meta": META,
    "files": List(Struct.of({"path": Value("string"), "bytes": Value("binary")})),
    "lists_of_lists": List(List(Value("string"))),
    "lists_of_niftis": List(List(Nifti(decode=False))),
    **{f"dtype_{d}": Value(d) for d in DTYPES},
    **{f"list_{d}": List(Value(d)) for d in DTYPES},
}


def to_datasets(feature: Feature) -> Any:
    """The same feature built with `datasets`."""
    if isinstance(feature, Value):
        return datasets.Value(feature.dtype)
    if isinstance(feature, Nifti):
        return datasets.Nifti(decode=feature.decode)
    if isinstance(feature, Image):
        return datasets.Image()
    if isinstance(feature, List):
        return datasets.List(to_datasets(feature.feature))
    return {name: to_datasets(f) for name, f in feature.fields}


OURS = Features(COLUMNS)
THEIRS = datasets.Features({name: to_datasets(f) for name, f in COLUMNS.items()})


def test_json_as_datasets_writes_it() -> None:
    assert json.dumps(OURS.to_json()) == json.dumps(THEIRS.to_dict())


def test_arrow_schema_and_its_metadata_as_datasets_writes_them() -> None:
    ours, theirs = OURS.arrow_schema, THEIRS.arrow_schema
    assert ours.equals(theirs, check_metadata=True)
    assert ours.metadata == theirs.metadata  # the bytes stored in every shard


def test_card_yaml_as_datasets_writes_it() -> None:
    assert OURS.to_yaml() == THEIRS._to_yaml_list()
    # the whole dataset_info block, as report/card.py writes it
    splits = datasets.SplitDict()
    splits.add(datasets.SplitInfo(name="train", num_bytes=1234, num_examples=5))
    expected = DatasetCardData()
    info = datasets.DatasetInfo(features=THEIRS, splits=splits)
    DatasetInfosDict({"default": info}).to_dataset_card_data(expected)
    ours = DatasetCardData(
        dataset_info={
            "features": OURS.to_yaml(),
            "splits": [{"name": "train", "num_bytes": 1234, "num_examples": 5}],
        }
    )
    assert ours.to_yaml() == expected.to_yaml()


@pytest.mark.parametrize("name", list(COLUMNS))
def test_repr_as_datasets_shows_it(name: str) -> None:
    # the card's "Columns" table and `inspect` show these
    assert repr(OURS[name]) == repr(THEIRS[name])


ARROW_TYPES = [
    pa.struct([("b", pa.int64()), ("a", pa.string())]),
    pa.list_(pa.float64()),
    pa.list_(pa.list_(pa.struct([("x", pa.bool_()), ("y", pa.list_(pa.string()))]))),
    pa.struct([("n", pa.struct([("m", pa.list_(pa.int64()))]))]),
    *(Value(d).arrow_type() for d in DTYPES),
]


@pytest.mark.parametrize("typ", ARROW_TYPES, ids=str)
def test_generate_from_arrow_type_as_datasets(typ: pa.DataType) -> None:
    ours = generate_from_arrow_type(typ)
    assert repr(ours) == repr(hf_from_arrow(typ))
    assert ours.to_json() == datasets.Features({"c": hf_from_arrow(typ)}).to_dict()["c"]
    assert ours.arrow_type() == typ


def test_a_type_bids2hf_never_infers_is_refused() -> None:
    with pytest.raises(ValueError, match="no feature"):
        generate_from_arrow_type(pa.large_list(pa.int64()))
    with pytest.raises(ValueError, match="unsupported"):
        Value("timestamp[s]")


def _pa_type(values: list[Any]) -> pa.DataType | None:
    try:
        return pa.array(values).type
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, TypeError):
        return None


def _ours(values: list[Any]) -> pa.DataType | None:
    try:
        return infer_arrow_type(values)
    except NoArrowType:
        return None


EDGES: list[list[Any]] = [
    [], [None], [1, 2], [1, 2.5], [True, 1], [True, 1.5], [1, "a"], ["a", 1.5], [2**63 - 1],
    [-(2**63)], [2**63], [-(2**63) - 1], [2**64], [2**53, 0.5], [-(2**53), 0.5],
    [2**53 + 1, 0.5], [2**54, 0.5], [float("nan"), 1], [float("inf")], [[1, 2], [3]], [[1], ["a"]],
    [[True], [1]], [[], [1]], [[None]], [[[]]], [{}], [{"a": None}], [{"a": []}], [{"a": {}}],
    [{"a": 1}, {"b": "x"}], [{"a": 1}, {"a": "x"}], [{"a": 1}, {"a": 1.5}],
    [{"b": 1, "a": 2}, {"a": 3, "c": "x"}], [{"a": {"b": 1}}, {"a": 2}], [{"a": 1}, [1]],
    [[{"x": 1}], [{"y": 2}]], [[{"a": 1}], [{"a": "x"}]], [1, None, 2.0],
    # order matters: pyarrow stops inferring at the first bool, float or str
    [1.5, True], [float("nan"), True], [[True], [1.5]], [[1.5], [True]], [1, True],
    [{"a": 1}, {"a": True}], ["a", 1], [1, 2, True, 1.5], [[1.5, [2]]], [{"a": 1}, 1.5],
]  # fmt: skip


SCALARS = [None, True, False, 0, 3, -5, 2**53, 2**53 + 1, -(2**53) - 1, 2**63 - 1, 2**63,
           -(2**63), 2**70, 0.5, -1.25, 3.0, float("nan"), float("inf"), "", "a"]  # fmt: skip


def _random_value(rng: random.Random, depth: int) -> Any:
    roll = rng.random()
    if depth == 0 or roll < 0.5:
        return rng.choice(SCALARS)
    if roll < 0.75:
        return [_random_value(rng, depth - 1) for _ in range(rng.randint(0, 3))]
    return {rng.choice("abc"): _random_value(rng, depth - 1) for _ in range(rng.randint(0, 3))}


def _random_values(rng: random.Random) -> list[Any]:
    # mostly values of one shape, as sidecars have, so that the types often agree
    template = _random_value(rng, 3)
    return [
        template if rng.random() < 0.5 else _random_value(rng, 3) for _ in range(rng.randint(1, 5))
    ]


@pytest.mark.parametrize("values", EDGES, ids=repr)
def test_inferred_types_are_pyarrows_on_edges(values: list[Any]) -> None:
    assert _ours(values) == _pa_type(values)


def test_inferred_types_are_pyarrows_on_random_json() -> None:
    rng = random.Random(11)
    seen = set()
    for _ in range(20_000):
        values = _random_values(rng)
        expected = _pa_type(values)
        assert _ours(values) == expected, values
        seen.add(str(expected))
    # the corpus reaches structs, lists, both numeric kinds and the failures
    assert {"None", "int64", "double", "bool", "string"} <= seen
    assert any(s.startswith("struct<") for s in seen) and any(s.startswith("list<") for s in seen)
    assert len(seen) > 50, seen
