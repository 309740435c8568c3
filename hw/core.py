"""The board-independent accelerator: link layer, Fire engine, counters.

``AcceleratorCore`` takes and gives a byte stream: the UART PHY on a board (``hw.top``), or
a direct byte stream in the simulated board (``sim.board``), which is the only difference
between the two.
"""


from amaranth import Cat, Const, Module, Mux, ResetInserter, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from spec.dram import DramConfig
from spec.params import EngineParams
from spec.protocol import (
    COUNTER_FIELDS,
    ENGINE_STREAMS,
    MAX_PAYLOAD,
    MEM_COMMANDS,
    RUN_PROGRAM_BYTES,
    RX_SLOTS,
    Command,
    Reply,
    beat_bits,
    item_bytes,
    pack_identity,
    rx_idle_cycles,
)

from .dma import DMAReader, DMAWriter
from .engine import FireEngine
from .layer_sequencer import LayerSequencer
from .link import Executor, FrameMeta, FrameReceiver, OutputFramer, ReplyReq, Transmitter, TxJob
from .memory_bridge import WISHBONE_SIGNATURE, MemoryBridge, native_port_signature
from .ram import RegisteredRead, ram
from .stream_fifo import StreamFIFO, StreamRegister
from .weight_buffers import RowAssembler

#: Cycles without any engine progress, while a frame waits for the engine, before that frame
#: is dropped (11 ms at 96 MHz). Frames arrive in the order the engine takes them, and a
#: running engine moves a value at least every 87 us even at 115200 baud: a wait this long
#: is a deadlock (frames out of order), not a slow link.
DEFAULT_STALL_CYCLES = 1 << 20

_STRUCT_BITS = {"B": 8, "H": 16, "I": 32, "Q": 64}
#: The core's ports to the memory controller's native user ports (``hw.dram.USER_PORTS``,
#: in that order): the memory bridge's, the DMA reader's, the DMA writer's.
MEMORY_PORTS = ("dram_bridge", "dram_rd", "dram_wr")


