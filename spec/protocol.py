"""The wire protocol between host and board: defined once, imported by the gateware
(``hw.link``) and the driver (``sw.driver``).

Every frame, either way::

    SYNC  KIND  SEQ  LEN_LO LEN_HI  HCRC_LO HCRC_HI  PAYLOAD[LEN]  PCRC_LO PCRC_HI

``HCRC`` is the CRC of the five bytes before it, ``PCRC`` the CRC of the payload (of no
bytes when ``LEN`` is 0): CRC-16/CCITT-FALSE (polynomial 0x1021, initial 0xFFFF), which is
Python's ``binascii.crc_hqx(data, 0xFFFF)``. A receiver hunts for ``SYNC`` and trusts a
header only when its CRC matches, so it resynchronizes on the next frame after any garbage.

Host to device, each frame is answered by exactly one reply with the same ``SEQ``: ``ACK``
once the frame is consumed, or ``ERROR`` (bad payload CRC, unknown command, bad length, no
free frame buffer, a refused configuration, an engine that stopped making progress, a frame
out of order, a frame cut short), or ``IDENTITY`` / ``COUNTERS``. A frame whose line goes
idle for ``rx_idle_cycles`` before its last byte is dropped (``ERROR TIMEOUT``): a host that
dies mid-frame cannot leave the receiver waiting for bytes that will never come. The device
accepts frames strictly in ``SEQ`` order (go-back-N: after a dropped frame the host resends
it and everything after it); a ``RESET`` sets the order anew and is acted on as soon as it
is received, even while other frames wait. The device holds ``rx_slots`` frames; the host
keeps at most that many unanswered, so a UART without flow control is never overrun.

Device to host, unasked: ``OUTPUT`` frames carry the engine's output values (their own
``SEQ`` counts up), and ``DONE`` closes each accepted configuration with its status.

Data frames hold whole items, little-endian: configuration words, weight rows, parameter
entries, input words, bypass and output values (sizes in :func:`item_bytes`).
"""

from __future__ import annotations

import binascii
import enum
import struct
from dataclasses import dataclass

from .params import EngineParams, config_bits, qparam_bits

PROTOCOL_VERSION = 4
SYNC = 0xA5
#: The header before its CRC, in order (``struct`` codes, little-endian); ``HCRC`` follows.
HEADER_FIELDS = [("sync", "B"), ("kind", "B"), ("seq", "B"), ("length", "H")]
#: Bytes the header CRC covers: the header fields.
HEADER_CRC_COVERS = 5
CRC_BYTES = 2
HEADER_BYTES = HEADER_CRC_COVERS + CRC_BYTES
#: Largest payload of a frame (one frame buffer).
MAX_PAYLOAD = 4096
#: Frame buffers on the device: frames the host may send ahead of their replies.
RX_SLOTS = 2
CRC_POLY = 0x1021
CRC_INIT = 0xFFFF
#: A frame's line may idle this long between two of its bytes before the frame is dropped:
#: the longer of 1 ms and 16 byte times. USB-serial adapters deliver a host's frame in
#: bursts with gaps far below a millisecond; a dead host's gap is forever.
RX_IDLE_MIN_SECONDS = 1e-3
RX_IDLE_MIN_BYTES = 16


