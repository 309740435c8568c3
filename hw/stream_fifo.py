"""Stages between two streams of a layout. A FIFO: ``lib.fifo.SyncFIFO``'s ``w_stream`` and
``r_stream`` carry raw bits, so the layout's streams cannot be ``wiring.connect``-ed to them
directly; this component can be. Register stages: a stream's two ends registered apart, so
that place and route may put them far apart (``StreamRegister``, ``StreamSlice``)."""

from __future__ import annotations

from amaranth import Module, Shape, Signal
from amaranth.lib import fifo, stream, wiring
from amaranth.lib.wiring import In, Out


class StreamFIFO(wiring.Component):
    """``depth`` payloads of ``shape`` (any shape-castable: a layout, an int width).

    ``w``: the stream in; ``r``: the stream out; ``level``: payloads held. ``buffered``: the
    storage is read synchronously (``lib.fifo.SyncFIFOBuffered``), so that a deep FIFO maps
    to block RAM rather than LUT RAM (a 1024 x 128-bit FIFO is 3.6 k LUTs of LUT RAM on the
    Arty, 4 RAMB36 as block RAM).
    """

    def __init__(self, shape, depth: int, *, buffered: bool = False):
        self._shape = shape
        self._depth = depth
        self._buffered = buffered
        super().__init__({"w": In(stream.Signature(shape)), "r": Out(stream.Signature(shape)),
                          "level": Out(range(depth + 1))})

    @property
    def depth(self) -> int:
        return self._depth

    def elaborate(self, platform):
        m = Module()
        kind = fifo.SyncFIFOBuffered if self._buffered else fifo.SyncFIFO
        m.submodules.fifo = buf = kind(width=Shape.cast(self._shape).width, depth=self._depth)
        m.d.comb += [
            buf.w_stream.valid.eq(self.w.valid), buf.w_stream.payload.eq(self.w.payload),
            self.w.ready.eq(buf.w_stream.ready),
            self.r.valid.eq(buf.r_stream.valid), self.r.payload.eq(buf.r_stream.payload),
            buf.r_stream.ready.eq(self.r.ready),
            self.level.eq(buf.level),
        ]
        return m


class StreamRegister(wiring.Component):
    """A payload of ``shape`` held in one register between two streams, a place-and-route
    boundary: ``w.ready`` is the register's emptiness and ``r.valid`` its fullness, so neither
    side's handshake logic reaches the other's and the two may sit far apart on the die. It
    passes an item every other cycle at most (for sources no faster than that) and costs
    flip-flops, not LUTs: the register loads its input directly. ``flush`` empties it."""

    def __init__(self, shape):
        super().__init__({"w": In(stream.Signature(shape)), "r": Out(stream.Signature(shape)),
                          "flush": In(1)})

    def elaborate(self, platform):
        m = Module()
        m.d.comb += self.w.ready.eq(~self.r.valid)
        # the payload loads whenever the register is empty, so that its enable is the
        # register's own state (``r.payload`` means nothing until ``r.valid``); it has no
        # reset (only ``valid`` has), so that a reset costs it no logic
        held = Signal(self.w.payload.shape(), reset_less=True)
        m.d.comb += self.r.payload.eq(held)
        with m.If(~self.r.valid):
            m.d.sync += held.eq(self.w.payload)
        with m.If(self.flush):
            m.d.sync += self.r.valid.eq(0)
        with m.Elif(self.w.valid & ~self.r.valid):
            m.d.sync += self.r.valid.eq(1)
        with m.Elif(self.r.ready):
            m.d.sync += self.r.valid.eq(0)
        return m


class StreamSlice(wiring.Component):
    """A register slice (skid buffer) on a stream: ``o``'s valid and payload come from
    registers and so does ``i.ready``, so no combinational path crosses it either way. Full
    throughput (a payload a cycle), one cycle of latency. ``enable`` low: nothing is taken.

    Between the design and LiteDRAM's native ports (``hw.dram``), whose crossbar makes a
    port's ``cmd.ready`` from its ``cmd.valid`` and address: on the ULX3S, paths that ran
    from our logic through the crossbar and back were among the critical ones of the build
    with the controller; and on the design's side of the clock-domain crossings
    (``hw.dram_cdc``), in front of their FIFOs' pointer logic.
    """

    def __init__(self, shape):
        super().__init__({"i": In(stream.Signature(shape)), "o": Out(stream.Signature(shape)),
                          "enable": In(1, init=1)})

    def elaborate(self, platform):
        m = Module()
        i, o = self.i, self.o
        skid = Signal.like(i.payload)
        skid_valid = Signal()
        m.d.comb += i.ready.eq(~skid_valid & self.enable)
        take = i.valid & i.ready
        with m.If(~o.valid | o.ready):  # the output register is free this cycle
            with m.If(skid_valid):
                m.d.sync += [o.payload.eq(skid), skid_valid.eq(0)]
            with m.Else():
                m.d.sync += [o.payload.eq(i.payload), o.valid.eq(take)]
        with m.Elif(take):
            m.d.sync += [skid.eq(i.payload), skid_valid.eq(1)]
        return m
