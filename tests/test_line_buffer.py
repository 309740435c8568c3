"""Amaranth-simulator tests of the squeeze line buffer: ring and retain modes."""

import numpy as np
import pytest
from amaranth.sim import Simulator
from rtl import registers_with_reset

from hw.line_buffer import BANK_DEPTH, LineBuffer
from spec.params import EngineParams


async def until_idle(ctx, dut, limit: int = 200):
    """Wait for the row table to be built (``rows`` cycles); fail rather than hang."""
    for _ in range(limit):
        if not ctx.get(dut.busy):
            return
        await ctx.tick()
    raise AssertionError(f"the row table was not built in {limit} cycles")


async def start(ctx, dut, rows: int, row_words: int, retain: int):
    """Configure a map of ``rows`` x ``row_words`` words, pulse ``init`` and wait for the row
    table."""
    ctx.set(dut.rows, rows)
    ctx.set(dut.row_words, row_words)
    ctx.set(dut.retain, retain)
    ctx.set(dut.init, 1)
    await ctx.tick()
    ctx.set(dut.init, 0)
    await until_idle(ctx, dut)


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
        await start(ctx, dut, rows, row_words, retain)
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


# squeeze_depth exactly three rows at max_w (the smallest EngineParams allows): a deeper ring
# would also run off the end of the buffer
TIGHT = EngineParams(bits=8, ic_lanes=2, oc_lanes=2, max_h=8, max_w=3, max_cin=4,
                     max_squeeze=4, max_e1=4, max_e3=4, weight_depth=64, squeeze_depth=18)


def fill_rows(rows: int, row_words: int, retain: int, check):
    """Write rows 0..rows-1 in order, each with values of its own, and after each row call
    ``check(read, r, expected)``: ``await read(row)`` returns a row's words as the buffer
    gives them back, ``expected(row)`` what was written to that row."""
    dut = LineBuffer(TIGHT)
    ic = TIGHT.ic_lanes

    def value(r, word, lane):
        return (r * 11 + word * ic + lane) % 200 - 100

    async def bench(ctx):
        await start(ctx, dut, rows, row_words, retain)

        async def read(row):
            words = []
            for word in range(row_words):
                ctx.set(dut.r_row, row)
                ctx.set(dut.r_word, word)
                await ctx.tick().repeat(dut.read_latency)
                words.append([ctx.get(dut.r_data[lane]) for lane in range(ic)])
            return words

        for r in range(rows):
            for word in range(row_words):
                for lane in range(ic):
                    ctx.set(dut.w_en, 1)
                    ctx.set(dut.w_row, r)
                    ctx.set(dut.w_word, word)
                    ctx.set(dut.w_lane, lane)
                    ctx.set(dut.w_data, value(r, word, lane))
                    await ctx.tick()
            ctx.set(dut.w_en, 0)
            await ctx.tick()
            await check(read, r, lambda row: [[value(row, wd, ln) for ln in range(ic)]
                                              for wd in range(row_words)])

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()


def test_ring_is_exactly_three_rows_deep():
    """Line mode: row r shares its slot with row r - 3 and with no other live row. A ring of
    four would leave row r - 3 intact (and run past a three-row buffer); a ring of two would
    overwrite row r - 2, which the 3x3 expand of row r - 1 still reads."""
    rows, row_words = 8, 6  # W = 3 pixels x 2 words: the buffer holds exactly three rows
    checked = []

    async def check(read, r, expected):
        for back in (0, 1, 2):
            if r - back >= 0:
                assert await read(r - back) == expected(r - back), f"row {r - back} lost"
        if r >= 3:
            # row r - 3's slot now holds row r: the ring has exactly three slots
            assert await read(r - 3) == expected(r), f"row {r} did not reuse row {r - 3}'s slot"
            checked.append(r)

    fill_rows(rows, row_words, 0, check)
    assert checked == list(range(3, rows))


