"""The memory controller in a clock domain of its own: crossings for its native user ports and
its control bus (Amaranth's ``AsyncFIFO`` on every direction).

On the ULX3S the LiteDRAM controller runs on a slower clock than the design (``dram``, the
board's ``dram_clock_hz``): its bank machines' paths do not fit 10 ns on the ECP5, and the
SDR SDRAM's 16-bit port is not what the design waits on. The design keeps the ports it has
(``hw.memory_bridge.native_port_signature``, ``WISHBONE_SIGNATURE``) in ``sync``; these put
the controller's side in ``dram``.

Two properties of LiteDRAM's native port survive the crossing by construction, not by
timing:

- the controller takes a write's data word when it asks for it, without looking at
  ``wdata.valid``: a write command is passed to it only when its word is already on the
  controller's side (the words there outnumber the writes passed and not yet written);
- the controller pushes read data without looking at ``rdata.ready``: a read command is
  passed only when the read-data FIFO has room for it beside every read still owed.
"""

from __future__ import annotations

from amaranth import DomainRenamer, Module, Shape, Signal
from amaranth.lib import data, wiring
from amaranth.lib.fifo import AsyncFIFO
from amaranth.lib.wiring import In, Out

from .memory_bridge import WISHBONE_SIGNATURE, native_port_signature
from .stream_fifo import StreamSlice

#: Entries of each crossing FIFO (a power of two).
CDC_DEPTH = 16


def _fifo(m, name, shape, w_domain, r_domain, depth=CDC_DEPTH):
    fifo = AsyncFIFO(width=Shape.cast(shape).width, depth=depth, w_domain=w_domain,
                     r_domain=r_domain)
    m.submodules[name] = fifo
    return fifo


class NativePortCDC(wiring.Component):
    """A LiteDRAM native port from ``i`` (the design's side, in ``from_domain``) to ``o`` (the
    controller's, in ``to_domain``)."""

    def __init__(self, addr_bits: int, data_bits: int, *, from_domain: str = "sync",
                 to_domain: str = "dram", depth: int = CDC_DEPTH):
        self._from, self._to, self._depth = from_domain, to_domain, depth
        sig = native_port_signature(addr_bits, data_bits)
        super().__init__({"i": In(sig), "o": Out(sig)})

    def elaborate(self, platform):
        m = Module()
        i, o, depth = self.i, self.o, self._depth
        cmd_shape = i.cmd.payload.shape()
        wdata_shape = i.wdata.payload.shape()
        to = m.d[self._to]
        cmd = _fifo(m, "cmd", cmd_shape, self._from, self._to, depth)
        wdata = _fifo(m, "wdata", wdata_shape, self._from, self._to, depth)
        rdata = _fifo(m, "rdata", len(i.rdata.payload), self._to, self._from, depth)
        # the design's side meets each FIFO through a register slice: the port's users (the
        # DMA, the bridge) then reach no FIFO pointer logic and may sit apart from the
        # crossings (on the ULX3S, beside the SDRAM's pins)
        stage = {}
        for name, shape in (("cmd", cmd_shape), ("wdata", wdata_shape),
                            ("rdata", i.rdata.payload.shape())):
            stage[name] = StreamSlice(shape)
            m.submodules[f"{name}_slice"] = DomainRenamer({"sync": self._from})(stage[name])
        wiring.connect(m, wiring.flipped(i.cmd), stage["cmd"].i)
        wiring.connect(m, wiring.flipped(i.wdata), stage["wdata"].i)
        wiring.connect(m, stage["rdata"].o, wiring.flipped(i.rdata))
        m.d.comb += [
            cmd.w_en.eq(stage["cmd"].o.valid), cmd.w_data.eq(stage["cmd"].o.payload),
            stage["cmd"].o.ready.eq(cmd.w_rdy),
            wdata.w_en.eq(stage["wdata"].o.valid), wdata.w_data.eq(stage["wdata"].o.payload),
            stage["wdata"].o.ready.eq(wdata.w_rdy),
            stage["rdata"].i.valid.eq(rdata.r_rdy), stage["rdata"].i.payload.eq(rdata.r_data),
            rdata.r_en.eq(stage["rdata"].i.ready),
        ]
        # the controller's side: writes passed and not yet written, reads passed and not yet
        # answered
        head = data.Layout.cast(cmd_shape)(cmd.r_data)
        writes_owed = Signal(range(depth + 1))
        reads_owed = Signal(range(depth + 1))
        word_there = wdata.r_level > writes_owed
        # (the FIFO's w_level is a register of a register: a word written shows a cycle
        # after ``reads_owed`` has let go of it, so that cycle's word is counted here)
        pushed = Signal()
        to += pushed.eq(rdata.w_en & rdata.w_rdy)
        room = (reads_owed + rdata.w_level + pushed) < depth
        ok = cmd.r_rdy & ((head.we & word_there) | (~head.we & room))
        m.d.comb += [o.cmd.valid.eq(ok), o.cmd.payload.eq(cmd.r_data),
                     cmd.r_en.eq(ok & o.cmd.ready)]
        passed = ok & o.cmd.ready
        written = o.wdata.valid & o.wdata.ready
        m.d.comb += [o.wdata.valid.eq(wdata.r_rdy), o.wdata.payload.eq(wdata.r_data),
                     wdata.r_en.eq(o.wdata.ready)]
        to += writes_owed.eq(writes_owed + (passed & head.we) - written)
        answered = o.rdata.valid
        to += reads_owed.eq(reads_owed + (passed & ~head.we) - answered)
        m.d.comb += [rdata.w_en.eq(o.rdata.valid), rdata.w_data.eq(o.rdata.payload),
                     o.rdata.ready.eq(1)]
        return m


