"""Amaranth-simulator tests of the DMA reader and writer (``hw.dma``) on their own, against a
memory behind a native port that takes commands and gives read data after random delays
(LiteDRAM's own controller is behind them on the simulated board: tests/test_memory.py).
What they catch here: words out of order or lost under backpressure, more words in flight
than the reader can hold, a request past the end of the memory that moves anything; and
the register slice on a port's commands (``hw.stream_fifo.StreamSlice``) losing,
reordering or slowing them; the register between the link's executor and the engine
(``hw.stream_fifo.StreamRegister``) losing, reordering or keeping an item past a flush."""

from __future__ import annotations

from collections import deque

import numpy as np
import pytest
from amaranth.sim import Simulator
from streams import randomly, stream_get, stream_put

from hw.dma import CHECK_LATENCY, DMAReader, DMAWriter
from hw.stream_fifo import StreamRegister, StreamSlice

WORDS, BITS = 64, 32


def memory_model(dut, mem, rng, log):
    """The controller's side of ``dut.port``: commands taken with random gaps, read data
    returned in order after a random latency, write data taken when the controller asks."""

    async def port(ctx):
        p = dut.port
        reads, writes = deque(), deque()
        gaps, data_gaps = randomly(rng, 0.3), randomly(rng, 0.3)
        cycle = 0
        while True:
            cmd_ready = not next(gaps)
            ctx.set(p.cmd.ready, cmd_ready)
            due = bool(reads) and reads[0][0] <= cycle  # in order, each after its latency
            ctx.set(p.rdata.valid, due)
            if due:
                ctx.set(p.rdata.payload, mem[reads[0][1]])
            ctx.set(p.wdata.ready, bool(writes) and not next(data_gaps))
            # what the port does at this clock edge, sampled there (after every testbench of
            # the cycle has set its inputs)
            _, _, valid, we, addr, rd_valid, rd_ready, wd_valid, wd_ready, wdata = \
                await ctx.tick().sample(p.cmd.valid, p.cmd.payload.we, p.cmd.payload.addr,
                                        p.rdata.valid, p.rdata.ready, p.wdata.valid,
                                        p.wdata.ready, p.wdata.payload.data)
            cmd = (valid, we, addr)
            rd, wr = rd_valid and rd_ready, wd_valid and wd_ready
            cycle += 1
            if rd:
                reads.popleft()
            if wr:
                mem[writes.popleft()] = wdata
            if cmd[0] and cmd_ready:
                log.append(cmd[2])
                if cmd[1]:
                    writes.append(cmd[2])
                else:
                    due = cycle + int(rng.integers(3, 20))
                    reads.append((max(due, reads[-1][0]) if reads else due, cmd[2]))
                log.append(len(reads))

    return port


async def request(ctx, dut, addr: int, words: int) -> bool:
    """Offer a request until taken; whether it was refused (``error`` pulses
    ``CHECK_LATENCY`` cycles after it is taken, when it has been checked)."""
    ctx.set(dut.request.payload.addr, addr)
    ctx.set(dut.request.payload.words, words)
    ctx.set(dut.request.valid, 1)
    while not ctx.get(dut.request.ready):
        await ctx.tick()
    await ctx.tick()
    ctx.set(dut.request.valid, 0)
    for _ in range(CHECK_LATENCY - 1):
        assert not ctx.get(dut.error)
        await ctx.tick()
    return bool(ctx.get(dut.error))


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_reader_gives_the_words_in_order_under_backpressure(seed):
    rng = np.random.default_rng(seed)
    mem = [int(v) for v in rng.integers(0, 1 << BITS, WORDS)]
    dut = DMAReader(addr_bits=6, data_bits=BITS, words=WORDS, depth=8)
    jobs = [(0, 1), (5, 17), (40, 24), (63, 1)]
    got, log, errors = [], [], []

    async def host(ctx):
        stalls = randomly(rng, 0.4)
        for addr, n in jobs + [(60, 5)]:  # the last runs past the end: refused
            if await request(ctx, dut, addr, n):
                errors.append((addr, n))
            if (addr, n) == (60, 5):
                for _ in range(50):
                    assert not ctx.get(dut.port.cmd.valid)
                    await ctx.tick()
                continue
            got.append([await stream_get(ctx, dut.data, stalls=stalls) for _ in range(n)])

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(memory_model(dut, mem, rng, log), background=True)
    sim.add_testbench(host)
    sim.run()
    assert got == [mem[a:a + n] for a, n in jobs]
    assert errors == [(60, 5)]
    assert max(log[1::2]) <= 8  # never more reads outstanding than the reader's depth


