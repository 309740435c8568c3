"""Engine parameters: the one dataclass that elaborates the gateware, is reported by the
device on identify, and from which the driver plans its tiles.

Also the run-time layer configuration (a packed struct whose layout both sides derive from the
parameters) and the error codes the engine reports for a refused configuration.
"""

from __future__ import annotations

import dataclasses
import enum
import typing
from dataclasses import dataclass

from .quant import MULT_BITS, RESCALE_MULT_BITS, RESCALE_SHIFT_MAX, SHIFT_MAX, QuantSpec

#: Accumulator groups (``oc_lanes`` accumulators each) the FIFO between the MAC array and
#: the requantizer holds; the sequencer issues a group's last beat only with a place for it.
GROUP_FIFO_DEPTH = 16
#: Output values buffered after the requantizer, and again after the bypass join.
OUTPUT_FIFO_DEPTH = 32
#: Channels a cycle the requantizer drains in a wide conv run (config field ``wide``): the
#: full-width requantizer and two narrow lanes (docs/engine.md, "1x1 convolutions").
CONV_LANES = 3


class ParamError(ValueError):
    """An engine parameter combination that cannot be elaborated."""


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


@dataclass(frozen=True)
class EngineParams:
    """Generator parameters of the Fire engine (elaboration time).

    The engine is one time-shared MAC array of ``ic_lanes x oc_lanes`` multipliers: each
    cycle it multiplies ``ic_lanes`` input channels of one pixel by ``oc_lanes`` output
    channels' weights, for the squeeze, expand1x1 and expand3x3 convolutions in turn.
    """

    bits: int = 8  #: activation and weight width
    ic_lanes: int = 16  #: input channels per cycle (a power of two)
    oc_lanes: int = 5  #: output channels per cycle
    max_h: int = 56
    max_w: int = 56
    max_cin: int = 512
    max_squeeze: int = 64
    max_e1: int = 256
    max_e3: int = 256
    #: weight buffer rows, each ``ic_lanes * oc_lanes`` weights
    weight_depth: int = 1024
    #: squeeze buffer words, each ``ic_lanes`` activations
    squeeze_depth: int = 3072
    #: support the simple-bypass add
    bypass: bool = True

    def __post_init__(self):
        self.validate()

    # -- derived sizes ------------------------------------------------------------------
    @property
    def spec(self) -> QuantSpec:
        return QuantSpec(self.bits)

    @property
    def lanes(self) -> int:
        return self.ic_lanes * self.oc_lanes

    @property
    def max_terms(self) -> int:
        """Longest reduction: the padded squeeze input or the padded 3x3 window."""
        return max(ceil_div(self.max_cin, self.ic_lanes),
                   9 * ceil_div(self.max_squeeze, self.ic_lanes)) * self.ic_lanes

    @property
    def acc_bits(self) -> int:
        """Accumulator width (bias included) that cannot overflow at the maxima."""
        return self.spec.acc_bits(self.max_terms)

    @property
    def input_words(self) -> int:
        """Words of ``ic_lanes`` channels per input pixel at ``max_cin``."""
        return ceil_div(self.max_cin, self.ic_lanes)

    @property
    def squeeze_words(self) -> int:
        return ceil_div(self.max_squeeze, self.ic_lanes)

    @property
    def qparam_depth(self) -> int:
        return self.max_squeeze + self.max_e1 + self.max_e3

    @property
    def weight_row_bits(self) -> int:
        return self.lanes * self.bits

    @property
    def weight_beat_bits(self) -> int:
        """A weight row as the link's executor and the layer sequencer carry it, a beat at a
        time: one output lane's ``ic_lanes`` weights (``oc_lanes`` beats a row, the lowest
        bits first), put together into the engine's row in front of it
        (``hw.weight_buffers.RowAssembler``): a narrow switch between the two sources."""
        return self.ic_lanes * self.bits

    def validate(self) -> None:
        def bad(name, why):
            raise ParamError(f"{name}={getattr(self, name)}: {why}")

        if not 2 <= self.bits <= 16:
            bad("bits", "activation/weight width must be 2 to 16")
        if self.ic_lanes < 1 or self.ic_lanes & (self.ic_lanes - 1):
            bad("ic_lanes", "must be a power of two (addresses split channel words by shifts)")
        if self.oc_lanes < 1:
            bad("oc_lanes", "must be at least 1")
        for name in ("max_h", "max_w", "max_cin", "max_squeeze", "max_e1", "max_e3"):
            if getattr(self, name) < 1:
                bad(name, "must be at least 1")
        if self.max_h > 4096 or self.max_w > 4096:
            bad("max_h" if self.max_h > 4096 else "max_w", "at most 4096")
        min_rows = weight_rows(self, cin=self.max_cin, s=self.max_squeeze, e1=0, e3=1)
        if self.weight_depth < min_rows:
            bad("weight_depth", f"must hold the squeeze weights plus one 3x3 output group at "
                                f"the maxima ({min_rows} rows)")
        line = 3 * self.max_w * self.squeeze_words
        if self.squeeze_depth < line:
            bad("squeeze_depth", f"must hold a 3-row line buffer at max_w={self.max_w}, "
                                 f"max_squeeze={self.max_squeeze} ({line} words)")
        if self.acc_bits + MULT_BITS > 96:
            bad("bits", "accumulator too wide for the requantizer")

    # -- serialization (identify, TOML, --param) ----------------------------------------
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    def replace(self, **changes) -> EngineParams:
        unknown = set(changes) - set(self.field_names())
        if unknown:
            raise ParamError(f"unknown engine parameter {sorted(unknown)[0]!r}; known: "
                             f"{', '.join(self.field_names())}")
        return dataclasses.replace(self, **changes)


