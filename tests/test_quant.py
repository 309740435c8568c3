"""The golden model's arithmetic (``spec.quant``) against exact rational arithmetic and values
worked out by hand."""

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spec.quant import (
    INT8,
    RESCALE_MULT_BITS,
    RESCALE_SHIFT_MAX,
    SHIFT_MAX,
    SHIFT_MIN,
    QuantSpec,
    choose_qparams,
    dequantize,
    quantize_bias,
    quantize_multiplier,
    quantize_multiplier_pair,
    quantize_rescale,
    quantize_tensor,
    quantize_weights,
    requantize,
    rescale,
    scale_and_round,
    sqnr_db,
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


def tie_cases(rng, count_per_shift=6):
    """``(acc, m, n)`` with ``acc * m / 2**n`` exactly halfway between two integers, for
    every shift: the power of two is split between the multiplier (31 bits) and acc."""
    cases = []
    for n in range(SHIFT_MIN, SHIFT_MAX + 1):
        m_pow = min(n - 1, 30)
        for _ in range(count_per_shift):
            odd_m = int(rng.choice([1, 3, 5, 7])) if m_pow <= 27 else 1
            odd_a = 2 * int(rng.integers(-200, 200)) + 1
            cases.append((odd_a << (n - 1 - m_pow), odd_m << m_pow, n))
    return cases


def test_ties_round_toward_plus_infinity_at_every_shift():
    cases = tie_cases(np.random.default_rng(7))
    for acc, m, n in cases:
        got = int(scale_and_round(np.array([acc]), m, n)[0])
        assert Fraction(acc * m, 2**n) - got == Fraction(-1, 2), (acc, m, n)  # up, by 1/2
        assert got == exact_round(acc, m, n)
    # arrays, a shift per element: products below 2**62 take the int64 path ...
    narrow = [c for c in cases if abs(c[0]) * c[1] < 2**60]
    assert len(narrow) > 300
    acc, m, n = (np.array(c) for c in zip(*narrow, strict=True))
    want = [exact_round(a, b, s) for a, b, s in narrow]
    np.testing.assert_array_equal(scale_and_round(acc, m, n), want)
    # ... the others (and any array beside them) the exact Python-integer path
    acc, m, n = (np.array(c) for c in zip(*cases, strict=True))
    np.testing.assert_array_equal(scale_and_round(acc, m, n),
                                  [exact_round(a, b, s) for a, b, s in cases])


def test_negative_ties_are_not_rounded_away_from_zero():
    # -2.5 -> -2, -0.5 -> 0, -1.5 -> -1, 2.5 -> 3 (round half up, not half away from zero)
    np.testing.assert_array_equal(scale_and_round(np.array([-5, -1, -3, 5]), 2**30, 31),
                                  [-2, 0, -1, 3])
    np.testing.assert_array_equal(
        requantize(np.array([-5, -1, -3, 5]), 2**30, 31, 10, relu=False), [8, 10, 9, 13])
    # large shifts: acc * m = -5 * 2**62 at shift 63 is -2.5
    np.testing.assert_array_equal(scale_and_round(np.array([-5 << 32]), 2**30, 63), [-2])


@pytest.mark.parametrize("bits", [1, 17, 0])
def test_spec_refuses_unsupported_widths(bits):
    with pytest.raises(ValueError, match=f"^bits={bits}: supported widths are 2 to 16$"):
        QuantSpec(bits)


def test_spec_extremes_and_bias_width():
    two, sixteen = QuantSpec(2), QuantSpec(16)
    assert (two.act_min, two.act_max, two.weight_max) == (-2, 1, 1)
    assert (sixteen.act_min, sixteen.act_max) == (-32768, 32767)
    # int32 bias up to 8 bits (ONNX, TFLite), 2 bits + 16 beyond
    assert [QuantSpec(b).bias_bits for b in (2, 8, 9, 12, 16)] == [32, 32, 34, 40, 48]
    assert (QuantSpec(12).bias_min, QuantSpec(12).bias_max) == (-(2**39), 2**39 - 1)


@pytest.mark.parametrize("bits", [2, 4, 8, 16])
def test_acc_bits_is_the_sign_plus_the_worst_magnitude(bits):
    """The accumulator holds bias plus ``terms`` products at their extremes, with a sign bit
    and no more: checked on either side of every power of two the bound crosses."""
    spec = QuantSpec(bits)
    product = (2**bits - 1) * (2 ** (bits - 1) - 1)  # |x - z_x| * |w| at the extremes
    bias = 2 ** (spec.bias_bits - 1)
    for k in range(spec.bias_bits, spec.bias_bits + 24):
        first = -(-(2**k - bias) // product)  # fewest terms whose bound reaches 2**k
        for terms, width in ((first - 1, k), (first, k + 1)):
            worst = product * terms + bias
            assert worst.bit_length() == width
            assert spec.acc_bits(terms) == width + 1, (k, terms)


def test_quantize_multiplier_edges():
    # the largest multiplier still has a shift of 1
    assert quantize_multiplier(2.0**29) == (2**30, 1)
    assert quantize_multiplier(2.0**30 - 2.0**-1) == (2**31 - 1, 1)
    # a fraction that rounds up to 2**31 is renormalized to 2**30 with one shift less
    m, n = quantize_multiplier(1 - 2.0**-40)
    assert (m, n) == (2**30, 30) and type(m) is int
    assert quantize_multiplier(2.0**5 * (1 - 2.0**-40)) == (2**30, 25)
    assert quantize_multiplier(2.0**-9 * (1 - 2.0**-40)) == (2**30, 39)
    # the smallest normalized one, and below it the precision that shift 63 leaves
    assert quantize_multiplier(2.0**-33) == (2**30, 63)
    assert quantize_multiplier(2.0**-34) == (2**29, 63)
    assert quantize_multiplier(3 * 2.0**-64) == (2, 63)  # 1.5 -> 2 (round half to even)
    with pytest.raises(ValueError, match="^requantization multiplier must be finite and >= 0, "
                                         "got nan$"):
        quantize_multiplier(math.nan)
    with pytest.raises(ValueError, match="finite and >= 0, got inf"):
        quantize_multiplier(math.inf)
    with pytest.raises(ValueError, match=r"^requantization multiplier 1.07374e\+09 is too "
                                         r"large \(needs shift 0\)$"):
        quantize_multiplier(2.0**30)


def test_multiplier_pair_keeps_the_largest_multiplier():
    x = (2**31 - 1) / 2**36  # m = 2**31 - 1 exactly, the largest 31-bit multiplier
    assert quantize_multiplier(x) == (2**31 - 1, 36)
    assert quantize_multiplier_pair(x, x) == (2**31 - 1, 2**31 - 1, 36)
    assert quantize_multiplier_pair(x, x / 4) == (2**31 - 1, 2**29, 36)
    assert quantize_multiplier_pair(x / 4, x) == (2**29, 2**31 - 1, 36)


def test_scale_and_round_refuses_bad_parameters():
    msg = r"^multiplier must be >= 0 and shift within \[SHIFT_MIN, SHIFT_MAX\]$"
    for m, n in ((-1, 5), (1, 0), (1, 64), (np.array([1, -1]), 5), (1, np.array([3, 0]))):
        with pytest.raises(ValueError, match=msg):
            scale_and_round(np.array([1, 2]), m, n)
    for m, n in ((0, 1), (2**31 - 1, 63)):  # the limits themselves are fine
        scale_and_round(np.array([1, 2]), m, n)


def test_scale_and_round_types():
    # narrow integer inputs (as ONNX initializers come) are widened before multiplying
    got = scale_and_round(np.array([100, -100, 127], dtype=np.int8),
                          np.array([2**30], dtype=np.int32), np.array([28], dtype=np.uint8))
    np.testing.assert_array_equal(got, [400, -400, 508])
    assert got.dtype == np.int64
    got = scale_and_round(np.array([60000], dtype=np.uint16), np.array([60000], np.uint16), 1)
    np.testing.assert_array_equal(got, [1_800_000_000])
    # empty arrays, and int64 results from both paths, exact beyond float precision
    assert scale_and_round(np.array([], dtype=np.int64), 3, 2).shape == (0,)
    small = scale_and_round(np.array([3]), 5, 1)
    assert small.dtype == np.int64 and small.tolist() == [8]
    wide = scale_and_round(np.array([3**25]), 2**31 - 1, 17)  # product over 2**62
    assert wide.dtype == np.int64
    assert wide.tolist() == [exact_round(3**25, 2**31 - 1, 17)] == [13881976570649813]
    assert int(float(wide[0])) != int(wide[0])  # (not representable in float64)
    assert requantize(np.array([5]), 1, 1, 0, relu=False).dtype == np.int64


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16,
                                   np.uint32, np.uint64])
