"""The weight and quantization-parameter buffers, and their loader.

A run that loads takes ``rows`` weight rows (``oc_lanes x ic_lanes`` weights each, in the
order the sequencer reads them) and ``channels`` parameter rows (``{bias, mult, shift}`` per
output channel: squeeze, then e1, then e3) from its two streams, in any interleaving; they
stay for later compute-only runs. The sequencer reads the weights, the requantizer the
parameters, each through a :func:`~hw.layouts.read_signature` port.

Timing: the streams' ``ready`` decides from registers only (``w_room``: rows still to come)
and the memory writes are registered, because a stream's ``ready`` and ``valid`` cross the
chip. Reads leave the block RAM straight into a register (``hw.ram.RegisteredRead``).
"""

from __future__ import annotations

from amaranth import Cat, Module, Mux, Signal, unsigned
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from spec.params import EngineParams
from spec.quant import MULT_BITS, NARROW_SHIFT_MIN, narrow_shift_max

from .layouts import qparam_layout, read_signature
from .ram import RegisteredRead, ram


class WeightBuffers(wiring.Component):
    """Weight and parameter memories with their loader (see the module docstring).

    Ports
    -----
    weights : In(stream of unsigned(weight_row_bits))
    qparams : In(stream of qparam_layout)
    start : In(1)
        Pulse: a load of ``rows`` and ``channels`` rows begins (either may be 0).
    rows, channels : In
        Weight and parameter rows of the load, held from ``start`` to ``done``.
    loading : In(1)
        The streams may be taken from.
    done : Out(1)
        Every row of the load is taken and written.
    waiting : Out(1)
        Loading waits for a row the streams do not offer (for the compute counter).
    shift_bad : Out(1)
        A parameter row of this load has a shift of 0.
    weight_read, qparam_read : In(read_signature)
        The memories' read ports.
    lane1_read, lane2_read : In(read_signature)
        Copies of the first ``max_squeeze`` parameter rows (a convolution run's channels) in
        block RAM, for the requantizer's narrow lanes (``CONV_LANES`` channels a cycle).
    narrow_ok : Out(1)
        Every parameter row of the last load qualifies for a narrow lane
        (``spec.quant.narrow_ok``: the multiplier's top bit set, the shift from
        ``NARROW_SHIFT_MIN`` to ``narrow_shift_max``): decided here, whatever the host claims.
    """

    def __init__(self, params: EngineParams, *, copies: bool = True):
        self._p = p = params
        self._copies = copies  #: the narrow lanes' copies (without them, narrow_ok is 0)
        super().__init__({
            "weights": In(stream.Signature(unsigned(p.weight_row_bits))),
            "qparams": In(stream.Signature(qparam_layout(p))),
            "start": In(1),
            "rows": In(range(p.weight_depth + 1)),
            "channels": In(range(p.qparam_depth + 1)),
            "loading": In(1),
            "done": Out(1),
            "waiting": Out(1),
            "shift_bad": Out(1),
            "weight_read": In(read_signature(range(p.weight_depth),
                                             unsigned(p.weight_row_bits))),
            "qparam_read": In(read_signature(range(p.qparam_depth), qparam_layout(p))),
            "lane1_read": In(read_signature(range(p.max_squeeze), qparam_layout(p))),
            "lane2_read": In(read_signature(range(p.max_squeeze), qparam_layout(p))),
            "narrow_ok": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        p = self._p
        m.submodules.weight_memory = wmem = ram(shape=unsigned(p.weight_row_bits),
                                                depth=p.weight_depth)
        m.submodules.qparam_memory = qmem = ram(shape=qparam_layout(p), depth=p.qparam_depth)
        w_wr, w_rd = wmem.write_port(), RegisteredRead(m, wmem, "w_rd")
        q_wr, q_rd = qmem.write_port(), RegisteredRead(m, qmem, "q_rd")
        m.d.comb += [w_rd.addr.eq(self.weight_read.addr), self.weight_read.data.eq(w_rd.data),
                     q_rd.addr.eq(self.qparam_read.addr), self.qparam_read.data.eq(q_rd.data)]

        # the narrow lanes' copies, written with the parameter memory: block RAMs (in LUT
        # RAM, 64 rows of 69 bits would take 184 of the Arty's LUTs)
        for k in (1, 2) if self._copies else ():
            copy = ram(shape=qparam_layout(p), depth=p.max_squeeze, block=True)
            m.submodules[f"lane{k}_memory"] = copy
            wr, rd = copy.write_port(), RegisteredRead(m, copy, f"lane{k}_rd")
            port = getattr(self, f"lane{k}_read")
            m.d.comb += [wr.addr.eq(q_wr.addr), wr.data.eq(q_wr.data),
                         wr.en.eq(q_wr.en & (q_wr.addr < p.max_squeeze)),
                         rd.addr.eq(port.addr), port.data.eq(rd.data)]

        w_count = Signal(range(p.weight_depth + 1))
        q_count = Signal(range(p.qparam_depth + 1))
        w_room = Signal()  # rows still to come
        q_room = Signal()
        w_take = self.weights.valid & self.weights.ready
        q_take = self.qparams.valid & self.qparams.ready
        m.d.comb += [self.weights.ready.eq(self.loading & w_room),
                     self.qparams.ready.eq(self.loading & q_room)]
        m.d.sync += [
            w_wr.addr.eq(w_count), w_wr.data.eq(self.weights.payload), w_wr.en.eq(w_take),
            q_wr.addr.eq(q_count), q_wr.data.eq(self.qparams.payload), q_wr.en.eq(q_take),
        ]
        with m.If(w_take):
            m.d.sync += [w_count.eq(w_count + 1), w_room.eq(w_count + 1 != self.rows)]
        with m.If(q_take):
            m.d.sync += [q_count.eq(q_count + 1), q_room.eq(q_count + 1 != self.channels)]
        with m.If(q_wr.en & (q_wr.data.shift == 0)):
            m.d.sync += self.shift_bad.eq(1)
        if self._copies:  # (without the lanes no run is wide: narrow_ok stays 0)
            with m.If(q_wr.en & (~q_wr.data.mult[MULT_BITS - 2]
                                 | (q_wr.data.shift > narrow_shift_max(p.spec))
                                 | (q_wr.data.shift < NARROW_SHIFT_MIN))):
                m.d.sync += self.narrow_ok.eq(0)
        with m.If(self.start):
            m.d.sync += [w_count.eq(0), q_count.eq(0), w_room.eq(self.rows != 0),
                         q_room.eq(self.channels != 0), self.shift_bad.eq(0),
                         self.narrow_ok.eq(self._copies)]
        m.d.comb += [
            self.done.eq(~w_room & ~q_room & ~w_wr.en & ~q_wr.en),
            self.waiting.eq(self.loading & (w_room | q_room) & ~w_take & ~q_take),
        ]
        return m


class RowAssembler(wiring.Component):
    """Weight beats (``weight_beat_bits``, the lowest beat of a row first) -> the engine's
    weight rows (``oc_lanes`` beats each).

    The link's executor and the layer sequencer both hand weights over a beat at a time, so
    the switch between them in front of the engine is a beat wide, not a row. A row waiting
    for the engine does not stop the next beat: it is taken in the cycle the row leaves.
    Reset with the engine (a row cut short by a RESET is dropped).
    """

    def __init__(self, params: EngineParams, *, copies: bool = True):
        self._p = p = params
        self._copies = copies  #: the narrow lanes' copies (without them, narrow_ok is 0)
        super().__init__({
            "beats": In(stream.Signature(unsigned(p.weight_beat_bits))),
            "rows": Out(stream.Signature(unsigned(p.weight_row_bits))),
        })

    def elaborate(self, platform):
        m = Module()
        p = self._p
        n = p.oc_lanes
        row = Signal(p.weight_row_bits, reset_less=True)
        have = Signal(range(n + 1))
        full = have == n
        row_taken = self.rows.valid & self.rows.ready
        take = self.beats.valid & self.beats.ready
        m.d.comb += [self.rows.valid.eq(full), self.rows.payload.eq(row),
                     self.beats.ready.eq(~full | self.rows.ready)]
        with m.If(take):
            m.d.sync += [row.eq(Cat(row[p.weight_beat_bits:], self.beats.payload)),
                         have.eq(Mux(row_taken, 1, have + 1))]
        with m.Elif(row_taken):
            m.d.sync += have.eq(0)
        return m
