"""DMA between external memory and streams, on LiteDRAM native user ports.

``DMAReader`` reads ``words`` consecutive native-port words from ``addr`` into its ``data``
stream; ``DMAWriter`` writes its ``data`` stream's words to ``words`` consecutive words from
``addr``. Both issue a command every cycle the controller takes one (sequential addresses:
the controller keeps the row open and pipelines the bursts), and both refuse a request
that would run past the end of the memory (``error`` pulses ``CHECK_LATENCY`` cycles after
the request is taken, nothing moves). These are what
the layer sequencer drives; the link's COPY_MEM drives them to measure the memory.
"""

from __future__ import annotations

from amaranth import Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from .memory_bridge import dma_request, native_port_signature
from .stream_fifo import StreamFIFO


class DMAReader(wiring.Component):
    """``request`` (word address, words) -> ``data`` (the words, in order).

    Keeps at most ``depth`` words in flight (commands issued, data not yet taken), so the
    controller's data always has a place: ``data`` may be backpressured freely. ``done``
    pulses when the last word has left on ``data``.
    """

    def __init__(self, *, addr_bits: int, data_bits: int, words: int, depth: int = 32):
        self._words = words
        self._depth = depth
        super().__init__({
            "request": In(stream.Signature(dma_request(addr_bits))),
            "data": Out(stream.Signature(data_bits)),
            "port": Out(native_port_signature(addr_bits, data_bits)),
            "busy": Out(1), "done": Out(1), "error": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        port = self.port
        m.submodules.fifo = fifo = StreamFIFO(len(self.data.payload), self._depth)
        addr = Signal.like(self.request.payload.addr)
        to_issue = Signal.like(self.request.payload.words)
        to_receive = Signal.like(self.request.payload.words)
        in_flight = Signal(range(self._depth + 1))  # issued, not yet out of the FIFO
        issue = port.cmd.valid & port.cmd.ready
        out = self.data.valid & self.data.ready
        m.d.sync += in_flight.eq(in_flight + issue - out)
        m.d.comb += [port.cmd.payload.we.eq(0), port.cmd.payload.addr.eq(addr),
                     port.cmd.valid.eq((to_issue != 0) & (in_flight < self._depth)),
                     fifo.w.valid.eq(port.rdata.valid), fifo.w.payload.eq(port.rdata.payload),
                     port.rdata.ready.eq(1)]  # room reserved in the FIFO by in_flight
        wiring.connect(m, fifo.r, wiring.flipped(self.data))
        with m.If(issue):
            m.d.sync += [addr.eq(addr + 1), to_issue.eq(to_issue - 1)]
        with m.If(port.rdata.valid):
            m.d.sync += to_receive.eq(to_receive - 1)
        busy = (to_issue != 0) | (to_receive != 0)
        r, pending, start = _take_request(m, self.request, busy, self._words, self.error)
        m.d.comb += self.busy.eq(busy | pending | fifo.r.valid)
        last = Signal()
        m.d.sync += last.eq(self.busy)
        m.d.comb += self.done.eq(last & ~self.busy)  # the last word has come back and left
        with m.If(start):
            m.d.sync += [addr.eq(r.addr), to_issue.eq(r.words), to_receive.eq(r.words)]
        return m


class DMAWriter(wiring.Component):
    """``request`` (word address, words), then ``data`` (the words) -> memory.

    A word is taken from ``data`` as its write command is accepted and waits in a small
    FIFO for the controller to ask for it (LiteDRAM's native write protocol: data follows
    its command), as LiteDRAM's own ``LiteDRAMDMAWriter`` does.
    """

    def __init__(self, *, addr_bits: int, data_bits: int, words: int, depth: int = 16):
        self._words = words
        self._depth = depth
        super().__init__({
            "request": In(stream.Signature(dma_request(addr_bits))),
            "data": In(stream.Signature(data_bits)),
            "port": Out(native_port_signature(addr_bits, data_bits)),
            "busy": Out(1), "done": Out(1), "error": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        port = self.port
        bits = len(self.data.payload)
        m.submodules.fifo = fifo = StreamFIFO(bits, self._depth)
        addr = Signal.like(self.request.payload.addr)
        to_issue = Signal.like(self.request.payload.words)
        to_write = Signal.like(self.request.payload.words)
        can = (to_issue != 0) & self.data.valid & fifo.w.ready
        m.d.comb += [port.cmd.payload.we.eq(1), port.cmd.payload.addr.eq(addr),
                     port.cmd.valid.eq(can),
                     self.data.ready.eq(can & port.cmd.ready),
                     fifo.w.valid.eq(can & port.cmd.ready),
                     fifo.w.payload.eq(self.data.payload),
                     port.wdata.valid.eq(fifo.r.valid),
                     port.wdata.payload.data.eq(fifo.r.payload),
                     port.wdata.payload.we.eq((1 << (bits // 8)) - 1),
                     fifo.r.ready.eq(port.wdata.ready)]
        with m.If(port.cmd.valid & port.cmd.ready):
            m.d.sync += [addr.eq(addr + 1), to_issue.eq(to_issue - 1)]
        with m.If(port.wdata.valid & port.wdata.ready):
            m.d.sync += to_write.eq(to_write - 1)
        busy = (to_issue != 0) | (to_write != 0)
        r, pending, start = _take_request(m, self.request, busy, self._words, self.error)
        m.d.comb += self.busy.eq(busy | pending)
        last = Signal()
        m.d.sync += last.eq(busy)
        m.d.comb += self.done.eq(last & ~busy)  # the last word's data is taken
        with m.If(start):
            m.d.sync += [addr.eq(r.addr), to_issue.eq(r.words), to_write.eq(r.words)]
        return m


#: Cycles from a request being taken to ``error`` (or the start of the transfer).
CHECK_LATENCY = 2


def _take_request(m: Module, request, busy, words: int, error):
    """A request, registered: taken when idle, its end computed and compared against the
    memory's ``words`` the cycle after (registered), and decided the cycle after that
    (``CHECK_LATENCY``): refused (``error`` pulses) or started (``start``, with the request
    in ``r``). The bounds check's adder and compare start from registers and end in one:
    from the requester's logic through them to the counters was the critical path of the
    ULX3S build with its controller. Returns ``(r, pending, start)``."""
    r = Signal.like(request.payload)
    taken = Signal()  # r holds a request: its bounds are being checked
    checked = Signal()  # ... and ``beyond`` is its outcome
    beyond = Signal()
    pending = taken | checked
    m.d.comb += request.ready.eq(~busy & ~pending)
    m.d.sync += [taken.eq(request.valid & request.ready), checked.eq(taken),
                 beyond.eq(r.addr + r.words > words)]
    with m.If(request.valid & request.ready):
        m.d.sync += r.eq(request.payload)
    m.d.comb += error.eq(checked & beyond)
    return r, pending, checked & ~beyond
