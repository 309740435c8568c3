"""The pools of the resident network: max pool 3x3/2 in ceil mode, and the global average
pool with its requantization.

Both read a feature map as the DMA reader delivers it from DRAM: HWC, row-major, each beat
``lanes`` values of ``bits`` bits (value ``i`` in bits ``[i*bits, (i+1)*bits)``), ``cw``
beats a pixel (``C = cw * lanes`` channels, the padding included). Both take a run's sizes
on a ``cfg`` stream, refuse sizes beyond their limits without taking any input (``error``
names the field, ``done`` pulses), and are ready for the next configuration once a run's
last output beat has left. The references are ``sw.ops.maxpool`` and
``sw.quantize.QAvgPool``; ``tests/test_pool.py`` holds them to it bit for bit.

:class:`MaxPool` takes a beat a cycle: a horizontal max over each window's three columns
(the running max of the window's columns so far, a word of LUT RAM per beat of
a pixel), then a vertical max
over three rows (the open output row's partial maxima in a block RAM of ``row_words``). Pooled
beats wait in a FIFO whose room is reserved when the input beat that finishes them is taken,
so the pipeline never stalls and a slow output only holds the input back.

:class:`GlobalAvgPool` accumulates ``x - z_in`` per channel, ``group`` channels a cycle in
a block RAM (a beat in ``lanes / group`` cycles), then requantizes every channel with one
multiplier for the whole tensor (``s_in / (N s_out)``): the product ``acc * m`` by shift
and add from the multiplier's top bit (31 cycles, ``group`` channels at once; no DSP
block), then the engine's own rounding and clamp (:func:`hw.arith.round_shift_clamp`).

Timing (the ECP5 at 100 MHz, as the engine): every block RAM's output goes into a register
of its own before any logic, and the decisions (which beat closes a window, whether there is
room for its result) come from counters and flags in registers.
"""

from __future__ import annotations

from amaranth import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, enum, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from spec.quant import MULT_BITS, SHIFT_MAX, SHIFT_MIN, QuantSpec

from .arith import ROUND_LATENCY, round_shift_clamp
from .ram import RegisteredRead, ram
from .stream_fifo import StreamFIFO


def beat_layout(bits: int, lanes: int) -> data.ArrayLayout:
    """A beat: ``lanes`` signed values of ``bits`` bits, value ``i`` at bits ``i*bits``."""
    return data.ArrayLayout(signed(bits), lanes)


def unit_members(cfg_layout, beat, error) -> dict:
    """The ports the layer sequencer's units share (:class:`MaxPool`, :class:`GlobalAvgPool`,
    ``hw.window.WindowPacker``): a ``cfg`` stream taken when idle, beats in and out, the
    last configuration's ``error`` (an enum naming the refused field), ``busy``, and the
    ``accepted`` / ``done`` pulses."""
    return {"cfg": In(stream.Signature(cfg_layout)), "input": In(stream.Signature(beat)),
            "output": Out(stream.Signature(beat)), "error": Out(error), "busy": Out(1),
            "accepted": Out(1), "done": Out(1)}


def _lane_max(a, b, bits: int, lanes: int):
    """Per-lane signed maximum of two beats (raw bits)."""
    return Cat(*(Mux(a[i * bits:(i + 1) * bits].as_signed() > b[i * bits:(i + 1) * bits]
                     .as_signed(), a[i * bits:(i + 1) * bits], b[i * bits:(i + 1) * bits])
                 for i in range(lanes)))


def serial_product(m: Module, name: str, width: int):
    """A shift-and-add multiplier for configuration-time sizes (no DSP block): load ``a``
    and ``b`` with ``load``; ``busy`` while it runs (one cycle per bit of ``b``), then
    ``product`` holds ``a * b``. Returns ``(a, b, load, busy, product)``."""
    a_in = Signal(width, name=f"{name}_a_in")
    b_in = Signal(width, name=f"{name}_b_in")
    load = Signal(name=f"{name}_load")
    a = Signal(width, name=f"{name}_a")
    b = Signal(width, name=f"{name}_b")
    product = Signal(width, name=f"{name}_p")
    with m.If(load):
        m.d.sync += [a.eq(a_in), b.eq(b_in), product.eq(0)]
    with m.Elif(b != 0):
        m.d.sync += [a.eq(a << 1), b.eq(b >> 1)]
        with m.If(b[0]):
            m.d.sync += product.eq(product + a)
    return a_in, b_in, load, b != 0, product


