"""Block RAMs of the engine and the link layer.

No buffer here is ever read and written at the same address in one cycle: the engine and
the link hand buffers over explicitly (load before run, ring slots, halves, input slots held
until their last read has left). A read-write collision therefore has no outcome worth
keeping, and ``no_rw_check`` tells yosys so. Without it, yosys keeps the read-first
semantics across ports by delaying the writes and putting a bypass multiplexer after every
block-RAM output; on an ECP5, whose EBR takes ~6 ns from clock to output, that multiplexer
was on the design's slowest paths.

yosys reads the attribute when it merges a read port's output register into the memory, so
reads go through :class:`RegisteredRead` (an asynchronous port and a register, which is what
a synchronous port is) rather than a synchronous port, which it would take as it comes.
"""

from __future__ import annotations

from amaranth import Module, Signal
from amaranth.lib import memory

#: Attributes of every block RAM (see the module docstring).
RAM_ATTRS = {"no_rw_check": 1}


def ram(*, shape, depth: int, block: bool = False) -> memory.Memory:
    """A zero-initialized memory whose ports never collide on one address. ``block``: in a
    block RAM however small (``ram_style``), where LUTs are scarcer than block RAMs."""
    attrs = {**RAM_ATTRS, "ram_style": "block"} if block else RAM_ATTRS
    return memory.Memory(shape=shape, depth=depth, init=[], attrs=attrs)


class RegisteredRead:
    """A read port whose ``data`` is ``mem[addr]`` one cycle after ``addr`` (see the module
    docstring); ``data`` has no reset."""

    def __init__(self, m: Module, mem: memory.Memory, name: str):
        port = mem.read_port(domain="comb")
        self.addr = port.addr
        self.data = Signal(port.data.shape(), name=f"{name}_data", reset_less=True)
        m.d.sync += self.data.eq(port.data)
