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

Everything here is planned from :class:`spec.params.EngineParams`, which the driver reads
from the device.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .layers import FireLayer, Rescale
from .params import EngineParams, ceil_div, pack_config, pack_fields, qparam_fields, weight_rows
from .quant import RESCALE_MULT_BITS


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
