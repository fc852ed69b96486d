"""``check_unit``: the one rule for a score, a rate or a trust in [0, 1]."""

from __future__ import annotations

import math

import numpy as np
import pytest

from moe_agents import InvalidInput
from moe_agents.errors import check_unit


class TestCheckUnit:
    @pytest.mark.parametrize(
        ("value", "expected"),
        [(0, 0.0), (1, 1.0), (0.25, 0.25), (np.float32(0.5), 0.5)],
        ids=["int-0", "int-1", "float", "numpy"],
    )
    def test_a_real_number_in_the_interval_is_its_float(self, value: object, expected: float) -> None:
        """ints, floats and numpy scalars in [0, 1] come back as that float."""
        assert check_unit(value, "score") == expected

    @pytest.mark.parametrize(
        "value",
        [-0.1, 1.5, math.nan, math.inf, "0.5", True, None],
        ids=["negative", "above", "nan", "inf", "numeric-string", "bool", "none"],
    )
    def test_anything_else_is_invalid_input_naming_the_value(self, value: object) -> None:
        """Out of range, NaN, a string (even a numeric one) and a bool are InvalidInput."""
        with pytest.raises(InvalidInput, match=r"feedback score must be .*\[0, 1\]"):
            check_unit(value, "feedback score")