_REQUEST = data.StructLayout({"adr": 30, "dat_w": 32, "sel": 4, "we": 1})
_RESPONSE = data.StructLayout({"dat_r": 32, "err": 1})


class WishboneCDC(wiring.Component):
    """A classic Wishbone master (``i``, in ``from_domain``) to a slave (``o``, in
    ``to_domain``): one cycle at a time, the request through one FIFO and the answer back
    through another; the master sees ``ack`` (or ``err``) when the answer is back."""

    def __init__(self, *, from_domain: str = "sync", to_domain: str = "dram"):
        self._from, self._to = from_domain, to_domain
        super().__init__({"i": In(WISHBONE_SIGNATURE), "o": Out(WISHBONE_SIGNATURE)})

    def elaborate(self, platform):
        m = Module()
        i, o = self.i, self.o
        req = _fifo(m, "request", _REQUEST, self._from, self._to, 4)
        resp = _fifo(m, "response", _RESPONSE, self._to, self._from, 4)
        # the master's side: a cycle's request goes once; its answer ends it
        sent = Signal()
        frm = m.d[self._from]
        request = Signal(_REQUEST)
        m.d.comb += [request.adr.eq(i.adr), request.dat_w.eq(i.dat_w), request.sel.eq(i.sel),
                     request.we.eq(i.we), req.w_data.eq(request),
                     req.w_en.eq(i.cyc & i.stb & ~sent)]
        with m.If(req.w_en & req.w_rdy):
            frm += sent.eq(1)
        answer = _RESPONSE(resp.r_data)
        done = sent & resp.r_rdy
        m.d.comb += [resp.r_en.eq(done), i.ack.eq(done & ~answer.err),
                     i.err.eq(done & answer.err), i.dat_r.eq(answer.dat_r)]
        with m.If(done):
            frm += sent.eq(0)
        # the slave's side: the request held on the bus until acknowledged
        to = m.d[self._to]
        active = Signal()
        held = Signal(_REQUEST)
        m.d.comb += [o.adr.eq(held.adr), o.dat_w.eq(held.dat_w), o.sel.eq(held.sel),
                     o.we.eq(held.we), o.cyc.eq(active), o.stb.eq(active),
                     req.r_en.eq(~active)]
        with m.If(~active & req.r_rdy):
            to += [held.eq(req.r_data), active.eq(1)]
        # (the answer FIFO always has room: one request is in flight at a time)
        m.d.comb += resp.w_en.eq(active & (o.ack | o.err))
        response = Signal(_RESPONSE)
        m.d.comb += [response.dat_r.eq(o.dat_r), response.err.eq(o.err),
                     resp.w_data.eq(response)]
        with m.If(active & (o.ack | o.err)):
            to += active.eq(0)
        return m
