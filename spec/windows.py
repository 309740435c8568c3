"""A small-channel convolution as a 1x1 one: its windows packed into the MAC array's lanes.

conv1 has three input channels; fed to an ``ic_lanes``-wide array as they are, it would
leave 13 of 16 lanes idle. Instead each output pixel's whole window (``k x k`` taps of
``cin`` channels) becomes one "pixel" of ``packed_channels`` values, in the order
``(ky, kx, c)`` (the tap's row, its column, then the channel), padded at the end to a whole
number of lanes with the input's zero point; the weights are reordered the same way, with
zeros in the padding. A 1x1 convolution of the packed input with the packed weights is then
exactly the original convolution (padding values contribute ``(z - z) * 0 = 0``).

The host packs weights with :func:`pack_window_weights`; the packed input is what the
device's window packer produces from the image in memory, and what the host sends in
streaming mode (:func:`pack_windows`). This module is the one definition of that order.
"""

from __future__ import annotations

import numpy as np

from .params import ceil_div


def packed_channels(kernel: int, cin: int, lanes: int) -> int:
    """Values of one packed window: ``kernel**2 * cin`` rounded up to whole lanes."""
    return ceil_div(kernel * kernel * cin, lanes) * lanes


def window_index(ky: int, kx: int, c: int, *, kernel: int, cin: int) -> int:
    """Where tap ``(ky, kx)``'s channel ``c`` sits in a packed window."""
    return (ky * kernel + kx) * cin + c


def out_size(size: int, kernel: int, stride: int, pad: int) -> int:
    return (size + 2 * pad - kernel) // stride + 1


def pack_windows(x: np.ndarray, kernel: int, stride: int, pad: int, z: int,
                 lanes: int) -> np.ndarray:
    """HWC input -> ``(OH, OW, packed_channels)``: each output pixel's window in
    ``(ky, kx, c)`` order, padding (the border and the lanes past the window) ``z``."""
    x = np.asarray(x, dtype=np.int64)
    h, w, cin = x.shape
    if pad:
        x = np.pad(x, ((pad, pad), (pad, pad), (0, 0)), constant_values=z)
    oh, ow = out_size(h, kernel, stride, pad), out_size(w, kernel, stride, pad)
    if oh < 1 or ow < 1:
        raise ValueError(f"a {h}x{w} input is smaller than the {kernel}x{kernel} window")
    n = packed_channels(kernel, cin, lanes)
    out = np.full((oh, ow, n), z, dtype=np.int64)
    for ky in range(kernel):
        for kx in range(kernel):
            tap = x[ky:ky + (oh - 1) * stride + 1:stride, kx:kx + (ow - 1) * stride + 1:stride]
            first = window_index(ky, kx, 0, kernel=kernel, cin=cin)
            out[:, :, first:first + cin] = tap
    return out


def pack_window_weights(weight: np.ndarray, lanes: int) -> np.ndarray:
    """OIHW weights -> ``(O, packed_channels, 1, 1)`` in the packed order, zeros after."""
    weight = np.asarray(weight, dtype=np.int64)
    cout, cin, kh, kw = weight.shape
    if kh != kw:
        raise ValueError(f"a {kh}x{kw} kernel is not square")
    flat = weight.transpose(0, 2, 3, 1).reshape(cout, kh * kw * cin)  # (O, ky, kx, c)
    out = np.zeros((cout, packed_channels(kh, cin, lanes)), dtype=np.int64)
    out[:, :flat.shape[1]] = flat
    return out[:, :, None, None]
