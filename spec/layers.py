"""A quantized layer's parameters, as the engine and the golden model both take them: the
per-channel requantization, a convolution's integer weights, the bypass add, a Fire module.

Data only; the arithmetic is :mod:`spec.quant`, the golden model's operators ``sw.ops``, the
packing into the engine's streams :mod:`spec.tiling`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .quant import INT8, QuantSpec, requantize, rescale


@dataclass(frozen=True)
class Rescale:
    """A second requantization of an int tensor at zero point ``z_in`` to ``z_out``:
    ``clamp(z_out + round((q - z_in) * m / 2**n))`` (:func:`spec.quant.rescale`)."""

    z_in: int
    m: int
    n: int
    z_out: int

    def __call__(self, q: np.ndarray, spec: QuantSpec = INT8) -> np.ndarray:
        return rescale(q, self.z_in, self.m, self.n, self.z_out, spec)


@dataclass(frozen=True)
class Requant:
    """Per-output-channel requantization ``(m[c], n[c])`` to zero point ``z_out``, then, when
    ``rescale`` is given, that second requantization of the result (from ``z_out``, which is
    then its ``z_in``, to ``rescale.z_out``): a Fire expand rounded first to its branch's own
    scale, then to the concat's, as a QDQ model does."""

    m: np.ndarray
    n: np.ndarray
    z_out: int
    relu: bool
    hi: int | None = None  #: ceiling below the largest activation (None: no other)
    rescale: Rescale | None = None

    def __post_init__(self):
        if self.rescale is not None and self.rescale.z_in != self.z_out:
            raise ValueError(f"rescale from zero point {self.rescale.z_in}, but the first "
                             f"requantization gives zero point {self.z_out}")

    @property
    def final_zero(self) -> int:
        """Zero point of the result: ``rescale.z_out`` if there is a second stage."""
        return self.rescale.z_out if self.rescale is not None else self.z_out

    def __call__(self, acc: np.ndarray, spec: QuantSpec = INT8) -> np.ndarray:
        y = requantize(acc, self.m, self.n, self.z_out, relu=self.relu, spec=spec, hi=self.hi)
        return y if self.rescale is None else self.rescale(y, spec)


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
    requantize to one shared output zero point (with ReLU) so their outputs concatenate,
    each either directly or through its own scale first (``Requant.rescale``).
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
        return self.bypass.z_out if self.bypass else self.z_concat

    @property
    def z_concat(self) -> int:
        """Zero point of the concat ``[e1, e3]`` (before the bypass)."""
        return self.expand1x1.rq.final_zero

    @property
    def rescaled(self) -> bool:
        """Whether an expand is rounded twice (its own scale, then the concat's)."""
        return self.expand1x1.rq.rescale is not None or self.expand3x3.rq.rescale is not None

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """``(Cin, S, E1, E3)``."""
        s, cin = self.squeeze.weight.shape[:2]
        return cin, s, self.expand1x1.out_channels, self.expand3x3.out_channels
