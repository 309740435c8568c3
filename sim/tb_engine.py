"""cocotb testbench of the Fire engine's generated Verilog, bit-exact with the golden model.

Run through ``tests/test_engine_cocotb.py`` (cocotb_tools.runner, Verilator or Icarus).
``ENGINE_CONFIG`` names the engine configuration (``sim/engine_configs.py``) the Verilog was
generated from. Stream models are cocotbext-axi's, mapped onto Amaranth's port names
(``<stream>__payload``, ``__valid``, ``__ready``).
"""

from __future__ import annotations

import itertools
import os
import random

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, RisingEdge, with_timeout
from cocotbext.axi.stream import define_stream

from sim.engine_configs import CONFIGS, fire_shapes
from sim.engine_harness import conv_streams, fire_streams
from sim.fire_cases import random_conv, random_fire, random_input
from spec.params import ConfigError, pack_config
from spec.tiling import ConvPlan, ConvShape, FirePlan, Shape
from sw import ops

AmaranthBus, AmaranthTransaction, AmaranthSource, AmaranthSink, _ = define_stream(
    "Amaranth", signals=["payload", "valid", "ready"])

PARAMS = CONFIGS[os.environ.get("ENGINE_CONFIG", "arty_a7")]
INPUTS = ["cfg", "weights", "qparams", "input"] + (["bypass"] if PARAMS.bypass else [])


def signed(value, bits):
    value = int(value)
    return value - (1 << bits) if value >> (bits - 1) else value


class TB:
    """Clock, reset and the stream models of one engine."""

    def __init__(self, dut):
        self.dut = dut
        # in reset before the stream models look at ready: Icarus starts with X there
        dut.rst.value = 1
        cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
        self.sources = {name: AmaranthSource(AmaranthBus.from_prefix(dut, name,
                                                                     bus_separator="__"),
                                             dut.clk, dut.rst) for name in INPUTS}
        self.sink = AmaranthSink(AmaranthBus.from_prefix(dut, "output", bus_separator="__"),
                                 dut.clk, dut.rst)

    async def reset(self):
        self.dut.rst.value = 1
        await ClockCycles(self.dut.clk, 3)
        self.dut.rst.value = 0
        await RisingEdge(self.dut.clk)

    def set_idle_generator(self, generator=None):
        for source in self.sources.values():
            self._pause(source, generator)

    def set_backpressure_generator(self, generator=None):
        self._pause(self.sink, generator)

    @staticmethod
    def _pause(model, generator):
        model.set_pause_generator(generator() if generator else None)
        if generator is None:
            model.pause = False  # clearing the generator leaves its last value

    async def send(self, streams: dict):
        for name, beats in streams.items():
            if name in self.sources:
                for value in beats:
                    self.sources[name].send_nowait(AmaranthTransaction(payload=int(value)))

    async def wait_runs(self, count: int) -> list[tuple[int, int]]:
        """Wait until ``count`` more configurations are handled; their (error, cycles)."""
        dut, done = self.dut, []
        seen = int(dut.runs.value)
        while len(done) < count:
            await RisingEdge(dut.clk)
            runs = int(dut.runs.value)
            if runs != seen:
                seen = runs
                done.append((int(dut.error.value), int(dut.cycles.value)))
        return done

    async def run_fire(self, plan: FirePlan, layer: ops.FireLayer, x, *, timeout_us=None):
        """Every run of a plan; checks each run's status and returns the assembled output."""
        streams = fire_streams(plan, layer, x)
        expected = sum(int(np.prod(plan.tile_output_shape(t))) for t in plan.tiles)
        await self.send(streams)
        budget = timeout_us or 50 + 0.02 * (plan.shape.macs / PARAMS.lanes + 4 * expected)
        status = await with_timeout(self.wait_runs(len(plan.tiles)), int(budget * 20) + 1, "us")
        assert all(err == 0 for err, _ in status), f"engine refused a run: {status}"
        values = []
        while len(values) < expected:
            tx = await with_timeout(self.sink.recv(), 100, "us")
            values.append(signed(tx.payload, PARAMS.bits))
        await ClockCycles(self.dut.clk, 20)
        assert self.sink.empty(), "the engine produced more output than the layer has"
        counts = [int(np.prod(plan.tile_output_shape(t))) for t in plan.tiles]
        split = np.split(np.array(values), np.cumsum(counts)[:-1])
        return plan.assemble(split), status

    async def check_conv(self, rng, h, w, cin, cout, *, relu=True):
        """A 1x1 convolution (the engine's conv mode), bit-exact with the golden model."""
        conv, z_in = random_conv(rng, cout, cin, bits=PARAMS.bits, relu=relu)
        x = random_input(rng, h, w, cin, bits=PARAMS.bits)
        plan = ConvPlan(PARAMS, ConvShape(h, w, cin, cout), relu=relu)
        await self.send(conv_streams(plan, conv, z_in, x))
        status = await with_timeout(self.wait_runs(len(plan.runs)), 2000, "us")
        assert all(err == 0 for err, _ in status), f"engine refused a run: {status}"
        values = []
        for run in plan.runs:
            for _ in range(plan.run_outputs(run)):
                tx = await with_timeout(self.sink.recv(), 100, "us")
                values.append(signed(tx.payload, PARAMS.bits))
        await ClockCycles(self.dut.clk, 20)
        assert self.sink.empty(), "the engine produced more output than the layer has"
        counts = [plan.run_outputs(r) for r in plan.runs]
        got = plan.assemble(np.split(np.array(values), np.cumsum(counts)[:-1]))
        np.testing.assert_array_equal(got, ops.conv2d(x, conv.weight, conv.bias, z_in, conv.rq,
                                                      spec=PARAMS.spec),
                                      f"convolution {h}x{w}x{cin} -> {cout} relu={relu}")
        return plan

    async def check_layer(self, rng, h, w, cin, s, e1, e3, *, bypass=False, extreme=None,
                          fill=None, rescale=False):
        layer = random_fire(rng, cin, s, e1, e3, bits=PARAMS.bits, bypass=bypass,
                            extreme=extreme, rescale=rescale)
        assert layer.rescaled == rescale
        x = random_input(rng, h, w, cin, bits=PARAMS.bits, fill=fill)
        plan = FirePlan(PARAMS, Shape(h, w, cin, s, e1, e3), bypass=bypass)
        got, status = await self.run_fire(plan, layer, x)
        want = ops.fire(x, layer, PARAMS.spec)
        np.testing.assert_array_equal(
            got, want, f"layer {h}x{w}x{cin} -> {s}/{e1}/{e3} bypass={bypass} "
                       f"({len(plan.tiles)} tiles) differs from the golden model")
        return plan, status


