"""Amaranth-simulator tests of the requantizer and bypass adder against ``spec.quant``."""

import math
from fractions import Fraction

import numpy as np
import pytest
from amaranth.hdl import Fragment
from amaranth.sim import Simulator
from amaranth_boards.ulx3s import ULX3S_85F_Platform
from rtl import count_instances, registers_with_reset, stream_ports

from hw.arith import (
    CHUNK,
    BypassAdder,
    NarrowRequantizer,
    Requantizer,
    requantizer_latency,
)
from spec.quant import (
    MULT_BITS,
    NARROW_BITS,
    NARROW_SHIFT_MIN,
    QuantSpec,
    narrow_ok,
    narrow_shift_max,
    requantize,
)
from sw import ops


def requant_inputs(dut):
    """Drive the requantizer's input payload from ``(acc, bias, mult, shift, z, relu, hi)``."""
    def set_inputs(ctx, item):
        a, b, mu, sh, zz, r, h = (int(v) for v in item)
        p = dut.i.payload
        ctx.set(p.acc, a)
        ctx.set(p.bias, b)
        ctx.set(p.mult, mu)
        ctx.set(p.shift, sh)
        ctx.set(p.z, zz)
        ctx.set(p.relu, r)
        ctx.set(p.hi, h)
    return set_inputs


def add_inputs(dut, params):
    """Drive the bypass adder: ``(a, b, ...)`` items on its stream, ``params`` (AddParams) on
    its parameter ports."""
    def set_inputs(ctx, item):
        ctx.set(dut.i.payload.a, int(item[0]))
        ctx.set(dut.i.payload.b, int(item[1]))
        for name in ("z_a", "z_b", "z_out", "mult_a", "mult_b", "shift"):
            ctx.set(getattr(dut, name), getattr(params, name))
    return set_inputs


def run_pipeline(dut, inputs, set_inputs):
    """Feed one input per cycle into an always-ready pipeline; collect (tag, y) in order."""
    out = []

    async def bench(ctx):
        for k, item in enumerate(inputs):
            set_inputs(ctx, item)
            ctx.set(dut.i.valid, 1)
            ctx.set(dut.i.payload.tag, k)
            await ctx.tick()
            if ctx.get(dut.o.valid):
                out.append((ctx.get(dut.o.payload.tag), ctx.get(dut.o.payload.y)))
        ctx.set(dut.i.valid, 0)
        for _ in range(dut.latency + 2):
            await ctx.tick()
            if ctx.get(dut.o.valid):
                out.append((ctx.get(dut.o.payload.tag), ctx.get(dut.o.payload.y)))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return out


