"""Host side of the Fire engine: plan a layer's runs, pack their streams, reassemble outputs.

A Fire layer runs on the engine in one run when its weights fit the weight buffer. Otherwise
it is split over output channels of the concat ``[e1, e3]`` into tiles, each a run with
only its channels' weights:

* tile 0 squeezes the input and keeps the whole squeeze map on chip (``retain``); later
  tiles reuse it (``squeeze=0``) and stream no input. This needs ``H * W * ceil(S/ic)``
  words of squeeze buffer;
* where even that does not fit, every tile squeezes the input again (three-row line mode).

Tile ``t`` outputs, pixel by pixel, its e1 channels then its e3 channels. The host puts each
tile's channels back in place (:meth:`FirePlan.assemble`).

A 1x1 convolution (conv10; conv1 with its windows packed into channels, :mod:`spec.windows`)
runs as :class:`ConvPlan`: the engine's squeeze alone (``conv`` in the configuration), over
blocks of output channels (at most ``max_squeeze``, weights within ``weight_depth``) and
blocks of pixels (at most ``max_h * max_w``, each configured as ``h x w`` within the maxima).

Everything here is planned from :class:`spec.params.EngineParams`, which the driver reads
from the device.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .layers import ConvLayer, FireLayer, Rescale
from .params import EngineParams, ceil_div, pack_config, pack_fields, qparam_fields, weight_rows
from .quant import RESCALE_MULT_BITS
from .windows import pack_window_weights, pack_windows


class PlanError(ValueError):
    """A layer that this engine cannot run, naming the limit."""


@dataclass(frozen=True)
class Tile:
    e1: range  # expand1x1 output channels of this run
    e3: range  # expand3x3 output channels of this run
    squeeze: bool  # this run squeezes the input (else reuses the retained map)
    retain: bool  # keep the whole squeeze map for the following tiles

    @property
    def channels(self) -> int:
        return len(self.e1) + len(self.e3)

    def concat_channels(self, e1_total: int) -> np.ndarray:
        return np.concatenate([np.arange(self.e1.start, self.e1.stop),
                               e1_total + np.arange(self.e3.start, self.e3.stop)]).astype(int)


@dataclass(frozen=True)
class Shape:
    h: int
    w: int
    cin: int
    s: int
    e1: int
    e3: int

    @property
    def macs(self) -> int:
        return self.h * self.w * (self.cin * self.s + self.s * self.e1 + 9 * self.s * self.e3)


class FirePlan:
    """The runs of one Fire layer on one engine, and their packed streams."""

    def __init__(self, params: EngineParams, shape: Shape, *, bypass: bool = False,
                 retain: bool = True):
        """``retain=False`` plans every tile to squeeze its input again: a batch can then run
        tile by tile with each tile's weights loaded once."""
        self.p = p = params
        self.shape = sh = shape
        self.bypass = bypass
        self.allow_retain = retain
        limits = [("h", sh.h, p.max_h), ("w", sh.w, p.max_w), ("cin", sh.cin, p.max_cin),
                  ("s", sh.s, p.max_squeeze), ("e1", sh.e1, p.max_e1),
                  ("e3", sh.e3, p.max_e3)]
        for name, value, limit in limits:
            if value > limit:
                raise PlanError(f"{name}={value} exceeds the engine's maximum {limit} "
                                f"(max_{name if name != 's' else 'squeeze'})")
            if value < 1 and name not in ("e1", "e3"):
                raise PlanError(f"{name}={value}: must be at least 1")
        if bypass and not p.bypass:
            raise PlanError("bypass: this engine was built without bypass support")
        if bypass and sh.cin != sh.e1 + sh.e3:
            raise PlanError(f"bypass needs cin == e1 + e3 ({sh.cin} != {sh.e1 + sh.e3})")
        self.kc = ceil_div(sh.cin, p.ic_lanes)
        self.ks = ceil_div(sh.s, p.ic_lanes)
        self.squeeze_rows = weight_rows(p, cin=sh.cin, s=sh.s, e1=0, e3=0)
        self.tiles = self._plan()

    # -- planning -----------------------------------------------------------------------
    def rows(self, n1: int, n3: int) -> int:
        """Weight rows of ``n1`` expand1x1 and ``n3`` expand3x3 output channels."""
        return weight_rows(self.p, cin=self.shape.cin, s=self.shape.s, e1=n1, e3=n3,
                           squeeze=False)

    def _plan(self) -> list[Tile]:
        p, sh = self.p, self.shape
        row_words = sh.w * self.ks
        depth = p.weight_depth
        if self.squeeze_rows + self.rows(sh.e1, sh.e3) <= depth:
            return [Tile(range(sh.e1), range(sh.e3), squeeze=True, retain=False)]
        retain = self.allow_retain and sh.h * row_words <= p.squeeze_depth
        oc = p.oc_lanes
        groups = [(1, lo) for lo in range(0, sh.e1, oc)] + [(3, lo) for lo in range(0, sh.e3, oc)]
        tiles, current, used = [], [], 0
        first = True

        def budget():
            return depth - (self.squeeze_rows if (first or not retain) else 0)

        for kind, lo in groups:
            cost = self.ks * (1 if kind == 1 else 9)
            if cost > budget():
                raise PlanError(f"weight_depth={depth} cannot hold one output group of "
                                f"this layer")
            if used + cost > budget():
                tiles.append(self._tile(current, first, retain))
                first, current, used = False, [], 0
            current.append((kind, lo))
            used += cost
        tiles.append(self._tile(current, first, retain))
        return tiles

    def _tile(self, groups, first, retain) -> Tile:
        sh, oc = self.shape, self.p.oc_lanes
        e1 = [lo for kind, lo in groups if kind == 1]
        e3 = [lo for kind, lo in groups if kind == 3]
        r1 = range(e1[0], min(e1[-1] + oc, sh.e1)) if e1 else range(0)
        r3 = range(e3[0], min(e3[-1] + oc, sh.e3)) if e3 else range(0)
        return Tile(r1, r3, squeeze=first or not retain, retain=retain)

    # -- streams ------------------------------------------------------------------------
    def config(self, tile: Tile, layer: FireLayer, *, load: bool, compute: bool) -> int:
        sh = self.shape
        top = self.p.spec.act_max
        fields = dict(h=sh.h, w=sh.w, cin=sh.cin, s=sh.s, e1=len(tile.e1), e3=len(tile.e3),
                      z_in=layer.z_in, z_sq=layer.z_squeeze, z_out=layer.z_concat,
                      e1_max=top if layer.expand1x1.rq.hi is None else layer.expand1x1.rq.hi,
                      e3_max=top if layer.expand3x3.rq.hi is None else layer.expand3x3.rq.hi,
                      load=int(load), compute=int(compute), squeeze=int(tile.squeeze),
                      retain=int(tile.retain))
        if layer.rescaled:
            fields["rescale"] = 1
            for branch, conv in (("e1", layer.expand1x1), ("e3", layer.expand3x3)):
                # a branch already at the concat's scale: the identity (m / 2**n = 1)
                rs = conv.rq.rescale or Rescale(layer.z_concat, 1 << (RESCALE_MULT_BITS - 1),
                                                RESCALE_MULT_BITS - 1, layer.z_concat)
                fields.update({f"z_{branch}": rs.z_in, f"{branch}_rs_mult": rs.m,
                               f"{branch}_rs_shift": rs.n})
        if self.bypass:
            b = layer.bypass
            fields.update(bypass=1, byp_mult_a=b.mult_a, byp_mult_b=b.mult_b,
                          byp_shift=b.shift, byp_z_in=b.z_b, byp_z_out=b.z_out)
        return pack_config(self.p, **fields)

    def weight_rows(self, tile: Tile, layer: FireLayer) -> np.ndarray:
        """The tile's weight rows, ``(rows, oc_lanes * ic_lanes)``, lane ``o * ic + i``."""
        ic, oc = self.p.ic_lanes, self.p.oc_lanes
        parts = []
        if tile.squeeze:
            parts.append(_rows(layer.squeeze.weight[:, :, 0, 0][:, None, :], ic, oc))
        if len(tile.e1):
            w1 = layer.expand1x1.weight[tile.e1.start:tile.e1.stop, :, 0, 0]
            parts.append(_rows(w1[:, None, :], ic, oc))
        if len(tile.e3):
            w3 = layer.expand3x3.weight[tile.e3.start:tile.e3.stop]  # (n, S, 3, 3)
            taps = w3.transpose(0, 2, 3, 1).reshape(len(tile.e3), 9, -1)  # (n, tap, S)
            parts.append(_rows(taps, ic, oc))
        rows = np.concatenate(parts) if parts else np.zeros((0, ic * oc), np.int64)
        assert len(rows) == (self.squeeze_rows if tile.squeeze else 0) + self.rows(
            len(tile.e1), len(tile.e3))
        return rows

    def qparams(self, tile: Tile, layer: FireLayer) -> list[int]:
        """Packed per-channel parameters: squeeze channels, the tile's e1, then e3."""
        parts = [(layer.squeeze, range(self.shape.s)), (layer.expand1x1, tile.e1),
                 (layer.expand3x3, tile.e3)]
        fields = qparam_fields(self.p)
        out = []
        for conv, channels in parts:
            for c in channels:
                out.append(pack_fields(fields, {"bias": conv.bias[c], "mult": conv.rq.m[c],
                                                "shift": conv.rq.n[c]}))
        return out

    def input_words(self, x: np.ndarray) -> np.ndarray:
        """Input beats ``(H * W * kc, ic_lanes)``: pixels in raster order, channels padded."""
        ic = self.p.ic_lanes
        padded = np.zeros((self.shape.h, self.shape.w, self.kc * ic), dtype=np.int64)
        padded[:, :, :self.shape.cin] = x
        return padded.reshape(-1, ic)

    def bypass_values(self, tile: Tile, x: np.ndarray) -> np.ndarray:
        """Bypass beats: the input's channels matching the tile's outputs, in output order."""
        return np.asarray(x)[:, :, tile.concat_channels(self.shape.e1)].reshape(-1)

    def tile_output_shape(self, tile: Tile) -> tuple[int, int, int]:
        return self.shape.h, self.shape.w, tile.channels

    def assemble(self, outputs: list[np.ndarray]) -> np.ndarray:
        """Full ``(H, W, e1 + e3)`` output from each tile's flat output stream."""
        sh = self.shape
        full = np.zeros((sh.h, sh.w, sh.e1 + sh.e3), dtype=np.int64)
        for tile, flat in zip(self.tiles, outputs, strict=True):
            full[:, :, tile.concat_channels(sh.e1)] = np.asarray(flat).reshape(
                self.tile_output_shape(tile))
        return full

    # -- accounting ---------------------------------------------------------------------
    def stream_counts(self) -> list[dict]:
        """Beats each run moves: weights rows, qparams, input words, bypass and outputs."""
        sh = self.shape
        out = []
        for tile in self.tiles:
            out.append({
                "weights": (self.squeeze_rows if tile.squeeze else 0)
                + self.rows(len(tile.e1), len(tile.e3)),
                "qparams": sh.s + tile.channels,
                "input": sh.h * sh.w * self.kc if tile.squeeze else 0,
                "bypass": sh.h * sh.w * tile.channels if self.bypass else 0,
                "output": sh.h * sh.w * tile.channels,
            })
        return out