class MaxPoolError(enum.Enum, shape=3):
    """Why :class:`MaxPool` refused a configuration."""

    OK = 0
    H = 1  #: h below 2 (no output row) or above max_h
    W = 2  #: w below 2 (no output column) or above max_w
    CW = 3  #: cw 0 or above max_cw
    ROW = 4  #: an output row, (w // 2) * cw beats, above row_words
    SMALL = 5  #: an input row of fewer than 4 beats (w * cw < 4: w below 4 with cw = 1)


class MaxPool(wiring.Component):
    """Max pool, kernel 3, stride 2, ceil mode (``sw.ops.maxpool``), per-lane signed max.

    The output is ``h // 2`` x ``w // 2`` pixels of ``cw`` beats (``pool_output_size`` in
    ceil mode is ``n // 2`` for every ``n >= 2``); window ``(i, j)`` covers input rows
    ``2i .. 2i + 2`` and columns ``2j .. 2j + 2``, clipped at the far edges.

    Ports
    -----
    cfg : In(stream of {h, w, cw})
        A run's map: ``h`` x ``w`` pixels of ``cw`` beats. Taken only when idle.
    input : In(stream of beat_layout)
        The map's ``h * w * cw`` beats, row-major, a pixel's beats together.
    output : Out(stream of beat_layout)
        The pooled map's ``(h // 2) * (w // 2) * cw`` beats in the same order.
    error : Out(MaxPoolError)
        The last configuration's status (``OK``: accepted), held until the next one.
    busy : Out(1)
        From taking a configuration until its ``done``.
    accepted : Out(1)
        Pulse: the configuration passed the checks; the run starts (the DMA may start).
    done : Out(1)
        Pulse: the run's last output beat has left, or the configuration was refused (then
        no input is taken and ``accepted`` does not pulse).

    Limits: ``2 <= h <= max_h``, ``2 <= w <= max_w``, ``1 <= cw <= max_cw``, ``(w // 2) *
    cw <= row_words`` (the block RAM of one output row's partial maxima), and an input row of
    at least 4 beats (``w * cw >= 4``; a partial maximum's write must land before its next
    read). ``fifo_depth``
    output beats may be reserved at once: 16 (the default) keeps the input at a beat a cycle
    through the pipeline's 7 stages.
    """

    def __init__(self, *, bits: int = 8, lanes: int = 16, max_h: int = 128, max_w: int = 128,
                 max_cw: int = 32, row_words: int = 512, fifo_depth: int = 16):
        QuantSpec(bits)
        if fifo_depth < 8:
            raise ValueError(f"fifo_depth={fifo_depth}: at least 8 (the pipeline's beats "
                             "and the credit check's margin)")
        self._bits, self._lanes = bits, lanes
        self._max_h, self._max_w, self._max_cw = max_h, max_w, max_cw
        self._row_words, self._fifo_depth = row_words, fifo_depth
        beat = beat_layout(bits, lanes)
        super().__init__(unit_members(self.cfg_layout, beat, MaxPoolError))

    @property
    def cfg_layout(self) -> data.StructLayout:
        return data.StructLayout({"h": range(self._max_h + 1), "w": range(self._max_w + 1),
                                  "cw": range(self._max_cw + 1)})

    @property
    def limits(self) -> dict[str, int]:
        return {"max_h": self._max_h, "max_w": self._max_w, "max_cw": self._max_cw,
                "row_words": self._row_words}

    def elaborate(self, platform):
        m = Module()
        bits, lanes = self._bits, self._lanes
        beat_bits = bits * lanes
        cfg = Signal(self.cfg_layout)
        h_m1 = Signal.like(cfg.h)
        w_m1 = Signal.like(cfg.w)
        cw_m1 = Signal.like(cfg.cw)
        h_even = Signal()
        w_even = Signal()
        wide = max(len(cfg.w) + len(cfg.cw), (self._row_words + 1).bit_length()) + 1
        pa, pb, pload, pbusy, row = serial_product(m, "row", wide)
        m.d.comb += [pa.eq(cfg.w >> 1), pb.eq(cfg.cw)]

        # position of the next input beat: beat c of pixel (r, x); vaddr: its output word
        c = Signal.like(cfg.cw)
        x = Signal.like(cfg.w)
        r = Signal.like(cfg.h)
        vaddr = Signal(range(max(2, self._row_words)))
        more = Signal()  # input beats still to come
        running = Signal()
        owed = Signal(range(self._fifo_depth + 1))  # output beats reserved, not yet taken
        room = Signal()
        m.submodules.fifo = fifo = StreamFIFO(beat_bits, self._fifo_depth)
        wiring.connect(m, fifo.r, wiring.flipped(self.output))

        take = self.input.valid & self.input.ready
        m.d.comb += self.input.ready.eq(running & more & room)
        x_last, c_last, r_last = x == w_m1, c == cw_m1, r == h_m1
        h_final = (~x[0] & (x >= 2)) | (x_last & w_even)  # this column closes a window
        v_final = (~r[0] & (r >= 2)) | (r_last & h_even)  # this row closes an output row
        emits = h_final & v_final
        out_taken = self.output.valid & self.output.ready
        m.d.sync += owed.eq(owed + (take & emits) - out_taken)
        # one beat may be taken while this is registered, one more the cycle after
        m.d.sync += room.eq(owed <= self._fifo_depth - 3)

        with m.If(take):
            m.d.sync += c.eq(c + 1)
            with m.If(c_last):
                m.d.sync += [c.eq(0), x.eq(x + 1)]
                with m.If(x_last):
                    m.d.sync += [x.eq(0), r.eq(r + 1)]
                    with m.If(r_last):
                        m.d.sync += more.eq(0)
            with m.If(h_final):
                m.d.sync += vaddr.eq(vaddr + 1)
            with m.If(c_last & x_last):
                m.d.sync += vaddr.eq(0)

        # stage A: the beat and where it goes. The horizontal max runs through one LUT-RAM
        # word per beat of a pixel (``pair[c]``): an even column writes its beat there, the
        # odd column after it the max of the two, so a window's last column (even, or the
        # far odd one of an even width) finds the max of the columns before it in
        # ``pair[c]``. Read (asynchronously) in stage A, written in stage A2; a beat one
        # cycle behind the same word (``cw = 1``) takes the value being written instead.
        depth = 1 << (max(1, self._max_cw) - 1).bit_length()
        a_valid = Signal()
        a_beat = Signal(beat_bits, reset_less=True)
        a_c = Signal(range(depth), reset_less=True)
        a_even, a_hfinal, a_vstart, a_vfinal = (Signal(reset_less=True, name=f"a_{n}")
                                                for n in ("even", "hfinal", "vstart",
                                                          "vfinal"))
        a_vaddr = Signal.like(vaddr, reset_less=True)
        m.d.sync += a_valid.eq(take)
        with m.If(take):
            m.d.sync += [a_beat.eq(self.input.payload.as_value()), a_c.eq(c),
                         a_even.eq(~x[0]), a_hfinal.eq(h_final), a_vstart.eq(~r[0]),
                         a_vfinal.eq(v_final), a_vaddr.eq(vaddr)]
        m.submodules.pair = pair = memory.Memory(shape=beat_bits, depth=depth, init=[])
        pair_w = pair.write_port()
        pair_r = pair.read_port(domain="comb")
        m.d.comb += pair_r.addr.eq(a_c)

        # stage A2: the max of the columns so far; written back (an even column: its beat)
        a2_valid = Signal()
        a2_beat = Signal(beat_bits, reset_less=True)
        a2_prev = Signal(beat_bits, reset_less=True)
        a2_c = Signal.like(a_c, reset_less=True)
        a2_even, a2_hfinal, a2_vstart, a2_vfinal = (
            Signal(reset_less=True, name=f"a2_{n}")
            for n in ("even", "hfinal", "vstart", "vfinal"))
        a2_vaddr = Signal.like(vaddr, reset_less=True)
        a2_max = _lane_max(a2_prev, a2_beat, bits, lanes)
        a2_word = Mux(a2_even, a2_beat, a2_max)
        forward = a2_valid & (a2_c == a_c)
        m.d.comb += [pair_w.addr.eq(a2_c), pair_w.en.eq(a2_valid), pair_w.data.eq(a2_word)]
        m.d.sync += [a2_valid.eq(a_valid), a2_beat.eq(a_beat),
                     a2_prev.eq(Mux(forward, a2_word, pair_r.data)), a2_c.eq(a_c),
                     a2_even.eq(a_even), a2_hfinal.eq(a_hfinal), a2_vstart.eq(a_vstart),
                     a2_vfinal.eq(a_vfinal), a2_vaddr.eq(a_vaddr)]

        # stage B: a window's horizontal max; its row word is read
        b_valid = Signal()
        b_h = Signal(beat_bits, reset_less=True)
        b_vstart, b_vfinal = Signal(reset_less=True), Signal(reset_less=True)
        b_vaddr = Signal.like(vaddr, reset_less=True)
        m.d.sync += [b_valid.eq(a2_valid & a2_hfinal), b_h.eq(a2_max), b_vstart.eq(a2_vstart),
                     b_vfinal.eq(a2_vfinal), b_vaddr.eq(a2_vaddr)]
        # The open output row's partial maxima, read in stage B and written after stage D
        # (registered). The block RAM's output goes into a register of its own (stage C)
        # before any logic (an ECP5 EBR takes ~6 ns from clock to output). A word is read
        # again an input row (``w * cw`` beats, 4 or more: ``SMALL``) after its last read,
        # by when its write, three cycles after that read, is done.
        m.submodules.rows = rows = ram(shape=beat_bits, depth=max(2, self._row_words))
        rows_r = RegisteredRead(m, rows, "rows")
        rows_w = rows.write_port()
        m.d.comb += rows_r.addr.eq(b_vaddr)

        # stage C: the word read, registered
        c_valid = Signal()
        c_h = Signal(beat_bits, reset_less=True)
        c_vstart, c_vfinal = Signal(reset_less=True), Signal(reset_less=True)
        c_vaddr = Signal.like(vaddr, reset_less=True)
        m.d.sync += [c_valid.eq(b_valid), c_h.eq(b_h), c_vstart.eq(b_vstart),
                     c_vfinal.eq(b_vfinal), c_vaddr.eq(b_vaddr)]
        # stage D: the vertical max
        d_valid = Signal()
        d_h = Signal(beat_bits, reset_less=True)
        d_vstart, d_vfinal = Signal(reset_less=True), Signal(reset_less=True)
        d_vaddr = Signal.like(vaddr, reset_less=True)
        d_word = Signal(beat_bits, reset_less=True)
        m.d.sync += [d_valid.eq(c_valid), d_h.eq(c_h), d_vstart.eq(c_vstart),
                     d_vfinal.eq(c_vfinal), d_vaddr.eq(c_vaddr), d_word.eq(rows_r.data)]
        vmax = _lane_max(d_word, d_h, bits, lanes)
        # stage E: the word written back (a new output row starts from the window's
        # horizontal max); the pooled beat goes to the FIFO
        e_write = Signal()
        e_addr = Signal.like(vaddr, reset_less=True)
        e_word = Signal(beat_bits, reset_less=True)
        m.d.sync += [e_write.eq(d_valid), e_addr.eq(d_vaddr),
                     e_word.eq(Mux(d_vstart, d_h, vmax))]
        m.d.comb += [rows_w.addr.eq(e_addr), rows_w.en.eq(e_write), rows_w.data.eq(e_word)]
        e_valid = Signal()
        e_beat = Signal(beat_bits, reset_less=True)
        m.d.sync += [e_valid.eq(d_valid & d_vfinal), e_beat.eq(vmax)]
        m.d.comb += [fifo.w.valid.eq(e_valid), fifo.w.payload.eq(e_beat)]
        stages = [a_valid, a2_valid, b_valid, c_valid, d_valid, e_valid, e_write]
        drained = ~Cat(*stages).any() & (owed == 0)

        bad = Signal(MaxPoolError)
        m.d.comb += self.busy.eq(~(self.cfg.ready))
        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += self.cfg.ready.eq(1)
                with m.If(self.cfg.valid):
                    m.d.sync += cfg.eq(self.cfg.payload)
                    m.next = "SIZE"
            with m.State("SIZE"):
                m.d.comb += pload.eq(1)
                m.d.sync += [h_m1.eq(cfg.h - 1), w_m1.eq(cfg.w - 1), cw_m1.eq(cfg.cw - 1),
                             h_even.eq(~cfg.h[0]), w_even.eq(~cfg.w[0])]
                m.next = "MULTIPLY"
            with m.State("MULTIPLY"):
                with m.If(~pbusy):
                    m.next = "CHECK"
            with m.State("CHECK"):
                m.d.sync += bad.eq(
                    Mux((cfg.h < 2) | (cfg.h > self._max_h), MaxPoolError.H,
                        Mux((cfg.w < 2) | (cfg.w > self._max_w), MaxPoolError.W,
                            Mux((cfg.cw == 0) | (cfg.cw > self._max_cw), MaxPoolError.CW,
                                Mux(row > self._row_words, MaxPoolError.ROW,
                                    Mux((cfg.cw == 1) & (cfg.w < 4), MaxPoolError.SMALL,
                                        MaxPoolError.OK))))))
                m.next = "DECIDE"
            with m.State("DECIDE"):
                m.d.sync += self.error.eq(bad)
                with m.If(bad == MaxPoolError.OK):
                    m.d.comb += self.accepted.eq(1)
                    m.d.sync += [running.eq(1), more.eq(1), c.eq(0), x.eq(0), r.eq(0),
                                 vaddr.eq(0)]
                    m.next = "RUN"
                with m.Else():
                    m.next = "DONE"
            with m.State("RUN"):
                with m.If(~more & drained):
                    m.d.sync += running.eq(0)
                    m.next = "DONE"
            with m.State("DONE"):
                m.d.comb += self.done.eq(1)
                m.next = "IDLE"
        return m


