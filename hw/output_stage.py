"""The output stage: the expand values' FIFO, the bypass add, and the final FIFO.

::

    expand values ─> fire_out FIFO ─┬─────────── delay ───────────┬─> final FIFO ─> output
                         bypass ────┴─> BypassAdder (optional) ───┘

The requantizer writes an expand value only with a credit for a ``fire_out`` slot, returned
here (``freed``, registered: a cycle late) when the value leaves. A value leaves ``fire_out``
(the *join*) when its bypass value is there (if the run adds one) and a slot of ``final`` is
reserved for it; an output beat returns that credit, a cycle late. So the bypass adder, like
the requantizer, is a fixed-latency pipeline with no stall logic, and a slow ``output`` or a
missing ``bypass`` only holds the join, and through the credits, the requantizer and the
sequencer.

A beat carries up to ``CONV_LANES`` values (``i`` and ``i_more``: a wide conv run's
requantizer lanes; one otherwise), through both FIFOs as one entry and one credit. ``output``
gives a beat's first value, ``output_wide`` the whole beat, both from the final FIFO: the
consumer takes one of them (the link the first, which never carries a wide run's beats; the
layer sequencer the second).
"""

from __future__ import annotations

from amaranth import Const, Module, Signal, signed
from amaranth.lib import data, fifo, stream, wiring
from amaranth.lib.wiring import In, Out

from spec.params import CONV_LANES, OUTPUT_FIFO_DEPTH, EngineParams
from spec.quant import MULT_BITS, NARROW_BITS

from .arith import NARROW_PRODUCT_BITS, BypassAdder, delay
from .layouts import config_layout, wide_beat_layout


