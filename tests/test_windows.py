"""spec.windows: a convolution equals the 1x1 convolution of its packed windows."""

import numpy as np
import pytest

from spec.windows import pack_window_weights, pack_windows, packed_channels, window_index
from sw import ops


@pytest.mark.parametrize("kernel,stride,pad,cin,h,w", [
    (3, 2, 0, 3, 15, 13),   # squeezenet1_1's conv1, small
    (7, 2, 0, 3, 21, 18),   # squeezenet1_0's conv1, small
    (3, 1, 1, 5, 6, 7),     # padded, stride 1, channels not dividing the lanes
])
def test_packed_conv_is_the_conv(kernel, stride, pad, cin, h, w):
    rng = np.random.default_rng(kernel * 100 + cin)
    z = -7
    x = rng.integers(-128, 128, size=(h, w, cin))
    weight = rng.integers(-127, 128, size=(9, cin, kernel, kernel))
    bias = rng.integers(-1000, 1000, size=9)
    want = ops.conv2d_acc(x, weight, bias, z, stride=stride, pad=pad)
    packed = pack_windows(x, kernel, stride, pad, z, lanes=16)
    assert packed.shape == (*want.shape[:2], packed_channels(kernel, cin, 16))
    assert packed.shape[2] % 16 == 0
    got = ops.conv2d_acc(packed, pack_window_weights(weight, 16), bias, z)
    np.testing.assert_array_equal(got, want)


def test_order_and_padding():
    x = np.arange(5 * 5 * 3).reshape(5, 5, 3)
    packed = pack_windows(x, 3, 2, 0, z=-1, lanes=16)
    # output pixel (1, 0): window rows 2..4, columns 0..2
    for ky in range(3):
        for kx in range(3):
            for c in range(3):
                assert packed[1, 0, window_index(ky, kx, c, kernel=3, cin=3)] == x[2 + ky, kx, c]
    np.testing.assert_array_equal(packed[..., 27:], -1)


def test_too_small_refused():
    with pytest.raises(ValueError, match="smaller than"):
        pack_windows(np.zeros((2, 2, 3)), 3, 2, 0, 0, 16)
