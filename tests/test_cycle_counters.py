"""Amaranth-simulator tests of the cycle counters: ``cycles`` runs from the configuration
beat to the last output beat, ``compute`` leaves out the cycles spent waiting on a stream
before it, and a credit stall under congestion counts as waiting only when the shadow
requantizer says a full-rate run would not have stalled (docs/engine.md, "Cycle counting")."""

from __future__ import annotations

import pytest
from amaranth.sim import Simulator

from hw.cycle_counters import CycleCounters
from spec.params import EngineParams

P = EngineParams(bits=8, ic_lanes=2, oc_lanes=3, max_h=4, max_w=4, max_cin=4, max_squeeze=4,
                 max_e1=4, max_e3=4, weight_depth=48, squeeze_depth=24)
CREDITS = 5
#: the shadow owes "a full FIFO's worth" above this many channels
OWED = (CREDITS - 3) * P.oc_lanes
REASONS = ("input_wait", "load_wait", "credit_stall", "in_run", "issuing", "congested")


def run(schedules):
    """Play each run's schedule: cycle 0 takes the configuration; ``end`` is the cycle of
    its done (or refusal) pulse; ``cycle -> {port: value}`` the inputs of a cycle. Returns
    ``(cycles, compute, runs)`` after each."""
    dut = CycleCounters(P, group_credits=CREDITS)
    results = []

    async def bench(ctx):
        for end, per_cycle, refused in schedules:
            for cycle in range(end + 1):
                inputs = per_cycle.get(cycle, {})
                ctx.set(dut.start, cycle == 0)
                ctx.set(dut.running, 0 < cycle <= end)
                ctx.set(dut.go, cycle == 1)
                ctx.set(dut.refused, refused and cycle == end)
                ctx.set(dut.done, not refused and cycle == end)
                for name in REASONS + ("out_beat", "group_channels"):
                    ctx.set(getattr(dut, name), inputs.get(name, 0))
                await ctx.tick()
            for name in REASONS + ("out_beat", "group_channels", "done", "refused"):
                ctx.set(getattr(dut, name), 0)
            ctx.set(dut.running, 0)
            await ctx.tick()
            results.append((ctx.get(dut.cycles), ctx.get(dut.compute), ctx.get(dut.runs)))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return results


def waiting(cycles, reason="input_wait"):
    return {c: {reason: 1} for c in cycles}


def merge(*schedules):
    """Schedules together: a cycle's inputs from each."""
    out = {}
    for schedule in schedules:
        for cycle, inputs in schedule.items():
            out.setdefault(cycle, {}).update(inputs)
    return out


def test_waits_before_the_last_beat_are_left_out():
    beats = {c: {"out_beat": 1} for c in (30, 41, 50)}
    runs = [
        (60, beats, False),  # nothing waits: compute is every cycle to the last beat
        (60, merge(beats, waiting(range(5, 12))), False),  # seven cycles without input
        (60, merge(beats, waiting(range(45, 58), "load_wait")), False),  # ... partly after
        (40, waiting(range(3, 8)), False),  # no output: to the end, less the waits
        (25, waiting(range(3, 8)), True),  # refused: nothing to report
    ]
    got = run(runs)
    assert got[0] == (50, 50, 1)
    assert got[1] == (50, 43, 2)
    assert got[2] == (50, 50 - 5, 3)  # 45..49 waited before the last beat
    # without a beat: the run's cycles at its end, less the waits counted by then
    assert got[3] == (40, 40 - 5, 4)
    assert got[4] == (0, 0, 5)


@pytest.mark.parametrize("groups", [0, 1, 5])
def test_a_credit_stall_under_congestion(groups):
    """Not issuing while the output is congested is waiting, except a credit stall while the
    shadow requantizer owes more than ``OWED`` channels: a full-rate run stalls there too.
    Five full groups just before the stall leave it owing 11 to 8 channels through the
    stall (it pays one a cycle); one group, nothing by then."""
    issued = {c: {"in_run": 1, "group_channels": P.oc_lanes} for c in range(10 - groups, 10)}
    stall = {c: {"in_run": 1, "congested": 1, "credit_stall": 1} for c in range(10, 14)}
    (got,) = run([(22, merge(issued, stall, {20: {"out_beat": 1}}), False)])
    assert got == (20, 20 if groups == 5 else 16, 1)
    # the same cycles without congestion are the engine's own in either case
    plain = {c: {"in_run": 1, "credit_stall": 1} for c in range(10, 14)}
    assert run([(22, merge(plain, {20: {"out_beat": 1}}), False)])[0] == (20, 20, 1)


def test_issuing_is_never_waiting():
    busy = {c: {"in_run": 1, "issuing": 1, "congested": 1} for c in range(2, 30)}
    assert run([(32, merge(busy, {30: {"out_beat": 1}}), False)])[0] == (30, 30, 1)