def test_scale_and_round_takes_any_integer_type(dtype):
    """Accumulators, multipliers and shifts of any integer type give the same result."""
    acc = np.array([0, 3, 5, 100, 127], dtype=dtype)
    m = np.array([2**5 + 1] * 5, dtype=dtype if np.iinfo(dtype).max > 2**5 else np.int64)
    n = np.array([1, 2, 3, 4, 5], dtype=dtype)
    want = [exact_round(int(a), 33, int(k)) for a, k in zip(acc, n, strict=True)]
    for args in ((acc, 33, [1, 2, 3, 4, 5]), (acc.astype(np.int64), m, [1, 2, 3, 4, 5]),
                 (acc.astype(np.int64), 33, n)):
        got = scale_and_round(*args)
        assert got.dtype == np.int64
        np.testing.assert_array_equal(got, want)


def test_requantize_with_no_channels():
    # a layer with no channels on one expand (e1 = 0 or e3 = 0) has empty parameters
    empty = np.array([], dtype=np.int64)
    got = requantize(np.zeros((2, 3, 0), dtype=np.int64), empty, empty, 5, relu=True)
    assert got.shape == (2, 3, 0) and got.dtype == np.int64


def test_float32_inputs_are_divided_in_float64():
    """The golden model quantizes a float32 tensor (an image, ONNX weights and biases) exactly
    as the same values in float64: dividing in float32 rounds differently once in a while."""
    x = np.array([1.6358025], dtype=np.float32)  # float32 / 0.0123456789 rounds to 132: 32
    assert quantize_tensor(x, 0.0123456789, -100)[0] == 33
    b = np.array([0.8877825], dtype=np.float32)  # float32 / 3.3e-5 rounds to 26902
    assert quantize_bias(b, 3.3e-5)[0] == 26903
    w = np.random.default_rng(1).uniform(-1, 1, (64, 8, 3, 3)).astype(np.float32)
    q, scale = quantize_weights(w)
    q64, scale64 = quantize_weights(w.astype(np.float64))
    assert scale.dtype == np.float64
    np.testing.assert_array_equal(scale, scale64)
    np.testing.assert_array_equal(q, q64)
    ref = np.random.default_rng(2).standard_normal(1000).astype(np.float32)
    test = ref + np.random.default_rng(3).standard_normal(1000) * 0.01
    assert sqnr_db(ref, test) == sqnr_db(ref.astype(np.float64), test)