def rx_idle_cycles(clock_hz: int, baud: int) -> int:
    """Idle clock cycles mid-frame after which the device drops the frame."""
    return max(round(clock_hz * RX_IDLE_MIN_SECONDS),
               RX_IDLE_MIN_BYTES * 10 * -(-clock_hz // baud))


class Command(enum.IntEnum):
    """Host-to-device frame kinds."""

    IDENTIFY = 0x01  #: reply IDENTITY: protocol version, clock, engine parameters
    CONFIGURE = 0x02  #: one configuration word: start a load and/or a run
    LOAD_WEIGHTS = 0x03  #: weight rows
    LOAD_QPARAMS = 0x04  #: per-channel quantization parameters
    RUN_INPUT = 0x05  #: input words of the running layer
    RUN_BYPASS = 0x06  #: bypass values of the running layer
    READ_COUNTERS = 0x07  #: reply COUNTERS
    RESET = 0x08  #: reset engine and link state at once; reply ACK
    #: memory (``MEM_*_FIELDS``): data into the DRAM at an address; reply ACK once written
    WRITE_MEM = 0x09
    READ_MEM = 0x0A  #: reply MEM_DATA with the bytes at an address
    WRITE_CSR = 0x0B  #: a word to the memory controller's control bus; reply ACK
    READ_CSR = 0x0C  #: reply CSR_VALUE: a word of the memory controller's control bus
    #: the device copies a region of the memory with its DMA (read a chunk, then write it),
    #: counting the cycles of each (COUNTERS ``dma_*``); reply ACK once done
    COPY_MEM = 0x0D
    #: start the layer sequencer on the program at a byte address (``spec.program``); reply
    #: ACK once started: the program runs while the link goes on (COUNTERS ``prog_*``)
    RUN_PROGRAM = 0x0E


class Reply(enum.IntEnum):
    """Device-to-host frame kinds."""

    ACK = 0x81
    ERROR = 0x82  #: payload: code (:class:`LinkError`), detail
    IDENTITY = 0x83
    COUNTERS = 0x84
    OUTPUT = 0x85  #: output values
    DONE = 0x86  #: payload: error, cycles (u32), runs (u16)
    MEM_DATA = 0x87  #: the bytes a READ_MEM asked for
    CSR_VALUE = 0x88  #: payload: the word (u32) a READ_CSR asked for


class LinkError(enum.IntEnum):
    """``ERROR`` reply codes; ``detail`` is the engine's ConfigError for CONFIG."""

    BAD_CRC = 1  #: the payload CRC did not match: the frame was dropped
    UNKNOWN_COMMAND = 2
    BAD_LENGTH = 3  #: above MAX_PAYLOAD, or not whole items for the command
    NO_BUFFER = 4  #: a frame arrived with every frame buffer full
    CONFIG = 5  #: the engine refused the configuration (detail: ConfigError)
    STALL = 6  #: the engine made no progress for ``stall_cycles``: the frame was dropped
    SEQUENCE = 7  #: not the next frame in order (detail: the SEQ expected): dropped
    TIMEOUT = 8  #: the line went idle mid-frame (``rx_idle_cycles``): the frame was dropped
    NO_MEMORY = 9  #: a memory command to a device built without external memory
    MEM_RANGE = 10  #: an access beyond the memory (detail: :class:`MemFault`)
    MEM_TIMEOUT = 11  #: the memory did not answer (detail: :class:`MemFault`): not brought up?
    BUSY = 12  #: refused while the engine is taken (detail: :class:`Busy`)


class Busy(enum.IntEnum):
    """``detail`` of BUSY errors."""

    PROGRAM = 1  #: a program runs: streaming commands, COPY_MEM and RUN_PROGRAM wait for it
    ENGINE = 2  #: RUN_PROGRAM while the engine is part-way through a streamed run


class MemFault(enum.IntEnum):
    """``detail`` of MEM_RANGE and MEM_TIMEOUT errors."""

    BEYOND_END = 1  #: address + length past the end of the memory
    UNALIGNED = 2  #: address or length not a whole number of native-port words
    TOO_LONG = 3  #: READ_MEM of more than MAX_PAYLOAD bytes, or a payload of the wrong size
    COMMAND = 4  #: (timeout) the controller took no command: not initialized
    WRITE_DATA = 5  #: (timeout) the controller took no write data
    READ_DATA = 6  #: (timeout) no read data came back
    CSR = 7  #: (timeout) the control bus did not acknowledge


_HEADER_FMT = "<" + "".join(code for _, code in HEADER_FIELDS)


def crc16(data: bytes, crc: int = CRC_INIT) -> int:
    return binascii.crc_hqx(bytes(data), crc)


def encode_frame(kind: int, seq: int, payload: bytes = b"") -> bytes:
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    head = struct.pack(_HEADER_FMT, SYNC, int(kind), seq & 0xFF, len(payload))
    return (head + struct.pack("<H", crc16(head)) + bytes(payload)
            + struct.pack("<H", crc16(payload)))


@dataclass(frozen=True)
class Frame:
    kind: int
    seq: int
    payload: bytes


class FrameDecoder:
    """Host-side frame parser: feed bytes, collect frames; counts what it had to skip."""

    def __init__(self):
        self._buf = bytearray()
        self.skipped = 0  #: bytes discarded while hunting for a valid header
        self.bad_payloads = 0  #: frames whose payload CRC failed

    def feed(self, data: bytes) -> list[Frame]:
        self._buf += data
        frames = []
        while True:
            start = self._buf.find(SYNC)
            if start < 0:
                self.skipped += len(self._buf)
                self._buf.clear()
                return frames
            if start:
                self.skipped += start
                del self._buf[:start]
            if len(self._buf) < HEADER_BYTES:
                return frames
            head = bytes(self._buf[:HEADER_CRC_COVERS])
            if struct.unpack("<H", self._buf[HEADER_CRC_COVERS:HEADER_BYTES])[0] != crc16(head):
                self.skipped += 1
                del self._buf[:1]
                continue
            _, kind, seq, length = struct.unpack(_HEADER_FMT, head)
            if length > MAX_PAYLOAD:
                self.skipped += 1
                del self._buf[:1]
                continue
            end = HEADER_BYTES + length + CRC_BYTES
            if len(self._buf) < end:
                return frames
            payload = bytes(self._buf[HEADER_BYTES:HEADER_BYTES + length])
            pcrc = struct.unpack("<H", self._buf[end - 2:end])[0]
            del self._buf[:end]
            if pcrc != crc16(payload):
                self.bad_payloads += 1
                continue
            frames.append(Frame(kind, seq, payload))


#: Memory commands' payloads (little-endian): WRITE_MEM is its address then the data (whole
#: native-port words); READ_MEM an address and a length (at most MAX_PAYLOAD bytes, whole
#: words); WRITE_CSR an address on the controller's control bus and the word; READ_CSR the
#: address; COPY_MEM source, destination and length (whole words, both regions inside the
#: memory). Addresses are byte addresses.
MEM_HEADERS = {Command.WRITE_MEM: [("addr", "I")],
               Command.READ_MEM: [("addr", "I"), ("length", "I")],
               Command.WRITE_CSR: [("addr", "I"), ("value", "I")],
               Command.READ_CSR: [("addr", "I")],
               Command.COPY_MEM: [("src", "I"), ("dst", "I"), ("length", "I")]}
MEM_COMMANDS = list(MEM_HEADERS)
#: RUN_PROGRAM's payload: the program's byte address (u32).
RUN_PROGRAM_BYTES = 4
#: The most data one WRITE_MEM carries: a frame less its address, rounded down to whole
#: words of the widest native port (128 bits).
MAX_WRITE_MEM = (MAX_PAYLOAD - 4) // 16 * 16


def pack_mem(command: int, **fields) -> bytes:
    return struct.pack(_fmt(MEM_HEADERS[Command(command)]),
                       *(fields[name] for name, _ in MEM_HEADERS[Command(command)]))


#: The engine stream each data command feeds (``hw.engine.FireEngine``'s port names).
ENGINE_STREAMS = {Command.CONFIGURE: "cfg", Command.LOAD_WEIGHTS: "weights",
                  Command.LOAD_QPARAMS: "qparams", Command.RUN_INPUT: "input",
                  Command.RUN_BYPASS: "bypass"}


def item_bits(params: EngineParams) -> dict[int, int]:
    """Bits of one item of each data command: one beat of its engine stream (a configuration
    word, a weight row, a channel's parameters, a pixel's word of ``ic_lanes`` channels, a
    bypass value). RUN_BYPASS only where the engine has bypass."""
    bits = {Command.CONFIGURE: config_bits(params),
            Command.LOAD_WEIGHTS: params.weight_row_bits,
            Command.LOAD_QPARAMS: qparam_bits(params),
            Command.RUN_INPUT: params.ic_lanes * params.bits}
    if params.bypass:
        bits[Command.RUN_BYPASS] = params.bits
    return bits


def beat_bits(params: EngineParams) -> dict[int, int]:
    """Bits the device's executor hands on a cycle for each data command: an item
    (:func:`item_bits`), except a weight row, which goes in ``oc_lanes`` beats of
    ``weight_beat_bits`` (put together again in front of the engine)."""
    bits = item_bits(params)
    bits[Command.LOAD_WEIGHTS] = params.weight_beat_bits
    return bits


def item_bytes(params: EngineParams) -> dict[int, int]:
    """Bytes of one item of each data command (payloads hold whole items, little-endian)."""
    sizes = {cmd: -(-bits // 8) for cmd, bits in item_bits(params).items()}
    sizes.setdefault(Command.RUN_BYPASS, -(-params.bits // 8))  # refused there, sized anyway
    return sizes


def value_bytes(params: EngineParams) -> int:
    """Bytes of one output value in OUTPUT frames (signed little-endian, sign-extended)."""
    return -(-params.bits // 8)


#: IDENTITY payload: these fields, then every EngineParams field as u32, in its order.
IDENTITY_FIELDS = [("version", "H"), ("clock_hz", "I"), ("baud", "I"), ("max_payload", "H"),
                   ("rx_slots", "B"), ("stall_cycles", "I"), ("rx_idle_cycles", "I"),
                   # external memory: ``spec.dram.VARIANTS`` index (0: none), bytes, the
                   # native port's width in bits
                   ("mem_variant", "B"), ("mem_size", "I"), ("mem_port_bits", "H"),
                   # 1: the layer sequencer is built (RUN_PROGRAM: resident mode)
                   ("sequencer", "B")]

#: COUNTERS payload.
COUNTER_FIELDS = [("cycles", "I"),  # the engine's last run, configuration to last output
                  ("compute", "I"),  # those cycles less the ones spent waiting on a stream
                  ("runs", "I"),  # configurations the engine handled
                  ("error", "B"),  # the engine's last ConfigError
                  ("uptime", "Q"),  # clock cycles since power-up
                  ("frames", "I"),  # frames received intact
                  ("bad_crc", "I"),  # frames dropped for a payload CRC error
                  ("bad_header", "I"),  # headers discarded while hunting
                  ("uart_errors", "I"),  # UART framing errors and overruns
                  ("stalls", "I"),  # frames dropped because the engine stopped taking data
                  ("rx_timeouts", "I"),  # frames dropped because the line idled mid-frame
                  # COPY_MEM's DMA: native-port words copied, and the cycles spent reading
                  # them (request to the last word back) and writing them (request to the
                  # last word taken), summed over its chunks
                  ("dma_words", "I"), ("dma_read_cycles", "I"), ("dma_write_cycles", "I"),
                  # the layer sequencer (RUN_PROGRAM): programs finished, whether one runs,
                  # and the last one's end (``spec.program.SeqError`` and its detail), its
                  # descriptors run (or the failing one's number) and its cycles
                  ("programs", "I"), ("prog_active", "B"), ("prog_status", "B"),
                  ("prog_detail", "B"), ("prog_index", "H"), ("prog_cycles", "I")]

#: DONE payload: the run's error, its cycles and compute cycles (as in COUNTERS), run count.
DONE_FIELDS = [("error", "B"), ("cycles", "I"), ("compute", "I"), ("runs", "H")]
#: ERROR payload: the :class:`LinkError` code and its detail (the expected SEQ, the field).
ERROR_FIELDS = [("code", "B"), ("detail", "B")]


def _fmt(fields) -> str:
    return "<" + "".join(code for _, code in fields)


def pack_identity(params: EngineParams, *, clock_hz: int, baud: int,
                  stall_cycles: int, rx_idle: int, mem_variant: int = 0, mem_size: int = 0,
                  mem_port_bits: int = 0, sequencer: bool = False) -> bytes:
    head = struct.pack(_fmt(IDENTITY_FIELDS), PROTOCOL_VERSION, clock_hz, baud, MAX_PAYLOAD,
                       RX_SLOTS, stall_cycles, rx_idle, mem_variant, mem_size, mem_port_bits,
                       int(sequencer))
    values = [int(v) for v in params.to_dict().values()]
    return head + struct.pack(f"<{len(values)}I", *values)


@dataclass(frozen=True)
class Identity:
    version: int
    clock_hz: int
    baud: int
    max_payload: int
    rx_slots: int
    stall_cycles: int
    rx_idle_cycles: int
    mem_variant: int
    mem_size: int
    mem_port_bits: int
    sequencer: int
    params: EngineParams


class IdentityError(ValueError):
    """An IDENTITY payload this host cannot read (another protocol version, or damaged)."""


def unpack_identity(payload: bytes) -> Identity:
    """The device's identity; :class:`IdentityError` for another protocol version."""
    if len(payload) >= 2 and struct.unpack("<H", payload[:2])[0] != PROTOCOL_VERSION:
        raise IdentityError(f"the device speaks protocol {struct.unpack('<H', payload[:2])[0]}"
                            f", this host {PROTOCOL_VERSION}: rebuild the bitstream (or the "
                            "simulated board) from this version")
    fmt = _fmt(IDENTITY_FIELDS)
    size = struct.calcsize(fmt)
    names = EngineParams.field_names()
    if len(payload) != size + 4 * len(names):
        raise IdentityError(f"IDENTITY payload of {len(payload)} bytes, expected "
                            f"{size + 4 * len(names)}")
    head = struct.unpack(fmt, payload[:size])
    values = struct.unpack(f"<{len(names)}I", payload[size:size + 4 * len(names)])
    fields = dict(zip(names, values, strict=True))
    fields["bypass"] = bool(fields["bypass"])
    return Identity(*head, params=EngineParams(**fields))


def unpack_fields(fields, payload: bytes) -> dict:
    fmt = _fmt(fields)
    return dict(zip([n for n, _ in fields], struct.unpack(fmt, payload[:struct.calcsize(fmt)]),
                    strict=True))


def fields_size(fields) -> int:
    return struct.calcsize(_fmt(fields))


def field_offsets(fields) -> dict[str, int]:
    """Byte offset of each field in its packed payload."""
    offsets, at = {}, 0
    for name, code in fields:
        offsets[name] = at
        at += struct.calcsize("<" + code)
    return offsets


assert fields_size(HEADER_FIELDS) == HEADER_CRC_COVERS
