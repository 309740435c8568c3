"""The link's way into external memory: WRITE_MEM / READ_MEM through LiteDRAM's native user
port, WRITE_CSR / READ_CSR on the controller's Wishbone control bus (``spec.protocol``).

A RESET does not reset the bridge: it is told (``abort``) and winds its job down itself,
so that the controller is never left owed a write's data or a read's word.

The executor (``hw.link.Executor``) starts a job with the command and its payload length,
streams the payload's bytes into ``data``, and waits for ``answer``. The bridge reads the
command's header (address, length or value), checks it against the memory, then moves the
data a native-port word at a time: WRITE_MEM's words go to the port as they are assembled,
READ_MEM's are written into the read buffer (``buf_*``), from which the transmitter sends
them as one MEM_DATA frame. A bad header is answered with an ERROR after the payload has
been drained; so is a controller that does not respond within ``timeout`` cycles (it blocks
its user port until the host has brought it up), so the device never hangs on it.
"""

from __future__ import annotations

from amaranth import Cat, Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from spec.protocol import MAX_PAYLOAD, Command, LinkError, MemFault, Reply

#: Cycles the bridge waits for the controller (or the control bus) before giving up: far
#: longer than any refresh or row change (tens of cycles), far shorter than the host's
#: reply timeout.
MEM_TIMEOUT_CYCLES = 1 << 16

PAYLOAD_ADDR_BITS = (MAX_PAYLOAD - 1).bit_length()


