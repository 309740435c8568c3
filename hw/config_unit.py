"""The configuration unit: takes a layer's configuration, derives its sizes, checks it, and
then runs the run's control.

One FSM, because every step follows the previous one::

    IDLE ─cfg─> SIZES ─> DIV_S, DIV_1, DIV_3 ─> MUL_S, MUL_1, MUL_3, MUL_R, MUL_M ─> CHECK
         ─> DECIDE ─> REFUSE ─> IDLE                        (error set; the engine stays ready)
                   ─> [LOAD] ─> [START ─> INIT ─> RUN] ─> FINISH ─> IDLE

The derived sizes come from serial arithmetic, a few hundred cycles a run and no multipliers:
``ceil(n / oc_lanes)`` by repeated subtraction, the products by repeated addition, each
state loading the next one's operands into registers so that no adder or compare follows a
multiplexer. The checks are registered in CHECK and acted on in DECIDE, so that ``accepted``
does not hang off a chain of compares. LOAD lets the weight buffers take the run's rows;
START has the line buffer build its row table and the input buffer empty its slots; INIT
waits for the table, then ``go`` starts the sequencer; RUN lasts until everything issued has
left the engine (``seq_done`` and ``drained``, registered: ``drained`` is a wide AND).

A convolution run (``conv``) is checked as the squeeze alone: ``CONV`` refuses expands, a
bypass, a rescale or ``squeeze=0``; neither ``NO_OUTPUT`` nor the squeeze buffer applies.

The unit also remembers what the buffers hold across runs (the loaded weights' shape, the
retained squeeze map's shape), which a compute-only or a reuse run is checked against.
"""

from __future__ import annotations

from types import SimpleNamespace

from amaranth import Cat, Const, Module, Mux, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from spec.params import ConfigError, EngineParams, ceil_div, config_fields

from .layouts import config_layout, sizes_layout


def _most(sig) -> int:
    """The largest value an unsigned register can hold."""
    return (1 << len(sig)) - 1