# -- 1x1 convolutions ----------------------------------------------------------------------
@dataclass(frozen=True)
class ConvShape:
    """A 1x1 convolution on the engine: ``h x w`` pixels of ``cin`` channels -> ``cout``."""

    h: int
    w: int
    cin: int
    cout: int

    @property
    def pixels(self) -> int:
        return self.h * self.w

    @property
    def macs(self) -> int:
        """Multiply-accumulates of the 1x1 convolution as the engine runs it (a packed
        conv1's padding lanes included; its network's own MACs are fewer)."""
        return self.pixels * self.cin * self.cout


@dataclass(frozen=True)
class ConvRun:
    """One run of a 1x1 convolution: a block of output channels over a block of pixels."""

    channels: range  #: output channels of this run
    pixels: range  #: its pixels, as flat indices of the map in raster order
    h: int  #: the block configured as ``h x w`` (``h * w == len(pixels)``)
    w: int
    load: bool  #: loads the channels' weights (the first pixel block of a channel block)


class ConvPlan:
    """The runs of one 1x1 convolution on one engine, and their packed streams.

    The engine takes a convolution run as a Fire run's squeeze alone (``conv=1``, ``e1 =
    e3 = 0``): ``h x w`` pixels of ``cin`` channels in on ``input``, each pixel's ``s``
    requantized channels out on ``output`` in channel order, to zero point ``z_out``. Runs:

    * **channel blocks** of at most ``max_squeeze`` output channels whose weight rows
      (``ceil(s / oc) * ceil(cin / ic)``) fit ``weight_depth``, as many as needed and as even
      as whole groups of ``oc_lanes`` allow (conv10's 1000: 16 x 60 + 40);
    * **pixel blocks** over the map flattened in raster order: a map within ``max_h x max_w``
      is one block; a larger one (conv1's 111 x 111) is cut into blocks of ``max_h * max_w``
      pixels, each configured as ``max_h`` rows of ``max_w``, the rest as whole rows of
      ``max_w`` and one shorter row. A convolution has no neighbourhood, so how its pixels
      are cut into rows does not matter to the engine.

    A channel block's first run loads its weights and parameters; its other pixel blocks are
    compute-only runs that reuse them.
    """

    def __init__(self, params: EngineParams, shape: ConvShape, *, relu: bool = True):
        self.p = p = params
        self.shape = sh = shape
        self.relu = relu
        for name, value in (("h", sh.h), ("w", sh.w), ("cin", sh.cin), ("cout", sh.cout)):
            if value < 1:
                raise PlanError(f"{name}={value}: must be at least 1")
        if sh.cin > p.max_cin:
            raise PlanError(f"cin={sh.cin} exceeds the engine's maximum {p.max_cin} (max_cin)")
        self.kc = ceil_div(sh.cin, p.ic_lanes)
        self.block = self._block_channels()
        self.runs = self._plan()

    # -- planning -----------------------------------------------------------------------
    def rows(self, channels: int) -> int:
        """Weight rows of a run of ``channels`` output channels."""
        return weight_rows(self.p, cin=self.shape.cin, s=channels, e1=0, e3=0)

    def _block_channels(self) -> int:
        """Output channels of a full channel block."""
        p, cout, oc = self.p, self.shape.cout, self.p.oc_lanes
        most = min(p.max_squeeze, cout)
        while most > 0 and self.rows(most) > p.weight_depth:
            most -= 1
        if most < 1:
            raise PlanError(f"weight_depth={p.weight_depth} cannot hold one output channel "
                            f"of {self.shape.cin} inputs")
        if most >= cout:
            return cout
        if most >= oc:
            most -= most % oc  # whole groups: a short group wastes lanes in every pixel
        blocks = ceil_div(cout, most)
        even = ceil_div(ceil_div(cout, blocks), oc) * oc  # as even as whole groups allow
        return min(most, even)

    def _pixel_blocks(self) -> list[tuple[range, int, int]]:
        p, sh = self.p, self.shape
        if sh.h <= p.max_h and sh.w <= p.max_w:
            return [(range(sh.pixels), sh.h, sh.w)]
        blocks, full = [], p.max_h * p.max_w
        for start in range(0, sh.pixels, full):
            n = min(full, sh.pixels - start)
            rows, rest = divmod(n, p.max_w)
            if rows:
                blocks.append((range(start, start + rows * p.max_w), rows, p.max_w))
            if rest:
                blocks.append((range(start + rows * p.max_w, start + n), 1, rest))
        return blocks

    def _plan(self) -> list[ConvRun]:
        cout = self.shape.cout
        runs = []
        for lo in range(0, cout, self.block):
            channels = range(lo, min(lo + self.block, cout))
            for i, (pixels, h, w) in enumerate(self._pixel_blocks()):
                runs.append(ConvRun(channels, pixels, h, w, load=i == 0))
        return runs

    # -- streams ------------------------------------------------------------------------
    def check_layer(self, conv: ConvLayer) -> None:
        """PlanError for a layer this plan cannot run on the engine."""
        sh = self.shape
        if conv.weight.shape != (sh.cout, sh.cin, 1, 1):
            raise PlanError(f"weights {conv.weight.shape} are not a 1x1 convolution "
                            f"{sh.cin} -> {sh.cout}")
        if conv.rq.hi is not None or conv.rq.rescale is not None:
            raise PlanError("a convolution on the engine takes no ceiling and no second "
                            "requantization")
        if bool(conv.rq.relu) != self.relu:
            raise PlanError(f"the plan is for relu={self.relu}, the layer has "
                            f"relu={conv.rq.relu}")

    def config(self, run: ConvRun, conv: ConvLayer, z_in: int, *, load: bool | None = None,
               compute: bool = True, wide: bool = False) -> int:
        """The run's configuration word (``load`` defaults to the run's own; ``wide``: the
        values may leave several a beat on the engine's wide output, for the layer
        sequencer)."""
        self.check_layer(conv)
        load = run.load if load is None else load
        return pack_config(self.p, h=run.h, w=run.w, cin=self.shape.cin,
                           s=len(run.channels), e1=0, e3=0, z_in=z_in, z_out=conv.rq.z_out,
                           load=int(load), compute=int(compute), squeeze=1, conv=1,
                           relu=int(self.relu), wide=int(wide))

    def weight_rows(self, run: ConvRun, conv: ConvLayer) -> np.ndarray:
        """The run's weight rows, ``(rows, oc_lanes * ic_lanes)``, lane ``o * ic + i``."""
        w = np.asarray(conv.weight)[run.channels.start:run.channels.stop, :, 0, 0]
        rows = _rows(w[:, None, :], self.p.ic_lanes, self.p.oc_lanes)
        assert len(rows) == self.rows(len(run.channels))
        return rows

    def qparams(self, run: ConvRun, conv: ConvLayer) -> list[int]:
        """Packed ``{bias, mult, shift}`` of the run's channels."""
        fields = qparam_fields(self.p)
        return [pack_fields(fields, {"bias": conv.bias[c], "mult": conv.rq.m[c],
                                     "shift": conv.rq.n[c]}) for c in run.channels]

    def input_words(self, run: ConvRun, x: np.ndarray) -> np.ndarray:
        """Input beats ``(pixels * kc, ic_lanes)`` of the run's pixels, channels padded."""
        sh, ic = self.shape, self.p.ic_lanes
        flat = np.asarray(x, dtype=np.int64).reshape(sh.pixels, sh.cin)
        padded = np.zeros((len(run.pixels), self.kc * ic), dtype=np.int64)
        padded[:, :sh.cin] = flat[run.pixels.start:run.pixels.stop]
        return padded.reshape(-1, ic)

    def run_outputs(self, run: ConvRun) -> int:
        return len(run.pixels) * len(run.channels)

    def assemble(self, outputs: list[np.ndarray]) -> np.ndarray:
        """Full ``(H, W, cout)`` output from each run's flat output stream."""
        sh = self.shape
        full = np.zeros((sh.pixels, sh.cout), dtype=np.int64)
        for run, flat in zip(self.runs, outputs, strict=True):
            full[run.pixels.start:run.pixels.stop, run.channels.start:run.channels.stop] = \
                np.asarray(flat).reshape(len(run.pixels), len(run.channels))
        return full.reshape(sh.h, sh.w, sh.cout)

    # -- accounting ---------------------------------------------------------------------
    def stream_counts(self) -> list[dict]:
        """Beats each run moves: weight rows, qparams, input words and outputs."""
        return [{"weights": self.rows(len(r.channels)) if r.load else 0,
                 "qparams": len(r.channels) if r.load else 0,
                 "input": len(r.pixels) * self.kc, "bypass": 0,
                 "output": self.run_outputs(r)} for r in self.runs]


