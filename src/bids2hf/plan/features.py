"""The Hugging Face feature types bids2hf writes, without importing `datasets`.

`datasets` (with pandas under it) costs about 0.5 s to import, more than converting a small
dataset takes; the convert path only needs to *describe* its columns the way `datasets` does.
These four types write exactly what ``datasets.Features`` writes for the same features: the
Arrow type, the JSON kept in the Parquet schema metadata (``b"huggingface"``), the card's YAML
``dataset_info.features`` and the ``repr`` shown in the card and by ``inspect``.
tests/test_features.py compares all four with `datasets` itself, so a change there is caught.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

__all__ = [
    "Feature",
    "Features",
    "Image",
    "List",
    "Nifti",
    "NoArrowType",
    "Struct",
    "Value",
    "generate_from_arrow_type",
    "infer_arrow_type",
]

#: `datasets`' dtype names of the Arrow types a column can have here
_DTYPES: dict[str, pa.DataType] = {
    "bool": pa.bool_(),
    "int8": pa.int8(),
    "int16": pa.int16(),
    "int32": pa.int32(),
    "int64": pa.int64(),
    "uint8": pa.uint8(),
    "uint16": pa.uint16(),
    "uint32": pa.uint32(),
    "uint64": pa.uint64(),
    "float16": pa.float16(),
    "float32": pa.float32(),
    "float64": pa.float64(),
    "string": pa.string(),
    "large_string": pa.large_string(),
    "binary": pa.binary(),
    "large_binary": pa.large_binary(),
}
_ARROW_DTYPES = {typ: name for name, typ in _DTYPES.items()}


@dataclass(frozen=True, repr=False)
class Value:
    """A scalar column: `datasets.Value(dtype)`.

    Raises:
        ValueError: ``dtype`` is not one of the dtypes bids2hf writes (see ``_DTYPES``).
    """

    dtype: str

    def __post_init__(self) -> None:
        if self.dtype not in _DTYPES:
            raise ValueError(f"unsupported Value dtype {self.dtype!r}")

    def arrow_type(self) -> pa.DataType:
        return _DTYPES[self.dtype]

    def to_json(self) -> dict[str, Any]:
        return {"dtype": self.dtype, "_type": "Value"}

    def to_yaml(self) -> dict[str, Any]:
        return {"dtype": self.dtype}

    def __repr__(self) -> str:
        return f"Value('{self.dtype}')"


@dataclass(frozen=True, repr=False)
class Nifti:
    """A NIfTI file (``{bytes, path}``): `datasets.Nifti(decode)`; NIfTI-2 columns are not decoded."""

    decode: bool = True

    def arrow_type(self) -> pa.DataType:
        return pa.struct({"bytes": pa.binary(), "path": pa.string()})

    def to_json(self) -> dict[str, Any]:
        # datasets leaves out fields at their default value
        return {"_type": "Nifti"} if self.decode else {"decode": False, "_type": "Nifti"}

    def to_yaml(self) -> dict[str, Any]:
        return {"dtype": "nifti"} if self.decode else {"dtype": {"nifti": {"decode": False}}}

    def __repr__(self) -> str:
        return f"Nifti(decode={self.decode})"


@dataclass(frozen=True, repr=False)
class Image:
    """An image file (``{bytes, path}``, PNG here): `datasets.Image()`, decoded to PIL."""

    def arrow_type(self) -> pa.DataType:
        return pa.struct({"bytes": pa.binary(), "path": pa.string()})

    def to_json(self) -> dict[str, Any]:
        return {"_type": "Image"}

    def to_yaml(self) -> dict[str, Any]:
        return {"dtype": "image"}

    def __repr__(self) -> str:
        return "Image(mode=None, decode=True)"


@dataclass(frozen=True, repr=False)
class List:
    """A variable-length list of one feature: `datasets.List(feature)` (Arrow ``list<...>``)."""

    feature: Feature

    def arrow_type(self) -> pa.DataType:
        return pa.list_(self.feature.arrow_type())

    def to_json(self) -> dict[str, Any]:
        return {"feature": self.feature.to_json(), "_type": "List"}

    def to_yaml(self) -> dict[str, Any]:
        inner = self.feature.to_yaml()
        # datasets' YAML shortens `list: {dtype: x}` to `list: x` and `list: {struct: [...]}`
        # to `list: [...]`
        if list(inner) == ["dtype"]:
            return {"list": inner["dtype"]}
        if list(inner) == ["struct"]:
            return {"list": inner["struct"]}
        return {"list": inner}

    def __repr__(self) -> str:
        return f"List({self.feature!r})"


@dataclass(frozen=True, repr=False)
class Struct:
    """Named fields, in order: a plain ``dict`` of features in `datasets` (Arrow ``struct``)."""

    fields: tuple[tuple[str, Feature], ...]

    @classmethod
    def of(cls, fields: Mapping[str, Feature]) -> Struct:
        return cls(tuple(fields.items()))

    def arrow_type(self) -> pa.DataType:
        return pa.struct([(name, f.arrow_type()) for name, f in self.fields])

    def to_json(self) -> dict[str, Any]:
        return {name: f.to_json() for name, f in self.fields}

    def to_yaml(self) -> dict[str, Any]:
        return {"struct": [{"name": name, **f.to_yaml()} for name, f in self.fields]}

    def __repr__(self) -> str:
        # the repr of the dict datasets holds
        return "{" + ", ".join(f"{name!r}: {f!r}" for name, f in self.fields) + "}"


#: a column's (or a list item's, a struct field's) feature
Feature = Value | Nifti | Image | List | Struct


class Features(Mapping[str, Feature]):
    """The columns' features, in column order: what `datasets.Features` describes."""

    def __init__(self, columns: Mapping[str, Feature]) -> None:
        self._columns = dict(columns)

    def __getitem__(self, name: str) -> Feature:
        return self._columns[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._columns)

    def __len__(self) -> int:
        return len(self._columns)

    def __repr__(self) -> str:
        return repr(self._columns)

    def to_json(self) -> dict[str, Any]:
        """``datasets.Features.to_dict()``."""
        return {name: f.to_json() for name, f in self._columns.items()}

    def to_yaml(self) -> list[dict[str, Any]]:
        """The card's ``dataset_info.features`` list, as `datasets` writes it."""
        return Struct.of(self._columns).to_yaml()["struct"]

    @property
    def arrow_schema(self) -> pa.Schema:
        """The Arrow schema, with the features as `datasets` stores them in its metadata."""
        schema = pa.schema([(name, f.arrow_type()) for name, f in self._columns.items()])
        metadata = {"info": {"features": self.to_json()}}
        return schema.with_metadata({"huggingface": json.dumps(metadata)})


