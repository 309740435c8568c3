"""The device's external memory from the host: bring-up, then reads and writes.

There is no CPU on the board, so the host does what LiteX's BIOS would: it plays LiteDRAM's
initialization sequence on the controller's DFI injector through the link's CSR bridge
(WRITE_CSR / READ_CSR), hands the memory to the controller and sets ``init_done``, which
unblocks the controller's user port. The sequence and the register addresses are LiteDRAM's
own, recorded per generated controller in ``spec/dram_data`` (``spec.dram``).

    acc.memory.write(0x1000, data)     # bytes, any address and length
    acc.memory.read(0x1000, 4096)      # -> bytes

WRITE_MEM and READ_MEM move whole native-port words (16 bytes on the Arty's DDR3, 2 on the
ULX3S's SDRAM); a write that starts or ends part-way into a word reads that word first.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from spec.dram import DramConfig, DramRecord, record, variant_config, variant_name
from spec.protocol import (
    MAX_PAYLOAD,
    MAX_WRITE_MEM,
    Command,
    Reply,
    pack_mem,
)

from .errors import DriverError, ProtocolError
from .leveling import DfiProbe, level_reads


class MemoryAccessError(DriverError):
    """A memory access the host refuses before sending it (out of range), or a memory that
    did not come up."""


@dataclass
class BringUp:
    """What bringing the memory up did (``info --json`` shows it)."""

    variant: str
    steps: int = 0  #: initialization commands played
    csr_writes: int = 0
    init_done: bool = False
    seconds: float = 0.0
    #: per byte lane, the read-leveling window found (DDR3 on a board; none in simulation,
    #: where LiteDRAM's PHY model has no delays to level)
    leveling: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    error: str | None = None  #: why the memory did not come up

    def to_dict(self) -> dict:
        return {"variant": self.variant, "init_done": self.init_done, "steps": self.steps,
                "csr_writes": self.csr_writes, "seconds": round(self.seconds, 3),
                "leveling": self.leveling, "notes": self.notes, "error": self.error}


class Memory:
    """The external memory of a connected device (``Accelerator.memory``)."""

    def __init__(self, acc, config: DramConfig, sim: bool):
        self._acc = acc
        self.config = config
        self.sim = sim
        self.variant = variant_name(config, sim)
        self.size = config.size
        self.word = config.port_bytes
        self.record: DramRecord = record(self.variant)
        self.bring_up_result: BringUp | None = None

    @classmethod
    def of(cls, acc) -> Memory | None:
        ident = acc.identity
        try:
            found = variant_config(ident.mem_variant)
        except ValueError as exc:
            raise ProtocolError(str(exc)) from None
        if found is None:
            return None
        config, sim = found
        if ident.mem_size != config.size or ident.mem_port_bits != config.port_bits:
            raise ProtocolError(
                f"the device reports {ident.mem_size} bytes of memory on a "
                f"{ident.mem_port_bits}-bit port, this host's record of "
                f"{variant_name(config, sim)} says {config.size} on {config.port_bits}")
        return cls(acc, config, sim)

    # -- the control bus -----------------------------------------------------------------
    def csr_write(self, name_or_addr, value: int) -> None:
        addr = self._csr(name_or_addr)
        self._acc._request(Command.WRITE_CSR, pack_mem(Command.WRITE_CSR, addr=addr,
                                                       value=value & 0xFFFFFFFF), Reply.ACK)

    def csr_read(self, name_or_addr) -> int:
        addr = self._csr(name_or_addr)
        frame = self._acc._request(Command.READ_CSR, pack_mem(Command.READ_CSR, addr=addr),
                                   Reply.CSR_VALUE)
        return int.from_bytes(frame.payload[:4], "little")

    def _csr(self, name_or_addr) -> int:
        if isinstance(name_or_addr, str):
            try:
                return self.record.csr[name_or_addr]
            except KeyError:
                raise MemoryAccessError(f"{self.variant} has no control register "
                                   f"{name_or_addr!r}") from None
        return int(name_or_addr)

    # -- bring-up ------------------------------------------------------------------------
    def bring_up_on_open(self) -> BringUp:
        """:meth:`bring_up`, for ``Accelerator.open``: a memory that does not come up (the
        leveling finds no window, ``init_done`` does not stick) is recorded, not raised, so
        the device still streams; a link that fails is raised."""
        try:
            return self.bring_up()
        except MemoryAccessError as exc:
            result = self.bring_up_result or BringUp(self.variant)
            result.error = str(exc)
            self.bring_up_result = result
            return result

    def bring_up(self) -> BringUp:
        """Initialize the memory (LiteDRAM's sequence), hand it to the controller, set
        ``init_done``. Idempotent: a memory that is up already is re-initialized, which
        keeps its contents on the PHY model and on a board (no reset pulse to the DRAM's
        array; the mode registers are written again)."""
        rec = self.record
        c = rec.constants
        result = BringUp(self.variant)
        start = time.monotonic()
        writes = 0

        def write(name, value):
            nonlocal writes
            self.csr_write(name, value)
            writes += 1

        write("ddrctrl_init_done", 0)
        # software control of the DFI: CKE, ODT and RESET_N as the sequence sets them
        write("sdram_dfii_control", c["dfii_control_cke"] | c["dfii_control_odt"]
              | c["dfii_control_reset_n"])
        for step in rec.init:
            write("sdram_dfii_pi0_address", step.address)
            write("sdram_dfii_pi0_baddress", step.bank)
            if step.control:
                write("sdram_dfii_control", step.bits)
            else:
                write("sdram_dfii_pi0_command", step.bits)
                write("sdram_dfii_pi0_command_issue", 1)
            if step.delay:
                time.sleep(step.delay / rec.clock_hz)
            result.steps += 1
        phy = rec.phy
        if phy.get("read_leveling"):
            # DDR3 on a board: find each byte lane's read window (LiteX BIOS's search)
            lanes = level_reads(DfiProbe(self), modules=phy["modules"],
                                delays=phy["delays"], bitslips=phy["bitslips"])
            result.leveling = [lane.to_dict() for lane in lanes]
            bad = [lane.module for lane in lanes if not lane.ok]
            if bad:
                write("sdram_dfii_control", c["dfii_control_sel"])
                self.bring_up_result = result
                raise MemoryAccessError(
                    f"{self.variant}: read leveling found no working window on byte "
                    f"lane(s) {', '.join(map(str, bad))}: the memory cannot be used")
            result.notes.append("read leveling is unverified on silicon (docs/memory.md)")
        write("sdram_dfii_control", c["dfii_control_sel"])  # hardware control
        write("ddrctrl_init_done", 1)
        result.init_done = self.csr_read("ddrctrl_init_done") == 1
        result.csr_writes = writes
        result.seconds = time.monotonic() - start
        self.bring_up_result = result
        if not result.init_done:
            raise MemoryAccessError(f"{self.variant}: init_done did not stick after bring-up")
        return result

    # -- data --------------------------------------------------------------------------
    def _check(self, addr: int, n: int, what: str) -> None:
        if addr < 0 or n < 0 or addr + n > self.size:
            raise MemoryAccessError(f"{what} of {n} bytes at {addr:#x} is beyond the memory "
                               f"({self.size:,} bytes, {self.variant})")

    def write(self, addr: int, data) -> None:
        """Write ``data`` (bytes-like) at byte address ``addr``."""
        data = bytes(data)
        self._check(addr, len(data), "write")
        if not data:
            return
        w = self.word
        lo = addr - addr % w
        hi = -(-(addr + len(data)) // w) * w
        if lo != addr or hi != addr + len(data):  # partial words at the edges: read them
            head = self.read(lo, w) if lo != addr else b""
            tail = self.read(hi - w, w) if hi != addr + len(data) else b""
            buf = bytearray(hi - lo)
            if head:
                buf[:w] = head
            if tail:
                buf[-w:] = tail
            buf[addr - lo:addr - lo + len(data)] = data
            data, addr = bytes(buf), lo
        chunk = MAX_WRITE_MEM // w * w
        frames = [(Command.WRITE_MEM,
                   pack_mem(Command.WRITE_MEM, addr=addr + i) + data[i:i + chunk])
                  for i in range(0, len(data), chunk)]
        self._acc._transact(frames, Reply.ACK)

    #: bytes per COPY_MEM frame: its answer comes when the copy is done, well within the
    #: link's timeout even on the simulated board
    COPY_FRAME = 1 << 20

    def copy(self, src: int, dst: int, n: int) -> dict:
        """Copy ``n`` bytes from ``src`` to ``dst`` with the device's DMA (whole words; the
        regions must not overlap). Returns the device's DMA counters for this copy: words,
        read cycles and write cycles."""
        w = self.word
        self._check(src, n, "copy source")
        self._check(dst, n, "copy destination")
        if src % w or dst % w or n % w:
            raise MemoryAccessError(f"copy of {n} bytes from {src:#x} to {dst:#x}: addresses "
                                    f"and length must be whole {w}-byte words")
        if src < dst + n and dst < src + n:
            raise MemoryAccessError(f"copy of {n} bytes from {src:#x} to {dst:#x}: the "
                                    "regions overlap")
        before = self._acc.counters()
        frames = [(Command.COPY_MEM, pack_mem(Command.COPY_MEM, src=src + i, dst=dst + i,
                                              length=min(self.COPY_FRAME, n - i)))
                  for i in range(0, n, self.COPY_FRAME)]
        self._acc._transact(frames, Reply.ACK)
        after = self._acc.counters()
        return {k: (after[k] - before[k]) & 0xFFFFFFFF
                for k in ("dma_words", "dma_read_cycles", "dma_write_cycles")}

    def read(self, addr: int, n: int) -> bytes:
        """``n`` bytes from byte address ``addr``."""
        self._check(addr, n, "read")
        if n == 0:
            return b""
        w = self.word
        lo = addr - addr % w
        hi = -(-(addr + n) // w) * w
        chunk = MAX_PAYLOAD // w * w
        frames = [(Command.READ_MEM, pack_mem(Command.READ_MEM, addr=a,
                                              length=min(chunk, hi - a)))
                  for a in range(lo, hi, chunk)]
        replies = self._acc._transact(frames, Reply.MEM_DATA)
        data = b"".join(r.payload for r in replies)
        if len(data) != hi - lo:
            raise ProtocolError(f"READ_MEM returned {len(data)} bytes, {hi - lo} asked")
        return data[addr - lo:addr - lo + n]