class AcceleratorCore(wiring.Component):
    """Link layer plus Fire engine (see ``hw.link`` and ``hw.engine``).

    ``rx``/``tx``: bytes from and to the host. ``uart_error``: pulses counted as UART errors.
    ``busy``: the engine is running (a LED); ``active``: anything but waiting for the host
    (a frame part-way in counts: its idle timeout runs). ``rx_idle``: idle cycles after which
    a frame cut short is dropped (default: ``spec.protocol.rx_idle_cycles``).

    With ``memory`` (a :class:`~spec.dram.DramConfig`; ``mem_variant`` its index in
    ``spec.dram.VARIANTS``, reported in IDENTITY) the memory commands go through a
    :class:`~hw.memory_bridge.MemoryBridge` to ``dram_bridge`` (a native port of the
    controller's) and ``dram_bus`` (its control bus), and COPY_MEM through the DMA reader and
    writer (``hw.dma``) on ``dram_rd`` and ``dram_wr``; without, they are refused.
    """

    def __init__(self, params: EngineParams, *, clock_hz: int, baud: int,
                 stall_cycles: int = DEFAULT_STALL_CYCLES, rx_idle: int | None = None,
                 multipliers: str = "dsp", memory: DramConfig | None = None,
                 mem_variant: int = 0, resident: bool = True):
        members = {"rx": In(stream.Signature(8)), "tx": Out(stream.Signature(8)),
                   "uart_error": In(1), "busy": Out(1), "active": Out(1)}
        if memory is not None:
            for name in MEMORY_PORTS:  # the controller's native user ports
                members[name] = Out(native_port_signature(memory.addr_bits, memory.port_bits))
            members["dram_bus"] = Out(WISHBONE_SIGNATURE)
        elif mem_variant:
            raise ValueError("mem_variant without memory")
        self._memory = memory
        self._mem_variant = mem_variant
        self._resident = resident and memory is not None
        self._p = params
        self._multipliers = multipliers
        self._clock_hz = clock_hz
        self._baud = baud
        self._stall = stall_cycles
        self._rx_idle = rx_idle or rx_idle_cycles(clock_hz, baud)
        super().__init__(members)

    @property
    def params(self) -> EngineParams:
        return self._p

    def elaborate(self, platform):
        m = Module()
        p = self._p
        soft_reset = Signal()

        def resettable(name, elaboratable):
            m.submodules[name] = ResetInserter({"sync": soft_reset})(elaboratable)
            return elaboratable

        # ---- frames in
        items = item_bytes(p)
        if self._memory is not None:
            items.update({cmd: 1 for cmd in MEM_COMMANDS})
            if self._resident:
                items[Command.RUN_PROGRAM] = RUN_PROGRAM_BYTES
        m.submodules.receiver = rx = FrameReceiver(items, self._rx_idle)
        wiring.connect(m, wiring.flipped(self.rx), rx.rx)
        m.submodules.slots = slots = ram(shape=8, depth=RX_SLOTS * MAX_PAYLOAD)
        slot_wr = slots.write_port()
        slot_rd = RegisteredRead(m, slots, "slot_rd")
        m.d.comb += [slot_wr.addr.eq(rx.wr_addr), slot_wr.data.eq(rx.wr_data),
                     slot_wr.en.eq(rx.wr_en)]
        # frames committed to a buffer, for the executor in order (never full: one per buffer)
        commits = resettable("commits", StreamFIFO(FrameMeta, RX_SLOTS))
        wiring.connect(m, rx.commit, commits.w)

        # ---- the engine and the executor feeding it; the layer sequencer, when it runs a
        # program, in the executor's place (it resets the engine after a failed program)
        engine_reset = Signal()
        m.submodules.engine = engine = ResetInserter({"sync": engine_reset})(
            FireEngine(p, multipliers=self._multipliers, wide=self._resident))
        seq = self._layer_sequencer(m)
        if seq is None:
            m.d.comb += engine_reset.eq(soft_reset)
        else:
            m.d.sync += engine_reset.eq(rx.reset | seq.engine_reset)
        seq_active = seq.active if seq is not None else Const(0)
        widths = beat_bits(p)
        executor = resettable("executor", Executor(widths, self._stall,
                                                   memory=self._memory is not None))
        wiring.connect(m, commits.r, executor.job)
        m.d.comb += [slot_rd.addr.eq(executor.rd_addr), executor.rd_data.eq(slot_rd.data)]
        # the engine's verdict on a configuration reaches the executor a cycle late
        # (registered: the configuration checks' logic then ends at a register, not in the
        # executor's state; on the ULX3S that path was critical), all three alike
        m.d.sync += [executor.accepted.eq(engine.accepted), executor.refused.eq(engine.refused),
                     executor.error.eq(engine.error)]
        targets = {cmd: getattr(engine, ENGINE_STREAMS[cmd]) for cmd in widths}
        # weights arrive a beat at a time from either source (``beat_bits``): rows are put
        # together in front of the engine, and reset with it
        m.submodules.row_assembler = rows = ResetInserter({"sync": engine_reset})(
            RowAssembler(p))
        wiring.connect(m, rows.rows, engine.weights)
        targets[Command.LOAD_WEIGHTS] = rows.beats
        # any handshake on the engine's streams is progress: each registered where it
        # happens, then ORed (registered again below), so that no handshake's logic is
        # shared with a far-off OR (on the ULX3S the weight stream's handshake was placed
        # with it, away from the row assembler it enables)
        took = []

        def progress_of(s):
            t = Signal(name=f"took_{len(took)}")
            m.d.sync += t.eq(s.valid & s.ready)
            took.append(t)

        progress_of(engine.output)
        progress_of(engine.output_wide)
        # the executor's items cross to the engine through a register each (a place-and-route
        # boundary: the two handshakes meet only at it; the executor offers an item every
        # other cycle at most). A frame is answered once its last item has left the register;
        # a frame dropped as stalled empties them (a cycle later: registered, as the
        # registers sit beside the engine; the executor is back in IDLE by then)
        held = []
        flush = Signal()
        m.d.sync += flush.eq(executor.stalled)
        for cmd, target in targets.items():
            item = executor.stream_for(cmd)
            staged = resettable(f"stage{int(cmd)}", StreamRegister(item.payload.shape()))
            wiring.connect(m, item, staged.w)
            m.d.comb += staged.flush.eq(flush)
            held.append(staged.r.valid)
            source = staged.r
            own = getattr(seq, ENGINE_STREAMS[cmd], None) if seq is not None else None
            with m.If(seq_active):
                if own is not None:
                    m.d.comb += [target.valid.eq(own.valid), own.ready.eq(target.ready),
                                 target.payload.eq(own.payload)]
            with m.Else():
                m.d.comb += [target.valid.eq(source.valid), source.ready.eq(target.ready),
                             target.payload.eq(source.payload)]
            progress_of(target)
        m.d.comb += executor.drained.eq(~Cat(held).any())
        # the link takes a value a beat (``output``): a configuration from it never asks for
        # the wide output, which only the layer sequencer reads
        with m.If(~seq_active):
            m.d.comb += engine.cfg.payload.wide.eq(0)
        mem = self._memory_bridge(m, executor, soft_reset, seq)
        if mem is not None:
            took.append(mem.busy)
            m.d.comb += executor.engine_busy.eq(engine.busy)
            if seq is not None:  # (without it the receiver refuses RUN_PROGRAM as unknown)
                start = executor.stream_for(Command.RUN_PROGRAM)
                m.d.comb += [seq.start.valid.eq(start.valid), start.ready.eq(seq.start.ready),
                             seq.start.payload.eq(start.payload), seq.abort.eq(soft_reset),
                             executor.program_active.eq(seq.active)]
                for name in ("accepted", "refused", "error", "runs", "cycles", "compute"):
                    m.d.comb += getattr(seq, name).eq(getattr(engine, name))
        # registered twice: the streams' handshakes reach only their own flip-flops, not the
        # executor's stall count (two cycles late are nothing against its limit)
        progress_r = Signal()
        m.d.sync += progress_r.eq(Cat(took).any())
        m.d.comb += executor.progress.eq(progress_r)
        slot_free = Signal(RX_SLOTS, init=(1 << RX_SLOTS) - 1)
        taken = Signal(RX_SLOTS)
        with m.If(rx.commit.valid):
            m.d.comb += taken.eq(1 << rx.commit.payload.slot if RX_SLOTS > 1 else 1)
        # a released buffer is free a cycle later (registered), never across a reset
        released = Signal(RX_SLOTS)
        m.d.sync += released.eq(Mux(soft_reset, 0, executor.release))
        with m.If(soft_reset):
            m.d.sync += slot_free.eq((1 << RX_SLOTS) - 1)
        with m.Else():
            m.d.sync += slot_free.eq((slot_free & ~taken) | released)
        m.d.comb += [rx.slot_free.eq(slot_free & ~taken), self.busy.eq(engine.busy)]

        # ---- replies: receiver errors, executor answers, the ACK of a RESET
        replies = resettable("replies", StreamFIFO(ReplyReq, 8))
        reset_ack = Signal()
        reset_seq = Signal(8)
        # registered: it fans out to the reset of every resettable flip-flop
        m.d.sync += soft_reset.eq(rx.reset)
        with m.If(rx.reset):
            m.d.sync += [reset_ack.eq(1), reset_seq.eq(rx.reset_seq)]
        ack = Signal(ReplyReq)
        m.d.comb += [ack.kind.eq(Reply.ACK), ack.seq.eq(reset_seq)]
        # three sources, in this priority; the receiver's and the RESET's ACK are never held
        # (at most a few are in flight: the FIFO has room for them)
        with m.If(reset_ack & ~soft_reset):
            m.d.comb += [replies.w.valid.eq(1), replies.w.payload.eq(ack)]
            m.d.sync += reset_ack.eq(0)
        with m.Elif(rx.reply.valid):
            m.d.comb += [replies.w.valid.eq(1), replies.w.payload.eq(rx.reply.payload),
                         rx.reply.ready.eq(1)]
        with m.Elif(executor.reply.valid):
            m.d.comb += [replies.w.valid.eq(1), replies.w.payload.eq(executor.reply.payload),
                         executor.reply.ready.eq(replies.w.ready)]

        # ---- frames out
        framer = resettable("framer", OutputFramer(p.bits))
        m.submodules.outbuf = outbuf = ram(shape=8, depth=2 * MAX_PAYLOAD)
        out_wr = outbuf.write_port()
        out_rd = RegisteredRead(m, outbuf, "out_rd")
        # reset with the engine: a RESET must not look like the end of a run
        # (and with the sequencer's engine reset; a program's runs are not the host's)
        runs_seen = Signal.like(engine.runs)
        m.d.sync += runs_seen.eq(Mux(engine_reset, 0, engine.runs))
        if seq is None:
            wiring.connect(m, engine.output, framer.values)
        else:
            with m.If(seq_active):
                wiring.connect(m, engine.output_wide, seq.output)
            with m.Else():
                wiring.connect(m, engine.output, framer.values)
        m.d.comb += [
            framer.run_done.eq((engine.runs != runs_seen) & ~seq_active),
            framer.error.eq(engine.error),
            framer.cycles.eq(engine.cycles), framer.compute.eq(engine.compute),
            framer.runs.eq(engine.runs),
            out_wr.addr.eq(framer.wr_addr), out_wr.data.eq(framer.wr_data),
            out_wr.en.eq(framer.wr_en),
        ]
        jobs = resettable("jobs", StreamFIFO(TxJob, 4))
        wiring.connect(m, framer.job, jobs.w)

        counters = self._counters(m, rx, executor, engine, mem, seq)
        mem_cfg = self._memory
        identity = pack_identity(p, clock_hz=self._clock_hz, baud=self._baud,
                                 stall_cycles=self._stall, rx_idle=self._rx_idle,
                                 mem_variant=self._mem_variant,
                                 mem_size=mem_cfg.size if mem_cfg else 0,
                                 mem_port_bits=mem_cfg.port_bits if mem_cfg else 0,
                                 sequencer=seq is not None)
        tx = resettable("transmitter", Transmitter(identity, len(counters)))
        half_free = Signal(2, init=0b11)
        owned = Signal(2)
        with m.If(framer.job.valid & framer.job.ready
                  & (framer.job.payload.kind == Reply.OUTPUT)):
            m.d.comb += owned.eq(Cat(~framer.job.payload.half, framer.job.payload.half))
        with m.If(soft_reset):
            m.d.sync += half_free.eq(0b11)
        with m.Else():
            m.d.sync += half_free.eq((half_free & ~owned) | tx.release)
        m.d.comb += [
            framer.half_free.eq(half_free & ~owned),
            out_rd.addr.eq(tx.rd_addr), tx.rd_data.eq(out_rd.data),
            tx.counters.eq(counters),
            self.active.eq(engine.busy | seq_active | ~executor.idle | ~tx.idle
                           | commits.r.valid
                           | replies.r.valid | jobs.r.valid | reset_ack | rx.receiving),
        ]
        if mem is not None:
            # the read buffer is the MEM_DATA reply's from the bridge's answer until sent
            buf_busy = Signal()
            answered = (mem.answer.valid & mem.answer.ready
                        & (mem.answer.payload.kind == Reply.MEM_DATA))
            with m.If(soft_reset | tx.mem_release):
                m.d.sync += buf_busy.eq(0)
            with m.Elif(answered):
                m.d.sync += buf_busy.eq(1)
            m.d.comb += mem.buf_busy.eq(buf_busy)
            buf_rd = RegisteredRead(m, self._membuf, "membuf_rd")
            m.d.comb += [buf_rd.addr.eq(tx.mem_rd_addr), tx.mem_rd_data.eq(buf_rd.data)]
        wiring.connect(m, replies.r, tx.replies)
        wiring.connect(m, jobs.r, tx.jobs)
        wiring.connect(m, tx.tx, wiring.flipped(self.tx))
        return m

    def _layer_sequencer(self, m):
        """The layer sequencer (``hw.layer_sequencer``; None without memory)."""
        if not self._resident:
            return None
        cfg = self._memory
        m.submodules.layer_sequencer = seq = LayerSequencer(
            self._p, size=cfg.size, port_bits=cfg.port_bits, stall_cycles=self._stall)
        return seq

    def _memory_bridge(self, m, executor, soft_reset, seq):
        """The bridge to the memory controller and its read buffer (None without memory).
        The DMA reader and the ``dram_wr`` port are the layer sequencer's while it runs a
        program (COPY_MEM is refused then)."""
        if self._memory is None:
            return None
        cfg = self._memory
        # not reset by a RESET: told to wind down (``abort``), so that the controller is never
        # left owed data; the DMA likewise finishes its chunk, and the copy FIFO is emptied
        m.submodules.memory_bridge = bridge = MemoryBridge(size=cfg.size,
                                                           port_bits=cfg.port_bits)
        m.d.comb += [bridge.abort.eq(soft_reset), executor.mem_ready.eq(bridge.ready)]
        # a job starts the bridge a cycle after the executor dispatches it (registered: the
        # executor's decode then ends at these registers, not in the bridge's loads; on the
        # ULX3S that path was critical). The executor has moved on to stream the payload,
        # which the bridge takes once started; a RESET meanwhile cancels the start.
        m.d.sync += [bridge.start.eq(executor.mem_start & ~soft_reset),
                     bridge.command.eq(executor.mem_command),
                     bridge.length.eq(executor.mem_length)]
        streams = [executor.stream_for(cmd) for cmd in MEM_COMMANDS]
        m.d.comb += bridge.data.valid.eq(Cat(s.valid for s in streams).any())
        for s in streams:  # one of them at a time offers the payload's bytes
            with m.If(s.valid):
                m.d.comb += bridge.data.payload.eq(s.payload)
            m.d.comb += s.ready.eq(bridge.data.ready)
        wiring.connect(m, bridge.answer, executor.mem_answer)
        wiring.connect(m, bridge.port, wiring.flipped(self.dram_bridge))
        wiring.connect(m, bridge.bus, wiring.flipped(self.dram_bus))
        # COPY_MEM: the DMA reader fills a FIFO of a chunk, then the writer drains it
        geometry = {"addr_bits": cfg.addr_bits, "data_bits": cfg.port_bits,
                    "words": cfg.words}
        m.submodules.dma_reader = reader = DMAReader(**geometry)
        m.submodules.dma_writer = writer = DMAWriter(**geometry)
        chunk = StreamFIFO(cfg.port_bits, bridge.copy_chunk, buffered=True)  # block RAM
        m.submodules.copy_fifo = ResetInserter({"sync": bridge.flush})(chunk)
        wiring.connect(m, reader.port, wiring.flipped(self.dram_rd))
        seq_active = seq.active if seq is not None else Const(0)
        with m.If(seq_active):
            if seq is not None:
                wiring.connect(m, seq.port, wiring.flipped(self.dram_wr))
                wiring.connect(m, seq.rd_request, reader.request)
                wiring.connect(m, reader.data, seq.rd_data)
        with m.Else():
            wiring.connect(m, writer.port, wiring.flipped(self.dram_wr))
            wiring.connect(m, bridge.rd_request, reader.request)
            wiring.connect(m, reader.data, chunk.w)
        wiring.connect(m, bridge.wr_request, writer.request)
        wiring.connect(m, chunk.r, writer.data)
        # the DMA's ends reach the bridge a cycle late (registered: the DMA's counters then
        # end at these flip-flops, not in the bridge's answer; on the ULX3S that path was
        # the critical one once the crossings had their slices)
        m.d.sync += [bridge.rd_done.eq(reader.done & ~seq_active),
                     bridge.rd_error.eq(reader.error & ~seq_active),
                     bridge.wr_done.eq(writer.done), bridge.wr_error.eq(writer.error)]
        if seq is not None:
            m.d.comb += [seq.rd_busy.eq(reader.busy), seq.rd_error.eq(reader.error & seq_active)]
        m.submodules.membuf = self._membuf = ram(shape=8, depth=MAX_PAYLOAD)
        wr = self._membuf.write_port()
        m.d.comb += [wr.addr.eq(bridge.buf_addr), wr.data.eq(bridge.buf_data),
                     wr.en.eq(bridge.buf_en)]
        return bridge

    def _counters(self, m, rx, executor, engine, mem, seq):
        """Live counter values packed as ``COUNTER_FIELDS`` (little-endian)."""
        def counter(width, pulse):
            # the pulse is registered first: a count lands a cycle late, off the pulse's path
            c = Signal(width)
            pulse_r = Signal()
            m.d.sync += pulse_r.eq(pulse)
            with m.If(pulse_r):
                m.d.sync += c.eq(c + 1)
            return c

        values = {
            "cycles": engine.cycles, "compute": engine.compute, "runs": engine.runs,
            "error": engine.error,
            "uptime": counter(64, 1), "frames": counter(32, rx.good_frame),
            "bad_crc": counter(32, rx.bad_crc), "bad_header": counter(32, rx.bad_header),
            "uart_errors": counter(32, self.uart_error), "stalls": counter(32, executor.stalled),
            "rx_timeouts": counter(32, rx.timeout),
            "dma_words": mem.dma_words if mem is not None else 0,
            "dma_read_cycles": mem.dma_read_cycles if mem is not None else 0,
            "dma_write_cycles": mem.dma_write_cycles if mem is not None else 0,
        }
        for name in ("programs", "prog_active", "prog_status", "prog_detail", "prog_index",
                     "prog_cycles"):
            attr = {"prog_active": "active", "prog_status": "status", "prog_detail": "detail",
                    "prog_index": "index"}.get(name, name)
            values[name] = getattr(seq, attr) if seq is not None else 0
        packed = Signal(sum(_STRUCT_BITS[c] for _, c in COUNTER_FIELDS))
        offset = 0
        for name, code in COUNTER_FIELDS:
            width = _STRUCT_BITS[code]
            m.d.comb += packed[offset:offset + width].eq(values[name])
            offset += width
        return packed