def bypass_ok(cin, e1, e3):
    return PARAMS.bypass and cin == e1 + e3


@cocotb.test()
async def fire_shapes_square_and_not(dut):
    """Every SqueezeNet Fire channel shape (or the config's scaled ones), 3x3 and 2x5."""
    tb = TB(dut)
    await tb.reset()
    rng = np.random.default_rng(1)
    for cin, s, e1, e3 in fire_shapes(PARAMS):
        for h, w in ((3, 3), (2, 5)):
            h, w = min(h, PARAMS.max_h), min(w, PARAMS.max_w)
            plan, status = await tb.check_layer(rng, h, w, cin, s, e1, e3,
                                                bypass=bypass_ok(cin, e1, e3) and h == 3)
            dut._log.info("%dx%dx%d/%d/%d/%d: %d tile(s), cycles %s", h, w, cin, s, e1, e3,
                          len(plan.tiles), [c for _, c in status])


@cocotb.test()
async def random_shapes(dut):
    """Random shapes within the maxima, with and without bypass, tiled or not."""
    tb = TB(dut)
    await tb.reset()
    rng = np.random.default_rng(2)
    p = PARAMS
    for _ in range(8):
        h, w = int(rng.integers(1, min(p.max_h, 7) + 1)), int(rng.integers(1, min(p.max_w, 7)
                                                                             + 1))
        s = int(rng.integers(1, p.max_squeeze + 1))
        e1 = int(rng.integers(0, min(p.max_e1, 40) + 1))
        e3 = int(rng.integers(0 if e1 else 1, min(p.max_e3, 40) + 1))
        cin = int(rng.integers(1, min(p.max_cin, 96) + 1))
        bypass = bool(rng.integers(0, 2)) and p.bypass and e1 + e3 <= p.max_cin
        if bypass:
            cin = e1 + e3
        await tb.check_layer(rng, h, w, cin, s, e1, e3, bypass=bypass)


