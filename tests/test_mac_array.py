"""Amaranth-simulator tests of the MAC array: dot products with zero points, padding, gaps."""

import numpy as np
import pytest
from amaranth.sim import Simulator

from hw.mac_array import MULTIPLIERS, MacArray
from spec.params import EngineParams


@pytest.mark.parametrize("multipliers", MULTIPLIERS)
@pytest.mark.parametrize("params", [
    EngineParams(bits=8, ic_lanes=4, oc_lanes=3, max_h=4, max_w=4, max_cin=16,
                 max_squeeze=8, max_e1=8, max_e3=8, weight_depth=64, squeeze_depth=64),
    EngineParams(bits=4, ic_lanes=1, oc_lanes=2, max_h=4, max_w=4, max_cin=8,
                 max_squeeze=4, max_e1=4, max_e3=4, weight_depth=64, squeeze_depth=64),
    EngineParams(bits=16, ic_lanes=2, oc_lanes=1, max_h=4, max_w=4, max_cin=8,
                 max_squeeze=4, max_e1=4, max_e3=4, weight_depth=64, squeeze_depth=64),
], ids=["int8-4x3", "int4-1x2", "int16-2x1"])
def test_reductions_with_gaps(params, multipliers):
    spec = params.spec
    rng = np.random.default_rng(params.bits)
    ic, oc = params.ic_lanes, params.oc_lanes
    reductions = []
    for r in range(12):
        length = int(rng.integers(1, 7))
        act = rng.integers(spec.act_min, spec.act_max + 1, (length, ic))
        if r == 3:
            act[:] = spec.act_min  # extremes
        w = rng.integers(-spec.weight_max, spec.weight_max + 1, (length, oc, ic))
        if r == 3:
            w[:] = spec.weight_max
        z = int(rng.integers(spec.act_min, spec.act_max + 1)) if r != 3 else spec.act_max
        pad = rng.integers(0, 2, length).astype(bool)
        want = np.einsum("li,loi->o", np.where(pad[:, None], 0, act - z), w)
        reductions.append((act, w, z, pad, want))
    dut = MacArray(params, tag_bits=8, multipliers=multipliers)
    got = []

    async def bench(ctx):
        for tag, (act, w, z, pad, _) in enumerate(reductions):
            for k in range(len(act)):
                while rng.random() < 0.3:  # idle cycles inside and between reductions
                    ctx.set(dut.i.valid, 0)
                    ctx.set(dut.i.payload.first, int(rng.integers(0, 2)))
                    await ctx.tick()
                p = dut.i.payload
                ctx.set(dut.i.valid, 1)
                for i in range(ic):
                    ctx.set(p.act[i], int(act[k, i]))
                    for o in range(oc):
                        ctx.set(p.weights[o][i], int(w[k, o, i]))
                ctx.set(p.z, z)
                ctx.set(p.pad, int(pad[k]))
                ctx.set(p.first, int(k == 0))
                ctx.set(p.last, int(k == len(act) - 1))
                ctx.set(p.tag, tag)
                await ctx.tick()
        ctx.set(dut.i.valid, 0)
        for _ in range(dut.latency + 2):
            await ctx.tick()

    async def monitor(ctx):
        async for _, _, o_valid, acc, tag in ctx.tick().sample(dut.o.valid, dut.o.payload.acc,
                                                                 dut.o.payload.tag):
            if o_valid:
                got.append((tag, [acc[o] for o in range(oc)]))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.add_testbench(monitor, background=True)
    sim.run()
    assert [t for t, _ in got] == list(range(len(reductions)))
    for (_, acc), (*_, want) in zip(got, reductions, strict=True):
        np.testing.assert_array_equal(acc, want)