def test_requantize_ceiling_and_floor():
    acc = np.array([-1000, -10, 0, 10, 1000])
    # ReLU: the floor is the zero point; a ceiling below the largest activation
    np.testing.assert_array_equal(requantize(acc, 2**30, 31, -20, relu=True, hi=-18),
                                  [-20, -20, -20, -18, -18])
    np.testing.assert_array_equal(requantize(acc, 2**30, 31, -20, relu=False),
                                  [-128, -25, -20, -15, 127])
    spec = QuantSpec(4)
    np.testing.assert_array_equal(requantize(acc, 2**30, 31, 1, relu=False, spec=spec),
                                  [-8, -4, 1, 6, 7])


def test_choose_qparams():
    scale, zero = choose_qparams(0.0, 2.55)
    assert scale == pytest.approx(0.01, rel=1e-12) and zero == -128
    scale, zero = choose_qparams(-1.0, 1.0)
    assert scale == pytest.approx(2 / 255, rel=1e-12) and zero == 0  # round(-0.5)
    scale, zero = choose_qparams(-2.0, 0.55)  # -2 / 0.01 = -200 steps: zero at -128 + 200
    assert scale == pytest.approx(0.01, rel=1e-12) and zero == 72
    # the range always holds zero
    assert choose_qparams(1.0, 3.0) == choose_qparams(0.0, 3.0)
    scale, zero = choose_qparams(-3.0, -1.0)
    assert scale == pytest.approx(3 / 255, rel=1e-12) and zero == 127
    # an empty range still gives a usable scale
    scale, zero = choose_qparams(0.0, 0.0)
    assert scale == pytest.approx(1e-8 / 255, rel=1e-9) and zero == -128
    scale, zero = choose_qparams(-1.5, 0.0, QuantSpec(4))
    assert scale == pytest.approx(0.1, rel=1e-12) and zero == 7
    assert isinstance(zero, int)