@pytest.mark.parametrize("seed", [1, 2])
def test_writer_writes_the_words_where_asked(seed):
    rng = np.random.default_rng(seed)
    mem = [0] * WORDS
    dut = DMAWriter(addr_bits=6, data_bits=BITS, words=WORDS, depth=4)
    jobs = [(3, 1), (10, 30), (50, 14)]
    data = {job: [int(v) for v in rng.integers(1, 1 << BITS, job[1])] for job in jobs}
    errors = []

    async def host(ctx):
        gaps = randomly(rng, 0.4)
        for addr, n in [(60, 5)] + jobs:  # the first runs past the end: refused
            if await request(ctx, dut, addr, n):
                errors.append((addr, n))
            if (addr, n) == (60, 5):
                continue
            for word in data[(addr, n)]:
                await stream_put(ctx, dut.data, word, gaps=gaps)
            while ctx.get(dut.busy):
                await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(memory_model(dut, mem, rng, []), background=True)
    sim.add_testbench(host)
    sim.run()
    expect = [0] * WORDS
    for (addr, n), words in data.items():
        expect[addr:addr + n] = words
    assert mem == expect
    assert errors == [(60, 5)]


@pytest.mark.parametrize("seed", [1, 2])
def test_stream_slice_keeps_order_and_throughput_and_waits_for_enable(seed):
    """The register slice between a native port and the controller (``hw.dram``): every
    command through, in order, under random gaps and backpressure; a command a cycle when
    neither side stalls; nothing taken while the controller's ports are blocked."""
    rng = np.random.default_rng(seed)
    dut = StreamSlice(16)
    words = [int(v) for v in rng.integers(0, 1 << 16, 200)]
    got, streak = [], []

    async def source(ctx):
        ctx.set(dut.enable, 0)
        ctx.set(dut.i.payload, words[0])
        ctx.set(dut.i.valid, 1)
        for _ in range(10):  # blocked: not taken, nothing offered to the controller
            await ctx.tick()
            assert not ctx.get(dut.i.ready) and not ctx.get(dut.o.valid)
        ctx.set(dut.i.valid, 0)
        ctx.set(dut.enable, 1)
        gaps = randomly(rng, 0.3)
        for word in words[:100]:
            await stream_put(ctx, dut.i, word, gaps=gaps)
        for word in words[100:]:  # back to back
            await stream_put(ctx, dut.i, word)

    async def sink(ctx):
        stalls = randomly(rng, 0.3)
        while len(got) < 100:
            got.append(await stream_get(ctx, dut.o, stalls=stalls))
        ctx.set(dut.o.ready, 1)
        while len(got) < len(words):  # always ready: count the cycles each word takes
            cycles = 1
            while not ctx.get(dut.o.valid):
                await ctx.tick()
                cycles += 1
            got.append(ctx.get(dut.o.payload))
            streak.append(cycles)
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(source)
    sim.add_testbench(sink)
    sim.run()
    assert got == words
    assert streak[5:] == [1] * (len(words) - 105)  # a command a cycle, once it flows


@pytest.mark.parametrize("seed", [1, 2])
def test_stream_register_keeps_order_and_a_flush_empties_it(seed):
    """Every item through, in order, under random gaps and backpressure, one every other
    cycle when neither side stalls; an item held when ``flush`` comes is gone (the executor
    drops a stalled frame's items), and the next one passes."""
    rng = np.random.default_rng(seed)
    dut = StreamRegister(16)
    words = [int(v) for v in rng.integers(0, 1 << 16, 200)]
    got, gaps_seen = [], []

    async def source(ctx):
        gaps = randomly(rng, 0.3)
        for word in words[:100]:
            await stream_put(ctx, dut.w, word, gaps=gaps)
        for word in words[100:]:  # back to back
            await stream_put(ctx, dut.w, word)
        await stream_put(ctx, dut.w, 0xDEAD)  # held, never taken: flushed
        for _ in range(3):
            await ctx.tick()
        ctx.set(dut.flush, 1)
        await ctx.tick()
        ctx.set(dut.flush, 0)
        assert not ctx.get(dut.r.valid)
        await stream_put(ctx, dut.w, 0xBEEF)

    async def sink(ctx):
        stalls = randomly(rng, 0.3)
        while len(got) < 100:
            got.append(await stream_get(ctx, dut.r, stalls=stalls))
        ctx.set(dut.r.ready, 1)
        while len(got) < len(words):  # always ready: the cycles between items
            cycles = 1
            while not ctx.get(dut.r.valid):
                await ctx.tick()
                cycles += 1
                assert cycles < 100, f"item {len(got)} never came"
            got.append(ctx.get(dut.r.payload))
            gaps_seen.append(cycles)
            await ctx.tick()
        ctx.set(dut.r.ready, 0)
        while not ctx.get(dut.flush):
            await ctx.tick()
        await ctx.tick()
        got.append(await stream_get(ctx, dut.r))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(source)
    sim.add_testbench(sink)
    sim.run()
    assert got == words + [0xBEEF]
    assert gaps_seen[5:] == [2] * (len(words) - 105)  # an item every other cycle