@pytest.mark.parametrize("bits", [4, 8, 16])
def test_requantizer_matches_golden(bits):
    spec = QuantSpec(bits)
    acc_bits = spec.acc_bits(9 * 64)
    rng = np.random.default_rng(bits)
    n_items = 300
    lim = 1 << (acc_bits - 2)
    acc = np.concatenate([rng.integers(-lim, lim, n_items - 6),
                          [lim - 1, -lim, 0, 1, -1, 5]])
    bias = rng.integers(spec.bias_min, spec.bias_max, n_items) >> rng.integers(0, 30, n_items)
    mult = rng.integers(0, 2**31, n_items)
    shift = rng.integers(1, 64, n_items)
    z = rng.integers(spec.act_min, spec.act_max + 1, n_items)
    relu = rng.integers(0, 2, n_items)
    # the ceiling: mostly the largest activation, sometimes lower (down to the zero point)
    hi = np.where(rng.random(n_items) < 0.7, spec.act_max,
                  rng.integers(0, spec.act_max + 1, n_items) + np.minimum(z, 0) // 2)
    hi = np.maximum(hi, np.where(relu == 1, z, spec.act_min))
    items = list(zip(acc, bias, mult, shift, z, relu, hi, strict=True))
    dut = Requantizer(spec, acc_bits, tag_bits=16)
    out = run_pipeline(dut, items, requant_inputs(dut))
    assert [t for t, _ in out] == list(range(n_items))
    want = [int(requantize(np.array([int(a) + int(b)]), int(mu), int(sh), int(zz),
                           relu=bool(r), spec=spec, hi=int(h))[0])
            for a, b, mu, sh, zz, r, h in items]
    np.testing.assert_array_equal([y for _, y in out], want)


@pytest.mark.parametrize("bits", [4, 8, 16])
def test_bypass_adder_matches_golden(bits):
    spec = QuantSpec(bits)
    rng = np.random.default_rng(3)
    low = spec.act_min
    params = ops.AddParams(z_a=low * 100 // 128, z_b=low * 90 // 128, mult_a=1_500_000_000,
                           mult_b=987_654_321, shift=31, z_out=low * 120 // 128)
    a = rng.integers(spec.act_min, spec.act_max + 1, 200)
    b = rng.integers(spec.act_min, spec.act_max + 1, 200)
    a[:4], b[:4] = [spec.act_min, spec.act_max, spec.act_min, spec.act_max], [
        spec.act_min, spec.act_max, spec.act_max, spec.act_min]
    dut = BypassAdder(spec, tag_bits=16)
    out = run_pipeline(dut, list(zip(a, b, strict=True)), add_inputs(dut, params))
    assert [t for t, _ in out] == list(range(200))
    want = ops.add(a, b, params, spec)
    np.testing.assert_array_equal([y for _, y in out], want)
    assert len(set(want.tolist())) > min(20, 2 ** (bits - 1)) and want.min() == spec.act_min


def exact_round_half_up(num: int, shift: int) -> int:
    """``round(num / 2**shift)``, ties toward +infinity, computed with fractions (independent
    of ``spec.quant``)."""
    return math.floor(Fraction(num, 2**shift) + Fraction(1, 2))


#: shifts the tie vectors cover: every one up to 31, then a few up to the largest
TIE_SHIFTS = list(range(1, 32)) + [33, 40, 47, 55, 63]


def requant_ties(spec: QuantSpec, acc_bits: int):
    """Requantizer inputs ``(bias, acc, mult, shift, z, relu, hi)`` whose exact result lies
    halfway between two integers inside the output range (no clamping): positive and negative
    ties at every shift, and the sums one LSB either side of each tie."""
    rng = np.random.default_rng(spec.bits + 100)
    acc_lim = 1 << (acc_bits - 1)
    items = []
    for n in TIE_SHIFTS:
        # v * m = odd * 2**(n-1): the power of two is split between the multiplier (at most
        # 2**30: it has 31 bits) and the sum v = acc + bias (the rest)
        m_pow = min(n - 1, 30)
        v_pow = n - 1 - m_pow
        for _ in range(4):
            odd_m = int(rng.choice([1, 3, 5])) if m_pow <= 28 else 1
            mult = odd_m << m_pow
            # odd_v * odd_m = 2t + 1: the tie between t and t + 1, both in range after z
            reach = spec.act_max // odd_m
            odd_v = 2 * int(rng.integers(-(reach // 2) - 1, reach // 2 + 1)) + 1
            if abs(odd_v << v_pow) >= acc_lim:
                odd_v = 1 if odd_v > 0 else -1  # the sum must fit the accumulator and bias
            t = (odd_v * odd_m - 1) // 2
            z = int(rng.integers(max(spec.act_min, spec.act_min - t),
                                 min(spec.act_max, spec.act_max - t - 1) + 1))
            v = odd_v << v_pow
            # split v into an accumulator and a bias, each within its width
            acc = int(rng.integers(max(-acc_lim, v - spec.bias_max + 1),
                                   min(acc_lim - 1, v - spec.bias_min - 1) + 1))
            for delta in (0, 1, -1):  # the tie itself, then the sums either side of it
                items.append((v + delta - acc, acc, mult, n, z, 0, spec.act_max))
    return items


@pytest.mark.parametrize("bits", [4, 8, 16])
def test_requantizer_rounds_exact_ties_half_up(bits):
    """Round half up means toward +infinity (2.5 -> 3, -2.5 -> -2), at every shift: exact
    ties inside the output range, which random vectors practically never hit."""
    spec = QuantSpec(bits)
    acc_bits = spec.acc_bits(9 * 64)
    items = requant_ties(spec, acc_bits)
    # hand-picked: 2**30 / 2**31 is one half, so odd sums are ties; 5/2 -> 3, -5/2 -> -2
    items += [(a, 0, 2**30, 31, 0, 0, spec.act_max) for a in (5, -5, 1, -1, 3, -3)]
    ties = [it for it in items
            if (it[0] + it[1]) * it[2] % 2 ** it[3] == 2 ** (it[3] - 1)]
    assert len(ties) >= 100 and sum((b + a) < 0 for b, a, *_ in ties) >= 30
    assert {it[3] for it in ties} == set(TIE_SHIFTS)
    want = []
    for b, a, mu, sh, zz, _, _ in items:
        y = zz + exact_round_half_up((a + b) * mu, sh)
        if (b, a, mu, sh, zz, 0, spec.act_max) in ties:
            assert spec.act_min <= y <= spec.act_max, "a tie vector was clamped"
        want.append(min(max(y, spec.act_min), spec.act_max))
    assert want[-6:] == [3, -2, 1, 0, 2, -1]
    # the golden model agrees with the exact rational rounding ...
    golden = [int(requantize(np.array([a + b]), mu, sh, zz, relu=False, spec=spec)[0])
              for b, a, mu, sh, zz, _, _ in items]
    np.testing.assert_array_equal(golden, want)
    # ... and so does the gateware
    dut = Requantizer(spec, acc_bits, tag_bits=16)
    out = run_pipeline(dut, [(a, b, mu, sh, zz, r, h) for b, a, mu, sh, zz, r, h in items],
                       requant_inputs(dut))
    assert [t for t, _ in out] == list(range(len(items)))
    np.testing.assert_array_equal([y for _, y in out], want)


@pytest.mark.parametrize("mult_a,mult_b,shift", [
    (2**30, 2**30, 31),  # (da + db) / 2: every odd sum is a tie
    (3 * 2**28, 2**28, 30),  # (3 da + db) / 4
    (1, 1, 1),  # the smallest shift
    (5, 3, 3),  # (5 da + 3 db) / 8
])
def test_bypass_adder_rounds_exact_ties_half_up(mult_a, mult_b, shift):
    """The bypass add's rounding at exact ties, positive and negative, not clamped."""
    spec = QuantSpec(8)
    params = ops.AddParams(z_a=-3, z_b=7, mult_a=mult_a, mult_b=mult_b, shift=shift,
                           z_out=-2)
    items = []
    for a in range(-40, 41):
        for b in range(-40, 41):
            total = (a - params.z_a) * mult_a + (b - params.z_b) * mult_b
            y = params.z_out + exact_round_half_up(total, shift)
            if total % 2**shift == 2 ** (shift - 1) and spec.act_min < y < spec.act_max:
                items.append((a, b, y))
    rng = np.random.default_rng(shift)
    items = [items[k] for k in sorted(rng.choice(len(items), 150, replace=False))]
    want = [y for _, _, y in items]
    assert sum(y - params.z_out <= 0 for y in want) >= 30  # negative ties (and -0.5 -> 0)
    a = np.array([a for a, _, _ in items])
    b = np.array([b for _, b, _ in items])
    np.testing.assert_array_equal(ops.add(a, b, params, spec), want)  # the golden model
    dut = BypassAdder(spec, tag_bits=16)
    out = run_pipeline(dut, items, add_inputs(dut, params))
    assert [t for t, _ in out] == list(range(len(items)))
    np.testing.assert_array_equal([y for _, y in out], want)


def bypass_ports(dut):
    return stream_ports(dut.i, dut.o) + [dut.z_a, dut.z_b, dut.z_out, dut.mult_a, dut.mult_b,
                                         dut.shift]


def pipelines(bits, multipliers="dsp"):
    spec = QuantSpec(bits)
    rq = Requantizer(spec, spec.acc_bits(9 * 64), tag_bits=3, multipliers=multipliers)
    byp = BypassAdder(spec, tag_bits=3, multipliers=multipliers)
    return [(rq, stream_ports(rq.i, rq.o)), (byp, bypass_ports(byp))]


@pytest.mark.parametrize("bits", [4, 16])
def test_only_the_valid_bits_have_a_reset(bits):
    """docs/engine.md: datapath registers have no reset, only valid and control bits."""
    for dut, ports in pipelines(bits):
        chain = {f"valid_{k}" for k in range(dut.latency - 1)} | {"o__valid"}
        assert registers_with_reset(dut, ports) == chain, type(dut).__name__


def chunks(width: int) -> int:
    return -(-width // CHUNK)


@pytest.mark.parametrize("bits", [8, 16])
def test_ecp5_builds_use_registered_mult18x18d_blocks(bits):
    """With ``multipliers="mult18x18d"`` on an ECP5 every partial product is a MULT18X18D
    (yosys would leave a multiplier combinational); the generic form instantiates none."""
    spec = QuantSpec(bits)
    v_bits = max(spec.acc_bits(9 * 64), spec.bias_bits) + 1
    per_multiplier = {Requantizer: chunks(v_bits) * chunks(MULT_BITS - 1),
                      BypassAdder: 2 * chunks(bits + 1) * chunks(MULT_BITS - 1)}
    for style in ("mult18x18d", "dsp"):
        for dut, ports in pipelines(bits, style):
            want = per_multiplier[type(dut)] if style == "mult18x18d" else 0
            got = count_instances(dut, ULX3S_85F_Platform(), ports, "MULT18X18D")
            assert got == want, (type(dut).__name__, style)


def test_pipelines_take_no_backpressure():
    """Fixed-latency pipelines: their streams are always ready (the engine reserves room for
    every result before it issues the work)."""
    for dut, _ in pipelines(8):
        for name in ("i", "o"):
            assert dut.signature.members[name].signature.always_ready, name
        Fragment.get(dut, None)  # (elaborated, as every Elaboratable made must be)


def narrow_cases(spec, acc_bits, rng, n_random, shift_of):
    """Sums ``acc + bias`` at and around the narrow lanes' saturation edges (+-2**24, one
    either side), at zero, and random ones up to the accumulator's width, with multipliers
    at both ends of the normalized range and the given shifts."""
    top = 1 << (NARROW_BITS - 1)
    lim = 1 << (acc_bits - 2)  # sums the engine's accumulator and bias can make
    edges = [top - 2, top - 1, top, top + 1, -top - 1, -top, -top + 1, 0, 1, -1, lim, -lim]
    v = np.concatenate([np.repeat(edges, 4), rng.integers(-lim, lim, n_random)
                        >> rng.integers(0, acc_bits - 2, n_random)])
    n = len(v)
    bias = rng.integers(-(1 << 20), 1 << 20, n)
    mult = np.where(np.arange(n) % 2 == 0, 1 << 30, (1 << 31) - 1)
    mult = np.where(np.arange(n) % 3 == 2, rng.integers(1 << 30, 1 << 31, n), mult)
    shift = shift_of(rng, n)
    z = np.where(np.arange(n) % 4 < 2, spec.act_min, spec.act_max)
    z = np.where(np.arange(n) % 5 == 4, rng.integers(spec.act_min, spec.act_max + 1, n), z)
    relu = (np.arange(n) // 2) % 2
    hi = np.full(n, spec.act_max)
    return list(zip(v - bias, bias, mult, shift, z, relu, hi, strict=True))


def golden_requant(items, spec):
    return [int(requantize(np.array([int(a) + int(b)]), int(mu), int(sh), int(zz),
                           relu=bool(r), spec=spec, hi=int(h))[0])
            for a, b, mu, sh, zz, r, h in items]


@pytest.mark.parametrize("bits", [8, 16])
@pytest.mark.parametrize("multipliers", ["dsp", "mult18x18d"])
def test_narrow_requantizer_is_exact_up_to_its_shift_limit(bits, multipliers):
    """The narrow lane (acc + bias saturated to 25 bits) gives the full requantizer's result
    for every normalized multiplier and every shift from ``NARROW_SHIFT_MIN`` to
    ``narrow_shift_max``, at the
    saturation edges (+-2**24 and one either side) and beyond; one shift further, with the
    multiplier at its smallest, the saturated value would not clamp: the limit is tight."""
    spec = QuantSpec(bits)
    acc_bits = spec.acc_bits(9 * 64)
    limit = narrow_shift_max(spec)
    rng = np.random.default_rng(bits)
    items = narrow_cases(spec, acc_bits, rng, 200,
                         lambda rng, n: np.where(np.arange(n) % 2 == 0, limit,
                                                 rng.integers(NARROW_SHIFT_MIN, limit + 1,
                                                              n)))
    # z and relu are the run's: one simulation each
    for z, relu in ((spec.act_min, 0), (spec.act_max, 1), (3, 1), (-5, 0)):
        dut = NarrowRequantizer(spec, acc_bits, tag_bits=16,
                                latency=requantizer_latency(spec, acc_bits),
                                multipliers=multipliers)
        run = [(a, b, mu, sh, z, relu, spec.act_max) for a, b, mu, sh, _, _, _ in items]

        def set_inputs(ctx, item, dut=dut, z=z, relu=relu):
            a, b, mu, sh = (int(v) for v in item[:4])
            ctx.set(dut.i.payload.acc, a)
            ctx.set(dut.i.payload.bias, b)
            ctx.set(dut.i.payload.mult, mu)
            ctx.set(dut.i.payload.shift, sh)
            ctx.set(dut.z, z)
            ctx.set(dut.relu, relu)

        out = run_pipeline(dut, run, set_inputs)
        assert [t for t, _ in out] == list(range(len(run)))
        np.testing.assert_array_equal([y for _, y in out], golden_requant(run, spec),
                                      f"z={z}, relu={relu}")
    # the bound is tight: just past 2**24 at shift limit + 1, the exact result is not clamped
    top = 1 << (NARROW_BITS - 1)
    v = -(top + (1 << 22))
    exact = int(requantize(np.array([v]), 1 << 30, limit + 1, 0, relu=False, spec=spec)[0])
    saturated = int(requantize(np.array([-top]), 1 << 30, limit + 1, 0, relu=False,
                               spec=spec)[0])
    assert exact == spec.act_min and saturated == spec.act_min  # both clamp here, but
    v_hi = top + (1 << 22)
    assert int(requantize(np.array([v_hi]), 1 << 30, limit + 2, spec.act_min, relu=False,
                          spec=spec)[0]) != int(requantize(np.array([top - 1]), 1 << 30,
                                                           limit + 2, spec.act_min,
                                                           relu=False, spec=spec)[0])


def test_narrow_ok_checks_every_channel():
    """``narrow_ok``: every multiplier's top bit set and every shift within the limits."""
    spec = QuantSpec(8)
    limit = narrow_shift_max(spec)
    assert limit == 46 and NARROW_SHIFT_MIN == 31
    assert narrow_ok([1 << 30, (1 << 31) - 1], [31, limit], spec)
    assert not narrow_ok([1 << 30, (1 << 30) - 1], [31, 32], spec)
    assert not narrow_ok([1 << 30, 1 << 30], [limit + 1, 32], spec)
    assert not narrow_ok([1 << 30, 1 << 30], [40, 30], spec)
