"""JSON-safe copies of results for metrics.json / results.json / summaries.

``json.dumps`` writes NaN as the non-standard token ``NaN``, which strict JSON readers (jq,
JavaScript, pandas' default engine) reject; every writer of figures goes through :func:`json_safe`.
"""

from __future__ import annotations

import math

import numpy as np


def json_safe(x, digits: int | None = None):
    """A copy of ``x`` (nested dicts / lists / tuples) with NaN as None, numpy scalars as Python
    numbers and, when ``digits`` is given, floats rounded to that many decimals."""
    if isinstance(x, dict):
        return {k: json_safe(v, digits) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v, digits) for v in x]
    if isinstance(x, (np.floating, float)):
        x = float(x)
        if math.isnan(x):
            return None
        return x if digits is None else round(x, digits)
    if isinstance(x, np.integer):
        return int(x)
    return x
