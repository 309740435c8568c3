"""Golden operators against independent computations.

The convolution reference is a float64 sum over kernel taps, which is exact on these integer
values (every partial sum stays far below 2**53); pooling references are plain loops.
"""

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spec.quant import QuantSpec
from sw import ops


def float_conv(x, w, bias, z, stride, pad):
    """Independent reference: float64, one shifted slice per kernel tap."""
    x = np.pad(x.astype(np.float64) - z, ((pad, pad), (pad, pad), (0, 0)))
    cout, cin, kh, kw = w.shape
    oh = (x.shape[0] - kh) // stride + 1
    ow = (x.shape[1] - kw) // stride + 1
    out = np.zeros((oh, ow, cout)) + bias.astype(np.float64)
    for ky in range(kh):
        for kx in range(kw):
            patch = x[ky:ky + stride * (oh - 1) + 1:stride, kx:kx + stride * (ow - 1) + 1:stride]
            out += patch @ w[:, :, ky, kx].astype(np.float64).T
    return out


@st.composite
def conv_case(draw):
    bits = draw(st.sampled_from([4, 8, 12, 16]))
    spec = QuantSpec(bits)
    k = draw(st.sampled_from([1, 3, 5, 7]))
    stride = draw(st.sampled_from([1, 2]))
    pad = draw(st.sampled_from([0, k // 2]))
    h = draw(st.integers(max(1, k - 2 * pad), 9))
    w_ = draw(st.integers(max(1, k - 2 * pad), 9))
    cin = draw(st.integers(1, 6))
    cout = draw(st.integers(1, 6))
    seed = draw(st.integers(0, 2**32 - 1))
    extreme = draw(st.sampled_from(["random", "min", "max"]))
    rng = np.random.default_rng(seed)
    if extreme == "random":
        x = rng.integers(spec.act_min, spec.act_max + 1, (h, w_, cin))
        wt = rng.integers(-spec.weight_max, spec.weight_max + 1, (cout, cin, k, k))
    else:
        fill = spec.act_min if extreme == "min" else spec.act_max
        x = np.full((h, w_, cin), fill)
        wt = np.full((cout, cin, k, k), spec.weight_max if extreme == "min" else
                     -spec.weight_max)
    z = int(rng.integers(spec.act_min, spec.act_max + 1))
    bias = rng.integers(-(2**20), 2**20, cout)
    return x, wt, bias, z, stride, pad


@settings(max_examples=150, deadline=None)
@given(conv_case())
def test_conv_acc_matches_float64(case):
    x, w, bias, z, stride, pad = case
    got = ops.conv2d_acc(x, w, bias, z, stride=stride, pad=pad)
    want = float_conv(x, w, bias, z, stride, pad)
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, want.astype(np.int64))
    assert np.all(np.abs(want) < 2**52)  # the float reference was exact


def test_conv_padding_is_real_zero():
    # A constant input equal to its zero point is real zero: accumulators equal the bias.
    x = np.full((5, 4, 3), -7)
    w = np.random.default_rng(0).integers(-127, 128, (2, 3, 3, 3))
    acc = ops.conv2d_acc(x, w, np.array([11, -3]), -7, pad=1)
    np.testing.assert_array_equal(acc, np.broadcast_to([11, -3], (5, 4, 2)))


def loop_maxpool(x, k=3, s=2):
    h, w, c = x.shape
    oh = math.ceil((h - k) / s) + 1
    ow = math.ceil((w - k) / s) + 1
    oh -= (oh - 1) * s >= h
    ow -= (ow - 1) * s >= w
    out = np.empty((oh, ow, c), dtype=np.int64)
    for i in range(oh):
        for j in range(ow):
            out[i, j] = x[i * s:min(i * s + k, h), j * s:min(j * s + k, w)].max(axis=(0, 1))
    return out


@given(st.integers(3, 20), st.integers(3, 20), st.integers(0, 2**32 - 1))
def test_maxpool_ceil_mode(h, w, seed):
    x = np.random.default_rng(seed).integers(-128, 128, (h, w, 3))
    np.testing.assert_array_equal(ops.maxpool(x), loop_maxpool(x))


@pytest.mark.parametrize("size,out", [(111, 55), (109, 54), (55, 27), (54, 27), (27, 13)])
def test_pool_sizes_of_squeezenet(size, out):
    assert ops.pool_output_size(size, 3, 2) == out


def test_global_avgpool_rounds_the_mean():
    x = np.array([[[1, -128]], [[2, -128]], [[4, -128]]])  # 3 pixels, 2 channels
    rq = ops.Requant(np.array([2**30, 2**30]), np.array([31, 31]), 0, relu=False)  # M = 1/2
    # with z_in = 0 and M = 1/2 (here standing for s_in / (N s_out)): sum/2
    np.testing.assert_array_equal(ops.global_avgpool(x, 0, rq), [4, -128])


@given(st.integers(0, 2**32 - 1))
def test_bypass_add_matches_real_sum(seed):
    rng = np.random.default_rng(seed)
    s_a, s_b = rng.uniform(0.01, 0.2, 2)
    z_a, z_b = (int(v) for v in rng.integers(-128, 0, 2))
    a = rng.integers(z_a, 128, 50)
    b = rng.integers(z_b, 128, 50)
    real = s_a * (a - z_a) + s_b * (b - z_b)
    s_y = real.max() / 250 + 1e-3
    z_y = -128
    from spec.quant import quantize_multiplier_pair
    ma, mb, n = quantize_multiplier_pair(s_a / s_y, s_b / s_y)
    y = ops.add(a, b, ops.AddParams(z_a, z_b, ma, mb, n, z_y))
    expected = np.clip(real / s_y + z_y, -128, 127)
    assert np.all(np.abs(y - expected) <= 0.5 + 1e-6)


def loop_conv(x, w, bias, z, pad):
    """Accumulators of a stride-1 convolution by nested loops over Python integers: the
    input's zero point subtracted, padding taps real zero."""
    h, wd, _ = x.shape
    cout, cin, k, _ = w.shape
    out = np.zeros((h + 2 * pad - k + 1, wd + 2 * pad - k + 1, cout), dtype=object)
    for oy in range(out.shape[0]):
        for ox in range(out.shape[1]):
            for co in range(cout):
                total = int(bias[co])
                for ky in range(k):
                    for kx in range(k):
                        iy, ix = oy + ky - pad, ox + kx - pad
                        if 0 <= iy < h and 0 <= ix < wd:
                            for ci in range(cin):
                                total += (int(x[iy, ix, ci]) - z) * int(w[co, ci, ky, kx])
                out[oy, ox, co] = total
    return out


def exact_requant(acc, m, n, z, lo, hi):
    """``clamp(z + round(acc m / 2**n), lo, hi)``, ties toward +infinity, by fractions; per
    output channel (the last axis)."""
    out = np.zeros(acc.shape, dtype=np.int64)
    for idx in np.ndindex(acc.shape):
        c = idx[-1]
        r = math.floor(Fraction(int(acc[idx]) * int(m[c]), 2 ** int(n[c])) + Fraction(1, 2))
        out[idx] = min(max(z + r, lo), hi)
    return out


def test_fire_is_squeeze_then_expand_concat():
    rng = np.random.default_rng(5)
    cin, s, e1, e3 = 8, 4, 5, 6

    def conv(cout, cin_, k, z, hi=None):
        rq = ops.Requant(rng.integers(2**30, 2**31, cout), rng.integers(36, 40, cout), z, True,
                         hi)
        return ops.ConvLayer(rng.integers(-127, 128, (cout, cin_, k, k)),
                             rng.integers(-5000, 5000, cout), rq)

    layer = ops.FireLayer(-3, conv(s, cin, 1, -100), conv(e1, s, 1, -90, hi=60),
                          conv(e3, s, 3, -90))
    x = rng.integers(-128, 128, (6, 7, cin))
    sq, ex1, ex3 = layer.squeeze, layer.expand1x1, layer.expand3x3
    want_sq = exact_requant(loop_conv(x, sq.weight, sq.bias, -3, 0), sq.rq.m, sq.rq.n, -100,
                            -100, 127)
    want_e1 = exact_requant(loop_conv(want_sq, ex1.weight, ex1.bias, -100, 0), ex1.rq.m,
                            ex1.rq.n, -90, -90, 60)
    want_e3 = exact_requant(loop_conv(want_sq, ex3.weight, ex3.bias, -100, 1), ex3.rq.m,
                            ex3.rq.n, -90, -90, 127)
    np.testing.assert_array_equal(ops.fire_squeeze(x, layer), want_sq)
    got = ops.fire(x, layer)
    np.testing.assert_array_equal(got, np.concatenate([want_e1, want_e3], axis=-1))
    assert got.shape == (6, 7, e1 + e3)
    # the case exercises what it should: clamping at both ends and at the e1 ceiling
    assert (want_sq == -100).any() and (want_sq > -100).sum() > 20
    assert (want_e1 == 60).any() and (want_e3 > 60).any() and (got == -90).any()
    # the float64 reference above agrees with the loops (so it is exact here too)
    np.testing.assert_array_equal(
        float_conv(x, sq.weight, sq.bias, -3, 1, 0).astype(np.int64),
        loop_conv(x, sq.weight, sq.bias, -3, 0).astype(np.int64))


def test_fire_with_an_expand_rounded_twice():
    """An expand with a second requantization (``Requant.rescale``): first to its branch's
    own zero point (ReLU there), then to the concat's; the other branch straight to it."""
    rng = np.random.default_rng(6)
    cin, s, e1, e3 = 8, 4, 5, 6

    def conv(cout, cin_, k, z, rescale=None):
        rq = ops.Requant(rng.integers(2**30, 2**31, cout), rng.integers(36, 40, cout), z, True,
                         rescale=rescale)
        return ops.ConvLayer(rng.integers(-127, 128, (cout, cin_, k, k)),
                             rng.integers(-5000, 5000, cout), rq)

    rs = ops.Rescale(-120, 77_000, 17, -90)  # 0.587...
    layer = ops.FireLayer(-3, conv(s, cin, 1, -100), conv(e1, s, 1, -90),
                          conv(e3, s, 3, -120, rescale=rs))
    assert layer.z_out == layer.z_concat == -90 and layer.rescaled
    x = rng.integers(-128, 128, (6, 7, cin))
    sq, ex3 = ops.fire_squeeze(x, layer), layer.expand3x3
    first = exact_requant(loop_conv(sq, ex3.weight, ex3.bias, -100, 1), ex3.rq.m, ex3.rq.n,
                          -120, -120, 127)
    want = np.array([[[min(max(-90 + math.floor(Fraction((int(v) + 120) * 77_000, 2**17)
                                                 + Fraction(1, 2)), -128), 127)
                       for v in px] for px in row] for row in first])
    got = ops.fire(x, layer)
    np.testing.assert_array_equal(got[..., e1:], want)
    assert (first == 127).any() and (first == -120).any()  # both clamps of the first stage
    assert got[..., e1:].max() == -90 + round(247 * 77_000 / 2**17)  # its ceiling, rescaled
    with pytest.raises(ValueError, match="rescale from zero point"):
        ops.Requant(np.ones(1), np.ones(1), -100, True, rescale=rs)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from([4, 8, 16]))
def test_bypass_add_is_bit_exact(seed, bits):
    """``clamp(z_out + round((A (a - z_a) + B (b - z_b)) / 2**n))`` by fractions, ties
    (round half up) included: a shift of 1 or 2 with small multipliers makes many ties."""
    spec = QuantSpec(bits)
    rng = np.random.default_rng(seed)
    shift = int(rng.choice([1, 2, 3, 31, 40]))
    top = min(2**31 - 1, 2 ** (shift + 1))
    p = ops.AddParams(*(int(v) for v in rng.integers(spec.act_min, spec.act_max + 1, 2)),
                      int(rng.integers(0, top)), int(rng.integers(0, top)), shift,
                      int(rng.integers(spec.act_min, spec.act_max + 1)))
    a = rng.integers(spec.act_min, spec.act_max + 1, 64)
    b = rng.integers(spec.act_min, spec.act_max + 1, 64)
    want = []
    for x, y in zip(a, b, strict=True):
        total = p.mult_a * (int(x) - p.z_a) + p.mult_b * (int(y) - p.z_b)
        r = math.floor(Fraction(total, 2**shift) + Fraction(1, 2))
        want.append(min(max(p.z_out + r, spec.act_min), spec.act_max))
    np.testing.assert_array_equal(ops.add(a, b, p, spec), want)


def test_bypass_add_ties_round_toward_plus_infinity():
    p = ops.AddParams(z_a=0, z_b=0, mult_a=1, mult_b=1, shift=1, z_out=0)
    # (a + b) / 2: 2.5 -> 3, -2.5 -> -2, -0.5 -> 0, 0.5 -> 1
    np.testing.assert_array_equal(ops.add(np.array([2, -2, 0, 0]), np.array([3, -3, -1, 1]),
                                          p), [3, -2, 0, 1])
