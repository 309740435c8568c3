"""The engine's compute counter: the same figure whether its streams never wait or wait most
of the time (docs/engine.md, "Cycle counting"). Run in the compiled Verilator harness, on two
SqueezeNet layer shapes: one issue-bound (fire6) and one whose expand1x1 phase outruns the
requantizer (fire4's channels at 14x14), where a counter that took every stall during
congestion as waiting would be 2% short."""

import numpy as np
import pytest

from sim.engine_configs import CONFIGS
from sim.engine_harness import run_conv, run_fire
from sim.fire_cases import random_conv, random_fire, random_input
from spec.tiling import ConvPlan, ConvShape, FirePlan, Shape
from sw import ops

#: (input gaps %, output backpressure %): full rate first
CONDITIONS = [(0, 0), (98, 0), (0, 90), (70, 70), (20, 80)]


def figures_under_conditions(run, want) -> list[tuple[int, int]]:
    """``(cycles, compute)`` of ``run(gaps=, backpressure=, seed=)`` under each of the
    CONDITIONS, its output bit-exact with ``want`` under every one."""
    figures = []
    for seed, (gaps, back) in enumerate(CONDITIONS):
        got, result = run(gaps=gaps, backpressure=back, seed=seed)
        np.testing.assert_array_equal(got, want, f"gaps {gaps}%, backpressure {back}%")
        figures.append((sum(r.cycles for r in result.runs),
                        sum(r.compute for r in result.runs)))
    return figures


@pytest.mark.parametrize("shape", [(13, 13, 256, 48, 192, 192), (14, 14, 128, 32, 128, 128)],
                         ids=["fire6", "fire4-channels"])
def test_compute_does_not_depend_on_the_streams(shape):
    p = CONFIGS["arty_a7"]
    rng = np.random.default_rng(3)
    h, w, cin, s, e1, e3 = shape
    layer = random_fire(rng, cin, s, e1, e3)
    x = random_input(rng, h, w, cin)
    want = ops.fire(x, layer)
    plan = FirePlan(p, Shape(*shape))
    figures = figures_under_conditions(
        lambda **kw: run_fire(plan, layer, x, **kw), want)
    (full_cycles, full_compute), *held = figures
    # at full rate nothing waits: compute is every cycle but the first pixel's arrival
    assert 0 <= full_cycles - full_compute <= 40, figures[0]
    for (gaps, back), (cycles, compute) in zip(CONDITIONS[1:], held, strict=True):
        assert cycles > 1.1 * full_cycles, (gaps, back, cycles)  # the streams did hold it
        assert abs(compute - full_compute) <= 0.006 * full_compute, \
            f"gaps {gaps}%, backpressure {back}%: compute {compute}, full rate {full_compute}"


@pytest.mark.parametrize("shape", [(23, 23, 32, 64), (8, 8, 512, 60)],
                         ids=["conv1-v1.1-packed", "conv10-block"])
def test_convolution_compute_does_not_depend_on_the_streams(shape):
    """The same for the convolution mode: requantizer-bound (conv1 v1.1's 64 channels a
    pixel from 26 issue cycles: at full rate the sequencer waits for credits; starved of
    input, a counter that took every wait for a pixel as the stream's would give half the
    figure) and issue-bound (a conv10 channel block)."""
    p = CONFIGS["arty_a7"]
    rng = np.random.default_rng(4)
    h, w, cin, cout = shape
    conv, z_in = random_conv(rng, cout, cin)
    x = random_input(rng, h, w, cin)
    want = ops.conv2d(x, conv.weight, conv.bias, z_in, conv.rq)
    plan = ConvPlan(p, ConvShape(*shape))
    figures = figures_under_conditions(
        lambda **kw: run_conv(plan, conv, z_in, x, **kw), want)
    (full_cycles, full_compute), *held = figures
    assert 0 <= full_cycles - full_compute <= 40, figures[0]
    for (gaps, back), (cycles, compute) in zip(CONDITIONS[1:], held, strict=True):
        # the streams held it (a conv10 block issues 384 cycles a pixel for 32 input words
        # and 60 outputs: the held streams cost it only 0.5-4%)
        assert cycles > full_cycles, (gaps, back, cycles)
        assert abs(compute - full_compute) <= 0.006 * full_compute, \
            f"gaps {gaps}%, backpressure {back}%: compute {compute}, full rate {full_compute}"
