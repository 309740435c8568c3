"""Amaranth-simulator tests of the requantizer stage: group FIFO, parameter reads, the
requantizer and the second requantization (rescaler) against ``spec.quant``, and its
credits: a stalled output never overflows the output FIFO, and every group and squeeze row
is accounted for."""

from __future__ import annotations

from collections import deque

import numpy as np
import pytest
from amaranth.sim import Simulator

from hw.layouts import Kind, group_tag_layout, qparam_layout
from hw.mac_array import array_out_layout
from hw.requant_stage import RequantStage
from spec.params import GROUP_FIFO_DEPTH, EngineParams, ceil_div, pack_config
from spec.quant import RESCALE_MULT_BITS, RESCALE_SHIFT_MAX, requantize, rescale

SMALL = EngineParams(bits=8, ic_lanes=2, oc_lanes=3, max_h=6, max_w=5, max_cin=8,
                     max_squeeze=4, max_e1=6, max_e3=6, weight_depth=48, squeeze_depth=80)
ONE_LANE = EngineParams(bits=6, ic_lanes=1, oc_lanes=1, max_h=4, max_w=3, max_cin=3,
                        max_squeeze=2, max_e1=3, max_e3=2, weight_depth=48, squeeze_depth=40)


def random_groups(p, rng, layer, n):
    """``n`` groups as the MAC array emits them: a kind, a group of its channels, sums."""
    oc = p.oc_lanes
    groups = []
    for _ in range(n):
        kind = Kind(int(rng.integers(0, 3)))
        channels = {Kind.SQUEEZE: layer["s"], Kind.EXPAND1: layer["e1"],
                    Kind.EXPAND3: layer["e3"]}[kind]
        chan = oc * int(rng.integers(0, ceil_div(channels, oc)))
        groups.append(dict(kind=kind, chan=chan, count=min(oc, channels - chan),
                           row=int(rng.integers(0, p.max_h)),
                           xoff=int(rng.integers(0, p.squeeze_depth - p.squeeze_words)),
                           acc=[int(v) for v in rng.integers(-(1 << 14), 1 << 14, oc)]))
    return groups


def expected(p, layer, qparams, groups):
    """What the stage must emit: squeeze writes ``(row, word, lane, value)`` and expand
    values, each in order."""
    spec, log_ic = p.spec, (p.ic_lanes - 1).bit_length()
    base = {Kind.SQUEEZE: 0, Kind.EXPAND1: layer["s"], Kind.EXPAND3: layer["s"] + layer["e1"]}
    squeeze, expand = [], []
    for g in groups:
        for lane in range(g["count"]):
            channel = g["chan"] + lane
            bias, mult, shift = qparams[base[g["kind"]] + channel]
            branch = {Kind.SQUEEZE: None, Kind.EXPAND1: "e1", Kind.EXPAND3: "e3"}[g["kind"]]
            twice = branch is not None and layer.get("rescale", 0)
            z = layer["z_sq"] if branch is None else \
                layer[f"z_{branch}"] if twice else layer["z_out"]
            hi = spec.act_max if branch is None else layer[f"{branch}_max"]
            y = int(requantize(np.array([g["acc"][lane] + bias]), mult, shift, z, relu=True,
                               spec=spec, hi=hi)[0])
            if twice:  # then to the concat's zero point
                y = int(rescale(y, z, layer[f"{branch}_rs_mult"], layer[f"{branch}_rs_shift"],
                                layer["z_out"], spec))
            if g["kind"] == Kind.SQUEEZE:
                squeeze.append((g["row"], g["xoff"] + (channel >> log_ic),
                                channel & (p.ic_lanes - 1), y))
            else:
                expand.append(y)
    return squeeze, expand


