"""The layer program: what the on-chip layer sequencer (``hw.layer_sequencer``) walks.

A program is a list of descriptors in the device's memory, :data:`DESC_BYTES` each, ended by
an ``END`` descriptor: an engine run (a Fire layer's output-channel tile, a convolution's
channel and pixel block), a max pool or the global average pool. The host compiles a network
into programs and writes them, with every run's configuration word, weight rows and
parameters, into the memory once (``sw.driver.resident``); RUN_PROGRAM then starts the
sequencer at a program's address. docs/resident.md has the whole picture.

Per ``ENGINE`` descriptor the sequencer reads the configuration item at ``cfg_addr`` into
the engine, then (when the descriptor has any) ``w_rows`` weight rows (each ``oc_lanes``
beats: ``EngineParams.weight_beat_bits``) from ``w_addr`` and
``q_count`` parameter entries from ``q_addr``, then the input (:class:`InMode`) while it
writes the engine's output values: for each of ``out_pixels`` pixels, ``len0`` values from
byte ``out_addr + pixel * out_stride + off0`` and ``len1`` values from ``... + off1`` (a
Fire tile's e1 and e3 channels land in their place in the concat). ``MAXPOOL`` and
``AVGPOOL`` read ``in_beats`` beats of an ``h`` x ``w`` map of ``c`` beats a pixel and write
their beats from ``out_addr``. With ``stats`` set the sequencer then writes the descriptor's
:data:`STATS_FIELDS` at ``stats_addr``.

Memory layout (what the host writes and the sequencer reads): every stream item (a
configuration word, a beat of a weight row, a channel's parameters, an input beat) takes a whole
number of the native port's words (:func:`item_words`), little-endian, the item's bits from
the lowest; a feature map is HWC, each pixel's channels padded to whole input beats
(``ic_lanes`` values), each value ``value_bytes`` little-endian bytes (sign-extended); the
image the window packer reads is raw HWC. Addresses are byte addresses; a descriptor's, its
items', its input's and a pool's output must be whole port words, an engine output's whole
values.

This module is pure Python: the gateware, the driver and the tests all read the layout here.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from .params import EngineParams, config_bits, qparam_bits


class Op(enum.IntEnum):
    """What a descriptor does."""

    END = 0  #: the program's end
    ENGINE = 1  #: one engine run (see the module docstring)
    MAXPOOL = 2  #: max pool 3x3/2, ceil mode: ``in_beats`` of an h x w x c-beat map in,
    #: its pooled beats written from ``out_addr`` on
    AVGPOOL = 3  #: global average pool (``z_in``, ``mult``, ``shift``, ``z_out``, ``exact``)


class InMode(enum.IntEnum):
    """Where an ENGINE descriptor's input beats come from."""

    MAP = 0  #: ``in_beats`` beats read from ``in_addr``
    #: the window packer (``hw.window``, ``spec.windows``) on ``raw_beats`` beats of a raw HWC
    #: image read from ``in_addr`` (``h`` rows of ``w`` pixels of ``c`` channels, kernel
    #: ``k``, ``stride``, zero point ``z_in``): its first ``skip_beats`` packed beats are
    #: dropped, the next ``in_beats`` go to the engine, the rest are dropped
    WINDOW = 1


class Unit(enum.IntEnum):
    """The unit a UNIT error names (the detail's high nibble; the low one is its error)."""

    MAXPOOL = 1
    AVGPOOL = 2
    WINDOW = 3


class SeqError(enum.IntEnum):
    """Why a program stopped (the ``prog_status`` counter); ``prog_detail`` says more."""

    OK = 0
    BAD_OP = 1  #: an unknown operation (detail: the op)
    ALIGN = 2  #: an address or stride not a whole port word / value (detail: which field)
    RANGE = 3  #: a read or write beyond the end of the memory
    CONFIG = 4  #: the engine refused the run's configuration (detail: the ConfigError)
    STALL = 5  #: nothing moved for ``stall_cycles``: the descriptor's counts do not match
    ABORTED = 6  #: a RESET stopped it
    UNIT = 7  #: a pool or the window packer refused its sizes (detail: Unit << 4 | its error)


@dataclass(frozen=True)
class Field:
    name: str
    width: int


