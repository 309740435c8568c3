"""Integer-exact operators of the golden model.

Activations are HWC (height, width, channels innermost), as the hardware streams them;
weights are torchvision's OIHW. Every function is exact integer arithmetic (int64), the
reference the gateware is held to bit for bit.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from spec.layers import AddParams, ConvLayer, FireLayer, Requant, Rescale
from spec.quant import INT8, QuantSpec, scale_and_round

__all__ = ["AddParams", "ConvLayer", "FireLayer", "Requant", "Rescale", "add", "concat", "conv2d",
           "conv2d_acc", "fire", "fire_squeeze", "global_avgpool", "maxpool",
           "pool_output_size", "rescale"]


def conv2d_acc(x, w, bias, z_x: int, *, stride: int = 1, pad: int = 0) -> np.ndarray:
    """Accumulators ``bias[c] + sum((x - z_x) * w)`` of a convolution, int64 HWC.

    Padding takes the input's zero point, so a padded tap contributes exactly zero.
    """
    x = np.asarray(x, dtype=np.int64) - z_x
    w = np.asarray(w, dtype=np.int64)
    cout, cin, kh, kw = w.shape
    if x.shape[2] != cin:
        raise ValueError(f"input has {x.shape[2]} channels, weights expect {cin}")
    if pad:
        x = np.pad(x, ((pad, pad), (pad, pad), (0, 0)))
    windows = sliding_window_view(x, (kh, kw), axis=(0, 1))[::stride, ::stride]
    # windows: (H', W', Cin, kh, kw) -> contract with (Cout, Cin, kh, kw)
    acc = np.tensordot(windows, w, axes=([2, 3, 4], [1, 2, 3]))
    return acc + np.asarray(bias, dtype=np.int64)


def conv2d(x, w, bias, z_x: int, rq: Requant, *, stride=1, pad=0, spec=INT8) -> np.ndarray:
    """Quantized convolution: accumulate, then requantize per output channel."""
    return rq(conv2d_acc(x, w, bias, z_x, stride=stride, pad=pad), spec)


def pool_output_size(size: int, kernel: int, stride: int) -> int:
    """Output size of an unpadded pool in torchvision's ceil mode."""
    out = -(-(size - kernel) // stride) + 1
    if (out - 1) * stride >= size:  # the last window must start inside the input
        out -= 1
    return out


def maxpool(x, kernel: int = 3, stride: int = 2) -> np.ndarray:
    """Max pool with ceil mode (windows at the far edge are clipped), HWC."""
    x = np.asarray(x)
    h, w = x.shape[:2]
    oh, ow = pool_output_size(h, kernel, stride), pool_output_size(w, kernel, stride)
    ph = (oh - 1) * stride + kernel - h
    pw = (ow - 1) * stride + kernel - w
    lowest = np.iinfo(np.int64).min
    xp = np.pad(x.astype(np.int64), ((0, ph), (0, pw), (0, 0)), constant_values=lowest)
    windows = sliding_window_view(xp, (kernel, kernel), axis=(0, 1))[::stride, ::stride]
    return windows.max(axis=(3, 4))


def global_avgpool(x, z_in: int, rq: Requant, spec=INT8) -> np.ndarray:
    """Global average pool as a requantization: ``acc = sum(x - z_in)``, ``M = s_in/(N s_out)``."""
    acc = np.sum(np.asarray(x, dtype=np.int64) - z_in, axis=(0, 1))
    return rq(acc, spec)


def rescale(q, z_in: int, rq: Requant, spec=INT8) -> np.ndarray:
    """Requantize a tensor to another scale: ``acc = q - z_in``."""
    return rq(np.asarray(q, dtype=np.int64) - z_in, spec)


def concat(parts) -> np.ndarray:
    """Channel concatenation of tensors already at one shared scale."""
    return np.concatenate([np.asarray(p, dtype=np.int64) for p in parts], axis=-1)


def add(a, b, p: AddParams, spec: QuantSpec = INT8) -> np.ndarray:
    """The simple-bypass add (SqueezeNet Section 6), with its own requantization."""
    a = np.asarray(a, dtype=np.int64) - p.z_a
    b = np.asarray(b, dtype=np.int64) - p.z_b
    total = a * p.mult_a + b * p.mult_b
    y = p.z_out + scale_and_round(total, 1, p.shift)
    return np.clip(y, spec.act_min, spec.act_max).astype(np.int64)


def fire_squeeze(x, layer: FireLayer, spec: QuantSpec = INT8) -> np.ndarray:
    sq = layer.squeeze
    return sq.rq(conv2d_acc(x, sq.weight, sq.bias, layer.z_in), spec)


def fire(x, layer: FireLayer, spec: QuantSpec = INT8) -> np.ndarray:
    """Fire module: squeeze 1x1, expand 1x1 and 3x3 (padding 1), concat [e1, e3][, bypass]."""
    s = fire_squeeze(x, layer, spec)
    z_s = layer.z_squeeze
    e1, e3 = layer.expand1x1, layer.expand3x3
    out = concat(
        [
            e1.rq(conv2d_acc(s, e1.weight, e1.bias, z_s), spec),
            e3.rq(conv2d_acc(s, e3.weight, e3.bias, z_s, pad=1), spec),
        ]
    )
    if layer.bypass is not None:
        out = add(out, x, layer.bypass, spec)
    return out