class OutputStage(wiring.Component):
    """Output FIFOs and bypass add, with their credits (see the module docstring).

    Ports
    -----
    i : In(stream of signed(bits), always ready)
        Expand values from the requantizer, which holds a credit for each.
    bypass : In(stream of signed(bits))
        Only when built with bypass: the input values added to the outputs, in output order.
    i_more : In(array of CONV_LANES - 1 signed(bits)), i_extra : In
        With ``i``: more values of the beat, ``i_extra`` of them (0 when unused).
    output : Out(stream of signed(bits))
        A beat's first value.
    output_wide : Out(stream of wide_beat_layout)
        The whole beat (the same FIFO as ``output``: take one or the other).
    alt_a, alt_m : In, alt_p : Out
        With ``lend``: the requantizer's narrow lanes' products on the bypass adder's
        multipliers, in a conv run (``hw.arith.BypassAdder``).
    layer : In(config_layout)
        The run's configuration (whether to add the bypass, its parameters).
    go : In(1)
        Pulse: a run starts (every credit back).
    freed : Out(1)
        Registered pulse: a value left ``fire_out`` (its credit comes back).
    beat : Out(1)
        An output beat this cycle.
    congested : Out(1)
        The output side holds the engine up: the bypass value is missing, or a FIFO is more
        than half full (at full rate each drains a value a cycle and never fills).
    idle : Out(1)
        Nothing between ``fire_out`` and ``output``.
    """

    def __init__(self, params: EngineParams, *, multipliers: str = "dsp",
                 lanes: int = CONV_LANES):
        self._p = p = params
        self._lanes = lanes  #: values a beat (1: an engine without the narrow lanes)
        #: the bypass adder lends its multipliers to the narrow lanes (DSP48E1s take the
        #: narrow lanes' 25-bit operand whole)
        self.lend = p.bypass and multipliers == "dsp" and lanes > 1
        self._adder = (BypassAdder(p.spec, multipliers=multipliers, lend=self.lend)
                       if p.bypass else None)
        extra = CONV_LANES - 1
        members = {
            "i": In(stream.Signature(signed(p.bits), always_ready=True)),
            "i_more": In(data.ArrayLayout(signed(p.bits), extra)),
            "i_extra": In(range(extra + 1)),
            "output": Out(stream.Signature(signed(p.bits))),
            "output_wide": Out(stream.Signature(wide_beat_layout(p, self._lanes))),
            "layer": In(config_layout(p)),
            "go": In(1),
            "freed": Out(1),
            "beat": Out(1),
            "congested": Out(1),
            "idle": Out(1),
        }
        if p.bypass:
            members["bypass"] = In(stream.Signature(signed(p.bits)))
        if self.lend:
            members.update({"alt_a": In(data.ArrayLayout(signed(NARROW_BITS), extra)),
                            "alt_m": In(data.ArrayLayout(MULT_BITS - 1, extra)),
                            "alt_p": Out(data.ArrayLayout(signed(NARROW_PRODUCT_BITS), extra))})
        super().__init__(members)

    @property
    def depth(self) -> int:
        """Slots of ``fire_out``: the requantizer's output credits."""
        return OUTPUT_FIFO_DEPTH

    @property
    def join_latency(self) -> int:
        """Cycles from the join to the final FIFO: the bypass adder's (a register without)."""
        return self._adder.latency if self._adder is not None else 1

    def elaborate(self, platform):
        m = Module()
        p, layer = self._p, self.layer
        beat_l = wide_beat_layout(p, self._lanes)
        m.submodules.fire_out = fire_out = fifo.SyncFIFO(width=beat_l.size,
                                                         depth=OUTPUT_FIFO_DEPTH)
        m.submodules.final = final = fifo.SyncFIFO(width=beat_l.size, depth=OUTPUT_FIFO_DEPTH)
        # always ready: the requantizer's credits guarantee room
        w = fire_out.w_stream
        w_beat = data.View(beat_l, w.payload)
        m.d.comb += [w.valid.eq(self.i.valid), w_beat.values[0].eq(self.i.payload),
                     w_beat.count.eq(1 + self.i_extra)]
        for k in range(1, self._lanes):
            m.d.comb += w_beat.values[k].eq(self.i_more[k - 1])
        values = fire_out.r_stream
        head = data.View(beat_l, values.payload)
        m.d.sync += self.freed.eq(values.ready)

        bypass_on = layer.bypass if p.bypass else Const(0)
        final_credit = Signal(range(OUTPUT_FIFO_DEPTH + 1))
        join_in_flight = Signal(range(self.join_latency + 1))  # values between the FIFOs
        byp_ready = ~bypass_on | self.bypass.valid if p.bypass else Const(1)
        join = values.valid & byp_ready & (final_credit != 0)
        m.d.comb += values.ready.eq(join)
        if p.bypass:
            m.submodules.bypass_adder = byp = self._adder
            m.d.comb += [
                self.bypass.ready.eq(join & bypass_on),
                byp.i.valid.eq(join), byp.i.payload.a.eq(head.values[0]),
                byp.i.payload.b.eq(self.bypass.payload),
                byp.z_a.eq(layer.z_out), byp.z_b.eq(layer.byp_z_in),
                byp.z_out.eq(layer.byp_z_out),
                byp.mult_a.eq(layer.byp_mult_a), byp.mult_b.eq(layer.byp_mult_b),
                byp.shift.eq(layer.byp_shift),
            ]
            if self.lend:
                m.d.comb += [byp.alt.eq(layer.conv), byp.alt_a.eq(self.alt_a),
                             byp.alt_m.eq(self.alt_m), self.alt_p.eq(byp.alt_p)]
        plain = data.View(beat_l, delay(m, values.payload, self.join_latency, "plain",
                                       reset_less=True))
        join_valid = delay(m, join, self.join_latency, "join")
        joined = Signal(beat_l)
        m.d.comb += joined.eq(plain)
        if p.bypass:
            with m.If(bypass_on):
                m.d.comb += joined.values[0].eq(byp.o.payload.y)
        fw = final.w_stream
        m.d.comb += [fw.valid.eq(join_valid), fw.payload.eq(joined)]
        m.d.sync += join_in_flight.eq(join_in_flight + join - join_valid)
        fr = final.r_stream
        out_beat = data.View(beat_l, fr.payload)
        m.d.comb += [self.output.valid.eq(fr.valid), self.output.payload.eq(out_beat.values[0]),
                     self.output_wide.valid.eq(fr.valid), self.output_wide.payload.eq(out_beat),
                     fr.ready.eq(self.output.ready | self.output_wide.ready)]

        beat = fr.valid & fr.ready
        beat_r = Signal()  # the credit comes back a cycle late
        m.d.sync += beat_r.eq(beat)
        with m.If(self.go):
            m.d.sync += final_credit.eq(OUTPUT_FIFO_DEPTH)
        with m.Else():
            m.d.sync += final_credit.eq(final_credit - join + beat_r)

        half = OUTPUT_FIFO_DEPTH // 2
        congested = (fire_out.r_level > half) | (final.r_level > half)
        if p.bypass:
            congested = congested | (values.valid & bypass_on & ~self.bypass.valid)
        m.d.comb += [self.beat.eq(beat), self.congested.eq(congested),
                     self.idle.eq((join_in_flight == 0)
                                  & (final_credit == OUTPUT_FIFO_DEPTH))]
        return m
