"""cocotb testbench of the board top (UART PHY + link layer + engine), at the bit level.

The serial line is driven and read by cocotbext-uart at the board's real clock-to-baud ratio
(96 MHz, 12 Mbaud: 8 clocks a bit). Every command is exercised, errors are provoked, and
malformed input is fuzzed; afterwards IDENTIFY must still answer and the weights loaded
before the fuzz must still be there (a compute-only run is bit-exact).
``BOARD_CONFIG`` names the engine configuration (``sim/engine_configs.py``).
"""

from __future__ import annotations

import os
import random
import struct

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, with_timeout
from cocotb.utils import get_sim_time
from cocotbext.uart import UartSink, UartSource

from sim.engine_configs import CONFIGS
from sim.fire_cases import random_fire, random_input
from spec.frames import config_frame, decode_values, load_frames, tile_frames
from spec.params import ConfigError, pack_config
from spec.protocol import (
    COUNTER_FIELDS,
    DONE_FIELDS,
    Command,
    FrameDecoder,
    LinkError,
    Reply,
    encode_frame,
    item_bytes,
    unpack_fields,
    unpack_identity,
)
from spec.tiling import FirePlan, Shape
from sw import ops

PARAMS = CONFIGS[os.environ.get("BOARD_CONFIG", "arty_a7")]
CLOCK_HZ = int(os.environ.get("BOARD_CLOCK_HZ", 96_000_000))
BAUD = int(os.environ.get("BOARD_BAUD", 12_000_000))
#: the top's idle timeout mid-frame, in clock cycles (short here, to keep the tests fast)
RX_IDLE = int(os.environ.get("BOARD_RX_IDLE", 2000))
#: a byte on the line, in clock cycles (8N1)
BYTE_CYCLES = 10 * CLOCK_HZ // BAUD
#: long enough for the device to drop a frame cut short and say so, in whole microseconds
IDLE_US = -(-2 * RX_IDLE * 10**6 // CLOCK_HZ) + 10


class Host:
    """The host side of the protocol over cocotbext-uart."""

    def __init__(self, dut):
        self.dut = dut
        period_ps = 2 * round(0.5e12 / CLOCK_HZ)  # an even number of steps
        cocotb.start_soon(Clock(dut.clk, period_ps, unit="ps").start())
        self.source = UartSource(dut.rx, baud=BAUD, bits=8, stop_bits=1)
        self.sink = UartSink(dut.tx, baud=BAUD, bits=8, stop_bits=1)
        self.decoder = FrameDecoder()
        self.seq = 0
        self.frames = []

    async def reset_dut(self):
        self.dut.rx.value = 1
        self.dut.rst.value = 1
        await ClockCycles(self.dut.clk, 4)
        self.dut.rst.value = 0
        await ClockCycles(self.dut.clk, 4)

    async def send_raw(self, data: bytes):
        await self.source.write(bytes(data))
        await self.source.wait()

    async def send(self, kind, payload=b"", seq=None):
        seq = self.seq if seq is None else seq
        await self.send_raw(encode_frame(kind, seq, payload))
        if seq == self.seq:
            self.seq = (self.seq + 1) & 0xFF
        return seq

    async def next_frame(self, timeout_us=2000):
        async def wait():
            while not self.frames:
                data = await self.sink.read(1)
                data += self.sink.read_nowait()
                self.frames += self.decoder.feed(bytes(data))
            return self.frames.pop(0)

        return await with_timeout(wait(), timeout_us, "us")

    async def reply_to(self, seq, timeout_us=2000):
        """The reply to frame ``seq``; OUTPUT/DONE frames meanwhile are kept aside."""
        while True:
            frame = await self.next_frame(timeout_us)
            if frame.kind in (Reply.OUTPUT, Reply.DONE):
                self.side.append(frame)
                continue
            assert frame.seq == seq, f"reply to {frame.seq}, expected {seq}: {frame}"
            return frame

    side: list

    async def command(self, kind, payload=b"", timeout_us=2000):
        seq = await self.send(kind, payload)
        return await self.reply_to(seq, timeout_us)

    async def reset(self):
        seq = await self.send(Command.RESET)
        self.seq = (seq + 1) & 0xFF
        while True:
            frame = await self.next_frame()
            if frame.kind == Reply.ACK and frame.seq == seq:
                self.side = []
                return

    async def run_layer(self, plan, layer, x, *, load=True):
        """One single-tile layer through the wire; returns (output, DONE fields)."""
        self.side = []
        frames = tile_frames(plan, plan.tiles[0], layer, x, load=load)
        for kind, payload in frames:
            reply = await self.command(kind, payload, timeout_us=20000)
            assert reply.kind == Reply.ACK, f"{Command(kind).name}: {reply}"
        while not any(f.kind == Reply.DONE for f in self.side):
            self.side.append(await self.next_frame(20000))
        data = b"".join(f.payload for f in self.side if f.kind == Reply.OUTPUT)
        done = unpack_fields(DONE_FIELDS, [f for f in self.side if f.kind == Reply.DONE][0]
                             .payload)
        return plan.assemble([decode_values(data, PARAMS.bits)]), done


def small_layer(rng, bypass=False):
    e = min(PARAMS.max_e1, PARAMS.max_e3, 6)
    cin = 2 * e if bypass else min(PARAMS.max_cin, 12)
    s = min(PARAMS.max_squeeze, 3)
    layer = random_fire(rng, cin, s, e, e, bits=PARAMS.bits, bypass=bypass)
    x = random_input(rng, 3, 2, cin, bits=PARAMS.bits)
    plan = FirePlan(PARAMS, Shape(3, 2, cin, s, e, e), bypass=bypass)
    assert len(plan.tiles) == 1
    return plan, layer, x


@cocotb.test()
async def every_command(dut):
    """IDENTIFY, CONFIGURE, LOAD_WEIGHTS, LOAD_QPARAMS, RUN_INPUT, RUN_BYPASS, READ_COUNTERS,
    RESET; the layer's output bit-exact."""
    host = Host(dut)
    await host.reset_dut()
    await host.reset()
    ident = await host.command(Command.IDENTIFY)
    assert ident.kind == Reply.IDENTITY
    info = unpack_identity(ident.payload)
    assert info.params == PARAMS and info.clock_hz == CLOCK_HZ and info.baud == BAUD
    assert info.rx_idle_cycles == RX_IDLE
    rng = np.random.default_rng(1)
    for bypass in ([False, True] if PARAMS.bypass else [False]):
        plan, layer, x = small_layer(rng, bypass)
        got, done = await host.run_layer(plan, layer, x)
        np.testing.assert_array_equal(got, ops.fire(x, layer, PARAMS.spec))
        assert done["error"] == 0 and done["cycles"] > 0
        # the UART delivers a byte every BYTE_CYCLES: most of the run is waiting on it
        assert 0 < done["compute"] < done["cycles"] // 2, done
    counters = unpack_fields(COUNTER_FIELDS, (await host.command(Command.READ_COUNTERS)).payload)
    assert counters["runs"] >= 1 and counters["frames"] >= 6 and counters["bad_crc"] == 0
    assert counters["cycles"] == done["cycles"] and counters["compute"] == done["compute"]
    assert counters["rx_timeouts"] == 0


@cocotb.test()
async def error_replies(dut):
    """Bad CRC, unknown command, bad length, configuration beyond the maxima, out of order."""
    host = Host(dut)
    await host.reset_dut()
    await host.reset()
    frame = bytearray(encode_frame(Command.LOAD_WEIGHTS, host.seq, b"\x01" * 16))
    frame[-1] ^= 0xFF
    await host.send_raw(frame)
    reply = await host.reply_to(host.seq)
    assert reply.kind == Reply.ERROR and reply.payload[0] == LinkError.BAD_CRC
    reply = await host.command(0x55)
    assert reply.payload[0] == LinkError.UNKNOWN_COMMAND
    host.seq = (host.seq - 1) & 0xFF  # unknown commands are not accepted: same SEQ again
    reply = await host.command(Command.IDENTIFY, b"\x00")
    assert reply.payload[0] == LinkError.BAD_LENGTH
    host.seq = (host.seq - 1) & 0xFF
    too_big = pack_config(PARAMS, h=PARAMS.max_h + 1, w=2, cin=4, s=2, e1=2, e3=2, load=1,
                          compute=1, squeeze=1)
    reply = await host.command(Command.CONFIGURE, too_big.to_bytes(
        item_bytes(PARAMS)[Command.CONFIGURE], "little"))
    assert reply.kind == Reply.ERROR and reply.payload[0] == LinkError.CONFIG
    assert reply.payload[1] == ConfigError.H
    stale = await host.send(Command.IDENTIFY, seq=(host.seq + 5) & 0xFF)
    reply = await host.reply_to(stale)
    assert reply.payload[0] == LinkError.SEQUENCE and reply.payload[1] == host.seq
    assert (await host.command(Command.IDENTIFY)).kind == Reply.IDENTITY


@cocotb.test()
async def fuzz_then_identify(dut):
    """Random bytes, truncated frames, bad CRCs and oversized lengths; then IDENTIFY answers
    and the weights loaded before are intact (a compute-only run is bit-exact)."""
    host = Host(dut)
    await host.reset_dut()
    await host.reset()
    rng = np.random.default_rng(7)
    plan, layer, x = small_layer(rng)
    got, _ = await host.run_layer(plan, layer, x)
    want = ops.fire(x, layer, PARAMS.spec)
    np.testing.assert_array_equal(got, want)
    random.seed(3)
    good = encode_frame(Command.LOAD_QPARAMS, host.seq, bytes(range(18)))
    garbage = [bytes(random.getrandbits(8) for _ in range(200)),
               good[:5],  # truncated in the header
               good[:12],  # truncated in the payload
               good[:-1] + bytes([good[-1] ^ 1]),  # bad CRC
               struct.pack("<BBBH", 0xA5, Command.LOAD_WEIGHTS, host.seq, 0xFFFF),  # too long
               bytes([0xA5] * 40),
               bytes(random.getrandbits(8) for _ in range(100))]
    for chunk in garbage:
        await host.send_raw(chunk)
        await ClockCycles(dut.clk, 2 * RX_IDLE)  # the line idles between chunks
    # the frame cut in its payload was dropped once its line idled (ERROR TIMEOUT), the one
    # with a bad CRC was refused (ERROR BAD_CRC); the rest hunted past without a reply
    host.frames += host.decoder.feed(bytes(host.sink.read_nowait()))
    errors = [(f.payload[0], f.seq) for f in host.frames if f.kind == Reply.ERROR]
    assert errors == [(LinkError.TIMEOUT, host.seq), (LinkError.BAD_CRC, host.seq)], errors
    host.frames.clear()
    # answered on the first try: nothing of the fuzz is left in the receiver
    reply = await host.command(Command.IDENTIFY, timeout_us=200)
    assert reply.kind == Reply.IDENTITY, reply
    counters = unpack_fields(COUNTER_FIELDS, (await host.command(Command.READ_COUNTERS)).payload)
    assert counters["rx_timeouts"] == 1 and counters["bad_crc"] == 1, counters
    again, done = await host.run_layer(plan, layer, x, load=False)
    np.testing.assert_array_equal(again, want)
    assert done["error"] == 0


@cocotb.test()
async def reset_mid_run(dut):
    """RESET while a layer is half streamed: the next layer runs bit-exactly."""
    host = Host(dut)
    await host.reset_dut()
    await host.reset()
    rng = np.random.default_rng(9)
    plan, layer, x = small_layer(rng)
    tile = plan.tiles[0]
    reply = await host.command(*config_frame(plan, tile, layer, load=True))
    assert reply.kind == Reply.ACK
    first = load_frames(plan, tile, layer)[0]  # the weights; their qparams never follow
    assert first[0] == Command.LOAD_WEIGHTS
    assert (await host.command(*first)).kind == Reply.ACK
    await host.reset()
    plan, layer, x = small_layer(rng)
    got, done = await host.run_layer(plan, layer, x)
    np.testing.assert_array_equal(got, ops.fire(x, layer, PARAMS.spec))


@cocotb.test()
async def truncated_frames(dut):
    """A frame cut after each of its bytes (a host that died mid-frame), then IDENTIFY from a
    new host: answered on the first try. Cut after its header, the frame is dropped once the
    line has idled RX_IDLE cycles, with ERROR TIMEOUT for its SEQ."""
    host = Host(dut)
    await host.reset_dut()
    await host.reset()
    payload = bytes(range(2 * item_bytes(PARAMS)[Command.LOAD_QPARAMS]))
    for cut in range(1, len(encode_frame(Command.LOAD_QPARAMS, 0, payload))):
        host.frames.clear()
        # the SEQ the device expects next: cut after the header, it waits for the payload
        await host.send_raw(encode_frame(Command.LOAD_QPARAMS, host.seq, payload)[:cut])
        start = get_sim_time("ns")
        if cut >= 7:  # a whole header: the receiver waits for the rest, then gives up
            reply = await host.next_frame(timeout_us=IDLE_US)
            waited = (get_sim_time("ns") - start) * 1e-9 * CLOCK_HZ
            assert reply.kind == Reply.ERROR and reply.payload[0] == LinkError.TIMEOUT, reply
            assert reply.seq == host.seq
            # dropped no sooner than RX_IDLE, and soon after (the reply's own bytes)
            assert RX_IDLE <= waited <= RX_IDLE + 30 * BYTE_CYCLES, (cut, waited)
        reply = await host.command(Command.IDENTIFY, timeout_us=200)
        assert reply.kind == Reply.IDENTITY, (cut, reply)


@cocotb.test()
async def reset_into_truncated_frame(dut):
    """A host that died mid-frame and a new one that sends RESET at once: the RESET is taken
    as the dead frame's payload, the frame is dropped once the line idles, and the RESET sent
    again is answered (what the driver's open does)."""
    host = Host(dut)
    await host.reset_dut()
    await host.reset()
    rows = max(4, 64 // item_bytes(PARAMS)[Command.LOAD_WEIGHTS])  # well over 20 bytes
    frame = encode_frame(Command.LOAD_WEIGHTS, host.seq, bytes(item_bytes(PARAMS)[
        Command.LOAD_WEIGHTS] * rows))
    await host.send_raw(frame[:20])
    seq = await host.send(Command.RESET, seq=0x40)
    first = await host.next_frame(timeout_us=IDLE_US)
    assert first.kind == Reply.ERROR and first.payload[0] == LinkError.TIMEOUT, first
    assert first.seq != seq
    host.seq = 0x40
    await host.reset()
    assert (await host.command(Command.IDENTIFY)).kind == Reply.IDENTITY


@cocotb.test()
async def sync_byte_then_frame(dut):
    """A stray SYNC (and other bytes) right before a real frame, closer than a header's length:
    the receiver's sliding window finds the real header, answered on the first try."""
    host = Host(dut)
    await host.reset_dut()
    await host.reset()
    for lead in (b"\xa5", b"\xa5\x01", b"\xa5\x01\x00\x00", b"\xa5" * 6, b"\x00\xa5\xa5\x03"):
        seq = host.seq
        await host.send_raw(lead + encode_frame(Command.IDENTIFY, seq))
        host.seq = (seq + 1) & 0xFF
        reply = await host.reply_to(seq, timeout_us=200)
        assert reply.kind == Reply.IDENTITY, (lead, reply)
