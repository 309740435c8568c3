"""The tile planner and stream packing (``spec.tiling``) against references written here with
plain loops: every tile fits the weight buffer (squeeze rows included when it squeezes),
tiles cover every output channel once, and the streams hold what the engine expects."""

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.fire_cases import random_conv, random_fire, random_input
from spec.params import EngineParams, config_fields, qparam_fields
from spec.tiling import (
    ConvPlan,
    ConvShape,
    FirePlan,
    PlanError,
    Shape,
    conv_as_1x1,
    lanes_to_ints,
)

P = EngineParams(bits=8, ic_lanes=2, oc_lanes=3, max_h=8, max_w=8, max_cin=16, max_squeeze=8,
                 max_e1=16, max_e3=16, weight_depth=64, squeeze_depth=96, bypass=True)
# one output channel a group: fine-grained tiles, where every row of the budget counts
FINE = EngineParams(bits=8, ic_lanes=2, oc_lanes=1, max_h=8, max_w=8, max_cin=16,
                    max_squeeze=8, max_e1=64, max_e3=64, weight_depth=100, squeeze_depth=96)
ARTY = EngineParams()


def ceil_div(a, b):
    return (a + b - 1) // b


def tile_rows(p, shape, tile):
    """Weight rows a run needs, counted independently of the planner: the squeeze's when it
    squeezes, one row per (group, word) of expand1x1, nine per (group, word) of expand3x3."""
    ks = ceil_div(shape.s, p.ic_lanes)
    rows = ceil_div(len(tile.e1), p.oc_lanes) * ks + 9 * ceil_div(len(tile.e3), p.oc_lanes) * ks
    if tile.squeeze:
        rows += ceil_div(shape.s, p.oc_lanes) * ceil_div(shape.cin, p.ic_lanes)
    return rows


def check_plan(p, shape, plan):
    """Everything a plan must satisfy for the engine to accept and compute each run."""
    tiles = plan.tiles
    for tile in tiles:
        assert tile_rows(p, shape, tile) <= p.weight_depth, (tile, p.weight_depth)
        assert tile.channels > 0
    # every output channel exactly once, e1 then e3 in order
    e1 = [c for t in tiles for c in t.e1]
    e3 = [c for t in tiles for c in t.e3]
    assert e1 == list(range(shape.e1)) and e3 == list(range(shape.e3))
    assert tiles[0].squeeze
    if len(tiles) == 1:
        assert not tiles[0].retain
        return
    retain = all(t.retain for t in tiles)
    assert retain or not any(t.retain for t in tiles)
    if retain:  # tile 0 squeezes and keeps the map, the others reuse it
        assert shape.h * shape.w * ceil_div(shape.s, p.ic_lanes) <= p.squeeze_depth
        assert not any(t.squeeze for t in tiles[1:])
    else:  # every tile squeezes again, and so needs the squeeze rows too
        assert all(t.squeeze for t in tiles)
    # greedy: a tile ends only where the next output group (oc channels of e1 first, then
    # of e3) would not have fit beside it
    ks = ceil_div(shape.s, p.ic_lanes)
    for tile, nxt in zip(tiles, tiles[1:], strict=False):
        group = ks if len(nxt.e1) else 9 * ks
        assert tile_rows(p, shape, tile) + group > p.weight_depth


def test_one_run_exactly_when_the_weights_fit():
    # squeeze: ceil(8/3) * ceil(16/2) = 24 rows; e1=6: 2 groups x 4 words = 8; e3=3: 36
    shape = Shape(2, 2, 16, 8, 6, 3)
    fits = P.replace(weight_depth=68)
    plan = FirePlan(fits, shape)
    assert len(plan.tiles) == 1 and tile_rows(fits, shape, plan.tiles[0]) == 68
    assert plan.tiles[0].retain is False and plan.tiles[0].squeeze is True
    layer = random_fire(np.random.default_rng(2), 16, 8, 6, 3)
    config = unpack(config_fields(fits), plan.config(plan.tiles[0], layer, load=True,
                                                     compute=True))
    assert (config["squeeze"], config["retain"], config["e1"], config["e3"]) == (1, 0, 6, 3)
    assert len(FirePlan(P.replace(weight_depth=67), shape).tiles) == 2


