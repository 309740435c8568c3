"""Pipelined integer arithmetic: the requantizer and its narrow lanes (a wide conv run's
second and third channel a cycle), the second requantization (rescaler) and the bypass adder
(whose DSP products the narrow lanes borrow in a conv run).

All implement ``spec.quant``'s definition bit for bit: ``clamp(z + round(v * m / 2**n), lo,
max)`` with round half up, computed as ``((v * m) >> (n - 1)) + 1) >> 1``, which equals
``(v * m + 2**(n-1)) >> n`` for every integer. They are fixed-latency pipelines without
backpressure (``always_ready`` streams): the engine reserves room for their results before it
issues work, so nothing upstream ever stalls mid-pipeline, and every register maps cleanly to
DSP pipeline registers.
"""

from __future__ import annotations

from amaranth import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from spec.quant import (
    MULT_BITS,
    NARROW_BITS,
    NARROW_SHIFT_MIN,
    RESCALE_MULT_BITS,
    RESCALE_SHIFT_MAX,
    SHIFT_MAX,
    QuantSpec,
    narrow_shift_max,
)

from .dsp import registered_product

#: Operand chunk of the wide multiplier: 17-bit unsigned pieces fit an 18x18 signed
#: multiplier (ECP5 MULT18X18D) and a DSP48E1 alike.
CHUNK = 17
#: Cycles of :func:`round_shift_clamp`.
ROUND_LATENCY = 6


def delay(m: Module, sig, cycles: int, name: str = "d", *, reset_less: bool = False):
    """``sig`` delayed by ``cycles`` clock cycles through a register chain (``reset_less``
    for data that only matters beside a control bit that is reset)."""
    for i in range(cycles):
        nxt = Signal.like(sig, name=f"{name}_{i}", reset_less=reset_less)
        m.d.sync += nxt.eq(sig)
        sig = nxt
    return sig


