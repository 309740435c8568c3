"""The operand fetch: reads an issued operation's operands and hands them to the MAC array.

An operation issued by the sequencer (``issue``, a register) reads three memories at once:
a weight row, and either an input word (squeeze) or a squeeze-buffer word (expand). The
line buffer registers the address and takes ``LineBuffer.read_latency`` cycles; the weight
and input buffers take an address register, the read register, and two more. Both arrive
together four stages after ``issue``, where the operation's control bits meet them::

    issue ─> op2 ─> op3 ─> op4 ─> op5 ─> MAC array
      └─ addresses ─> read ─> registers ─────┘

Block-RAM outputs go straight into registers, logic only after them: an ECP5 EBR takes
~6 ns from clock to output. The operand data carry no reset (``valid`` says when it counts).
"""

from __future__ import annotations

from amaranth import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from spec.params import EngineParams

from .layouts import group_tag_layout, input_address_layout, read_signature
from .line_buffer import LineBuffer
from .mac_array import array_in_layout
from .sequencer import issue_layout


def stage_layout(p: EngineParams) -> data.StructLayout:
    """What of an operation travels beside its operands' reads."""
    return data.StructLayout({"valid": 1, "first": 1, "last": 1, "pad": 1, "squeeze": 1,
                              "tag": group_tag_layout(p)})


class OperandFetch(wiring.Component):
    """Operand reads of the issued operations (see the module docstring).

    Ports
    -----
    issue : In(stream of issue_layout, always ready)
        The sequencer's operation, registered.
    z_in, z_sq : In(signed(bits))
        Zero points of the input (squeeze operands) and the squeeze map (expand operands).
    weight_read, input_read : Out(read_signature)
        Weight and input buffer reads (their addresses registered here).
    lb_row, lb_word, lb_data
        The line buffer's read port (``LineBuffer.read_latency``).
    group_channels : Out
        The channels of a group whose last beat is in stage 3 (0 when none): the compute
        counter's model of the requantizer counts them.
    operands : Out(stream of array_in_layout, always ready)
        To the MAC array.
    """

    def __init__(self, params: EngineParams):
        self._p = p = params
        word = data.ArrayLayout(signed(p.bits), p.ic_lanes)
        super().__init__({
            "issue": In(stream.Signature(issue_layout(p), always_ready=True)),
            "z_in": In(signed(p.bits)),
            "z_sq": In(signed(p.bits)),
            "weight_read": Out(read_signature(range(p.weight_depth),
                                              unsigned(p.weight_row_bits))),
            "input_read": Out(read_signature(input_address_layout(p), word)),
            "lb_row": Out(range(p.max_h + 1)),
            "lb_word": Out(range(p.squeeze_depth + 1)),
            "lb_data": In(word),
            "group_channels": Out(range(p.oc_lanes + 1)),
            "operands": Out(stream.Signature(array_in_layout(p, group_tag_layout(p).size),
                                             always_ready=True)),
        })

    def elaborate(self, platform):
        m = Module()
        p = self._p
        op = self.issue.payload
        # the line buffer registers its address itself; the weights' and inputs' one here
        m.d.comb += [self.lb_row.eq(op.row), self.lb_word.eq(op.word)]
        m.d.sync += [self.weight_read.addr.eq(op.w_addr), self.input_read.addr.eq(op.in_addr)]
        # the line buffer's word: read_latency after issue, then registered (at op5)
        assert LineBuffer.read_latency == 3
        op2, op3, op4, op5 = (Signal(stage_layout(p), name=f"op{i}") for i in range(2, 6))
        m.d.sync += [
            op2.valid.eq(self.issue.valid), op2.first.eq(op.first), op2.last.eq(op.last),
            op2.pad.eq(op.pad), op2.squeeze.eq(op.squeeze), op2.tag.eq(op.tag),
            op2.tag.count.eq(Mux(op.left > p.oc_lanes, p.oc_lanes, op.left)),
            op3.eq(op2), op4.eq(op3), op5.eq(op4),
        ]
        # the weights and the input word: address registered, read, registered twice
        in_q = Signal.like(self.input_read.data, reset_less=True)
        in_q2 = Signal.like(self.input_read.data, reset_less=True)
        lb_q = Signal.like(self.lb_data, reset_less=True)
        w_q = Signal.like(self.weight_read.data, reset_less=True)
        weights = Signal.like(self.weight_read.data, reset_less=True)
        m.d.sync += [in_q.eq(self.input_read.data), in_q2.eq(in_q), lb_q.eq(self.lb_data),
                     w_q.eq(self.weight_read.data), weights.eq(w_q)]

        ai = self.operands.payload
        m.d.comb += [
            self.operands.valid.eq(op5.valid),
            ai.act.eq(Mux(op5.squeeze, in_q2, lb_q)),
            ai.weights.eq(weights),
            ai.z.eq(Mux(op5.squeeze, self.z_in, self.z_sq)),
            ai.pad.eq(op5.pad),
            ai.first.eq(op5.first),
            ai.last.eq(op5.last),
            ai.tag.eq(op5.tag),
            self.group_channels.eq(Mux(op3.valid & op3.last, op3.tag.count, 0)),
        ]
        return m