#: Descriptor fields, packed LSB first into :data:`DESC_BYTES` bytes.
DESC_FIELDS = [
    Field("op", 4),
    Field("stats", 1),  # write the run's stats at stats_addr
    Field("cfg_addr", 32),
    Field("w_addr", 32), Field("w_rows", 16),
    Field("q_addr", 32), Field("q_count", 16),
    Field("in_addr", 32), Field("in_beats", 24),
    Field("out_addr", 32), Field("out_pixels", 24), Field("out_stride", 16),
    Field("off0", 16), Field("len0", 16), Field("off1", 16), Field("len1", 16),
    Field("stats_addr", 32),
    # the pools' and the window packer's
    Field("in_mode", 2), Field("raw_beats", 24), Field("skip_beats", 24),
    Field("h", 12), Field("w", 12), Field("c", 12), Field("k", 4), Field("stride", 4),
    Field("z_in", 16), Field("z_out", 16), Field("mult", 32), Field("shift", 6),
    Field("exact", 1),
]
#: Signed fields (two's complement in their width).
SIGNED_FIELDS = ("z_in", "z_out")
DESC_BYTES = 96
DESC_BITS = 8 * DESC_BYTES
assert sum(f.width for f in DESC_FIELDS) <= DESC_BITS

#: Fields whose addresses must be whole port words (the ALIGN detail is the index here + 1),
#: then the output's, which must be whole values.
WORD_ALIGNED = ("cfg_addr", "w_addr", "q_addr", "in_addr", "stats_addr")
VALUE_ALIGNED = ("out_addr", "out_stride", "off0", "off1")

#: What the sequencer writes per run at ``stats_addr`` (little-endian u32 each, then zeros
#: to :data:`STATS_BYTES`): its cycles for the descriptor (fetch to the last output written:
#: memory waits included), the engine's run cycles and compute cycles (``hw.cycle_counters``),
#: the port words it read and wrote for the run.
STATS_FIELDS = [("cycles", "I"), ("engine_cycles", "I"), ("compute", "I"),
                ("words_read", "I"), ("words_written", "I")]
STATS_BYTES = 32


def pack_descriptor(**values) -> bytes:
    word, offset = 0, 0
    for f in DESC_FIELDS:
        v = int(values.pop(f.name, 0))
        if f.name in SIGNED_FIELDS and -(1 << (f.width - 1)) <= v < 0:
            v += 1 << f.width
        if not 0 <= v < 1 << f.width:
            raise ValueError(f"descriptor field {f.name}={v} does not fit {f.width} bits")
        word |= v << offset
        offset += f.width
    if values:
        raise ValueError(f"unknown descriptor field {sorted(values)[0]!r}")
    return word.to_bytes(DESC_BYTES, "little")


def unpack_descriptor(raw: bytes) -> dict[str, int]:
    word = int.from_bytes(raw[:DESC_BYTES], "little")
    out, offset = {}, 0
    for f in DESC_FIELDS:
        out[f.name] = (word >> offset) & ((1 << f.width) - 1)
        if f.name in SIGNED_FIELDS and out[f.name] >> (f.width - 1):
            out[f.name] -= 1 << f.width
        offset += f.width
    return out


def unpack_stats(raw: bytes) -> dict[str, int]:
    fmt = "<" + "".join(c for _, c in STATS_FIELDS)
    return dict(zip([n for n, _ in STATS_FIELDS], struct.unpack_from(fmt, raw), strict=True))


def item_words(bits: int, port_bits: int) -> int:
    """Port words one stream item of ``bits`` takes."""
    return -(-bits // port_bits)


@dataclass(frozen=True)
class Items:
    """Port words per item of each stream the sequencer reads, for one engine and port
    (``weights``: a beat of a weight row, ``EngineParams.weight_beat_bits``; ``input``: a
    beat of ``ic_lanes`` values, also the pools' and the window packer's)."""

    desc: int
    cfg: int
    weights: int
    qparams: int
    input: int

    @classmethod
    def of(cls, p: EngineParams, port_bits: int) -> Items:
        return cls(desc=item_words(DESC_BITS, port_bits),
                   cfg=item_words(config_bits(p), port_bits),
                   weights=item_words(p.weight_beat_bits, port_bits),
                   qparams=item_words(qparam_bits(p), port_bits),
                   input=item_words(p.ic_lanes * p.bits, port_bits))


def value_bytes(p: EngineParams) -> int:
    return -(-p.bits // 8)


def pack_items(values, bits: int, port_bits: int) -> bytes:
    """Stream items (unsigned ints of ``bits``) as memory: each whole port words, LE."""
    size = item_words(bits, port_bits) * port_bits // 8
    mask = (1 << bits) - 1
    return b"".join((int(v) & mask).to_bytes(size, "little") for v in values)


def pack_weight_rows(rows, p: EngineParams, port_bits: int) -> bytes:
    """Weight rows (unsigned ints of ``weight_row_bits``) as memory: each row's
    ``oc_lanes`` beats (the lowest first) as stream items."""
    beat, mask = p.weight_beat_bits, (1 << p.weight_beat_bits) - 1
    return pack_items([int(r) >> (k * beat) & mask for r in rows for k in range(p.oc_lanes)],
                      beat, port_bits)