def weight_rows(p: EngineParams, *, cin: int, s: int, e1: int, e3: int,
                squeeze: bool = True) -> int:
    """Weight-buffer rows a run needs: for every output group of ``oc_lanes`` channels, one
    row a word of ``ic_lanes`` input channels (and a tap, for the 3x3). The squeeze weights
    (``cin`` inputs, ``s`` outputs) only when the run squeezes; the expands take ``s`` inputs.

    The one statement of this rule: the planner (``spec.tiling``), the cost model, the
    parameter checks here and the engine's own size computation (held to it by a test) all
    come back to it.
    """
    ic, oc = p.ic_lanes, p.oc_lanes
    ks = ceil_div(s, ic)
    squeeze_rows = ceil_div(s, oc) * ceil_div(cin, ic) if squeeze else 0
    return squeeze_rows + ceil_div(e1, oc) * ks + 9 * ceil_div(e3, oc) * ks


class ConfigError(enum.IntEnum):
    """Why the engine refused a layer configuration (its status register)."""

    OK = 0
    H = 1  #: height is 0 or above max_h
    W = 2  #: width is 0 or above max_w
    CIN = 3  #: input channels 0 or above max_cin
    SQUEEZE = 4  #: squeeze channels 0 or above max_squeeze
    E1 = 5  #: expand1x1 channels above max_e1
    E3 = 6  #: expand3x3 channels above max_e3
    WEIGHT_ROWS = 7  #: the layer's weights exceed weight_depth
    SQUEEZE_BUFFER = 8  #: the squeeze rows exceed squeeze_depth
    BYPASS = 9  #: bypass requested from an engine built without it
    NOT_LOADED = 10  #: run without weights loaded for this shape
    NO_SQUEEZE_MAP = 11  #: reuse of a squeeze map that is not retained
    SHIFT = 12  #: a requantization shift of 0 (the shift is 1 to 63; a rescale's 1 to 31)
    NO_OUTPUT = 13  #: the layer has no output channels (e1 + e3 = 0)
    CONV = 14  #: a 1x1-convolution run (conv) with expand channels, bypass, rescale or reuse

    @property
    def field(self) -> str:
        return {1: "h", 2: "w", 3: "cin", 4: "s", 5: "e1", 6: "e3", 7: "weights",
                8: "squeeze buffer", 9: "bypass", 10: "weights", 11: "squeeze map",
                12: "shift", 13: "e1 + e3", 14: "conv"}.get(self.value, "")

    @property
    def message(self) -> str:
        return _ERROR_TEXT[self]