def conv_as_1x1(conv: ConvLayer, x: np.ndarray, z_in: int, *, stride: int = 1, pad: int = 0,
                lanes: int) -> tuple[ConvLayer, np.ndarray]:
    """A convolution of ``x`` (HWC) as a 1x1 one the engine runs: ``(layer, input)``.

    A 1x1 kernel without padding only takes every ``stride``-th pixel; any other has its
    windows packed into channels (:mod:`spec.windows`: ``(ky, kx, c)`` order, padded to whole
    ``lanes`` with the zero point ``z_in``, weights reordered to match).
    """
    x = np.asarray(x, dtype=np.int64)
    kernel = conv.weight.shape[2]
    if kernel == 1 and pad == 0:
        return conv, x[::stride, ::stride]
    packed = ConvLayer(pack_window_weights(conv.weight, lanes), conv.bias, conv.rq)
    return packed, pack_windows(x, kernel, stride, pad, z_in, lanes)


def _rows(w: np.ndarray, ic: int, oc: int) -> np.ndarray:
    """Rows for weights ``(n_out, taps, n_in)``: for each group of ``oc`` outputs, for each
    tap, for each word of ``ic`` inputs, one row with lane ``o * ic + i``."""
    n_out, taps, n_in = w.shape
    groups = ceil_div(n_out, oc)
    words = ceil_div(n_in, ic)
    padded = np.zeros((groups * oc, taps, words * ic), dtype=np.int64)
    padded[:n_out, :, :n_in] = w
    # (g, o, tap, word, i) -> (g, tap, word, o, i)
    arr = padded.reshape(groups, oc, taps, words, ic).transpose(0, 2, 3, 1, 4)
    return arr.reshape(groups * taps * words, oc * ic)


def lanes_to_ints(rows: np.ndarray, bits: int) -> list[int]:
    """Pack rows of signed lanes (lane 0 in the least significant bits) into integers."""
    rows = np.atleast_2d(np.asarray(rows, dtype=np.int64))
    if bits == 8:
        raw = rows.astype(np.int8).tobytes()
        width = rows.shape[1]
        return [int.from_bytes(raw[i * width:(i + 1) * width], "little")
                for i in range(rows.shape[0])]
    mask = (1 << bits) - 1
    out = []
    for row in rows.tolist():
        v = 0
        for lane, x in enumerate(row):
            v |= (x & mask) << (lane * bits)
        out.append(v)
    return out
