"""Amaranth-simulator tests of the weight and parameter buffers: a load takes exactly its
rows from both streams, in any interleaving, and the read ports return them; a shift of 0 is
flagged; a second load starts over."""

from __future__ import annotations

import numpy as np
import pytest
from amaranth.sim import Simulator
from streams import randomly, stream_put

from hw.layouts import qparam_layout
from hw.weight_buffers import RowAssembler, WeightBuffers
from spec.params import EngineParams

P = EngineParams(bits=4, ic_lanes=2, oc_lanes=3, max_h=4, max_w=4, max_cin=4, max_squeeze=4,
                 max_e1=4, max_e3=4, weight_depth=40, squeeze_depth=24, bypass=False)


def random_load(rng, n_rows, n_params, bad_shift=False):
    rows = [int(v) for v in rng.integers(0, 1 << P.weight_row_bits, n_rows, dtype=np.uint64)]
    qparams = [dict(bias=int(rng.integers(-1000, 1000)), mult=int(rng.integers(1, 1 << 30)),
                    shift=int(rng.integers(1, 64))) for _ in range(n_params)]
    if bad_shift:
        qparams[len(qparams) // 2]["shift"] = 0
    return rows, [qparam_layout(P).const(q).as_value().value for q in qparams]


async def wait_for(ctx, condition, limit=5000):
    for _ in range(limit):
        if condition():
            return
        await ctx.tick()
    raise AssertionError("timed out")


def run_loads(loads, gaps, seed):
    """Load each ``(rows, qparams)`` in turn (the streams fed by their own testbenches, with
    one row more than the load offered after it), reading both memories back after each."""
    rng = np.random.default_rng(seed)
    dut = WeightBuffers(P)
    state = {"load": -1, "fed": 0}
    results = []

    async def control(ctx):
        for i, (rows, qparams) in enumerate(loads):
            state["load"] = i  # the streams offer their rows from the next cycle
            await ctx.tick()
            ctx.set(dut.rows, len(rows))
            ctx.set(dut.channels, len(qparams))
            ctx.set(dut.start, 1)
            await ctx.tick()
            ctx.set(dut.start, 0)
            ctx.set(dut.loading, 1)
            seen = {"waiting": 0, "cycles": 0}
            while not ctx.get(dut.done):
                seen["waiting"] += ctx.get(dut.waiting)
                seen["cycles"] += 1
                assert seen["cycles"] < 5000, "the load does not end"
                await ctx.tick()
            seen["shift_bad"] = ctx.get(dut.shift_bad)
            await wait_for(ctx, lambda i=i: state["fed"] == 2 * (i + 1))  # extras offered
            ctx.set(dut.loading, 0)
            for name, port, depth in (("weights", dut.weight_read, P.weight_depth),
                                      ("qparams", dut.qparam_read, P.qparam_depth)):
                seen[name] = []
                for addr in range(depth):
                    ctx.set(port.addr, addr)
                    await ctx.tick()  # the read register
                    data = port.data
                    seen[name].append(ctx.get(data.as_value() if hasattr(data, "as_value")
                                              else data))
            results.append(seen)

    def feeder(stream, which):
        async def feed(ctx):
            for i, load in enumerate(loads):
                await wait_for(ctx, lambda i=i: state["load"] == i)
                for word in load[which]:
                    await stream_put(ctx, stream, word, gaps=randomly(rng, gaps))
                # one more: the load has all its rows, it must not be taken
                ctx.set(stream.valid, 1)
                for _ in range(20):
                    assert not ctx.get(stream.ready), "a row beyond the load was taken"
                    await ctx.tick()
                ctx.set(stream.valid, 0)
                state["fed"] += 1
        return feed

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(control)
    sim.add_testbench(feeder(dut.weights, 0))
    sim.add_testbench(feeder(dut.qparams, 1))
    sim.run()
    return results


@pytest.mark.parametrize("gaps", [0.0, 0.5], ids=["full-rate", "gaps"])
def test_loads_land_and_read_back(gaps):
    rng = np.random.default_rng(1)
    first = random_load(rng, P.weight_depth, P.qparam_depth, bad_shift=True)
    second = random_load(rng, 7, 3)  # fewer rows: overwrites the start only
    third = random_load(rng, 0, 5)  # parameters only
    results = run_loads([first, second, third], gaps, seed=2)
    memory = [[None] * P.weight_depth, [None] * P.qparam_depth]
    for i, ((rows, qparams), seen) in enumerate(zip((first, second, third), results,
                                                     strict=True)):
        memory[0][:len(rows)] = rows
        memory[1][:len(qparams)] = qparams
        assert seen["weights"] == memory[0], f"load {i}: weights"
        assert seen["qparams"] == memory[1], f"load {i}: parameters"
        assert seen["shift_bad"] == (i == 0), f"load {i}: the shift of 0 flagged in its load"
        if gaps == 0:
            # both streams offer a row every cycle: loading never waits, and ends right after
            # the longer stream's last row is written
            assert seen["waiting"] == 0, i
            assert seen["cycles"] == max(len(rows), len(qparams)) + 1, i
        elif rows:
            assert seen["waiting"] > 0, i


@pytest.mark.parametrize("gaps,stalls", [(0.0, 0.0), (0.4, 0.5)])
def test_row_assembler_puts_beats_together_in_order(gaps, stalls):
    """Rows come out as their beats went in, the lowest first, whatever the gaps and the
    backpressure; with neither, a row every ``oc_lanes`` cycles (a waiting row does not stop
    the next beat)."""
    rng = np.random.default_rng(7)
    rows = [int(v) for v in rng.integers(0, 1 << P.weight_row_bits, 12, dtype=np.uint64)]
    beat, mask = P.weight_beat_bits, (1 << P.weight_beat_bits) - 1
    beats = [r >> (k * beat) & mask for r in rows for k in range(P.oc_lanes)]
    dut = RowAssembler(P)
    got, cycles = [], []

    async def bench(ctx):
        # both sides from one testbench: each cycle sets valid and ready, then reads the
        # handshakes they make
        sent = 0
        for cycle in range(2000):
            offer = sent < len(beats) and rng.random() >= gaps
            ctx.set(dut.beats.valid, offer)
            ctx.set(dut.beats.payload, beats[sent] if offer else 0)
            ctx.set(dut.rows.ready, rng.random() >= stalls)
            if offer and ctx.get(dut.beats.ready):
                sent += 1
            if ctx.get(dut.rows.valid) and ctx.get(dut.rows.ready):
                got.append(ctx.get(dut.rows.payload))
                cycles.append(cycle)
            await ctx.tick()
            if len(got) == len(rows):
                break

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    assert got == rows
    if not gaps and not stalls:
        assert np.diff(cycles).tolist() == [P.oc_lanes] * (len(rows) - 1)
