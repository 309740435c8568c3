"""The engine's cycle counters: ``cycles`` and ``compute`` of the last run, and ``runs``.

``cycles`` counts from the configuration beat to the last output beat (or to the end of the
run, when it outputs nothing). ``compute`` is those cycles less the ones the engine spent
held up by a stream outside it, so that it is the engine's own figure whatever feeds it (a
UART, the simulated board, a full-rate harness). Held up means:

* the sequencer needs the next input pixel and it has not arrived (``input_wait``);
* loading waits for weight or parameter rows (``load_wait``);
* the sequencer is not issuing while the output side is congested (the bypass value is
  missing, or a FIFO after the requantizer is more than half full; their credit counters
  would not do: at full rate the requantizer's pipeline holds half of them). At full rate
  those FIFOs drain a value a cycle and never fill, so the sequencer's own stalls (row
  steps, waiting for squeeze rows, credits) count as compute there and here; once the output
  is throttled they are the output's doing.

Under congestion the requantizer runs at the output's pace, so whether a credit stall would
also happen at full rate cannot be seen in the real FIFO: a shadow of the full-rate
requantizer tells it, ``v_owed``, the channels it would still owe, paying one every cycle
that counts as compute. A stall where it owes a full FIFO's worth is the engine's own (the
requantizer is its bottleneck there), and counts; so does a wait for an input pixel then (a
requantizer-bound convolution, conv1's 64 channels a pixel from 26 issue cycles: a full-rate
sequencer would be waiting for a credit instead). The MAC array issues the same operations
either way, so compute never falls below its issue cycles. (docs/engine.md, "Cycle
counting", has the measurements.)
"""

from __future__ import annotations

from amaranth import Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from spec.params import EngineParams

#: Widths of the status counters: as the link's DONE reply and the counter registers carry
#: them (hw.link), 32-bit cycle counts (44 s at 96 MHz) and 16-bit run counts.
CYCLE_BITS = 32
RUN_BITS = 16


class CycleCounters(wiring.Component):
    """Run counters of the Fire engine (see the module docstring).

    Parameters
    ----------
    group_credits : int
        The group FIFO's depth (the sequencer's credits).

    Ports
    -----
    start, refused, done : In(1)
        Pulses: a configuration is taken; it is refused; its run ends.
    running : In(1)
        From taking a configuration to its refusal or the end of its run.
    out_beat : In(1)
        An output beat.
    go : In(1)
        Pulse: the sequencer starts.
    input_wait, load_wait, credit_stall, in_run, issuing, congested : In(1)
        Why the engine is not issuing (see the module docstring).
    group_channels : In
        Channels of a group whose last beat the operand fetch passed (0 when none).
    cycles, compute, runs : Out
        The last run's figures, and the configurations handled (run to the end or refused).
    """

    def __init__(self, params: EngineParams, *, group_credits: int):
        self._p = params
        self._credits = group_credits
        super().__init__({
            "start": In(1),
            "refused": In(1),
            "done": In(1),
            "running": In(1),
            "out_beat": In(1),
            "go": In(1),
            "input_wait": In(1),
            "load_wait": In(1),
            "credit_stall": In(1),
            "in_run": In(1),
            "issuing": In(1),
            "congested": In(1),
            "group_channels": In(range(params.oc_lanes + 1)),
            "cycles": Out(CYCLE_BITS),
            "compute": Out(CYCLE_BITS),
            "runs": Out(RUN_BITS),
        })

    def elaborate(self, platform):
        m = Module()
        oc = self._p.oc_lanes
        cycles = Signal(CYCLE_BITS)  # of the run so far
        last_beat = Signal(CYCLE_BITS)  # ``cycles`` at the last output beat
        waited = Signal(CYCLE_BITS)  # cycles spent waiting on a stream
        last_wait = Signal(CYCLE_BITS)  # ``waited`` at the last output beat
        with m.If(self.running):
            m.d.sync += cycles.eq(cycles + 1)
        with m.If(self.start):
            m.d.sync += [cycles.eq(1), last_beat.eq(0), last_wait.eq(0)]
        with m.If(self.refused):
            m.d.sync += [self.runs.eq(self.runs + 1), self.cycles.eq(0), self.compute.eq(0)]
        with m.If(self.done):
            m.d.sync += [self.runs.eq(self.runs + 1),
                         self.cycles.eq(Mux(last_beat != 0, last_beat, cycles)),
                         self.compute.eq(Mux(last_beat != 0, last_beat - last_wait,
                                             cycles - waited))]
        with m.If(self.out_beat):
            m.d.sync += last_beat.eq(cycles)

        # the shadow owes at most a group FIFO's worth more than the real requantizer, which
        # holds at most a FIFO's worth and the groups in the operand pipeline
        v_owed = Signal(range(4 * (self._credits + 2) * oc + 1))
        wait_r = Signal()  # registered: off the handshakes' paths
        with m.If(self.go):
            m.d.sync += v_owed.eq(0)
        with m.Else():
            m.d.sync += v_owed.eq(v_owed + self.group_channels - ((v_owed != 0) & ~wait_r))
        # the full-rate requantizer owes a full FIFO's worth: a full-rate sequencer would be
        # stalled for a credit here, whatever holds the real one up
        owes = v_owed > (self._credits - 3) * oc
        own_stall = self.credit_stall & owes
        wait = Signal()
        m.d.comb += wait.eq(self.running & (
            (self.input_wait & ~owes) | self.load_wait
            | (self.in_run & ~self.issuing & self.congested & ~own_stall)))
        m.d.sync += wait_r.eq(wait)
        with m.If(self.start):
            m.d.sync += waited.eq(0)
        with m.Elif(wait_r):
            m.d.sync += waited.eq(waited + 1)
        with m.If(self.out_beat):
            m.d.sync += last_wait.eq(waited + wait_r)
        return m