@pytest.mark.parametrize("retain", [True, False])
def test_tiles_that_squeeze_again_budget_the_squeeze_rows(retain):
    """A tile that squeezes again carries the squeeze weights too: a planner that budgets them
    for the first tile only overfills the weight buffer of every later tile."""
    # squeeze 16 rows, e1 64 x 1, e3 64 x 9: the first tile has 84 rows for the expands,
    # later ones 100 when they reuse the map, 84 when they squeeze again
    shape = Shape(3, 8, 16, 2, 64, 64)
    plan = FirePlan(FINE, shape, retain=retain)
    check_plan(FINE, shape, plan)
    layer = random_fire(np.random.default_rng(1), 16, 2, 64, 64)
    for tile in plan.tiles:
        rows = len(plan.weight_rows(tile, layer))
        assert rows == tile_rows(FINE, shape, tile) <= FINE.weight_depth
    if retain:
        assert [t.squeeze for t in plan.tiles] == [True] + [False] * (len(plan.tiles) - 1)
        assert [len(t.e1) + 9 * len(t.e3) for t in plan.tiles] == [82] + [99] * 5 + [63]
    else:
        assert all(t.squeeze and not t.retain for t in plan.tiles)
        assert [len(t.e1) + 9 * len(t.e3) for t in plan.tiles] == [82] + [81] * 6 + [72]


def test_a_map_too_big_to_retain_is_squeezed_by_every_tile():
    shape = Shape(8, 8, 16, 8, 16, 16)  # 8 x 8 x 4 = 256 words > 96
    plan = FirePlan(P, shape)
    assert all(t.squeeze and not t.retain for t in plan.tiles)
    check_plan(P, shape, plan)
    small = Shape(3, 8, 16, 8, 16, 16)  # 96 words: just fits
    plan = FirePlan(P, small)
    assert plan.tiles[0].retain and not plan.tiles[1].squeeze
    check_plan(P, small, plan)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from([P, FINE]), st.integers(1, 8), st.integers(1, 8), st.integers(1, 16),
       st.integers(1, 8), st.integers(0, 64), st.integers(0, 64), st.booleans(),
       st.integers(0, 40), st.integers(0, 200))
def test_random_plans_are_valid(base, h, w, cin, s, e1, e3, retain, extra_depth, extra_sq):
    e1, e3 = min(e1, base.max_e1), min(e3, base.max_e3)
    if e1 + e3 == 0:
        e1 = 1
    p = base.replace(weight_depth=base.weight_depth + extra_depth,
                     squeeze_depth=base.squeeze_depth + extra_sq)
    shape = Shape(h, w, cin, s, e1, e3)
    check_plan(p, shape, FirePlan(p, shape, retain=retain))


def test_squeezenet_fire9_on_the_arty():
    shape = Shape(13, 13, 512, 64, 256, 256)
    plan = FirePlan(ARTY, shape)
    check_plan(ARTY, shape, plan)
    assert len(plan.tiles) == 3 and plan.tiles[0].retain
    batch = FirePlan(ARTY, shape, retain=False)
    check_plan(ARTY, shape, batch)
    assert len(batch.tiles) > 3


@pytest.mark.parametrize("name,shape,match", [
    ("h", Shape(9, 1, 1, 1, 1, 1), "h=9 exceeds the engine's maximum 8 \\(max_h\\)"),
    ("w", Shape(1, 9, 1, 1, 1, 1), "w=9 exceeds the engine's maximum 8 \\(max_w\\)"),
    ("cin", Shape(1, 1, 17, 1, 1, 1), "cin=17 exceeds .* 16 \\(max_cin\\)"),
    ("s", Shape(1, 1, 1, 9, 1, 1), "s=9 exceeds .* 8 \\(max_squeeze\\)"),
    ("e1", Shape(1, 1, 1, 1, 17, 1), "e1=17 exceeds .* 16 \\(max_e1\\)"),
    ("e3", Shape(1, 1, 1, 1, 1, 17), "e3=17 exceeds .* 16 \\(max_e3\\)"),
    ("h0", Shape(0, 1, 1, 1, 1, 1), "h=0: must be at least 1"),
    ("w0", Shape(1, 0, 1, 1, 1, 1), "w=0: must be at least 1"),
    ("cin0", Shape(1, 1, 0, 1, 1, 1), "cin=0: must be at least 1"),
    ("s0", Shape(1, 1, 1, 0, 1, 1), "s=0: must be at least 1"),
])
def test_plan_refuses_each_dimension(name, shape, match):
    with pytest.raises(PlanError, match=match):
        FirePlan(P, shape)