@cocotb.test()
async def extreme_values(dut):
    """All-minimum and all-maximum inputs and weights, and saturating requantization."""
    tb = TB(dut)
    await tb.reset()
    rng = np.random.default_rng(3)
    spec = PARAMS.spec
    cin, s, e1, e3 = fire_shapes(PARAMS)[-1]
    cin, s, e1, e3 = min(cin, 64), min(s, 16), min(e1, 24), min(e3, 24)
    for extreme, fill in (("min", spec.act_min), ("max", spec.act_max), ("max", spec.act_min),
                          ("saturate", None)):
        await tb.check_layer(rng, 3, 2, cin, s, e1, e3, extreme=extreme, fill=fill,
                             bypass=bypass_ok(cin, e1, e3))


@cocotb.test()
async def gaps_and_backpressure(dut):
    """Random idle cycles on every input and random backpressure on the output."""
    tb = TB(dut)
    await tb.reset()
    rng = np.random.default_rng(4)
    random.seed(4)
    tb.set_idle_generator(lambda: (random.random() < 0.3 for _ in itertools.count()))
    tb.set_backpressure_generator(lambda: itertools.cycle([1, 1, 1, 0]))
    cin, s, e1, e3 = fire_shapes(PARAMS)[0]
    await tb.check_layer(rng, 3, 4, cin, s, e1, e3, bypass=bypass_ok(cin, e1, e3))
    e = min(PARAMS.max_e1, PARAMS.max_e3, 24)
    await tb.check_layer(rng, 2, 3, e, min(PARAMS.max_squeeze, 5), e // 2, e - e // 2,
                         bypass=PARAMS.bypass)
    tb.set_idle_generator(None)
    tb.set_backpressure_generator(lambda: (random.random() < 0.6 for _ in itertools.count()))
    await tb.check_layer(rng, 3, 3, cin, s, e1, e3)