class GlobalAvgPoolError(enum.Enum, shape=3):
    """Why :class:`GlobalAvgPool` refused a configuration."""

    OK = 0
    H = 1  #: h 0 or above max_h
    W = 2  #: w 0 or above max_w
    CW = 3  #: cw 0 or above max_cw
    SHIFT = 4  #: a requantizing (not exact) run with shift 0


class GlobalAvgPool(wiring.Component):
    """Global average pool (``sw.quantize.QAvgPool``): a map in, one pixel of ``C = cw *
    lanes`` values out.

    Each channel's sum ``acc[c] = sum(x - z_in)`` over the ``h * w`` pixels, then either

    * requantized (``exact = 0``): ``clamp(z_out + round(acc * mult / 2**shift), min, max)``,
      round half up (``spec.quant.requantize`` without ReLU; the multiplier ``s_in / (h w
      s_out)`` is per tensor, one for every channel). Output: ``cw`` beats, the pixel's
      values in the feature-map layout;
    * or ``exact = 1`` (a model that averages in float): the sums themselves, each an
      ``exact_bits``-bit two's complement value (32 at the default widths),
      ``lanes * bits // exact_bits`` of them a beat, value ``i`` of a beat at bits
      ``i * exact_bits``, in channel order: ``cw * exact_bits // bits`` beats.

    Ports
    -----
    cfg : In(stream of {h, w, cw, z_in, mult, shift, z_out, exact})
        A run's map size and arithmetic. Taken only when idle.
    input : In(stream of beat_layout)
        The map's ``h * w * cw`` beats, row-major, a pixel's beats together. Taken at one
        beat per ``lanes // group`` cycles.
    output : Out(stream of beat_layout)
        The pooled pixel's beats, after the last input beat.
    error, busy, accepted, done
        As :class:`MaxPool`'s (``GlobalAvgPoolError``).

    Limits: ``1 <= h <= max_h``, ``1 <= w <= max_w``, ``1 <= cw <= max_cw``, ``shift`` 1 to
    63 unless exact. The sums' width follows from ``max_h * max_w`` (``acc_bits``).
    """

    def __init__(self, *, bits: int = 8, lanes: int = 16, max_h: int = 16, max_w: int = 16,
                 max_cw: int = 64, group: int = 4):
        spec = QuantSpec(bits)
        if lanes % group or lanes // group < 4:
            raise ValueError(f"group={group}: must divide lanes={lanes} at least four times "
                             "(a sum is written three cycles after its read, and read again "
                             "a pixel, lanes // group cycles or more, later)")
        self._spec, self._bits, self._lanes, self._group = spec, bits, lanes, group
        self._max_h, self._max_w, self._max_cw = max_h, max_w, max_cw
        #: width of a sum: ``max_h * max_w`` terms of ``bits + 1`` signed bits
        self.acc_bits = bits + 1 + (max_h * max_w - 1).bit_length()
        per_value = 1  # value slots of ``bits`` an exact sum takes: a power of two
        while per_value * bits < max(32, self.acc_bits):
            per_value *= 2
        if per_value > lanes:
            raise ValueError(f"an exact sum of {self.acc_bits} bits does not fit a beat of "
                             f"{lanes} x {bits} bits")
        self._per_value = per_value
        #: width of an exact-mode output value
        self.exact_bits = per_value * bits
        beat = beat_layout(bits, lanes)
        super().__init__(unit_members(self.cfg_layout, beat, GlobalAvgPoolError))

    @property
    def cfg_layout(self) -> data.StructLayout:
        return data.StructLayout({
            "h": range(self._max_h + 1), "w": range(self._max_w + 1),
            "cw": range(self._max_cw + 1), "z_in": signed(self._bits),
            "mult": unsigned(MULT_BITS - 1), "shift": unsigned(SHIFT_MAX.bit_length()),
            "z_out": signed(self._bits), "exact": 1,
        })

    def output_beats(self, cw: int, exact: bool) -> int:
        """Beats of a run's output."""
        return cw * self._per_value if exact else cw

    def elaborate(self, platform):
        m = Module()
        spec, bits, lanes, group = self._spec, self._bits, self._lanes, self._group
        steps = lanes // group
        log_steps = (steps - 1).bit_length()
        acc_bits, exact_bits = self.acc_bits, self.exact_bits
        beat_bits = bits * lanes
        words = self._max_cw * steps
        cfg = Signal(self.cfg_layout)
        h_m1, w_m1, cw_m1 = Signal.like(cfg.h), Signal.like(cfg.w), Signal.like(cfg.cw)
        words_m1 = Signal(range(words))
        running = Signal()
        more = Signal()

        # --- accumulation: a beat in ``steps`` cycles, ``group`` channels each ---------------
        m.submodules.sums = sums = ram(shape=group * acc_bits, depth=words)
        rd = RegisteredRead(m, sums, "sums")
        wr = sums.write_port()
        c, x, r = Signal.like(cfg.cw), Signal.like(cfg.w), Signal.like(cfg.h)
        hold = Signal(beat_bits, reset_less=True)
        have = Signal()
        s = Signal(range(steps))
        a = Signal(range(words))
        first = Signal()  # the first pixel: its sums are written, not added to
        take = self.input.valid & self.input.ready
        m.d.comb += self.input.ready.eq(running & more & (~have | (s == steps - 1)))
        with m.If(have):
            m.d.sync += [s.eq(s + 1), a.eq(a + 1)]
            with m.If(a == words_m1):
                m.d.sync += [a.eq(0), first.eq(0)]
            with m.If(s == steps - 1):
                m.d.sync += [s.eq(0), have.eq(0)]
        with m.If(take):
            m.d.sync += [hold.eq(self.input.payload.as_value()), have.eq(1), c.eq(c + 1)]
            with m.If(c == cw_m1):
                m.d.sync += [c.eq(0), x.eq(x + 1)]
                with m.If(x == w_m1):
                    m.d.sync += [x.eq(0), r.eq(r + 1)]
                    with m.If(r == h_m1):
                        m.d.sync += more.eq(0)
        # stage 1: this phase's lanes less the zero point, beside the sums' read
        g_bits = group * bits
        phase = Signal(g_bits)
        m.d.comb += phase.eq(hold.word_select(s, g_bits))
        diff = [Signal(signed(bits + 1), reset_less=True, name=f"diff{k}")
                for k in range(group)]
        m.d.sync += [d.eq(phase[k * bits:(k + 1) * bits].as_signed() - cfg.z_in)
                     for k, d in enumerate(diff)]
        v1, first1 = Signal(), Signal(reset_less=True)
        a1 = Signal.like(a, reset_less=True)
        m.d.sync += [v1.eq(have), first1.eq(first), a1.eq(a)]
        # stage 2: the sums read, into a register of their own (the block RAM's output is
        # slow); stage 3: add and write back, before the next read of the word (a pixel,
        # ``cw * steps >= 4`` cycles, after this one)
        v2, first2 = Signal(), Signal(reset_less=True)
        a2 = Signal.like(a, reset_less=True)
        diff2 = [Signal.like(d, name=f"diff2_{k}", reset_less=True) for k, d in enumerate(diff)]
        old = Signal(group * acc_bits, reset_less=True)
        m.d.sync += [v2.eq(v1), first2.eq(first1), a2.eq(a1), old.eq(rd.data)]
        m.d.sync += [d2.eq(d) for d2, d in zip(diff2, diff, strict=True)]
        m.d.comb += [wr.addr.eq(a2), wr.en.eq(v2),
                     wr.data.eq(Cat(*(Mux(first2, d, old[k * acc_bits:(k + 1) * acc_bits]
                                          .as_signed() + d)[:acc_bits]
                                      for k, d in enumerate(diff2))))]
        accumulating = more | have | v1 | v2

        # --- output: a word of sums at a time -------------------------------------------
        o_addr = Signal(range(words))
        m.d.comb += rd.addr.eq(Mux(running & accumulating, a, o_addr))
        p_bits = acc_bits + MULT_BITS
        mb = Signal(MULT_BITS - 1)
        m_left = Signal(range(MULT_BITS))  # multiplier bits still to go
        multiplicand = [Signal(signed(acc_bits), name=f"mcand{k}") for k in range(group)]
        product = [Signal(signed(p_bits), name=f"prod{k}") for k in range(group)]
        q = Signal(range(group + ROUND_LATENCY + 1))
        y, _ = round_shift_clamp(m, product[0], cfg.shift, cfg.z_out, Const(spec.act_min, bits),
                                 spec, "gap")
        v_bits = max(exact_bits, bits)
        vals = [Signal(v_bits, name=f"val{k}") for k in range(group)]
        v_left = Signal(range(group + 1))
        beat = Signal(beat_bits)
        in_beat = Signal(range(lanes + 1))
        per_beat_m1 = Mux(cfg.exact, lanes // self._per_value - 1, lanes - 1)
        m.d.comb += self.output.payload.eq(beat)

        bad = Signal(GlobalAvgPoolError)
        m.d.comb += self.busy.eq(~self.cfg.ready)
        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += self.cfg.ready.eq(1)
                with m.If(self.cfg.valid):
                    m.d.sync += cfg.eq(self.cfg.payload)
                    m.next = "CHECK"
            with m.State("CHECK"):
                m.d.sync += [
                    h_m1.eq(cfg.h - 1), w_m1.eq(cfg.w - 1), cw_m1.eq(cfg.cw - 1),
                    words_m1.eq((cfg.cw << log_steps) - 1),
                    bad.eq(Mux((cfg.h == 0) | (cfg.h > self._max_h), GlobalAvgPoolError.H,
                               Mux((cfg.w == 0) | (cfg.w > self._max_w), GlobalAvgPoolError.W,
                                   Mux((cfg.cw == 0) | (cfg.cw > self._max_cw),
                                       GlobalAvgPoolError.CW,
                                       Mux(~cfg.exact & (cfg.shift < SHIFT_MIN),
                                           GlobalAvgPoolError.SHIFT,
                                           GlobalAvgPoolError.OK)))))]
                m.next = "DECIDE"
            with m.State("DECIDE"):
                m.d.sync += self.error.eq(bad)
                with m.If(bad == GlobalAvgPoolError.OK):
                    m.d.comb += self.accepted.eq(1)
                    m.d.sync += [running.eq(1), more.eq(1), c.eq(0), x.eq(0), r.eq(0),
                                 s.eq(0), a.eq(0), first.eq(1), o_addr.eq(0),
                                 in_beat.eq(0)]
                    m.next = "ACCUMULATE"
                with m.Else():
                    m.next = "DONE"
            with m.State("ACCUMULATE"):
                with m.If(~accumulating):
                    m.next = "READ"
            with m.State("READ"):  # the sums' read port has o_addr
                m.next = "LOAD"
            with m.State("LOAD"):
                for k in range(group):
                    sum_k = rd.data[k * acc_bits:(k + 1) * acc_bits].as_signed()
                    m.d.sync += [multiplicand[k].eq(sum_k), product[k].eq(0),
                                 vals[k].eq(sum_k)]
                m.d.sync += [mb.eq(cfg.mult), m_left.eq(MULT_BITS - 1), v_left.eq(group),
                             q.eq(0)]
                with m.If(cfg.exact):
                    m.next = "PUT"
                with m.Else():
                    m.next = "MULTIPLY"
            with m.State("MULTIPLY"):  # shift and add, a bit of the multiplier a cycle,
                # from its top (the product shifts, the multiplicand stays: one adder a bit)
                with m.If(m_left != 0):
                    m.d.sync += [mb.eq(mb << 1), m_left.eq(m_left - 1)]
                    for k in range(group):
                        m.d.sync += product[k].eq((product[k] << 1)
                                                  + Mux(mb[-1], multiplicand[k], 0))
                with m.Else():
                    m.next = "ROUND"
            with m.State("ROUND"):  # a product a cycle into the rounding, results after it
                m.d.sync += q.eq(q + 1)
                m.d.sync += [product[k].eq(product[k + 1]) for k in range(group - 1)]
                with m.If(q >= ROUND_LATENCY):
                    m.d.sync += [vals[k].eq(vals[k + 1]) for k in range(group - 1)]
                    m.d.sync += vals[-1].eq(y.as_unsigned())
                with m.If(q == group + ROUND_LATENCY - 1):
                    m.next = "PUT"
            with m.State("PUT"):  # a value into the beat
                m.d.sync += [vals[k].eq(vals[k + 1]) for k in range(group - 1)]
                m.d.sync += [v_left.eq(v_left - 1), in_beat.eq(in_beat + 1)]
                with m.If(cfg.exact):
                    m.d.sync += beat.eq(Cat(beat[exact_bits:], vals[0][:exact_bits]))
                with m.Else():
                    m.d.sync += beat.eq(Cat(beat[bits:], vals[0][:bits]))
                with m.If(in_beat == per_beat_m1):
                    m.next = "EMIT"
                with m.Elif(v_left == 1):
                    m.next = "NEXT"
            with m.State("EMIT"):
                m.d.comb += self.output.valid.eq(1)
                with m.If(self.output.ready):
                    m.d.sync += in_beat.eq(0)
                    with m.If(v_left == 0):
                        m.next = "NEXT"
                    with m.Else():
                        m.next = "PUT"
            with m.State("NEXT"):
                m.d.sync += o_addr.eq(o_addr + 1)
                with m.If(o_addr == words_m1):
                    m.d.sync += running.eq(0)
                    m.next = "DONE"
                with m.Else():
                    m.next = "READ"
            with m.State("DONE"):
                m.d.comb += self.done.eq(1)
                m.next = "IDLE"
        return m
