"""Amaranth-simulator tests of the input buffer: pixels stream into two slots and are read
back intact by a sequencer that reads each pixel's words several times; a released slot is
refilled no sooner than its last read has left the memory; the stream stops at the layer's
last pixel."""

from __future__ import annotations

import numpy as np
import pytest
from amaranth.sim import Simulator

from hw.input_buffer import InputBuffer
from spec.params import EngineParams, ceil_div

P = EngineParams(bits=8, ic_lanes=2, oc_lanes=3, max_h=4, max_w=3, max_cin=6, max_squeeze=4,
                 max_e1=4, max_e3=4, weight_depth=48, squeeze_depth=24, bypass=False)
#: cycles from the sequencer's issue of a read to the read address register (op, address)
ADDRESS_LATENCY = 2


def run_buffer(h, w, cin, *, gaps, passes, seed):
    """Stream an ``h x w x cin`` input (and one word more, never taken) with ``gaps``; read
    every pixel ``passes`` times as the sequencer does; return what was read and the cycles
    of each release and of each pixel's first beat taken (each testbench counts its own
    cycles from the start)."""
    rng = np.random.default_rng(seed)
    words = ceil_div(cin, P.ic_lanes)
    image = rng.integers(P.spec.act_min, P.spec.act_max + 1, (h * w, words, P.ic_lanes))
    dut = InputBuffer(P)
    log = {"read": [], "released": [], "first_beat": [], "extra_taken": False}

    async def stream(ctx):
        now = 0
        beats = [(pixel, k) for pixel in range(h * w) for k in range(words)]
        beats.append(None)  # one more word: past the layer's last pixel
        extra_cycles = 0
        while extra_cycles < 10 and now < 5000:
            beat = beats[0]
            offer = rng.random() >= gaps
            ctx.set(dut.input.valid, offer)
            if beat is not None:
                ctx.set(dut.input.payload, [int(v) for v in image[beat]])
            if beat is None:
                extra_cycles += 1
                log["extra_taken"] |= bool(ctx.get(dut.input.ready))
            elif offer and ctx.get(dut.input.ready):
                if beat[1] == 0:
                    log["first_beat"].append(now)
                beats.pop(0)
            await ctx.tick()
            now += 1
        ctx.set(dut.input.valid, 0)

    async def sequencer(ctx):
        ctx.set(dut.rows, h)
        ctx.set(dut.cols, w)
        ctx.set(dut.words, words)
        ctx.set(dut.squeeze, 1)
        ctx.set(dut.start, 1)
        await ctx.tick()
        ctx.set(dut.start, 0)
        now = 1
        reads = []  # (cycle of the read address, slot, word, pixel), in issue order
        issues = [(pixel, n) for pixel in range(h * w) for n in range(passes * words)]
        while (issues or reads) and now < 5000:
            # the read port: the address the fetch registered, the word a cycle later
            for when, slot, k, pixel in list(reads):
                if now == when + 1:
                    log["read"].append((pixel, k, [ctx.get(dut.read.data[i])
                                                   for i in range(P.ic_lanes)]))
                    reads.remove((when, slot, k, pixel))
                elif now == when:
                    ctx.set(dut.read.addr.slot, slot)
                    ctx.set(dut.read.addr.word, k)
            ctx.set(dut.release, 0)
            if issues:
                pixel, n = issues[0]
                ctx.set(dut.read_slot, pixel % 2)
                if ctx.get(dut.pixel_ready):
                    last = n == passes * words - 1
                    ctx.set(dut.release, last)
                    if last:
                        log["released"].append(now)
                    reads.append((now + ADDRESS_LATENCY, pixel % 2, n % words, pixel))
                    issues.pop(0)
            await ctx.tick()
            now += 1

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(stream)
    sim.add_testbench(sequencer)
    sim.run()
    return image, log


@pytest.mark.parametrize("gaps", [0.0, 0.4], ids=["full-rate", "gaps"])
@pytest.mark.parametrize("cin, passes", [(6, 2), (2, 3), (5, 1)])
def test_pixels_read_back_intact(gaps, cin, passes):
    h, w = 3, 3
    image, log = run_buffer(h, w, cin, gaps=gaps, passes=passes, seed=cin + passes)
    words = image.shape[1]
    assert len(log["read"]) == h * w * passes * words
    for pixel, k, got in log["read"]:
        assert got == [int(v) for v in image[pixel, k]], (pixel, k)
    assert not log["extra_taken"], "a word past the layer's last pixel was taken"
    # a slot is refilled (pixel i + 2) only after pixel i's release and its last read, which
    # reaches the memory ADDRESS_LATENCY cycles after the release
    for i, released in enumerate(log["released"][:-2]):
        assert log["first_beat"][i + 2] > released + ADDRESS_LATENCY, i
    if gaps == 0 and passes * words >= words + 2:
        # the stream refills a slot (two cycles' hold, its words, the flag's register) while
        # the other is read: the reader never waits
        released = log["released"]
        pairs = zip(released[1:], released[2:], strict=False)
        assert all(b - a == passes * words for a, b in pairs)


def test_a_slot_is_ready_only_with_its_own_pixel():
    """One pixel in slot 0: slot 1 is not ready; after its release, neither is slot 0."""
    dut = InputBuffer(P)
    seen = []

    async def bench(ctx):
        for port, value in ((dut.rows, 1), (dut.cols, 1), (dut.words, 1), (dut.squeeze, 1),
                            (dut.start, 1)):
            ctx.set(port, value)
        await ctx.tick()
        ctx.set(dut.start, 0)
        ctx.set(dut.input.valid, 1)
        await ctx.tick()  # the one pixel's one word
        ctx.set(dut.input.valid, 0)
        await ctx.tick()
        for slot in (0, 1):
            ctx.set(dut.read_slot, slot)
            seen.append(ctx.get(dut.pixel_ready))
        ctx.set(dut.read_slot, 0)
        ctx.set(dut.release, 1)
        await ctx.tick()
        ctx.set(dut.release, 0)
        seen.append(ctx.get(dut.pixel_ready))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert seen == [1, 0, 0]
