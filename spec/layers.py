"""A quantized layer's parameters, as the engine and the golden model both take them: the
per-channel requantization, a convolution's integer weights, the bypass add, a Fire module.

Data only; the arithmetic is :mod:`spec.quant`, the golden model's operators ``sw.ops``, the
packing into the engine's streams :mod:`spec.tiling`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .quant import INT8, QuantSpec, requantize


@dataclass(frozen=True)
class Requant:
    """Per-output-channel requantization ``(m[c], n[c])`` to zero point ``z_out``."""

    m: np.ndarray
    n: np.ndarray
    z_out: int
    relu: bool
    hi: int | None = None  #: ceiling below the largest activation (None: no other)

    def __call__(self, acc: np.ndarray, spec: QuantSpec = INT8) -> np.ndarray:
        return requantize(acc, self.m, self.n, self.z_out, relu=self.relu, spec=spec,
                          hi=self.hi)


@dataclass(frozen=True)
class AddParams:
    """Requantization of ``a + b`` for inputs of different scales, with one common shift.

    ``y = clamp(z_out + round((A (a - z_a) + B (b - z_b)) / 2**n), act_min, act_max)``.
    """

    z_a: int
    z_b: int
    mult_a: int
    mult_b: int
    shift: int
    z_out: int


@dataclass(frozen=True)
class ConvLayer:
    """Quantized weights and requantization of one convolution."""

    weight: np.ndarray  # OIHW int
    bias: np.ndarray  # int, at scale s_x * s_w[c]
    rq: Requant

    @property
    def out_channels(self) -> int:
        return self.weight.shape[0]


@dataclass(frozen=True)
class FireLayer:
    """Everything the engine needs to run one Fire module.

    ``squeeze`` requantizes to ``z_squeeze`` (with ReLU); ``expand1x1`` and ``expand3x3``
    requantize to one shared output zero point (with ReLU) so their outputs concatenate.
    ``bypass`` (optional) adds the Fire input to that output.
    """

    z_in: int
    squeeze: ConvLayer
    expand1x1: ConvLayer
    expand3x3: ConvLayer
    bypass: AddParams | None = None

    @property
    def z_squeeze(self) -> int:
        return self.squeeze.rq.z_out

    @property
    def z_out(self) -> int:
        return self.bypass.z_out if self.bypass else self.expand1x1.rq.z_out

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """``(Cin, S, E1, E3)``."""
        s, cin = self.squeeze.weight.shape[:2]
        return cin, s, self.expand1x1.out_channels, self.expand3x3.out_channels
