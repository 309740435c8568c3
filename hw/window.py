"""The window packer: conv1's input for the MAC array, made on the device from the image in
DRAM.

conv1 runs on the MAC array as a 1x1 convolution of packed windows (``spec.windows``, the one
definition of the order): each output pixel's ``k x k`` taps of ``cin`` channels in ``(ky,
kx, c)`` order, padded with the input's zero point to ``packed_channels(k, cin, lanes)``
values. This block reads the raw image as the host wrote it (HWC, ``h * w * cin`` values
``lanes`` to a beat, the last beat padded, no per-pixel padding) and emits, for each output
pixel in row-major order, its packed window's ``packed_channels / lanes`` beats: exactly
``spec.windows.pack_windows(image, k, stride, 0, z, lanes)`` flattened.

How data moves. The image values go into a ring of the last ``capacity`` values (value
``g`` of the image at ``g mod capacity``), split over ``banks`` block RAMs by ``g mod
banks`` so that ``banks`` consecutive values can be read in one cycle. A window's row
``ky`` is ``k * cin`` consecutive image values (taps ``kx`` and channels ``c`` are
contiguous in HWC), so a window is ``k`` runs of consecutive values then the zero-point
padding: the reader takes ``banks`` values a cycle from a run (fewer at its end) and places
them in the output beat (a read may cross into the next beat). The writer takes an input beat
in ``lanes / banks`` cycles (each bank takes ``lanes / banks`` of its values) and may
overwrite only values below the current output row's first input row; the reader starts an
output row once its ``k`` input rows are written. Output beats wait in a FIFO whose room is
reserved when a read that completes a beat is issued, so backpressure only pauses the
reader, and the writer never waits on the reader for more than a row of windows: the ring
holds ``k`` rows plus at least two beats (``ROW`` refuses a wider image).
"""

from __future__ import annotations

from amaranth import Array, Module, Mux, Signal, signed
from amaranth.lib import data, enum, wiring

from spec.quant import QuantSpec
from spec.windows import packed_channels

from .pool import beat_layout, serial_product, unit_members
from .ram import RegisteredRead, ram
from .stream_fifo import StreamFIFO


class WindowError(enum.Enum, shape=4):
    """Why :class:`WindowPacker` refused a configuration."""

    OK = 0
    K = 1  #: kernel 0 or above max_k
    STRIDE = 2  #: stride 0 or above max_stride
    PAD = 3  #: padding other than 0 (not built)
    CIN = 4  #: channels 0 or above max_cin
    H = 5  #: h above max_h or below k (no output row)
    W = 6  #: w above max_w or below k (no output column)
    ROW = 7  #: k image rows (k * w * cin values) and two beats exceed the ring's capacity


