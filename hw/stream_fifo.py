"""A FIFO between two streams of a layout: ``lib.fifo.SyncFIFO``'s ``w_stream`` and
``r_stream`` carry raw bits, so the layout's streams cannot be ``wiring.connect``-ed to them
directly; this component can be."""

from __future__ import annotations

from amaranth import Module, Shape
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