class ConfigUnit(wiring.Component):
    """Configuration checks and run control of the Fire engine (see the module docstring).

    Ports
    -----
    cfg : In(stream of config_layout)
        A layer configuration; taken only in IDLE.
    layer : Out(config_layout)
        The configuration taken last (a register).
    sizes : Out(sizes_layout)
        Its derived sizes; meaningful once it is accepted.
    error : Out(ConfigError)
        Why the last configuration was refused (``OK`` when it was accepted).
    taken, accepted, refused, done : Out(1)
        Pulses: a configuration was taken; it passed the checks; it was refused (REFUSE); the
        run ended (FINISH).
    running : Out(1)
        From taking a configuration to its refusal or the end of its run.
    load_start, loading : Out(1)
        Pulse: the weight buffers start taking ``sizes.weight_rows`` and ``sizes.qparams``;
        then high while they may take them.
    load_done, shift_bad : In(1)
        The weight buffers have every row written; a parameter row had a shift of 0.
    prepare : Out(1)
        Pulse: build the line buffer's row table, empty the input slots.
    table_busy : In(1)
        The line buffer is building its row table.
    go, in_run, run_end : Out(1)
        Pulse: the sequencer starts; high while it runs; pulse: the run's last cycle in RUN.
    seq_done, drained : In(1)
        The sequencer issued its last operation; nothing is in flight after it.
    """

    def __init__(self, params: EngineParams):
        self._p = p = params
        super().__init__({
            "cfg": In(stream.Signature(config_layout(p))),
            "layer": Out(config_layout(p)),
            "sizes": Out(sizes_layout(p)),
            "error": Out(ConfigError),
            "taken": Out(1),
            "accepted": Out(1),
            "refused": Out(1),
            "done": Out(1),
            "running": Out(1),
            "load_start": Out(1),
            "loading": Out(1),
            "load_done": In(1),
            "shift_bad": In(1),
            "prepare": Out(1),
            "table_busy": In(1),
            "go": Out(1),
            "in_run": Out(1),
            "run_end": Out(1),
            "seq_done": In(1),
            "drained": In(1),
        })

    @property
    def params(self) -> EngineParams:
        return self._p

    def elaborate(self, platform):
        m = Module()
        v = self._registers()
        sizes = self.sizes
        m.d.comb += [
            sizes.input_words.eq(v.kc), sizes.squeeze_words.eq(v.ks),
            sizes.squeeze_groups.eq(v.gs), sizes.e1_groups.eq(v.g1),
            sizes.e3_groups.eq(v.g3), sizes.squeeze_rows.eq(v.nws),
            sizes.weight_rows.eq(v.nw), sizes.qparams.eq(v.nq),
            sizes.row_words.eq(v.row_words), sizes.retain.eq(v.retain),
        ]
        # the run's end, registered (``drained`` is a wide AND); not from the last run's end
        finished = Signal()
        m.d.sync += finished.eq(self.seq_done & self.drained & ~self.go)
        with m.FSM(name="ctl"):
            self._take(m, v)
            self._divisions(m, v)
            self._products(m, v)
            self._checks(m, v)
            self._run(m, v, finished)
        return m

    def _registers(self) -> SimpleNamespace:
        """The unit's registers. The loop limits (``kc`` ... ``g3``) are as wide as they are
        within the maxima; the sizes checked against a buffer are as wide as the largest
        product of those limits and the configuration's own fields, so that a layer beyond
        a buffer is seen to be, never wrapped into one that fits."""
        p = self._p
        oc = p.oc_lanes
        layer = self.layer
        field = {f.name: (1 << f.width) - 1 for f in config_fields(p)}  # what a word carries
        v = SimpleNamespace()
        v.kc = Signal(range(p.input_words + 1))  # words per input pixel
        v.ks = Signal(range(p.squeeze_words + 1))  # words per squeeze pixel
        v.gs = Signal(range(ceil_div(p.max_squeeze, oc) + 1))  # output groups
        v.g1 = Signal(range(ceil_div(p.max_e1, oc) + 1))
        v.g3 = Signal(range(ceil_div(p.max_e3, oc) + 1))
        # weight rows: squeeze, expand1x1, expand3x3 (nine taps), and the run's
        nws_most = _most(v.gs) * _most(v.kc)
        nw1_most = _most(v.g1) * _most(v.ks)
        nw3_most = _most(v.g3) * 9 * _most(v.ks)
        v.nws = Signal(range(nws_most + 1))
        v.nw1 = Signal(range(nw1_most + 1))
        v.nw3 = Signal(range(nw3_most + 1))
        v.nw = Signal(range(nws_most + nw1_most + nw3_most + 1))
        v.nq = Signal(range(field["s"] + field["e1"] + field["e3"] + 1))  # parameter rows
        row_most = field["w"] * _most(v.ks)
        v.row_words = Signal(range(row_most + 1))  # squeeze buffer words per row
        v.sq_words = Signal(range(field["h"] * row_most + 1))  # ... the layer needs
        v.retain = Signal()  # whole-map addressing (retain, or reuse of a retained map)

        v.loaded = Signal()  # weights for (loaded_nw, loaded_nq) are in the buffers
        v.loaded_nw = Signal.like(v.nw)
        v.loaded_nq = Signal.like(v.nq)
        v.map_valid = Signal()  # a retained squeeze map of (map_h, map_w, map_s) exists
        v.map_h = Signal.like(layer.h)
        v.map_w = Signal.like(layer.w)
        v.map_s = Signal.like(layer.s)

        # Serial arithmetic: ``acc`` counts quotients and sums products; ``mul_add`` and
        # ``mul_n`` are a product's operands (``mul_n`` the count), ``rem`` a dividend.
        quotient_most = max(ceil_div(field[n], oc) for n in ("s", "e1", "e3"))
        v.acc = Signal(range(max(quotient_most, nws_most, nw1_most, nw3_most,
                                 field["h"] * row_most) + 1))
        v.mul_add = Signal(range(max(_most(v.kc), 9 * _most(v.ks), field["w"], row_most) + 1))
        # rows_needed is at most h
        v.mul_n = Signal(range(max(_most(v.gs), _most(v.g1), _most(v.g3), _most(v.ks),
                                   field["h"]) + 1))
        v.cnt = Signal.like(v.mul_n)
        # it stops at the first value not above 0, at most oc - 1 below
        v.rem = Signal(range(1 - oc, max(field[n] for n in ("s", "e1", "e3")) + 1))
        return v

    def _take(self, m, v):
        p, layer = self._p, self.layer
        ic = p.ic_lanes
        log_ic = (ic - 1).bit_length()
        with m.State("IDLE"):
            m.d.comb += self.cfg.ready.eq(1)
            with m.If(self.cfg.valid):
                m.d.comb += self.taken.eq(1)
                m.d.sync += [layer.eq(self.cfg.payload), self.running.eq(1),
                             self.error.eq(ConfigError.OK)]
                m.next = "SIZES"
        with m.State("SIZES"):
            m.d.sync += [
                v.kc.eq((layer.cin + ic - 1) >> log_ic), v.ks.eq((layer.s + ic - 1) >> log_ic),
                v.retain.eq(layer.retain | ~layer.squeeze),
                v.rem.eq(layer.s), v.acc.eq(0), v.cnt.eq(0),
            ]
            m.next = "DIV_S"

    def _divisions(self, m, v):
        """``ceil(n / oc_lanes)`` of s, e1 and e3 by repeated subtraction."""
        oc, layer = self._p.oc_lanes, self.layer
        for name, src_next, dst, nxt in (("DIV_S", layer.e1, v.gs, "DIV_1"),
                                         ("DIV_1", layer.e3, v.g1, "DIV_3"),
                                         ("DIV_3", None, v.g3, "MUL_S")):
            with m.State(name):
                with m.If(v.rem > 0):
                    m.d.sync += [v.rem.eq(v.rem - oc), v.acc.eq(v.acc + 1)]
                with m.Else():
                    m.d.sync += [dst.eq(v.acc), v.acc.eq(0)]
                    if src_next is not None:
                        m.d.sync += v.rem.eq(src_next)
                    else:
                        m.d.sync += [v.mul_add.eq(v.kc), v.mul_n.eq(v.gs)]
                    m.next = nxt

    def _products(self, m, v):
        """Products by repeated addition of ``mul_add``, ``mul_n`` times; each state loads
        the next one's operands into registers, so that no adder or compare follows a
        multiplexer."""
        layer = self.layer
        h = layer.h
        # squeeze rows held: every row of a retained map, else a ring of three (hw.line_buffer)
        rows_needed = Mux(v.retain, h, Mux(h < 3, h, 3))
        # (state, destination, next state's operands, other updates, next state)
        steps = [("MUL_S", v.nws, (v.ks, v.g1), [], "MUL_1"),
                 ("MUL_1", v.nw1, ((v.ks << 3) + v.ks, v.g3),
                  [v.nw.eq(Mux(layer.squeeze, v.nws, 0) + v.acc)], "MUL_3"),
                 ("MUL_3", v.nw3, (layer.w, v.ks), [v.nw.eq(v.nw + v.acc)], "MUL_R"),
                 ("MUL_R", v.row_words, (v.acc, rows_needed), [], "MUL_M"),
                 ("MUL_M", v.sq_words, None, [v.nq.eq(layer.s + layer.e1 + layer.e3)],
                  "CHECK")]
        for name, dst, operands, extra, nxt in steps:
            with m.State(name):
                with m.If(v.cnt != v.mul_n):
                    m.d.sync += [v.acc.eq(v.acc + v.mul_add), v.cnt.eq(v.cnt + 1)]
                with m.Else():
                    m.d.sync += [dst.eq(v.acc), v.acc.eq(0), v.cnt.eq(0), *extra]
                    if operands is not None:
                        m.d.sync += [v.mul_add.eq(operands[0]), v.mul_n.eq(operands[1])]
                    m.next = nxt

    def _check_list(self, v) -> list:
        """``(refused when, error)`` in priority order."""
        p, layer = self._p, self.layer
        h, w, cin, s, e1, e3 = layer.h, layer.w, layer.cin, layer.s, layer.e1, layer.e3
        conv = layer.conv
        bypass_on = layer.bypass if p.bypass else Const(0)
        return [
            ((h == 0) | (h > p.max_h), ConfigError.H),
            ((w == 0) | (w > p.max_w), ConfigError.W),
            ((cin == 0) | (cin > p.max_cin), ConfigError.CIN),
            ((s == 0) | (s > p.max_squeeze), ConfigError.SQUEEZE),
            (e1 > p.max_e1, ConfigError.E1),
            (e3 > p.max_e3, ConfigError.E3),
            # a 1x1 convolution is the squeeze alone, its values to the output
            (conv & ((e1 != 0) | (e3 != 0) | layer.bypass | layer.rescale | ~layer.squeeze),
             ConfigError.CONV),
            (~conv & ((e1 + e3) == 0), ConfigError.NO_OUTPUT),
            (v.nw > p.weight_depth, ConfigError.WEIGHT_ROWS),
            # a convolution keeps no squeeze map: its pixels are h x w whatever the buffer
            (layer.compute & ~conv & (v.sq_words > p.squeeze_depth),
             ConfigError.SQUEEZE_BUFFER),
            (layer.bypass & Const(not p.bypass), ConfigError.BYPASS),
            ((bypass_on & (layer.byp_shift == 0))
             | (layer.rescale & ((layer.e1_rs_shift == 0) | (layer.e3_rs_shift == 0))),
             ConfigError.SHIFT),
            (layer.compute & ~layer.squeeze & (~v.map_valid | (v.map_h != h) | (v.map_w != w)
                                               | (v.map_s != s)), ConfigError.NO_SQUEEZE_MAP),
            (layer.compute & ~layer.load & (~v.loaded | (v.loaded_nw != v.nw)
                                            | (v.loaded_nq != v.nq)), ConfigError.NOT_LOADED),
        ]

    def _checks(self, m, v):
        layer = self.layer
        checks = self._check_list(v)
        failed = Signal(len(checks))  # one bit per check that failed
        with m.State("CHECK"):
            # registered here, acted on in DECIDE: one cycle more, and ``accepted`` no longer
            # hangs off a chain of compares
            m.d.sync += failed.eq(Cat(cond for cond, _ in checks))
            m.next = "DECIDE"
        with m.State("DECIDE"):
            with m.If(failed[0]):
                m.d.sync += self.error.eq(checks[0][1])
                m.next = "REFUSE"
            for bit, (_, code) in enumerate(checks[1:], start=1):
                with m.Elif(failed[bit]):
                    m.d.sync += self.error.eq(code)
                    m.next = "REFUSE"
            with m.Elif(layer.load):
                m.d.comb += [self.accepted.eq(1), self.load_start.eq(1)]
                m.d.sync += v.loaded.eq(0)
                m.next = "LOAD"
            with m.Elif(layer.compute):
                m.d.comb += self.accepted.eq(1)
                m.next = "START"
            with m.Else():
                m.d.comb += self.accepted.eq(1)
                m.next = "FINISH"
        with m.State("REFUSE"):
            m.d.comb += self.refused.eq(1)
            m.d.sync += self.running.eq(0)
            m.next = "IDLE"

    def _run(self, m, v, finished):
        layer = self.layer
        with m.State("LOAD"):
            m.d.comb += self.loading.eq(1)
            # everything taken, and the last writes (and their shift check) landed
            with m.If(self.load_done):
                with m.If(self.shift_bad):
                    m.d.sync += self.error.eq(ConfigError.SHIFT)
                    m.next = "REFUSE"
                with m.Else():
                    m.d.sync += [v.loaded.eq(1), v.loaded_nw.eq(v.nw), v.loaded_nq.eq(v.nq)]
                    with m.If(layer.compute):
                        m.next = "START"
                    with m.Else():
                        m.next = "FINISH"
        with m.State("START"):
            m.d.comb += self.prepare.eq(1)
            with m.If(layer.squeeze):
                # a convolution writes no squeeze map, but the row table is rebuilt
                m.d.sync += [v.map_valid.eq(v.retain & ~layer.conv), v.map_h.eq(layer.h),
                             v.map_w.eq(layer.w), v.map_s.eq(layer.s)]
            m.next = "INIT"
        with m.State("INIT"):
            with m.If(~self.table_busy):
                m.d.comb += self.go.eq(1)
                m.next = "RUN"
        with m.State("RUN"):
            m.d.comb += self.in_run.eq(1)
            with m.If(finished):
                m.d.comb += self.run_end.eq(1)
                m.next = "FINISH"
        with m.State("FINISH"):
            m.d.comb += self.done.eq(1)
            m.d.sync += self.running.eq(0)
            m.next = "IDLE"
