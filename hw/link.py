"""The link layer in gateware: frames in, engine streams, frames out (``spec.protocol``).

``FrameReceiver`` checks each frame's header and payload CRC and stores its payload in one
of ``RX_SLOTS`` frame buffers; ``Executor`` plays stored frames, in order, into the engine's
streams (or answers IDENTIFY / READ_COUNTERS); ``OutputFramer`` packs the engine's output
into OUTPUT frames and closes each run with DONE; ``Transmitter`` sends replies and those
frames with their CRCs. The receiver accepts a byte every cycle and never stalls (a UART has
no backpressure): the host's window of ``RX_SLOTS`` unanswered frames keeps buffers free.
"""

from __future__ import annotations

import struct

from amaranth import Cat, Const, Module, Mux, Signal, Value, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.crc.catalog import CRC16_CCITT_FALSE
from amaranth.lib.wiring import In, Out

from spec.protocol import (
    DONE_FIELDS,
    ENGINE_STREAMS,
    ERROR_FIELDS,
    HEADER_BYTES,
    HEADER_CRC_COVERS,
    HEADER_FIELDS,
    MAX_PAYLOAD,
    MEM_COMMANDS,
    RUN_PROGRAM_BYTES,
    RX_SLOTS,
    SYNC,
    Busy,
    Command,
    LinkError,
    Reply,
    field_offsets,
    fields_size,
)

from .memory_bridge import MemAnswer

LEN_BITS = 16
SLOT_BITS = (RX_SLOTS - 1).bit_length()
PAYLOAD_ADDR_BITS = (MAX_PAYLOAD - 1).bit_length()


def crc16(data_bytes: int = 1):
    """The protocol's CRC (``spec.protocol``: CRC-16/CCITT-FALSE) over ``data_bytes`` bytes a
    cycle, the first byte in the word's top bits (the algorithm takes words MSB first)."""
    return CRC16_CCITT_FALSE(data_width=8 * data_bytes).create()


FrameMeta = data.StructLayout({"kind": 8, "seq": 8, "length": LEN_BITS, "slot": SLOT_BITS or 1})
#: A reply to send: its kind and SEQ; ERROR's code and detail; CSR_VALUE's word; MEM_DATA's
#: length (its bytes are in the memory bridge's read buffer).
ReplyReq = data.StructLayout({"kind": 8, "seq": 8, "code": 8, "detail": 8, "value": 32,
                              "length": LEN_BITS})

_COMMANDS = [c.value for c in Command]
_NO_PAYLOAD = [Command.IDENTIFY, Command.READ_COUNTERS, Command.RESET]


