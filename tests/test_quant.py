"""The requantization arithmetic against exact rational arithmetic."""

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sw.quant import (
    INT8,
    SHIFT_MAX,
    SHIFT_MIN,
    QuantSpec,
    quantize_multiplier,
    quantize_multiplier_pair,
    requantize,
    scale_and_round,
)


def exact_round(acc: int, m: int, n: int) -> int:
    """Round half up of acc*m/2**n, computed with fractions."""
    return math.floor(Fraction(acc * m, 2**n) + Fraction(1, 2))


@given(st.integers(-(2**47), 2**47), st.integers(0, 2**31 - 1),
       st.integers(SHIFT_MIN, SHIFT_MAX))
def test_scale_and_round_is_exact(acc, m, n):
    limit = 2**62  # documented saturation, far beyond any activation
    want = min(max(exact_round(acc, m, n), -limit), limit)
    assert int(scale_and_round(np.array([acc]), m, n)[0]) == want


def test_scale_and_round_saturates_wide_results():
    assert int(scale_and_round(np.array([2**47]), 2**31 - 1, 1)[0]) == 2**62


def test_ties_round_up():
    # 5/2 -> 3, -5/2 -> -2, 3/2 -> 2, -3/2 -> -1
    got = scale_and_round(np.array([5, -5, 3, -3]), 1, 1)
    np.testing.assert_array_equal(got, [3, -2, 2, -1])


@given(st.lists(st.integers(-(2**33), 2**33), min_size=1, max_size=20),
       st.integers(0, 2**31 - 1), st.integers(SHIFT_MIN, SHIFT_MAX),
       st.integers(-128, 127), st.booleans())
def test_requantize_clamps_and_relu(accs, m, n, z, relu):
    got = requantize(np.array(accs), m, n, z, relu=relu)
    lo = z if relu else -128
    want = [min(max(z + exact_round(a, m, n), lo), 127) for a in accs]
    np.testing.assert_array_equal(got, want)


@given(st.floats(min_value=2.0**-40, max_value=2.0**14, allow_nan=False))
def test_quantize_multiplier_precision(real):
    m, n = quantize_multiplier(real)
    assert 0 <= m < 2**31 and SHIFT_MIN <= n <= SHIFT_MAX
    if n < SHIFT_MAX:
        assert 2**30 <= m  # normalized
        assert abs(m / 2**n - real) <= real * 2.0**-30
    else:
        assert abs(m / 2**n - real) <= 2.0**-SHIFT_MAX


def test_quantize_multiplier_limits():
    assert quantize_multiplier(0.0) == (0, SHIFT_MAX)
    with pytest.raises(ValueError, match="too large"):
        quantize_multiplier(2.0**31)
    with pytest.raises(ValueError):
        quantize_multiplier(-1.0)


@given(st.floats(1e-4, 10.0), st.floats(1e-4, 10.0))
def test_multiplier_pair_shares_shift(a, b):
    ma, mb, n = quantize_multiplier_pair(a, b)
    assert abs(ma / 2**n - a) <= max(a, b) * 2.0**-29
    assert abs(mb / 2**n - b) <= max(a, b) * 2.0**-29


@pytest.mark.parametrize("bits", [4, 8, 12, 16])
def test_spec_ranges(bits):
    spec = QuantSpec(bits)
    assert spec.act_max - spec.act_min == 2**bits - 1
    assert spec.weight_max == -spec.act_min - 1
    # the accumulator bound really is an upper bound at the extremes
    terms = 9 * 64
    worst = (spec.act_max - spec.act_min) * spec.weight_max * terms + 2 ** (spec.bias_bits - 1)
    assert worst < 2 ** (spec.acc_bits(terms) - 1)
    assert INT8.bias_bits == 32