def test_plan_limits_are_inclusive_and_expands_may_be_empty():
    FirePlan(P, Shape(8, 8, 16, 8, 16, 16))
    assert FirePlan(P, Shape(1, 1, 1, 1, 0, 2)).tiles[0].e1 == range(0)
    assert FirePlan(P, Shape(1, 1, 1, 1, 2, 0)).tiles[0].e3 == range(0)
    with pytest.raises(PlanError, match="^bypass: this engine was built without bypass "
                                        "support$"):
        FirePlan(P.replace(bypass=False), Shape(1, 1, 4, 1, 2, 2), bypass=True)
    with pytest.raises(PlanError, match=r"^bypass needs cin == e1 \+ e3 \(5 != 4\)$"):
        FirePlan(P, Shape(1, 1, 5, 1, 1, 3), bypass=True)


def reference_rows(w, ic, oc):
    """Weight rows for ``w`` (n_out, taps, n_in), by loops: group, tap, input word; lane
    ``o * ic + i`` holds output ``g * oc + o``, input ``word * ic + i`` (zero past the end)."""
    n_out, taps, n_in = w.shape
    rows = []
    for g in range(ceil_div(n_out, oc)):
        for tap in range(taps):
            for word in range(ceil_div(n_in, ic)):
                row = [0] * (ic * oc)
                for o in range(oc):
                    for i in range(ic):
                        oo, ii = g * oc + o, word * ic + i
                        if oo < n_out and ii < n_in:
                            row[o * ic + i] = int(w[oo, tap, ii])
                rows.append(row)
    return rows