def generate_from_arrow_type(pa_type: pa.DataType) -> Feature:
    """The feature of an Arrow type, as `datasets`' function of the same name gives it.

    Raises:
        ValueError: a type bids2hf never infers (large or fixed-size lists, dates, ...).
    """
    if pa.types.is_struct(pa_type):
        return Struct(tuple((f.name, generate_from_arrow_type(f.type)) for f in pa_type))
    if pa.types.is_list(pa_type):
        return List(generate_from_arrow_type(pa_type.value_type))
    if pa_type in _ARROW_DTYPES:
        return Value(_ARROW_DTYPES[pa_type])
    raise ValueError(f"no feature for Arrow type {pa_type}")


class NoArrowType(ValueError):
    """The values have no common Arrow type (``pa.array(values)`` would raise)."""


#: the integers a double holds exactly: pyarrow refuses to put others in a float column
_EXACT_IN_DOUBLE = 2**53
_INT64 = (-(2**63), 2**63 - 1)
#: pyarrow's inference stops scanning a sequence at the first value of these kinds
_STOPS = (bool, float, str)


def infer_arrow_type(values: Sequence[Any]) -> pa.DataType:
    """The Arrow type ``pa.array(values).type`` gives for JSON values, without calling it.

    Every conversion of Python objects by pyarrow (``pa.array``, ``pa.infer_type``) first
    imports pandas to recognise its objects: 0.3 s, most of a small conversion's time.
    This follows pyarrow's two steps for what JSON holds (None, bool, int, float, str, list,
    dict): its inference (arrow/python/inference.cc), then whether every value converts to the
    inferred type. tests/test_features.py checks it against ``pa.array`` on many random values.

    Raises:
        NoArrowType: ``pa.array(values)`` would fail (mixed kinds, an int out of int64, an
            int a float column cannot hold exactly, a value JSON cannot hold).
    """
    inferrer = _Inferrer()
    inferrer.visit_sequence(values)
    typ = inferrer.type()
    for v in values:
        if not _fits(v, typ):
            raise NoArrowType(f"{v!r} does not convert to {typ}")
    return typ


class _Inferrer:
    """pyarrow's TypeInferrer, for JSON values: counts the kinds it visits."""

    def __init__(self) -> None:
        self.kinds: set[type] = set()
        self.item: _Inferrer | None = None  # of the lists' items
        self.fields: dict[str, _Inferrer] = {}  # of the dicts' values, by key

    def visit_sequence(self, values: Sequence[Any]) -> None:
        for v in values:
            self.visit(v)
            if isinstance(v, _STOPS):  # pyarrow considers the type settled
                break

    def visit(self, v: Any) -> None:
        if v is None:
            return
        kind = _kind(v)
        self.kinds.add(kind)
        if kind is list:
            self.item = self.item or _Inferrer()
            self.item.visit_sequence(v)
        elif kind is dict:
            for name, x in v.items():  # every value of every dict: no early stop here
                self.fields.setdefault(name, _Inferrer()).visit(x)

    def type(self) -> pa.DataType:
        for nested in (list, dict):
            if nested in self.kinds and len(self.kinds) > 1:
                raise NoArrowType(f"cannot mix {nested.__name__} and other values")
        if self.item is not None:
            return pa.list_(self.item.type())
        if dict in self.kinds:
            return pa.struct([(name, f.type()) for name, f in self.fields.items()])
        for kind, typ in ((float, pa.float64()), (int, pa.int64()), (bool, pa.bool_())):
            if kind in self.kinds:
                return typ
        return pa.string() if str in self.kinds else pa.null()


def _fits(v: Any, typ: pa.DataType) -> bool:
    """Whether pyarrow converts ``v`` to ``typ``."""
    if v is None:
        return True
    if pa.types.is_list(typ):
        return isinstance(v, list) and all(_fits(x, typ.value_type) for x in v)
    if pa.types.is_struct(typ):
        return isinstance(v, dict) and all(_fits(v.get(f.name), f.type) for f in typ)
    if typ == pa.float64():
        return isinstance(v, (bool, float)) or (isinstance(v, int) and abs(v) <= _EXACT_IN_DOUBLE)
    if typ == pa.int64():
        if isinstance(v, float):
            return math.isfinite(v) and _INT64[0] <= v < 2.0**63
        return isinstance(v, int) and not isinstance(v, bool) and _INT64[0] <= v <= _INT64[1]
    if typ == pa.bool_():
        return isinstance(v, bool)
    return isinstance(v, str) if typ == pa.string() else False


def _kind(value: Any) -> type:
    for kind in (bool, int, float, str, list, dict):  # bool before int: True is an int
        if isinstance(value, kind):
            return kind
    raise NoArrowType(f"not a JSON value: {type(value).__name__}")