def test_retain_keeps_every_row():
    """Retain mode: every row its own slot, none overwritten, up to the buffer's depth."""
    rows, row_words = 6, 3  # 18 words: the whole buffer

    async def check(read, r, expected):
        if r == rows - 1:
            for row in range(rows):
                assert await read(row) == expected(row), f"row {row} was overwritten"

    fill_rows(rows, row_words, 1, check)


def sparse(params, rows, row_words, retain, words):
    """Write every lane of the given ``(row, word)`` pairs, then read them back; returns
    ``{(row, word): (written, read)}``."""
    dut = LineBuffer(params)
    ic = params.ic_lanes
    result = {}

    async def bench(ctx):
        await start(ctx, dut, rows, row_words, retain)
        for n, (row, word) in enumerate(words):
            values = [(n * ic + lane) % 251 - 125 for lane in range(ic)]
            result[(row, word)] = [values]
            for lane, v in enumerate(values):
                ctx.set(dut.w_en, 1)
                ctx.set(dut.w_row, row)
                ctx.set(dut.w_word, word)
                ctx.set(dut.w_lane, lane)
                ctx.set(dut.w_data, v)
                await ctx.tick()
        ctx.set(dut.w_en, 0)
        await ctx.tick()
        for row, word in words:
            ctx.set(dut.r_row, row)
            ctx.set(dut.r_word, word)
            await ctx.tick().repeat(dut.read_latency)
            result[(row, word)].append([ctx.get(dut.r_data[lane]) for lane in range(ic)])

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return result


@pytest.mark.parametrize("depth,banks", [(1500, 2), (2200, 3)])
def test_rows_across_block_ram_banks(depth, banks):
    """A buffer deeper than one bank (1024 words): rows straddle the banks, words at the same
    offset in different banks stay apart, and the last (partial) bank's last word works."""
    p = EngineParams(bits=8, ic_lanes=2, oc_lanes=2, max_h=4, max_w=8, max_cin=4,
                     max_squeeze=4, max_e1=4, max_e3=4, weight_depth=64, squeeze_depth=depth)
    assert -(-depth // BANK_DEPTH) == banks
    rows, row_words = 4, depth // 4  # retain: the rows fill the buffer
    words = []
    for row in range(rows):
        base = row * row_words
        for addr in (base, base + row_words - 1, BANK_DEPTH - 1, BANK_DEPTH, 2 * BANK_DEPTH,
                     2 * BANK_DEPTH - 1, depth - 1, BANK_DEPTH + 7, 7):
            if base <= addr < base + row_words:
                words.append((row, addr - base))
    words = sorted(set(words))
    assert len(words) >= 12
    for (row, word), (written, read) in sparse(p, rows, row_words, 1, words).items():
        assert read == written, (row, word, row * row_words + word)


def test_address_widths_at_a_power_of_two_plus_one():
    """33 words and 9 rows: the addresses (0..32) and the row numbers (0..8) each need one
    bit more than 32 and 8 words or rows would."""
    p = EngineParams(bits=8, ic_lanes=2, oc_lanes=2, max_h=9, max_w=3, max_cin=4,
                     max_squeeze=4, max_e1=4, max_e3=4, weight_depth=64, squeeze_depth=33)
    one_row = sparse(p, 1, 33, 1, [(0, w) for w in (0, 1, 16, 31, 32)])
    nine_rows = sparse(p, 9, 3, 1, [(r, w) for r in range(9) for w in (0, 2)])
    for case in (one_row, nine_rows):
        for (row, word), (written, read) in case.items():
            assert read == written, (row, word)


def test_bank_outputs_are_registered_without_reset():
    """docs/engine.md: every block-RAM output goes straight into a register, and datapath
    registers carry no reset (a reset would put logic between the RAM and its register)."""
    p = EngineParams(bits=8, ic_lanes=2, oc_lanes=2, max_h=4, max_w=8, max_cin=4,
                     max_squeeze=4, max_e1=4, max_e3=4, weight_depth=64, squeeze_depth=2200)
    dut = LineBuffer(p)
    with_reset = registers_with_reset(dut, None)
    assert {"row", "slot", "busy"} <= with_reset  # (the check sees the control registers)
    assert not {name for name in with_reset if name.startswith("bank")}, with_reset