def native_port_signature(addr_bits: int, data_bits: int) -> wiring.Signature:
    """LiteDRAM's native user port, as streams (the core's ``user_port_*`` signals)."""
    return wiring.Signature({
        "cmd": Out(stream.Signature(data.StructLayout({"we": 1, "addr": addr_bits}))),
        "wdata": Out(stream.Signature(data.StructLayout({"data": data_bits,
                                                         "we": data_bits // 8}))),
        "rdata": In(stream.Signature(data_bits)),
    })


#: LiteDRAM's control bus (``wb_ctrl``): Wishbone classic, 32-bit, word addresses.
WISHBONE_SIGNATURE = wiring.Signature({
    "adr": Out(30), "dat_w": Out(32), "dat_r": In(32), "sel": Out(4), "cyc": Out(1),
    "stb": Out(1), "we": Out(1), "ack": In(1), "err": In(1),
})

def dma_request(addr_bits: int) -> data.StructLayout:
    """A DMA job (``hw.dma``): the first word's address and the number of words."""
    return data.StructLayout({"addr": addr_bits, "words": addr_bits + 1})


#: What the bridge answers a job with (the executor turns it into the reply frame).
MemAnswer = data.StructLayout({"kind": 8, "code": 8, "detail": 8, "value": 32, "length": 16})


class MemoryBridge(wiring.Component):
    """``start`` (a pulse, with ``command`` and ``length``: the payload's bytes) begins a job;
    ``data`` then carries the payload; ``answer`` offers the reply once it is done.

    ``size``: bytes of memory; ``port_bits``: the native port's data width.
    ``buf_busy`` is held high while the transmitter still sends the last MEM_DATA from the
    read buffer: a READ_MEM waits for it.
    """

    def __init__(self, *, size: int, port_bits: int, timeout: int = MEM_TIMEOUT_CYCLES,
                 copy_chunk: int = 1024):
        self._chunk = copy_chunk
        self.copy_chunk = copy_chunk
        self._size = size
        self._port_bytes = port_bits // 8
        self._words = size // self._port_bytes
        self._addr_bits = max(1, (self._words - 1).bit_length())
        self._timeout = timeout
        super().__init__({
            "start": In(1), "command": In(8), "length": In(16),
            "data": In(stream.Signature(8)),
            "answer": Out(stream.Signature(MemAnswer)),
            "port": Out(native_port_signature(self._addr_bits, port_bits)),
            "bus": Out(WISHBONE_SIGNATURE),
            "buf_addr": Out(PAYLOAD_ADDR_BITS), "buf_data": Out(8), "buf_en": Out(1),
            "buf_busy": In(1),
            "busy": Out(1),
            # a RESET (``abort``, a pulse): the bridge drops its job, but first finishes what
            # the controller is owed (a write's data, a read's word, a bus cycle, a DMA
            # chunk), so the controller is never left waiting; ``ready``: idle, a job may
            # start; ``flush``: empty the copy FIFO (a pulse, after an abort)
            "abort": In(1), "ready": Out(1), "flush": Out(1),
            # COPY_MEM: requests to the DMA reader and writer (``hw.dma``), whose words meet
            # in a FIFO of ``copy_chunk`` words; and the counts of what they did
            "rd_request": Out(stream.Signature(dma_request(self._addr_bits))),
            "rd_done": In(1), "rd_error": In(1),
            "wr_request": Out(stream.Signature(dma_request(self._addr_bits))),
            "wr_done": In(1), "wr_error": In(1),
            "dma_words": Out(32), "dma_read_cycles": Out(32), "dma_write_cycles": Out(32),
        })

    def elaborate(self, platform):
        m = Module()
        pb = self._port_bytes
        command = Signal(8)
        length = Signal(16)  # payload bytes still to come
        head = Signal(96)  # the header, shifted in from the top
        head_left = Signal(range(13))
        dst = Signal(32)  # COPY_MEM's destination
        chunk = Signal(self._addr_bits + 1)
        addr = Signal(32)
        count = Signal(32)  # WRITE_MEM: data bytes; READ_MEM: the length asked
        word = Signal(8 * pb)  # a native-port word, assembled or unpacked, a byte at a time
        fill = Signal(range(pb + 1))
        waddr = Signal(self._addr_bits)  # the word address being accessed
        left = Signal(32)  # words still to move
        out_at = Signal(PAYLOAD_ADDR_BITS + 1)  # READ_MEM: the next byte of the buffer
        wait = Signal(range(self._timeout + 1))
        fault_code = Signal(8)
        fault_detail = Signal(8)
        answer = self.answer
        with m.If(answer.ready):
            m.d.sync += answer.valid.eq(0)
        aborted = Signal()  # a RESET came: finish what the controller is owed, then idle

        def reply(kind, code=0, detail=0, value=0, length=0):
            # (the job of an aborted frame is not answered: its frame is gone)
            m.d.sync += [answer.valid.eq(~aborted), answer.payload.kind.eq(kind),
                         answer.payload.code.eq(code), answer.payload.detail.eq(detail),
                         answer.payload.value.eq(value), answer.payload.length.eq(length)]
            m.next = "IDLE"

        def fail(code, detail):
            """Remember the error; answer it once the rest of the payload is drained."""
            m.d.sync += [fault_code.eq(code), fault_detail.eq(detail)]
            m.next = "DRAIN"

        def waiting(detail):
            """A cycle waiting on the controller: give up after ``timeout``."""
            with m.If(wait == self._timeout):
                fail(LinkError.MEM_TIMEOUT, detail)
            with m.Else():
                m.d.sync += wait.eq(wait + 1)

        def issue_command(we, then):
            """Offer a command for ``waddr`` to the controller; on to ``then`` once taken."""
            m.d.comb += [port.cmd.valid.eq(1), port.cmd.payload.we.eq(we)]
            with m.If(port.cmd.ready):
                m.d.sync += wait.eq(0)
                m.next = then
            with m.Else():
                waiting(MemFault.COMMAND)

        headers = {Command.WRITE_MEM: 4, Command.READ_MEM: 8, Command.WRITE_CSR: 8,
                   Command.READ_CSR: 4, Command.COPY_MEM: 12}
        # The header's checks, registered a state at a time (on the ULX3S the adders and
        # compares in one cycle with the decision were the critical path): CHECK registers
        # the fields, CHECK_SUM the ends of the source and destination, CHECK_FLAGS every
        # check's outcome, and CHECK2 decides from those flags alone.
        end = Signal(33)
        dst_end = Signal(33)
        low = max(1, (pb - 1).bit_length())  # the byte-in-word bits of an address
        unaligned = Signal()  # the source (and a copy's destination) or the count
        beyond = Signal()  # past the end of the memory (the source or the destination)
        too_long = Signal()  # READ_MEM: more than a frame carries, or nothing
        port = self.port
        m.d.comb += [port.cmd.payload.addr.eq(waddr), port.wdata.payload.data.eq(word),
                     port.wdata.payload.we.eq((1 << pb) - 1),
                     self.bus.sel.eq(0b1111), self.bus.adr.eq(addr[2:]),
                     self.bus.dat_w.eq(head[64:96])]

        with m.FSM() as fsm:
            with m.State("IDLE"):
                with m.If(aborted):
                    m.d.comb += self.flush.eq(1)  # the copy FIFO: whatever a chunk left
                    m.d.sync += aborted.eq(0)
                with m.Elif(self.start):
                    m.d.sync += [command.eq(self.command), length.eq(self.length),
                                 head_left.eq(0), fill.eq(0), wait.eq(0)]
                    with m.Switch(self.command):
                        for cmd, n in headers.items():
                            with m.Case(cmd):
                                m.d.sync += head_left.eq(n)
                    m.next = "HEAD"
            with m.State("HEAD"):
                # the header's bytes, shifted in from the top (little-endian)
                with m.If(aborted):
                    m.next = "IDLE"
                with m.Elif(head_left == 0):
                    m.next = "CHECK"
                with m.Elif(length == 0):
                    fail(LinkError.MEM_RANGE, MemFault.TOO_LONG)  # the payload is too short
                with m.Else():
                    m.d.comb += self.data.ready.eq(1)
                    with m.If(self.data.valid):
                        m.d.sync += [head.eq(Cat(head[8:], self.data.payload)),
                                     head_left.eq(head_left - 1), length.eq(length - 1)]
            with m.State("CHECK"):
                # head holds the header in its top bytes: 4 bytes at [64:96], 8 at [32:96]
                with m.Switch(command):
                    with m.Case(Command.WRITE_MEM, Command.READ_CSR):
                        m.d.sync += [addr.eq(head[64:96]), count.eq(length)]
                    with m.Case(Command.COPY_MEM):
                        m.d.sync += [addr.eq(head[:32]), dst.eq(head[32:64]),
                                     count.eq(head[64:96])]
                    with m.Default():
                        m.d.sync += [addr.eq(head[32:64]), count.eq(head[64:96])]
                m.next = "CHECK_SUM"
            with m.State("CHECK_SUM"):
                m.d.sync += [end.eq(addr + count), dst_end.eq(dst + count)]
                m.next = "CHECK_FLAGS"
            with m.State("CHECK_FLAGS"):
                is_copy = command == Command.COPY_MEM
                m.d.sync += [
                    unaligned.eq(((addr[:low] != 0) | (count[:low] != 0)
                                  | (is_copy & (dst[:low] != 0))) if pb > 1 else 0),
                    beyond.eq((end > self._size) | (is_copy & (dst_end > self._size))),
                    too_long.eq((count > MAX_PAYLOAD) | (count == 0)),
                ]
                m.next = "CHECK2"
            with m.State("CHECK2"):
                m.d.sync += [waddr.eq(addr // pb if pb > 1 else addr),
                             left.eq(count // pb if pb > 1 else count), out_at.eq(0)]
                with m.Switch(command):
                    with m.Case(Command.WRITE_MEM, Command.READ_MEM):
                        with m.If((command == Command.READ_MEM) & (length != 0)):
                            fail(LinkError.MEM_RANGE, MemFault.TOO_LONG)
                        with m.Elif((command == Command.READ_MEM) & too_long):
                            fail(LinkError.MEM_RANGE, MemFault.TOO_LONG)
                        with m.Elif(unaligned):
                            fail(LinkError.MEM_RANGE, MemFault.UNALIGNED)
                        with m.Elif(beyond):
                            fail(LinkError.MEM_RANGE, MemFault.BEYOND_END)
                        with m.Elif(command == Command.WRITE_MEM):
                            m.next = "WR_FILL"
                        with m.Else():
                            m.next = "RD_WAIT_BUF"
                    with m.Case(Command.COPY_MEM):
                        with m.If(length != 0):
                            fail(LinkError.MEM_RANGE, MemFault.TOO_LONG)
                        with m.Elif(unaligned):
                            fail(LinkError.MEM_RANGE, MemFault.UNALIGNED)
                        with m.Elif(beyond):
                            fail(LinkError.MEM_RANGE, MemFault.BEYOND_END)
                        with m.Else():
                            m.d.sync += dst.eq(dst // pb if pb > 1 else dst)
                            m.next = "CP_READ"
                    with m.Default():  # the control bus
                        with m.If(length != 0):
                            fail(LinkError.MEM_RANGE, MemFault.TOO_LONG)
                        with m.Else():
                            m.next = "CSR"

            # ---- WRITE_MEM: assemble a word, then command and data
            with m.State("WR_FILL"):
                with m.If(aborted):
                    m.next = "IDLE"
                with m.Elif(left == 0):
                    reply(Reply.ACK)
                with m.Elif(fill == pb):
                    m.d.sync += [fill.eq(0), wait.eq(0)]
                    m.next = "WR_CMD"
                with m.Else():
                    m.d.comb += self.data.ready.eq(1)
                    with m.If(self.data.valid):
                        m.d.sync += [word.word_select(fill, 8).eq(self.data.payload),
                                     fill.eq(fill + 1), length.eq(length - 1)]
            with m.State("WR_CMD"):
                with m.If(aborted):
                    m.next = "IDLE"  # the command was not taken: nothing is owed
                with m.Else():
                    issue_command(1, "WR_DATA")
            with m.State("WR_DATA"):
                m.d.comb += port.wdata.valid.eq(1)
                with m.If(port.wdata.ready):
                    m.d.sync += [waddr.eq(waddr + 1), left.eq(left - 1)]
                    m.next = "WR_FILL"
                with m.Else():
                    waiting(MemFault.WRITE_DATA)

            # ---- READ_MEM: command, data, unpack into the buffer
            with m.State("RD_WAIT_BUF"):
                with m.If(aborted):
                    m.next = "IDLE"
                with m.Elif(~self.buf_busy):
                    m.d.sync += wait.eq(0)
                    m.next = "RD_CMD"
            with m.State("RD_CMD"):
                with m.If(aborted):
                    m.next = "IDLE"
                with m.Elif(left == 0):
                    reply(Reply.MEM_DATA, length=count)
                with m.Else():
                    issue_command(0, "RD_DATA")
            with m.State("RD_DATA"):
                m.d.comb += port.rdata.ready.eq(1)
                with m.If(port.rdata.valid):
                    m.d.sync += [word.eq(port.rdata.payload), fill.eq(0),
                                 waddr.eq(waddr + 1), left.eq(left - 1)]
                    m.next = "RD_UNPACK"
                with m.Else():
                    waiting(MemFault.READ_DATA)
            with m.State("RD_UNPACK"):
                # a byte at a time by index (shifting the word would put a multiplexer
                # before every bit: a word is 128 bits on the Arty)
                m.d.comb += [self.buf_en.eq(1), self.buf_addr.eq(out_at),
                             self.buf_data.eq(word.word_select(fill, 8))]
                m.d.sync += [fill.eq(fill + 1), out_at.eq(out_at + 1)]
                with m.If(fill == pb - 1):
                    m.d.sync += wait.eq(0)
                    m.next = "RD_CMD"

            # ---- COPY_MEM: a chunk read into the FIFO, then written out; cycles counted
            words_now = Signal.like(chunk)
            m.d.comb += words_now.eq(Mux(left > self._chunk, self._chunk, left))
            for name, req in (("CP_READ", self.rd_request), ("CP_WRITE", self.wr_request)):
                with m.State(name):
                    with m.If(aborted):
                        m.next = "IDLE"
                    with m.Elif(left == 0):
                        reply(Reply.ACK)
                    with m.Else():
                        is_read = name == "CP_READ"
                        m.d.comb += [req.valid.eq(1),
                                     req.payload.addr.eq(waddr if is_read else dst),
                                     req.payload.words.eq(words_now)]
                        with m.If(req.ready):
                            m.d.sync += [chunk.eq(words_now), wait.eq(0)]
                            m.next = name + "_WAIT"
            with m.State("CP_READ_WAIT"):
                m.d.sync += self.dma_read_cycles.eq(self.dma_read_cycles + 1)
                with m.If(self.rd_error):
                    fail(LinkError.MEM_RANGE, MemFault.BEYOND_END)
                with m.Elif(self.rd_done):
                    m.d.sync += waddr.eq(waddr + chunk)
                    m.next = "CP_WRITE"
                with m.Else():
                    waiting(MemFault.READ_DATA)
            with m.State("CP_WRITE_WAIT"):
                m.d.sync += self.dma_write_cycles.eq(self.dma_write_cycles + 1)
                with m.If(self.wr_error):
                    fail(LinkError.MEM_RANGE, MemFault.BEYOND_END)
                with m.Elif(self.wr_done):
                    m.d.sync += [dst.eq(dst + chunk), left.eq(left - chunk),
                                 self.dma_words.eq(self.dma_words + chunk)]
                    m.next = "CP_READ"
                with m.Else():
                    waiting(MemFault.WRITE_DATA)

            # ---- the control bus: one Wishbone classic cycle
            with m.State("CSR"):
                m.d.comb += [self.bus.cyc.eq(1), self.bus.stb.eq(1),
                             self.bus.we.eq(command == Command.WRITE_CSR)]
                with m.If(self.bus.ack | self.bus.err):
                    with m.If(command == Command.WRITE_CSR):
                        reply(Reply.ACK)
                    with m.Else():
                        reply(Reply.CSR_VALUE, value=self.bus.dat_r)
                with m.Else():
                    waiting(MemFault.CSR)

            # ---- an error: take the rest of the payload, then answer
            with m.State("DRAIN"):
                with m.If(aborted):
                    m.next = "IDLE"
                with m.Elif(length == 0):
                    reply(Reply.ERROR, fault_code, fault_detail)
                with m.Else():
                    m.d.comb += self.data.ready.eq(1)
                    with m.If(self.data.valid):
                        m.d.sync += length.eq(length - 1)
        m.d.comb += [self.busy.eq(~fsm.ongoing("IDLE") | answer.valid),
                     self.ready.eq(fsm.ongoing("IDLE") & ~aborted)]
        with m.If(self.abort):
            m.d.sync += [aborted.eq(1), answer.valid.eq(0)]
        return m

