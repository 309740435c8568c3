"""The whole Fire engine in the Amaranth simulator on tiny layers (fast feedback; the full
coverage runs on the generated Verilog under cocotb)."""

import dataclasses

import numpy as np
from amaranth.sim import Simulator

from hw.engine import FireEngine
from sim.fire_cases import random_conv, random_fire, random_input
from spec.params import ConfigError, EngineParams, pack_config
from spec.quant import NARROW_SHIFT_MIN, narrow_ok, narrow_shift_max
from spec.tiling import ConvPlan, ConvShape, FirePlan, Shape, lanes_to_ints
from sw import ops

SMALL = EngineParams(bits=8, ic_lanes=2, oc_lanes=3, max_h=6, max_w=5, max_cin=8,
                     max_squeeze=4, max_e1=6, max_e3=6, weight_depth=48, squeeze_depth=80,
                     bypass=True)


def fire_runs(params, plan, layer, x) -> list[dict]:
    """Every tile of a Fire plan as the streams of one run, loading and computing."""
    runs = []
    for tile in plan.tiles:
        runs.append({
            "cfg": plan.config(tile, layer, load=True, compute=True),
            "weights": lanes_to_ints(plan.weight_rows(tile, layer), params.bits),
            "qparams": plan.qparams(tile, layer),
            "input": plan.input_words(x) if tile.squeeze else [],
            "bypass": plan.bypass_values(tile, x) if plan.bypass else [],
            "outputs": int(np.prod(plan.tile_output_shape(tile)))})
    return runs


def conv_runs(params, plan, conv, z_in, x, *, wide=False) -> list[dict]:
    """Every run of a 1x1-convolution plan (a channel block's first run loads)."""
    return [{"cfg": plan.config(run, conv, z_in, wide=wide),
             "weights": lanes_to_ints(plan.weight_rows(run, conv), params.bits)
             if run.load else [],
             "qparams": plan.qparams(run, conv) if run.load else [],
             "input": plan.input_words(run, x), "bypass": [],
             "outputs": plan.run_outputs(run)} for run in plan.runs]


def run_engine(params, plan, layer, x, *, gaps=0.0, seed=0, prelude=None):
    """Run every tile of a Fire ``plan``; ``prelude(ctx, dut, put)``, when given, runs first
    in the same simulation (the engine is not reset between them)."""
    outputs, done = simulate(params, fire_runs(params, plan, layer, x), gaps=gaps, seed=seed,
                             prelude=prelude)
    return plan.assemble(outputs), done


def run_conv_engine(params, plan, conv, z_in, x, *, gaps=0.0, seed=0, prelude=None):
    """Run every run of a 1x1-convolution ``plan``, as :func:`run_engine`."""
    outputs, done = simulate(params, conv_runs(params, plan, conv, z_in, x), gaps=gaps,
                             seed=seed, prelude=prelude)
    return plan.assemble(outputs), done


def simulate(params, runs, *, gaps=0.0, seed=0, prelude=None, wide=False, beats=None,
             lanes=True):
    """Each run's streams one after the other; each run's outputs and (error, cycles).
    ``wide``: take the outputs from ``output_wide``, and append each beat's count to
    ``beats``. ``lanes``: build the engine with its narrow lanes (``FireEngine(wide=)``)."""
    rng = np.random.default_rng(seed)
    dut = FireEngine(params, wide=lanes)
    outputs = [[] for _ in runs]
    done = []
    out = dut.output_wide if wide else dut.output

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
        for t, run in enumerate(runs):
            await put(ctx, dut.cfg, run["cfg"])
            for row in run["weights"]:
                await put(ctx, dut.weights, row)
            for q in run["qparams"]:
                await put(ctx, dut.qparams, q)
            for word in run["input"]:
                await put(ctx, dut.input, [int(v) for v in word])
            for v in run["bypass"]:
                await put(ctx, dut.bypass, int(v))
            n = run["outputs"]
            await wait(ctx, lambda t=t, n=n: len(outputs[t]) >= n, f"run {t}'s {n} outputs")
            await wait(ctx, lambda: not ctx.get(dut.busy), "the end of the run")
            done.append((ctx.get(dut.error), ctx.get(dut.cycles)))

    async def sink(ctx):
        t = 0
        while True:
            ready = rng.random() >= gaps
            ctx.set(out.ready, int(ready))
            # a beat is taken on the clock edge where valid and ready both hold before it
            if ready and ctx.get(out.valid):
                values = [ctx.get(out.payload)]
                if wide:
                    beat = ctx.get(out.payload)
                    values = [beat.values[k] for k in range(beat.count)]
                    beats.append(beat.count)
                for v in values:
                    while len(outputs[t]) == runs[t]["outputs"]:
                        t += 1
                    outputs[t].append(v)
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(driver)
    sim.add_testbench(sink, background=True)
    sim.run()  # until the driver is done (each of its waits is bounded)
    return outputs, done


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


def test_convolutions_past_the_maximum_size_with_and_without_relu():
    """The engine's 1x1-convolution mode: a 7x6 map on a 6x5 engine (blocks of 30 pixels
    configured 6x5, then 2x5 and 1x2), 10 output channels in four channel blocks (only the
    first run of each loads its weights), with ReLU and without, under stream gaps:
    bit-exact with the golden model."""
    for relu in (True, False):
        rng = np.random.default_rng(3 + relu)
        conv, z_in = random_conv(rng, 10, 7, relu=relu)
        x = random_input(rng, 7, 6, 7)
        plan = ConvPlan(SMALL, ConvShape(7, 6, 7, 10), relu=relu)
        assert [(r.h, r.w) for r in plan.runs[:3]] == [(6, 5), (2, 5), (1, 2)]
        assert len(plan.runs) == 12 and sum(r.load for r in plan.runs) == 4
        want = ops.conv2d(x, conv.weight, conv.bias, z_in, conv.rq)
        if not relu:
            assert (want < conv.rq.z_out).any()  # the ReLU would have changed these
        got, done = run_conv_engine(SMALL, plan, conv, z_in, x, gaps=0.2, seed=relu)
        np.testing.assert_array_equal(got, want, f"relu={relu}")
        assert all(error == 0 and cycles > 0 for error, cycles in done)


