"""The frames one Fire tile is sent as, and the values its OUTPUT frames carry back.

One codec for every host: the driver (``sw.driver``) and the cocotb board testbench
(``sim/tb_board.py``) both build their frames here, so the testbench checks the bytes the
driver really sends.

    frames = tile_frames(plan, tile, layer, x, load=True)   # [(Command, payload), ...]
    y = decode_values(output_bytes, plan.p.bits)            # OUTPUT payloads -> int64 array
"""

from __future__ import annotations

import numpy as np

from .protocol import MAX_PAYLOAD, Command, item_bytes
from .tiling import FirePlan, lanes_to_ints


def encode_items(values, size: int) -> bytes:
    """Unsigned little-endian items of ``size`` bytes each."""
    return b"".join(int(v).to_bytes(size, "little", signed=False) for v in values)


def split_payload(data: bytes, item: int, max_payload: int = MAX_PAYLOAD) -> list[bytes]:
    """Split into frame payloads of whole items, each at most ``max_payload`` bytes."""
    if max_payload < item:
        raise ValueError(f"a {item}-byte item does not fit a {max_payload}-byte payload")
    step = (max_payload // item) * item
    return [data[i:i + step] for i in range(0, len(data), step)]


def item_frames(kind: Command, values, size: int,
                max_payload: int = MAX_PAYLOAD) -> list[tuple[Command, bytes]]:
    """``values`` as frames of command ``kind``."""
    return [(kind, c) for c in split_payload(encode_items(values, size), size, max_payload)]


def config_frame(plan: FirePlan, tile, layer, *, load: bool) -> tuple[Command, bytes]:
    word = plan.config(tile, layer, load=load, compute=True)
    return Command.CONFIGURE, word.to_bytes(item_bytes(plan.p)[Command.CONFIGURE], "little")


def load_frames(plan: FirePlan, tile, layer,
                max_payload: int = MAX_PAYLOAD) -> list[tuple[Command, bytes]]:
    """The tile's weight rows and requantizer parameters."""
    sizes = item_bytes(plan.p)
    weights = lanes_to_ints(plan.weight_rows(tile, layer), plan.p.bits)
    return (item_frames(Command.LOAD_WEIGHTS, weights, sizes[Command.LOAD_WEIGHTS], max_payload)
            + item_frames(Command.LOAD_QPARAMS, plan.qparams(tile, layer),
                          sizes[Command.LOAD_QPARAMS], max_payload))


def data_frames(plan: FirePlan, tile, x,
                max_payload: int = MAX_PAYLOAD) -> list[tuple[Command, bytes]]:
    """Input and bypass rows interleaved in the order the engine takes them: input rows
    0 and 1, bypass row 0, input row 2, bypass row 1, ... (see docs/engine.md)."""
    p, sizes = plan.p, item_bytes(plan.p)
    h = plan.shape.h
    rows_in, rows_byp = [], []
    if tile.squeeze:
        words = lanes_to_ints(plan.input_words(x), p.bits)
        per_row = len(words) // h
        rows_in = [words[r * per_row:(r + 1) * per_row] for r in range(h)]
    if plan.bypass:
        mask = (1 << p.bits) - 1
        values = [int(v) & mask for v in plan.bypass_values(tile, x)]
        per_row = len(values) // h
        rows_byp = [values[r * per_row:(r + 1) * per_row] for r in range(h)]
    frames = []
    for r in range(h + 1):
        if rows_in and r < h:
            frames += item_frames(Command.RUN_INPUT, rows_in[r], sizes[Command.RUN_INPUT],
                                  max_payload)
        if rows_byp and (r >= 1 or not rows_in):
            row = r - 1 if rows_in else r
            if 0 <= row < h:
                frames += item_frames(Command.RUN_BYPASS, rows_byp[row],
                                      sizes[Command.RUN_BYPASS], max_payload)
    return frames


def tile_frames(plan: FirePlan, tile, layer, x, *, load: bool,
                max_payload: int = MAX_PAYLOAD) -> list[tuple[Command, bytes]]:
    """Every frame of one run: CONFIGURE, (the loads), then the interleaved data."""
    frames = [config_frame(plan, tile, layer, load=load)]
    if load:
        frames += load_frames(plan, tile, layer, max_payload)
    return frames + data_frames(plan, tile, x, max_payload)


def decode_values(data: bytes, bits: int) -> np.ndarray:
    """OUTPUT payload bytes -> signed ``bits``-bit values (int64). Each value is a
    sign-extended little-endian integer; anything else is a ValueError, never a wrong value."""
    size = -(-bits // 8)
    if len(data) % size:
        raise ValueError(f"{len(data)} output bytes is not a whole number of "
                         f"{size}-byte values")
    raw = np.frombuffer(data, dtype=np.uint8).reshape(-1, size).astype(np.int64)
    v = np.zeros(len(raw), dtype=np.int64)
    for i in range(size):
        v |= raw[:, i] << (8 * i)
    v = np.where(v >> (8 * size - 1), v - (1 << (8 * size)), v)  # the size-byte integer
    bad = np.flatnonzero((v < -(1 << (bits - 1))) | (v >= 1 << (bits - 1)))
    if len(bad):
        raise ValueError(f"output value {bad[0]} is {int(v[bad[0]])}, outside the device's "
                         f"{bits}-bit range ({len(bad)} such values)")
    return v
