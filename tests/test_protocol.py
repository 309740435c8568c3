"""The wire protocol's one statement (spec.protocol) against what uses it: the gateware's CRC
(amaranth.lib.crc), the engine's stream widths, and the host codec on damaged input."""

import binascii
import random
import struct

import numpy as np
import pytest
from amaranth import Value
from amaranth.hdl import Fragment
from amaranth.lib.crc.catalog import CRC16_CCITT_FALSE

from hw.engine import FireEngine
from sim.engine_configs import CONFIGS
from sim.fire_cases import random_fire, random_input
from spec.frames import decode_values, tile_frames
from spec.protocol import (
    CRC_INIT,
    CRC_POLY,
    DONE_FIELDS,
    ENGINE_STREAMS,
    ERROR_FIELDS,
    HEADER_BYTES,
    HEADER_CRC_COVERS,
    HEADER_FIELDS,
    MAX_PAYLOAD,
    Command,
    FrameDecoder,
    crc16,
    encode_frame,
    field_offsets,
    fields_size,
    item_bits,
    item_bytes,
)
from spec.tiling import FirePlan, Shape


def test_the_gateware_crc_is_the_host_crc():
    """The gateware's CRC-16/CCITT-FALSE (Amaranth's catalog) and the host's
    binascii.crc_hqx(data, 0xFFFF) are one algorithm: same polynomial, start, no reflection,
    same value on any data (and on the standard check string)."""
    algorithm = CRC16_CCITT_FALSE(data_width=8)
    assert (CRC16_CCITT_FALSE.crc_width, CRC_POLY, CRC_INIT) == (16, 0x1021, 0xFFFF)
    assert algorithm.compute(b"123456789") == crc16(b"123456789") == 0x29B1
    rng = random.Random(5)
    for _ in range(200):
        data = rng.randbytes(rng.randint(0, 64))
        assert algorithm.compute(data) == crc16(data) == binascii.crc_hqx(data, 0xFFFF)


def test_header_layout():
    assert fields_size(HEADER_FIELDS) == HEADER_CRC_COVERS == 5 and HEADER_BYTES == 7
    assert field_offsets(HEADER_FIELDS) == {"sync": 0, "kind": 1, "seq": 2, "length": 3}
    frame = encode_frame(Command.LOAD_QPARAMS, 0x42, bytes(range(18)))
    assert frame[:HEADER_CRC_COVERS] == struct.pack("<BBBH", 0xA5, Command.LOAD_QPARAMS, 0x42, 18)
    assert struct.unpack("<H", frame[HEADER_CRC_COVERS:HEADER_BYTES])[0] == crc16(frame[:5])
    assert fields_size(ERROR_FIELDS) == 2 and fields_size(DONE_FIELDS) == 11


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_item_sizes_are_the_engine_streams(config):
    """Each data command's item is one beat of the engine stream it feeds, as wide as that
    stream's payload; a payload of whole items is whole beats."""
    p = CONFIGS[config]
    engine = FireEngine(p)
    Fragment.get(engine, None)  # a real engine, elaborated
    bits = item_bits(p)
    assert set(bits) == {c for c in ENGINE_STREAMS if c != Command.RUN_BYPASS or p.bypass}
    for command, width in bits.items():
        port = getattr(engine, ENGINE_STREAMS[command])
        assert len(Value.cast(port.payload)) == width, command
        assert item_bytes(p)[command] == -(-width // 8)


def test_decoder_recovers_after_garbage_and_cut_frames():
    frames = [encode_frame(Command.IDENTIFY, 1), encode_frame(Command.LOAD_WEIGHTS, 2, b"x" * 80)]
    junk = b"\xa5\x01\x00" + frames[1][:30] + bytes(range(256))
    decoder = FrameDecoder()
    got = decoder.feed(junk + frames[0] + frames[1])
    assert [(f.kind, f.seq) for f in got] == [(Command.IDENTIFY, 1), (Command.LOAD_WEIGHTS, 2)]
    assert decoder.skipped > 0
    # an oversized length in a header whose CRC holds is skipped, not waited for
    head = struct.pack("<BBBH", 0xA5, 0x85, 3, MAX_PAYLOAD + 1)
    got = FrameDecoder().feed(head + struct.pack("<H", crc16(head)) + frames[0])
    assert [(f.kind, f.seq) for f in got] == [(Command.IDENTIFY, 1)]


@pytest.mark.parametrize("bits", [4, 8, 12, 16])
def test_output_values_decode_sign_extended_and_refuse_the_rest(bits):
    """decode_values reads the framer's sign-extended bytes; a value outside the device's range
    (a framer that stopped sign-extending, a corrupted byte) is an error, not a wrong number."""
    size = -(-bits // 8)
    values = np.arange(-(1 << (bits - 1)), 1 << (bits - 1))
    data = b"".join(int(v).to_bytes(size, "little", signed=True) for v in values)
    np.testing.assert_array_equal(decode_values(data, bits), values)
    zero_padded = b"".join((int(v) & ((1 << bits) - 1)).to_bytes(size, "little") for v in values)
    if 8 * size > bits:
        with pytest.raises(ValueError, match="outside the device's"):
            decode_values(zero_padded, bits)
    if size > 1:
        with pytest.raises(ValueError, match="whole number"):
            decode_values(data[:-1], bits)


@pytest.mark.parametrize("config", ["arty_a7", "small4", "wide16"])
def test_tile_frames_are_whole_items_within_the_payload_limit(config):
    """Every frame the driver sends for a tile carries whole items of its command's size and
    at most MAX_PAYLOAD bytes; the data frames hold exactly the tile's input and bypass."""
    p = CONFIGS[config]
    sizes = item_bytes(p)
    rng = np.random.default_rng(1)
    e = min(p.max_e1, p.max_e3)
    shape = Shape(h=5, w=7, cin=2 * e, s=min(p.max_squeeze, 40), e1=e, e3=e)
    plan = FirePlan(p, shape, bypass=p.bypass)
    layer = random_fire(rng, shape.cin, shape.s, e, e, bits=p.bits, bypass=p.bypass)
    x = random_input(rng, shape.h, shape.w, shape.cin, bits=p.bits)
    assert len(plan.tiles) > 1
    for tile in plan.tiles:
        frames = tile_frames(plan, tile, layer, x, load=True)
        assert frames[0][0] == Command.CONFIGURE
        for kind, payload in frames:
            assert 0 < len(payload) <= MAX_PAYLOAD and len(payload) % sizes[kind] == 0
        count = {k: sum(len(pl) for kk, pl in frames if kk == k) // sizes[k] for k in sizes}
        assert count[Command.RUN_INPUT] == (len(plan.input_words(x)) if tile.squeeze else 0)
        assert count[Command.RUN_BYPASS] == (len(plan.bypass_values(tile, x)) if plan.bypass else 0)
        assert count[Command.LOAD_WEIGHTS] == len(plan.weight_rows(tile, layer))