_ERROR_TEXT = {
    ConfigError.OK: "ok",
    ConfigError.H: "height is 0 or above max_h",
    ConfigError.W: "width is 0 or above max_w",
    ConfigError.CIN: "input channels are 0 or above max_cin",
    ConfigError.SQUEEZE: "squeeze channels are 0 or above max_squeeze",
    ConfigError.E1: "expand1x1 channels are above max_e1",
    ConfigError.E3: "expand3x3 channels are above max_e3",
    ConfigError.WEIGHT_ROWS: "the layer's weights exceed the weight buffer",
    ConfigError.SQUEEZE_BUFFER: "the squeeze rows exceed the squeeze buffer",
    ConfigError.BYPASS: "bypass requested from an engine built without it",
    ConfigError.NOT_LOADED: "no weights loaded for this layer shape",
    ConfigError.NO_SQUEEZE_MAP: "no retained squeeze map of this shape to reuse",
    ConfigError.SHIFT: "a requantization shift is 0 (it must be 1 to 63; a rescale's 1 to 31)",
    ConfigError.NO_OUTPUT: "the layer has no output channels (e1 + e3 = 0)",
    ConfigError.CONV: "a 1x1-convolution run (conv=1) must have e1 = e3 = 0, no bypass, no "
                      "rescale, and squeeze its input (squeeze=1)",
}


@dataclass(frozen=True)
class ConfigField:
    name: str
    width: int
    signed: bool = False
    default: int | None = None  #: packed when a configuration leaves the field out


def config_fields(p: EngineParams) -> list[ConfigField]:
    """Fields of the run-time layer configuration, in packing order (LSB first)."""
    b = p.bits
    return [
        ConfigField("h", (p.max_h).bit_length()),
        ConfigField("w", (p.max_w).bit_length()),
        ConfigField("cin", (p.max_cin).bit_length()),
        ConfigField("s", (p.max_squeeze).bit_length()),
        ConfigField("e1", (p.max_e1).bit_length()),
        ConfigField("e3", (p.max_e3).bit_length()),
        ConfigField("z_in", b, True),  # zero point of the Fire input
        ConfigField("z_sq", b, True),  # zero point of the squeeze output
        ConfigField("z_out", b, True),  # zero point of the concat [e1, e3]
        # ceilings of the expand outputs (an expand's own range in a QDQ model)
        ConfigField("e1_max", b, True, default=(1 << (b - 1)) - 1),
        ConfigField("e3_max", b, True, default=(1 << (b - 1)) - 1),
        ConfigField("load", 1),  # expect weights and quantization parameters
        ConfigField("compute", 1),  # then run on an input
        ConfigField("squeeze", 1),  # compute the squeeze map (0: reuse the retained one)
        ConfigField("retain", 1),  # keep the whole squeeze map (for output-channel tiles)
        ConfigField("bypass", 1),  # add the bypass stream to the output
        ConfigField("byp_mult_a", MULT_BITS - 1),  # bypass: multiplier of the Fire output
        ConfigField("byp_mult_b", MULT_BITS - 1),  # bypass: multiplier of the bypass input
        ConfigField("byp_shift", SHIFT_MAX.bit_length()),
        ConfigField("byp_z_in", b, True),  # bypass: zero point of the bypass input
        ConfigField("byp_z_out", b, True),  # bypass: zero point of the sum
        # the expands rounded twice: to their own zero points z_e1 / z_e3 (and scales) first,
        # then to z_out by the second requantization (spec.quant.rescale), one per branch
        ConfigField("rescale", 1),
        ConfigField("z_e1", b, True),
        ConfigField("z_e3", b, True),
        ConfigField("e1_rs_mult", RESCALE_MULT_BITS),
        ConfigField("e1_rs_shift", RESCALE_SHIFT_MAX.bit_length()),
        ConfigField("e3_rs_mult", RESCALE_MULT_BITS),
        ConfigField("e3_rs_shift", RESCALE_SHIFT_MAX.bit_length()),
        # the run is one 1x1 convolution (conv1 packed, conv10): the squeeze part alone, its
        # s requantized channels of each pixel to the output stream (zero point z_out), no
        # line buffer and no expands (docs/engine.md, "1x1 convolutions")
        ConfigField("conv", 1),
        # a conv run's ReLU (a Fire layer's convolutions always have one)
        ConfigField("relu", 1, default=1),
        # a conv run may requantize up to CONV_LANES channels a cycle (when every channel's
        # parameters allow, spec.quant.narrow_ok) and give them on the engine's wide output
        # (output_wide): the layer sequencer's runs only; the link clears it
        ConfigField("wide", 1),
    ]


