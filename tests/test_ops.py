"""Golden operators against independent computations.

The convolution reference is a float64 sum over kernel taps, which is exact on these integer
values (every partial sum stays far below 2**53); pooling references are plain loops.
"""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sw import ops
from sw.quant import INT8, QuantSpec, requantize


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
    from sw.quant import quantize_multiplier_pair
    ma, mb, n = quantize_multiplier_pair(s_a / s_y, s_b / s_y)
    y = ops.add(a, b, ops.AddParams(z_a, z_b, ma, mb, n, z_y))
    expected = np.clip(real / s_y + z_y, -128, 127)
    assert np.all(np.abs(y - expected) <= 0.5 + 1e-6)


def test_fire_is_squeeze_then_expand_concat():
    rng = np.random.default_rng(5)
    cin, s, e1, e3 = 8, 4, 5, 6

    def conv(cout, cin_, k, z):
        rq = ops.Requant(rng.integers(2**30, 2**31, cout), rng.integers(36, 40, cout), z, True)
        return ops.ConvLayer(rng.integers(-127, 128, (cout, cin_, k, k)),
                             rng.integers(-5000, 5000, cout), rq)

    layer = ops.FireLayer(-3, conv(s, cin, 1, -100), conv(e1, s, 1, -90), conv(e3, s, 3, -90))
    x = rng.integers(-128, 128, (6, 7, cin))
    sq = requantize(float_conv(x, layer.squeeze.weight, layer.squeeze.bias, -3, 1, 0)
                    .astype(np.int64), layer.squeeze.rq.m, layer.squeeze.rq.n, -100, relu=True)
    want_e1 = requantize(float_conv(sq, layer.expand1x1.weight, layer.expand1x1.bias, -100, 1,
                                    0).astype(np.int64), layer.expand1x1.rq.m,
                         layer.expand1x1.rq.n, -90, relu=True)
    want_e3 = requantize(float_conv(sq, layer.expand3x3.weight, layer.expand3x3.bias, -100, 1,
                                    1).astype(np.int64), layer.expand3x3.rq.m,
                         layer.expand3x3.rq.n, -90, relu=True)
    got = ops.fire(x, layer)
    np.testing.assert_array_equal(got, np.concatenate([want_e1, want_e3], axis=-1))
    assert got.shape == (6, 7, e1 + e3) and got.min() >= -90
    assert INT8.act_max >= got.max()
