"""Random Fire layers with realistic requantization, for engine tests and testbenches."""

import dataclasses

import numpy as np

from spec.quant import QuantSpec, quantize_multiplier, quantize_multiplier_pair, quantize_rescale
from sw import ops


def _conv(rng, cout, cin, k, z_out, spec, terms, extreme=None, ceiling=False):
    wmax = spec.weight_max
    if extreme == "max":
        w = np.full((cout, cin, k, k), wmax)
    elif extreme == "min":
        w = np.full((cout, cin, k, k), -wmax)
    else:
        w = rng.integers(-wmax, wmax + 1, (cout, cin, k, k))
    bias_lim = min(spec.bias_max, 2**(2 * spec.bits + 2))
    bias = rng.integers(-bias_lim, bias_lim, cout)
    # typical |acc| ~ sqrt(terms) * 2**(bits-1) * wmax / 2; aim the output at +-2**(bits-2)
    typical = np.sqrt(terms) * 2 ** (spec.bits - 1) * wmax / 2
    scale = rng.uniform(0.3, 3.0, cout) * 2 ** (spec.bits - 2) / typical
    if extreme == "saturate":
        scale = scale * 1000
    pairs = [quantize_multiplier(float(v)) for v in scale]
    # a ceiling below the largest activation, as a QDQ model's expand branch imposes
    hi = int(rng.integers(z_out + 1, spec.act_max + 1)) if ceiling and rng.random() < 0.5 \
        else None
    rq = ops.Requant(np.array([a for a, _ in pairs]), np.array([b for _, b in pairs]),
                     int(z_out), relu=True, hi=hi)
    return ops.ConvLayer(w, bias, rq)


def _rescaled(rng, conv, z_out, spec):
    """``conv`` requantized to a zero point of its own, then rescaled to ``z_out`` (a branch
    of a QDQ model rounded twice)."""
    z_branch = int(rng.integers(spec.act_min, spec.act_max // 2))
    m, n = quantize_rescale(float(rng.uniform(0.3, 1.0)))
    return dataclasses.replace(conv, rq=dataclasses.replace(
        conv.rq, z_out=z_branch, hi=None, rescale=ops.Rescale(z_branch, m, n, z_out)))


def random_fire(rng, cin, s, e1, e3, *, bits=8, bypass=False, extreme=None, rescale=False):
    """A random Fire layer; ``rescale``: its expand3x3 (and half the time its expand1x1) is
    rounded twice, to a zero point of its own first."""
    spec = QuantSpec(bits)
    lo, hi = spec.act_min, spec.act_max
    z_in, z_sq, z_out = (int(v) for v in rng.integers(lo, hi // 2, 3))
    squeeze = _conv(rng, s, cin, 1, z_sq, spec, cin, extreme)
    e1c = _conv(rng, e1, s, 1, z_out, spec, s, extreme, ceiling=True)
    e3c = _conv(rng, e3, s, 3, z_out, spec, 9 * s, extreme, ceiling=True)
    if rescale:
        e3c = _rescaled(rng, e3c, z_out, spec)
        if rng.random() < 0.5:
            e1c = _rescaled(rng, e1c, z_out, spec)
    add = None
    if bypass:
        a, b, n = quantize_multiplier_pair(rng.uniform(0.2, 1.0), rng.uniform(0.2, 1.0))
        add = ops.AddParams(z_out, z_in, a, b, n, int(rng.integers(lo, 0)))
    return ops.FireLayer(z_in, squeeze, e1c, e3c, add)


def random_input(rng, h, w, cin, *, bits=8, fill=None):
    spec = QuantSpec(bits)
    if fill is not None:
        return np.full((h, w, cin), fill, dtype=np.int64)
    return rng.integers(spec.act_min, spec.act_max + 1, (h, w, cin))


def random_conv(rng, cout, cin, k=1, *, bits=8, relu=True, extreme=None):
    """A random convolution (conv1- or conv10-like) and its input zero point: ``(layer,
    z_in)``; ``relu=False`` as a classifier without ReLU."""
    spec = QuantSpec(bits)
    z_in, z_out = (int(v) for v in rng.integers(spec.act_min, spec.act_max // 2, 2))
    conv = _conv(rng, cout, cin, k, z_out, spec, cin * k * k, extreme)
    if not relu:
        conv = dataclasses.replace(conv, rq=dataclasses.replace(conv.rq, relu=False))
    return conv, z_in
