"""SqueezeNet definitions in torchvision's layout and parameter names.

A network is a list of layers (conv, max pool, Fire, global average pool). SqueezeNet v1.0,
v1.1 and v1.0 with simple bypass are built in; :func:`design_space` builds any Fire stack of
the paper's design-space study (base_e, incr_e, pct3x3, freq, SR), and :func:`squeezenet`
takes an explicit list of ``(s1x1, e1x1, e3x3)`` per Fire module.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from .ops import pool_output_size


class InputSizeError(ValueError):
    """An input size the network, or the engine that runs its Fire layers, cannot take."""


@dataclass(frozen=True)
class Conv:
    name: str
    prefix: str  # torchvision parameter prefix, e.g. "features.0"
    cin: int
    cout: int
    kernel: int
    stride: int = 1
    pad: int = 0
    relu: bool = True

    def out_hw(self, h, w):
        return ((h + 2 * self.pad - self.kernel) // self.stride + 1,
                (w + 2 * self.pad - self.kernel) // self.stride + 1)

    @property
    def params(self) -> dict[str, tuple[int, ...]]:
        return {f"{self.prefix}.weight": (self.cout, self.cin, self.kernel, self.kernel),
                f"{self.prefix}.bias": (self.cout,)}

    def macs(self, out_h, out_w) -> int:
        return out_h * out_w * self.cout * self.cin * self.kernel * self.kernel


@dataclass(frozen=True)
class MaxPool:
    name: str
    kernel: int = 3
    stride: int = 2

    def out_hw(self, h, w):
        return pool_output_size(h, self.kernel, self.stride), pool_output_size(w, self.kernel,
                                                                                self.stride)


@dataclass(frozen=True)
class Fire:
    name: str
    prefix: str
    cin: int
    s1x1: int
    e1x1: int
    e3x3: int
    bypass: bool = False

    def __post_init__(self):
        if self.bypass and self.cin != self.cout:
            raise ValueError(f"{self.name}: simple bypass needs Cin == e1x1 + e3x3 "
                             f"({self.cin} != {self.cout})")

    @property
    def cout(self) -> int:
        return self.e1x1 + self.e3x3

    def out_hw(self, h, w):
        return h, w

    @property
    def convs(self) -> dict[str, Conv]:
        p = self.prefix
        return {
            "squeeze": Conv(f"{self.name}.squeeze", f"{p}.squeeze", self.cin, self.s1x1, 1),
            "expand1x1": Conv(f"{self.name}.expand1x1", f"{p}.expand1x1", self.s1x1,
                              self.e1x1, 1),
            "expand3x3": Conv(f"{self.name}.expand3x3", f"{p}.expand3x3", self.s1x1,
                              self.e3x3, 3, pad=1),
        }

    @property
    def params(self) -> dict[str, tuple[int, ...]]:
        out = {}
        for conv in self.convs.values():
            out.update(conv.params)
        return out

    def macs(self, h, w) -> int:
        return sum(c.macs(h, w) for c in self.convs.values())


@dataclass(frozen=True)
class GlobalAvgPool:
    name: str = "avgpool"

    def out_hw(self, h, w):
        return 1, 1


Layer = Conv | MaxPool | Fire | GlobalAvgPool


@dataclass(frozen=True)
class Network:
    name: str
    layers: tuple[Layer, ...]
    num_classes: int = 1000
    in_channels: int = 3
    default_input: int = 224
    description: str = ""

    @property
    def fires(self) -> list[Fire]:
        return [layer for layer in self.layers if isinstance(layer, Fire)]

    @property
    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        out = {}
        for layer in self.layers:
            if isinstance(layer, (Conv, Fire)):
                out.update(layer.params)
        return out

    @property
    def params(self) -> int:
        total = 0
        for shape in self.param_shapes.values():
            n = 1
            for d in shape:
                n *= d
            total += n
        return total

    def layer(self, name: str) -> Layer:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(f"{self.name} has no layer {name!r}")

    def shapes(self, size: int | tuple[int, int] | None = None) -> list[dict]:
        """Per-layer rows: name, kind, input/output HWC, params and MACs."""
        h, w = (size, size) if isinstance(size, int) else (size or (self.default_input,) * 2)
        c = self.in_channels
        rows = []
        for layer in self.layers:
            oh, ow = layer.out_hw(h, w)
            if oh < 1 or ow < 1:
                raise ValueError(f"input {size} is too small: {layer.name} has no output")
            cout = getattr(layer, "cout", c)
            params = sum(_numel(s) for s in getattr(layer, "params", {}).values())
            macs = layer.macs(oh, ow) if hasattr(layer, "macs") else 0
            rows.append({"name": layer.name, "kind": type(layer).__name__,
                         "input": [h, w, c], "output": [oh, ow, cout],
                         "params": params, "macs": macs})
            h, w, c = oh, ow, cout
        return rows

    # -- input sizes ------------------------------------------------------------------
    def _spatial(self, size: int) -> list[tuple[str, str, int]] | None:
        """``(name, kind, input side)`` per layer for a ``size`` x ``size`` input, or None
        when some layer has no output (every layer treats height and width alike, so one
        side stands for both)."""
        rows, side = [], size
        for layer in self.layers:
            rows.append((layer.name, type(layer).__name__, side))
            side = layer.out_hw(side, side)[0]
            if side < 1:
                return None
        return rows

    def min_input(self) -> int:
        """The smallest input side that leaves every layer an output."""
        size = 1
        while self._spatial(size) is None:
            size += 1
            if size > 100_000:  # only a network whose layers never leave an output
                raise ValueError(f"{self.name}: no input size leaves every layer an output")
        return size

    def max_input(self, max_side: int) -> int:
        """The largest input side whose Fire layers' inputs are all at most ``max_side`` (an
        engine's ``max_h`` or ``max_w``); below :meth:`min_input` when none is."""
        def fits(size):
            return all(side <= max_side for _, kind, side in self._spatial(size)
                       if kind == "Fire")

        lo = self.min_input()
        if not fits(lo):
            return lo - 1
        hi = lo
        while fits(hi * 2):  # Fire inputs grow with the input: double, then bisect
            hi *= 2
        top = hi * 2
        while top - hi > 1:
            mid = (hi + top) // 2
            hi, top = (mid, top) if fits(mid) else (hi, mid)
        return hi

    def input_range(self, params=None) -> tuple[int, int | None]:
        """The smallest and largest square input sizes this network takes, the largest on an
        engine with ``params`` (None without)."""
        lo = self.min_input()
        if params is None:
            return lo, None
        return lo, min(self.max_input(params.max_h), self.max_input(params.max_w))

    def check_input(self, size: int | tuple[int, int], params=None, label: str = "",
                    engine: str = "the engine") -> None:
        """Raise :class:`InputSizeError` unless this network takes a ``size`` input, on an
        engine with ``params`` (:class:`spec.params.EngineParams`; its ``max_h`` x ``max_w``
        bound every Fire layer's input) when given. Nothing is run: shapes only.

        ``label`` names the size in the message (default ``input HxW``), e.g. ``--size 7``;
        ``engine`` names the engine (``the arty_a7 engine``).
        """
        h, w = (size, size) if isinstance(size, int) else size
        label = label or f"input {h}x{w}"
        lo, hi = self.input_range(params)
        pools = sum(isinstance(la, MaxPool) for la in self.layers)
        need = (f"at least {lo} so that conv1 and the {pools} max pools leave every layer an "
                "output")
        if params is not None:
            need += (f"; at most {hi} so that every Fire layer's input fits {engine}'s "
                     f"max_h x max_w = {params.max_h}x{params.max_w}")
        span = f"{lo} to {hi}" if hi is not None else f"{lo} or more"
        if h < lo or w < lo:
            raise InputSizeError(f"{label} is too small: {self.name} takes input sizes "
                                 f"{span} ({need})")
        if params is None:
            return
        for (name, kind, side_h), (_, _, side_w) in zip(self._spatial(h), self._spatial(w),
                                                        strict=True):
            if kind == "Fire" and (side_h > params.max_h or side_w > params.max_w):
                raise InputSizeError(f"{label} is too large: {name}'s input would be "
                                     f"{side_h}x{side_w}, above {engine}'s max_h x max_w = "
                                     f"{params.max_h}x{params.max_w}; {self.name} takes "
                                     f"input sizes {span} there")


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


