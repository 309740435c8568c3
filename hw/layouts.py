"""The shapes and signatures the Fire engine's components share, each written down once.

The configuration word and the quantization parameters are built from :mod:`spec.params`' field
tables, from which the host packs them too. The others are the engine's own: the sizes the
configuration unit derives for a layer, the kind of convolution an operation belongs to, the
tag a group of accumulators carries from the sequencer through the MAC array to the
requantizer, the input buffer's addresses, and the read port of a buffer.
"""

from __future__ import annotations

from amaranth import signed, unsigned
from amaranth.lib import data, enum, wiring
from amaranth.lib.wiring import In, Out

from spec.params import CONV_LANES, EngineParams, ceil_div, config_fields, qparam_fields


class Kind(enum.Enum, shape=2):
    """The convolution an operation belongs to: the three take turns on the MAC array."""

    SQUEEZE = 0
    EXPAND1 = 1
    EXPAND3 = 2


def _layout(fields) -> data.StructLayout:
    return data.StructLayout({f.name: signed(f.width) if f.signed else unsigned(f.width)
                              for f in fields})


def config_layout(p: EngineParams) -> data.StructLayout:
    """The ``cfg`` stream payload; :func:`spec.params.pack_config` packs the same fields."""
    return _layout(config_fields(p))


def qparam_layout(p: EngineParams) -> data.StructLayout:
    """One output channel's ``{bias, mult, shift}`` (:func:`spec.params.qparam_fields`)."""
    return _layout(qparam_fields(p))


def max_channels(p: EngineParams) -> int:
    """The most output channels one convolution of a run has."""
    return max(p.max_squeeze, p.max_e1, p.max_e3)


def sizes_layout(p: EngineParams) -> data.StructLayout:
    """The sizes the configuration unit derives for an accepted layer.

    Each field is as wide as its value can be in a layer within the engine's maxima: the
    configuration unit refuses any other, so these are only read once a layer is accepted.
    """
    oc = p.oc_lanes
    return data.StructLayout({
        "input_words": range(p.input_words + 1),  # words per input pixel: ceil(cin / ic)
        "squeeze_words": range(p.squeeze_words + 1),  # words per squeeze pixel: ceil(s / ic)
        "squeeze_groups": range(ceil_div(p.max_squeeze, oc) + 1),  # ceil(s / oc)
        "e1_groups": range(ceil_div(p.max_e1, oc) + 1),  # ceil(e1 / oc)
        "e3_groups": range(ceil_div(p.max_e3, oc) + 1),  # ceil(e3 / oc)
        "squeeze_rows": range(p.weight_depth + 1),  # weight rows of the squeeze
        "weight_rows": range(p.weight_depth + 1),  # weight rows of the run
        "qparams": range(p.qparam_depth + 1),  # parameter rows of the run: s + e1 + e3
        "row_words": range(p.squeeze_depth + 1),  # squeeze-buffer words per row
        "retain": 1,  # whole-map addressing: retain the map, or reuse the retained one
    })


def group_tag_layout(p: EngineParams) -> data.StructLayout:
    """What a group of ``oc_lanes`` accumulators is: the sequencer attaches it to the
    operations, the MAC array carries it to the group's sums, the requantizer reads it."""
    return data.StructLayout({
        "kind": Kind,
        # the group's first channel, g * oc_lanes (one group past the last while counting)
        "chan": range(max_channels(p) + p.oc_lanes + 1),
        "count": range(p.oc_lanes + 1),  # channels in the group: the last may be short
        "row": range(p.max_h + 1),  # the row squeezed into, or expanded
        "xoff": range(p.squeeze_depth + 1),  # the pixel's first word in its squeeze row
    })


def wide_beat_layout(p: EngineParams, lanes: int = CONV_LANES) -> data.StructLayout:
    """A beat of the engine's wide output (``output_wide``): ``count`` (1 to ``lanes``)
    values in output order, ``values[0]`` first. ``lanes``: ``CONV_LANES``, or 1 in an
    engine built without the narrow lanes (``FireEngine(wide=False)``)."""
    return data.StructLayout({"values": data.ArrayLayout(signed(p.bits), lanes),
                              "count": range(lanes + 1)})


def input_slot_words(p: EngineParams) -> int:
    """Words of an input-buffer slot: a pixel at ``max_cin``, rounded up to a power of two so
    that a slot's address is its number above the word's."""
    return 1 << max(0, (p.input_words - 1).bit_length())


def input_address_layout(p: EngineParams) -> data.StructLayout:
    """An input-buffer address: the word of a pixel, then the slot (of two) holding it."""
    return data.StructLayout({"word": unsigned((input_slot_words(p) - 1).bit_length()),
                              "slot": 1})


def read_signature(addr_shape, data_shape) -> wiring.Signature:
    """A buffer's read port, as its reader sees it: ``data`` is the word at ``addr`` one
    cycle later, straight from the register after the block RAM (docs/engine.md, timing)."""
    return wiring.Signature({"addr": Out(addr_shape), "data": In(data_shape)})
