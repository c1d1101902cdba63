"""Arrow arrays built without ``pyarrow.array``.

``pyarrow.array`` (and ``pyarrow.scalar``) import pandas the first time they are called, even
with an explicit type and plain Python lists: about 0.2 s in the main process and again in every
spawned worker, a third of a small conversion. The writer therefore builds its arrays from
buffers (strings, masks, offsets) and its value columns through Arrow's JSON reader with an
explicit schema, neither of which touches pandas. The arrays are equal to what ``pyarrow.array``
gives for the same values, so the Parquet bytes do not change (the golden-output test checks it).
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.json as pa_json

__all__ = ["bool_array", "int32_array", "string_array", "typed_array", "validity"]


def validity(present: Sequence[bool]) -> pa.Buffer | None:
    """An Arrow validity bitmap (None when every value is present)."""
    if all(present):
        return None
    bits = np.packbits(np.asarray(present, dtype=bool), bitorder="little")
    return pa.py_buffer(bits.tobytes())


def bool_array(values: Sequence[bool]) -> pa.Array:
    """A boolean array (no nulls)."""
    bits = np.packbits(np.asarray(values, dtype=bool), bitorder="little")
    return pa.Array.from_buffers(pa.bool_(), len(values), [None, pa.py_buffer(bits.tobytes())])


def int32_array(values: np.ndarray) -> pa.Array:
    """An int32 array over ``values`` (no nulls)."""
    data = np.ascontiguousarray(values, dtype=np.int32)
    return pa.Array.from_buffers(pa.int32(), len(data), [None, pa.py_buffer(data)])


def string_array(values: Sequence[str | None]) -> pa.Array:
    """A UTF-8 string array; ``None`` is null."""
    encoded = [v.encode() if v is not None else b"" for v in values]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int32)
    np.cumsum([len(b) for b in encoded], out=offsets[1:])
    mask = validity([v is not None for v in values])
    return pa.Array.from_buffers(
        pa.string(),
        len(encoded),
        [mask, pa.py_buffer(offsets), pa.py_buffer(b"".join(encoded))],
        null_count=-1,
    )


def _json_safe(value: Any) -> bool:
    # The JSON reader has no spelling for NaN or infinity.
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(_json_safe(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return all(_json_safe(v) for v in value)
    return True


def typed_array(values: Sequence[Any], typ: pa.DataType) -> pa.Array:
    """An array of ``typ`` from plain Python values (JSON-like: None, bool, int, float, str,
    lists and dicts), read by Arrow's JSON reader with ``typ`` as the explicit schema.

    Values the JSON reader cannot express (NaN, infinity, bytes) fall back to
    ``pyarrow.array``, which is correct but imports pandas.

    Raises:
        pyarrow.ArrowInvalid: a value does not fit ``typ``.
    """
    if not values:
        return pa.array([], type=typ)
    if not all(_json_safe(v) and not isinstance(v, bytes) for v in values):
        return pa.array(list(values), type=typ)
    lines = b"".join(
        json.dumps({"v": v}, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"
        for v in values
    )
    options = pa_json.ParseOptions(
        explicit_schema=pa.schema([pa.field("v", typ)]), unexpected_field_behavior="error"
    )
    # One block for all the rows: the column comes back as a single chunk.
    read = pa_json.ReadOptions(use_threads=False, block_size=max(1 << 20, len(lines) + 1))
    try:
        column = pa_json.read_json(io.BytesIO(lines), read_options=read, parse_options=options)
    except pa.ArrowInvalid:  # e.g. a number where the type wants text: pyarrow.array decides
        return pa.array(list(values), type=typ)
    array = column.column("v").combine_chunks()
    if array.type != typ:  # the reader widened or narrowed something: trust pyarrow instead
        return pa.array(list(values), type=typ)
    return array
