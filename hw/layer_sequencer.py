"""The layer sequencer: walks a layer program (``spec.program``) in external memory and runs
the engine from it, with no host in the loop.

Per ``ENGINE`` descriptor: read the descriptor, check it (operation, alignment, addresses
inside the memory), read the configuration item into the engine and wait for its verdict,
read the weight rows and parameters (when the descriptor has any), then read the input
beats while the output packer writes the engine's values where the descriptor's output
pattern puts them, wait for the run's end and the last write, write the run's stats, go on
to the next descriptor. ``END`` finishes the program.

Reads go through one :class:`~hw.dma.DMAReader` (one request per stream: the descriptor,
the configuration, the weights, the parameters, the input), whose words are assembled into
items (``spec.program.Items``) for the stream of the current phase. Writes go through a
:class:`WordWriter`, a word at a time with a byte mask, so outputs land at any value address
(a tile's channels in their place of the concat).

Nothing waits forever: a DMA request beyond the memory, a refused configuration, an address
the descriptor gets wrong, or ``stall_cycles`` without anything moving (the descriptor's
counts do not match what the engine takes and gives) stop the program with a
:class:`~spec.program.SeqError`; the sequencer then lets the reader and writer finish what
they have in flight (the controller is never left owed data), resets the engine
(``engine_reset``) and is ready for the next program. ``abort`` (a RESET) does the same.
"""

from __future__ import annotations

from contextlib import contextmanager

from amaranth import Cat, Const, Module, Mux, Shape, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from spec.params import CONV_LANES, EngineParams, config_bits, qparam_bits
from spec.program import (
    DESC_BYTES,
    DESC_FIELDS,
    STATS_BYTES,
    VALUE_ALIGNED,
    WORD_ALIGNED,
    InMode,
    Items,
    Op,
    SeqError,
    Unit,
    value_bytes,
)

from .layouts import wide_beat_layout
from .memory_bridge import dma_request, native_port_signature
from .pool import GlobalAvgPool, MaxPool
from .stream_fifo import StreamFIFO
from .window import WindowPacker

DESC_LAYOUT = data.StructLayout({f.name: unsigned(f.width) for f in DESC_FIELDS})
ADDR_BITS = 32
DEFAULT_STALL_CYCLES = 1 << 20


