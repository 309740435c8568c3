"""Amaranth-simulator tests of the crossings into the memory controller's own clock domain
(``hw.dram_cdc``: the ULX3S's controller runs at 50 MHz beside the design's 100 MHz), with
the two clocks unrelated. The controller's side is a model as strict as LiteDRAM's native
port: it takes a write's data word when it asks for it whether or not ``wdata.valid`` is
high, and pushes read data whether or not ``rdata.ready`` is. The design's side is the real
DMA writer and reader (``hw.dma``), with backpressure on their streams.

What they catch: a write command passed before its word has crossed (the controller would
write a stale word), read data pushed into a full FIFO (lost), commands or words reordered
or dropped, a Wishbone cycle acknowledged twice or with another cycle's data."""

from __future__ import annotations

from collections import deque

import numpy as np
import pytest
from amaranth import ClockDomain, Module
from amaranth.sim import Simulator
from streams import randomly, stream_get, stream_put
from test_dma import request

from hw.dma import DMAReader, DMAWriter
from hw.dram_cdc import NativePortCDC, WishboneCDC

WORDS, BITS = 64, 16
#: (design clock, controller clock) periods, seconds: slower and faster controllers
CLOCKS = [(10e-9, 23.7e-9), (10e-9, 7.3e-9)]


def strict_controller(port, mem, rng, log):
    """LiteDRAM's side of a native port in the ``dram`` domain: commands taken with random
    gaps; a write's word taken 1-3 cycles after its command (``wdata.ready`` for a cycle,
    the word used whatever ``valid`` says: a word not there is a violation, logged); a read's
    word pushed 2-6 cycles after its command without looking at ``rdata.ready``."""

    async def run(ctx):
        pending = deque()  # (due cycle, is write, address), in command order
        gaps = randomly(rng, 0.3)
        cycle = 0
        while True:
            ready = not next(gaps)
            ctx.set(port.cmd.ready, ready)
            due = bool(pending) and pending[0][0] <= cycle
            write_due = due and pending[0][1]
            read_due = due and not pending[0][1]
            ctx.set(port.wdata.ready, write_due)
            ctx.set(port.rdata.valid, read_due)
            if read_due:
                ctx.set(port.rdata.payload, mem[pending[0][2]])
            _, _, valid, we, addr, wvalid, wdata = await ctx.tick("dram").sample(
                port.cmd.valid, port.cmd.payload.we, port.cmd.payload.addr,
                port.wdata.valid, port.wdata.payload.data)
            cycle += 1
            if write_due:
                if not wvalid:
                    log.append(("write data not there", pending[0][2]))
                mem[pending[0][2]] = wdata
            if due:
                pending.popleft()
            if valid and ready:
                delay = int(rng.integers(1, 4) if we else rng.integers(2, 7))
                last = pending[-1][0] + 1 if pending else 0
                pending.append((max(cycle + delay, last), bool(we), addr))

    return run


@pytest.mark.parametrize("periods", CLOCKS, ids=["slower", "faster"])
@pytest.mark.parametrize("seed", [1, 2])
def test_dma_through_the_crossing_writes_and_reads_back_every_word(periods, seed):
    rng = np.random.default_rng(seed)
    mem = [0] * WORDS
    m = Module()
    m.domains.sync = ClockDomain()
    m.domains.dram = ClockDomain()
    geometry = {"addr_bits": 6, "data_bits": BITS, "words": WORDS}
    m.submodules.writer = writer = DMAWriter(**geometry, depth=8)
    m.submodules.reader = reader = DMAReader(**geometry, depth=8)
    m.submodules.wr_cdc = wr_cdc = NativePortCDC(6, BITS, depth=4)
    m.submodules.rd_cdc = rd_cdc = NativePortCDC(6, BITS, depth=4)
    from amaranth.lib import wiring
    wiring.connect(m, writer.port, wr_cdc.i)
    wiring.connect(m, reader.port, rd_cdc.i)
    jobs = [(0, 1), (3, 20), (30, 34)]
    data = {job: [int(v) for v in rng.integers(1, 1 << BITS, job[1])] for job in jobs}
    got, log = [], []

    async def host(ctx):
        gaps, stalls = randomly(rng, 0.3), randomly(rng, 0.5)
        for addr, n in jobs:
            assert not await request(ctx, writer, addr, n)
            for word in data[(addr, n)]:
                await stream_put(ctx, writer.data, word, gaps=gaps)
            while ctx.get(writer.busy):
                await ctx.tick()
        for addr, n in jobs:
            assert not await request(ctx, reader, addr, n)
            got.append([await stream_get(ctx, reader.data, stalls=stalls) for _ in range(n)])

    sim = Simulator(m)
    sim.add_clock(periods[0], domain="sync")
    sim.add_clock(periods[1], domain="dram")
    sim.add_testbench(strict_controller(wr_cdc.o, mem, rng, log), background=True)
    sim.add_testbench(strict_controller(rd_cdc.o, mem, rng, log), background=True)
    sim.add_testbench(host)
    sim.run()
    assert log == []
    assert got == [data[job] for job in jobs]