class WindowPacker(wiring.Component):
    """Packs each output pixel's window of a raw HWC image into the lanes (module docstring).

    Ports
    -----
    cfg : In(stream of {h, w, cin, k, stride, pad, z})
        The image's size and channels, the kernel, stride and padding (0), the input's zero
        point (the padding value). Taken only when idle.
    input : In(stream of beat_layout)
        The raw image: ``ceil(h * w * cin / lanes)`` beats, value ``i`` of the image in
        lane ``i mod lanes`` of beat ``i // lanes``; the last beat's extra lanes are ignored.
        A beat is taken every ``lanes / banks`` cycles at best.
    output : Out(stream of beat_layout)
        ``oh * ow * packed_channels(k, cin, lanes) / lanes`` beats, ``oh = (h - k) //
        stride + 1`` (``ow`` alike), pixels row-major.
    error, busy, accepted, done
        As :class:`hw.pool.MaxPool`'s (``WindowError``); a refused configuration takes no
        input.
    """

    def __init__(self, *, bits: int = 8, lanes: int = 16, max_h: int = 256,
                 max_w: int = 256, max_cin: int = 4, max_k: int = 7, max_stride: int = 2,
                 capacity: int = 8192, banks: int = 4, fifo_depth: int = 4):
        QuantSpec(bits)
        for name, v in (("lanes", lanes), ("banks", banks), ("capacity", capacity)):
            if v < 1 or v & (v - 1):
                raise ValueError(f"{name}={v}: must be a power of two")
        if lanes % banks or banks < 2:
            raise ValueError(f"banks={banks}: 2 or more, dividing lanes={lanes}")
        if fifo_depth < 4:
            raise ValueError(f"fifo_depth={fifo_depth}: at least 4")
        self._bits, self._lanes, self._banks = bits, lanes, banks
        self._max_h, self._max_w, self._max_cin = max_h, max_w, max_cin
        self._max_k, self._max_stride = max_k, max_stride
        self._capacity, self._fifo_depth = capacity, fifo_depth
        beat = beat_layout(bits, lanes)
        super().__init__(unit_members(self.cfg_layout, beat, WindowError))

    @property
    def cfg_layout(self) -> data.StructLayout:
        return data.StructLayout({
            "h": range(self._max_h + 1), "w": range(self._max_w + 1),
            "cin": range(self._max_cin + 1), "k": range(self._max_k + 1),
            "stride": range(self._max_stride + 1), "pad": range(self._max_k + 1),
            "z": signed(self._bits),
        })

    def output_beats(self, h: int, w: int, cin: int, k: int, stride: int) -> int:
        oh, ow = (h - k) // stride + 1, (w - k) // stride + 1
        return oh * ow * packed_channels(k, cin, self._lanes) // self._lanes

    def input_beats(self, h: int, w: int, cin: int) -> int:
        return -(-h * w * cin // self._lanes)

    def elaborate(self, platform):
        m = Module()
        bits, lanes, u = self._bits, self._lanes, self._banks
        cap = self._capacity
        log_u = (u - 1).bit_length()
        beat_bits = bits * lanes
        cfg = Signal(self.cfg_layout)
        total_max = self._max_h * self._max_w * self._max_cin
        g_range = range(total_max + cap + 2 * lanes + 1)
        gw = len(Signal(g_range))

        # --- sizes (shift and add, at configuration) ----------------------------------------
        pa, pb, pload, pbusy, prod = serial_product(m, "size", gw)
        wc, kc, kwc, swc, scin, total, kkc = (Signal(gw, name=n) for n in
                                              ("wc", "kc", "kwc", "swc", "scin", "total",
                                               "kkc"))
        pad_vals = Signal(range(lanes))  # zero-point values after a window's taps

        # --- the ring: ``banks`` block RAMs, value g in bank g mod banks ---------------------
        depth = cap // u
        mems = [ram(shape=bits, depth=depth) for _ in range(u)]
        reads, writes = [], []
        for b, mem in enumerate(mems):
            m.submodules[f"bank{b}"] = mem
            reads.append(RegisteredRead(m, mem, f"bank{b}"))
            writes.append(mem.write_port())

        running = Signal()
        reader_done = Signal()

        # --- writer: a beat in lanes / banks cycles ----------------------------------------
        hold = Signal(beat_bits, reset_less=True)
        have = Signal()
        phases = lanes // u
        wph = Signal(range(phases))
        waddr = Signal(range(depth))
        in_vals = Signal(g_range)  # values taken
        written = Signal(g_range)  # values written
        more_in = Signal()
        space = Signal()
        row_lo = Signal(g_range)  # the current output row's first input value
        m.d.sync += space.eq(reader_done | (in_vals + 2 * lanes <= row_lo + cap))
        take = self.input.valid & self.input.ready
        m.d.comb += self.input.ready.eq(running & more_in & space & (~have | (wph == phases - 1)))
        for b, wp in enumerate(writes):
            m.d.comb += [wp.addr.eq(waddr), wp.en.eq(have),
                         wp.data.eq(hold.word_select(wph, u * bits)[b * bits:(b + 1) * bits])]
        with m.If(have):
            m.d.sync += [wph.eq(wph + 1), waddr.eq(waddr + 1)]
            with m.If(wph == phases - 1):
                m.d.sync += [wph.eq(0), have.eq(0), written.eq(written + lanes)]
        with m.If(take):
            m.d.sync += [hold.eq(self.input.payload.as_value()), have.eq(1),
                         in_vals.eq(in_vals + lanes), more_in.eq(in_vals + lanes < total)]

        # --- reader: up to ``banks`` values a cycle of a window ----------------------------
        # Every decision is taken from registers: whether this is a run's last read
        # (``rem_le_u``), flags for the last segment, the row's last pixel and the last row,
        # each kept a step ahead, and every next address already computed (``g_u``,
        # ``*_nx``), so that no adder follows a decision. A read may cross an output beat's
        # end: the assembly has room for ``banks - 1`` values of the next beat.
        need = Signal(g_range)  # values the current output row needs written
        row_ok = Signal()
        m.d.sync += row_ok.eq(written >= need)
        ix_end = Signal(range(self._max_w + 2 * self._max_stride + 1))
        iy_end = Signal(range(self._max_h + 2 * self._max_stride + 1))
        aw = (cap - 1).bit_length()  # ring addresses: values modulo the capacity
        # the next value to read and the one ``banks`` after it; where the next segment,
        # pixel and row start
        g, g_u, seg_g_nx, pix_g_nx, row_g_nx = (
            Signal(aw, name=n) for n in ("g", "g_u", "seg_g_nx", "pix_g_nx", "row_g_nx"))
        ky = Signal(range(self._max_k))
        flags = ("last_seg", "row_last", "rows_last", "no_pad", "k_is_1", "rem_le_u",
                 "kc_le_u", "pad_le_u")
        last_seg, row_last, rows_last, no_pad, k_is_1, rem_le_u, kc_le_u, pad_le_u = (
            Signal(name=n) for n in flags)
        rem = Signal.like(kc)  # values left in the run (a segment, or the padding)
        in_pad = Signal()
        pos = Signal(range(lanes))  # the next value's place in its output beat
        owed = Signal(range(self._fifo_depth + 1))
        room = Signal()
        issue = Signal()
        n = Signal(range(u + 1))
        m.d.comb += n.eq(Mux(rem_le_u, rem, u))
        beat_end = pos + n >= lanes
        seg_end = ~in_pad & rem_le_u
        pix_end = (in_pad & rem_le_u) | (seg_end & last_seg & no_pad)
        out_taken = self.output.valid & self.output.ready
        m.d.sync += [owed.eq(owed + (issue & beat_end) - out_taken),
                     room.eq(owed <= self._fifo_depth - 3)]

        # the issued read, registered; the banks' addresses from it
        i_valid = Signal()
        i_g = Signal(aw, reset_less=True)
        i_n = Signal.like(n, reset_less=True)
        i_pos = Signal.like(pos, reset_less=True)
        i_pad, i_end = Signal(reset_less=True), Signal(reset_less=True)
        m.d.sync += [i_valid.eq(issue), i_g.eq(g), i_n.eq(n), i_pos.eq(pos), i_pad.eq(in_pad),
                     i_end.eq(beat_end)]
        i_gl = i_g[:log_u]
        for b, rp in enumerate(reads):
            m.d.comb += rp.addr.eq(i_g[log_u:] + (b < i_gl))

        # the read's data, a cycle later, into registers of their own (a block RAM's output
        # is slow); placement in the beat a cycle after that
        v_x = Signal()
        pad_x, complete_x = Signal(reset_less=True), Signal(reset_less=True)
        gl_x = Signal(log_u, reset_less=True)
        n_x = Signal.like(n, reset_less=True)
        p_x = Signal(range(lanes), reset_less=True)
        m.d.sync += [v_x.eq(i_valid), pad_x.eq(i_pad), gl_x.eq(i_gl), n_x.eq(i_n),
                     p_x.eq(i_pos), complete_x.eq(i_end)]
        v_d, pad_d, complete_d = Signal(), Signal(reset_less=True), Signal(reset_less=True)
        gl_d = Signal(log_u, reset_less=True)
        n_d = Signal.like(n, reset_less=True)
        p_d = Signal(range(lanes), reset_less=True)
        m.d.sync += [v_d.eq(v_x), pad_d.eq(pad_x), gl_d.eq(gl_x), n_d.eq(n_x),
                     p_d.eq(p_x), complete_d.eq(complete_x)]
        bank_q = [Signal(bits, name=f"bank{b}_q", reset_less=True) for b in range(u)]
        m.d.sync += [q.eq(rp.data) for q, rp in zip(bank_q, reads, strict=True)]
        bank_data = Array(bank_q)
        vals = [Mux(pad_d, cfg.z.as_unsigned(), bank_data[(gl_d + j)[:log_u]])
                for j in range(u)]
        slots = lanes + u - 1
        asm = Signal(slots * bits, reset_less=True)
        merged = Signal(slots * bits)
        m.d.comb += merged.eq(asm)
        for i in range(slots):
            for j in range(min(u, i + 1)):
                if i - j < lanes:
                    with m.If((p_d == i - j) & (n_d > j)):
                        m.d.comb += merged[i * bits:(i + 1) * bits].eq(vals[j])
        ob_valid = Signal()
        ob = Signal(beat_bits, reset_less=True)
        with m.If(v_d):
            # a finished beat leaves; what spilled past its end starts the next one
            m.d.sync += asm.eq(Mux(complete_d, merged[beat_bits:], merged))
        m.d.sync += [ob_valid.eq(v_d & complete_d), ob.eq(merged[:beat_bits])]
        m.submodules.fifo = fifo = StreamFIFO(beat_bits, self._fifo_depth)
        m.d.comb += [fifo.w.valid.eq(ob_valid), fifo.w.payload.eq(ob)]
        wiring.connect(m, fifo.r, wiring.flipped(self.output))

        def start_segment(first):
            """The next run of values starts at ``first`` (a register), a segment."""
            return [g.eq(first), g_u.eq(first + u), seg_g_nx.eq(first + wc), rem.eq(kc),
                    rem_le_u.eq(kc_le_u)]

        with m.If(issue):
            m.d.sync += pos.eq(pos + n)
            with m.If(~rem_le_u):  # within the run
                m.d.sync += [g.eq(g_u), g_u.eq(g_u + u), rem.eq(rem - u),
                             rem_le_u.eq(rem <= 2 * u)]
            with m.If(seg_end & ~pix_end):
                with m.If(last_seg):
                    m.d.sync += [in_pad.eq(1), rem.eq(pad_vals), rem_le_u.eq(pad_le_u)]
                with m.Else():
                    m.d.sync += start_segment(seg_g_nx)
                    m.d.sync += [ky.eq(ky + 1), last_seg.eq(ky == cfg.k - 2)]
            with m.If(pix_end):
                m.d.sync += [ky.eq(0), last_seg.eq(k_is_1), in_pad.eq(0)]
                with m.If(~row_last):  # the row's next pixel
                    m.d.sync += start_segment(pix_g_nx)
                    m.d.sync += [pix_g_nx.eq(pix_g_nx + scin),
                                 ix_end.eq(ix_end + cfg.stride),
                                 row_last.eq(ix_end + 2 * cfg.stride > cfg.w)]
                with m.Else():  # the next row's first pixel, if any
                    m.d.sync += start_segment(row_g_nx)
                    m.d.sync += [pix_g_nx.eq(row_g_nx + scin), row_g_nx.eq(row_g_nx + swc),
                                 ix_end.eq(cfg.k), row_last.eq(cfg.k + cfg.stride > cfg.w),
                                 iy_end.eq(iy_end + cfg.stride),
                                 rows_last.eq(iy_end + 2 * cfg.stride > cfg.h),
                                 row_lo.eq(row_lo + swc), need.eq(need + swc)]

        drained = ~have & ~i_valid & ~v_x & ~v_d & ~ob_valid & (owed == 0)
        bad = Signal(WindowError)
        m.d.comb += self.busy.eq(~self.cfg.ready)
        sizes = [("wc", cfg.w, cfg.cin, wc), ("kc", cfg.k, cfg.cin, kc),
                 ("kwc", wc, cfg.k, kwc), ("swc", wc, cfg.stride, swc),
                 ("scin", cfg.cin, cfg.stride, scin), ("total", wc, cfg.h, total),
                 ("kkc", kc, cfg.k, kkc)]
        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += self.cfg.ready.eq(1)
                with m.If(self.cfg.valid):
                    m.d.sync += cfg.eq(self.cfg.payload)
                    m.next = "SIZE_wc"
            for i, (name, a, b, dest) in enumerate(sizes):
                with m.State(f"SIZE_{name}"):
                    m.d.comb += [pa.eq(a), pb.eq(b), pload.eq(1)]
                    m.next = f"MUL_{name}"
                with m.State(f"MUL_{name}"):
                    with m.If(~pbusy):
                        m.d.sync += dest.eq(prod)
                        m.next = f"SIZE_{sizes[i + 1][0]}" if i + 1 < len(sizes) else "CHECK"
            with m.State("CHECK"):
                m.d.sync += [
                    pad_vals.eq(-kkc),
                    bad.eq(Mux((cfg.k == 0) | (cfg.k > self._max_k), WindowError.K,
                           Mux((cfg.stride == 0) | (cfg.stride > self._max_stride),
                               WindowError.STRIDE,
                           Mux(cfg.pad != 0, WindowError.PAD,
                           Mux((cfg.cin == 0) | (cfg.cin > self._max_cin), WindowError.CIN,
                           Mux((cfg.h < cfg.k) | (cfg.h > self._max_h), WindowError.H,
                           Mux((cfg.w < cfg.k) | (cfg.w > self._max_w), WindowError.W,
                           Mux(kwc + 2 * lanes > cap, WindowError.ROW,
                               WindowError.OK))))))))]
                m.next = "DECIDE"
            with m.State("DECIDE"):
                m.d.sync += self.error.eq(bad)
                with m.If(bad == WindowError.OK):
                    m.d.comb += self.accepted.eq(1)
                    m.d.sync += [running.eq(1), reader_done.eq(0), more_in.eq(1),
                                 in_vals.eq(0), written.eq(0), wph.eq(0), waddr.eq(0),
                                 row_lo.eq(0), need.eq(kwc), ky.eq(0), in_pad.eq(0),
                                 pos.eq(0), ix_end.eq(cfg.k),
                                 iy_end.eq(cfg.k), pix_g_nx.eq(scin), row_g_nx.eq(swc),
                                 row_last.eq(cfg.k + cfg.stride > cfg.w),
                                 rows_last.eq(cfg.k + cfg.stride > cfg.h),
                                 k_is_1.eq(cfg.k == 1), last_seg.eq(cfg.k == 1),
                                 no_pad.eq(pad_vals == 0), kc_le_u.eq(kc <= u),
                                 pad_le_u.eq(pad_vals <= u), rem_le_u.eq(kc <= u)]
                    m.d.sync += [g.eq(0), g_u.eq(u), seg_g_nx.eq(wc), rem.eq(kc)]
                    m.next = "SETTLE"
                with m.Else():
                    m.next = "DONE"
            with m.State("SETTLE"):  # row_ok follows the new row's need
                m.next = "WAIT_ROW"
            with m.State("WAIT_ROW"):
                with m.If(row_ok):
                    m.next = "READ"
            with m.State("READ"):
                m.d.comb += issue.eq(room)
                with m.If(room & pix_end & row_last):
                    with m.If(~rows_last):
                        m.next = "SETTLE"
                    with m.Else():
                        m.d.sync += reader_done.eq(1)
                        m.next = "FINISH"
            with m.State("FINISH"):  # the rest of the image taken, every beat out
                with m.If(~more_in & drained):
                    m.d.sync += running.eq(0)
                    m.next = "DONE"
            with m.State("DONE"):
                m.d.comb += self.done.eq(1)
                m.next = "IDLE"
        return m