def test_a_bad_convolution_configuration_is_refused():
    """A convolution run (conv=1) with expand channels, a bypass, a second rounding or no
    input of its own is refused with CONV, answered, the engine ready; then a convolution and
    a Fire layer run bit-exact in the same simulation."""
    ok = dict(h=2, w=2, cin=4, s=2, e1=0, e3=0, load=1, compute=1, squeeze=1, conv=1)
    bad = [dict(ok, e1=1), dict(ok, e3=2), dict(ok, bypass=1, byp_shift=3),
           dict(ok, rescale=1, e1_rs_shift=3, e3_rs_shift=3), dict(ok, squeeze=0)]
    seen = []

    async def refusals(ctx, dut, put):
        for fields in bad:
            runs = ctx.get(dut.runs)
            await put(ctx, dut.cfg, pack_config(P, **fields))
            await wait(ctx, lambda runs=runs: ctx.get(dut.runs) != runs, f"{fields} answered",
                       2000)
            assert ctx.get(dut.error) == ConfigError.CONV, (fields, ctx.get(dut.error))
            assert not ctx.get(dut.busy)
            seen.append(fields)

    rng = np.random.default_rng(5)
    conv, z_in = random_conv(rng, 5, 3)
    x = random_input(rng, 3, 4, 3)
    cplan = ConvPlan(SMALL, ConvShape(3, 4, 3, 5))
    layer = random_fire(rng, 5, 3, 4, 5)
    xf = random_input(rng, 4, 3, 5)
    fplan = FirePlan(SMALL, Shape(4, 3, 5, 3, 4, 5))
    runs = conv_runs(SMALL, cplan, conv, z_in, x) + fire_runs(SMALL, fplan, layer, xf)
    outputs, done = simulate(SMALL, runs, prelude=refusals)
    assert seen == bad
    assert all(error == 0 for error, _ in done)
    n = len(cplan.runs)
    np.testing.assert_array_equal(cplan.assemble(outputs[:n]),
                                  ops.conv2d(x, conv.weight, conv.bias, z_in, conv.rq))
    np.testing.assert_array_equal(fplan.assemble(outputs[n:]), ops.fire(xf, layer))


WIDE = SMALL.replace(oc_lanes=5, max_squeeze=12, weight_depth=128, squeeze_depth=192)


def test_a_wide_convolution_takes_three_channels_a_cycle_when_every_channel_qualifies():
    """A conv run with ``wide`` set on parameters that all qualify leaves up to three values
    a beat on ``output_wide``, bit-exact (a lane computing another channel, or a value lost
    at a group's edge, would show); with one channel's shift one past
    ``narrow_shift_max`` or below ``NARROW_SHIFT_MIN`` (or its multiplier's top bit clear) the
    engine falls back to a value
    a beat, still bit-exact; ``wide`` left clear keeps one a beat, and so does an engine built
    without the narrow lanes (a build without the layer sequencer), still bit-exact."""
    rng = np.random.default_rng(11)
    conv, z_in = random_conv(rng, 12, 7, relu=False)
    x = random_input(rng, 3, 4, 7)
    plan = ConvPlan(WIDE, ConvShape(3, 4, 7, 12), relu=False)
    assert narrow_ok(conv.rq.m, conv.rq.n, WIDE.spec)
    want = ops.conv2d(x, conv.weight, conv.bias, z_in, conv.rq)
    limit = narrow_shift_max(WIDE.spec)
    late = dataclasses.replace(conv, rq=dataclasses.replace(
        conv.rq, n=np.where(np.arange(12) == 7, limit + 1, conv.rq.n)))
    small_m = dataclasses.replace(conv, rq=dataclasses.replace(
        conv.rq, m=np.where(np.arange(12) == 4, conv.rq.m >> 1, conv.rq.m),
        n=np.where(np.arange(12) == 4, conv.rq.n - 1, conv.rq.n)))
    # a scale of 1 or more: a shift below NARROW_SHIFT_MIN
    early = dataclasses.replace(conv, rq=dataclasses.replace(
        conv.rq, n=np.where(np.arange(12) == 11, NARROW_SHIFT_MIN - 1, conv.rq.n)))
    for layer, wide, lanes, built in ((conv, True, 3, True), (late, True, 1, True),
                                      (small_m, True, 1, True), (early, True, 1, True),
                                      (conv, False, 1, True), (conv, True, 1, False)):
        beats = []
        got, done = simulate(WIDE, conv_runs(WIDE, plan, layer, z_in, x, wide=wide),
                             gaps=0.2, seed=1, wide=True, beats=beats, lanes=built)
        np.testing.assert_array_equal(
            plan.assemble(got), ops.conv2d(x, layer.weight, layer.bias, z_in, layer.rq),
            f"wide={wide}, lanes={lanes}")
        assert all(error == 0 for error, _ in done)
        assert max(beats) == lanes and sum(beats) == want.size, (wide, lanes)
        if lanes == 3:  # 12 channels a pixel in groups of 5: beats of 3, 2, 3, 2, 2
            assert beats[:5] == [3, 2, 3, 2, 2]
