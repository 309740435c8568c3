"""Host side of the wire protocol (``spec.protocol``): frames, a send window, go-back-N.

The device holds ``rx_slots`` frames and answers each, in order. The link keeps at most
that many frames unanswered; a frame dropped by the device (bad CRC) or lost on the wire
(no answer in time) is sent again with every frame after it, a bounded number of times.
OUTPUT and DONE frames, which the device sends on its own, are collected on the side and
checked for gaps: a lost output frame is an error, never a silently short result.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

from spec.params import ConfigError
from spec.protocol import (
    DONE_FIELDS,
    RX_SLOTS,
    Busy,
    Command,
    Frame,
    FrameDecoder,
    LinkError,
    MemFault,
    Reply,
    encode_frame,
    unpack_fields,
)

from .errors import (
    CRCError,
    DeviceError,
    DriverError,
    LinkTimeout,
    OutputLost,
    PortError,
    ProtocolError,
)

#: ERROR replies after which the same frames are simply sent again.
_RESEND = {LinkError.BAD_CRC, LinkError.NO_BUFFER, LinkError.TIMEOUT}
#: Pauses between RESETs while resynchronizing: the first is far above a board's idle
#: timeout mid-frame (1 ms); they grow for a slow (simulated) device.
_RESET_WAITS = (0.1, 0.2, 0.4, 0.8)


@dataclass
class LinkStats:
    frames_sent: int = 0
    bytes_down: int = 0  #: every byte written, headers and resends included
    payload_down: int = 0  #: payload bytes of frames acknowledged
    bytes_up: int = 0
    payload_up: int = 0  #: OUTPUT payload bytes received
    resends: int = 0
    skipped_up: int = 0


@dataclass
class Done:
    error: int
    cycles: int  #: the run's cycles, configuration to last output
    compute: int  #: of those, the cycles the engine was not waiting on the link
    runs: int


@dataclass
class _Pending:
    command: int
    payload: bytes
    tries: int = 0
    reply: Frame | None = None


@dataclass
class Collected:
    """What arrived on the side while frames were being sent."""

    output: bytearray = field(default_factory=bytearray)
    done: list[Done] = field(default_factory=list)


class Link:
    """Frames over a byte port (a pyserial ``Serial`` or anything with ``read``/``write``)."""

    def __init__(self, port, *, timeout: float = 5.0, retries: int = 4,
                 window: int = RX_SLOTS):
        self.port = port
        self.timeout = timeout
        self.retries = retries
        self.window = window
        self.decoder = FrameDecoder()
        self.seq = 0
        self.device_seq = 0  # SEQ of the next OUTPUT/DONE frame
        self.stats = LinkStats()
        self._side: deque[Frame] = deque()

    # -- bytes --------------------------------------------------------------------------
    def _write(self, data: bytes) -> None:
        try:
            self.port.write(data)
        except OSError as exc:
            raise PortError(f"writing to the serial port failed: {exc}") from None
        self.stats.bytes_down += len(data)

    def _read(self, wait: float) -> list[Frame]:
        try:
            n = max(1, getattr(self.port, "in_waiting", 0) or 0)
            self.port.timeout = wait
            data = self.port.read(min(n, 1 << 16))
        except OSError as exc:
            raise PortError(f"reading from the serial port failed: {exc}") from None
        self.stats.bytes_up += len(data)
        frames = self.decoder.feed(data) if data else []
        self.stats.skipped_up = self.decoder.skipped
        return frames

    # -- side channel: OUTPUT and DONE --------------------------------------------------
    def _side_frame(self, frame: Frame, into: Collected) -> None:
        if frame.seq != self.device_seq:
            raise OutputLost(f"device frame {self.device_seq} lost (got {frame.seq}): the "
                             "output is incomplete")
        self.device_seq = (self.device_seq + 1) & 0xFF
        if frame.kind == Reply.OUTPUT:
            into.output += frame.payload
            self.stats.payload_up += len(frame.payload)
        else:
            into.done.append(Done(**unpack_fields(DONE_FIELDS, frame.payload)))

    # -- requests -----------------------------------------------------------------------
    def transact(self, frames: list[tuple[int, bytes]], *, collect: Collected | None = None,
                 until=None) -> list[Frame]:
        """Send ``frames`` in order, each answered; returns the answers.

        OUTPUT/DONE frames arriving meanwhile go into ``collect``. With ``until`` (a
        function of ``collect``), keep reading after the last answer until it is true.
        """
        collect = collect if collect is not None else Collected()
        pending = [_Pending(cmd, bytes(payload)) for cmd, payload in frames]
        first_seq = self.seq
        base = sent = 0
        last_progress = time.monotonic()

        def seq_of(i):
            return (first_seq + i) & 0xFF

        def name(i):
            return Command(pending[i].command).name

        while base < len(pending) or (until is not None and not until(collect)):
            while sent < len(pending) and sent - base < self.window:
                p = pending[sent]
                p.tries += 1
                if p.tries > self.retries + 1:
                    what = name(sent)
                    raise CRCError(f"{what} (frame {seq_of(sent)}) failed {self.retries + 1} "
                                   "times: the link corrupts data")
                self._write(encode_frame(p.command, seq_of(sent), p.payload))
                self.stats.frames_sent += 1
                sent += 1
            frames_in = self._read(0.05)
            now = time.monotonic()
            if frames_in:
                last_progress = now
            go_back = None  # the oldest frame the device dropped: resend from there
            for frame in frames_in:
                if frame.kind in (Reply.OUTPUT, Reply.DONE):
                    self._side_frame(frame, collect)
                    continue
                i = next((k for k in range(base, sent) if seq_of(k) == frame.seq), None)
                if i is None or (go_back is not None and i >= go_back):
                    continue  # settled already, or about to be sent again
                if frame.kind == Reply.ERROR:
                    code, detail = frame.payload[0], frame.payload[1]
                    if code in _RESEND:
                        go_back = i
                    elif code == LinkError.SEQUENCE:
                        # the device expects frame ``expected``: everything before it was
                        # taken (their answers were lost), everything after must follow it
                        expected = (detail - first_seq) & 0xFF
                        if i < expected <= sent:
                            for k in range(base, expected):
                                if pending[k].reply is None:
                                    pending[k].reply = Frame(Reply.ACK, seq_of(k), b"")
                        elif base <= expected < sent:
                            go_back = expected
                        else:
                            go_back = i
                    else:
                        error = self._device_error(name(i), code, detail)
                        if code == LinkError.BUSY and i == sent - 1:
                            # refused while a program runs, nothing sent after it: the link
                            # is in step; a RESET would stop the program
                            self.seq = seq_of(i + 1)
                            raise error
                        # The device took the refused frame and maybe those sent after it,
                        # which it will still play: start both sides afresh, so that the
                        # next command is not out of step with it.
                        self.reset()
                        raise error
                    continue
                pending[i].reply = frame
            while base < len(pending) and pending[base].reply is not None:
                self.stats.payload_down += len(pending[base].payload)
                base += 1
            if go_back is not None and go_back >= base:
                self.stats.resends += sent - go_back
                sent = go_back
            if now - last_progress > self.timeout:
                if base < len(pending):
                    if pending[base].tries > self.retries:
                        raise LinkTimeout(f"no answer from the device to {name(base)} "
                                          f"after {pending[base].tries} tries "
                                          f"({self.timeout:g} s each)")
                    self.stats.resends += sent - base
                    sent = base  # lost on the wire: go back
                    last_progress = now
                else:
                    raise LinkTimeout(f"the device stopped sending while a run was "
                                      f"outstanding ({len(collect.output)} output bytes, "
                                      f"{len(collect.done)} DONE)")
        self.seq = (first_seq + len(pending)) & 0xFF
        return [p.reply for p in pending]

    def request(self, command: int, payload: bytes = b"") -> Frame:
        return self.transact([(command, payload)])[0]

    def reset(self) -> None:
        """RESET: the device drops everything; frame order and output SEQ start anew.

        The device may be part-way through a frame of a host that died: its receiver then
        takes these bytes as that frame's payload, until the line has idled for its
        ``rx_idle_cycles`` (a millisecond on a board) and it drops the frame with ERROR
        TIMEOUT. So RESET is sent again after a pause, at once after such an ERROR, and
        again with longer pauses, until ``timeout`` seconds have passed.
        """
        self.decoder = FrameDecoder()
        flush = getattr(self.port, "reset_input_buffer", None)
        if flush is not None:
            try:
                flush()  # answers to a previous host are of no use
            except OSError as exc:
                raise PortError(f"reading from the serial port failed: {exc}") from None
        seq = self.seq
        start = time.monotonic()
        deadline = start + self.timeout
        up0, tries, dropped = self.stats.bytes_up, 0, 0
        while True:
            self._write(encode_frame(Command.RESET, seq))
            tries += 1
            until = min(time.monotonic() + _RESET_WAITS[min(tries, len(_RESET_WAITS)) - 1],
                        deadline)
            again = False
            while not again and time.monotonic() < until:
                for frame in self._read(0.02):
                    if frame.kind == Reply.ACK and frame.seq == seq:
                        self.seq = (seq + 1) & 0xFF
                        self.device_seq = 0
                        self._side.clear()
                        return
                    if frame.kind == Reply.ERROR and frame.payload[:1] == bytes(
                            [LinkError.TIMEOUT]):
                        dropped += 1
                        again = True  # the device was mid-frame and is hunting now
            if time.monotonic() >= deadline:
                break
        got = self.stats.bytes_up - up0
        where = getattr(self.port, "port", None)
        baud = getattr(self.port, "baudrate", None)
        raise LinkTimeout(
            f"no answer from the device to RESET: sent {tries} times over "
            f"{time.monotonic() - start:.1f} s, waiting for a cut-off frame to be dropped in "
            f"between; {got} bytes came back"
            + (f" ({dropped} frame(s) dropped)" if dropped else
               ", none of them a frame" if got else "")
            + f". Is a board with this project's bitstream on {where or 'the port'}"
            + (f" at {baud:,} baud" if baud else "") + "?")

    @staticmethod
    def _device_error(what: str, code: int, detail: int) -> DriverError:
        if code == LinkError.CONFIG:
            err = ConfigError(detail) if detail in ConfigError._value2member_map_ else None
            field = err.field if err else "?"
            text = err.message if err else f"code {detail}"
            return DeviceError(f"device refused the configuration: {field}: {text}",
                               code=detail, field=field)
        if code == LinkError.STALL:
            return DeviceError(f"the engine made no progress during {what}: frames out of "
                               "order for the running layer", code=code, field="stream")
        if code == LinkError.NO_MEMORY:
            return DeviceError(f"device refused {what}: it was built without external "
                               "memory", code=code, field="memory")
        if code in (LinkError.MEM_RANGE, LinkError.MEM_TIMEOUT):
            fault = (MemFault(detail).name.lower().replace("_", " ")
                     if detail in MemFault._value2member_map_ else f"detail {detail}")
            if code == LinkError.MEM_RANGE:
                return DeviceError(f"device refused {what}: {fault} (address and length must "
                                   "be whole native-port words inside the memory)",
                                   code=code, field="memory")
            return DeviceError(f"the memory did not answer {what} ({fault}): is it brought "
                               "up? (the driver does that on open)", code=code, field="memory")
        if code == LinkError.BUSY:
            why = ("a layer program is running" if detail == Busy.PROGRAM else
                   "the engine is part-way through a streamed run")
            return DeviceError(f"device refused {what}: {why}", code=code, field="busy")
        reason = LinkError(code).name if code in LinkError._value2member_map_ else str(code)
        return ProtocolError(f"device rejected {what}: {reason}")