def word_item(addr_bits: int, data_bits: int) -> data.StructLayout:
    """A :class:`WordWriter` item: the word address (as wide as a byte address: checked
    against the memory), the data and its byte enables."""
    return data.StructLayout({"addr": addr_bits, "data": data_bits, "we": data_bits // 8})


def times(m: Module, x, k: int, name: str):
    """``x * k`` for a small constant ``k`` by shifts and adds (no multiplier block)."""
    terms = [x << i for i in range(k.bit_length()) if k >> i & 1]
    out = Signal(len(x) + k.bit_length(), name=name)
    total = terms[0]
    for t in terms[1:]:
        total = total + t
    m.d.comb += out.eq(total)
    return out


class WordWriter(wiring.Component):
    """Items ``{addr, data, we}`` -> native-port writes, one command per word.

    An item whose word is past the memory (``words``) is dropped and ``error`` pulses.
    Data follows its command through a FIFO, as in :class:`~hw.dma.DMAWriter`.
    """

    def __init__(self, *, addr_bits: int, port_addr_bits: int, data_bits: int, words: int,
                 depth: int = 16):
        self._words = words
        self._depth = depth
        self._data_bits = data_bits
        super().__init__({
            "item": In(stream.Signature(word_item(addr_bits, data_bits))),
            "port": Out(native_port_signature(port_addr_bits, data_bits)),
            "busy": Out(1), "error": Out(1), "written": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        port, item = self.port, self.item
        bits = self._data_bits
        layout = data.StructLayout({"data": bits, "we": bits // 8})
        m.submodules.fifo = fifo = StreamFIFO(layout, self._depth)
        beyond = item.payload.addr >= self._words
        go = item.valid & ~beyond & fifo.w.ready
        m.d.comb += [port.cmd.payload.we.eq(1), port.cmd.payload.addr.eq(item.payload.addr),
                     port.cmd.valid.eq(go),
                     item.ready.eq((go & port.cmd.ready) | beyond),
                     fifo.w.valid.eq(go & port.cmd.ready),
                     fifo.w.payload.data.eq(item.payload.data),
                     fifo.w.payload.we.eq(item.payload.we),
                     port.wdata.valid.eq(fifo.r.valid),
                     port.wdata.payload.data.eq(fifo.r.payload.data),
                     port.wdata.payload.we.eq(fifo.r.payload.we),
                     fifo.r.ready.eq(port.wdata.ready),
                     self.written.eq(port.wdata.valid & port.wdata.ready),
                     self.busy.eq(item.valid | fifo.r.valid)]
        m.d.sync += self.error.eq(item.valid & beyond)
        return m


class LayerSequencer(wiring.Component):
    """See the module docstring.

    ``start``: a program's byte address (a stream: taken when idle). ``active``: a program
    runs or winds down. The engine's streams (``cfg``, ``weights``, ``qparams``, ``input``,
    ``output``) and status (``accepted``, ``refused``, ``error``, ``runs``, ``cycles``,
    ``compute``) are the engine's while ``active``. ``rd_*``: the DMA reader's request,
    data, busy and error. ``port``: the writer's native port. Status for the host's COUNTERS:
    ``programs`` (finished, whatever their end), ``status`` / ``detail`` (the last one's
    :class:`~spec.program.SeqError`), ``index`` (its descriptors run, or the failing one's
    number), ``prog_cycles`` (its cycles).
    """

    def __init__(self, params: EngineParams, *, size: int, port_bits: int,
                 stall_cycles: int = DEFAULT_STALL_CYCLES, units: bool = True):
        self._p = p = params
        self._size = size
        self._port_bits = port_bits
        self._port_bytes = port_bits // 8
        self._words = size // self._port_bytes
        self._port_addr_bits = max(1, (self._words - 1).bit_length())
        self._stall = stall_cycles
        self._units = units
        self._items = Items.of(p, port_bits)
        self._vb = value_bytes(p)
        if self._port_bytes < self._vb or self._vb not in (1, 2) or p.bits not in (8, 16):
            raise ValueError(f"the layer sequencer stores {p.bits}-bit values in a "
                             f"{port_bits}-bit memory word: only 8- and 16-bit engines")
        #: the average pool's channels a cycle: one (a beat must take it four cycles or
        #: more: ``GlobalAvgPool``)
        self._avg_group = min(1, p.ic_lanes // 4)
        if units and self._avg_group < 1:
            raise ValueError(f"ic_lanes={p.ic_lanes}: resident mode's average pool needs "
                             "ic_lanes >= 4 (build without it: --no-resident)")
        super().__init__({
            "start": In(stream.Signature(ADDR_BITS)),
            "abort": In(1),
            "active": Out(1),
            "engine_reset": Out(1),
            "cfg": Out(stream.Signature(config_bits(p))),
            "weights": Out(stream.Signature(p.weight_beat_bits)),  # a row in oc_lanes beats
            "qparams": Out(stream.Signature(qparam_bits(p))),
            "input": Out(stream.Signature(p.ic_lanes * p.bits)),
            "output": In(stream.Signature(wide_beat_layout(p))),
            "accepted": In(1), "refused": In(1), "error": In(8),
            "runs": In(16), "cycles": In(32), "compute": In(32),
            "rd_request": Out(stream.Signature(dma_request(self._port_addr_bits))),
            "rd_data": In(stream.Signature(port_bits)),
            "rd_busy": In(1), "rd_error": In(1),
            "port": Out(native_port_signature(self._port_addr_bits, port_bits)),
            "programs": Out(32), "status": Out(8), "detail": Out(8), "index": Out(16),
            "prog_cycles": Out(32),
        })

    def _make_units(self, m) -> dict:
        """The pools and the window packer (``hw.pool``, ``hw.window``), sized for
        SqueezeNet at inputs up to 256 x 256. The packer reads two values a cycle (four cost
        310 LUTs more on the Arty; two keep it ahead of the engine); the average pool sums
        one channel a cycle (two cost 150 LUTs more on the Arty, four 480)."""
        p = self._p
        m.submodules.maxpool = mp = MaxPool(bits=p.bits, lanes=p.ic_lanes, max_h=128,
                                            max_w=128, max_cw=32, row_words=512)
        m.submodules.avgpool = ap = GlobalAvgPool(bits=p.bits, lanes=p.ic_lanes, max_h=16,
                                                  max_w=16, max_cw=64, group=self._avg_group)
        m.submodules.window = wp = WindowPacker(bits=p.bits, lanes=p.ic_lanes, max_h=256,
                                                max_w=256, max_cin=4, max_k=7, banks=2)
        return {"maxpool": mp, "avgpool": ap, "window": wp}

    def elaborate(self, platform):
        m = Module()
        it = self._items
        pb, pbytes, vb = self._port_bits, self._port_bytes, self._vb
        shift = (pbytes - 1).bit_length()  # byte address -> word address
        vshift = (vb - 1).bit_length()
        size_bits = (self._size - 1).bit_length()

        m.submodules.writer = writer = WordWriter(
            addr_bits=ADDR_BITS, port_addr_bits=self._port_addr_bits, data_bits=pb,
            words=self._words)
        wiring.connect(m, writer.port, wiring.flipped(self.port))

        desc = Signal(DESC_LAYOUT)
        pc = Signal(ADDR_BITS)
        index = Signal(16)
        runs0 = Signal(16)
        stall = Signal(range(self._stall + 1))
        progress = Signal()
        d_cycles = Signal(32)  # this descriptor's
        d_read = Signal(32)
        d_written = Signal(32)
        p_cycles = Signal(32)  # this program's
        fail = Signal()
        fail_code = Signal(8)
        fail_detail = Signal(8)
        m.d.comb += self.index.eq(index)

        # ---- reads: one request at a time; its words assembled into the phase's items
        widths = {"desc": it.desc, "cfg": it.cfg, "weights": it.weights,
                  "qparams": it.qparams, "input": it.input}
        max_words = max(widths.values())
        item = Signal(max_words * pb, reset_less=True)
        count = Signal(range(max_words + 1))
        iw = Signal(range(max_words + 1))  # words per item of the current phase
        full = Signal()
        m.d.comb += full.eq(count == iw)
        sink_ready = Signal()
        sink_taken = Signal()
        items_left = Signal(25)  # items of the current phase still to deliver
        m.d.comb += sink_taken.eq(full & (iw != 0) & sink_ready & (items_left != 0))
        take_word = Signal()
        draining = Signal()  # winding down: words are discarded
        m.d.comb += [take_word.eq(self.rd_data.valid & ((~full | sink_taken) | draining)),
                     self.rd_data.ready.eq(take_word)]
        with m.If(take_word & ~draining):
            m.d.sync += item.eq(Cat(item[pb:], self.rd_data.payload))
            m.d.sync += d_read.eq(d_read + 1)
        with m.If(sink_taken):
            m.d.sync += [count.eq(Mux(take_word, 1, 0)), items_left.eq(items_left - 1)]
        with m.Elif(take_word & ~draining):
            m.d.sync += count.eq(count + 1)

        def top(words):
            return item[(max_words - words) * pb:]

        phase = {name: Signal(name=f"phase_{name}") for name in widths}
        m.d.comb += [
            self.cfg.payload.eq(top(it.cfg)),
            self.weights.payload.eq(top(it.weights)),
            self.qparams.payload.eq(top(it.qparams)),
            self.input.payload.eq(top(it.input)),
        ]
        for name in ("cfg", "weights", "qparams"):
            s = getattr(self, name)
            m.d.comb += s.valid.eq(phase[name] & full & (items_left != 0))
            with m.If(phase[name]):
                m.d.comb += sink_ready.eq(s.ready)
        # input beats: to the engine (MAP), or to the window packer or a pool
        sel = {name: Signal(name=f"sel_{name}") for name in ("map", "window", "maxpool",
                                                            "avgpool")}
        beat_valid = phase["input"] & full & (items_left != 0)
        beat = top(it.input)
        units = self._make_units(m) if self._units else {}
        for name, unit in units.items():
            m.d.comb += [unit.input.valid.eq(beat_valid & sel[name]),
                         unit.input.payload.eq(beat)]
            with m.If(phase["input"] & sel[name]):
                m.d.comb += sink_ready.eq(unit.input.ready)
        with m.If(phase["input"] & sel["map"]):
            m.d.comb += [self.input.valid.eq(beat_valid), self.input.payload.eq(beat),
                         sink_ready.eq(self.input.ready)]
        # the window packer's beats: skip_beats dropped, in_beats to the engine, the rest
        # dropped
        win_skip = Signal(24)
        win_pass = Signal(24)
        if "window" in units:
            wout = units["window"].output
            with m.If(sel["window"]):
                with m.If(win_skip != 0):
                    m.d.comb += wout.ready.eq(1)
                    with m.If(wout.valid):
                        m.d.sync += win_skip.eq(win_skip - 1)
                with m.Elif(win_pass != 0):
                    m.d.comb += [self.input.valid.eq(wout.valid),
                                 self.input.payload.eq(wout.payload),
                                 wout.ready.eq(self.input.ready)]
                    with m.If(wout.valid & self.input.ready):
                        m.d.sync += win_pass.eq(win_pass - 1)
                with m.Else():
                    m.d.comb += wout.ready.eq(1)
        with m.If(phase["desc"]):
            m.d.comb += sink_ready.eq(1)
            with m.If(sink_taken):
                m.d.sync += desc.eq(top(it.desc))

        req = self.rd_request
        req_addr = Signal(ADDR_BITS)  # byte address
        req_words = Signal(ADDR_BITS)
        m.d.comb += [req.payload.addr.eq(req_addr[shift:]), req.payload.words.eq(req_words)]

        # ---- writes: the output packer, or the stats
        wr = writer.item
        wr_valid = Signal()
        wr_item = Signal.like(wr.payload)
        m.d.comb += [wr.valid.eq(wr_valid), wr.payload.eq(wr_item)]
        with m.If(wr.ready):
            m.d.sync += wr_valid.eq(0)
        wr_free = ~wr_valid | wr.ready
        with m.If(writer.written):
            m.d.sync += d_written.eq(d_written + 1)

        # the output pattern (registers set in DECODE / RUN)
        o_on = Signal()  # values expected
        o_pixels = Signal(24)  # pixels left
        o_second = Signal()  # in the pixel's second run
        o_left = Signal(16)  # values left in the run
        o_base = Signal(ADDR_BITS)  # the pixel's byte address
        o_addr = Signal(ADDR_BITS)  # the next value's
        first_off = Signal(16)
        first_len = Signal(16)
        has_second = Signal()
        cur_word = Signal(ADDR_BITS - shift)
        cur_data = Signal(pb)
        cur_we = Signal(pbytes)
        cur_valid = Signal()
        o_word = o_addr[shift:]
        lane = o_addr[vshift:shift] if shift > vshift else Const(0, 1)
        out = self.output
        stats_go = Signal()
        # The packer: each cycle it takes n = min(values left in the beat, values left in
        # the run) of the engine's beat (1 to CONV_LANES values), the ones that fall in the
        # current word merged into it and the rest starting the next word; a word that
        # completes goes to the writer in the same cycle (no stall per word: conv1 writes
        # four a pixel). Only a run that continues in another word than the open one costs a
        # cycle, to write the open word first.
        per_word = pbytes // vb
        width = 8 * vb
        beat = out.payload
        pos = Signal(range(CONV_LANES))  # the beat's values already taken
        avail = Signal(range(CONV_LANES + 1))
        m.d.comb += avail.eq(beat.count - pos)
        n = Signal(range(CONV_LANES + 1))
        cap = avail
        if per_word < CONV_LANES:  # a narrow port: never complete two words in one cycle
            room = Signal(range(2 * per_word + 1))
            m.d.comb += room.eq(2 * per_word - 1 - lane)
            cap = Mux(room < avail, room, avail)
        m.d.comb += n.eq(Mux(o_left < cap, o_left, cap))
        span = Signal(range(per_word + CONV_LANES + 1))
        m.d.comb += span.eq(lane + n)
        completes = span >= per_word
        slots = min(per_word + CONV_LANES - 1, 2 * per_word - 1)
        first_data, first_we = Signal(pb), Signal(pbytes)
        next_data, next_we = Signal(pb), Signal(pbytes)
        m.d.comb += [first_data.eq(cur_data), first_we.eq(cur_we), next_we.eq(0)]
        for q in range(slots):
            rel = Signal(signed(8), name=f"pack_rel{q}")  # the slot's value in this cycle's n
            at = Signal(range(2 * CONV_LANES), name=f"pack_at{q}")  # ... in the beat
            m.d.comb += [rel.eq(q - lane), at.eq(rel[:3] + pos)]
            on = (rel >= 0) & (rel < n) if q < per_word else (q < span)
            value = Signal(width, name=f"pack_value{q}")
            m.d.comb += value.eq(beat.values[at])
            if q < per_word:
                with m.If(on):
                    m.d.comb += [first_data.word_select(q, width).eq(value),
                                 first_we.word_select(q, vb).eq((1 << vb) - 1)]
            else:
                m.d.comb += [next_data.word_select(q - per_word, width).eq(value),
                             next_we.word_select(q - per_word, vb).eq(
                                 Mux(on, (1 << vb) - 1, 0))]
        other_word = cur_valid & (o_word != cur_word)
        take = Signal()
        with m.If(o_on & out.valid & ~stats_go):
            # a run continuing elsewhere (other_word): the open word goes first, below
            with m.If(~other_word & (~completes | wr_free)):
                m.d.comb += take.eq(1)
        with m.If(take):
            with m.If(completes):
                m.d.sync += [wr_valid.eq(1), wr_item.addr.eq(o_word),
                             wr_item.data.eq(first_data), wr_item.we.eq(first_we),
                             cur_word.eq(o_word + 1), cur_data.eq(next_data),
                             cur_we.eq(next_we), cur_valid.eq(next_we.any())]
            with m.Else():
                m.d.sync += [cur_word.eq(o_word), cur_data.eq(first_data), cur_we.eq(first_we),
                             cur_valid.eq(1)]
            with m.If(pos + n >= beat.count):
                m.d.comb += out.ready.eq(1)
                m.d.sync += pos.eq(0)
            with m.Else():
                m.d.sync += pos.eq(pos + n)
            m.d.sync += [o_left.eq(o_left - n), o_addr.eq(o_addr + (n << vshift))]
            with m.If(o_left == n):
                with m.If(~o_second & has_second):
                    m.d.sync += [o_second.eq(1), o_left.eq(desc.len1),
                                 o_addr.eq(o_base + desc.off1)]
                with m.Else():
                    m.d.sync += [o_second.eq(0), o_left.eq(first_len),
                                 o_base.eq(o_base + desc.out_stride),
                                 o_addr.eq(o_base + desc.out_stride + first_off),
                                 o_pixels.eq(o_pixels - 1)]
                    with m.If(o_pixels == 1):
                        m.d.sync += o_on.eq(0)
        flush_end = ~o_on & cur_valid  # the pattern is done: its last word goes out
        with m.If(((o_on & out.valid & other_word) | flush_end) & wr_free & ~stats_go):
            m.d.sync += [wr_valid.eq(1), wr_item.addr.eq(cur_word), wr_item.data.eq(cur_data),
                         wr_item.we.eq(cur_we), cur_valid.eq(0), cur_we.eq(0)]

        # stats: STATS_BYTES written a word at a time, the word chosen by its index (a
        # register loaded whole: shifting it would put a multiplexer before every bit)
        stats_bits = 8 * STATS_BYTES
        stats_words = STATS_BYTES // pbytes
        stats = Signal(stats_bits)
        stats_left = Signal(range(stats_words + 1))
        stats_addr = Signal(ADDR_BITS - shift)
        stats_word = stats.word_select((stats_words - stats_left)[:max(1, (stats_words - 1)
                                                                        .bit_length())], pb)
        with m.If(stats_go & wr_free & (stats_left != 0)):
            m.d.sync += [wr_valid.eq(1), wr_item.addr.eq(stats_addr), wr_item.data.eq(stats_word),
                         wr_item.we.eq((1 << pbytes) - 1),
                         stats_addr.eq(stats_addr + 1), stats_left.eq(stats_left - 1)]

        # pool outputs: whole beats, written a port word at a time from out_addr on
        bw_data = Signal(it.input * pb)
        bw_left = Signal(range(it.input + 1))
        bw_addr = Signal(ADDR_BITS - shift)
        pool_taken = Signal()
        for name in ("maxpool", "avgpool"):
            if name in units:
                uout = units[name].output
                with m.If(sel[name]):
                    m.d.comb += uout.ready.eq(bw_left == 0)
                    with m.If(uout.valid & uout.ready):
                        m.d.comb += pool_taken.eq(1)
                        m.d.sync += [bw_data.eq(uout.payload), bw_left.eq(it.input)]
        with m.If((bw_left != 0) & wr_free):
            m.d.sync += [wr_valid.eq(1), wr_item.addr.eq(bw_addr), wr_item.data.eq(bw_data[:pb]),
                         wr_item.we.eq((1 << pbytes) - 1), bw_data.eq(bw_data >> pb),
                         bw_left.eq(bw_left - 1), bw_addr.eq(bw_addr + 1)]

        # the units' configurations, from the descriptor (a size too wide for a unit's field
        # goes in as 0, which the unit refuses naming that field)
        def fit(value, shape):
            return Mux(value >> Shape.cast(shape).width != 0, 0, value)

        bits = self._p.bits
        unit_done = Signal()  # the selected unit's done pulse, seen
        unit_refused = Signal()
        unit_detail = Signal(8)
        numbers = {"maxpool": Unit.MAXPOOL, "avgpool": Unit.AVGPOOL, "window": Unit.WINDOW}
        for name, unit in units.items():
            number = numbers[name]
            layout = unit.cfg_layout
            for field, value in (("h", desc.h), ("w", desc.w), ("cw", desc.c),
                                 ("cin", desc.c), ("k", desc.k), ("stride", desc.stride)):
                if field in layout.members:
                    m.d.comb += getattr(unit.cfg.payload, field).eq(
                        fit(value, layout.members[field]))
            for field, value in (("z_in", desc.z_in), ("z", desc.z_in), ("z_out", desc.z_out)):
                if field in layout.members:
                    m.d.comb += getattr(unit.cfg.payload, field).eq(value[:bits].as_signed())
            for field in ("mult", "shift", "exact"):
                if field in layout.members:
                    m.d.comb += getattr(unit.cfg.payload, field).eq(getattr(desc, field))
            err = Signal(4, name=f"{name}_error")  # the unit's error in the low nibble
            m.d.comb += err.eq(unit.error.as_value())
            with m.If(unit.done):
                m.d.sync += unit_done.eq(1)
                with m.If(err != 0):
                    m.d.comb += [unit_refused.eq(1),
                                 unit_detail.eq(Cat(err, Const(number, 4)))]
        cfg_offer = Signal()  # the selected unit's cfg is offered
        cfg_taken = Signal()
        for name, unit in units.items():
            m.d.comb += unit.cfg.valid.eq(cfg_offer & sel[name])
            with m.If(sel[name]):
                m.d.comb += cfg_taken.eq(unit.cfg.valid & unit.cfg.ready)

        # ---- progress and counters
        m.d.comb += progress.eq(take_word | (wr.valid & wr.ready) | (out.valid & out.ready)
                                | pool_taken | cfg_taken)
        m.d.sync += d_cycles.eq(d_cycles + 1)
        m.d.sync += p_cycles.eq(p_cycles + self.active)
        idle_dma = ~self.rd_busy & ~writer.busy & ~wr_valid & ~cur_valid & (bw_left == 0)

        def begin_read(phase_name, addr, n_items, words_per_item):
            words = times(m, n_items, words_per_item, f"words_{phase_name}")
            m.d.sync += [req_addr.eq(addr), req_words.eq(words), items_left.eq(n_items),
                         iw.eq(words_per_item), count.eq(0)]

        def stop(code, detail=0):
            m.d.sync += [fail.eq(1), fail_code.eq(code), fail_detail.eq(detail)]

        align_words = [getattr(desc, name)[:shift] != 0 for name in WORD_ALIGNED] if shift \
            else [Const(0) for _ in WORD_ALIGNED]
        align_values = [getattr(desc, name)[:vshift] != 0 for name in VALUE_ALIGNED] if vshift \
            else [Const(0) for _ in VALUE_ALIGNED]
        outside = [getattr(desc, name)[size_bits:] != 0
                   for name in ("cfg_addr", "w_addr", "q_addr", "in_addr", "out_addr",
                                "stats_addr")]
        bad_align = Signal(8)  # the first misaligned field's number + 1, registered
        bad_range = Signal()
        for i, bad in reversed(list(enumerate(align_words + align_values))):
            with m.If(bad):
                m.d.sync += bad_align.eq(i + 1)
        with m.If(~Cat(align_words + align_values).any()):
            m.d.sync += bad_align.eq(0)
        m.d.sync += bad_range.eq(Cat(outside).any())

        running = Signal()  # a program is between its start and its wind-down
        kill = Signal()
        with m.If(running & ~fail):
            with m.If(progress | self.accepted | self.refused):
                m.d.sync += stall.eq(0)
            with m.Else():
                m.d.sync += stall.eq(stall + 1)
            with m.If(self.abort):
                m.d.comb += kill.eq(1)
                stop(SeqError.ABORTED)
            with m.Elif(self.rd_error | writer.error):
                m.d.comb += kill.eq(1)
                stop(SeqError.RANGE)
            with m.Elif(unit_refused):
                m.d.comb += kill.eq(1)
                stop(SeqError.UNIT, unit_detail)
            with m.Elif(stall == self._stall):
                m.d.comb += kill.eq(1)
                stop(SeqError.STALL)

        @contextmanager
        def state(name):
            with m.State(name):
                m.d.comb += running.eq(1)
                yield
                with m.If(kill):
                    m.next = "WIND"

        def read_phase(name, after):
            """``NAME_REQ`` offers the read; ``NAME_WAIT`` lasts until every item of the
            phase is delivered."""
            with state(f"{name}_REQ"):
                m.d.comb += [req.valid.eq(1), phase[name.lower()].eq(1)]
                with m.If(req.ready):
                    m.next = f"{name}_WAIT"
            with state(f"{name}_WAIT"):
                m.d.comb += phase[name.lower()].eq(1)
                with m.If(items_left == 0):
                    m.next = after

        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += self.start.ready.eq(~self.abort)
                with m.If(self.start.valid & ~self.abort):
                    m.d.sync += [pc.eq(self.start.payload), index.eq(0), fail.eq(0),
                                 p_cycles.eq(0), self.active.eq(1)]
                    m.next = "FETCH"
            with state("FETCH"):
                with m.If(pc[:shift] != 0 if shift else Const(0)):
                    stop(SeqError.ALIGN)
                    m.next = "WIND"
                with m.Elif(pc[size_bits:] != 0):
                    stop(SeqError.RANGE)
                    m.next = "WIND"
                with m.Else():
                    m.d.sync += [d_cycles.eq(0), d_read.eq(0), d_written.eq(0), stall.eq(0)]
                    begin_read("desc", pc, Const(1, 1), it.desc)
                    m.next = "DESC_REQ"
            read_phase("DESC", "DECODE")
            with state("DECODE"):  # the checks' registers settle a cycle after the fetch
                m.next = "CHECK"
            with state("CHECK"):
                is_pool = (desc.op == Op.MAXPOOL) | (desc.op == Op.AVGPOOL)
                m.d.sync += [sel["map"].eq((desc.op == Op.ENGINE) & (desc.in_mode == InMode.MAP)),
                             sel["window"].eq((desc.op == Op.ENGINE)
                                              & (desc.in_mode == InMode.WINDOW)),
                             sel["maxpool"].eq(desc.op == Op.MAXPOOL),
                             sel["avgpool"].eq(desc.op == Op.AVGPOOL), unit_done.eq(0)]
                with m.If(desc.op == Op.END):
                    m.next = "DONE"
                known = (desc.op == Op.ENGINE) | (is_pool if self._units else Const(0))
                in_modes = InMode.WINDOW if self._units else InMode.MAP
                with m.Elif(~known | ((desc.op == Op.ENGINE) & (desc.in_mode > in_modes))):
                    stop(SeqError.BAD_OP, Cat(desc.op, desc.in_mode))
                    m.next = "WIND"
                with m.Elif(is_pool & (desc.out_addr[:shift] != 0 if shift else Const(0))):
                    stop(SeqError.ALIGN, len(WORD_ALIGNED) + len(VALUE_ALIGNED) + 1)
                    m.next = "WIND"
                with m.Elif(is_pool & (bad_align != 0) & (bad_align <= 5)):
                    stop(SeqError.ALIGN, bad_align)
                    m.next = "WIND"
                with m.Elif(is_pool & bad_range):
                    stop(SeqError.RANGE)
                    m.next = "WIND"
                with m.Elif(is_pool):
                    m.d.sync += bw_addr.eq(desc.out_addr[shift:])
                    m.next = "UNIT_CFG"
                with m.Elif(bad_align != 0):
                    stop(SeqError.ALIGN, bad_align)
                    m.next = "WIND"
                with m.Elif(bad_range):
                    stop(SeqError.RANGE)
                    m.next = "WIND"
                with m.Else():
                    m.d.sync += [runs0.eq(self.runs),
                                 first_off.eq(Mux(desc.len0 != 0, desc.off0, desc.off1)),
                                 first_len.eq(Mux(desc.len0 != 0, desc.len0, desc.len1)),
                                 has_second.eq((desc.len0 != 0) & (desc.len1 != 0))]
                    begin_read("cfg", desc.cfg_addr, Const(1, 1), it.cfg)
                    m.next = "CFG_REQ"
            read_phase("CFG", "VERDICT")
            with state("VERDICT"):
                with m.If(self.accepted):
                    with m.If(desc.w_rows != 0):
                        w_beats = times(m, desc.w_rows, self._p.oc_lanes, "w_beats")
                        begin_read("weights", desc.w_addr, w_beats, it.weights)
                        m.next = "WEIGHTS_REQ"
                    with m.Else():
                        m.next = "QPARAMS_START"
                with m.Elif(self.refused):
                    stop(SeqError.CONFIG, self.error)
                    m.next = "WIND"
            read_phase("WEIGHTS", "QPARAMS_START")
            with state("QPARAMS_START"):
                with m.If(desc.q_count != 0):
                    begin_read("qparams", desc.q_addr, desc.q_count, it.qparams)
                    m.next = "QPARAMS_REQ"
                with m.Else():
                    m.next = "RUN_START"
            read_phase("QPARAMS", "RUN_START")
            with state("RUN_START"):
                m.d.sync += [pos.eq(0), o_on.eq((desc.out_pixels != 0) & (first_len != 0)),
                             o_pixels.eq(desc.out_pixels), o_second.eq(0),
                             o_left.eq(first_len), o_base.eq(desc.out_addr),
                             o_addr.eq(desc.out_addr + first_off)]
                with m.If(sel["window"]):
                    m.next = "WIN_CFG"
                with m.Elif(desc.in_beats != 0):
                    begin_read("input", desc.in_addr, desc.in_beats, it.input)
                    m.next = "INPUT_REQ"
                with m.Else():
                    m.next = "RUN"
            read_phase("INPUT", "RUN")
            with state("UNIT_CFG"):  # a pool: its sizes, then its input
                m.d.comb += cfg_offer.eq(1)
                with m.If(cfg_taken):
                    begin_read("input", desc.in_addr, desc.in_beats, it.input)
                    m.next = "INPUT_REQ"
            with state("WIN_CFG"):  # the window packer: its sizes, then the raw image
                m.d.comb += cfg_offer.eq(1)
                with m.If(cfg_taken):
                    m.d.sync += [win_skip.eq(desc.skip_beats), win_pass.eq(desc.in_beats)]
                    begin_read("input", desc.in_addr, desc.raw_beats, it.input)
                    m.next = "INPUT_REQ"
            with state("RUN"):  # the last outputs, the run's end, the last write
                engine_end = ~o_on & (self.runs != runs0) & (~sel["window"] | unit_done)
                pool_end = (sel["maxpool"] | sel["avgpool"]) & unit_done
                with m.If((Mux(sel["map"] | sel["window"], engine_end, pool_end)) & idle_dma):
                    engine = sel["map"] | sel["window"]
                    m.d.sync += [stats.eq(Cat(d_cycles, Mux(engine, self.cycles, 0),
                                              Mux(engine, self.compute, 0), d_read,
                                              d_written)),
                                 stats_left.eq(Mux(desc.stats, stats_words, 0)),
                                 stats_addr.eq(desc.stats_addr[shift:])]
                    m.next = "STATS"
            with state("STATS"):
                m.d.comb += stats_go.eq(1)
                with m.If((stats_left == 0) & idle_dma):
                    m.d.sync += [pc.eq(pc + DESC_BYTES), index.eq(index + 1)]
                    m.next = "FETCH"
            with m.State("DONE"):
                m.d.sync += [self.programs.eq(self.programs + 1), self.status.eq(SeqError.OK),
                             self.detail.eq(0), self.prog_cycles.eq(p_cycles),
                             self.active.eq(0)]
                m.next = "IDLE"
            with m.State("WIND"):
                # let the DMA finish what is in flight (discarding reads), then reset the
                # engine (it may be part-way through a run) and report
                m.d.comb += draining.eq(1)
                m.d.sync += [o_on.eq(0), items_left.eq(0), stats_left.eq(0),
                             win_skip.eq(0), win_pass.eq(0)]
                with m.If(idle_dma & ~self.rd_data.valid):
                    m.d.comb += self.engine_reset.eq(1)
                    m.d.sync += [self.programs.eq(self.programs + 1),
                                 self.status.eq(fail_code), self.detail.eq(fail_detail),
                                 self.prog_cycles.eq(p_cycles), self.active.eq(0)]
                    m.next = "IDLE"
        return m