@pytest.mark.parametrize("periods", CLOCKS, ids=["slower", "faster"])
def test_reads_owed_never_overflow_the_read_data_fifo(periods):
    """Reads issued back to back while the design takes no read data (as many as the read
    data FIFO and the command FIFO hold together): the crossing passes no more reads than
    the read data FIFO holds, so every word arrives once the design takes them."""
    rng = np.random.default_rng(7)
    mem = [int(v) for v in rng.integers(0, 1 << BITS, WORDS)]
    m = Module()
    m.domains.sync = ClockDomain()
    m.domains.dram = ClockDomain()
    m.submodules.cdc = cdc = NativePortCDC(6, BITS, depth=4)
    log, got = [], []

    async def design(ctx):
        ctx.set(cdc.i.rdata.ready, 0)
        for addr in range(8):
            await stream_put(ctx, cdc.i.cmd, addr << 1)  # (we = 0: the payload's low bit)
        for _ in range(200):
            await ctx.tick()
        for _ in range(8):
            got.append(await stream_get(ctx, cdc.i.rdata, limit=50))

    sim = Simulator(m)
    sim.add_clock(periods[0], domain="sync")
    sim.add_clock(periods[1], domain="dram")
    sim.add_testbench(strict_controller(cdc.o, mem, rng, log), background=True)
    sim.add_testbench(design)
    sim.run()
    assert got == mem[:8]


@pytest.mark.parametrize("periods", CLOCKS, ids=["slower", "faster"])
def test_wishbone_cycles_cross_one_at_a_time(periods):
    rng = np.random.default_rng(3)
    regs = {}
    m = Module()
    m.domains.sync = ClockDomain()
    m.domains.dram = ClockDomain()
    m.submodules.cdc = cdc = WishboneCDC()
    seen = []

    async def slave(ctx):
        o = cdc.o
        while True:
            _, _, cyc, stb, adr, we, dat_w = await ctx.tick("dram").sample(
                o.cyc, o.stb, o.adr, o.we, o.dat_w)
            ctx.set(o.ack, 0)
            if cyc and stb:
                for _ in range(int(rng.integers(0, 4))):
                    await ctx.tick("dram")
                seen.append((adr, we))
                if we:
                    regs[adr] = dat_w
                ctx.set(o.dat_r, regs.get(adr, 0xDEAD))
                ctx.set(o.ack, 1)
                await ctx.tick("dram")
                ctx.set(o.ack, 0)

    results = []

    async def master(ctx):
        i = cdc.i
        ops = [(True, 5, 0x1234), (True, 9, 0xBEEF), (False, 5, None), (True, 5, 0x55AA),
               (False, 9, None), (False, 5, None), (False, 77, None)]
        for we, adr, value in ops:
            ctx.set(i.adr, adr)
            ctx.set(i.we, we)
            ctx.set(i.dat_w, value or 0)
            ctx.set(i.sel, 0xF)
            ctx.set(i.cyc, 1)
            ctx.set(i.stb, 1)
            await ctx.tick()
            for _ in range(100):
                if ctx.get(i.ack):
                    break
                await ctx.tick()
            else:
                raise AssertionError(f"no ack for {(we, adr)}")
            results.append(ctx.get(i.dat_r))
            await ctx.tick()
            ctx.set(i.cyc, 0)
            ctx.set(i.stb, 0)
            assert not ctx.get(i.ack)
        for _ in range(int(rng.integers(0, 3))):
            await ctx.tick()

    sim = Simulator(m)
    sim.add_clock(periods[0], domain="sync")
    sim.add_clock(periods[1], domain="dram")
    sim.add_testbench(slave, background=True)
    sim.add_testbench(master)
    sim.run()
    assert seen == [(5, 1), (9, 1), (5, 0), (5, 1), (9, 0), (5, 0), (77, 0)]
    assert results[2] == 0x1234 and results[4:] == [0xBEEF, 0x55AA, 0xDEAD]
