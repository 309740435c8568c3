"""Post-training quantization and the integer network that the accelerator executes.

Calibration runs the float reference on sample inputs and takes per-tensor min/max ranges;
weights are symmetric per output channel. :class:`QuantizedNetwork` runs the integer-exact
golden model layer by layer, and lets a caller execute chosen layers elsewhere (the device).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from spec.quant import (
    INT8,
    QuantSpec,
    choose_qparams,
    dequantize,
    quantize_bias,
    quantize_multiplier,
    quantize_multiplier_pair,
    quantize_tensor,
    quantize_weights,
    sqnr_db,
)

from . import ops, reference
from .network import Conv, Fire, GlobalAvgPool, MaxPool, Network
from .weights import Weights


@dataclass(frozen=True)
class QConv:
    """A quantized convolution layer (conv1, conv10) with its input zero point."""

    z_in: int
    conv: ops.ConvLayer
    stride: int
    pad: int

    def __call__(self, x, spec=INT8):
        return ops.conv2d(x, self.conv.weight, self.conv.bias, self.z_in, self.conv.rq,
                          stride=self.stride, pad=self.pad, spec=spec)


@dataclass(frozen=True)
class QAvgPool:
    """Global average pool; its multiplier ``s_in / (N s_out)`` follows the input's size N.

    ``exact``: the pool's output is not quantized (a model that averages in float, as
    onnxruntime leaves ``ReduceMean``): the output is the sum ``sum(x - z_in)`` itself, at
    scale ``s_in / N`` (``s_out``) and zero point 0, with no rounding or clamping.
    """

    s_in: float
    z_in: int
    s_out: float
    z_out: int
    exact: bool = False

    def __call__(self, x, spec=INT8):
        count = x.shape[0] * x.shape[1]
        if self.exact:
            return np.sum(np.asarray(x, dtype=np.int64) - self.z_in, axis=(0, 1))[None, None]
        return ops.global_avgpool(x, self.z_in, avgpool_requant(self, count), spec)[None, None, :]


def avgpool_requant(pool: QAvgPool, count: int) -> ops.Requant:
    """The requantization of a global average pool over ``count`` pixels: one multiplier
    ``s_in / (count s_out)`` (the device's pool takes these ``m``, ``n``)."""
    return _requant(pool.s_in, 1.0 / count, pool.s_out, pool.z_out, relu=False)


def _requant(s_x, s_w, s_y, z_y, relu) -> ops.Requant:
    pairs = [quantize_multiplier(float(s_x * sw / s_y)) for sw in np.atleast_1d(s_w)]
    m = np.array([p[0] for p in pairs], dtype=np.int64)
    n = np.array([p[1] for p in pairs], dtype=np.int64)
    return ops.Requant(m, n, int(z_y), relu)


def _quant_conv(weights: Weights, prefix, s_x, s_y, z_y, relu, spec) -> ops.ConvLayer:
    wq, s_w = quantize_weights(weights[f"{prefix}.weight"], spec)
    bq = quantize_bias(weights[f"{prefix}.bias"], s_x * s_w, spec)
    return ops.ConvLayer(wq, bq, _requant(s_x, s_w, s_y, z_y, relu))


@dataclass
class QuantizedNetwork:
    """An integer network: input quantization, per-layer integer ops, output dequantization.

    ``scales[name]`` is the ``(scale, zero_point)`` of each layer's output tensor.
    """

    net: Network
    spec: QuantSpec
    layers: dict[str, object]
    scales: dict[str, tuple[float, int]]
    source: str
    notes: list[str] = field(default_factory=list)

    @property
    def input_qparams(self) -> tuple[float, int]:
        return self.scales["input"]

    def quantize_input(self, image) -> np.ndarray:
        s, z = self.input_qparams
        return quantize_tensor(image, s, z, self.spec)

    def dequantize_output(self, q) -> np.ndarray:
        s, z = self.scales[self.net.layers[-1].name]
        return dequantize(np.asarray(q).reshape(-1), s, z)

    def fire_layers(self) -> dict[str, ops.FireLayer]:
        return {k: v for k, v in self.layers.items() if isinstance(v, ops.FireLayer)}

    def run_layer(self, name, x) -> np.ndarray:
        layer = self.net.layer(name)
        if isinstance(layer, MaxPool):
            return ops.maxpool(x, layer.kernel, layer.stride)
        q = self.layers[name]
        if isinstance(q, ops.FireLayer):
            return ops.fire(x, q, self.spec)
        return q(x, self.spec)

    def forward(self, x_q, *, fire_executor=None, on_layer=None) -> np.ndarray:
        """Run the integer network on a quantized HWC input; returns the int output (1, 1, C).

        ``fire_executor(name, fire_layer, x)``, when given, computes the Fire layers (on the
        device); ``on_layer(name, x_in, y)`` sees every layer's input and output.
        """
        x = np.asarray(x_q, dtype=np.int64)
        for layer in self.net.layers:
            if fire_executor is not None and isinstance(layer, Fire):
                y = fire_executor(layer.name, self.layers[layer.name], x)
            else:
                y = self.run_layer(layer.name, x)
            if on_layer is not None:
                on_layer(layer.name, x, y)
            x = y
        return x

    def logits(self, image) -> np.ndarray:
        """Float image to dequantized logits through the golden integer model."""
        return self.dequantize_output(self.forward(self.quantize_input(image)))


def calibrate(net: Network, weights: Weights, images) -> dict[str, tuple[float, float]]:
    """Per-tensor ``(min, max)`` of every activation over the calibration images."""
    ranges: dict[str, tuple[float, float]] = {}
    for image in images:
        captured: dict[str, np.ndarray] = {}
        reference.forward(net, weights, image, capture=captured)
        for name, t in captured.items():
            lo, hi = float(t.min()), float(t.max())
            if name in ranges:
                lo, hi = min(lo, ranges[name][0]), max(hi, ranges[name][1])
            ranges[name] = (lo, hi)
    return ranges


def quantize_network(net: Network, weights: Weights, calibration_images,
                     spec: QuantSpec = INT8) -> QuantizedNetwork:
    """Post-training quantization from float weights and calibration images."""
    ranges = calibrate(net, weights, calibration_images)
    scales = {name: choose_qparams(*r, spec) for name, r in ranges.items()}
    layers: dict[str, object] = {}
    s_x, z_x = scales["input"]
    for layer in net.layers:
        name = layer.name
        if isinstance(layer, Conv):
            s_y, z_y = scales[name]
            conv = _quant_conv(weights, layer.prefix, s_x, s_y, z_y, layer.relu, spec)
            layers[name] = QConv(z_x, conv, layer.stride, layer.pad)
        elif isinstance(layer, MaxPool):
            scales[name] = (s_x, z_x)  # max pool commutes with the affine map
        elif isinstance(layer, Fire):
            s_s, z_s = scales[f"{name}.squeeze"]
            s_c, z_c = scales[f"{name}.concat"]
            p = layer.prefix
            squeeze = _quant_conv(weights, f"{p}.squeeze", s_x, s_s, z_s, True, spec)
            e1 = _quant_conv(weights, f"{p}.expand1x1", s_s, s_c, z_c, True, spec)
            e3 = _quant_conv(weights, f"{p}.expand3x3", s_s, s_c, z_c, True, spec)
            bypass = None
            if layer.bypass:
                s_y, z_y = scales[name]
                a, b, n = quantize_multiplier_pair(s_c / s_y, s_x / s_y)
                bypass = ops.AddParams(z_c, z_x, a, b, n, z_y)
            else:
                scales[name] = (s_c, z_c)
            layers[name] = ops.FireLayer(z_x, squeeze, e1, e3, bypass)
        elif isinstance(layer, GlobalAvgPool):
            s_y, z_y = scales[name]
            layers[name] = QAvgPool(s_x, z_x, s_y, z_y)
        s_x, z_x = scales[name]
    return QuantizedNetwork(net, spec, layers, scales, weights.source)


@dataclass
class LayerReport:
    name: str
    sqnr_db: float


def layer_sqnr(qnet: QuantizedNetwork, weights: Weights, images) -> list[LayerReport]:
    """Int-vs-float SQNR of every conv/Fire layer, each given the same quantized input."""
    per_layer: dict[str, tuple[float, float]] = {}

    def observe(name, x_in, y):
        layer = qnet.net.layer(name)
        if not isinstance(layer, (Conv, Fire)):
            return
        s_in, z_in = qnet.scales[_input_of(qnet.net, name)]
        x_f = dequantize(x_in, s_in, z_in)
        ref = reference.run_layer(layer, x_f.astype(np.float32), weights)
        s_y, z_y = qnet.scales[name]
        got = dequantize(y, s_y, z_y)
        sig, noise = per_layer.get(name, (0.0, 0.0))
        per_layer[name] = (sig + float(np.sum(ref.astype(np.float64) ** 2)),
                           noise + float(np.sum((ref - got) ** 2)))

    for image in images:
        qnet.forward(qnet.quantize_input(image), on_layer=observe)
    return [LayerReport(name, _db(sig, noise)) for name, (sig, noise) in per_layer.items()]


def _db(signal, noise) -> float:
    if noise == 0:
        return float("inf")
    return 10 * np.log10(signal / noise)


def _input_of(net: Network, name: str) -> str:
    idx = [layer.name for layer in net.layers].index(name)
    return "input" if idx == 0 else net.layers[idx - 1].name


def end_to_end(qnet: QuantizedNetwork, weights: Weights, images) -> dict:
    """End-to-end logits SQNR and top-1 agreement of the integer network with float."""
    ref, got = [], []
    for image in images:
        ref.append(reference.forward(qnet.net, weights, image))
        got.append(qnet.logits(image))
    ref, got = np.array(ref), np.array(got)
    agree = float(np.mean(ref.argmax(axis=1) == got.argmax(axis=1)))
    return {"logits_sqnr_db": sqnr_db(ref, got), "top1_agreement": agree, "inputs": len(images)}