ENDS = st.just(0.0) | st.floats(1e-30, 100)


@pytest.mark.parametrize("lo, hi", [(0.0, 5e-324), (-5e-324, 5e-324)])
def test_choose_qparams_of_a_subnormal_range(lo, hi):
    """A range a few subnormal floats wide makes its step underflow to 0: it is taken as an
    empty range (a step of 1e-8 / 255), never divided by."""
    scale, zero = choose_qparams(lo, hi)
    assert scale == pytest.approx(1e-8 / 255, rel=1e-9) and -128 <= zero <= 127
    assert quantize_tensor(np.array([lo, hi]), scale, zero).tolist() == [zero, zero]


@given(ENDS.map(lambda v: -v), ENDS)
def test_choose_qparams_covers_the_range(lo, hi):
    scale, zero = choose_qparams(lo, hi)
    assert scale > 0 and -128 <= zero <= 127
    assert scale == pytest.approx((hi - lo if hi > lo else 1e-8) / 255, rel=1e-12)
    # every value of the range is represented to within half a step (the end that lies
    # exactly half a step beyond the grid is clamped onto it)
    for v in (lo, hi, (lo + hi) / 2, lo / 3, hi / 3):
        q = quantize_tensor(np.array([v]), scale, zero)
        assert abs(dequantize(q, scale, zero)[0] - v) <= scale * (0.5 + 1e-9)
    assert quantize_tensor(np.array([0.0]), scale, zero)[0] == zero  # zero is exact


def test_quantize_tensor_rounds_half_to_even_and_clamps():
    x = np.array([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 0.49, 300.0, -300.0])
    got = quantize_tensor(x, 1.0, 3)
    np.testing.assert_array_equal(got, [3, 5, 5, 3, 1, 1, 3, 127, -128])
    assert got.dtype == np.int64
    np.testing.assert_array_equal(quantize_tensor(np.array([0.25, 1.0, -1.0]), 0.125, 0,
                                                  QuantSpec(4)), [2, 7, -8])
    np.testing.assert_array_equal(quantize_tensor([1], 0.5, -1), [1])  # lists too


def test_dequantize():
    got = dequantize(np.array([-128, 0, 127], dtype=np.int8), 0.5, -100)
    np.testing.assert_array_equal(got, [-14.0, 50.0, 113.5])
    assert got.dtype == np.float64
    np.testing.assert_array_equal(dequantize([1, 2], np.array([0.5, 2.0]), 1), [0.0, 2.0])


def test_quantize_weights_per_channel():
    w = np.array([[[[0.5, -1.0]]], [[[0.0, 0.0]]], [[[0.3, 0.1]]]])  # (3, 1, 1, 2)
    q, scale = quantize_weights(w)
    np.testing.assert_array_equal(scale, [1.0 / 127, 1.0, 0.3 / 127])
    np.testing.assert_array_equal(q[:, 0, 0, :], [[64, -127], [0, 0], [127, 42]])
    assert q.dtype == np.int64 and q.shape == w.shape
    q4, s4 = quantize_weights(np.array([[1.0, -0.5, 0.25]]), QuantSpec(4))
    np.testing.assert_array_equal(q4, [[7, -4, 2]])  # 3.5 -> 4 (half to even), 1.75 -> 2
    np.testing.assert_array_equal(s4, [1.0 / 7])


