"""The input buffer: two pixel slots between the ``input`` stream and the sequencer.

The stream writes a pixel (``words`` beats of ``ic_lanes`` channels) into one slot while the
sequencer squeezes the pixel in the other, reading each of its words once per output group.
A slot is full from its pixel's last beat until the sequencer ``release``\\ s it with its last
read, and the stream may refill it only two cycles after that, once that read has left the
memory. ``pixel_ready`` tells the sequencer whether the slot it reads holds a whole pixel.

Timing: ``ready`` decides from registers only (``in_more``: rows still to come, the slot
flags) and the memory write is registered; the sequencer reads a slot at least two cycles
after it fills. Reads leave the block RAM straight into a register.
"""

from __future__ import annotations

from amaranth import Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from spec.params import EngineParams

from .layouts import input_address_layout, input_slot_words, read_signature
from .ram import RegisteredRead, ram

#: Pixel slots: one filling while the sequencer reads the other.
SLOTS = 2


class InputBuffer(wiring.Component):
    """Two-pixel input buffer (see the module docstring).

    Ports
    -----
    input : In(stream of ic_lanes x signed(bits))
        The layer's input, pixel by pixel in raster order.
    start : In(1)
        Pulse: empty both slots, and take ``rows`` x ``cols`` pixels if ``squeeze``.
    squeeze, rows, cols, words : In
        Whether the run takes an input; its height, width, and words per pixel.
    stop : In(1)
        Pulse: the run has ended (take nothing more).
    read_slot : In(1)
        The slot the sequencer reads.
    pixel_ready : Out(1)
        ``read_slot`` holds a whole pixel.
    release : In(1)
        Pulse: the sequencer issued the last read of ``read_slot``'s pixel.
    read : In(read_signature)
        The memory's read port (:func:`~hw.layouts.input_address_layout` addresses).
    """

    def __init__(self, params: EngineParams):
        self._p = p = params
        word = data.ArrayLayout(signed(p.bits), p.ic_lanes)
        super().__init__({
            "input": In(stream.Signature(word)),
            "start": In(1),
            "squeeze": In(1),
            "rows": In(range(p.max_h + 1)),
            "cols": In(range(p.max_w + 1)),
            "words": In(range(p.input_words + 1)),
            "stop": In(1),
            "read_slot": In(1),
            "pixel_ready": Out(1),
            "release": In(1),
            "read": In(read_signature(input_address_layout(p), word)),
        })

    def elaborate(self, platform):
        m = Module()
        p = self._p
        word = data.ArrayLayout(signed(p.bits), p.ic_lanes)
        m.submodules.memory = mem = ram(shape=word, depth=SLOTS * input_slot_words(p))
        wr, rd = mem.write_port(), RegisteredRead(m, mem, "in_rd")
        m.d.comb += [rd.addr.eq(self.read.addr), self.read.data.eq(rd.data)]

        full = Signal(SLOTS)
        slot_w = Signal()  # the slot being written
        word_w = Signal(range(p.input_words + 1))
        col = Signal(range(p.max_w + 1))
        row = Signal(range(p.max_h + 1))
        active = Signal()  # this run streams an input
        more = Signal()  # row < rows, kept as a register
        hold = Signal(SLOTS)  # released in the last two cycles: its reads are still in flight
        can_load = (active & more & ~full.bit_select(slot_w, 1)
                    & ~hold.bit_select(slot_w, 1))
        take = self.input.valid & can_load
        m.d.comb += self.input.ready.eq(can_load)
        w_addr = Signal(input_address_layout(p))
        m.d.comb += [w_addr.word.eq(word_w), w_addr.slot.eq(slot_w)]
        m.d.sync += [wr.addr.eq(w_addr), wr.data.eq(self.input.payload), wr.en.eq(take)]

        filled = Signal(SLOTS)
        released = Signal(SLOTS)
        m.d.comb += released.eq(Mux(self.release, Mux(self.read_slot, 0b10, 0b01), 0))
        m.d.sync += full.eq((full | filled) & ~released)
        with m.If(take):
            with m.If(word_w + 1 == self.words):
                m.d.sync += [word_w.eq(0), slot_w.eq(~slot_w)]
                m.d.comb += filled.eq(Mux(slot_w, 0b10, 0b01))
                with m.If(col + 1 == self.cols):
                    m.d.sync += [col.eq(0), row.eq(row + 1), more.eq(row + 1 != self.rows)]
                with m.Else():
                    m.d.sync += col.eq(col + 1)
            with m.Else():
                m.d.sync += word_w.eq(word_w + 1)
        # a released slot stays held for two cycles: its last read is still in the memory
        # and its output register
        rel1 = Signal(SLOTS)
        rel2 = Signal(SLOTS)
        m.d.sync += [rel1.eq(released), rel2.eq(rel1)]
        m.d.comb += hold.eq(rel1 | rel2)
        m.d.comb += self.pixel_ready.eq(full.bit_select(self.read_slot, 1))

        with m.If(self.start):
            m.d.sync += [full.eq(0), slot_w.eq(0), word_w.eq(0), col.eq(0), row.eq(0),
                         more.eq(1), active.eq(self.squeeze)]
        with m.If(self.stop):
            m.d.sync += active.eq(0)
        return m