@pytest.mark.parametrize("retain", [True, False])
def test_streams_of_every_tile(retain):
    rng = np.random.default_rng(3)
    shape = Shape(3, 4, 7, 5, 8, 7)
    p = P.replace(weight_depth=70)
    layer = random_fire(rng, 7, 5, 8, 7, bypass=False)
    x = random_input(rng, 3, 4, 7)
    plan = FirePlan(p, shape, retain=retain)
    assert len(plan.tiles) > 1
    ic, oc = p.ic_lanes, p.oc_lanes
    counts = plan.stream_counts()
    for tile, count in zip(plan.tiles, counts, strict=True):
        want = []
        if tile.squeeze:
            want += reference_rows(layer.squeeze.weight[:, :, 0, 0][:, None, :], ic, oc)
        w1 = layer.expand1x1.weight[tile.e1.start:tile.e1.stop, :, 0, 0]
        want += reference_rows(w1[:, None, :], ic, oc) if len(tile.e1) else []
        if len(tile.e3):
            w3 = layer.expand3x3.weight[tile.e3.start:tile.e3.stop]
            taps = np.array([[[w3[o, c, t // 3, t % 3] for c in range(5)] for t in range(9)]
                             for o in range(len(tile.e3))])
            want += reference_rows(taps, ic, oc)
        got = plan.weight_rows(tile, layer)
        np.testing.assert_array_equal(got, np.array(want).reshape(-1, ic * oc))
        assert got.dtype == np.int64
        assert count["weights"] == len(want)
        # quantization parameters: squeeze channels, then the tile's e1, then its e3
        entries = [(layer.squeeze, c) for c in range(5)]
        entries += [(layer.expand1x1, c) for c in tile.e1]
        entries += [(layer.expand3x3, c) for c in tile.e3]
        fields = qparam_fields(p)
        q = plan.qparams(tile, layer)
        assert len(q) == len(entries) == count["qparams"]
        for word, (conv, c) in zip(q, entries, strict=True):
            assert unpack(fields, word) == {"bias": conv.bias[c], "mult": conv.rq.m[c],
                                            "shift": conv.rq.n[c]}
        assert count["input"] == (3 * 4 * 4 if tile.squeeze else 0)  # 7 channels: 4 words
        assert count["output"] == 3 * 4 * tile.channels and count["bypass"] == 0
        config = unpack(config_fields(p), plan.config(tile, layer, load=True, compute=False))
        assert (config["h"], config["w"], config["cin"], config["s"]) == (3, 4, 7, 5)
        assert (config["e1"], config["e3"]) == (len(tile.e1), len(tile.e3))
        assert (config["load"], config["compute"]) == (1, 0)
        assert (config["squeeze"], config["retain"]) == (tile.squeeze, tile.retain)
        assert (config["z_in"], config["z_sq"], config["z_out"]) == (
            layer.z_in, layer.z_squeeze, layer.expand1x1.rq.z_out)
        hi1, hi3 = layer.expand1x1.rq.hi, layer.expand3x3.rq.hi
        assert config["e1_max"] == (127 if hi1 is None else hi1)
        assert config["e3_max"] == (127 if hi3 is None else hi3)
        assert config["bypass"] == 0
    # input words: pixels in raster order, channels padded with zeros to whole words
    words = plan.input_words(x)
    assert words.shape == (3 * 4 * 4, ic) and words.dtype == np.int64
    for pix in range(12):
        for k in range(4):
            for i in range(ic):
                c = k * ic + i
                assert words[pix * 4 + k, i] == (x[pix // 4, pix % 4, c] if c < 7 else 0)


def unpack(fields, word):
    out, offset = {}, 0
    for f in fields:
        v = (word >> offset) & ((1 << f.width) - 1)
        if f.signed and v >> (f.width - 1):
            v -= 1 << f.width
        out[f.name] = v
        offset += f.width
    return out


def test_bypass_streams_and_config():
    rng = np.random.default_rng(4)
    shape = Shape(2, 3, 16, 6, 7, 9)
    layer = random_fire(rng, 16, 6, 7, 9, bypass=True)
    x = random_input(rng, 2, 3, 16)
    plan = FirePlan(P, shape, bypass=True)
    assert len(plan.tiles) > 1
    for tile, count in zip(plan.tiles, plan.stream_counts(), strict=True):
        channels = list(tile.e1) + [7 + c for c in tile.e3]
        want = [x[r, c, ch] for r in range(2) for c in range(3) for ch in channels]
        np.testing.assert_array_equal(plan.bypass_values(tile, x), want)
        assert count["bypass"] == 6 * len(channels)
        config = unpack(config_fields(P), plan.config(tile, layer, load=False, compute=True))
        b = layer.bypass
        assert config["bypass"] == 1 and (config["load"], config["compute"]) == (0, 1)
        assert (config["byp_mult_a"], config["byp_mult_b"], config["byp_shift"]) == (
            b.mult_a, b.mult_b, b.shift)
        assert (config["byp_z_in"], config["byp_z_out"]) == (b.z_b, b.z_out)


def test_assemble_puts_each_tile_back_in_place():
    shape = Shape(3, 2, 16, 8, 10, 11)
    plan = FirePlan(P, shape)
    assert len(plan.tiles) > 2
    full = np.arange(3 * 2 * 21).reshape(3, 2, 21)
    # each tile's stream: pixel by pixel, its e1 channels then its e3 channels
    flats = []
    for tile in plan.tiles:
        flats.append([full[r, c, ch] for r in range(3) for c in range(2)
                      for ch in list(tile.e1) + [10 + k for k in tile.e3]])
    got = plan.assemble(flats)
    np.testing.assert_array_equal(got, full)
    assert got.dtype == np.int64
    with pytest.raises(ValueError):  # a tile's output missing
        plan.assemble(flats[:-1])
    assert [plan.tile_output_shape(t) for t in plan.tiles] == [(3, 2, t.channels)
                                                              for t in plan.tiles]


@pytest.mark.parametrize("bits", [2, 4, 8, 12, 16])
def test_lanes_to_ints_packs_two_complement_lanes(bits):
    rng = np.random.default_rng(bits)
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    rows = rng.integers(lo, hi + 1, (6, 5))
    rows[0] = lo
    rows[1] = hi
    rows[2] = -1
    got = lanes_to_ints(rows, bits)
    for row, word in zip(rows, got, strict=True):
        want = sum((int(v) % (1 << bits)) << (bits * lane) for lane, v in enumerate(row))
        assert word == want
    assert lanes_to_ints(np.array([3, -2]), bits) == [3 + (((1 << bits) - 2) << bits)]


def test_the_smallest_weight_buffer_still_plans_every_layer():
    """``weight_depth`` at its minimum (the squeeze weights at the maxima plus one 3x3 output
    group): a layer at the maxima still plans, one 3x3 group per tile beside the squeeze."""
    p = P.replace(weight_depth=60)  # 8 words x 3 groups of squeeze + 9 x 4 words
    shape = Shape(2, 2, 16, 8, 0, 16)
    plan = FirePlan(p, shape, retain=False)
    check_plan(p, shape, plan)
    assert [tile_rows(p, shape, t) for t in plan.tiles] == [60] * 6


def test_config_ceilings_of_the_expands():
    rng = np.random.default_rng(5)
    shape = Shape(2, 2, 4, 2, 3, 3)
    plan = FirePlan(P, shape)
    for hi1, hi3 in ((None, None), (40, None), (None, 17), (0, 99)):
        layer = random_fire(rng, 4, 2, 3, 3)
        layer = dataclasses.replace(
            layer, expand1x1=dataclasses.replace(
                layer.expand1x1, rq=dataclasses.replace(layer.expand1x1.rq, hi=hi1)),
            expand3x3=dataclasses.replace(
                layer.expand3x3, rq=dataclasses.replace(layer.expand3x3.rq, hi=hi3)))
        config = unpack(config_fields(P), plan.config(plan.tiles[0], layer, load=True,
                                                      compute=True))
        assert (config["e1_max"], config["e3_max"]) == (127 if hi1 is None else hi1,
                                                        127 if hi3 is None else hi3)


def test_config_of_expands_rounded_twice():
    """A twice-rounded branch sends its own zero point and its rescale; the other branch of
    the layer the identity (m / 2**n = 1 from the concat's zero point to itself); a layer
    rounded once sends rescale=0."""
    rng = np.random.default_rng(6)
    plan = FirePlan(P, Shape(2, 2, 4, 2, 3, 3))
    seen = set()
    for _ in range(12):
        layer = random_fire(rng, 4, 2, 3, 3, rescale=True)
        config = unpack(config_fields(P), plan.config(plan.tiles[0], layer, load=True,
                                                      compute=True))
        assert config["rescale"] == 1 and config["z_out"] == layer.z_concat
        for branch, conv in (("e1", layer.expand1x1), ("e3", layer.expand3x3)):
            rs = conv.rq.rescale
            seen.add((branch, rs is None))
            want = (conv.rq.z_out, rs.m, rs.n) if rs else (layer.z_concat, 1 << 16, 16)
            assert (config[f"z_{branch}"], config[f"{branch}_rs_mult"],
                    config[f"{branch}_rs_shift"]) == want
            assert conv.rq.final_zero == layer.z_concat
    assert seen == {("e1", True), ("e1", False), ("e3", False)}
    once = random_fire(rng, 4, 2, 3, 3)
    assert unpack(config_fields(P), plan.config(plan.tiles[0], once, load=True,
                                                compute=True))["rescale"] == 0


# e1 spread over several tiles (one output channel a group, 1-row groups)
WIDE_E1 = EngineParams(bits=8, ic_lanes=16, oc_lanes=1, max_h=8, max_w=8, max_cin=256,
                       max_squeeze=8, max_e1=256, max_e3=64, weight_depth=200,
                       squeeze_depth=96, bypass=True)


def test_tiles_that_start_inside_e1():
    shape = Shape(2, 3, 16, 2, 200, 4)
    plan = FirePlan(WIDE_E1, shape)
    check_plan(WIDE_E1, shape, plan)
    starts = [t.e1.start for t in plan.tiles if len(t.e1)]
    assert starts[0] == 0 and len(starts) >= 2 and all(s > 0 for s in starts[1:])
    for tile in plan.tiles:
        want = list(tile.e1) + [200 + c for c in tile.e3]
        assert tile.concat_channels(200).tolist() == want
    full = np.arange(2 * 3 * 204).reshape(2, 3, 204)
    flats = [full[:, :, t.concat_channels(200)].reshape(-1) for t in plan.tiles]
    np.testing.assert_array_equal(plan.assemble(flats), full)
    x = np.arange(2 * 3 * 204).reshape(2, 3, 204) % 256 - 128
    bypass = FirePlan(WIDE_E1, Shape(2, 3, 204, 2, 200, 4), bypass=True)
    assert len(bypass.tiles) >= 2
    for tile in bypass.tiles:
        np.testing.assert_array_equal(bypass.bypass_values(tile, x),
                                      x[:, :, tile.concat_channels(200)].reshape(-1))
        assert bypass.bypass_values(tile, x)[0] == x[0, 0, tile.concat_channels(200)[0]]


def test_lanes_to_ints_takes_integer_valued_floats():
    for bits in (4, 8):
        got = lanes_to_ints(np.array([[1.0, -2.0]]), bits)
        assert got == [1 + (((1 << bits) - 2) << bits)]


def test_a_tile_may_fill_the_whole_buffer():
    """Tiles are packed to the last row: a tile that reuses the squeeze map may hold exactly
    ``weight_depth`` rows, and one that starts after a full tile starts empty."""
    p = WIDE_E1.replace(weight_depth=144)  # squeeze 2 rows; a 3x3 group 9 rows
    shape = Shape(2, 3, 16, 2, 142, 20)
    plan = FirePlan(p, shape)
    check_plan(p, shape, plan)
    assert [tile_rows(p, shape, t) for t in plan.tiles] == [144, 144, 36]
    assert [(len(t.e1), len(t.e3)) for t in plan.tiles] == [(142, 0), (0, 16), (0, 4)]


# -- 1x1 convolutions (ConvPlan) ------------------------------------------------------------
@settings(max_examples=150)
@given(base=st.sampled_from([P, FINE, ARTY]), h=st.integers(1, 130), w=st.integers(1, 130),
       cin=st.integers(1, 512), cout=st.integers(1, 1100), depth=st.integers(0, 400))
def test_random_conv_plans_are_valid(base, h, w, cin, cout, depth):
    """Every run within the engine's maxima and weight buffer; the runs cover every (pixel,
    output channel) exactly once; a channel block's first run loads, the others do not; as
    few channel blocks as the buffers allow, of whole groups (no short group but the
    layer's last)."""
    p = base.replace(weight_depth=base.weight_depth + depth)
    cin = min(cin, p.max_cin)
    plan = ConvPlan(p, ConvShape(h, w, cin, cout))
    seen = np.zeros((h * w, cout), dtype=int)
    blocks = {}
    for run in plan.runs:
        assert 1 <= run.h <= p.max_h and 1 <= run.w <= p.max_w
        assert run.h * run.w == len(run.pixels)
        s = len(run.channels)
        assert 1 <= s <= p.max_squeeze
        assert ceil_div(s, p.oc_lanes) * ceil_div(cin, p.ic_lanes) <= p.weight_depth
        seen[run.pixels.start:run.pixels.stop, run.channels.start:run.channels.stop] += 1
        blocks.setdefault(run.channels, []).append(run.load)
    assert (seen == 1).all()
    assert all(loads == [True] + [False] * (len(loads) - 1) for loads in blocks.values())
    # blocks of whole groups, all alike but the last: no group is short but the layer's last
    sizes = [len(c) for c in sorted(blocks, key=lambda c: c.start)]
    assert all(n == sizes[0] for n in sizes[:-1]) and sizes[-1] <= sizes[0]
    assert sum(ceil_div(n, p.oc_lanes) for n in sizes) == ceil_div(cout, p.oc_lanes)
    # as few blocks as the largest block of whole groups allows (a larger block with a short
    # group saves a run but costs lanes in every pixel: conv10 in 16 x 64 would take 208
    # groups a pixel instead of 200)
    most = min(p.max_squeeze, cout)
    while ceil_div(most, p.oc_lanes) * ceil_div(cin, p.ic_lanes) > p.weight_depth:
        most -= 1
    if most < cout and most >= p.oc_lanes:
        most -= most % p.oc_lanes
    assert len(sizes) == ceil_div(cout, most)


def test_conv_plans_of_squeezenet_on_the_arty():
    """conv10: 17 channel blocks of 60 (and one of 40), one pixel block; v1.1's conv1 (111 x
    111 packed pixels): one channel block, pixel blocks 56x56 three times, 52x56, 1x1."""
    plan = ConvPlan(ARTY, ConvShape(13, 13, 512, 1000))
    assert [len(r.channels) for r in plan.runs] == [60] * 16 + [40]
    assert all((r.h, r.w) == (13, 13) and r.load for r in plan.runs)
    plan = ConvPlan(ARTY, ConvShape(111, 111, 32, 64))
    assert [(r.h, r.w, r.load) for r in plan.runs] == [(56, 56, True), (56, 56, False),
                                                       (56, 56, False), (52, 56, False),
                                                       (1, 1, False)]
    assert [len(c) for c in {r.channels for r in ConvPlan(
        ARTY, ConvShape(109, 109, 160, 96)).runs}] == [50, 46]


def test_conv_streams_against_loops():
    """Weight rows (lane o * ic + i, (group, word) order), parameters, input words and the
    configuration of each run, and assembly, against loops written here."""
    rng = np.random.default_rng(3)
    conv, z_in = random_conv(rng, 7, 5, relu=False)
    x = random_input(rng, 9, 10, 5)
    plan = ConvPlan(P, ConvShape(9, 10, 5, 7), relu=False)
    ic, oc = P.ic_lanes, P.oc_lanes
    fields = [f.name for f in config_fields(P)]
    for run in plan.runs:
        rows = plan.weight_rows(run, conv)
        want = []
        n = len(run.channels)
        for g in range(ceil_div(n, oc)):
            for k in range(ceil_div(5, ic)):
                row = [0] * (ic * oc)
                for o in range(oc):
                    for i in range(ic):
                        c, j = run.channels.start + g * oc + o, k * ic + i
                        if g * oc + o < n and j < 5:
                            row[o * ic + i] = int(conv.weight[c, j, 0, 0])
                want.append(row)
        np.testing.assert_array_equal(rows, want)
        assert len(plan.qparams(run, conv)) == n
        words = plan.input_words(run, x)
        flat = [[int(x[q // 10, q % 10, j]) if j < 5 else 0 for j in range(6)]
                for q in run.pixels]
        np.testing.assert_array_equal(words.reshape(len(run.pixels), -1), flat)
        word = plan.config(run, conv, z_in)
        got, offset = {}, 0
        for f in config_fields(P):
            got[f.name] = (word >> offset) & ((1 << f.width) - 1)
            offset += f.width
        assert (got["conv"], got["relu"], got["e1"], got["e3"], got["squeeze"]) == (1, 0, 0,
                                                                                     0, 1)
        assert (got["h"], got["w"], got["s"], got["load"]) == (run.h, run.w, n, run.load)
        assert "conv" in fields
    outs = [np.arange(len(r.pixels) * len(r.channels)) + 1000 * i
            for i, r in enumerate(plan.runs)]
    full = plan.assemble(outs).reshape(90, 7)
    for i, r in enumerate(plan.runs):
        for a, q in enumerate(r.pixels):
            for b, c in enumerate(r.channels):
                assert full[q, c] == 1000 * i + a * len(r.channels) + b


def test_conv_plan_refuses_what_the_engine_cannot_run():
    with pytest.raises(PlanError, match="cin=17 exceeds"):
        ConvPlan(P, ConvShape(2, 2, 17, 3))
    with pytest.raises(PlanError, match="h=0"):
        ConvPlan(P, ConvShape(0, 2, 4, 3))
    rng = np.random.default_rng(4)
    conv, _ = random_conv(rng, 3, 4)
    plan = ConvPlan(P, ConvShape(2, 2, 4, 3))
    for bad in (dataclasses.replace(conv, rq=dataclasses.replace(conv.rq, hi=5)),
                dataclasses.replace(conv, rq=dataclasses.replace(conv.rq, relu=False))):
        with pytest.raises(PlanError):
            plan.check_layer(bad)
    with pytest.raises(PlanError, match="not a 1x1"):
        ConvPlan(P, ConvShape(2, 2, 5, 3)).check_layer(conv)


def test_conv_as_1x1_takes_strided_pixels_or_packs_windows():
    rng = np.random.default_rng(5)
    conv, z_in = random_conv(rng, 4, 6)
    x = random_input(rng, 7, 5, 6)
    same, xs = conv_as_1x1(conv, x, z_in, stride=2, lanes=4)
    assert same is conv
    np.testing.assert_array_equal(xs, x[::2, ::2])
    conv3, z3 = random_conv(rng, 4, 3, 3)
    packed, xp = conv_as_1x1(conv3, x[:, :, :3], z3, stride=2, pad=1, lanes=4)
    assert packed.weight.shape == (4, 28, 1, 1) and xp.shape == (4, 3, 28)
    from sw import ops
    np.testing.assert_array_equal(
        ops.conv2d(xp, packed.weight, packed.bias, z3, packed.rq),
        ops.conv2d(x[:, :, :3], conv3.weight, conv3.bias, z3, conv3.rq, stride=2, pad=1))
