"""The engine's generated Verilog in the compiled Verilator harness: many random layers per
configuration (4 to 16 bits), full-size SqueezeNet layers, and the engine's cycle counter."""

import numpy as np
import pytest

from hw.arith import rescaler_latency
from sim.engine_configs import CONFIGS
from sim.engine_harness import fire_streams, run_conv, run_fire, run_streams
from sim.fire_cases import random_conv, random_fire, random_input
from spec.params import EngineParams
from spec.tiling import ConvPlan, ConvShape, FirePlan, Shape, conv_as_1x1
from spec.windows import packed_channels
from sw import ops

WIDTHS = dict(CONFIGS, int12=EngineParams(bits=12, ic_lanes=4, oc_lanes=3, max_h=8, max_w=8,
                                          max_cin=24, max_squeeze=8, max_e1=12, max_e3=12,
                                          weight_depth=64, squeeze_depth=96, bypass=True))


@pytest.mark.parametrize("config", list(WIDTHS))
def test_random_layers(config):
    p = WIDTHS[config]
    rng = np.random.default_rng(sum(map(ord, config)))
    tiled = 0
    for case in range(24):
        h = int(rng.integers(1, min(p.max_h, 6) + 1))
        w = int(rng.integers(1, min(p.max_w, 6) + 1))
        s = int(rng.integers(1, p.max_squeeze + 1))
        e1 = int(rng.integers(0, min(p.max_e1, 48) + 1))
        e3 = int(rng.integers(0 if e1 else 1, min(p.max_e3, 48) + 1))
        cin = int(rng.integers(1, min(p.max_cin, 80) + 1))
        bypass = p.bypass and e1 + e3 <= p.max_cin and case % 2 == 0
        if bypass:
            cin = e1 + e3
        layer = random_fire(rng, cin, s, e1, e3, bits=p.bits, bypass=bypass)
        x = random_input(rng, h, w, cin, bits=p.bits)
        plan = FirePlan(p, Shape(h, w, cin, s, e1, e3), bypass=bypass)
        tiled += len(plan.tiles) > 1
        got, _ = run_fire(plan, layer, x, gaps=[0, 25][case % 2],
                          backpressure=[0, 50][case % 3 > 0], seed=case, max_cycles=5_000_000)
        np.testing.assert_array_equal(got, ops.fire(x, layer, p.spec),
                                      f"case {case}: {h}x{w}x{cin}/{s}/{e1}/{e3} bypass={bypass}")
    assert config == "arty_a7" or tiled, "no case exercised output-channel tiling"


@pytest.mark.parametrize("shape", [(55, 55, 64, 16, 64, 64), (13, 13, 512, 64, 256, 256)],
                         ids=["v1.1-fire2", "v1.1-fire9"])
def test_full_size_layers(shape):
    p = CONFIGS["arty_a7"]
    rng = np.random.default_rng(7)
    h, w, cin, s, e1, e3 = shape
    layer = random_fire(rng, cin, s, e1, e3)
    x = random_input(rng, h, w, cin)
    plan = FirePlan(p, Shape(*shape))
    got, result = run_fire(plan, layer, x)
    np.testing.assert_array_equal(got, ops.fire(x, layer))
    # The engine counts each run from its configuration to its last output beat; the harness
    # counts every clock from reset to idle, a few dozen more.
    engine = sum(r.cycles for r in result.runs)
    assert 0 < result.total_cycles - engine < 100 + 20 * len(plan.tiles)


def test_back_to_back_different_layers_without_reset():
    p = CONFIGS["arty_a7"]
    rng = np.random.default_rng(8)
    shapes = [(4, 5, 96, 16, 64, 64), (3, 3, 512, 64, 256, 256), (6, 2, 128, 32, 128, 128)]
    streams = {k: [] for k in ("cfg", "weights", "qparams", "input", "bypass")}
    cases = []
    for shape in shapes:
        layer = random_fire(rng, *shape[2:])
        x = random_input(rng, *shape[:3])
        plan = FirePlan(p, Shape(*shape))
        for k, v in fire_streams(plan, layer, x).items():
            streams[k] += v
        cases.append((plan, layer, x))
    result = run_streams(p, streams, gaps=20, backpressure=30, seed=3)
    assert not result.timeout
    runs = iter(result.runs)
    for plan, layer, x in cases:
        outs = [next(runs) for _ in plan.tiles]
        assert all(r.error == 0 for r in outs)
        np.testing.assert_array_equal(plan.assemble([r.outputs for r in outs]),
                                      ops.fire(x, layer))


@pytest.mark.parametrize("multipliers", ["mult18x18d", "lut"])
def test_multiplier_styles_match(multipliers):
    """The ECP5 build's multipliers (their generic form: operands, product and a fabric
    register, an adder-tree register per level) and the fabric multipliers give the golden
    model's results like the DSP path."""
    p = CONFIGS["arty_a7"]
    rng = np.random.default_rng(12)
    for h, w, cin, s, e1, e3 in [(4, 3, 96, 16, 64, 64), (3, 3, 512, 64, 256, 256)]:
        bypass = cin == e1 + e3
        layer = random_fire(rng, cin, s, e1, e3, bypass=bypass)
        x = random_input(rng, h, w, cin)
        plan = FirePlan(p, Shape(h, w, cin, s, e1, e3), bypass=bypass)
        got, _ = run_fire(plan, layer, x, gaps=20, backpressure=30,
                          multipliers=multipliers)
        np.testing.assert_array_equal(got, ops.fire(x, layer))