def config_bits(p: EngineParams) -> int:
    return sum(f.width for f in config_fields(p))


def pack_config(p: EngineParams, **values) -> int:
    """Pack a layer configuration into the integer the engine's ``cfg`` stream carries."""
    word, offset = 0, 0
    for f in config_fields(p):
        v = int(values.pop(f.name, f.default or 0))
        lo = -(1 << (f.width - 1)) if f.signed else 0
        hi = (1 << (f.width - 1)) - 1 if f.signed else (1 << f.width) - 1
        if not lo <= v <= hi:
            raise ValueError(f"config field {f.name}={v} does not fit {f.width} bits")
        word |= (v & ((1 << f.width) - 1)) << offset
        offset += f.width
    if values:
        raise ValueError(f"unknown config field {sorted(values)[0]!r}")
    return word


def qparam_fields(p: EngineParams) -> list[ConfigField]:
    """Per-output-channel quantization parameters, packing order (LSB first)."""
    return [ConfigField("bias", p.spec.bias_bits, True),
            ConfigField("mult", MULT_BITS - 1),
            ConfigField("shift", SHIFT_MAX.bit_length())]


def qparam_bits(p: EngineParams) -> int:
    return sum(f.width for f in qparam_fields(p))


def pack_fields(fields, values: dict) -> int:
    word, offset = 0, 0
    for f in fields:
        v = int(values[f.name])
        word |= (v & ((1 << f.width) - 1)) << offset
        offset += f.width
    return word


_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no")


def _field_types() -> dict[str, type]:
    # the annotations are strings (``from __future__ import annotations``): resolve them
    return typing.get_type_hints(EngineParams)


def _coerce(name: str, value, kind: type, where: str):
    """``value`` as an EngineParams field of type ``kind`` (int or bool), or ParamError.

    Strings come from ``--param`` (and may come from TOML): ints in any base Python reads,
    bools only as true/false/1/0/yes/no so that a typo is not quietly False. TOML's own
    integers and booleans are taken as they are, but never one for the other.
    """
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
            return value.strip().lower() in _TRUE
        raise ParamError(f"{where}: {name} must be true or false (or 1/0, yes/no), "
                         f"not {value!r}")
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        try:
            return int(value.strip(), 0)
        except ValueError:
            pass
    raise ParamError(f"{where}: {name} must be an integer, not {value!r}")


def parse_overrides(base: EngineParams, items: list[str], toml_path: str | None = None
                    ) -> EngineParams:
    """``base`` with ``NAME=VALUE`` overrides (command lines) and a TOML file's ``[engine]``
    table (or top level) applied; errors name the parameter.

    Every value is checked against the type of its :class:`EngineParams` field (int or
    bool) before the parameters are built, so a wrong value is one :class:`ParamError`.
    """
    import tomllib

    types = _field_types()
    changes: dict = {}

    def put(name, value, where):
        if name not in types:
            raise ParamError(f"{where}: unknown engine parameter {name!r}; known: "
                             f"{', '.join(EngineParams.field_names())}")
        changes[name] = _coerce(name, value, types[name], where)

    if toml_path:
        try:
            with open(toml_path, "rb") as f:
                data = tomllib.load(f)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ParamError(f"--params {toml_path}: {exc}") from None
        table = data.get("engine", data)
        if not isinstance(table, dict):
            raise ParamError(f"--params {toml_path}: [engine] must be a table")
        for name, value in table.items():
            put(name, value, f"--params {toml_path}")
    for item in items:
        name, sep, value = item.partition("=")
        if not sep:
            raise ParamError(f"--param {item!r}: expected NAME=VALUE")
        put(name.strip(), value, f"--param {item}")
    return base.replace(**changes)
