"""The JSON sanitiser shared by the findings and the reports."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd

from stepsize_lens._jsonable import jsonable


def test_undefined_numbers_become_null_and_numpy_becomes_python() -> None:
    value = {
        1: (np.float32(0.5), np.int64(3), np.bool_(True)),
        "nan": math.nan,
        "inf": np.float64(-np.inf),
        "array": np.array([1.0, np.nan]),
        "na": pd.NA,
        "nat": pd.NaT,
        "path": ValueError("x"),
        "none": None,
    }
    out = jsonable(value)
    assert out == {
        "1": [0.5, 3, True],
        "nan": None,
        "inf": None,
        "array": [1.0, None],
        "na": None,
        "nat": None,
        "path": "x",
        "none": None,
    }
    assert type(out["1"][1]) is int and type(out["1"][0]) is float
    json.dumps(out, allow_nan=False)
