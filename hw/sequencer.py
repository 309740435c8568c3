"""The sequencer: the row schedule of a Fire layer, one MAC-array operation a cycle.

For row step ``t`` it squeezes input row ``t`` into the line buffer, then expands row
``t - 1``, whose 3x3 neighbourhood is then complete (after waiting, in DRAIN, for the
squeeze rows still in the requantizer). The loop nest within a row::

    for x in range(w):                              # pixels
        squeeze:   for g in range(ceil(s / oc)):    for k in range(ceil(cin / ic))
        expand1x1: for g in range(ceil(e1 / oc)):   for k in range(ceil(s / ic))
        expand3x3: for g in range(ceil(e3 / oc)):   for (ty, tx) in 3x3: for k in ...

(a squeeze row is all its pixels' squeeze, an expanded row all its pixels' expand1x1 then
expand3x3). Each cycle it may issue one operation: a weight row (counted up from the
phase's first), an input word (squeeze) or a squeeze-buffer word (expand; a padding tap
reads the centre and is marked ``pad``), and the group's tag. It issues when

* the input pixel it needs is in the input buffer (``pixel_ready``), and
* a group's last beat only with a credit: a slot reserved in the group FIFO after the MAC
  array. There are ``credits`` (the FIFO's depth); ``group_freed`` returns one, a cycle late.

A convolution run (``conv``) is the squeeze loops alone, rows ``0`` to ``h - 1``: it ends
after the last squeezed row, without DRAIN or expand, its groups bound for the output.

``issue`` carries the operation, registered, to the operand fetch (:mod:`hw.operand_fetch`).
Loop limits minus one are registered at configuration, so the "last" compares need no adder.
"""

from __future__ import annotations

from types import SimpleNamespace

from amaranth import Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from spec.params import EngineParams, ceil_div

from .layouts import (
    Kind,
    config_layout,
    group_tag_layout,
    input_address_layout,
    max_channels,
    sizes_layout,
)


def issue_layout(p: EngineParams) -> data.StructLayout:
    """One operation as the sequencer issues it."""
    return data.StructLayout({
        "first": 1,  # the first beat of a reduction
        "last": 1,  # its last beat: the group's sums leave the MAC array after it
        "pad": 1,  # a padding tap: contributes zero
        "squeeze": 1,  # the operand is an input word (else a squeeze-buffer word)
        "w_addr": range(p.weight_depth + 1),  # weight row
        "in_addr": input_address_layout(p),  # input word (squeeze)
        "row": range(p.max_h + 1),  # squeeze-buffer row and word (expand)
        "word": range(p.squeeze_depth + 1),
        "tag": group_tag_layout(p),  # its ``count`` is set one stage later, from ``left``
        "left": range(max_channels(p) + 1),  # channels of the phase from this group on
    })


