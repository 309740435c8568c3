"""Fuzz the link: malformed input against a device, IDENTIFY checked after every chunk.

    python -m sim.fuzz [--chunks N] [--seed S] [--json]          # the simulated board
    python -m sim.fuzz --port /dev/ttyUSB1 [--baud B] [--chunks N]   # a board

Each chunk is one kind of bad input, chosen at random: random bytes, a run of SYNC bytes, a
frame cut short at a random point (with the SEQ the device expects, the worst case: the
receiver waits for the rest until its line idles), a bad header CRC, a bad payload CRC, an
oversized length, an unknown command, a frame out of sequence, a payload of the wrong size;
with ``--memory`` (the simulated board with its DRAM, brought up first) also memory commands
of every kind with random addresses and lengths, in range or not, aligned or not, with
headers too short or too long (each a frame the device takes, answers, and counts in the
order). Valid commands are interleaved: after every chunk a check sends IDENTIFY with the SEQ the
device expects and must get IDENTITY back within ``--limit`` seconds (resending at once when
the device reports the frame that swallowed it dropped, as the driver does); every so often a
READ_COUNTERS or a RESET. Replies to the bad frames themselves are ignored, but a SEQUENCE
error whose expected SEQ differs from the fuzzer's own count is a failure: the device lost
track of the order.

Prints chunks sent by kind, checks passed, the slowest and mean recovery (chunk sent to
IDENTITY back), and the device's error counters before and after. Exit status 0 when every
check passed, 1 otherwise, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import json
import random
import struct
import sys
import time
from collections import Counter
from contextlib import ExitStack

from spec.protocol import (
    COUNTER_FIELDS,
    MAX_PAYLOAD,
    SYNC,
    Command,
    FrameDecoder,
    LinkError,
    Reply,
    crc16,
    encode_frame,
    unpack_fields,
)

#: the kinds of bad input, in the order of the module docstring
KINDS = ("random_bytes", "sync_run", "truncated", "bad_header_crc", "bad_payload_crc",
         "oversized_length", "unknown_command", "out_of_sequence", "bad_length")
#: frames a chunk may imitate: every command with a payload, and those without
_DATA = (Command.CONFIGURE, Command.LOAD_WEIGHTS, Command.LOAD_QPARAMS, Command.RUN_INPUT,
         Command.RUN_BYPASS)


class CheckFailed(Exception):
    """The device did not answer as it must."""


def header(kind: int, seq: int, length: int) -> bytes:
    head = struct.pack("<BBBH", SYNC, kind, seq & 0xFF, length)
    return head + struct.pack("<H", crc16(head))


def chunk(rng: random.Random, kind: str, expected: int) -> bytes:
    """One chunk of bad input of ``kind``; ``expected`` is the SEQ the device expects."""
    if kind == "random_bytes":
        return rng.randbytes(rng.randint(1, 300))
    if kind == "sync_run":
        return bytes([SYNC]) * rng.randint(1, 40)
    if kind == "truncated":
        frame = encode_frame(rng.choice(_DATA), expected, rng.randbytes(rng.randint(1, 600)))
        return frame[:rng.randint(1, len(frame) - 1)]
    if kind == "bad_header_crc":
        frame = bytearray(encode_frame(Command.IDENTIFY, expected))
        frame[rng.randint(1, 6)] ^= 1 << rng.randint(0, 7)
        return bytes(frame)
    if kind == "bad_payload_crc":
        frame = bytearray(encode_frame(rng.choice(_DATA), expected,
                                       rng.randbytes(rng.randint(1, 64))))
        frame[rng.randint(7, len(frame) - 1)] ^= 1 << rng.randint(0, 7)
        return bytes(frame)
    if kind == "oversized_length":
        return header(rng.choice(_DATA), expected, rng.randint(MAX_PAYLOAD + 1, 0xFFFF))
    if kind == "unknown_command":
        known = {int(c) for c in Command}
        command = rng.choice([k for k in range(256) if k not in known])
        return encode_frame(command, expected, rng.randbytes(rng.randint(0, 16)))
    if kind == "out_of_sequence":
        return encode_frame(Command.IDENTIFY, (expected + rng.randint(1, 255)) & 0xFF)
    if kind == "bad_length":
        if rng.random() < 0.5:  # a payload where none belongs
            return encode_frame(Command.IDENTIFY, expected, rng.randbytes(rng.randint(1, 8)))
        return encode_frame(rng.choice(_DATA), expected, b"")  # none where one must be
    raise ValueError(kind)


def memory_chunk(rng: random.Random, expected: int, size: int) -> bytes:
    """A memory command of random kind, address and length: most are refused (beyond the
    end, unaligned, a header cut short or followed by bytes it should not have), some are
    carried out (kept small: a copy of at most 64 KB)."""
    def address():
        return rng.choice([rng.randrange(0, size, 16), rng.randrange(0, size),
                           size - 16 * rng.randint(0, 4), rng.randrange(size, 1 << 32)])

    command = rng.choice([Command.WRITE_MEM, Command.READ_MEM, Command.READ_CSR,
                          Command.COPY_MEM])
    if command == Command.WRITE_MEM:
        payload = struct.pack("<I", address()) + rng.randbytes(rng.choice([16, 32, 48,
                                                                          rng.randint(0, 200)]))
    elif command == Command.READ_MEM:
        payload = struct.pack("<II", address(), rng.choice([16, 64, 4096, rng.randint(0, 5000)]))
    elif command == Command.READ_CSR:
        payload = struct.pack("<I", rng.choice([0, 4, 0x800, rng.randrange(1 << 16)]))
    else:
        payload = struct.pack("<III", address(), address(),
                              rng.choice([16, 4096, rng.randint(0, 1 << 16)]))
    cut = rng.random()
    if cut < 0.1:
        payload = payload[:rng.randint(1, len(payload))]  # a header cut short
    elif cut < 0.2 and command != Command.WRITE_MEM:
        payload += rng.randbytes(rng.randint(1, 8))  # bytes where none belong
    return encode_frame(command, expected, payload)


class Fuzzer:
    """Speaks the protocol directly: it must send what no driver would."""

    def __init__(self, port, limit: float, rng: random.Random):
        self.port = port
        self.limit = limit
        self.rng = rng
        self.decoder = FrameDecoder()
        self.expected = 0  # the SEQ the device expects next, by our count

    def write(self, data: bytes) -> None:
        self.port.write(data)
        self.port.flush()

    def frames(self, wait: float):
        self.port.timeout = wait
        data = self.port.read(max(1, self.port.in_waiting or 0))
        return self.decoder.feed(data) if data else []

    def check_sequence(self, frame) -> None:
        if (frame.kind == Reply.ERROR and frame.payload[0] == LinkError.SEQUENCE
                and frame.payload[1] != self.expected):
            raise CheckFailed(f"the device expects SEQ {frame.payload[1]}, the fuzzer "
                              f"counted {self.expected}: it lost track of the order")

    def ask(self, command: int, answer: int) -> bytes:
        """Send ``command`` with the expected SEQ until ``answer`` comes back; its payload."""
        seq = self.expected
        deadline = time.monotonic() + self.limit
        self.write(encode_frame(command, seq))
        while time.monotonic() < deadline:
            for frame in self.frames(0.01):
                self.check_sequence(frame)
                if frame.seq != seq:
                    continue
                if frame.kind == answer:
                    self.expected = (seq + 1) & 0xFF
                    return frame.payload
                if frame.kind == Reply.ERROR and frame.payload[0] in (LinkError.BAD_CRC,
                                                                      LinkError.TIMEOUT):
                    # the frame that swallowed ours was dropped: the line is hunting again
                    self.write(encode_frame(command, seq))
                # other answers with this SEQ are the bad frames' own
        raise CheckFailed(f"no {Reply(answer).name} to {Command(command).name} within "
                          f"{self.limit:g} s")

    def taken(self, frame: bytes) -> None:
        """Send a frame (with the expected SEQ) that the device takes, whatever it then
        answers (memory commands, refused or carried out): wait for that answer, then count
        the frame in the order."""
        seq = self.expected
        deadline = time.monotonic() + self.limit
        self.write(frame)
        while time.monotonic() < deadline:
            for reply in self.frames(0.01):
                self.check_sequence(reply)
                if reply.seq == seq and not (reply.kind == Reply.ERROR
                                             and reply.payload[0] == LinkError.SEQUENCE):
                    self.expected = (seq + 1) & 0xFF
                    return
        raise CheckFailed(f"no answer to a memory command within {self.limit:g} s")

    def reset(self) -> None:
        seq = self.rng.randrange(256)
        deadline = time.monotonic() + self.limit
        self.write(encode_frame(Command.RESET, seq))
        while time.monotonic() < deadline:
            for frame in self.frames(0.01):
                if frame.kind == Reply.ACK and frame.seq == seq:
                    self.expected = (seq + 1) & 0xFF
                    return
                if frame.kind == Reply.ERROR and frame.payload[0] == LinkError.TIMEOUT:
                    self.write(encode_frame(Command.RESET, seq))
        raise CheckFailed(f"no ACK to RESET within {self.limit:g} s")

    def counters(self) -> dict:
        return unpack_fields(COUNTER_FIELDS, self.ask(Command.READ_COUNTERS, Reply.COUNTERS))


def run(port, *, chunks: int, seed: int, limit: float, progress=None,
        memory_size: int | None = None) -> dict:
    """The campaign on an open port; returns its figures (``failures`` lists what failed).
    With ``memory_size`` (a device whose memory is up), memory commands are in the mix."""
    rng = random.Random(seed)
    kinds = KINDS + (("memory_command",) if memory_size else ())
    fuzz = Fuzzer(port, limit, rng)
    port.reset_input_buffer()
    fuzz.reset()
    before = fuzz.counters()
    sent: Counter[str] = Counter()
    recoveries: list[float] = []
    failures: list[str] = []
    started = time.monotonic()
    for i in range(chunks):
        kind = rng.choice(kinds)
        sent[kind] += 1
        t0 = time.monotonic()
        try:
            if kind == "memory_command":
                fuzz.taken(memory_chunk(rng, fuzz.expected, memory_size))
            else:
                fuzz.write(chunk(rng, kind, fuzz.expected))
            fuzz.ask(Command.IDENTIFY, Reply.IDENTITY)
            recoveries.append(time.monotonic() - t0)
            if i % 97 == 96:
                fuzz.counters()
            if i % 499 == 498:
                fuzz.reset()
        except CheckFailed as exc:
            failures.append(f"chunk {i} ({kind}): {exc}")
            try:
                fuzz.reset()  # start again from a known state
            except CheckFailed as again:
                failures.append(f"after chunk {i}: {again}; stopping")
                break
        if progress is not None:
            progress(i + 1, len(failures))
    after = fuzz.counters()
    counted = ("bad_header", "bad_crc", "rx_timeouts", "uart_errors", "stalls", "frames")
    return {
        "chunks": sum(sent.values()), "by_kind": dict(sorted(sent.items())), "seed": seed,
        "checks": len(recoveries) + len(failures), "checks_passed": len(recoveries),
        "limit_s": limit,
        "slowest_recovery_s": max(recoveries, default=0.0),
        "mean_recovery_s": sum(recoveries) / len(recoveries) if recoveries else 0.0,
        "seconds": time.monotonic() - started,
        "device_counters": {k: after[k] - before[k] for k in counted},
        "failures": failures,
    }


def report(result: dict) -> str:
    kinds = ", ".join(f"{k} {n}" for k, n in result["by_kind"].items())
    dev = ", ".join(f"{k} +{v}" for k, v in result["device_counters"].items())
    lines = [f"{result['chunks']:,} malformed chunks (seed {result['seed']}): {kinds}",
             f"IDENTIFY checks: {result['checks_passed']:,} of {result['checks']:,} passed "
             f"(each within {result['limit_s']:g} s)",
             f"recovery, chunk sent to IDENTITY back: slowest {result['slowest_recovery_s']:.3f}"
             f" s, mean {result['mean_recovery_s'] * 1e3:.1f} ms; {result['seconds']:.0f} s in "
             "all",
             f"device counters: {dev}"]
    lines += [f"FAILED: {f}" for f in result["failures"]]
    return "\n".join(lines)


def main(argv=None) -> int:
    from boards import BOARDS, DEFAULT_BOARD
    from spec.cli import ArgumentParser, add_quiet, at_least, positive_float

    ap = ArgumentParser(prog="python -m sim.fuzz", description=__doc__,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chunks", "--frames", type=at_least(1), default=2000, metavar="N",
                    help="malformed chunks to send, at least 1 (default: 2000)")
    ap.add_argument("--seed", type=int, default=1, help="random seed (default: 1)")
    ap.add_argument("--limit", type=positive_float, default=1.0, metavar="SECONDS",
                    help="seconds each IDENTIFY check may take (default: 1)")
    ap.add_argument("--port", help="serial port of a board (default: the simulated board)")
    ap.add_argument("--baud", type=at_least(1), metavar="N",
                    help="link baud (default: the board's)")
    ap.add_argument("--board", default=DEFAULT_BOARD, choices=sorted(BOARDS),
                    help=f"board definition (default: {DEFAULT_BOARD})")
    ap.add_argument("--memory", action="store_true",
                    help="the simulated board with its external memory (brought up first), "
                         "and memory commands among the chunks")
    ap.add_argument("--json", action="store_true", help="print machine-readable JSON")
    add_quiet(ap)
    args = ap.parse_args(argv)
    if args.memory and args.port:
        ap.error("--memory is for the simulated board (a board's memory is brought up by "
                 "the driver: run sw.driver info --port first)")
    try:
        return _main(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _main(args) -> int:
    import serial

    from boards import get_board
    from spec.cli import Progress

    baud = args.baud or get_board(args.board).baud
    with ExitStack() as stack:
        progress = Progress(quiet=args.quiet)
        if args.port:
            path = args.port
        else:
            from sim.board import SimulatedBoard

            progress.note(f"starting the simulated {args.board} board...")
            path = stack.enter_context(SimulatedBoard(args.board, memory=args.memory)).port
        memory_size = None
        if args.memory:
            from sw.driver import Accelerator, DriverError

            try:  # the driver brings the memory up, as it does on open
                with Accelerator.open(path, baud) as acc:
                    memory_size = acc.memory.size
            except DriverError as exc:
                print(f"error: bringing the memory up failed: {exc}", file=sys.stderr)
                return 2
        try:
            port = stack.enter_context(serial.Serial(path, baudrate=baud, timeout=0.01))
        except (serial.SerialException, OSError, ValueError) as exc:
            print(f"error: cannot open serial port {path}: {exc}", file=sys.stderr)
            return 2
        bar = stack.enter_context(progress.bar(args.chunks, "fuzz", "chunk"))
        try:
            result = run(port, chunks=args.chunks, seed=args.seed, limit=args.limit,
                         memory_size=memory_size,
                         progress=lambda done, failed: bar.update(
                             f"{failed} failed" if failed else ""))
        except CheckFailed as exc:
            print(f"error: the device does not answer before the fuzz: {exc}", file=sys.stderr)
            return 2
    print(json.dumps(result, indent=2) if args.json else report(result), flush=True)
    return 0 if not result["failures"] else 1


if __name__ == "__main__":
    sys.exit(main())