@dataclass
class _Builder:
    """Assigns torchvision's ``features.N`` indices as layers are appended."""

    layers: list = field(default_factory=list)
    index: int = 0
    pools: int = 0

    def conv1(self, cout, kernel, stride):
        self.layers.append(Conv("conv1", "features.0", 3, cout, kernel, stride))
        self.index = 2  # features.1 is the ReLU

    def pool(self):
        self.pools += 1
        self.layers.append(MaxPool(f"maxpool{self.pools}"))
        self.index += 1

    def fire(self, number, cin, s, e1, e3, bypass):
        self.layers.append(Fire(f"fire{number}", f"features.{self.index}", cin, s, e1, e3,
                                bypass))
        self.index += 1


def squeezenet(name: str, fires: list[tuple[int, int, int]], *, conv1=(96, 7, 2),
               pool_after=(0, 3, 7), bypass=(), num_classes=1000, classifier_relu=True,
               description="") -> Network:
    """Build a SqueezeNet from its Fire stack.

    Parameters
    ----------
    fires
        ``(s1x1, e1x1, e3x3)`` for fire2, fire3, ...
    conv1
        ``(out_channels, kernel, stride)`` of the first convolution.
    pool_after
        Max pools follow conv1 (0) and the Fire modules at these 1-based positions.
    bypass
        Fire numbers (2, 3, ...) with a simple bypass.
    classifier_relu
        Whether conv10 has a ReLU, as torchvision's SqueezeNet does. Without it the logits
        may be negative: a network trained from scratch then has no class whose output ReLU
        has died for every position of an image (and so no gradient to come back with).
    """
    b = _Builder()
    b.conv1(*conv1)
    cin = conv1[0]
    if 0 in pool_after:
        b.pool()
    for i, (s, e1, e3) in enumerate(fires, start=1):
        b.fire(i + 1, cin, s, e1, e3, (i + 1) in bypass)
        cin = e1 + e3
        if i in pool_after:
            b.pool()
    b.layers.append(Conv("conv10", "classifier.1", cin, num_classes, 1, relu=classifier_relu))
    b.layers.append(GlobalAvgPool())
    return Network(name, tuple(b.layers), num_classes, description=description)