def run_stage(p, layer, qparams, groups, *, credits, drain_rate, stall, seed, limit=40_000):
    """Feed ``groups`` as fast as the group credits allow; drain the expand values from a
    model of the output FIFO at ``drain_rate`` a cycle, after ``stall`` cycles of nothing."""
    rng = np.random.default_rng(seed)
    dut = RequantStage(p, output_credits=credits)
    entry = array_out_layout(p, group_tag_layout(p).size)
    tag = group_tag_layout(p)
    got = {"squeeze": [], "expand": [], "written": [], "most_queued": 0, "busy_idle": 0}

    async def bench(ctx):
        ctx.set(dut.layer.as_value(), pack_config(p, **layer))
        ctx.set(dut.go, 1)
        await ctx.tick()
        ctx.set(dut.go, 0)
        pending = deque(groups)
        outstanding = freed_total = 0
        out_fifo, returned, q_addr = deque(), False, 0
        for now in range(limit):
            bias, mult, shift = qparams[q_addr]
            ctx.set(dut.qparam_read.data.as_value(), qparam_layout(p).const(
                dict(bias=bias, mult=mult, shift=shift)).as_value().value)
            ctx.set(dut.output_freed, returned)
            # the sequencer's side: a group only with a credit (a FIFO slot)
            send = bool(pending) and outstanding < GROUP_FIFO_DEPTH and rng.random() < 0.7
            if send:
                g = pending.popleft()
                tag_bits = tag.const({k: g[k] for k in ("kind", "chan", "count", "row",
                                                          "xoff")}).as_value().value
                ctx.set(dut.groups.payload.as_value(),
                        entry.const({"acc": g["acc"], "tag": tag_bits}).as_value().value)
                outstanding += 1
            ctx.set(dut.groups.valid, send)
            q_addr = ctx.get(dut.qparam_read.addr)
            if ctx.get(dut.group_freed):
                outstanding -= 1
                freed_total += 1
            if ctx.get(dut.squeeze.valid):
                sq = dut.squeeze.payload
                got["squeeze"].append((ctx.get(sq.row), ctx.get(sq.word), ctx.get(sq.lane),
                                       ctx.get(sq.value)))
            if ctx.get(dut.squeeze_written):
                got["written"].append(len(got["squeeze"]))
            if ctx.get(dut.expand.valid):
                out_fifo.append(ctx.get(dut.expand.payload))
                got["most_queued"] = max(got["most_queued"], len(out_fifo))
                assert len(out_fifo) <= credits, "the output FIFO overflowed"
            # the output stage: a value leaves now and then; its credit returns a cycle late
            returned = bool(out_fifo) and now >= stall and rng.random() < drain_rate
            if returned:
                got["expand"].append(out_fifo.popleft())
            idle = ctx.get(dut.idle)
            got["busy_idle"] += idle and bool(out_fifo)  # an output credit is out
            if idle and not pending and not outstanding and not out_fifo \
                    and freed_total == len(groups):
                break
            await ctx.tick()
        else:
            raise AssertionError(f"not idle within {limit} cycles")

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return got


def random_case(p, seed, rescaled=False):
    rng = np.random.default_rng(seed)
    spec = p.spec
    layer = dict(h=2, w=2, cin=2, s=p.max_squeeze, e1=p.max_e1, e3=p.max_e3,
                 z_sq=int(rng.integers(spec.act_min, 0)), z_out=int(rng.integers(-3, 4)),
                 e1_max=spec.act_max, e3_max=spec.act_max // 2, squeeze=1, compute=1)
    if rescaled:
        # e1 by a random 17-bit multiplier with a long shift, e3 by 3/2 (a tie on every odd
        # value) with a shift of 1; the first stage to each branch's own zero point
        layer.update(rescale=1, z_e1=int(rng.integers(spec.act_min, 0)),
                     z_e3=int(rng.integers(spec.act_min, 0)),
                     e1_rs_mult=int(rng.integers(1 << (RESCALE_MULT_BITS - 1),
                                                 1 << RESCALE_MULT_BITS)),
                     e1_rs_shift=int(rng.integers(17, RESCALE_SHIFT_MAX + 1)),
                     e3_rs_mult=3, e3_rs_shift=1, e3_max=spec.act_max)
    qparams = [(int(rng.integers(-500, 500)), int(rng.integers(1 << 29, 1 << 31)),
                int(rng.integers(30, 40))) for _ in range(p.qparam_depth)]
    return rng, layer, qparams


@pytest.mark.parametrize("rescaled", [False, True], ids=["once", "twice"])
@pytest.mark.parametrize("p", [SMALL, ONE_LANE], ids=["3-lanes", "1-lane"])
@pytest.mark.parametrize("credits, drain_rate, stall", [(32, 1.0, 0), (8, 0.2, 400)],
                         ids=["full-rate", "stalled-output"])
def test_values_and_credits(p, credits, drain_rate, stall, rescaled):
    rng, layer, qparams = random_case(p, 3, rescaled)
    groups = random_groups(p, rng, layer, 120)
    got = run_stage(p, layer, qparams, groups, credits=credits, drain_rate=drain_rate,
                    stall=stall, seed=4)
    want_squeeze, want_expand = expected(p, layer, qparams, groups)
    assert got["squeeze"] == want_squeeze
    assert got["expand"] == want_expand
    # one written pulse per squeeze group, each after the group's last value
    ends = np.cumsum([g["count"] for g in groups if g["kind"] == Kind.SQUEEZE])
    assert len(got["written"]) == len(ends)
    assert all(seen >= end for seen, end in zip(got["written"], ends, strict=True))
    assert got["busy_idle"] == 0, "idle with output credits out"
    if stall:
        # the credits held the requantizer back at exactly the FIFO's depth
        assert got["most_queued"] == credits
