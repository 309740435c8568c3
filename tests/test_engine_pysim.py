"""The whole Fire engine in the Amaranth simulator on tiny layers (fast feedback; the full
coverage runs on the generated Verilog under cocotb)."""

import numpy as np
from amaranth.sim import Simulator

from hw.engine import FireEngine
from sim.fire_cases import random_fire, random_input
from spec.params import ConfigError, EngineParams, pack_config
from spec.tiling import FirePlan, Shape, lanes_to_ints
from sw import ops

SMALL = EngineParams(bits=8, ic_lanes=2, oc_lanes=3, max_h=6, max_w=5, max_cin=8,
                     max_squeeze=4, max_e1=6, max_e3=6, weight_depth=48, squeeze_depth=80,
                     bypass=True)


def run_engine(params, plan, layer, x, *, gaps=0.0, seed=0, prelude=None):
    """Run every tile of ``plan``; ``prelude(ctx, dut, put)``, when given, runs first in the
    same simulation (the engine is not reset between them)."""
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
        name = next(n for n in ("cfg", "weights", "qparams", "input", "bypass")
                    if getattr(dut, n, None) is stream)
        await wait(ctx, lambda: ctx.get(stream.ready), f"ready on {name}")
        await ctx.tick()
        ctx.set(stream.valid, 0)

    async def driver(ctx):
        if prelude is not None:
            await prelude(ctx, dut, put)
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
            await wait(ctx, lambda t=t, n=n: len(outputs[t]) >= n, f"tile {t}'s {n} outputs")
            await wait(ctx, lambda: not ctx.get(dut.busy), "the end of the run")
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
    sim.run()  # until the driver is done (each of its waits is bounded)
    return plan.assemble(outputs), done


async def wait(ctx, condition, what: str, limit: int = 20_000):
    """Tick until ``condition()`` holds (checked before each tick); fail after ``limit``."""
    for _ in range(limit):
        if condition():
            return
        await ctx.tick()
    raise AssertionError(f"no {what} within {limit} cycles")


def test_tiny_layer_single_tile():
    rng = np.random.default_rng(1)
    layer = random_fire(rng, 5, 3, 4, 5)
    x = random_input(rng, 4, 3, 5)
    plan = FirePlan(SMALL, Shape(4, 3, 5, 3, 4, 5))
    assert len(plan.tiles) == 1
    got, done = run_engine(SMALL, plan, layer, x)
    np.testing.assert_array_equal(got, ops.fire(x, layer))
    assert done[0][0] == 0 and done[0][1] > 0


OK = dict(h=2, w=2, cin=4, s=2, e1=2, e3=2, z_in=0, z_sq=0, z_out=0)
P = SMALL
#: every dimension one past its maximum (and h, w, cin, s at zero), with the error the engine
#: must give
REFUSED = [
    (dict(h=P.max_h + 1), ConfigError.H), (dict(h=0), ConfigError.H),
    (dict(w=P.max_w + 1), ConfigError.W), (dict(w=0), ConfigError.W),
    (dict(cin=P.max_cin + 1), ConfigError.CIN), (dict(cin=0), ConfigError.CIN),
    (dict(s=P.max_squeeze + 1), ConfigError.SQUEEZE), (dict(s=0), ConfigError.SQUEEZE),
    (dict(e1=P.max_e1 + 1), ConfigError.E1), (dict(e3=P.max_e3 + 1), ConfigError.E3),
]
#: each dimension at its maximum (and every one at once) passes the dimension checks: a
#: compute-only run then fails later, for want of loaded weights
AT_MAXIMUM = [dict(h=P.max_h), dict(w=P.max_w), dict(cin=P.max_cin), dict(s=P.max_squeeze),
              dict(e1=P.max_e1), dict(e3=P.max_e3),
              dict(h=P.max_h, w=P.max_w, cin=P.max_cin, s=P.max_squeeze, e1=P.max_e1,
                   e3=P.max_e3)]


def test_every_dimension_beyond_its_maximum_is_refused():
    """One past the maximum in each of h, w, cin, s, e1, e3 (and zero in h, w, cin, s) is
    refused with that dimension's error, answered within 2000 cycles; exactly the maximum is
    not. The engine stays ready and then computes a layer correctly."""
    got = []

    async def refusals(ctx, dut, put):
        # compute-only: a dimension check that let one through would answer NOT_LOADED
        cases = [(dict(OK, load=0, compute=1, squeeze=1, **c), code) for c, code in REFUSED]
        cases += [(dict(OK, load=0, compute=1, squeeze=1, **c), ConfigError.NOT_LOADED)
                  for c in AT_MAXIMUM]
        # and as the driver sends it (load and compute): refused before any weight is taken
        cases.append((dict(OK, load=1, compute=1, squeeze=1, w=P.max_w + 1), ConfigError.W))
        for fields, code in cases:
            runs = ctx.get(dut.runs)
            await put(ctx, dut.cfg, pack_config(P, **fields))
            for _ in range(2000):  # sizes and checks take a few hundred cycles
                if ctx.get(dut.runs) != runs:
                    break
                await ctx.tick()
            assert ctx.get(dut.runs) == runs + 1, f"{fields}: accepted (no answer)"
            error = ctx.get(dut.error)
            assert error == code, f"{fields}: expected {code.name}, got {ConfigError(error).name}"
            assert not ctx.get(dut.busy)
            got.append(fields)

    rng = np.random.default_rng(2)
    layer = random_fire(rng, 5, 3, 4, 5)
    x = random_input(rng, 4, 3, 5)
    plan = FirePlan(SMALL, Shape(4, 3, 5, 3, 4, 5))
    out, done = run_engine(SMALL, plan, layer, x, prelude=refusals)
    assert len(got) == len(REFUSED) + len(AT_MAXIMUM) + 1
    np.testing.assert_array_equal(out, ops.fire(x, layer))
    assert done[0][0] == 0
