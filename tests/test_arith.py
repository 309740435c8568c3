"""Amaranth-simulator tests of the requantizer and bypass adder against ``sw.quant``."""

import numpy as np
import pytest
from amaranth.sim import Simulator

from hw.arith import BypassAdder, Requantizer
from sw import ops
from sw.quant import QuantSpec, requantize


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

    def set_inputs(ctx, item):
        a, b, mu, sh, zz, r, h = (int(v) for v in item)
        p = dut.i.payload
        ctx.set(p.hi, h)
        ctx.set(p.acc, a)
        ctx.set(p.bias, b)
        ctx.set(p.mult, mu)
        ctx.set(p.shift, sh)
        ctx.set(p.z, zz)
        ctx.set(p.relu, r)

    out = run_pipeline(dut, items, set_inputs)
    assert [t for t, _ in out] == list(range(n_items))
    want = [int(requantize(np.array([int(a) + int(b)]), int(mu), int(sh), int(zz),
                           relu=bool(r), spec=spec, hi=int(h))[0])
            for a, b, mu, sh, zz, r, h in items]
    np.testing.assert_array_equal([y for _, y in out], want)


def test_bypass_adder_matches_golden():
    spec = QuantSpec(8)
    rng = np.random.default_rng(3)
    params = ops.AddParams(z_a=-100, z_b=-90, mult_a=1_500_000_000, mult_b=987_654_321,
                           shift=31, z_out=-120)
    a = rng.integers(-128, 128, 200)
    b = rng.integers(-128, 128, 200)
    dut = BypassAdder(spec, tag_bits=16)

    def set_inputs(ctx, item):
        ctx.set(dut.i.payload.a, int(item[0]))
        ctx.set(dut.i.payload.b, int(item[1]))
        for name in ("z_a", "z_b", "z_out", "mult_a", "mult_b", "shift"):
            ctx.set(getattr(dut, name), getattr(params, name))

    out = run_pipeline(dut, list(zip(a, b, strict=True)), set_inputs)
    assert [t for t, _ in out] == list(range(200))
    np.testing.assert_array_equal([y for _, y in out], ops.add(a, b, params, spec))
