"""The package's one mean helper, against numpy."""

from __future__ import annotations

import math

import numpy as np
import pytest

from npti_lens.core.averages import mean


def test_mean_against_numpy_and_its_nan_rule():
    xs = [0.25, 0.5, 1.0, 2.0]
    assert mean(xs) == pytest.approx(np.mean(xs)) and mean(x for x in xs) == pytest.approx(0.9375)
    with_nan = np.array([1.0, np.nan, 3.0])
    assert math.isnan(mean(with_nan)) and mean(with_nan, skip_nan=True) == pytest.approx(2.0)
    assert math.isnan(mean([])) and math.isnan(mean([np.nan], skip_nan=True))
