"""JSON-ready copies of analysis results. A leaf module.

`jsonable` is for JSON (reports, findings' evidence): undefined numbers (NaN, ±inf, pandas'
NA) become None. The run file has its own converter, `stepsize_lens.run.format.plain`, with
different rules for a different target (what ``torch.load(weights_only=True)`` accepts: NaN
stays NaN, tensors become numbers or lists).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np


def jsonable(value: Any) -> Any:
    """A JSON-ready copy: mappings to dicts with string keys, tuples and arrays to lists, numpy
    scalars to Python, NaN / ±inf / pd.NA / NaT to None, anything else to its ``str``."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [jsonable(v) for v in value]
    if value is None or isinstance(value, (bool, np.bool_)):
        return None if value is None else bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, str):
        return value
    try:
        import pandas as pd

        if value is pd.NA or value is pd.NaT:
            return None
    except ImportError:  # pragma: no cover
        pass
    return str(value)
