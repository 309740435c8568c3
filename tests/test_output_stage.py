"""Amaranth-simulator tests of the output stage: the bypass join against ``sw.ops.add``,
values in order through both FIFOs under input gaps and output backpressure, and the credits
it returns to the requantizer."""

from __future__ import annotations

import numpy as np
import pytest
from amaranth.sim import Simulator
from streams import randomly, stream_get, stream_put

from hw.output_stage import OutputStage
from spec.params import OUTPUT_FIFO_DEPTH, EngineParams, pack_config
from sw import ops

BYPASS = EngineParams(bits=8, ic_lanes=2, oc_lanes=3, max_h=6, max_w=5, max_cin=8,
                      max_squeeze=4, max_e1=6, max_e3=6, weight_depth=48, squeeze_depth=80,
                      bypass=True)
PLAIN = BYPASS.replace(bypass=False)


def run_stage(p, values, bypass_values, add, *, gaps, stalls, seed):
    """Offer ``values`` as the requantizer does (only with a credit), ``bypass_values`` on
    the bypass stream (when the run adds them), and take the outputs."""
    rng = np.random.default_rng(seed)
    dut = OutputStage(p)
    got = {"out": [], "congested": 0, "most_credits_out": 0, "idle_while_busy": 0}
    layer = dict(h=1, w=1, cin=1, s=1, e1=1, e3=0, z_out=add.z_a if add else 0)
    if add:
        layer.update(bypass=1, byp_z_in=add.z_b, byp_z_out=add.z_out, byp_mult_a=add.mult_a,
                     byp_mult_b=add.mult_b, byp_shift=add.shift)

    async def requantizer(ctx):
        ctx.set(dut.layer.as_value(), pack_config(p, **layer))
        ctx.set(dut.go, 1)
        await ctx.tick()
        ctx.set(dut.go, 0)
        credits, pending = dut.depth, list(values)
        while pending or credits < dut.depth:
            credits += ctx.get(dut.freed)
            send = bool(pending) and credits > 0 and rng.random() >= gaps
            if send:
                ctx.set(dut.i.payload, pending.pop(0))
                credits -= 1
            ctx.set(dut.i.valid, send)
            got["most_credits_out"] = max(got["most_credits_out"], dut.depth - credits)
            got["congested"] += ctx.get(dut.congested)
            await ctx.tick()
        ctx.set(dut.i.valid, 0)

    async def bypass(ctx):
        for b in bypass_values:
            await stream_put(ctx, dut.bypass, b, gaps=randomly(rng, gaps))

    async def sink(ctx):
        for _ in values:
            got["out"].append(await stream_get(ctx, dut.output, stalls=randomly(rng, stalls)))
            got["idle_while_busy"] += ctx.get(dut.idle)
        for _ in range(3):  # the last credit's return
            await ctx.tick()
        got["idle"] = ctx.get(dut.idle)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(requantizer)
    if p.bypass and add:
        sim.add_testbench(bypass)
    sim.add_testbench(sink)
    sim.run()
    return got


ADD = ops.AddParams(z_a=-5, z_b=3, mult_a=1 << 29, mult_b=3 << 28, shift=30, z_out=-2)


@pytest.mark.parametrize("gaps, stalls", [(0.0, 0.0), (0.3, 0.6), (0.0, 0.95)],
                         ids=["full-rate", "gaps-and-backpressure", "stalled-output"])
@pytest.mark.parametrize("p, add", [(BYPASS, ADD), (BYPASS, None), (PLAIN, None)],
                         ids=["bypass-added", "bypass-engine-without", "no-bypass-engine"])
def test_join_and_credits(p, add, gaps, stalls):
    rng = np.random.default_rng(5)
    spec = p.spec
    values = [int(v) for v in rng.integers(spec.act_min, spec.act_max + 1, 150)]
    bypass_values = [int(v) for v in rng.integers(spec.act_min, spec.act_max + 1, 150)]
    got = run_stage(p, values, bypass_values if add else [], add, gaps=gaps, stalls=stalls,
                    seed=6)
    want = ops.add(values, bypass_values, add, spec) if add else values
    # (stream_get returns the raw bits of the signed payload)
    assert [v - (1 << p.bits) if v >= 1 << (p.bits - 1) else v for v in got["out"]] == \
        [int(v) for v in want]
    assert got["idle"], "not idle once every value left and every credit came back"
    assert got["idle_while_busy"] < len(values)
    if stalls > 0.9:
        # the output held everything up: the credits filled the first FIFO, and the stage
        # says it is congested
        assert got["most_credits_out"] == OUTPUT_FIFO_DEPTH
        assert got["congested"] > 0
    if gaps == 0 and stalls == 0:
        assert got["congested"] == 0


@pytest.mark.parametrize("count", [OUTPUT_FIFO_DEPTH // 2, OUTPUT_FIFO_DEPTH // 2 + 1])
def test_congested_when_a_fifo_is_more_than_half_full(count):
    """With the output held, ``count`` values pass into the final FIFO: congested once it
    holds more than half its depth, not before (the first FIFO is empty by then)."""
    dut = OutputStage(PLAIN)
    seen = {}

    async def bench(ctx):
        ctx.set(dut.layer.as_value(), pack_config(PLAIN, h=1, w=1, cin=1, s=1, e1=1, e3=0))
        ctx.set(dut.go, 1)
        await ctx.tick()
        ctx.set(dut.go, 0)
        for v in range(count):
            ctx.set(dut.i.valid, 1)
            ctx.set(dut.i.payload, v)
            await ctx.tick()
        ctx.set(dut.i.valid, 0)
        await ctx.tick().repeat(10)  # into the final FIFO
        seen["congested"] = ctx.get(dut.congested)
        seen["idle"] = ctx.get(dut.idle)
        got = [await stream_get(ctx, dut.output) for _ in range(count)]
        seen["out"] = got

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert seen["congested"] == (count > OUTPUT_FIFO_DEPTH // 2)
    assert not seen["idle"]
    assert seen["out"] == list(range(count))