class Sequencer(wiring.Component):
    """Row-step loop nest and operand addresses (see the module docstring).

    Parameters
    ----------
    credits : int
        Group FIFO slots (its depth): the groups that may be issued and not yet popped.
    pending : int
        The most squeeze groups that can be issued and not yet written to the line buffer:
        ``credits`` plus those whose credit came back while their values are still in the
        requantizer (``RequantStage.write_latency``).

    Ports
    -----
    go : In(1)
        Pulse: start the run's row schedule.
    layer, sizes : In
        The accepted configuration and its derived sizes.
    done : Out(1)
        The last operation is issued.
    idle : Out(1)
        Every credit is back and no squeeze group is on its way to the line buffer.
    read_slot, pixel_ready, release
        The input slot read, whether it holds a whole pixel, and its release with the last
        read of its pixel.
    group_freed, squeeze_written : In(1)
        A group left the group FIFO (a cycle late); a squeeze group's last value reached the
        line buffer.
    issuing, input_wait, credit_stall : Out(1)
        An operation issues; the schedule waits for an input pixel; for a credit.
    issue : Out(stream of issue_layout, always ready)
        The operation issued last cycle.
    """

    def __init__(self, params: EngineParams, *, credits: int, pending: int):
        self._p = p = params
        self._credits = credits
        self._pending = pending
        super().__init__({
            "go": In(1),
            "layer": In(config_layout(p)),
            "sizes": In(sizes_layout(p)),
            "done": Out(1),
            "idle": Out(1),
            "read_slot": Out(1),
            "pixel_ready": In(1),
            "release": Out(1),
            "group_freed": In(1),
            "squeeze_written": In(1),
            "issuing": Out(1),
            "input_wait": Out(1),
            "credit_stall": Out(1),
            "issue": Out(stream.Signature(issue_layout(p), always_ready=True)),
        })

    @property
    def params(self) -> EngineParams:
        return self._p

    def elaborate(self, platform):
        m = Module()
        v = self._loop_state()
        self._conditions(m, v)
        self._addresses(m, v)
        self._schedule(m, v)
        self._credits_and_issue(m, v)
        return m

    def _loop_state(self) -> SimpleNamespace:
        p = self._p
        oc, max_ch = p.oc_lanes, max_channels(p)
        v = SimpleNamespace()
        v.t = Signal(range(p.max_h + 2))  # row step: squeeze row t, then expand row t - 1
        v.phase = Signal(Kind)
        v.x = Signal(range(p.max_w + 1))
        v.g = Signal(range(max(ceil_div(max_ch, oc), 1) + 1))
        v.chan = Signal(range(max_ch + oc + 1))  # g * oc
        v.tap_y = Signal(range(3))
        v.tap_x = Signal(range(3))
        v.k = Signal(range(max(p.input_words, p.squeeze_words) + 1))
        v.wrow = Signal(range(p.weight_depth + 1))
        v.xoff = Signal(range(p.squeeze_depth + 1))  # x * ks
        v.ey = Signal(range(p.max_h + 1))  # the row being expanded: t - 1
        # credits: ``emit_credit`` less a group taken last cycle (``credit_taken``, see
        # ``_credits_and_issue``)
        v.emit_credit = Signal(range(self._credits + 2))
        v.credit_taken = Signal()
        v.credit_left = Signal()  # a credit is free this cycle (from registers only)
        v.sq_pending = Signal(range(self._pending + 1))  # squeeze groups not yet written
        v.sq_none = Signal()  # and none issued last cycle
        v.step_active = Signal()  # issuing squeeze or expand of the current row step
        v.op_row = Signal(range(p.max_h + 1))  # the operation being issued this cycle
        v.op_word = Signal(range(p.squeeze_depth + 1))
        v.op_pad = Signal()
        return v

    def _conditions(self, m, v):
        """The loops' "last" conditions, from limits minus one registered at configuration,
        and whether an operation may issue."""
        layer, sizes = self.layer, self.sizes
        kc_m1 = Signal.like(sizes.input_words)
        ks_m1 = Signal.like(sizes.squeeze_words)
        gs_m1 = Signal.like(sizes.squeeze_groups)
        g1_m1 = Signal.like(sizes.e1_groups)
        g3_m1 = Signal.like(sizes.e3_groups)
        v.w_m1, v.h_m1 = Signal.like(layer.w), Signal.like(layer.h)
        # the row step that ends the run: h + 1 (the last expand), or h in a convolution
        v.t_end = Signal(range(self._p.max_h + 2))
        m.d.sync += [kc_m1.eq(sizes.input_words - 1), ks_m1.eq(sizes.squeeze_words - 1),
                     gs_m1.eq(sizes.squeeze_groups - 1), g1_m1.eq(sizes.e1_groups - 1),
                     g3_m1.eq(sizes.e3_groups - 1), v.w_m1.eq(layer.w - 1),
                     v.h_m1.eq(layer.h - 1), v.t_end.eq(layer.h + ~layer.conv)]
        phase = v.phase
        k_last = v.k == Mux(phase == Kind.SQUEEZE, kc_m1, ks_m1)
        v.tap_last = (phase != Kind.EXPAND3) | ((v.tap_y == 2) & (v.tap_x == 2))
        v.g_last = v.g == Mux(phase == Kind.SQUEEZE, gs_m1,
                              Mux(phase == Kind.EXPAND1, g1_m1, g3_m1))
        v.k_last = k_last
        v.group_last = k_last & v.tap_last
        v.pixel_last = v.group_last & v.g_last & ((phase != Kind.EXPAND1)
                                                  | (sizes.e3_groups == 0))
        v.x_last = v.x == v.w_m1
        pixel_start = (v.g == 0) & (v.k == 0) & (v.tap_y == 0) & (v.tap_x == 0)
        need_input = (phase == Kind.SQUEEZE) & pixel_start
        input_ok = ~need_input | self.pixel_ready
        credit_ok = ~v.group_last | v.credit_left
        m.d.comb += [
            self.issuing.eq(v.step_active & input_ok & credit_ok),
            self.input_wait.eq(v.step_active & ~input_ok),
            self.credit_stall.eq(v.step_active & input_ok & ~credit_ok),
        ]

    def _addresses(self, m, v):
        """The squeeze-buffer row and word of an expand operation, and its padding."""
        ks = self.sizes.squeeze_words
        ey, x, tap_y, tap_x = v.ey, v.x, v.tap_y, v.tap_x
        row_edge_top = ey == 0
        row_edge_bot = ey == v.h_m1
        col_left = x == 0
        col_right = v.x_last
        with m.If(v.phase == Kind.EXPAND3):
            m.d.comb += [
                v.op_pad.eq(((tap_y == 0) & row_edge_top) | ((tap_y == 2) & row_edge_bot)
                            | ((tap_x == 0) & col_left) | ((tap_x == 2) & col_right)),
                v.op_row.eq(Mux(v.op_pad, ey, ey + tap_y - 1)),
                v.op_word.eq(Mux(tap_x == 0, v.xoff - ks,
                                 Mux(tap_x == 1, v.xoff, v.xoff + ks)) + v.k),
            ]
        with m.Elif(v.phase == Kind.EXPAND1):
            m.d.comb += [v.op_row.eq(ey), v.op_word.eq(v.xoff + v.k)]

    def _schedule(self, m, v):
        layer, sizes = self.layer, self.sizes
        oc = self._p.oc_lanes
        squeeze_rows = Mux(layer.squeeze, sizes.squeeze_rows, 0)  # the expand's first row
        first_expand = Mux(sizes.e1_groups != 0, Kind.EXPAND1, Kind.EXPAND3)
        with m.FSM(name="seq"):
            with m.State("IDLE"):
                with m.If(self.go):
                    m.d.sync += [v.t.eq(0), self.done.eq(0), self.read_slot.eq(0),
                                 v.sq_pending.eq(0)]
                    m.next = "STEP"
            with m.State("STEP"):
                # squeeze row t (if any), then expand row t - 1 (if any)
                m.d.sync += [v.x.eq(0), v.g.eq(0), v.chan.eq(0), v.k.eq(0), v.tap_y.eq(0),
                             v.tap_x.eq(0), v.xoff.eq(0), v.ey.eq(v.t - 1)]
                with m.If(v.t >= v.t_end):
                    m.d.sync += self.done.eq(1)
                    m.next = "IDLE"
                with m.Elif(layer.squeeze & (v.t < layer.h)):
                    m.d.sync += [v.phase.eq(Kind.SQUEEZE), v.wrow.eq(0)]
                    m.next = "ISSUE"
                with m.Elif(v.t > 0):
                    m.next = "DRAIN"
                with m.Else():
                    m.d.sync += v.t.eq(v.t + 1)
            with m.State("DRAIN"):
                # the expand reads the squeeze rows just written: wait for the requantizer
                with m.If(v.sq_none):
                    m.d.sync += [v.phase.eq(first_expand), v.wrow.eq(squeeze_rows),
                                 v.x.eq(0), v.g.eq(0), v.chan.eq(0), v.k.eq(0),
                                 v.xoff.eq(0)]
                    m.next = "ISSUE"
            with m.State("ISSUE"):
                m.d.comb += v.step_active.eq(1)
                with m.If(self.issuing):
                    m.d.sync += v.wrow.eq(v.wrow + 1)
                    with m.If(~v.k_last):
                        m.d.sync += v.k.eq(v.k + 1)
                    with m.Else():
                        m.d.sync += v.k.eq(0)
                        with m.If(~v.tap_last):
                            with m.If(v.tap_x == 2):
                                m.d.sync += [v.tap_x.eq(0), v.tap_y.eq(v.tap_y + 1)]
                            with m.Else():
                                m.d.sync += v.tap_x.eq(v.tap_x + 1)
                        with m.Else():
                            m.d.sync += [v.tap_x.eq(0), v.tap_y.eq(0)]
                            with m.If(~v.g_last):
                                m.d.sync += [v.g.eq(v.g + 1), v.chan.eq(v.chan + oc)]
                            with m.Elif((v.phase == Kind.EXPAND1) & (sizes.e3_groups != 0)):
                                m.d.sync += [v.g.eq(0), v.chan.eq(0),
                                             v.phase.eq(Kind.EXPAND3)]
                            with m.Else():
                                self._pixel_done(m, v, squeeze_rows, first_expand)

    def _pixel_done(self, m, v, squeeze_rows, first_expand):
        m.d.sync += [v.g.eq(0), v.chan.eq(0)]
        with m.If(v.phase == Kind.SQUEEZE):
            m.d.sync += [v.wrow.eq(0), self.read_slot.eq(~self.read_slot)]
        with m.Else():
            m.d.sync += [v.wrow.eq(squeeze_rows), v.phase.eq(first_expand)]
        with m.If(~v.x_last):
            m.d.sync += [v.x.eq(v.x + 1), v.xoff.eq(v.xoff + self.sizes.squeeze_words)]
        with m.Else():
            m.d.sync += [v.x.eq(0), v.xoff.eq(0)]
            with m.If((v.phase == Kind.SQUEEZE) & (v.t > 0) & ~self.layer.conv):
                m.next = "DRAIN"
            with m.Else():
                m.d.sync += v.t.eq(v.t + 1)
                m.next = "STEP"

    def _credits_and_issue(self, m, v):
        layer, phase = self.layer, v.phase
        issuing = self.issuing
        # Release an input slot with its pixel's last issue.
        m.d.comb += self.release.eq(issuing & (phase == Kind.SQUEEZE) & v.pixel_last)
        # Credits: a group's last beat takes one; ``group_freed`` returns it. The count takes
        # a group a cycle late (``credit_taken``, registered: the issue decision reaches no
        # adder), and what is free is the count less that group, from registers alone: the
        # same credits every cycle as a count that took it at once, one adder shorter (the
        # issue logic into the count's carry chain was the ULX3S's critical path)
        take = issuing & v.group_last
        m.d.sync += v.credit_taken.eq(take & ~self.go)
        with m.If(self.go):
            m.d.sync += v.emit_credit.eq(self._credits)
        with m.Else():
            m.d.sync += v.emit_credit.eq(v.emit_credit - v.credit_taken + self.group_freed)
        m.d.comb += v.credit_left.eq(Mux(v.credit_taken, v.emit_credit > 1,
                                         v.emit_credit != 0))
        # a convolution's groups go to the output, not the line buffer: none is pending.
        # The count takes an issued group a cycle late (``sq_issued``, registered: the issue
        # decision reaches no adder), so whoever asks whether none is pending asks that too.
        sq_issue = issuing & v.group_last & (phase == Kind.SQUEEZE) & ~layer.conv
        sq_issued = Signal()
        m.d.sync += sq_issued.eq(sq_issue & ~self.go)
        with m.If(~self.go):
            m.d.sync += v.sq_pending.eq(v.sq_pending + sq_issued - self.squeeze_written)
        m.d.comb += v.sq_none.eq((v.sq_pending == 0) & ~sq_issued)
        m.d.comb += self.idle.eq((v.emit_credit == self._credits) & ~v.credit_taken
                                 & v.sq_none)

        op = self.issue.payload
        # channels left in this phase: registered here, clipped to a group one stage later
        # (the subtraction and the compare in one cycle were the ECP5's longest path)
        m.d.sync += op.left.eq(Mux(phase == Kind.SQUEEZE, layer.s,
                                   Mux(phase == Kind.EXPAND1, layer.e1, layer.e3)) - v.chan)
        m.d.sync += [
            self.issue.valid.eq(issuing),
            op.first.eq((v.k == 0) & (v.tap_y == 0) & (v.tap_x == 0)),
            op.last.eq(v.group_last),
            op.pad.eq(v.op_pad),
            op.squeeze.eq(phase == Kind.SQUEEZE),
            op.w_addr.eq(v.wrow),
            op.in_addr.word.eq(v.k), op.in_addr.slot.eq(self.read_slot),
            op.row.eq(v.op_row), op.word.eq(v.op_word),
            op.tag.kind.eq(phase),
            op.tag.chan.eq(v.chan),
            op.tag.row.eq(Mux(phase == Kind.SQUEEZE, v.t, v.ey)),
            op.tag.xoff.eq(v.xoff),
        ]
