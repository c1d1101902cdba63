"""The writer's pandas-free array builders equal pyarrow.array for the same values."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from bids2hf.write.arrays import int32_array, string_array, typed_array

CASES: list[tuple[list[Any], pa.DataType]] = [
    (["a", None, "é", ""], pa.string()),
    ([1, None, -(2**40)], pa.int64()),
    ([1, 2, None], pa.int32()),
    ([1.5, None, 2, -0.0, 1e300], pa.float64()),
    ([True, None, False], pa.bool_()),
    ([[1, 2], None, [], [3]], pa.list_(pa.int32())),
    ([["x", None], None], pa.list_(pa.string())),
    (
        [{"RepetitionTime": 2.0, "TaskName": "rest", "Echo": [1, 2]}, None, {"TaskName": None}],
        pa.struct([("RepetitionTime", pa.float64()), ("TaskName", pa.string()), ("Echo", pa.list_(pa.int64()))]),
    ),
    (
        [[{"a": 1, "b": "x"}, None], [], None],
        pa.list_(pa.struct([("a", pa.int64()), ("b", pa.string())])),
    ),
    ([float("nan"), 1.0], pa.float64()),  # NaN: falls back to pyarrow.array
    ([1, "2"], pa.string()),  # a number where text is wanted: pyarrow.array decides (raises)
]


@pytest.mark.parametrize(("values", "typ"), CASES, ids=[str(t) for _, t in CASES])
def test_typed_array_equals_pyarrow_array(values: list[Any], typ: pa.DataType) -> None:
    try:
        expected = pa.array(values, type=typ)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        with pytest.raises(type(exc)):
            typed_array(values, typ)
        return
    got = typed_array(values, typ)
    assert got.type == typ
    # NaN never equals itself in Array.equals: compare the printed values for that case.
    assert got.equals(expected) or got.to_string() == expected.to_string(), (got, expected)


def test_strings_and_offsets_equal_pyarrow_array() -> None:
    values = ["sub-01/anat/sub-01_T1w.nii.gz", None, "", "ünï"]
    assert string_array(values).equals(pa.array(values, type=pa.string()))
    assert string_array(["a", "b"]).null_count == 0
    offsets = np.array([0, 3, 3, 7])
    assert int32_array(offsets).equals(pa.array(offsets.tolist(), type=pa.int32()))


def test_building_arrays_imports_no_pandas() -> None:
    code = (
        "import sys, numpy as np, pyarrow as pa\n"
        "from bids2hf.write.arrays import int32_array, string_array, typed_array\n"
        "string_array(['a', None]); int32_array(np.arange(3))\n"
        "typed_array([{'a': 1}, None], pa.struct([('a', pa.int64())]))\n"
        "assert 'pandas' not in sys.modules, 'pandas was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_bool_array_equals_pyarrow_array() -> None:
    from bids2hf.write.arrays import bool_array

    for values in ([True, False, True] * 5, [False] * 9, [True]):
        assert bool_array(values).equals(pa.array(values, type=pa.bool_()))