@cocotb.test()
async def back_to_back_layers(dut):
    """Consecutive layers of different shapes and modes, without a reset between them."""
    tb = TB(dut)
    await tb.reset()
    rng = np.random.default_rng(5)
    shapes = fire_shapes(PARAMS)
    order = [shapes[-1], shapes[0], shapes[len(shapes) // 2], shapes[0]]
    for i, (cin, s, e1, e3) in enumerate(order):
        await tb.check_layer(rng, 2 + i % 2, 3, cin, s, e1, e3,
                             bypass=bypass_ok(cin, e1, e3) and i % 2 == 0)


@cocotb.test()
async def expands_rounded_twice(dut):
    """Layers whose expands are rounded twice (to their own zero points, then the concat's):
    every shape, tiled or not, with bypass, saturating, under gaps and backpressure, and
    between layers rounded once, without a reset."""
    tb = TB(dut)
    await tb.reset()
    rng = np.random.default_rng(6)
    random.seed(6)
    shapes = fire_shapes(PARAMS)
    for i, (cin, s, e1, e3) in enumerate(shapes):
        await tb.check_layer(rng, 3, 2 + i % 2, cin, s, e1, e3, rescale=True,
                             bypass=bypass_ok(cin, e1, e3))
    cin, s, e1, e3 = shapes[0]
    await tb.check_layer(rng, 2, 2, cin, s, e1, e3, extreme="saturate", rescale=True)
    await tb.check_layer(rng, 2, 3, cin, s, e1, e3)  # once, straight after twice
    tb.set_idle_generator(lambda: (random.random() < 0.3 for _ in itertools.count()))
    tb.set_backpressure_generator(lambda: itertools.cycle([1, 1, 0]))
    await tb.check_layer(rng, 3, 3, cin, s, e1, e3, rescale=True)


@cocotb.test()
async def refused_configurations(dut):
    """Every dimension one past its maximum (and h, w, cin, s at zero) is refused with that
    dimension's error; exactly the maximum passes the dimension checks; inconsistent
    configurations are refused; the engine still works after all of them."""
    tb = TB(dut)
    await tb.reset()
    rng = np.random.default_rng(6)
    p = PARAMS
    ok = dict(h=2, w=2, cin=min(8, p.max_cin), s=2, e1=2, e3=2, load=1, compute=1, squeeze=1)
    # compute-only (load=0): a dimension let through would be answered NOT_LOADED instead
    only = dict(ok, load=0)
    beyond = [(dict(only, h=p.max_h + 1), ConfigError.H), (dict(only, h=0), ConfigError.H),
              (dict(only, w=p.max_w + 1), ConfigError.W), (dict(only, w=0), ConfigError.W),
              (dict(only, cin=p.max_cin + 1), ConfigError.CIN),
              (dict(only, cin=0), ConfigError.CIN),
              (dict(only, s=p.max_squeeze + 1), ConfigError.SQUEEZE),
              (dict(only, s=0), ConfigError.SQUEEZE),
              (dict(only, e1=p.max_e1 + 1), ConfigError.E1),
              (dict(only, e3=p.max_e3 + 1), ConfigError.E3)]
    # at a maximum, with the other dimensions at 1 so that the weights fit
    tiny = dict(only, h=1, w=1, cin=1, s=1, e1=1, e3=1)
    at_max = [(dict(tiny, **{name: getattr(p, limit)}), ConfigError.NOT_LOADED)
              for name, limit in (("h", "max_h"), ("w", "max_w"), ("cin", "max_cin"),
                                  ("s", "max_squeeze"), ("e1", "max_e1"), ("e3", "max_e3"))]
    cases = beyond + at_max + [
        # as the driver sends them (load and compute)
        (dict(ok, h=p.max_h + 1), ConfigError.H),
        (dict(ok, w=p.max_w + 1), ConfigError.W),
        (dict(ok, cin=p.max_cin + 1), ConfigError.CIN),
        (dict(ok, e1=p.max_e1 + 1), ConfigError.E1),
        (dict(ok, load=0), ConfigError.NOT_LOADED),
        (dict(ok, load=0, squeeze=0, h=3), ConfigError.NO_SQUEEZE_MAP),
        # a second requantization's shift of 0, on either branch
        (dict(ok, rescale=1, e1_rs_shift=0, e3_rs_shift=5), ConfigError.SHIFT),
        (dict(ok, rescale=1, e1_rs_shift=5, e3_rs_shift=0), ConfigError.SHIFT),
        # a convolution run with expand channels, or without an input of its own
        (dict(ok, conv=1), ConfigError.CONV), (dict(ok, conv=1, e1=0), ConfigError.CONV),
        (dict(ok, conv=1, e1=0, e3=0, squeeze=0), ConfigError.CONV)]
    if not p.bypass:
        cases.append((dict(ok, bypass=1), ConfigError.BYPASS))
    sent = 0
    for fields, code in cases:
        try:
            word = pack_config(p, **fields)
        except ValueError:
            # a maximum of 2**k - 1 leaves no room for one more in its k-bit field: such a
            # configuration cannot be sent at all
            dut._log.info("%s: not representable in the configuration word", fields)
            continue
        sent += 1
        await tb.send({"cfg": [word]})
        (err, _), = await with_timeout(tb.wait_runs(1), 50, "us")
        assert err == code, f"{fields}: expected {code.name}, got error {err}"
        assert not dut.busy.value
    assert sent >= len(at_max) + 4
    cin, s, e1, e3 = fire_shapes(PARAMS)[0]
    await tb.check_layer(rng, 2, 3, cin, s, e1, e3)


@cocotb.test()
async def convolutions(dut):
    """1x1 convolutions (conv1 packed, conv10): several channel blocks on a map past max_w,
    with and without ReLU, under gaps and backpressure, between Fire layers, no reset."""
    tb = TB(dut)
    await tb.reset()
    rng = np.random.default_rng(7)
    random.seed(7)
    p = PARAMS
    cin, s, e1, e3 = fire_shapes(p)[0]
    plan = await tb.check_conv(rng, 2, p.max_w + 2, min(p.max_cin, 40), 2 * p.max_squeeze + 1)
    assert len(plan.runs) >= 4
    await tb.check_layer(rng, 2, 3, cin, s, e1, e3)
    tb.set_idle_generator(lambda: (random.random() < 0.3 for _ in itertools.count()))
    tb.set_backpressure_generator(lambda: itertools.cycle([1, 1, 0]))
    await tb.check_conv(rng, 3, 2, min(p.max_cin, 24), min(p.max_squeeze, 7), relu=False)
    await tb.check_layer(rng, 2, 2, cin, s, e1, e3)
