"""The Fire engine: one fused Fire layer (or output-channel tile of one) per run.

Data flow of a run (see docs/engine.md for the reasoning and the host's view)::

    cfg ──> check ──> load weights/qparams ──> row schedule
    input (pixel by pixel, ic_lanes channels a beat) ──> input buffer (2 pixels)
        ──> MAC array (squeeze 1x1) ──> requantize+ReLU ──> line buffer (never leaves chip)
    line buffer ──> MAC array (expand 1x1, expand 3x3) ──> requantize+ReLU
        ──> [bypass add] ──> output, in concat order [e1, e3] per pixel

One ``ic_lanes x oc_lanes`` MAC array is time-shared: for each row ``t`` the sequencer
squeezes row ``t`` and then expands row ``t - 1``, whose 3x3 neighbourhood is then complete.
Results leave the array a group of ``oc_lanes`` accumulators at a time into a FIFO that the
requantizer drains one channel per cycle. The sequencer only issues a group's last beat when
the FIFO has room reserved for it (credits), so the array and the requantizer are fixed-latency
pipelines that never stall; backpressure on ``output`` and gaps on ``input``/``bypass`` only
pause the sequencer.
"""

from __future__ import annotations

from amaranth import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, enum, fifo, stream, wiring
from amaranth.lib.wiring import In, Out

from .arith import BypassAdder, Requantizer, delay
from .line_buffer import LineBuffer
from .mac_array import MacArray
from .params import ConfigError, EngineParams, ceil_div, config_fields, qparam_fields
from .ram import RegisteredRead, ram

#: Emitted accumulator groups the FIFO between the array and the requantizer holds.
GROUP_FIFO_DEPTH = 16
#: Output values buffered between the requantizer and the output stream.
OUTPUT_FIFO_DEPTH = 32


class Kind(enum.Enum, shape=2):
    SQUEEZE = 0
    EXPAND1 = 1
    EXPAND3 = 2


def _layout(fields) -> data.StructLayout:
    return data.StructLayout({f.name: signed(f.width) if f.signed else unsigned(f.width)
                              for f in fields})


def config_layout(p: EngineParams) -> data.StructLayout:
    """The ``cfg`` stream payload; :func:`hw.params.pack_config` packs the same fields."""
    return _layout(config_fields(p))


def qparam_layout(p: EngineParams) -> data.StructLayout:
    return _layout(qparam_fields(p))


def _pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