@pytest.mark.parametrize("shape", [(55, 55, 64, 16, 64, 64), (13, 13, 512, 64, 256, 256)],
                         ids=["v1.1-fire2", "v1.1-fire9"])
def test_full_size_layers_rounded_twice_cost_only_the_rescaler_latency(shape):
    """A layer whose expands are rounded twice (QDQ branches at their own scales) is bit-exact
    at full size, and each of its runs takes exactly the rescaler's latency more than the
    same shape rounded once: the second requantization is pipelined at full rate."""
    p = CONFIGS["arty_a7"]
    h, w, cin, s, e1, e3 = shape
    plan = FirePlan(p, Shape(*shape))
    cycles = {}
    for twice in (False, True):
        rng = np.random.default_rng(7)
        layer = random_fire(rng, cin, s, e1, e3, rescale=twice)
        x = random_input(rng, h, w, cin)
        got, result = run_fire(plan, layer, x)
        np.testing.assert_array_equal(got, ops.fire(x, layer))
        cycles[twice] = [r.cycles for r in result.runs]
    latency = rescaler_latency(p.spec)
    assert latency == 10
    assert cycles[True] == [c + latency for c in cycles[False]]


def check_conv(p, rng, h, w, cin, cout, *, kernel=1, stride=1, pad=0, relu=True, **kw):
    """A convolution of an ``h x w x cin`` input on the engine (windows packed unless 1x1),
    bit-exact with the golden model; returns its plan."""
    conv, z_in = random_conv(rng, cout, cin, kernel, bits=p.bits, relu=relu)
    x = random_input(rng, h, w, cin, bits=p.bits)
    layer, x1 = conv_as_1x1(conv, x, z_in, stride=stride, pad=pad, lanes=p.ic_lanes)
    plan = ConvPlan(p, ConvShape(*x1.shape, cout), relu=relu)
    got, result = run_conv(plan, layer, z_in, x1, max_cycles=5_000_000, **kw)
    want = ops.conv2d(x, conv.weight, conv.bias, z_in, conv.rq, stride=stride, pad=pad,
                      spec=p.spec)
    np.testing.assert_array_equal(got, want, f"{h}x{w}x{cin} -> {cout}, {kernel}x{kernel}/"
                                             f"{stride} relu={relu}, {len(plan.runs)} runs")
    if not relu:
        assert (want < conv.rq.z_out).any()  # the ReLU would have changed these
    return plan


@pytest.mark.parametrize("config", list(WIDTHS))
def test_convolutions(config):
    """The engine's 1x1-convolution mode at every width: a 1x1 convolution over several
    channel blocks on a map past max_h and max_w (cut into pixel blocks), one without ReLU,
    and a 3x3 stride-2 convolution with its windows packed into channels (conv1's way), under
    stream gaps and backpressure."""
    p = WIDTHS[config]
    rng = np.random.default_rng(sum(map(ord, config)) + 1)
    cin = min(p.max_cin, 40)
    cout = 2 * p.max_squeeze + 3
    big = check_conv(p, rng, p.max_h + 1, p.max_w + 3, cin, cout, gaps=25, backpressure=50,
                     seed=1)
    assert len({r.channels for r in big.runs}) >= 3 and len({r.pixels for r in big.runs}) >= 2
    check_conv(p, rng, 3, 4, cin, min(cout, 12), relu=False, seed=2)
    c = max(1, min(3, p.max_cin // 9))  # a packed window within max_cin
    assert packed_channels(3, c, p.ic_lanes) <= p.max_cin
    check_conv(p, rng, 9, 7, c, p.max_squeeze + 1, kernel=3, stride=2, pad=1,
               gaps=10, backpressure=30, seed=3)


def test_conv10_and_conv1_shaped_convolutions():
    """On the Arty's engine: conv10's shape smaller (5x4 pixels, 512 -> 70, two channel
    blocks), conv1 v1.1 packed (3x3 stride 2, 3 -> 64, 27 values in two words) and v1.0's
    (7x7 stride 2, 3 -> 96, 147 values in ten words) on small images, and a 1x1 convolution of
    a map wider than max_w (3x70: pixel blocks of 3x56 and 1x42)."""
    p = CONFIGS["arty_a7"]
    rng = np.random.default_rng(21)
    plan = check_conv(p, rng, 5, 4, 512, 70, gaps=20, backpressure=20)
    assert [len(r.channels) for r in plan.runs] == [35, 35]
    plan = check_conv(p, rng, 23, 23, 3, 64, kernel=3, stride=2)
    assert plan.shape == ConvShape(11, 11, 32, 64) and len(plan.runs) == 1
    plan = check_conv(p, rng, 21, 25, 3, 96, kernel=7, stride=2, relu=False)
    assert plan.shape.cin == 160 and len(plan.runs) == 2
    plan = check_conv(p, rng, 3, 70, 96, 24, backpressure=40)
    assert [(r.h, r.w) for r in plan.runs] == [(3, 56), (1, 42)]
