"""The MAC array's pipeline as the engine relies on it: results exactly ``latency`` cycles
after a reduction's last beat, the register depth of each multiplier style, reset only on
control bits, MULT18X18D blocks in the ECP5 build, no backpressure."""

import gc
import warnings

import pytest
from amaranth.hdl import Fragment, UnusedElaboratable
from amaranth.sim import Simulator
from amaranth_boards.ulx3s import ULX3S_85F_Platform
from rtl import count_instances, registers_with_reset, stream_ports

from hw.mac_array import MULTIPLIERS, MacArray
from spec.params import EngineParams


def one_reduction_latency(dut, ic, oc, beats=3):
    """Clock edges from the one taking a reduction's last beat to ``o.valid``; checks the
    sums (activations 1, zero point 0, weights -1, 0, 1)."""
    got = {}

    async def bench(ctx):
        p = dut.i.payload
        for k in range(beats):
            ctx.set(dut.i.valid, 1)
            ctx.set(p.first, k == 0)
            ctx.set(p.last, k == beats - 1)
            for i in range(ic):
                ctx.set(p.act[i], 1)
                for o in range(oc):
                    ctx.set(p.weights[o][i], (o + i) % 3 - 1)
            await ctx.tick()
        ctx.set(dut.i.valid, 0)
        edges = 1  # the edge that took the last beat
        while not ctx.get(dut.o.valid):
            assert edges < 64, "no result"
            await ctx.tick()
            edges += 1
        got["edges"] = edges
        got["acc"] = [ctx.get(dut.o.payload.acc[o]) for o in range(oc)]

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    want = [beats * sum((o + i) % 3 - 1 for i in range(ic)) for o in range(oc)]
    assert got["acc"] == want
    return got["edges"]


LATENCY_CASES = [
    # 16 inputs a cycle (four adder levels), one output
    EngineParams(bits=8, ic_lanes=16, oc_lanes=1, max_h=4, max_w=4, max_cin=32,
                 max_squeeze=16, max_e1=8, max_e3=8, weight_depth=160, squeeze_depth=64),
    # odd weight widths: partial-product trees of 5 and 2 terms in the LUT multipliers
    EngineParams(bits=5, ic_lanes=2, oc_lanes=2, max_h=4, max_w=4, max_cin=8,
                 max_squeeze=4, max_e1=4, max_e3=4, weight_depth=64, squeeze_depth=64),
    EngineParams(bits=2, ic_lanes=8, oc_lanes=1, max_h=4, max_w=4, max_cin=8,
                 max_squeeze=8, max_e1=4, max_e3=4, weight_depth=64, squeeze_depth=64),
]


@pytest.mark.parametrize("multipliers", MULTIPLIERS)
@pytest.mark.parametrize("params", LATENCY_CASES, ids=["16x1", "int5", "int2"])
def test_result_arrives_latency_cycles_after_the_last_beat(params, multipliers):
    """The engine schedules by ``latency`` (no handshake): it must be the pipeline's own."""
    dut = MacArray(params, tag_bits=2, multipliers=multipliers)
    assert one_reduction_latency(dut, params.ic_lanes, params.oc_lanes) == dut.latency


def test_pipeline_depth_of_each_multiplier_style():
    """The arty_a7 array (16 x 5): DSP48E1 products registered twice (its M and P registers)
    and one adder-tree register every two levels; the ECP5 block's three registers, the LUT
    multipliers' register per partial-product level (three for 8 bits), and a register after
    every adder level in both. The cycle counts in docs/engine.md are this array's."""
    p = EngineParams()
    assert (p.ic_lanes, p.oc_lanes) == (16, 5)
    arrays = {style: MacArray(p, multipliers=style) for style in MULTIPLIERS}
    depth = {style: dut.latency for style, dut in arrays.items()}
    assert depth == {"dsp": 1 + 2 + 2 + 1, "mult18x18d": 1 + 3 + 4 + 1, "lut": 1 + 3 + 4 + 1}
    for dut in arrays.values():
        Fragment.get(dut, None)  # elaborates (and checks its pipeline against ``latency``)


@pytest.mark.parametrize("multipliers", MULTIPLIERS)
def test_only_the_control_bits_have_a_reset(multipliers):
    """docs/engine.md: datapath registers have no reset, only valid and control bits."""
    p = LATENCY_CASES[1]
    dut = MacArray(p, tag_bits=3, multipliers=multipliers)
    ctl = dut.latency - 1
    want = ({f"first_{k}" for k in range(ctl)} | {f"last_{k}" for k in range(ctl)}
            | {"o__valid"})
    assert registers_with_reset(dut, stream_ports(dut.i, dut.o)) == want


def test_ecp5_products_are_mult18x18d_blocks():
    p = LATENCY_CASES[1]
    for style, want in (("mult18x18d", p.ic_lanes * p.oc_lanes), ("dsp", 0), ("lut", 0)):
        dut = MacArray(p, multipliers=style)
        got = count_instances(dut, ULX3S_85F_Platform(), stream_ports(dut.i, dut.o),
                              "MULT18X18D")
        assert got == want, style


def test_unknown_multiplier_style_is_named():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnusedElaboratable)  # the refused, half-made array
        with pytest.raises(ValueError, match=r"^multipliers must be one of \('dsp', "
                                             r"'mult18x18d', 'lut'\), not 'dsp48'$"):
            MacArray(LATENCY_CASES[1], multipliers="dsp48")
        gc.collect()


def test_array_takes_no_backpressure_and_defaults_to_dsp():
    p = LATENCY_CASES[1]
    default, dsp = MacArray(p), MacArray(p, multipliers="dsp")
    for name in ("i", "o"):
        assert default.signature.members[name].signature.always_ready, name
    assert default.latency == dsp.latency
    assert registers_with_reset(default, stream_ports(default.i, default.o)) == \
        registers_with_reset(dsp, stream_ports(dsp.i, dsp.o))


def test_wide_array_latency():
    """128 inputs a cycle: seven adder levels, a register every two (and after the last)."""
    p = EngineParams(bits=2, ic_lanes=128, oc_lanes=1, max_h=4, max_w=4, max_cin=128,
                     max_squeeze=8, max_e1=4, max_e3=4, weight_depth=200, squeeze_depth=64)
    dut = MacArray(p, tag_bits=2)
    assert dut.latency == 1 + 2 + 4 + 1
    assert one_reduction_latency(dut, 128, 1) == dut.latency