class FireEngine(wiring.Component):
    """Fire-module engine (see the module docstring).

    Streams: ``cfg`` (a layer configuration starts a run), ``weights`` (rows of
    ``oc_lanes x ic_lanes`` weights), ``qparams`` (per output channel: bias, multiplier,
    shift), ``input`` (``ic_lanes`` channels of one pixel a beat), ``bypass`` (one value a
    beat, in output order; only when built with bypass) and ``output`` (one value a beat).

    Status: ``busy``; ``error``, the :class:`~hw.params.ConfigError` of the last refused
    configuration (0 when the last one was accepted); ``cycles``, the last run's cycles from
    its configuration to its last output beat; ``compute``, those cycles less the ones the
    engine spent waiting on its streams (see ``_waiting``); ``runs``, configurations handled
    (run to the end or refused); ``accepted`` and ``refused`` pulse when a configuration is
    checked.
    """

    def __init__(self, params: EngineParams, *, multipliers: str = "dsp"):
        self._p = p = params
        self._multipliers = multipliers
        members = {
            "cfg": In(stream.Signature(config_layout(p))),
            "weights": In(stream.Signature(unsigned(p.weight_row_bits))),
            "qparams": In(stream.Signature(qparam_layout(p))),
            "input": In(stream.Signature(data.ArrayLayout(signed(p.bits), p.ic_lanes))),
            "output": Out(stream.Signature(signed(p.bits))),
            "busy": Out(1),
            "error": Out(4),
            "cycles": Out(32),
            "compute": Out(32),
            "runs": Out(16),
            "accepted": Out(1),
            "refused": Out(1),
        }
        if p.bypass:
            members["bypass"] = In(stream.Signature(signed(p.bits)))
        super().__init__(members)

    @property
    def params(self) -> EngineParams:
        return self._p

    def elaborate(self, platform):  # noqa: C901 - one sequencer, kept in one place
        m = Module()
        p = self._p
        IC, OC = p.ic_lanes, p.oc_lanes
        log_ic = (IC - 1).bit_length()
        in_words = _pow2(p.input_words)
        max_ch = max(p.max_squeeze, p.max_e1, p.max_e3)
        qdepth = p.qparam_depth

        # ---------------------------------------------------------------- configuration
        cfg = Signal(config_layout(p))
        h, w, cin, s, e1, e3 = cfg.h, cfg.w, cfg.cin, cfg.s, cfg.e1, cfg.e3
        wide = range(1 << 20)
        kc = Signal(range(p.input_words + 1))  # words per input pixel
        ks = Signal(range(p.squeeze_words + 1))  # words per squeeze pixel
        gs = Signal(range(ceil_div(p.max_squeeze, OC) + 1))  # output groups
        g1 = Signal(range(ceil_div(p.max_e1, OC) + 1))
        g3 = Signal(range(ceil_div(p.max_e3, OC) + 1))
        nws = Signal(wide)  # weight rows: squeeze, expand1x1, expand3x3
        nw1 = Signal(wide)
        nw3 = Signal(wide)
        nw = Signal(wide)
        nq = Signal(range(qdepth * 2 + 1))
        row_words = Signal(wide)  # squeeze buffer words per row
        sq_words = Signal(wide)  # squeeze buffer words the layer needs
        retain = Signal()  # whole-map addressing (retain, or reuse of a retained map)
        err = Signal(ConfigError)
        m.d.comb += self.error.eq(err)

        loaded = Signal()  # weights for (loaded_nw, loaded_nq) are in the buffers
        loaded_nw = Signal.like(nw)
        loaded_nq = Signal.like(nq)
        shift_bad = Signal()
        map_valid = Signal()  # a retained squeeze map of (map_h, map_w, map_s) exists
        map_h = Signal.like(h)
        map_w = Signal.like(w)
        map_s = Signal.like(s)

        # Serial arithmetic for the derived sizes (a few hundred cycles per run, no DSPs).
        acc = Signal(wide)
        cnt = Signal(wide)
        rem = Signal(signed(24))
        mul_add = Signal(wide)
        mul_n = Signal(range(max(p.max_h, ceil_div(max_ch, OC), p.squeeze_words) + 1))

        drained = Signal()  # nothing left in flight anywhere downstream of the sequencer
        # the run's end, registered (``drained`` is a wide AND); not from the last run's end
        finished = Signal()
        cycles = Signal(32)
        last_beat = Signal(32)
        running = Signal()
        in_run = Signal()  # the control FSM is in RUN (the sequencer's row schedule)
        draining = Signal()  # the sequencer waits for squeeze rows to reach the line buffer
        # cycles spent waiting on a stream (see the end), and their count at the last beat
        waited = Signal(32)
        last_wait = Signal(32)
        m.d.comb += self.busy.eq(running)
        with m.If(running):
            m.d.sync += cycles.eq(cycles + 1)

        # ---------------------------------------------------------------- memories
        m.submodules.wmem = wmem = ram(shape=unsigned(p.weight_row_bits), depth=p.weight_depth)
        m.submodules.qmem = qmem = ram(shape=qparam_layout(p), depth=qdepth)
        m.submodules.inbuf = inbuf = ram(shape=data.ArrayLayout(signed(p.bits), IC),
                                         depth=2 * in_words)
        m.submodules.lb = lb = LineBuffer(p)
        w_wr, w_rd = wmem.write_port(), RegisteredRead(m, wmem, "w_rd")
        q_wr, q_rd = qmem.write_port(), RegisteredRead(m, qmem, "q_rd")
        in_wr, in_rd = inbuf.write_port(), RegisteredRead(m, inbuf, "in_rd")
        m.d.comb += [lb.rows.eq(h), lb.row_words.eq(row_words), lb.retain.eq(retain)]

        # ---------------------------------------------------------------- loader
        # The handshakes decide from registers only (``w_room``: rows still to come), and
        # the memory writes are registered: a stream's ready and valid cross the chip.
        w_count = Signal(range(p.weight_depth + 1))
        q_count = Signal(range(qdepth + 1))
        w_room = Signal()
        q_room = Signal()
        loading = Signal()
        w_take = self.weights.valid & self.weights.ready
        q_take = self.qparams.valid & self.qparams.ready
        m.d.comb += [self.weights.ready.eq(loading & w_room),
                     self.qparams.ready.eq(loading & q_room)]
        m.d.sync += [
            w_wr.addr.eq(w_count), w_wr.data.eq(self.weights.payload), w_wr.en.eq(w_take),
            q_wr.addr.eq(q_count), q_wr.data.eq(self.qparams.payload), q_wr.en.eq(q_take),
        ]
        with m.If(w_take):
            m.d.sync += [w_count.eq(w_count + 1), w_room.eq(w_count + 1 != nw)]
        with m.If(q_take):
            m.d.sync += [q_count.eq(q_count + 1), q_room.eq(q_count + 1 != nq)]
        with m.If(q_wr.en & (q_wr.data.shift == 0)):
            m.d.sync += shift_bad.eq(1)

        # ---------------------------------------------------------------- input buffer
        def slot_addr(slot, word):
            if in_words == 1:
                return slot
            return Cat(word[:(in_words - 1).bit_length()], slot)

        in_full = Signal(2)
        in_slot_w = Signal()
        in_word_w = Signal(range(p.input_words + 1))
        in_col = Signal(range(p.max_w + 1))
        in_row = Signal(range(p.max_h + 1))
        in_active = Signal()  # this run streams an input
        in_hold = Signal(2)  # released in the last two cycles: its reads are still in flight
        in_more = Signal()  # in_row < h, kept as a register
        can_load = (in_active & in_more & ~in_full.bit_select(in_slot_w, 1)
                    & ~in_hold.bit_select(in_slot_w, 1))
        in_take = self.input.valid & can_load
        m.d.comb += self.input.ready.eq(can_load)
        # the write is registered; the sequencer reads a slot at least two cycles after
        # it fills
        m.d.sync += [in_wr.addr.eq(slot_addr(in_slot_w, in_word_w)),
                     in_wr.data.eq(self.input.payload), in_wr.en.eq(in_take)]
        in_set = Signal(2)
        in_clear = Signal(2)  # the sequencer issued the last read of this slot's pixel
        m.d.sync += in_full.eq((in_full | in_set) & ~in_clear)
        with m.If(in_take):
            with m.If(in_word_w + 1 == kc):
                m.d.sync += [in_word_w.eq(0), in_slot_w.eq(~in_slot_w)]
                m.d.comb += in_set.eq(Mux(in_slot_w, 0b10, 0b01))
                with m.If(in_col + 1 == w):
                    m.d.sync += [in_col.eq(0), in_row.eq(in_row + 1),
                                 in_more.eq(in_row + 1 != h)]
                with m.Else():
                    m.d.sync += in_col.eq(in_col + 1)
            with m.Else():
                m.d.sync += in_word_w.eq(in_word_w + 1)

        # ---------------------------------------------------------------- sequencer state
        seq_go = Signal()  # pulse: start issuing the row schedule
        seq_done = Signal()
        t = Signal(range(p.max_h + 2))  # row step: squeeze row t, then expand row t - 1
        phase = Signal(Kind)
        x = Signal(range(p.max_w + 1))
        g = Signal(range(max(ceil_div(max_ch, OC), 1) + 1))
        chan = Signal(range(max_ch + OC + 1))  # g * OC
        tap_y = Signal(range(3))
        tap_x = Signal(range(3))
        k = Signal(range(max(p.input_words, p.squeeze_words) + 1))
        wrow = Signal(range(p.weight_depth + 1))
        xoff = Signal(range(p.squeeze_depth + 1))  # x * ks
        in_slot_r = Signal()
        ey = Signal(range(p.max_h + 1))  # the row being expanded: t - 1
        sq_pending = Signal(range(4 * GROUP_FIFO_DEPTH + 64))
        emit_credit = Signal(range(GROUP_FIFO_DEPTH + 1))
        issuing = Signal()

        # ---------------------------------------------------------------- control FSM
        bypass_on = cfg.bypass if p.bypass else Const(0)
        with m.FSM(name="ctl"):
            with m.State("IDLE"):
                m.d.comb += self.cfg.ready.eq(1)
                with m.If(self.cfg.valid):
                    m.d.sync += [cfg.eq(self.cfg.payload), running.eq(1), cycles.eq(1),
                                 last_beat.eq(0), last_wait.eq(0), err.eq(ConfigError.OK)]
                    m.next = "SIZES"
            with m.State("SIZES"):
                m.d.sync += [
                    kc.eq((cin + IC - 1) >> log_ic), ks.eq((s + IC - 1) >> log_ic),
                    retain.eq(cfg.retain | ~cfg.squeeze),
                    rem.eq(s), acc.eq(0), cnt.eq(0),
                ]
                m.next = "DIV_S"
            # ceil(n / OC) by repeated subtraction
            for name, src_next, dst, nxt in (("DIV_S", e1, gs, "DIV_1"),
                                             ("DIV_1", e3, g1, "DIV_3"),
                                             ("DIV_3", None, g3, "MUL_S")):
                with m.State(name):
                    with m.If(rem > 0):
                        m.d.sync += [rem.eq(rem - OC), acc.eq(acc + 1)]
                    with m.Else():
                        m.d.sync += [dst.eq(acc), acc.eq(0)]
                        if src_next is not None:
                            m.d.sync += rem.eq(src_next)
                        else:
                            m.d.sync += [mul_add.eq(kc), mul_n.eq(gs)]
                        m.next = nxt
            # products by repeated addition of ``mul_add``, ``mul_n`` times; each state loads
            # the next one's operands into registers, so that no adder or compare follows a
            # multiplexer: (state, destination, next state's operands, next state)
            rows_needed = Mux(retain, h, Mux(h < 3, h, 3))
            mul_steps = [("MUL_S", nws, (ks, g1), [], "MUL_1"),
                         ("MUL_1", nw1, ((ks << 3) + ks, g3),
                          [nw.eq(Mux(cfg.squeeze, nws, 0) + acc)], "MUL_3"),
                         ("MUL_3", nw3, (w, ks), [nw.eq(nw + acc)], "MUL_R"),
                         ("MUL_R", row_words, (acc, rows_needed), [], "MUL_M"),
                         ("MUL_M", sq_words, None, [nq.eq(s + e1 + e3)], "CHECK")]
            for name, dst, operands, extra, nxt in mul_steps:
                with m.State(name):
                    with m.If(cnt != mul_n):
                        m.d.sync += [acc.eq(acc + mul_add), cnt.eq(cnt + 1)]
                    with m.Else():
                        m.d.sync += [dst.eq(acc), acc.eq(0), cnt.eq(0), *extra]
                        if operands is not None:
                            m.d.sync += [mul_add.eq(operands[0]), mul_n.eq(operands[1])]
                        m.next = nxt
            with m.State("CHECK"):
                # the checks are registered here and acted on in DECIDE: one cycle more,
                # and ``accepted`` no longer hangs off a chain of compares
                checks = [
                    ((h == 0) | (h > p.max_h), ConfigError.H),
                    ((w == 0) | (w > p.max_w), ConfigError.W),
                    ((cin == 0) | (cin > p.max_cin), ConfigError.CIN),
                    ((s == 0) | (s > p.max_squeeze), ConfigError.SQUEEZE),
                    (e1 > p.max_e1, ConfigError.E1),
                    (e3 > p.max_e3, ConfigError.E3),
                    ((e1 + e3) == 0, ConfigError.E1),
                    (nw > p.weight_depth, ConfigError.WEIGHT_ROWS),
                    (cfg.compute & (sq_words > p.squeeze_depth), ConfigError.SQUEEZE_BUFFER),
                    (cfg.bypass & Const(not p.bypass), ConfigError.BYPASS),
                    (bypass_on & (cfg.byp_shift == 0), ConfigError.SHIFT),
                    (cfg.compute & ~cfg.squeeze & (~map_valid | (map_h != h) | (map_w != w)
                                                   | (map_s != s)), ConfigError.NO_SQUEEZE_MAP),
                    (cfg.compute & ~cfg.load & (~loaded | (loaded_nw != nw)
                                                | (loaded_nq != nq)), ConfigError.NOT_LOADED),
                ]
                failed = Signal(len(checks))  # one bit per check that failed
                m.d.sync += failed.eq(Cat(cond for cond, _ in checks))
                m.next = "DECIDE"
            with m.State("DECIDE"):
                with m.If(failed[0]):
                    m.d.sync += err.eq(checks[0][1])
                    m.next = "REFUSE"
                for bit, (_, code) in enumerate(checks[1:], start=1):
                    with m.Elif(failed[bit]):
                        m.d.sync += err.eq(code)
                        m.next = "REFUSE"
                with m.Elif(cfg.load):
                    m.d.comb += self.accepted.eq(1)
                    m.d.sync += [w_count.eq(0), q_count.eq(0), w_room.eq(nw != 0),
                                 q_room.eq(nq != 0), shift_bad.eq(0), loaded.eq(0)]
                    m.next = "LOAD"
                with m.Elif(cfg.compute):
                    m.d.comb += self.accepted.eq(1)
                    m.next = "START"
                with m.Else():
                    m.d.comb += self.accepted.eq(1)
                    m.next = "FINISH"
            with m.State("REFUSE"):
                m.d.comb += self.refused.eq(1)
                m.d.sync += [running.eq(0), self.runs.eq(self.runs + 1), self.cycles.eq(0),
                             self.compute.eq(0)]
                m.next = "IDLE"
            with m.State("LOAD"):
                m.d.comb += loading.eq(1)
                # everything taken, and the last writes (and their shift check) landed
                with m.If(~w_room & ~q_room & ~w_wr.en & ~q_wr.en):
                    with m.If(shift_bad):
                        m.d.sync += err.eq(ConfigError.SHIFT)
                        m.next = "REFUSE"
                    with m.Else():
                        m.d.sync += [loaded.eq(1), loaded_nw.eq(nw), loaded_nq.eq(nq)]
                        with m.If(cfg.compute):
                            m.next = "START"
                        with m.Else():
                            m.next = "FINISH"
            with m.State("START"):
                m.d.comb += lb.init.eq(1)
                m.d.sync += [in_full.eq(0), in_slot_w.eq(0), in_word_w.eq(0), in_col.eq(0),
                             in_row.eq(0), in_more.eq(1), in_active.eq(cfg.squeeze)]
                with m.If(cfg.squeeze):
                    m.d.sync += [map_valid.eq(retain), map_h.eq(h), map_w.eq(w),
                                 map_s.eq(s)]
                m.next = "INIT"
            with m.State("INIT"):
                with m.If(~lb.busy):
                    m.d.comb += seq_go.eq(1)
                    m.next = "RUN"
            with m.State("RUN"):
                m.d.comb += in_run.eq(1)
                with m.If(finished):
                    m.d.sync += in_active.eq(0)
                    m.next = "FINISH"
            with m.State("FINISH"):
                m.d.sync += [running.eq(0), self.runs.eq(self.runs + 1),
                             self.cycles.eq(Mux(last_beat != 0, last_beat, cycles)),
                             self.compute.eq(Mux(last_beat != 0, last_beat - last_wait,
                                                 cycles - waited))]
                m.next = "IDLE"

        # ---------------------------------------------------------------- sequencer
        # loop limits minus one, set at configuration, so the "last" compares need no adder
        kc_m1, ks_m1 = Signal.like(kc), Signal.like(ks)
        gs_m1, g1_m1, g3_m1 = Signal.like(gs), Signal.like(g1), Signal.like(g3)
        w_m1, h_m1 = Signal.like(w), Signal.like(h)
        m.d.sync += [kc_m1.eq(kc - 1), ks_m1.eq(ks - 1), gs_m1.eq(gs - 1), g1_m1.eq(g1 - 1),
                     g3_m1.eq(g3 - 1), w_m1.eq(w - 1), h_m1.eq(h - 1)]
        k_last = k == Mux(phase == Kind.SQUEEZE, kc_m1, ks_m1)
        tap_last = (phase != Kind.EXPAND3) | ((tap_y == 2) & (tap_x == 2))
        g_last = g == Mux(phase == Kind.SQUEEZE, gs_m1, Mux(phase == Kind.EXPAND1, g1_m1, g3_m1))
        group_last = k_last & tap_last
        pixel_last = group_last & g_last & ((phase != Kind.EXPAND1) | (g3 == 0))
        x_last = x == w_m1
        pixel_start = (g == 0) & (k == 0) & (tap_y == 0) & (tap_x == 0)
        need_input = (phase == Kind.SQUEEZE) & pixel_start
        input_ok = ~need_input | in_full.bit_select(in_slot_r, 1)
        credit_ok = ~group_last | (emit_credit != 0)
        step_active = Signal()  # issuing squeeze or expand of the current row step
        m.d.comb += issuing.eq(step_active & input_ok & credit_ok)

        # the op being issued this cycle
        op_row = Signal(range(p.max_h + 1))
        op_word = Signal(range(p.squeeze_depth + 1))
        op_pad = Signal()
        row_edge_top = ey == 0
        row_edge_bot = ey == h_m1
        col_left = x == 0
        col_right = x_last
        with m.If(phase == Kind.EXPAND3):
            m.d.comb += [
                op_pad.eq(((tap_y == 0) & row_edge_top) | ((tap_y == 2) & row_edge_bot)
                          | ((tap_x == 0) & col_left) | ((tap_x == 2) & col_right)),
                op_row.eq(Mux(op_pad, ey, ey + tap_y - 1)),
                op_word.eq(Mux(tap_x == 0, xoff - ks, Mux(tap_x == 1, xoff, xoff + ks)) + k),
            ]
        with m.Elif(phase == Kind.EXPAND1):
            m.d.comb += [op_row.eq(ey), op_word.eq(xoff + k)]

        # Row-step scheduling.
        with m.FSM(name="seq"):
            with m.State("IDLE"):
                with m.If(seq_go):
                    m.d.sync += [t.eq(0), seq_done.eq(0), in_slot_r.eq(0), sq_pending.eq(0)]
                    m.next = "STEP"
            with m.State("STEP"):
                # squeeze row t (if any), then expand row t - 1 (if any)
                m.d.sync += [x.eq(0), g.eq(0), chan.eq(0), k.eq(0), tap_y.eq(0),
                             tap_x.eq(0), xoff.eq(0), ey.eq(t - 1)]
                with m.If(t > h):
                    m.d.sync += seq_done.eq(1)
                    m.next = "IDLE"
                with m.Elif(cfg.squeeze & (t < h)):
                    m.d.sync += [phase.eq(Kind.SQUEEZE), wrow.eq(0)]
                    m.next = "ISSUE"
                with m.Elif(t > 0):
                    m.next = "DRAIN"
                with m.Else():
                    m.d.sync += t.eq(t + 1)
            with m.State("DRAIN"):
                # the expand reads the squeeze rows just written: wait for the requantizer
                m.d.comb += draining.eq(sq_pending != 0)
                with m.If(sq_pending == 0):
                    m.d.sync += [phase.eq(Mux(g1 != 0, Kind.EXPAND1, Kind.EXPAND3)),
                                 wrow.eq(Mux(cfg.squeeze, nws, 0)), x.eq(0), g.eq(0),
                                 chan.eq(0), k.eq(0), xoff.eq(0)]
                    m.next = "ISSUE"
            with m.State("ISSUE"):
                m.d.comb += step_active.eq(1)
                with m.If(issuing):
                    m.d.sync += wrow.eq(wrow + 1)
                    with m.If(~k_last):
                        m.d.sync += k.eq(k + 1)
                    with m.Else():
                        m.d.sync += k.eq(0)
                        with m.If(~tap_last):
                            with m.If(tap_x == 2):
                                m.d.sync += [tap_x.eq(0), tap_y.eq(tap_y + 1)]
                            with m.Else():
                                m.d.sync += tap_x.eq(tap_x + 1)
                        with m.Else():
                            m.d.sync += [tap_x.eq(0), tap_y.eq(0)]
                            with m.If(~g_last):
                                m.d.sync += [g.eq(g + 1), chan.eq(chan + OC)]
                            with m.Elif((phase == Kind.EXPAND1) & (g3 != 0)):
                                m.d.sync += [g.eq(0), chan.eq(0), phase.eq(Kind.EXPAND3)]
                            with m.Else():
                                # pixel done
                                m.d.sync += [g.eq(0), chan.eq(0)]
                                with m.If(phase == Kind.SQUEEZE):
                                    m.d.sync += [wrow.eq(0), in_slot_r.eq(~in_slot_r)]
                                with m.Else():
                                    m.d.sync += [wrow.eq(Mux(cfg.squeeze, nws, 0)),
                                                 phase.eq(Mux(g1 != 0, Kind.EXPAND1,
                                                              Kind.EXPAND3))]
                                with m.If(~x_last):
                                    m.d.sync += [x.eq(x + 1), xoff.eq(xoff + ks)]
                                with m.Else():
                                    m.d.sync += [x.eq(0), xoff.eq(0)]
                                    with m.If((phase == Kind.SQUEEZE) & (t > 0)):
                                        m.next = "DRAIN"
                                    with m.Else():
                                        m.d.sync += t.eq(t + 1)
                                        m.next = "STEP"

        # Release an input slot with its pixel's last issue; the loader may overwrite it two
        # cycles later, once that read has left the memory.
        with m.If(issuing & (phase == Kind.SQUEEZE) & pixel_last):
            m.d.comb += in_clear.eq(Mux(in_slot_r, 0b10, 0b01))
        rel1 = Signal(2)
        rel2 = Signal(2)
        m.d.sync += [rel1.eq(in_clear), rel2.eq(rel1)]
        m.d.comb += in_hold.eq(rel1 | rel2)

        # ---------------------------------------------------------------- operand fetch
        tag_layout = data.StructLayout({
            "kind": Kind, "chan": unsigned(len(chan)),
            "count": range(OC + 1), "row": unsigned(len(op_row)),
            "xoff": unsigned(len(xoff)),
        })
        op = Signal(data.StructLayout({
            "valid": 1, "first": 1, "last": 1, "pad": 1, "squeeze": 1,
            "w_addr": unsigned(len(wrow)), "in_addr": unsigned(len(in_rd.addr)),
            "row": unsigned(len(op_row)), "word": unsigned(len(op_word)),
            "tag": tag_layout,
        }))
        # channels left in this phase: registered with op, clipped to a group with op2 (the
        # subtraction and the compare in one cycle were the ECP5's longest path)
        left = Signal(range(max(p.max_squeeze, p.max_e1, p.max_e3) + 1))
        m.d.sync += left.eq(Mux(phase == Kind.SQUEEZE, s, Mux(phase == Kind.EXPAND1, e1, e3))
                            - chan)
        m.d.sync += [
            op.valid.eq(issuing),
            op.first.eq((k == 0) & (tap_y == 0) & (tap_x == 0)),
            op.last.eq(group_last),
            op.pad.eq(op_pad),
            op.squeeze.eq(phase == Kind.SQUEEZE),
            op.w_addr.eq(wrow),
            op.in_addr.eq(slot_addr(in_slot_r, k)),
            op.row.eq(op_row), op.word.eq(op_word),
            op.tag.kind.eq(phase),
            op.tag.chan.eq(chan),
            op.tag.row.eq(Mux(phase == Kind.SQUEEZE, t, ey)),
            op.tag.xoff.eq(xoff),
        ]
        # line buffer: its own address register and read register; weights and input
        # buffer: one more register, so that all operands arrive together at op3
        m.d.comb += [lb.r_row.eq(op.row), lb.r_word.eq(op.word)]
        m.d.sync += [w_rd.addr.eq(op.w_addr), in_rd.addr.eq(op.in_addr)]
        # Block-RAM outputs go straight into registers, logic only after them: an ECP5 EBR
        # takes ~6 ns from clock to output. The line buffer's word (read_latency after op,
        # then registered) and the weights and input word (address registered after op, read,
        # registered twice) meet at op5.
        op2, op3, op4, op5 = (Signal.like(op, name=f"op{i}") for i in range(2, 6))
        m.d.sync += [op2.eq(op), op2.tag.count.eq(Mux(left > OC, OC, left)),
                     op3.eq(op2), op4.eq(op3), op5.eq(op4)]
        # operand data: no reset (``op5.valid`` says when it counts)
        in_q = Signal.like(in_rd.data, reset_less=True)
        in_q2 = Signal.like(in_rd.data, reset_less=True)
        lb_q = Signal.like(lb.r_data, reset_less=True)
        w_q = Signal.like(w_rd.data, reset_less=True)
        weights = Signal.like(w_rd.data, reset_less=True)
        m.d.sync += [in_q.eq(in_rd.data), in_q2.eq(in_q), lb_q.eq(lb.r_data),
                     w_q.eq(w_rd.data), weights.eq(w_q)]
        act = Mux(op5.squeeze, in_q2, lb_q)
        assert LineBuffer.read_latency == 3

        m.submodules.array = array = MacArray(p, tag_bits=tag_layout.size,
                                              multipliers=self._multipliers)
        ai = array.i.payload
        m.d.comb += [
            array.i.valid.eq(op5.valid),
            ai.act.eq(act),
            ai.weights.eq(weights),
            ai.z.eq(Mux(op5.squeeze, cfg.z_in, cfg.z_sq)),
            ai.pad.eq(op5.pad),
            ai.first.eq(op5.first),
            ai.last.eq(op5.last),
            ai.tag.eq(op5.tag),
        ]

        # ---------------------------------------------------------------- group FIFO
        entry = data.StructLayout({"acc": data.ArrayLayout(signed(p.acc_bits), OC),
                                   "tag": tag_layout})
        m.submodules.groups = groups = fifo.SyncFIFO(width=entry.size,
                                                     depth=GROUP_FIFO_DEPTH)
        m.d.comb += [groups.w_en.eq(array.o.valid),
                     groups.w_data.eq(Cat(array.o.payload.acc, array.o.payload.tag))]
        head = data.View(entry, groups.r_data)

        # Credits: a group's last beat reserves a FIFO slot; popping returns it. Every credit
        # counter here returns credits a cycle late (registered), which is safe and keeps the
        # return's logic off the counter's path.
        pop = Signal()
        pop_r = Signal()
        m.d.sync += pop_r.eq(pop)
        with m.If(seq_go):
            m.d.sync += emit_credit.eq(GROUP_FIFO_DEPTH)
        with m.Else():
            take = issuing & group_last
            m.d.sync += emit_credit.eq(emit_credit - take + pop_r)
        # squeeze groups not yet written to the line buffer
        sq_issue = issuing & group_last & (phase == Kind.SQUEEZE)
        sq_written = Signal()
        with m.If(~seq_go):
            m.d.sync += sq_pending.eq(sq_pending + sq_issue - sq_written)

        # ---------------------------------------------------------------- requantizer
        rq_tag = data.StructLayout({"squeeze": 1, "group_end": 1, "row": unsigned(len(op_row)),
                                    "word": unsigned(len(xoff)), "lane": range(IC)})
        m.submodules.rq = rq = Requantizer(p.spec, p.acc_bits, tag_bits=rq_tag.size,
                                           multipliers=self._multipliers)
        out_credit = Signal(range(OUTPUT_FIFO_DEPTH + 1))
        lane = Signal(range(OC + 1))
        is_sq = head.tag.kind == Kind.SQUEEZE
        can_rq = groups.r_rdy & (is_sq | (out_credit != 0))
        lane_last = lane + 1 >= head.tag.count
        m.d.comb += [pop.eq(can_rq & lane_last), groups.r_en.eq(pop)]
        with m.If(can_rq):
            m.d.sync += lane.eq(Mux(lane_last, 0, lane + 1))
        qbase = Mux(is_sq, 0, Mux(head.tag.kind == Kind.EXPAND1, s, s + e1))
        channel = head.tag.chan + lane
        # The request is registered, then its address reads the parameter memory, whose
        # output is registered once more (EBR outputs feed only registers).
        r_valid = Signal()
        r_qaddr = Signal.like(q_rd.addr)
        r_acc = Signal(signed(p.acc_bits))
        r_tag = Signal(rq_tag)
        r_sq = Signal()
        r_kind = Signal(Kind)
        m.d.sync += [
            r_valid.eq(can_rq), r_sq.eq(is_sq), r_qaddr.eq(qbase + channel),
            r_kind.eq(head.tag.kind),
            r_acc.eq(head.acc[lane] if OC > 1 else head.acc[0]),
            r_tag.squeeze.eq(is_sq), r_tag.group_end.eq(lane_last),
            r_tag.row.eq(head.tag.row),
            r_tag.word.eq(head.tag.xoff + (channel >> log_ic)),
            r_tag.lane.eq(channel[:log_ic] if log_ic else 0),
        ]
        m.d.comb += q_rd.addr.eq(r_qaddr)
        r2_valid = Signal()
        r2_acc = Signal.like(r_acc)
        r2_tag = Signal.like(r_tag)
        r2_sq = Signal()
        r2_kind = Signal(Kind)
        m.d.sync += [r2_valid.eq(r_valid), r2_acc.eq(r_acc), r2_tag.eq(r_tag), r2_sq.eq(r_sq),
                     r2_kind.eq(r_kind)]
        q_valid = Signal()
        q_data = Signal.like(q_rd.data)
        q_acc = Signal.like(r_acc)
        q_tag = Signal.like(r_tag)
        q_sq = Signal()
        q_kind = Signal(Kind)
        m.d.sync += [q_valid.eq(r2_valid), q_data.eq(q_rd.data), q_acc.eq(r2_acc),
                     q_tag.eq(r2_tag), q_sq.eq(r2_sq), q_kind.eq(r2_kind)]
        ri = rq.i.payload
        m.d.comb += [
            rq.i.valid.eq(q_valid),
            ri.acc.eq(q_acc), ri.bias.eq(q_data.bias), ri.mult.eq(q_data.mult),
            ri.shift.eq(q_data.shift), ri.z.eq(Mux(q_sq, cfg.z_sq, cfg.z_out)),
            ri.relu.eq(1), ri.tag.eq(q_tag),
            ri.hi.eq(Mux(q_kind == Kind.SQUEEZE, p.spec.act_max,
                         Mux(q_kind == Kind.EXPAND1, cfg.e1_max, cfg.e3_max))),
        ]
        rq_in_flight = Signal(range(rq.latency + 4))
        m.d.sync += rq_in_flight.eq(rq_in_flight + q_valid - rq.o.valid)
        out_tag = data.View(rq_tag, rq.o.payload.tag)
        m.d.comb += [
            lb.w_en.eq(rq.o.valid & out_tag.squeeze),
            lb.w_row.eq(out_tag.row), lb.w_word.eq(out_tag.word), lb.w_lane.eq(out_tag.lane),
            lb.w_data.eq(rq.o.payload.y),
        ]
        # count a squeeze group as written once its last lane's write has landed
        m.d.sync += sq_written.eq(rq.o.valid & out_tag.squeeze & out_tag.group_end)

        # ---------------------------------------------------------------- output path
        m.submodules.fire_out = fire_out = fifo.SyncFIFO(width=p.bits,
                                                         depth=OUTPUT_FIFO_DEPTH)
        m.d.comb += [fire_out.w_en.eq(rq.o.valid & ~out_tag.squeeze),
                     fire_out.w_data.eq(rq.o.payload.y)]
        issue_ex = can_rq & ~is_sq
        joined_r = Signal()
        m.d.sync += joined_r.eq(fire_out.r_en)
        with m.If(seq_go):
            m.d.sync += out_credit.eq(OUTPUT_FIFO_DEPTH)
        with m.Else():
            m.d.sync += out_credit.eq(out_credit - issue_ex + joined_r)

        m.submodules.final = final = fifo.SyncFIFO(width=p.bits, depth=OUTPUT_FIFO_DEPTH)
        final_credit = Signal(range(OUTPUT_FIFO_DEPTH + 1))
        join_in_flight = Signal(range(64))
        if p.bypass:
            m.submodules.byp = byp = BypassAdder(p.spec, multipliers=self._multipliers)
            join_latency = byp.latency
            byp_ready = ~bypass_on | self.bypass.valid
        else:
            join_latency = 1
            byp_ready = Const(1)
        join = fire_out.r_rdy & byp_ready & (final_credit != 0)
        m.d.comb += fire_out.r_en.eq(join)
        if p.bypass:
            m.d.comb += [
                self.bypass.ready.eq(join & bypass_on),
                byp.i.valid.eq(join), byp.i.payload.a.eq(fire_out.r_data),
                byp.i.payload.b.eq(self.bypass.payload),
                byp.z_a.eq(cfg.z_out), byp.z_b.eq(cfg.byp_z_in), byp.z_out.eq(cfg.byp_z_out),
                byp.mult_a.eq(cfg.byp_mult_a), byp.mult_b.eq(cfg.byp_mult_b),
                byp.shift.eq(cfg.byp_shift),
            ]
        plain = delay(m, fire_out.r_data.as_signed(), join_latency, "plain", reset_less=True)
        join_valid = delay(m, join, join_latency, "join")
        joined = Mux(bypass_on, byp.o.payload.y, plain) if p.bypass else plain
        m.d.comb += [final.w_en.eq(join_valid), final.w_data.eq(joined)]
        m.d.sync += join_in_flight.eq(join_in_flight + join - join_valid)
        m.d.comb += [self.output.valid.eq(final.r_rdy), self.output.payload.eq(final.r_data),
                     final.r_en.eq(self.output.ready)]
        out_beat = final.r_rdy & self.output.ready
        out_beat_r = Signal()
        m.d.sync += out_beat_r.eq(out_beat)
        with m.If(seq_go):
            m.d.sync += final_credit.eq(OUTPUT_FIFO_DEPTH)
        with m.Else():
            m.d.sync += final_credit.eq(final_credit - join + out_beat_r)
        with m.If(out_beat):
            m.d.sync += last_beat.eq(cycles)

        # ---------------------------------------------------------------- compute cycles
        # ``compute`` is the run's cycles less those the engine spent held up by a stream
        # outside it, so that it is the engine's own figure whatever feeds it (a UART, the
        # simulated board, a full-rate harness). Held up means: the sequencer needs the next
        # input pixel and it has not arrived; loading waits for weight or parameter rows; or
        # the sequencer is not issuing while the output side is congested (the bypass stream
        # is missing, or a FIFO after the requantizer is more than half full; their credit
        # counters would not do: at full rate the requantizer's pipeline holds half of
        # them). At full rate those FIFOs drain a value a cycle and never fill, so the
        # sequencer's own stalls
        # (row steps, waiting for squeeze rows, credits) count as compute there and here;
        # once the output is throttled they are the output's doing. The MAC array issues
        # the same operations either way, so compute never falls below its issue cycles.
        half = OUTPUT_FIFO_DEPTH // 2
        congested = (fire_out.r_level > half) | (final.r_level > half)
        if p.bypass:
            congested = congested | (fire_out.r_rdy & bypass_on & ~self.bypass.valid)
        # Under congestion the requantizer runs at the output's pace, so whether a credit
        # stall would also happen at full rate cannot be seen in the real FIFO: a shadow of
        # the full-rate requantizer tells it, the channels it would still owe, paying one
        # every cycle that counts as compute. A stall where it owes a full FIFO's worth is
        # the engine's own (the requantizer is its bottleneck there), and counts.
        v_owed = Signal(range((GROUP_FIFO_DEPTH + 2) * OC + 1))
        wait_r = Signal()  # registered: off the handshakes' paths
        with m.If(seq_go):
            m.d.sync += v_owed.eq(0)
        with m.Else():
            m.d.sync += v_owed.eq(v_owed + Mux(op3.valid & op3.last, op3.tag.count, 0)
                                  - ((v_owed != 0) & ~wait_r))
        own_stall = (step_active & input_ok & ~credit_ok
                     & (v_owed > (GROUP_FIFO_DEPTH - 3) * OC))
        wait = Signal()
        m.d.comb += wait.eq(running & (
            (step_active & ~input_ok)
            | (loading & (w_room | q_room) & ~w_take & ~q_take)
            | (in_run & ~issuing & congested & ~own_stall)))
        m.d.sync += wait_r.eq(wait)
        with m.If(self.cfg.valid & self.cfg.ready):
            m.d.sync += waited.eq(0)
        with m.Elif(wait_r):
            m.d.sync += waited.eq(waited + 1)
        with m.If(out_beat):
            m.d.sync += last_wait.eq(waited + wait_r)

        m.d.comb += drained.eq((emit_credit == GROUP_FIFO_DEPTH) & (rq_in_flight == 0)
                               & ~r_valid & ~r2_valid & ~q_valid
                               & (out_credit == OUTPUT_FIFO_DEPTH)
                               & (join_in_flight == 0) & (final_credit == OUTPUT_FIFO_DEPTH)
                               & (sq_pending == 0))
        m.d.sync += finished.eq(seq_done & drained & ~seq_go)
        return m
