"""The requantizer stage: the group FIFO after the MAC array and the requantizer pipeline.

Accumulator groups (``oc_lanes`` sums and their tag) leave the MAC array into a FIFO of
``GROUP_FIFO_DEPTH`` groups, which the requantizer drains one channel per cycle: each
channel's parameter row is read (its address registered, the block RAM's output registered
once more), then ``hw.arith.Requantizer`` computes ``clamp(z + round((acc + bias) m / 2**n),
lo, hi)``. Squeeze values go to the line buffer (``squeeze``), expand values to the output
stage (``expand``): straight from the requantizer, or, in a layer whose expands are rounded
twice (``rescale``: first to each branch's own zero point ``z_e1``/``z_e3``), through
``hw.arith.Rescaler`` to the concat's ``z_out``. The rescaler's latency is then added to every
expand value of the layer (all of them, so that they keep their order); squeeze values never
take it. In a convolution run (``conv``, docs/engine.md) the squeeze values are the run's
output: they go to the output stage, at ``z_out``, under output credits, with the run's
``relu``. A conv run with ``wide`` set whose parameters all qualify (``narrow_ok``, decided by
the parameter loader) drains up to ``CONV_LANES`` channels of a group a cycle: the first
through the requantizer, the next two through ``hw.arith.NarrowRequantizer`` lanes (their
parameters from LUT-RAM copies, their products, on DSP multipliers, lent by the bypass
adder, idle in a conv run), leaving together as one output beat of up to three values
(``expand`` and ``expand_more``, ``expand_extra`` of them valid).

Flow control is by credits, so that the MAC array and the requantizer are fixed-latency
pipelines with no stall logic (their registers map onto DSP pipeline registers):

* the sequencer issues a group's last beat only with a credit for a FIFO slot; popping a
  group returns it (``group_freed``, registered: a cycle late, which is safe and keeps the
  return off the credit counter's path);
* an expand channel issues only with a credit for a slot in the output stage's first FIFO,
  which ``output_freed`` returns (registered on the output stage's side).
"""

from __future__ import annotations

from amaranth import Const, Module, Mux, Signal, signed
from amaranth.lib import data, fifo, stream, wiring
from amaranth.lib.wiring import In, Out

from spec.params import CONV_LANES, GROUP_FIFO_DEPTH, EngineParams
from spec.quant import MULT_BITS, NARROW_BITS

from .arith import NARROW_PRODUCT_BITS, NarrowRequantizer, Requantizer, Rescaler
from .layouts import Kind, config_layout, group_tag_layout, qparam_layout, read_signature
from .mac_array import array_out_layout

#: Registers from a pop to the requantizer's input: the request (with the parameter
#: address), the parameter memory's read register, and the register after it (``req``,
#: ``req2``, ``req3`` below).
REQUEST_LATENCY = 3


def squeeze_write_layout(p: EngineParams) -> data.StructLayout:
    """One squeeze value on its way into the line buffer."""
    return data.StructLayout({"row": range(p.max_h + 1), "word": range(p.squeeze_depth + 1),
                              "lane": range(p.ic_lanes), "value": signed(p.bits)})


def result_tag_layout(p: EngineParams) -> data.StructLayout:
    """What a value carries through the requantizer: where it goes."""
    return data.StructLayout({"squeeze": 1, "group_end": 1, "row": range(p.max_h + 1),
                              "word": range(p.squeeze_depth + 1), "lane": range(p.ic_lanes),
                              "expand3": 1})


