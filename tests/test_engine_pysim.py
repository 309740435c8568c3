"""The whole Fire engine in the Amaranth simulator on tiny layers (fast feedback; the full
coverage runs on the generated Verilog under cocotb)."""

import numpy as np
from amaranth.sim import Simulator

from hw.engine import FireEngine
from hw.params import EngineParams
from sim.fire_cases import random_fire, random_input
from sw import ops
from sw.tiling import FirePlan, Shape, lanes_to_ints

SMALL = EngineParams(bits=8, ic_lanes=2, oc_lanes=3, max_h=6, max_w=5, max_cin=8,
                     max_squeeze=4, max_e1=6, max_e3=6, weight_depth=48, squeeze_depth=80,
                     bypass=True)


def run_engine(params, plan, layer, x, *, gaps=0.0, seed=0):
    rng = np.random.default_rng(seed)
    dut = FireEngine(params)
    outputs = [[] for _ in plan.tiles]
    done = []

    async def put(ctx, stream, payload):
        while rng.random() < gaps:
            await ctx.tick()
        target = stream.payload
        if isinstance(payload, int) and hasattr(target, "as_value"):
            target = target.as_value()  # a packed struct, set as its raw bits
        ctx.set(target, payload)
        ctx.set(stream.valid, 1)
        await ctx.tick().until(stream.ready)
        ctx.set(stream.valid, 0)

    async def driver(ctx):
        for t, tile in enumerate(plan.tiles):
            await put(ctx, dut.cfg, plan.config(tile, layer, load=True, compute=True))
            for row in lanes_to_ints(plan.weight_rows(tile, layer), params.bits):
                await put(ctx, dut.weights, row)
            for q in plan.qparams(tile, layer):
                await put(ctx, dut.qparams, q)
            if tile.squeeze:
                for word in plan.input_words(x):
                    await put(ctx, dut.input, [int(v) for v in word])
            if plan.bypass:
                for v in plan.bypass_values(tile, x):
                    await put(ctx, dut.bypass, int(v))
            n = int(np.prod(plan.tile_output_shape(tile)))
            while len(outputs[t]) < n:
                await ctx.tick()
            await ctx.tick().until(~dut.busy)
            done.append((ctx.get(dut.error), ctx.get(dut.cycles)))

    async def sink(ctx):
        t = 0
        ctx.set(dut.output.ready, 1)
        while True:
            ctx.set(dut.output.ready, int(rng.random() >= gaps))
            await ctx.tick()
            if ctx.get(dut.output.valid) and ctx.get(dut.output.ready):
                while len(outputs[t]) == int(np.prod(plan.tile_output_shape(plan.tiles[t]))):
                    t += 1
                outputs[t].append(ctx.get(dut.output.payload))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(driver)
    sim.add_testbench(sink, background=True)
    sim.run_until(2e-3)
    return plan.assemble(outputs), done


def test_tiny_layer_single_tile():
    rng = np.random.default_rng(1)
    layer = random_fire(rng, 5, 3, 4, 5)
    x = random_input(rng, 4, 3, 5)
    plan = FirePlan(SMALL, Shape(4, 3, 5, 3, 4, 5))
    assert len(plan.tiles) == 1
    got, done = run_engine(SMALL, plan, layer, x)
    np.testing.assert_array_equal(got, ops.fire(x, layer))
    assert done[0][0] == 0 and done[0][1] > 0
