"""Amaranth-simulator tests of the squeeze line buffer: ring and retain modes."""

import numpy as np
import pytest
from amaranth.sim import Simulator

from hw.line_buffer import LineBuffer
from hw.params import EngineParams

PARAMS = EngineParams(bits=8, ic_lanes=2, oc_lanes=2, max_h=7, max_w=3, max_cin=4,
                      max_squeeze=4, max_e1=4, max_e3=4, weight_depth=64, squeeze_depth=48)


@pytest.mark.parametrize("retain", [0, 1])
def test_rows_land_in_their_slots(retain):
    rows, row_words = 7, 6  # W=3 pixels x 2 words
    rng = np.random.default_rng(retain)
    dut = LineBuffer(PARAMS)
    ic = PARAMS.ic_lanes
    written = {}

    async def bench(ctx):
        ctx.set(dut.rows, rows)
        ctx.set(dut.row_words, row_words)
        ctx.set(dut.retain, retain)
        ctx.set(dut.init, 1)
        await ctx.tick()
        ctx.set(dut.init, 0)
        await ctx.tick().until(~dut.busy)
        for r in range(rows):
            # write row r lane by lane
            for word in range(row_words):
                for lane in range(ic):
                    v = int(rng.integers(-128, 128))
                    written[(r, word, lane)] = v
                    ctx.set(dut.w_en, 1)
                    ctx.set(dut.w_row, r)
                    ctx.set(dut.w_word, word)
                    ctx.set(dut.w_lane, lane)
                    ctx.set(dut.w_data, v)
                    await ctx.tick()
            ctx.set(dut.w_en, 0)
            await ctx.tick()
            # in ring mode only the last three rows survive; retain keeps every row
            alive = range(r + 1) if retain else range(max(0, r - 2), r + 1)
            for rr in alive:
                for word in range(row_words):
                    ctx.set(dut.r_row, rr)
                    ctx.set(dut.r_word, word)
                    await ctx.tick().repeat(dut.read_latency)
                    got = [ctx.get(dut.r_data[lane]) for lane in range(ic)]
                    assert got == [written[(rr, word, lane)] for lane in range(ic)], (rr, word)
        if not retain:
            # row 6 overwrote row 3's slot
            ctx.set(dut.r_row, 3)
            ctx.set(dut.r_word, 0)
            await ctx.tick().repeat(dut.read_latency)
            assert ctx.get(dut.r_data[0]) == written[(6, 0, 0)]

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
