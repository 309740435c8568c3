"""The squeeze buffer: the squeeze output of a Fire layer, which never leaves the chip.

A row of the squeeze map is ``row_words`` words (``W * ceil(S / ic_lanes)``), each word
``ic_lanes`` activations of one pixel. Rows live in slots: in line mode three slots form a
ring (row ``r`` in slot ``r mod 3``), enough for the 3x3 expand of row ``y`` while row
``y + 2`` is squeezed; in retain mode every row has its own slot, so the whole map stays
for the next output-channel tile. A small table maps rows to slot bases; ``init`` rebuilds it
for a layer (``rows`` cycles, ``busy`` meanwhile).

Writes are one activation (lane) per cycle, as the requantizer produces them; reads are one
word per cycle, ``read_latency`` cycles after the request.

The store is split into banks of at most ``BANK_DEPTH`` words, each read into a register
before the bank multiplexer: a block RAM deeper than that would be cascaded in depth by the
synthesis tool with a multiplexer straight after the RAM outputs, the slowest path of the
engine on an ECP5.
"""

from __future__ import annotations

from amaranth import Module, Signal, signed
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from spec.params import EngineParams

from .ram import RegisteredRead, ram

#: Words per bank: one ECP5 EBR (1024 x 18) or Xilinx RAMB36 (1024 x 36) deep.
BANK_DEPTH = 1024


class LineBuffer(wiring.Component):
    read_latency = 3

    def __init__(self, params: EngineParams):
        self._p = params
        p = params
        word = data.ArrayLayout(signed(p.bits), p.ic_lanes)
        row_range = range(p.max_h + 1)
        word_range = range(p.squeeze_depth + 1)
        super().__init__({
            "row_words": In(word_range),
            "rows": In(row_range),
            "retain": In(1),
            "init": In(1),
            "busy": Out(1),
            "w_en": In(1),
            "w_row": In(row_range),
            "w_word": In(word_range),
            "w_lane": In(range(p.ic_lanes)),
            "w_data": In(signed(p.bits)),
            "r_row": In(row_range),
            "r_word": In(word_range),
            "r_data": Out(word),
        })

    def elaborate(self, platform):
        m = Module()
        p = self._p
        addr_shape = range(p.squeeze_depth + 1)
        m.submodules.bases = bases = ram(shape=addr_shape, depth=p.max_h)
        word = data.ArrayLayout(signed(p.bits), p.ic_lanes)
        n_banks = -(-p.squeeze_depth // BANK_DEPTH)
        bank_depth = min(BANK_DEPTH, p.squeeze_depth)
        banks = []
        for b in range(n_banks):
            depth = min(bank_depth, p.squeeze_depth - b * bank_depth)
            banks.append(ram(shape=word, depth=depth))
            m.submodules[f"bank{b}"] = banks[-1]
        bank_bits = (bank_depth - 1).bit_length()
        base_w = bases.write_port()
        base_rd = bases.read_port(domain="comb")
        base_wr = bases.read_port(domain="comb")

        # Row table: base(r) = slot(r) * row_words.
        row = Signal(range(p.max_h + 1))
        slot = Signal(range(3))
        base = Signal(addr_shape)
        with m.If(self.init):
            m.d.sync += [row.eq(0), slot.eq(0), base.eq(0), self.busy.eq(1)]
        with m.Elif(self.busy):
            m.d.comb += [base_w.addr.eq(row), base_w.data.eq(base), base_w.en.eq(1)]
            m.d.sync += row.eq(row + 1)
            with m.If(~self.retain & (slot == 2)):
                m.d.sync += [slot.eq(0), base.eq(0)]
            with m.Else():
                m.d.sync += [slot.eq(slot + 1), base.eq(base + self.row_words)]
            with m.If(row + 1 >= self.rows):
                m.d.sync += self.busy.eq(0)

        def bank_of(addr):
            return addr[bank_bits:] if n_banks > 1 else 0

        # Writes: address registered, then one lane of one bank written.
        m.d.comb += base_wr.addr.eq(self.w_row)
        w_addr = Signal(addr_shape)
        w_lane = Signal.like(self.w_lane)
        w_data = Signal.like(self.w_data)
        w_en = Signal()
        m.d.sync += [w_addr.eq(base_wr.data + self.w_word), w_lane.eq(self.w_lane),
                     w_data.eq(self.w_data), w_en.eq(self.w_en)]
        # Reads: address registered; every bank reads it; each bank's output registered;
        # then the bank multiplexer.
        m.d.comb += base_rd.addr.eq(self.r_row)
        r_addr = Signal(addr_shape)
        m.d.sync += r_addr.eq(base_rd.data + self.r_word)
        r_bank = Signal(range(n_banks + 1))
        r_bank2 = Signal.like(r_bank)
        m.d.sync += [r_bank.eq(bank_of(r_addr)), r_bank2.eq(r_bank)]
        outputs = []
        for b, bank in enumerate(banks):
            wr = bank.write_port(granularity=1)
            m.d.comb += wr.addr.eq(w_addr[:bank_bits])
            for lane in range(p.ic_lanes):
                m.d.comb += [wr.data[lane].eq(w_data),
                             wr.en[lane].eq(w_en & (w_lane == lane) & (bank_of(w_addr) == b))]
            rd = RegisteredRead(m, bank, f"bank{b}_rd")
            held = Signal(word, name=f"bank{b}_q", reset_less=True)
            m.d.comb += rd.addr.eq(r_addr[:bank_bits])
            m.d.sync += held.eq(rd.data)
            outputs.append(held)
        with m.Switch(r_bank2):
            for b, held in enumerate(outputs):
                with m.Case(b):
                    m.d.comb += self.r_data.eq(held)
        return m
