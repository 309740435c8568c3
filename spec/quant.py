"""The integer arithmetic of the accelerator: the single definition the gateware copies.

The scheme is that of ONNX QLinearConv and TFLite int8:

* an activation is a ``bits``-bit integer ``q`` with a per-tensor scale ``s`` and zero point
  ``z``: ``real = s * (q - z)``;
* a weight is symmetric and per output channel: zero point 0, range ``[-(2**(bits-1)-1),
  2**(bits-1)-1]``;
* a bias is a ``bias_bits``-bit integer at scale ``s_x * s_w[c]``;
* the accumulator is ``acc[c] = bias[c] + sum((x - z_x) * w)``;
* requantization is ``y = clamp(z_y + round(acc * M[c]), lo, hi)`` with
  ``M[c] = s_x * s_w[c] / s_y`` held as an unsigned ``MULT_BITS - 1``-bit multiplier ``m`` and
  a right shift ``n``: ``M = m / 2**n``.

Rounding rule (the one the hardware implements): **round half up**, a single rounding of the
exact product,

    round(acc * m / 2**n) = (acc * m + 2**(n - 1)) >> n      (arithmetic shift, i.e. floor)

so ties go toward +infinity (-2.5 -> -2, 2.5 -> 3). A fused ReLU is ``lo = z_y``; otherwise
``lo`` is the smallest activation.

A second, optional requantization (:func:`rescale`) takes an already quantized tensor
``(s_b, z_b)`` to another scale ``(s_y, z_y)``: ``y = clamp(z_y + round((q - z_b) * m / 2**n),
min, max)`` with ``m / 2**n ~= s_b / s_y`` held in ``RESCALE_MULT_BITS`` bits, rounded as above.
It is how a QDQ model's Fire expand is rounded twice: to the branch's own scale, then to the
concat's (onnxruntime's QuantizeLinear -> DequantizeLinear -> Concat -> QuantizeLinear).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

#: Width of the fixed-point multiplier as stored (a non-negative int32: 31 significant bits).
MULT_BITS = 32
#: Smallest and largest right shift the requantizer supports.
SHIFT_MIN = 1
SHIFT_MAX = 63
#: Significant bits of the second requantization's multiplier (unsigned: one 18x18 signed
#: multiplier takes it whole) and its largest shift.
RESCALE_MULT_BITS = 17
RESCALE_SHIFT_MAX = 31
#: Width ``acc + bias`` is saturated to in the engine's narrow requantizer lanes (a conv run's
#: second and third channel a cycle): one DSP48E1 (25 x 18 signed) per 17-bit multiplier chunk.
NARROW_BITS = 25
#: The smallest shift a narrow lane takes: a scale ``m / 2**n`` below 1 (``m < 2**31``), as
#: a convolution's almost always is; the lane's rounding then starts from the product's bits
#: above ``NARROW_SHIFT_MIN - 1`` (a 27-bit shifter of 16 places instead of 57 of 64).
NARROW_SHIFT_MIN = 31


@dataclass(frozen=True)
class QuantSpec:
    """Integer ranges for a given activation/weight bit width (default int8)."""

    bits: int = 8

    def __post_init__(self):
        if not 2 <= self.bits <= 16:
            raise ValueError(f"bits={self.bits}: supported widths are 2 to 16")

    @property
    def act_min(self) -> int:
        return -(1 << (self.bits - 1))

    @property
    def act_max(self) -> int:
        return (1 << (self.bits - 1)) - 1

    @property
    def weight_max(self) -> int:
        """Weights are symmetric: ``[-weight_max, weight_max]``."""
        return (1 << (self.bits - 1)) - 1

    @property
    def bias_bits(self) -> int:
        """int32 for 8 bits and below, as ONNX and TFLite; wider for wider activations."""
        return max(32, 2 * self.bits + 16)

    @property
    def bias_min(self) -> int:
        return -(1 << (self.bias_bits - 1))

    @property
    def bias_max(self) -> int:
        return (1 << (self.bias_bits - 1)) - 1

    def acc_bits(self, max_terms: int) -> int:
        """Accumulator width that cannot overflow: bias plus ``max_terms`` products.

        ``(x - z_x)`` spans ``bits + 1`` signed bits, a weight ``bits`` signed bits.
        """
        max_product = (2**self.bits - 1) * self.weight_max
        bound = max_product * max_terms + (1 << (self.bias_bits - 1))
        return bound.bit_length() + 1


INT8 = QuantSpec(8)


def quantize_multiplier(real: float) -> tuple[int, int]:
    """Represent a non-negative real multiplier ``M`` as ``(m, n)`` with ``M ~= m / 2**n``.

    ``m`` is normalized to ``[2**30, 2**31)`` when ``n`` allows it. Multipliers too small for
    ``SHIFT_MAX`` lose precision (down to ``m = 0``); too large ones raise ``ValueError``.
    """
    if not math.isfinite(real) or real < 0:
        raise ValueError(f"requantization multiplier must be finite and >= 0, got {real}")
    if real == 0:
        return 0, SHIFT_MAX
    frac, exp = math.frexp(real)  # real = frac * 2**exp, frac in [0.5, 1)
    m = round(frac * (1 << (MULT_BITS - 1)))
    if m == 1 << (MULT_BITS - 1):
        m //= 2
        exp += 1
    n = (MULT_BITS - 1) - exp
    if n < SHIFT_MIN:
        raise ValueError(f"requantization multiplier {real:g} is too large (needs shift {n})")
    if n > SHIFT_MAX:
        m = round(real * 2.0**SHIFT_MAX)
        n = SHIFT_MAX
    return m, n


def quantize_rescale(real: float) -> tuple[int, int]:
    """``M ~= m / 2**n`` for :func:`rescale`: ``m`` normalized to ``[2**16, 2**17)`` (of
    ``RESCALE_MULT_BITS``) when ``n <= RESCALE_SHIFT_MAX`` allows, else fewer bits."""
    if not math.isfinite(real) or real <= 0:
        raise ValueError(f"rescale multiplier must be finite and > 0, got {real}")
    frac, exp = math.frexp(real)
    m = round(frac * (1 << RESCALE_MULT_BITS))
    if m == 1 << RESCALE_MULT_BITS:
        m //= 2
        exp += 1
    n = RESCALE_MULT_BITS - exp
    if n < 1:
        raise ValueError(f"rescale multiplier {real:g} is too large (needs shift {n})")
    if n > RESCALE_SHIFT_MAX:
        m, n = round(real * 2.0**RESCALE_SHIFT_MAX), RESCALE_SHIFT_MAX
    return m, n


def quantize_multiplier_pair(real_a: float, real_b: float) -> tuple[int, int, int]:
    """Two multipliers with a common shift: ``(a, b, n)`` with ``M_a ~= a/2**n``, ``M_b ~= b/2**n``.

    Used by the bypass add, whose two inputs have different scales. The larger multiplier
    gets full precision.
    """
    big, n = quantize_multiplier(max(real_a, real_b))
    limit = (1 << (MULT_BITS - 1)) - 1
    a = min(round(real_a * 2.0**n), limit)
    b = min(round(real_b * 2.0**n), limit)
    return a, b, n


def rounding_shift(value: np.ndarray, n: np.ndarray | int) -> np.ndarray:
    """``round(value / 2**n)`` with ties toward +infinity, for int64 or object arrays."""
    n = np.asarray(n)
    one = np.ones_like(value)
    return (value + (one << (n - 1))) >> n


def scale_and_round(acc, m, n) -> np.ndarray:
    """Exact ``round(acc * m / 2**n)`` (round half up) for integer arrays, broadcast together.

    Uses int64 where the product provably fits and Python integers otherwise, so the result
    is exact for every accumulator width the engine supports. Results beyond +-2**62 (far
    outside any activation range, which callers clamp to) saturate there.
    """
    acc = np.asarray(acc, dtype=np.int64)
    m = np.asarray(m, dtype=np.int64)
    n = np.asarray(n, dtype=np.int64)
    if np.any(m < 0) or np.any(n < SHIFT_MIN) or np.any(n > SHIFT_MAX):
        raise ValueError("multiplier must be >= 0 and shift within [SHIFT_MIN, SHIFT_MAX]")
    max_acc = int(np.max(np.abs(acc), initial=0))
    max_m = int(np.max(m, initial=0))
    if (max_acc * max_m) < (1 << 62):
        return rounding_shift(acc * m, n)
    wide = rounding_shift(acc.astype(object) * m.astype(object), n.astype(object))
    limit = 1 << 62
    return np.clip(wide, -limit, limit).astype(np.int64)


def narrow_shift_max(spec: QuantSpec) -> int:
    """The largest shift for which saturating ``acc + bias`` to ``NARROW_BITS`` bits leaves
    the requantization exact, for a multiplier with its top bit set (``m >= 2**30``).

    Let ``W = NARROW_BITS``, ``b = spec.bits``, ``k = W - 1 + 30 - n``. A saturated value is
    ``-2**(W-1)`` or ``2**(W-1) - 1``, and then ``|v| >= 2**(W-1)`` as well:

    * negative: ``v m / 2**n <= -2**(W-1) 2**30 / 2**n = -2**k``, so its rounding is at most
      ``-2**k``; with ``k >= b``, ``z - 2**k <= 2**(b-1) - 1 - 2**b < -2**(b-1)``: both the
      exact and the saturated value clamp to the floor ``lo >= -2**(b-1)``;
    * positive: ``v m / 2**n >= (2**(W-1) - 1) 2**(30-n) = 2**k - 2**(30-n)``, which rounds
      half up to at least ``2**k >= 2**b`` when ``n >= 31`` (``2**(30-n) <= 1/2``); for
      ``n <= 30`` it is at least ``2**(W-1) - 1 >= 2**b`` (``b <= 16``). Then
      ``z + 2**b >= -2**(b-1) + 2**b > 2**(b-1) - 1``: both clamp to the ceiling
      ``hi <= 2**(b-1) - 1`` (a conv run's ceiling is the largest activation).

    So ``k >= b``, i.e. ``n <= W + 29 - b`` (46 at 8 bits) is exact, and the engine checks
    ``m[30]``, this bound and ``n >= NARROW_SHIFT_MIN`` for every channel of a run before it
    uses the narrow lanes.
    """
    return NARROW_BITS + 29 - spec.bits


def narrow_ok(m, n, spec: QuantSpec) -> bool:
    """Whether every channel ``(m, n)`` may take a narrow requantizer lane (exactly what the
    engine checks while the parameters load)."""
    m, n = np.asarray(m, dtype=np.int64), np.asarray(n, dtype=np.int64)
    return bool(np.all((m >> (MULT_BITS - 2)) & 1) and np.all(n <= narrow_shift_max(spec))
                and np.all(n >= NARROW_SHIFT_MIN))


def requantize(acc, m, n, z_out: int, *, relu: bool, spec: QuantSpec = INT8,
               hi: int | None = None) -> np.ndarray:
    """``clamp(z_out + round(acc * m / 2**n), lo, hi)``; ``lo = z_out`` with ReLU, else the
    smallest activation; ``hi`` the largest activation unless given (a lower ceiling saturates
    like an intermediate quantization would, e.g. a Fire expand's own range in a QDQ model)."""
    lo = z_out if relu else spec.act_min
    hi = spec.act_max if hi is None else hi
    y = z_out + scale_and_round(acc, m, n)
    return np.clip(y, lo, hi).astype(np.int64)


def rescale(q, z_in: int, m: int, n: int, z_out: int, spec: QuantSpec = INT8) -> np.ndarray:
    """The second requantization: ``clamp(z_out + round((q - z_in) * m / 2**n), min, max)``
    (round half up, as :func:`requantize`) of an already quantized tensor ``q`` with zero point
    ``z_in``; ``m`` of at most ``RESCALE_MULT_BITS`` bits, ``n`` 1 to ``RESCALE_SHIFT_MAX``."""
    if not 0 <= m < 1 << RESCALE_MULT_BITS or not 1 <= n <= RESCALE_SHIFT_MAX:
        raise ValueError(f"rescale (m={m}, n={n}): m must be 0 to 2**{RESCALE_MULT_BITS} - 1 "
                         f"and n 1 to {RESCALE_SHIFT_MAX}")
    y = z_out + scale_and_round(np.asarray(q, dtype=np.int64) - z_in, m, n)
    return np.clip(y, spec.act_min, spec.act_max).astype(np.int64)


def choose_qparams(lo: float, hi: float, spec: QuantSpec = INT8) -> tuple[float, int]:
    """Per-tensor affine ``(scale, zero_point)`` covering ``[lo, hi]`` (which must hold 0)."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    steps = spec.act_max - spec.act_min
    # an empty range, or one so narrow that its step underflows to 0 (a few subnormals)
    if not (hi - lo) / steps > 0:
        hi = lo + 1e-8
    scale = (hi - lo) / steps
    zero = int(round(spec.act_min - lo / scale))
    return scale, int(np.clip(zero, spec.act_min, spec.act_max))


def quantize_tensor(x: np.ndarray, scale: float, zero: int, spec: QuantSpec = INT8) -> np.ndarray:
    """Float to integer with round-half-to-even, as ONNX QuantizeLinear."""
    q = np.rint(np.asarray(x, dtype=np.float64) / scale) + zero
    return np.clip(q, spec.act_min, spec.act_max).astype(np.int64)


def dequantize(q: np.ndarray, scale, zero) -> np.ndarray:
    return (np.asarray(q, dtype=np.float64) - zero) * scale


def quantize_weights(w: np.ndarray, spec: QuantSpec = INT8) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-output-channel weights: returns ``(q, scale[c])``; axis 0 is the channel."""
    w = np.asarray(w, dtype=np.float64)
    amax = np.max(np.abs(w.reshape(w.shape[0], -1)), axis=1)
    scale = np.where(amax > 0, amax / spec.weight_max, 1.0)
    shape = (-1,) + (1,) * (w.ndim - 1)
    q = np.clip(np.rint(w / scale.reshape(shape)), -spec.weight_max, spec.weight_max)
    return q.astype(np.int64), scale


def quantize_bias(b: np.ndarray, scale: np.ndarray, spec: QuantSpec = INT8) -> np.ndarray:
    q = np.rint(np.asarray(b, dtype=np.float64) / scale)
    return np.clip(q, spec.bias_min, spec.bias_max).astype(np.int64)


def sqnr_db(reference: np.ndarray, test: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio of ``test`` against ``reference``, in dB."""
    reference = np.asarray(reference, dtype=np.float64)
    noise = np.sum((reference - np.asarray(test, dtype=np.float64)) ** 2)
    signal = np.sum(reference**2)
    if noise == 0:
        return math.inf
    return 10 * math.log10(signal / noise) if signal > 0 else -math.inf