def design_space(name="squeezenet", *, base_e=128, incr_e=128, pct3x3=0.5, freq=2, sr=0.125,
                 modules=8, bypass=(), **kw) -> Network:
    """The paper's microarchitecture metaparameters (Section 5) to a v1.0-style network.

    ``e_i = base_e + incr_e * floor(i / freq)``, ``e3x3 = pct3x3 * e_i``, ``s1x1 = SR * e_i``.
    """
    fires = []
    for i in range(modules):
        e = base_e + incr_e * (i // freq)
        e3 = round(e * pct3x3)
        s = max(1, round(e * sr))
        fires.append((s, e - e3, e3))
    return squeezenet(name, fires, bypass=bypass, **kw)


_V1_FIRES = [(16, 64, 64), (16, 64, 64), (32, 128, 128), (32, 128, 128), (48, 192, 192),
             (48, 192, 192), (64, 256, 256), (64, 256, 256)]

ARCHS: dict[str, Network] = {
    "squeezenet1_0": squeezenet("squeezenet1_0", _V1_FIRES, conv1=(96, 7, 2),
                                pool_after=(0, 3, 7),
                                description="SqueezeNet v1.0 (torchvision squeezenet1_0)"),
    "squeezenet1_1": squeezenet("squeezenet1_1", _V1_FIRES, conv1=(64, 3, 2),
                                pool_after=(0, 2, 4),
                                description="SqueezeNet v1.1 (torchvision squeezenet1_1)"),
    "squeezenet1_0_bypass": squeezenet("squeezenet1_0_bypass", _V1_FIRES, conv1=(96, 7, 2),
                                       pool_after=(0, 3, 7), bypass=(3, 5, 7, 9),
                                       description="SqueezeNet v1.0 with simple bypass "
                                                   "around fire3, 5, 7, 9 (paper Section 6)"),
}


#: A Fire stack for 28x28 digits (MNIST; the grey image repeated on 3 channels so that every
#: tool here takes it unchanged): the paper's metaparameters (base_e 64, incr_e 64, pct3x3
#: 0.5, freq 2, SR 0.125) over 4 Fire modules, a 3x3 stride-1 conv1, pools after conv1 and
#: fire3 (Fire inputs 13x13 and 6x6), simple bypass around fire3 and fire5, 10 classes, and
#: no ReLU after conv10 (see :func:`squeezenet`'s ``classifier_relu``).
ARCHS["mnist_fire"] = design_space(
    "mnist_fire", base_e=64, incr_e=64, pct3x3=0.5, freq=2, sr=0.125, modules=4,
    bypass=(3, 5), conv1=(64, 3, 1), pool_after=(0, 2), num_classes=10, classifier_relu=False,
    description="a 4-Fire SqueezeNet for 28x28 digits (sw.train; paper metaparameters)")
ARCHS["mnist_fire"] = replace(ARCHS["mnist_fire"], default_input=28)


def get_arch(name: str) -> Network:
    try:
        return ARCHS[name]
    except KeyError:
        raise ValueError(f"unknown architecture {name!r}; choose from "
                         f"{', '.join(ARCHS)}") from None