def test_quantize_bias_clamps_to_its_width():
    got = quantize_bias(np.array([1.0, -2.5, 3.5, 1e12, -1e12]), np.array([0.5] * 5))
    np.testing.assert_array_equal(got, [2, -5, 7, 2**31 - 1, -(2**31)])
    assert got.dtype == np.int64
    wide = quantize_bias(np.array([1e11, 1e12]), np.array([1.0, 1.0]), QuantSpec(12))
    np.testing.assert_array_equal(wide, [10**11, 2**39 - 1])


def test_sqnr_db():
    assert sqnr_db(np.array([1.0, 1.0]), np.array([1.1, 0.9])) == pytest.approx(20.0)
    assert sqnr_db(np.array([3.0, 4.0]), np.array([3.0, 4.0])) == math.inf
    assert sqnr_db(np.array([0.0, 0.0]), np.array([1.0, 0.0])) == -math.inf
    assert sqnr_db([2, 0], [1, 0]) == pytest.approx(10 * math.log10(4))
    assert sqnr_db([0.5], [0.4]) == pytest.approx(10 * math.log10(25))  # signal below 1


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from([4, 8, 16]))
def test_rescale_is_exact_with_ties_up_and_clamps(seed, bits):
    """The second requantization, by fractions: ``clamp(z_out + floor((q - z_in) m / 2**n
    + 1/2))``; small shifts make many ties, both signs."""
    spec = QuantSpec(bits)
    rng = np.random.default_rng(seed)
    n = int(rng.choice([1, 2, 3, 17, RESCALE_SHIFT_MAX]))
    m = int(rng.integers(0, 1 << RESCALE_MULT_BITS))
    if n < 4:
        m = int(rng.integers(0, 8))
    z_in, z_out = (int(v) for v in rng.integers(spec.act_min, spec.act_max + 1, 2))
    q = np.arange(spec.act_min, spec.act_max + 1)
    if bits > 8:  # every value at 8 bits and below; the extremes and 1000 more above
        q = np.concatenate([q[:4], q[-4:], rng.choice(q, 1000)])
    want = [min(max(z_out + math.floor(Fraction((int(v) - z_in) * m, 2**n) + Fraction(1, 2)),
                    spec.act_min), spec.act_max) for v in q]
    np.testing.assert_array_equal(rescale(q, z_in, m, n, z_out, spec), want)


def test_rescale_ties_and_identity():
    # (q - z_in) / 2: -1.5 -> -1 and 1.5 -> 2 (half up), -0.5 -> 0
    np.testing.assert_array_equal(rescale([-3, -1, 1, 3, 5], 0, 1, 1, 0), [-1, 0, 1, 2, 3])
    q = np.arange(-128, 128)
    # m / 2**n = 1 and z_in = z_out: the identity, for every value
    np.testing.assert_array_equal(rescale(q, -7, 1 << 16, 16, -7), q)
    np.testing.assert_array_equal(rescale(q, -128, 3 << 15, 16, 0), np.clip(
        [math.floor(Fraction(3 * (int(v) + 128), 2) + Fraction(1, 2)) for v in q], -128, 127))
    for m, n in ((1 << RESCALE_MULT_BITS, 16), (-1, 16), (1, 0), (1, RESCALE_SHIFT_MAX + 1)):
        with pytest.raises(ValueError):
            rescale(q, 0, m, n, 0)


@given(st.floats(1e-4, 3e4))
def test_quantize_rescale_precision(real):
    m, n = quantize_rescale(real)
    assert 1 <= n <= RESCALE_SHIFT_MAX and 0 < m < 1 << RESCALE_MULT_BITS
    if n < RESCALE_SHIFT_MAX:
        assert m >= 1 << (RESCALE_MULT_BITS - 1)  # normalized: full precision
        assert abs(m / 2**n - real) <= 2.0 ** -(n + 1)


def test_quantize_rescale_limits():
    assert quantize_rescale(1.0) == (1 << 16, 16)
    assert quantize_rescale(0.5) == (1 << 16, 17)
    assert quantize_rescale(1 - 2**-20) == (1 << 16, 16)  # rounds up into the next octave
    assert quantize_rescale(2.0**-20) == (2**11, RESCALE_SHIFT_MAX)  # fewer bits
    for bad in (0.0, -1.0, math.inf, math.nan, 2.0**17):
        with pytest.raises(ValueError):
            quantize_rescale(bad)