class RequantStage(wiring.Component):
    """Group FIFO and requantizer with their credits (see the module docstring).

    Parameters
    ----------
    output_credits : int
        Slots of the output stage's FIFO that expand values may take.

    Ports
    -----
    groups : In(stream of array_out_layout, always ready)
        The MAC array's groups; the sequencer's credits guarantee room.
    layer : In(config_layout)
        The run's configuration (channel counts, zero points, ceilings).
    go : In(1)
        Pulse: a run starts (every output credit back).
    qparam_read : Out(read_signature)
        The parameter memory.
    squeeze : Out(stream of squeeze_write_layout, always ready)
        Squeeze values, to the line buffer.
    expand : Out(stream of signed(bits), always ready)
        Expand values in output order, to the output stage.
    group_freed, squeeze_written : Out(1)
        Registered pulses: a group left the FIFO; a squeeze group's last value was written.
    output_freed : In(1)
        An output credit comes back (registered by the output stage).
    idle : Out(1)
        Nothing in the requantizer, every output credit back.
    lane1_read, lane2_read : Out(read_signature)
        The narrow lanes' parameter copies (``WeightBuffers``).
    narrow_ok : In(1)
        The loaded parameters qualify for the narrow lanes.
    expand_more : Out(array of 2 signed(bits))
        With ``expand``: the narrow lanes' values, ``expand_extra`` (0 to 2) of them valid.
    wide : Out(1)
        The run drains ``CONV_LANES`` channels a cycle.
    prod_a, prod_m : Out, prod_p : In
        With ``lend``: the narrow lanes' products, made by the bypass adder's multipliers.
    """

    def __init__(self, params: EngineParams, *, output_credits: int,
                 multipliers: str = "dsp", lend: bool = False, lanes: int = CONV_LANES):
        self._p = p = params
        self._output_credits = output_credits
        self._lend = lend
        self._requantizer = Requantizer(p.spec, p.acc_bits,
                                        tag_bits=result_tag_layout(p).size,
                                        multipliers=multipliers)
        self._narrow = [NarrowRequantizer(p.spec, p.acc_bits, latency=self._requantizer.latency,
                                          multipliers=multipliers, shared=lend)
                        for _ in range(lanes - 1)]
        self._rescaler = Rescaler(p.spec, multipliers=multipliers)
        tag_bits = group_tag_layout(p).size
        extra = CONV_LANES - 1
        members = {}
        if lend:
            members = {"prod_a": Out(data.ArrayLayout(signed(NARROW_BITS), extra)),
                       "prod_m": Out(data.ArrayLayout(MULT_BITS - 1, extra)),
                       "prod_p": In(data.ArrayLayout(signed(NARROW_PRODUCT_BITS), extra))}
        super().__init__({
            **members,
            "lane1_read": Out(read_signature(range(p.max_squeeze), qparam_layout(p))),
            "lane2_read": Out(read_signature(range(p.max_squeeze), qparam_layout(p))),
            "narrow_ok": In(1),
            "expand_more": Out(data.ArrayLayout(signed(p.bits), extra)),
            "expand_extra": Out(range(extra + 1)),
            "wide": Out(1),
            "groups": In(stream.Signature(array_out_layout(p, tag_bits), always_ready=True)),
            "layer": In(config_layout(p)),
            "go": In(1),
            "qparam_read": Out(read_signature(range(p.qparam_depth), qparam_layout(p))),
            "squeeze": Out(stream.Signature(squeeze_write_layout(p), always_ready=True)),
            "expand": Out(stream.Signature(signed(p.bits), always_ready=True)),
            "group_freed": Out(1),
            "squeeze_written": Out(1),
            "output_freed": In(1),
            "idle": Out(1),
        })

    @property
    def group_depth(self) -> int:
        """The group FIFO's depth: the sequencer's credits."""
        return GROUP_FIFO_DEPTH

    @property
    def write_latency(self) -> int:
        """Cycles from a group's pop to its ``squeeze_written`` pulse: the request stages,
        the requantizer, and the pulse's register."""
        return REQUEST_LATENCY + self._requantizer.latency + 1

    def elaborate(self, platform):
        m = Module()
        p = self._p
        oc = p.oc_lanes
        log_ic = (p.ic_lanes - 1).bit_length()
        layer = self.layer
        entry = data.StructLayout({"acc": data.ArrayLayout(signed(p.acc_bits), oc),
                                   "tag": group_tag_layout(p)})
        m.submodules.groups = groups = fifo.SyncFIFO(width=entry.size, depth=GROUP_FIFO_DEPTH)
        # always ready: the sequencer's credits guarantee the FIFO has room
        w = groups.w_stream
        m.d.comb += [w.valid.eq(self.groups.valid), w.payload.eq(self.groups.payload)]
        r = groups.r_stream
        head = data.View(entry, r.payload)

        out_credit = Signal(range(self._output_credits + 1))
        lane = Signal(range(oc + 1))
        is_sq = head.tag.kind == Kind.SQUEEZE
        # a value for the line buffer (a Fire's squeeze), else for the output stage (an
        # expand, or a convolution's channel), which takes an output credit
        to_line = is_sq & ~layer.conv
        can_rq = r.valid & (to_line | (out_credit != 0))
        # a wide conv run takes CONV_LANES channels of the group a cycle
        wide = (layer.conv & layer.wide & self.narrow_ok) if self._narrow else Const(0)
        m.d.comb += self.wide.eq(wide)
        lane_last = lane + Mux(wide, CONV_LANES, 1) >= head.tag.count
        pop = can_rq & lane_last
        m.d.comb += r.ready.eq(pop)
        m.d.sync += self.group_freed.eq(pop)
        with m.If(can_rq):
            m.d.sync += lane.eq(Mux(lane_last, 0, lane + Mux(wide, CONV_LANES, 1)))
        qbase = Mux(is_sq, 0, Mux(head.tag.kind == Kind.EXPAND1, layer.s, layer.s + layer.e1))
        channel = head.tag.chan + lane

        # The request is registered, then its address reads the parameter memory, whose
        # output is registered once more (block-RAM outputs feed only registers).
        request = data.StructLayout({"valid": 1, "acc": signed(p.acc_bits),
                                     "tag": result_tag_layout(p), "kind": Kind})
        req, req2, req3 = (Signal(request, name=f"request{i}") for i in (1, 2, 3))
        q_addr = Signal.like(self.qparam_read.addr)
        # the block RAM's output straight into a register without reset (req3.valid says
        # when it counts): a reset there would put logic after the RAM
        q_data = Signal.like(self.qparam_read.data, reset_less=True)
        m.d.sync += [
            req.valid.eq(can_rq), q_addr.eq(qbase + channel), req.kind.eq(head.tag.kind),
            req.acc.eq(head.acc[lane] if oc > 1 else head.acc[0]),
            req.tag.squeeze.eq(to_line), req.tag.group_end.eq(lane_last),
            req.tag.expand3.eq(head.tag.kind == Kind.EXPAND3),
            req.tag.row.eq(head.tag.row),
            req.tag.word.eq(head.tag.xoff + (channel >> log_ic)),
            req.tag.lane.eq(channel[:log_ic] if log_ic else 0),
            req2.eq(req), req3.eq(req2), q_data.eq(self.qparam_read.data),
        ]
        m.d.comb += self.qparam_read.addr.eq(q_addr)

        m.submodules.requantizer = rq = self._requantizer
        ri = rq.i.payload
        m.d.comb += [
            rq.i.valid.eq(req3.valid),
            ri.acc.eq(req3.acc), ri.bias.eq(q_data.bias), ri.mult.eq(q_data.mult),
            ri.shift.eq(q_data.shift), ri.relu.eq(~layer.conv | layer.relu),
            ri.tag.eq(req3.tag),
            ri.z.eq(Mux(req3.tag.squeeze, layer.z_sq,
                        Mux(layer.rescale, Mux(req3.tag.expand3, layer.z_e3, layer.z_e1),
                            layer.z_out))),
            ri.hi.eq(Mux(req3.kind == Kind.SQUEEZE, p.spec.act_max,
                         Mux(req3.kind == Kind.EXPAND1, layer.e1_max, layer.e3_max))),
        ]
        # the narrow lanes: channels lane + 1 and lane + 2 of the group, their parameters
        # from the copies (read with lane 0's timing: address, copy, register)
        def lane_acc(k):
            # a wide run's lane is a multiple of CONV_LANES: lane k's sum is one of few
            starts = [s for s in range(0, oc, CONV_LANES) if s + k < oc]
            acc = head.acc[starts[-1] + k] if starts else head.acc[0]
            for s in reversed(starts[:-1]):
                acc = Mux(lane == s, head.acc[s + k], acc)
            return acc

        extra = []
        for k, nq in enumerate(self._narrow, start=1):
            m.submodules[f"narrow{k}"] = nq
            rd = getattr(self, f"lane{k}_read")
            n_req = [Signal(data.StructLayout({"valid": 1, "acc": signed(p.acc_bits)}),
                            name=f"lane{k}_request{i}") for i in (1, 2, 3)]
            n_addr = Signal.like(rd.addr, name=f"lane{k}_addr")
            n_data = Signal.like(rd.data, name=f"lane{k}_data", reset_less=True)
            m.d.sync += [
                n_req[0].valid.eq(can_rq & wide & (lane + k < head.tag.count)),
                n_req[0].acc.eq(lane_acc(k)),
                n_addr.eq(channel + k), n_req[1].eq(n_req[0]), n_req[2].eq(n_req[1]),
                n_data.eq(rd.data),
            ]
            ni = nq.i.payload
            m.d.comb += [
                rd.addr.eq(n_addr),
                nq.i.valid.eq(n_req[2].valid), ni.acc.eq(n_req[2].acc),
                ni.bias.eq(n_data.bias), ni.mult.eq(n_data.mult), ni.shift.eq(n_data.shift),
                nq.relu.eq(layer.relu), nq.z.eq(layer.z_out),
                self.expand_more[k - 1].eq(nq.o.payload.y),
            ]
            if self._lend:
                m.d.comb += [self.prod_a[k - 1].eq(nq.prod_a), self.prod_m[k - 1].eq(nq.prod_m),
                             nq.prod_p.eq(self.prod_p[k - 1])]
            extra.append(nq.o.valid)
        m.d.comb += self.expand_extra.eq(sum(extra) if extra else Const(0))

        # values in the requantizer: at most one a cycle for its latency
        in_flight = Signal(range(rq.latency + 1))
        m.d.sync += in_flight.eq(in_flight + rq.i.valid - rq.o.valid)

        out_tag = data.View(result_tag_layout(p), rq.o.payload.tag)
        sq = self.squeeze.payload
        m.d.comb += [
            self.squeeze.valid.eq(rq.o.valid & out_tag.squeeze),
            sq.row.eq(out_tag.row), sq.word.eq(out_tag.word), sq.lane.eq(out_tag.lane),
            sq.value.eq(rq.o.payload.y),
        ]
        # the second requantization, for a layer whose expands are rounded twice
        m.submodules.rescaler = rs = self._rescaler
        e3 = out_tag.expand3
        m.d.comb += [
            rs.i.valid.eq(rq.o.valid & ~out_tag.squeeze & layer.rescale),
            rs.i.payload.q.eq(rq.o.payload.y),
            rs.i.payload.z_in.eq(Mux(e3, layer.z_e3, layer.z_e1)),
            rs.i.payload.mult.eq(Mux(e3, layer.e3_rs_mult, layer.e1_rs_mult)),
            rs.i.payload.shift.eq(Mux(e3, layer.e3_rs_shift, layer.e1_rs_shift)),
            rs.z_out.eq(layer.z_out),
        ]
        with m.If(layer.rescale):
            m.d.comb += [self.expand.valid.eq(rs.o.valid), self.expand.payload.eq(rs.o.payload.y)]
        with m.Else():
            m.d.comb += [self.expand.valid.eq(rq.o.valid & ~out_tag.squeeze),
                         self.expand.payload.eq(rq.o.payload.y)]
        # a squeeze group counts as written once its last lane's write has landed
        m.d.sync += self.squeeze_written.eq(rq.o.valid & out_tag.squeeze & out_tag.group_end)

        issue_ex = can_rq & ~to_line
        with m.If(self.go):
            m.d.sync += out_credit.eq(self._output_credits)
        with m.Else():
            # the count plus or minus one, chosen by the issue decision after the adders (the
            # decision comes late: from the group FIFO's head, through LUT RAM)
            up, down = Signal.like(out_credit), Signal.like(out_credit)
            m.d.comb += [up.eq(out_credit + 1), down.eq(out_credit - 1)]
            with m.If(issue_ex & ~self.output_freed):
                m.d.sync += out_credit.eq(down)
            with m.Elif(~issue_ex & self.output_freed):
                m.d.sync += out_credit.eq(up)
        m.d.comb += self.idle.eq((in_flight == 0) & ~req.valid & ~req2.valid & ~req3.valid
                                 & (out_credit == self._output_credits))
        return m