class FrameReceiver(wiring.Component):
    """Hunts for SYNC, checks the header CRC, stores a good frame's payload, checks its CRC.

    ``commit`` offers each intact frame (its slot then holds the payload); ``reply`` offers
    error replies; ``reset`` pulses on an intact RESET frame (``reset_seq`` its sequence,
    valid with the pulse).
    ``item_bytes`` maps data commands to their item size: a payload must hold whole items.
    A frame whose line stays idle for ``idle_cycles`` before its last byte is dropped
    (ERROR TIMEOUT, ``timeout`` pulses) and the hunt starts again: otherwise a host that
    died mid-frame would leave the receiver counting every later byte, RESETs included,
    as that frame's payload. ``receiving`` is high while a frame is under way.
    """

    def __init__(self, item_bytes: dict[int, int], idle_cycles: int):
        self._items = {int(k): v for k, v in item_bytes.items()}
        if idle_cycles < 1:
            raise ValueError(f"idle_cycles={idle_cycles}: at least 1")
        self._idle = idle_cycles
        super().__init__({
            "rx": In(stream.Signature(8)),
            "slot_free": In(RX_SLOTS),
            "wr_addr": Out(SLOT_BITS + PAYLOAD_ADDR_BITS),
            "wr_data": Out(8),
            "wr_en": Out(1),
            "commit": Out(stream.Signature(FrameMeta)),
            "reply": Out(stream.Signature(ReplyReq)),
            "reset": Out(1),
            "reset_seq": Out(8),
            "good_frame": Out(1),
            "bad_crc": Out(1),
            "bad_header": Out(1),
            "timeout": Out(1),
            "receiving": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        rx = self.rx
        m.d.comb += rx.ready.eq(1)  # never stalls
        byte = rx.payload
        m.submodules.payload_crc = payload_crc = crc16()
        m.d.comb += payload_crc.data.eq(byte)
        crc = payload_crc.crc
        kind = Signal(8)
        seq = Signal(8)
        length = Signal(LEN_BITS)
        count = Signal(LEN_BITS)
        got = Signal(8)
        item = Signal(range(max(self._items.values()) + 1))
        item_size = Signal.like(item)
        slot = Signal(SLOT_BITS or 1)
        expected = Signal(8)  # the SEQ of the next frame in order
        # offered replies and commits are held until taken (the core buffers them)
        with m.If(self.reply.ready):
            m.d.sync += self.reply.valid.eq(0)
        with m.If(self.commit.ready):
            m.d.sync += self.commit.valid.eq(0)

        def reply(code, detail=0):
            reply_seq(m, self, w_seq, code, detail)

        # The last HEADER_BYTES bytes ``window`` (newest last) and the byte arriving now form
        # the candidate header (window[1:], byte): the header fields, then their CRC.
        # Everything about it but its last byte is worked out from registers a cycle ahead,
        # so the check on the arriving byte is one 16-bit compare.
        window = [Signal(8, name=f"win{i}") for i in range(HEADER_BYTES)]
        filled = Signal(range(HEADER_BYTES + 1))
        full = HEADER_BYTES - 1  # bytes of the candidate already in the window
        cand = window[1:]
        # CRC of the candidate's fields, registered
        m.submodules.head_crc = head = crc16(HEADER_CRC_COVERS)
        new = window[1:] + [byte]
        m.d.comb += head.data.eq(Cat(*reversed(new[1:1 + HEADER_CRC_COVERS])))
        head_crc = head.crc
        header = Signal()
        at = field_offsets(HEADER_FIELDS)
        m.d.comb += header.eq((filled >= full) & (cand[at["sync"]] == SYNC)
                              & (Cat(*cand[HEADER_CRC_COVERS:], byte) == head_crc))
        w_kind, w_seq = cand[at["kind"]], cand[at["seq"]]
        w_length = Cat(*cand[at["length"]:at["length"] + 2])

        known = Cat(w_kind == c for c in _COMMANDS).any()
        no_payload = Cat(w_kind == c for c in _NO_PAYLOAD).any()
        with m.Switch(kind):
            for cmd, size in self._items.items():
                with m.Case(cmd):
                    m.d.comb += item_size.eq(size)
            with m.Default():
                m.d.comb += item_size.eq(1)
        slot_ok = self.slot_free.bit_select(slot, 1)

        m.d.comb += [self.wr_addr.eq(Cat(count[:PAYLOAD_ADDR_BITS], slot)),
                     self.wr_data.eq(byte)]
        # idle cycles since the frame's last byte; ``expired`` is registered, so the count's
        # compare is off the byte path
        idle = Signal(range(self._idle + 1))
        expired = Signal()
        m.d.sync += expired.eq(idle == self._idle - 1)

        def idle_line():
            """A cycle with no byte mid-frame."""
            with m.If(expired):
                # the frame was cut short: drop it (its slot stays free, ``expected`` as it
                # was) and tell a host that may still be there, which then sends it again
                m.d.comb += self.timeout.eq(1)
                m.d.sync += idle.eq(0)
                reply_seq(m, self, seq, LinkError.TIMEOUT)
                m.next = "HUNT"
            with m.Else():
                m.d.sync += idle.eq(idle + 1)

        with m.FSM() as fsm:
            with m.State("HUNT"):
                with m.If(rx.valid):
                    m.d.comb += [payload_crc.start.eq(1), head.start.eq(1), head.valid.eq(1)]
                    m.d.sync += [w.eq(n) for w, n in zip(window, new, strict=True)]
                    m.d.sync += [filled.eq(Mux(filled < HEADER_BYTES, filled + 1, HEADER_BYTES)),
                                 count.eq(0),
                                 item.eq(0), kind.eq(w_kind), seq.eq(w_seq),
                                 length.eq(w_length)]
                    with m.If(~header):
                        with m.If((filled >= full) & (cand[at["sync"]] == SYNC)):
                            m.d.comb += self.bad_header.eq(1)
                    with m.Else():
                        m.d.sync += [filled.eq(0), idle.eq(0)]  # a header consumes its bytes
                        with m.If(~known):
                            reply(LinkError.UNKNOWN_COMMAND)
                        with m.Elif((w_length > MAX_PAYLOAD) | (no_payload & (w_length != 0))
                                    | (~no_payload & (w_length == 0))):
                            reply(LinkError.BAD_LENGTH)
                        with m.Elif((w_kind != Command.RESET) & (w_seq != expected)):
                            reply(LinkError.SEQUENCE, expected)
                        with m.Elif((w_kind != Command.RESET) & ~slot_ok):
                            reply(LinkError.NO_BUFFER)
                        with m.Elif(w_length == 0):
                            m.next = "PCRC0"
                        with m.Else():
                            m.next = "PAYLOAD"
            with m.State("PAYLOAD"):
                with m.If(rx.valid):
                    m.d.sync += idle.eq(0)
                    m.d.comb += [self.wr_en.eq(1), payload_crc.valid.eq(1)]
                    m.d.sync += [count.eq(count + 1),
                                 item.eq(Mux(item + 1 == item_size, 0, item + 1))]
                    with m.If(count + 1 == length):
                        m.next = "PCRC0"
                with m.Else():
                    idle_line()
            with m.State("PCRC0"):
                with m.If(rx.valid):
                    m.d.sync += [got.eq(byte), idle.eq(0)]
                    m.next = "PCRC1"
                with m.Else():
                    idle_line()
            with m.State("PCRC1"):
                with m.If(rx.valid):
                    m.d.sync += idle.eq(0)
                    with m.If(Cat(got, byte) != crc):
                        m.d.comb += self.bad_crc.eq(1)
                        reply_seq(m, self, seq, LinkError.BAD_CRC)
                    with m.Elif(item != 0):
                        reply_seq(m, self, seq, LinkError.BAD_LENGTH)
                    with m.Elif(kind == Command.RESET):
                        m.d.comb += [self.reset.eq(1), self.good_frame.eq(1),
                                     self.reset_seq.eq(seq)]
                        m.d.sync += expected.eq(seq + 1)
                    with m.Else():
                        m.d.comb += self.good_frame.eq(1)
                        m.d.sync += expected.eq(seq + 1)
                        m.d.sync += [self.commit.valid.eq(1), self.commit.payload.kind.eq(kind),
                                     self.commit.payload.seq.eq(seq),
                                     self.commit.payload.length.eq(length),
                                     self.commit.payload.slot.eq(slot)]
                        if RX_SLOTS > 1:
                            m.d.sync += slot.eq(slot + 1)
                    m.next = "HUNT"
                with m.Else():
                    idle_line()
        m.d.comb += self.receiving.eq(~fsm.ongoing("HUNT"))
        return m


def reply_seq(m, rx, seq, code, detail=0):
    """Offer an ERROR reply for frame ``seq`` on ``rx.reply``."""
    m.d.sync += [rx.reply.valid.eq(1), rx.reply.payload.kind.eq(Reply.ERROR),
                 rx.reply.payload.seq.eq(seq), rx.reply.payload.code.eq(code),
                 rx.reply.payload.detail.eq(detail)]


class Executor(wiring.Component):
    """Plays stored frames, in order, into the engine's streams; answers each frame.

    Data frames are read a byte at a time from their buffer and assembled into items
    (little-endian) for the matching engine stream. A CONFIGURE frame is answered once the
    engine has accepted or refused the configuration. An engine stream that takes nothing
    for ``stall_cycles`` drops the rest of the frame (ERROR STALL), so a host that sends
    frames out of order gets an answer, never a hung device. Any ``progress`` of the engine
    (a beat taken or given on any stream) restarts the count: only a deadlock times out.

    Memory commands (``memory=True``) stream their payload's bytes to the memory bridge
    (``mem_*``; started by a ``mem_start`` pulse) and are answered with what the bridge
    answers (``mem_answer``): it always answers, its own waits time out. Without memory they
    are refused (ERROR NO_MEMORY).
    """

    def __init__(self, engine_streams: dict[int, int], stall_cycles: int, *,
                 memory: bool = False):
        # engine_streams: command -> item width in bits
        self._streams = {int(k): v for k, v in engine_streams.items()}
        self._memory = memory
        if memory:
            self._streams.update({int(c): 8 for c in MEM_COMMANDS})
            self._streams[int(Command.RUN_PROGRAM)] = 8 * RUN_PROGRAM_BYTES
        self._stall = stall_cycles
        item_bytes = max(-(-w // 8) for w in self._streams.values())
        members = {
            "job": In(stream.Signature(FrameMeta)),
            "rd_addr": Out(SLOT_BITS + PAYLOAD_ADDR_BITS),
            "rd_data": In(8),
            "release": Out(RX_SLOTS),  # pulses: this frame buffer is free again
            "reply": Out(stream.Signature(ReplyReq)),
            "accepted": In(1),  # the engine accepted a configuration (pulse)
            "refused": In(1),  # the engine refused one (pulse); its code on ``error``
            "error": In(8),
            "progress": In(1),
            # nothing handed on is still on its way: a frame is answered only then
            "drained": In(1),
            "stalled": Out(1),
            "idle": Out(1),
        }
        for cmd, width in self._streams.items():
            members[f"s{cmd}"] = Out(stream.Signature(unsigned(width)))
        if memory:
            members.update({"mem_start": Out(1), "mem_ready": In(1), "mem_command": Out(8),
                            "mem_length": Out(LEN_BITS),
                            "mem_answer": In(stream.Signature(MemAnswer)),
                            # the layer sequencer runs a program / the engine is in a run
                            "program_active": In(1), "engine_busy": In(1)})
        self._item_bits = 8 * item_bytes
        super().__init__(members)

    def stream_for(self, command: int):
        return getattr(self, f"s{int(command)}")

    def _busy_refusal(self, kind):
        """While a program runs, the engine is its own and the DMA too: streaming commands,
        COPY_MEM and another RUN_PROGRAM are refused (the other memory commands go on)."""
        if not self._memory:
            return Const(0)
        taken = [Command.COPY_MEM, Command.RUN_PROGRAM, *ENGINE_STREAMS]
        return self.program_active & Cat(kind == c for c in taken).any()

    def _engine_refusal(self, kind):
        """A program does not start while a streamed run is part-way through."""
        if not self._memory:
            return Const(0)
        return self.engine_busy & (kind == Command.RUN_PROGRAM)

    def elaborate(self, platform):
        m = Module()
        job = Signal(FrameMeta)
        index = Signal(LEN_BITS)
        item = Signal(self._item_bits, reset_less=True)  # data; ``fill`` says how much
        item_fill = Signal(range(self._item_bits // 8 + 1))
        stall = Signal(range(self._stall + 1))
        with m.If(self.reply.ready):
            m.d.sync += self.reply.valid.eq(0)

        def answer(kind, code=0, detail=0, value=0, length=0):
            m.d.sync += [self.reply.valid.eq(1), self.reply.payload.kind.eq(kind),
                         self.reply.payload.seq.eq(job.seq), self.reply.payload.code.eq(code),
                         self.reply.payload.detail.eq(detail),
                         self.reply.payload.value.eq(value),
                         self.reply.payload.length.eq(length)]

        def release():
            m.d.comb += self.release.eq(1 << job.slot if RX_SLOTS > 1 else 1)

        def finish(kind, code=0, detail=0, value=0, length=0):
            answer(kind, code, detail, value, length)
            release()
            m.next = "IDLE"

        def count_stall(progress):
            """Drop the frame once ``stall`` reaches the limit; ``progress`` restarts it."""
            with m.If(stall == self._stall):
                m.d.comb += self.stalled.eq(1)
                m.d.sync += offering.eq(0)  # (declared below) the item is dropped with it
                finish(Reply.ERROR, LinkError.STALL)
            with m.Else():
                m.d.sync += stall.eq(Mux(progress, 0, stall + 1))

        # the job's item size and stream, decoded into registers in DISPATCH
        item_bytes = Signal(range(self._item_bits // 8 + 1))
        with m.Switch(job.kind):
            for cmd, width in self._streams.items():
                with m.Case(cmd):
                    m.d.sync += item_bytes.eq(-(-width // 8))
            with m.Default():
                m.d.sync += item_bytes.eq(1)
        selected = {cmd: Signal(name=f"sel{cmd}") for cmd in self._streams}
        for cmd, sel in selected.items():
            m.d.sync += sel.eq(job.kind == cmd)
        m.d.comb += self.rd_addr.eq(Cat(index[:PAYLOAD_ADDR_BITS], job.slot))

        # the stream of the current job offers the assembled item. The executor acts on a
        # taken item a cycle later (``taken_r``), not offering it meanwhile: the sinks'
        # ``ready`` (the memory bridge's; the engine's streams now meet a register of the
        # core's first) then reaches only that register, not the executor's decisions (a
        # critical path on the ECP5). Bytes come far slower than the cycle this costs an item.
        # ``offering`` is a register of its own, set as the item completes and cleared a
        # cycle after it is taken (or as the frame is dropped): a stream's valid is three
        # registers ANDed (``offering``, not ``taken_r``, the stream selected), not the FSM's
        # state through the stream select, and a sink's ready reaches ``taken_r`` alone (the
        # ULX3S's critical paths went from the state through the engine's ready and back)
        offering = Signal()
        taken = Signal()
        taken_r = Signal()
        m.d.sync += taken_r.eq(taken)
        with m.If(taken_r):
            m.d.sync += offering.eq(0)
        for cmd, width in self._streams.items():
            s = self.stream_for(cmd)
            low = self._item_bits - 8 * -(-width // 8)
            m.d.comb += [s.payload.eq(item[low:low + width]),
                         s.valid.eq(offering & ~taken_r & selected[cmd])]
            with m.If(selected[cmd]):
                m.d.comb += taken.eq(s.valid & s.ready)

        # Bytes stream from the frame buffer one per cycle (the read lands a cycle later),
        # shifting into ``item``; a complete item is offered, and reading pauses meanwhile.
        pending = Signal()  # a byte read last cycle arrives now
        fill = item_fill
        full = Signal()  # fill == item_bytes, kept as a register
        read = Signal()
        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += [self.job.ready.eq(~self.reply.valid), self.idle.eq(1)]
                with m.If(self.job.valid & ~self.reply.valid):
                    m.d.sync += [job.eq(self.job.payload), index.eq(0), item_fill.eq(0),
                                 full.eq(0), stall.eq(0), pending.eq(0)]
                    m.next = "DISPATCH"
            with m.State("DISPATCH"):
                with m.If(job.kind == Command.IDENTIFY):
                    finish(Reply.IDENTITY)
                with m.Elif(job.kind == Command.READ_COUNTERS):
                    finish(Reply.COUNTERS)
                with m.Elif((job.kind == Command.CONFIGURE)
                            & (job.length != -(-self._streams[Command.CONFIGURE] // 8))):
                    finish(Reply.ERROR, LinkError.BAD_LENGTH)
                with m.Elif(self._busy_refusal(job.kind)):
                    finish(Reply.ERROR, LinkError.BUSY, Busy.PROGRAM)
                with m.Elif(self._engine_refusal(job.kind)):
                    finish(Reply.ERROR, LinkError.BUSY, Busy.ENGINE)
                with m.Elif((job.kind == Command.RUN_PROGRAM)
                            & (job.length != RUN_PROGRAM_BYTES)):
                    finish(Reply.ERROR, LinkError.BAD_LENGTH)
                with m.Elif(Cat(job.kind == c for c in MEM_COMMANDS).any()):
                    if self._memory:
                        # the bridge may still be winding down a job a RESET cut short
                        with m.If(self.mem_ready):
                            m.d.comb += [self.mem_start.eq(1), self.mem_command.eq(job.kind),
                                         self.mem_length.eq(job.length)]
                            m.next = "STREAM"
                    else:
                        finish(Reply.ERROR, LinkError.NO_MEMORY)
                with m.Else():
                    m.next = "STREAM"
            with m.State("STREAM"):
                m.d.comb += read.eq((index < job.length) & (fill + pending < item_bytes))
                m.d.sync += pending.eq(read)
                with m.If(read):
                    m.d.sync += index.eq(index + 1)
                with m.If(pending):
                    # bytes shift in from the top: an item of n bytes ends in the top n bytes
                    m.d.sync += [item.eq(Cat(item[8:], self.rd_data)), fill.eq(fill + 1),
                                 full.eq(fill + 1 == item_bytes),
                                 offering.eq(fill + 1 == item_bytes)]
                with m.If(full):
                    with m.If(taken_r):
                        m.d.sync += [fill.eq(0), full.eq(0), stall.eq(0)]
                        with m.If(job.kind == Command.CONFIGURE):
                            m.next = "VERDICT"
                        with m.Elif(index == job.length):
                            if self._memory:
                                with m.If(Cat(job.kind == c for c in MEM_COMMANDS).any()):
                                    m.next = "MEMORY"
                                with m.Else():
                                    m.next = "DRAIN"
                            else:
                                m.next = "DRAIN"
                    with m.Else():
                        count_stall(self.progress)
            with m.State("DRAIN"):  # the last item reaches the engine before the answer
                with m.If(self.drained):
                    finish(Reply.ACK)
                with m.Else():
                    count_stall(self.progress)
            if self._memory:
                with m.State("MEMORY"):  # the bridge finishes the job and answers
                    a = self.mem_answer.payload
                    m.d.comb += self.mem_answer.ready.eq(1)
                    with m.If(self.mem_answer.valid):
                        finish(a.kind, a.code, a.detail, a.value, a.length)
            with m.State("VERDICT"):  # the engine checks the configuration
                with m.If(self.accepted):
                    finish(Reply.ACK)
                with m.Elif(self.refused):
                    finish(Reply.ERROR, LinkError.CONFIG, self.error)
                with m.Else():
                    count_stall(0)
        return m


#: A transmitter job: an OUTPUT frame from a buffer half, or a DONE frame whose payload
#: fields (``DONE_FIELDS``, in order) ride along.
TxJob = data.StructLayout({"kind": 8, "seq": 8, "length": LEN_BITS, "half": 1,
                           "error": 8, "cycles": 32, "compute": 32, "runs": 16})


class OutputFramer(wiring.Component):
    """Packs the engine's output values into OUTPUT frames; closes each run with DONE.

    Values go into one half of a double buffer of ``MAX_PAYLOAD``-byte halves; a full half
    (or the last bytes of a run) becomes a frame job for the transmitter, which returns the
    half when sent. While both halves wait, the engine's output waits too.
    """

    def __init__(self, value_bits: int):
        self._bits = value_bits
        self._bytes = -(-value_bits // 8)
        assert MAX_PAYLOAD % self._bytes == 0
        super().__init__({
            "values": In(stream.Signature(signed(value_bits))),
            "run_done": In(1),  # pulse: the engine finished (or refused) a configuration
            "error": In(8), "cycles": In(32), "compute": In(32), "runs": In(16),
            "job": Out(stream.Signature(TxJob)),
            "wr_addr": Out(1 + PAYLOAD_ADDR_BITS), "wr_data": Out(8), "wr_en": Out(1),
            "half_free": In(2),
        })

    def elaborate(self, platform):
        m = Module()
        half = Signal()
        fill = Signal(range(MAX_PAYLOAD + 1))
        seq = Signal(8)
        value = Signal(8 * self._bytes)
        part = Signal(range(self._bytes + 1))  # bytes of ``value`` still to write
        done_pending = Signal()
        done = Signal(TxJob)
        with m.If(self.job.ready):
            m.d.sync += self.job.valid.eq(0)
        with m.If(self.run_done):
            m.d.sync += [done_pending.eq(1), done.kind.eq(Reply.DONE), done.error.eq(self.error),
                         done.cycles.eq(self.cycles), done.compute.eq(self.compute),
                         done.runs.eq(self.runs)]
        half_ok = self.half_free.bit_select(half, 1)
        m.d.comb += [self.wr_addr.eq(Cat(fill[:PAYLOAD_ADDR_BITS], half)),
                     self.wr_data.eq(value[:8])]

        def post(kind, length):
            m.d.sync += [self.job.valid.eq(1), self.job.payload.kind.eq(kind),
                         self.job.payload.seq.eq(seq), self.job.payload.length.eq(length),
                         self.job.payload.half.eq(half), seq.eq(seq + 1)]

        busy = self.job.valid
        # whether the half is full, or has anything: flags kept beside the count, so that
        # the decision below compares no count (the fill count into the frame job was the
        # ULX3S's critical path)
        full = Signal()
        nonempty = Signal()
        with m.If(part != 0):
            # write the value's bytes, low first
            m.d.comb += self.wr_en.eq(1)
            m.d.sync += [value.eq(value >> 8), part.eq(part - 1), fill.eq(fill + 1),
                         full.eq(fill == MAX_PAYLOAD - 1), nonempty.eq(1)]
        with m.Elif(busy):
            pass
        with m.Elif(full):
            post(Reply.OUTPUT, MAX_PAYLOAD)
            m.d.sync += [half.eq(~half), fill.eq(0), full.eq(0), nonempty.eq(0)]
        with m.Elif(done_pending & nonempty):
            post(Reply.OUTPUT, fill)
            m.d.sync += [half.eq(~half), fill.eq(0), full.eq(0), nonempty.eq(0)]
        with m.Elif(done_pending):
            m.d.sync += [self.job.valid.eq(1), self.job.payload.eq(done),
                         self.job.payload.seq.eq(seq), seq.eq(seq + 1), done_pending.eq(0)]
        with m.Elif(half_ok):
            m.d.comb += self.values.ready.eq(1)
            with m.If(self.values.valid):
                m.d.sync += [value.eq(self.values.payload), part.eq(self._bytes)]
        return m


class Transmitter(wiring.Component):
    """Sends reply frames and the framer's jobs, computing both CRCs on the fly.

    Replies (small, from ``replies``) go first. Payloads: ERROR ``[code, detail]``; IDENTITY
    the ``identity`` bytes (a constant: each byte chosen by its offset, no register); COUNTERS
    the ``counters`` value, latched when the frame starts (a register loaded whole, read a
    byte at a time by offset: a shift register's per-bit load-or-shift multiplexer would cost
    a LUT a bit);
    DONE ``DONE_FIELDS``; OUTPUT from the output buffer half, which is returned
    on ``release`` once sent; CSR_VALUE the reply's word; MEM_DATA the reply's length of
    bytes from the memory bridge's read buffer (``mem_rd_*``), handed back on ``mem_release``
    once sent.
    """

    def __init__(self, identity: bytes, counters_bits: int):
        self._identity = identity
        self._counters_bits = counters_bits
        super().__init__({
            "replies": In(stream.Signature(ReplyReq)),
            "jobs": In(stream.Signature(TxJob)),
            "tx": Out(stream.Signature(8)),
            "rd_addr": Out(1 + PAYLOAD_ADDR_BITS), "rd_data": In(8),
            "release": Out(2),
            "mem_rd_addr": Out(PAYLOAD_ADDR_BITS), "mem_rd_data": In(8),
            "mem_release": Out(1),
            "counters": In(counters_bits),
            "idle": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        kind = Signal(8)
        seq = Signal(8)
        length = Signal(LEN_BITS)
        end = Signal(LEN_BITS + 1)  # index of the first CRC byte: HEADER_BYTES + length
        job = Signal(TxJob)
        is_output = Signal()
        is_mem = Signal()
        is_job = Signal()
        code = Signal(8)
        detail = Signal(8)
        value = Signal(32)
        # ERROR, CSR_VALUE and DONE payloads, as one little-endian value, shifted out
        small = Signal(max(8 * fields_size(DONE_FIELDS), 8 * fields_size(ERROR_FIELDS), 32),
                       reset_less=True)  # data, loaded before it is sent
        # COUNTERS: the snapshot, and the payload bytes prepared so far (its byte offset)
        snap = Signal(self._counters_bits, reset_less=True)
        pbyte = Signal(range(max(self._counters_bits // 8, len(self._identity)) + 1))
        index = Signal(LEN_BITS + 4)  # byte of the frame being sent
        m.submodules.crc = crc_unit = crc16()
        crc = crc_unit.crc
        out = Signal(8)
        identity = Const(int.from_bytes(self._identity, "little"), 8 * len(self._identity))
        # a byte beyond either (never sent: the lengths stop short of it) reads as 0
        id_byte = Mux(pbyte < len(self._identity), identity.word_select(pbyte, 8), 0)
        snap_byte = Mux(pbyte < len(snap) // 8, snap.word_select(pbyte, 8), 0)
        n_counters = self._counters_bits // 8
        lengths = {Reply.ACK: 0, Reply.ERROR: fields_size(ERROR_FIELDS),
                   Reply.IDENTITY: len(self._identity),
                   Reply.COUNTERS: n_counters, Reply.CSR_VALUE: 4}

        # Each byte is prepared into ``out`` (PREP), then offered (SEND). Every path starts
        # and ends in a register, and the wide ``small`` register's enables come straight
        # from flip-flops. The buffer is always addressed at the next byte's offset, and its
        # output registered (``rd_q``): by the next PREP, ``rd_q`` holds that byte.
        at = (index - (HEADER_BYTES - 1))[:PAYLOAD_ADDR_BITS]
        m.d.comb += [self.rd_addr.eq(Cat(at, job.half)), self.mem_rd_addr.eq(at)]
        rd_q = Signal(8, reset_less=True)
        m.d.sync += rd_q.eq(Mux(is_mem, self.mem_rd_data, self.rd_data))
        load_small = Signal()  # flags for the cycle after: load or shift ``small``
        shift_small = Signal()
        m.d.sync += [load_small.eq(0), shift_small.eq(0)]
        with m.If(load_small):
            m.d.sync += [small.eq(Mux(kind == Reply.CSR_VALUE, value,
                                      Mux(is_job, Cat(*(job[name] for name, _ in DONE_FIELDS)),
                                          Cat(code, detail)))),
                         pbyte.eq(0)]
            with m.If(kind == Reply.COUNTERS):
                m.d.sync += snap.eq(self.counters)
        with m.Elif(shift_small):
            m.d.sync += [small.eq(small >> 8), pbyte.eq(pbyte + 1)]
        payload = (index >= HEADER_BYTES) & (index < end)
        crc_add = Signal()  # flags of the byte in ``out``, for SEND
        crc_clear = Signal()
        last = Signal()
        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += self.idle.eq(~self.replies.valid & ~self.jobs.valid)
                with m.If(self.replies.valid):
                    m.d.comb += self.replies.ready.eq(1)
                    r = self.replies.payload
                    m.d.sync += [kind.eq(r.kind), seq.eq(r.seq), is_output.eq(0), is_job.eq(0),
                                 is_mem.eq(r.kind == Reply.MEM_DATA),
                                 code.eq(r.code), detail.eq(r.detail), value.eq(r.value),
                                 load_small.eq(1)]
                    with m.Switch(r.kind):
                        for k, n in lengths.items():
                            with m.Case(k):
                                m.d.sync += length.eq(n)
                        with m.Case(Reply.MEM_DATA):
                            m.d.sync += length.eq(r.length)
                    m.next = "START"
                with m.Elif(self.jobs.valid):
                    m.d.comb += self.jobs.ready.eq(1)
                    j = self.jobs.payload
                    m.d.sync += [kind.eq(j.kind), seq.eq(j.seq), job.eq(j), is_job.eq(1),
                                 is_output.eq(j.kind == Reply.OUTPUT), is_mem.eq(0),
                                 length.eq(Mux(j.kind == Reply.OUTPUT, j.length,
                                               fields_size(DONE_FIELDS))),
                                 load_small.eq(1)]
                    m.next = "START"
            with m.State("START"):
                m.d.comb += crc_unit.start.eq(1)
                m.d.sync += [index.eq(0), end.eq(length + HEADER_BYTES)]
                m.next = "PREP"
            with m.State("PREP"):
                m.d.sync += [crc_add.eq((index < HEADER_CRC_COVERS) | payload),
                             crc_clear.eq(index == HEADER_BYTES - 1),
                             last.eq(index == end + 1),
                             shift_small.eq(payload & ~is_output & ~is_mem)]
                values = {"sync": Const(SYNC, 8), "kind": kind, "seq": seq, "length": length}
                head_bytes = [Value.cast(values[name]).word_select(i, 8)
                              for name, code in HEADER_FIELDS
                              for i in range(struct.calcsize(code))] + [crc[:8], crc[8:]]
                with m.Switch(index):
                    for i, field in enumerate(head_bytes):
                        with m.Case(i):
                            m.d.sync += out.eq(field)
                    with m.Default():
                        with m.If(payload & (is_output | is_mem)):
                            m.d.sync += out.eq(rd_q)
                        with m.Elif(payload & (kind == Reply.COUNTERS)):
                            m.d.sync += out.eq(snap_byte)
                        with m.Elif(payload & (kind == Reply.IDENTITY)):
                            m.d.sync += out.eq(id_byte)
                        with m.Elif(payload):
                            m.d.sync += out.eq(small[:8])
                        with m.Elif(index == end):
                            m.d.sync += out.eq(crc[:8])
                        with m.Else():
                            m.d.sync += out.eq(crc[8:])
                m.next = "SEND"
            with m.State("SEND"):
                byte = out
                m.d.comb += [self.tx.valid.eq(1), self.tx.payload.eq(byte)]
                with m.If(self.tx.ready):
                    m.d.comb += [crc_unit.data.eq(byte), crc_unit.valid.eq(crc_add),
                                 crc_unit.start.eq(crc_clear)]
                    m.d.sync += index.eq(index + 1)
                    with m.If(last):
                        with m.If(is_output):
                            m.d.comb += self.release.eq(Mux(job.half, 0b10, 0b01))
                        m.d.comb += self.mem_release.eq(is_mem)
                        m.next = "IDLE"
                    with m.Else():
                        m.next = "PREP"
        return m
