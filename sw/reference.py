"""Float reference of the same networks in NumPy (HWC activations, torchvision weights).

It is the yardstick of quantization: calibration reads its activations, and SQNR compares
the integer path with it.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .network import Conv, Fire, GlobalAvgPool, MaxPool, Network
from .ops import pool_output_size
from .weights import Weights


def conv2d(x, w, b, *, stride=1, pad=0, relu=False) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if pad:
        x = np.pad(x, ((pad, pad), (pad, pad), (0, 0)))
    kh, kw = w.shape[2:]
    windows = sliding_window_view(x, (kh, kw), axis=(0, 1))[::stride, ::stride]
    y = np.tensordot(windows, np.asarray(w, dtype=np.float32), axes=([2, 3, 4], [1, 2, 3]))
    y = y + np.asarray(b, dtype=np.float32)
    return np.maximum(y, 0) if relu else y


def maxpool(x, kernel=3, stride=2) -> np.ndarray:
    h, w = x.shape[:2]
    oh, ow = pool_output_size(h, kernel, stride), pool_output_size(w, kernel, stride)
    xp = np.pad(x, ((0, (oh - 1) * stride + kernel - h), (0, (ow - 1) * stride + kernel - w),
                    (0, 0)), constant_values=-np.inf)
    return sliding_window_view(xp, (kernel, kernel), axis=(0, 1))[::stride, ::stride].max(
        axis=(3, 4))


def fire_parts(x, layer: Fire, weights: Weights) -> dict[str, np.ndarray]:
    """Float Fire module; returns its squeeze output, the concat, and the final output."""
    p = layer.prefix
    s = conv2d(x, weights[f"{p}.squeeze.weight"], weights[f"{p}.squeeze.bias"], relu=True)
    e1 = conv2d(s, weights[f"{p}.expand1x1.weight"], weights[f"{p}.expand1x1.bias"], relu=True)
    e3 = conv2d(s, weights[f"{p}.expand3x3.weight"], weights[f"{p}.expand3x3.bias"], pad=1,
                relu=True)
    cat = np.concatenate([e1, e3], axis=-1)
    return {"squeeze": s, "concat": cat, "out": cat + x if layer.bypass else cat}


def run_layer(layer, x, weights: Weights) -> np.ndarray:
    if isinstance(layer, Conv):
        return conv2d(x, weights[f"{layer.prefix}.weight"], weights[f"{layer.prefix}.bias"],
                      stride=layer.stride, pad=layer.pad, relu=layer.relu)
    if isinstance(layer, MaxPool):
        return maxpool(x, layer.kernel, layer.stride)
    if isinstance(layer, Fire):
        return fire_parts(x, layer, weights)["out"]
    if isinstance(layer, GlobalAvgPool):
        return x.mean(axis=(0, 1), keepdims=True)
    raise TypeError(f"no float reference for {layer!r}")


def forward(net: Network, weights: Weights, image: np.ndarray, *, capture=None) -> np.ndarray:
    """Logits (pre-softmax, shape ``(num_classes,)``) of one HWC float image.

    ``capture``, when a dict, receives every tensor calibration needs, by name
    (``input``, ``conv1``, ``fire2.squeeze``, ``fire2.concat``, ``fire2``, ...).
    """
    x = np.asarray(image, dtype=np.float32)
    if capture is not None:
        capture["input"] = x
    for layer in net.layers:
        if isinstance(layer, Fire):
            parts = fire_parts(x, layer, weights)
            x = parts["out"]
            if capture is not None:
                capture[f"{layer.name}.squeeze"] = parts["squeeze"]
                capture[f"{layer.name}.concat"] = parts["concat"]
        else:
            x = run_layer(layer, x, weights)
        if capture is not None:
            capture[layer.name] = x
    return x.reshape(-1)


def softmax(logits) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    e = np.exp(z - z.max())
    return e / e.sum()