def multiplier_latency(a_width: int, b_width: int, a_chunk: int = CHUNK) -> int:
    """Cycles from operands to product of :func:`wide_multiply`."""
    terms = -(-a_width // a_chunk) * -(-b_width // CHUNK)
    return 3 + max(0, (terms - 1).bit_length())


def wide_multiply(m: Module, platform, a, b, name: str = "mul", *, primitive: bool = False,
                  a_chunk: int = CHUNK):
    """Pipelined ``a * b`` (``a`` signed, ``b`` unsigned), built from 18x18-sized products
    (``a_chunk=NARROW_BITS``: ``a`` whole, 25 x 18-sized products, as a DSP48E1 takes them).

    Returns ``(product, latency)``. Registers: each partial product's operands and product
    (:func:`hw.dsp.registered_product`; ``primitive``: an ECP5 MULT18X18D's), the product once
    more, then one register per level of the partial-product adder tree.
    """
    aw, bw = len(a), len(b)
    a_chunks = [(lo, min(a_chunk, aw - lo)) for lo in range(0, aw, a_chunk)]
    b_chunks = [(lo, min(CHUNK, bw - lo)) for lo in range(0, bw, CHUNK)]
    terms = []
    for i, (alo, awid) in enumerate(a_chunks):
        top = i == len(a_chunks) - 1
        piece_a = a[alo:alo + awid].as_signed() if top else a[alo:alo + awid]
        for j, (blo, bwid) in enumerate(b_chunks):
            piece_b = b[blo:blo + bwid]
            prod = registered_product(m, platform, piece_a, piece_b, f"{name}_p{i}{j}",
                                      primitive=primitive)
            prod_r = Signal.like(prod, name=f"{name}_pr{i}{j}", reset_less=True)
            m.d.sync += prod_r.eq(prod)
            terms.append((prod_r, alo + blo))
    latency = 3
    width = aw + bw + 1
    while len(terms) > 1:
        nxt = []
        for k in range(0, len(terms), 2):
            if k + 1 == len(terms):
                carry = Signal(signed(width), reset_less=True, name=f"{name}_c{latency}_{k}")
                m.d.sync += carry.eq(terms[k][0] << terms[k][1])
                nxt.append((carry, 0))
                continue
            s = Signal(signed(width), reset_less=True, name=f"{name}_s{latency}_{k}")
            (x, xs), (y, ys) = terms[k], terms[k + 1]
            m.d.sync += s.eq((x << xs) + (y << ys))
            nxt.append((s, 0))
        terms = nxt
        latency += 1
    (p, shift), = terms
    assert shift == 0 and latency == multiplier_latency(aw, bw, a_chunk)
    return p, latency


def round_shift_clamp(m: Module, value, shift, z, lo, spec: QuantSpec, name="rq", hi=None,
                      *, minus_one=None, held=False):
    """``clamp(z + round_half_up(value / 2**shift), lo, hi)``, pipelined (``hi`` defaults to
    the largest activation).

    ``shift`` is 1 to 63 (or ``shift`` is None and ``minus_one``, up to 6 bits, is ``shift -
    1``: a narrower one makes a smaller shifter). Returns ``(y, latency)``; ``shift``, ``z``,
    ``lo`` and ``hi`` must be aligned with ``value`` (they are sampled in the same cycle), or,
    with ``held``, ``z``, ``lo`` and ``hi`` are held for the whole run and taken undelayed.
    """
    if minus_one is not None:
        sm1 = Signal(len(minus_one), reset_less=True, name=f"{name}_sm1")
        m.d.comb += sm1.eq(minus_one)
    else:
        sm1 = Signal(6, reset_less=True, name=f"{name}_sm1")
        m.d.comb += sm1.eq(shift - 1)
    width = len(value)
    # Barrel shift by (shift - 1), low three bits then high three bits.
    q1 = Signal(signed(width), reset_less=True, name=f"{name}_q1")
    hi1 = Signal(max(1, len(sm1) - 3), reset_less=True, name=f"{name}_hi1")
    m.d.sync += [q1.eq(value >> sm1[:3]), hi1.eq(sm1[3:])]
    q2 = Signal(signed(width), reset_less=True, name=f"{name}_q2")
    m.d.sync += q2.eq(q1 >> (hi1 << 3))
    # Round half up (one wide add, alone in its stage) ...
    r = Signal(signed(width), reset_less=True, name=f"{name}_r")
    m.d.sync += r.eq((q2 + 1) >> 1)
    # ... then saturate to what can still land inside the output range, by looking at the
    # bits above it (reductions, no wide compare): |r| >= 2**(bits+1) cannot, whatever z.
    keep = spec.bits + 2
    top = r[keep - 1:]
    big = 1 << (keep - 1)
    rc = Signal(signed(keep), reset_less=True, name=f"{name}_rc")
    m.d.sync += rc.eq(Mux(~r[-1] & top.any(), big - 1,
                          Mux(r[-1] & ~top.all(), -big, r[:keep].as_signed())))
    z_d = z if held else delay(m, z, 4, f"{name}_z", reset_less=True)
    lo_d = lo if held else delay(m, lo, 5, f"{name}_lo", reset_less=True)
    hi_d = (spec.act_max if hi is None else
            hi if held else delay(m, hi, 5, f"{name}_hi", reset_less=True))
    # the zero point's add and the clamp's compares: a stage each
    total = Signal(signed(spec.bits + 3), reset_less=True, name=f"{name}_t")
    m.d.sync += total.eq(z_d + rc)
    y = Signal(signed(spec.bits), reset_less=True, name=f"{name}_y")
    m.d.sync += y.eq(Mux(total > hi_d, hi_d, Mux(total < lo_d, lo_d, total)))
    return y, ROUND_LATENCY


def _emit(m: Module, pipe, y, latency: int) -> None:
    """Drive a pipeline's ``o``: its result ``y``, with ``valid`` and ``tag`` delayed to it."""
    assert latency == pipe.latency
    m.d.comb += [
        pipe.o.valid.eq(delay(m, pipe.i.valid, latency, "valid")),
        pipe.o.payload.tag.eq(delay(m, pipe.i.payload.tag, latency, "tag", reset_less=True)),
        pipe.o.payload.y.eq(y),
    ]


def requant_in_layout(spec: QuantSpec, acc_bits: int, tag_bits: int) -> data.StructLayout:
    return data.StructLayout({
        "acc": signed(acc_bits),  # the sum, without the bias
        "bias": signed(spec.bias_bits),
        "mult": unsigned(MULT_BITS - 1),
        "shift": unsigned(SHIFT_MAX.bit_length()),
        "z": signed(spec.bits),
        "relu": 1,
        "hi": signed(spec.bits),  # ceiling of the result (the largest activation normally)
        "tag": unsigned(max(1, tag_bits)),
    })


def result_layout(spec: QuantSpec, tag_bits: int) -> data.StructLayout:
    return data.StructLayout({"y": signed(spec.bits), "tag": unsigned(max(1, tag_bits))})


def requantizer_latency(spec: QuantSpec, acc_bits: int) -> int:
    """Cycles of :class:`Requantizer`: the bias add, the product, the rounding."""
    v_bits = max(acc_bits, spec.bias_bits) + 1
    return 1 + multiplier_latency(v_bits, MULT_BITS - 1) + ROUND_LATENCY


class Requantizer(wiring.Component):
    """Per-channel requantization of one accumulator per cycle.

    ``i``: ``acc`` (the sum, at most ``acc_bits``), per-channel ``bias``, ``mult``, ``shift``,
    the output zero point ``z``, ``relu``, the ceiling ``hi``, and a ``tag`` carried through.
    ``o``: ``y = clamp(z + round((acc + bias) * mult / 2**shift), z if relu else min, hi)``,
    ``latency`` cycles later.
    """

    def __init__(self, spec: QuantSpec, acc_bits: int, tag_bits: int = 1, *,
                 multipliers: str = "dsp"):
        self._spec = spec
        self._primitive = multipliers == "mult18x18d"
        self._acc_bits = acc_bits
        self._tag_bits = tag_bits
        super().__init__({
            "i": In(stream.Signature(requant_in_layout(spec, acc_bits, tag_bits),
                                     always_ready=True)),
            "o": Out(stream.Signature(result_layout(spec, tag_bits), always_ready=True)),
        })
        self._v_bits = max(acc_bits, spec.bias_bits) + 1
        #: cycles from ``i`` to ``o``
        self.latency = requantizer_latency(spec, acc_bits)

    def elaborate(self, platform):
        m = Module()
        spec, p = self._spec, self.i.payload
        v_bits = self._v_bits
        v = Signal(signed(v_bits), reset_less=True)
        m.d.sync += v.eq(p.acc + p.bias)
        prod, mul_lat = wide_multiply(m, platform, v,
                                      delay(m, p.mult, 1, "mult", reset_less=True),
                                      primitive=self._primitive)
        lead = 1 + mul_lat
        shift = delay(m, p.shift, lead, "shift", reset_less=True)
        z = delay(m, p.z, lead, "z", reset_less=True)
        relu = delay(m, p.relu, lead, "relu", reset_less=True)
        hi = delay(m, p.hi, lead, "hi", reset_less=True)
        lo = Signal(signed(spec.bits))
        m.d.comb += lo.eq(Mux(relu, z, spec.act_min))
        y, tail = round_shift_clamp(m, prod, shift, z, lo, spec, hi=hi)
        _emit(m, self, y, lead + tail)
        return m


#: Width of a narrow lane's product: ``NARROW_BITS`` x the ``MULT_BITS - 1``-bit multiplier.
NARROW_PRODUCT_BITS = NARROW_BITS + MULT_BITS
#: Cycles of a narrow product (two 25 x 18 partial products and their sum).
NARROW_PRODUCT_LATENCY = multiplier_latency(NARROW_BITS, MULT_BITS - 1, NARROW_BITS)


class NarrowRequantizer(wiring.Component):
    """:class:`Requantizer`'s result for a channel whose parameters qualify
    (``spec.quant.narrow_ok``: the multiplier's top bit set, the shift at most
    ``spec.quant.narrow_shift_max``), with ``acc + bias`` saturated to ``NARROW_BITS`` bits
    (exact there, ``spec.quant.narrow_shift_max`` says why), so that its product is two
    25 x 18 partial products: one DSP48E1 each.

    ``i``: ``acc``, ``bias``, ``mult``, ``shift`` (and a ``tag``); ``o``: ``y``, ``latency``
    cycles later (the caller's: the full-width requantizer's, so that lanes leave together).
    ``z`` and ``relu`` are the run's, held while it lasts (a conv run's output zero point and
    ReLU); the ceiling is the largest activation. With ``shared``, the product is
    not built here but by multipliers another block lends (the bypass adder's, idle in a
    convolution run): ``prod_a`` (the saturated sum) and ``prod_m`` (the multiplier) go out,
    ``prod_p`` comes back ``NARROW_PRODUCT_LATENCY`` cycles later.
    """

    def __init__(self, spec: QuantSpec, acc_bits: int, tag_bits: int = 1, *, latency: int,
                 multipliers: str = "dsp", shared: bool = False):
        self._spec = spec
        self._primitive = multipliers == "mult18x18d"
        # a whole 25-bit operand a product fits a DSP48E1, not an 18x18 multiplier
        self._a_chunk = NARROW_BITS if multipliers == "dsp" else CHUNK
        self._shared = shared
        self._product_latency = multiplier_latency(NARROW_BITS, MULT_BITS - 1, self._a_chunk)
        layout = data.StructLayout({
            "acc": signed(acc_bits), "bias": signed(spec.bias_bits),
            "mult": unsigned(MULT_BITS - 1), "shift": unsigned(SHIFT_MAX.bit_length()),
            "tag": unsigned(max(1, tag_bits))})
        members = {
            "i": In(stream.Signature(layout, always_ready=True)),
            "o": Out(stream.Signature(result_layout(spec, tag_bits), always_ready=True)),
            "z": In(signed(spec.bits)),
            "relu": In(1),
        }
        if shared:
            assert multipliers == "dsp"
            members.update({"prod_a": Out(signed(NARROW_BITS)), "prod_m": Out(MULT_BITS - 1),
                            "prod_p": In(signed(NARROW_PRODUCT_BITS))})
        super().__init__(members)
        #: registers before the product: the sum, the saturation (one stage when short)
        self._pre = latency - self._product_latency - ROUND_LATENCY
        if self._pre < 1:
            raise ValueError(f"a narrow requantizer needs at least "
                             f"{self._product_latency + ROUND_LATENCY + 1} cycles")
        self.latency = latency

    def elaborate(self, platform):
        m = Module()
        spec, p = self._spec, self.i.payload
        top = 1 << (NARROW_BITS - 1)

        def saturate(v):
            # in range when the bits from NARROW_BITS - 1 up all equal the sign
            high = v[NARROW_BITS - 1:]
            return Mux(high.all() | ~high.any(), v[:NARROW_BITS].as_signed(),
                       Mux(v[-1], -top, top - 1))

        wide = signed(max(len(p.acc), len(p.bias)) + 1)
        vs = Signal(signed(NARROW_BITS), reset_less=True)
        if self._pre == 1:
            v = Signal(wide)
            m.d.comb += v.eq(p.acc + p.bias)
            m.d.sync += vs.eq(saturate(v))
            ready = vs
        else:
            v = Signal(wide, reset_less=True)
            m.d.sync += [v.eq(p.acc + p.bias), vs.eq(saturate(v))]
            ready = delay(m, vs, self._pre - 2, "vs", reset_less=True)
        mult = delay(m, p.mult, self._pre, "mult", reset_less=True)
        if self._shared:
            m.d.comb += [self.prod_a.eq(ready), self.prod_m.eq(mult)]
            prod = self.prod_p
        else:
            prod, lat = wide_multiply(m, platform, ready, mult, "muln",
                                      primitive=self._primitive, a_chunk=self._a_chunk)
            assert lat == self._product_latency
        lead = self._pre + self._product_latency
        shift = delay(m, p.shift, lead, "shift", reset_less=True)
        lo = Signal(signed(spec.bits))
        m.d.comb += lo.eq(Mux(self.relu, self.z, spec.act_min))
        # the scale is below 1 (NARROW_SHIFT_MIN <= shift): the rounding needs only the
        # product's bits from NARROW_SHIFT_MIN - 1 up, shifted by shift - NARROW_SHIFT_MIN
        span = narrow_shift_max(spec) - NARROW_SHIFT_MIN
        minus_one = Signal(max(1, span.bit_length()), reset_less=True)
        m.d.comb += minus_one.eq(shift - NARROW_SHIFT_MIN)
        y, tail = round_shift_clamp(m, prod >> (NARROW_SHIFT_MIN - 1), None, self.z, lo, spec,
                                    "rqn", minus_one=minus_one, held=True)
        _emit(m, self, y, lead + tail)
        return m


def rescale_in_layout(spec: QuantSpec, tag_bits: int = 1) -> data.StructLayout:
    return data.StructLayout({
        "q": signed(spec.bits),  # a requantized value
        "z_in": signed(spec.bits),  # its zero point
        "mult": unsigned(RESCALE_MULT_BITS),
        "shift": unsigned(RESCALE_SHIFT_MAX.bit_length()),
        "tag": unsigned(max(1, tag_bits)),
    })


def rescaler_latency(spec: QuantSpec) -> int:
    """Cycles of :class:`Rescaler`: the subtraction, the product, the rounding."""
    return 1 + multiplier_latency(spec.bits + 1, RESCALE_MULT_BITS) + ROUND_LATENCY


class Rescaler(wiring.Component):
    """The second requantization (``spec.quant.rescale``), one value per cycle:
    ``y = clamp(z_out + round((q - z_in) * mult / 2**shift), min, max)``, ``latency`` cycles
    after ``i``. ``z_in``, ``mult`` and ``shift`` come with each value (a Fire's two expand
    branches have their own); ``z_out`` is the layer's (held while a layer runs)."""

    def __init__(self, spec: QuantSpec, tag_bits: int = 1, *, multipliers: str = "dsp"):
        self._spec = spec
        self._primitive = multipliers == "mult18x18d"
        super().__init__({
            "i": In(stream.Signature(rescale_in_layout(spec, tag_bits), always_ready=True)),
            "o": Out(stream.Signature(result_layout(spec, tag_bits), always_ready=True)),
            "z_out": In(signed(spec.bits)),
        })
        #: cycles from ``i`` to ``o``
        self.latency = rescaler_latency(spec)

    def elaborate(self, platform):
        m = Module()
        spec, p = self._spec, self.i.payload
        d = Signal(signed(spec.bits + 1), reset_less=True)
        m.d.sync += d.eq(p.q - p.z_in)
        prod, mul_lat = wide_multiply(m, platform, d,
                                      delay(m, p.mult, 1, "mult", reset_less=True), "mulr",
                                      primitive=self._primitive)
        lead = 1 + mul_lat
        shift = delay(m, p.shift, lead, "shift", reset_less=True)
        lo = Signal(signed(spec.bits))
        m.d.comb += lo.eq(spec.act_min)
        y, tail = round_shift_clamp(m, prod, shift, self.z_out, lo, spec, "rs")
        _emit(m, self, y, lead + tail)
        return m


def bypass_in_layout(spec: QuantSpec, tag_bits: int = 1) -> data.StructLayout:
    return data.StructLayout({"a": signed(spec.bits), "b": signed(spec.bits),
                              "tag": unsigned(max(1, tag_bits))})


class BypassAdder(wiring.Component):
    """The simple-bypass add: ``clamp(z_out + round((A (a - z_a) + B (b - z_b)) / 2**n))``.

    ``a`` is the Fire output, ``b`` the bypass input; the multipliers, shift and zero points are
    the layer's (held constant while a layer runs).

    With ``lend`` (DSP multipliers only), its two products also serve two
    :class:`NarrowRequantizer` lanes while ``alt`` is set (a convolution run, which has no
    bypass): each product is then ``alt_a[k] * alt_m[k]``, on ``alt_p[k]``
    ``NARROW_PRODUCT_LATENCY`` cycles later. Its 9-bit operand widened to 25 bits leaves each
    product two DSP48E1s, so the lanes cost no multiplier block.
    """

    def __init__(self, spec: QuantSpec, tag_bits: int = 1, *, multipliers: str = "dsp",
                 lend: bool = False):
        self._spec = spec
        self._primitive = multipliers == "mult18x18d"
        self._lend = lend
        assert not lend or multipliers == "dsp"
        b = spec.bits
        members = {
            "i": In(stream.Signature(bypass_in_layout(spec, tag_bits), always_ready=True)),
            "o": Out(stream.Signature(result_layout(spec, tag_bits), always_ready=True)),
            "z_a": In(signed(b)), "z_b": In(signed(b)), "z_out": In(signed(b)),
            "mult_a": In(MULT_BITS - 1), "mult_b": In(MULT_BITS - 1),
            "shift": In(SHIFT_MAX.bit_length()),
        }
        if lend:
            members.update({
                "alt": In(1),
                "alt_a": In(data.ArrayLayout(signed(NARROW_BITS), 2)),
                "alt_m": In(data.ArrayLayout(MULT_BITS - 1, 2)),
                "alt_p": Out(data.ArrayLayout(signed(NARROW_PRODUCT_BITS), 2)),
            })
        super().__init__(members)
        #: cycles from ``i`` to ``o``
        self.latency = 2 + multiplier_latency(b + 1, MULT_BITS - 1) + ROUND_LATENCY
        if lend:
            assert NARROW_PRODUCT_LATENCY == multiplier_latency(b + 1, MULT_BITS - 1)

    def elaborate(self, platform):
        m = Module()
        spec, p = self._spec, self.i.payload
        da = Signal(signed(spec.bits + 1), reset_less=True)
        db = Signal(signed(spec.bits + 1), reset_less=True)
        m.d.sync += [da.eq(p.a - self.z_a), db.eq(p.b - self.z_b)]
        if self._lend:
            # the operands chosen before the DSPs' input registers; a bypass product fits
            # the 41 bits it always had
            width = spec.bits + 1 + MULT_BITS
            pa, lat = wide_multiply(m, platform, Mux(self.alt, self.alt_a[0], da),
                                    Mux(self.alt, self.alt_m[0], self.mult_a), "mula",
                                    a_chunk=NARROW_BITS)
            pb, _ = wide_multiply(m, platform, Mux(self.alt, self.alt_a[1], db),
                                  Mux(self.alt, self.alt_m[1], self.mult_b), "mulb",
                                  a_chunk=NARROW_BITS)
            m.d.comb += [self.alt_p[0].eq(pa), self.alt_p[1].eq(pb)]
            pa, pb = pa[:width].as_signed(), pb[:width].as_signed()
        else:
            pa, lat = wide_multiply(m, platform, da, self.mult_a, "mula",
                                    primitive=self._primitive)
            pb, _ = wide_multiply(m, platform, db, self.mult_b, "mulb",
                                  primitive=self._primitive)
        total = Signal(signed(len(pa) + 1), reset_less=True)
        m.d.sync += total.eq(pa + pb)
        lead = 1 + lat + 1
        lo = Signal(signed(spec.bits))
        m.d.comb += lo.eq(spec.act_min)
        y, tail = round_shift_clamp(m, total, self.shift, self.z_out, lo, spec, "byp")
        _emit(m, self, y, lead + tail)
        return m
