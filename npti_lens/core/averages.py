"""The one mean every table of the package uses (plain Python or numpy values)."""

from __future__ import annotations

import math
from collections.abc import Iterable


def mean(values: Iterable[float], *, skip_nan: bool = False) -> float:
    """The mean of `values` (NaN when there are none). `skip_nan`: over the values that are not
    NaN (an inventory item without a rating), NaN when none is."""
    xs = [float(v) for v in values]
    if skip_nan:
        xs = [x for x in xs if not math.isnan(x)]
    return sum(xs) / len(xs) if xs else float("nan")
