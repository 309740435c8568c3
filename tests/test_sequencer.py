"""Amaranth-simulator tests of the sequencer: the operations it issues for small layers
against a Python loop nest (docs/engine.md, "Row schedule"), with input gaps and a slow
requantizer; its credits, input slots and the wait for squeeze rows before an expand."""

from __future__ import annotations

from collections import deque

import numpy as np
import pytest
from amaranth.sim import Simulator

from hw.layouts import Kind, input_address_layout
from hw.sequencer import Sequencer
from spec.params import EngineParams, ceil_div, pack_config

SMALL = EngineParams(bits=8, ic_lanes=2, oc_lanes=3, max_h=6, max_w=5, max_cin=8,
                     max_squeeze=4, max_e1=6, max_e3=6, weight_depth=48, squeeze_depth=80)
SINGLE = EngineParams(bits=4, ic_lanes=1, oc_lanes=1, max_h=4, max_w=3, max_cin=3,
                      max_squeeze=2, max_e1=3, max_e3=2, weight_depth=48, squeeze_depth=40,
                      bypass=False)
CREDITS = 4
#: cycles from a squeeze group's pop to its last value in the line buffer
WRITE_LATENCY = 6
FIELDS = ("first", "last", "pad", "squeeze", "w_addr", "in_word", "in_slot", "row", "word",
          "kind", "chan", "tag_row", "xoff", "left")


def sizes_of(p: EngineParams, h, w, cin, s, e1, e3, squeeze) -> dict:
    ic, oc = p.ic_lanes, p.oc_lanes
    kc, ks = ceil_div(cin, ic), ceil_div(s, ic)
    gs, g1, g3 = ceil_div(s, oc), ceil_div(e1, oc), ceil_div(e3, oc)
    return dict(input_words=kc, squeeze_words=ks, squeeze_groups=gs, e1_groups=g1,
                e3_groups=g3, squeeze_rows=gs * kc,
                weight_rows=(gs * kc if squeeze else 0) + g1 * ks + 9 * g3 * ks,
                qparams=s + e1 + e3, row_words=w * ks, retain=int(not squeeze))


def loop_nest(p: EngineParams, h, w, cin, s, e1, e3, squeeze) -> list[tuple]:
    """The operations of a run, in issue order (see ``FIELDS``)."""
    z = sizes_of(p, h, w, cin, s, e1, e3, squeeze)
    kc, ks, oc = z["input_words"], z["squeeze_words"], p.oc_lanes
    word_mask = (1 << p.squeeze_depth.bit_length()) - 1
    in_mask = (1 << input_address_layout(p)["word"].shape.width) - 1
    ops, slot = [], 0
    for t in range(h + 1):
        if squeeze and t < h:  # squeeze row t
            for x in range(w):
                for g in range(z["squeeze_groups"]):
                    for k in range(kc):
                        ops.append((k == 0, k == kc - 1, 0, 1, g * kc + k, k & in_mask, slot,
                                    0, 0, Kind.SQUEEZE, g * oc, t, x * ks, s - g * oc))
                slot ^= 1  # the pixel's input slot is released
        if t == 0:
            continue
        ey = t - 1  # expand row t - 1
        for x in range(w):
            wrow = z["squeeze_rows"] if squeeze else 0
            for kind, n, taps in ((Kind.EXPAND1, e1, [(1, 1)]),
                                  (Kind.EXPAND3, e3, [(ty, tx) for ty in range(3)
                                                      for tx in range(3)])):
                for g in range(ceil_div(n, oc)):
                    for ty, tx in taps:
                        for k in range(ks):
                            if kind == Kind.EXPAND3:
                                pad = ((ty == 0 and ey == 0) or (ty == 2 and ey == h - 1)
                                       or (tx == 0 and x == 0) or (tx == 2 and x == w - 1))
                                row = ey if pad else ey + ty - 1
                                first = k == 0 and (ty, tx) == (0, 0)
                                last = k == ks - 1 and (ty, tx) == (2, 2)
                            else:
                                pad, row, first, last = False, ey, k == 0, k == ks - 1
                            word = ((x + tx - 1) * ks + k) & word_mask
                            ops.append((first, last, int(pad), 0, wrow, k & in_mask, slot,
                                        row, word, kind, g * oc, ey, x * ks, n - g * oc))
                            wrow += 1
    return [tuple(int(v) if not isinstance(v, Kind) else v for v in op) for op in ops]


def run_sequencer(p, shape, squeeze, *, input_gap, pop_rate, seed, limit=50_000):
    """Run a Sequencer playing its surroundings: an input arriving with gaps (``input_gap``
    cycles at most between pixels), a group FIFO popped at ``pop_rate`` a cycle, squeeze
    groups written ``WRITE_LATENCY`` cycles after their pop. Checks the credits, the input
    slots and the wait for squeeze rows as it goes; returns the issued operations and the
    cycles it waited for an input pixel and for a credit."""
    h, w, cin, s, e1, e3 = shape
    rng = np.random.default_rng(seed)
    dut = Sequencer(p, credits=CREDITS, pending=CREDITS + WRITE_LATENCY + 1)
    got, waits = [], {"input": 0, "credit": 0}

    async def bench(ctx):
        ctx.set(dut.layer.as_value(), pack_config(p, h=h, w=w, cin=cin, s=s, e1=e1, e3=e3,
                                                  squeeze=squeeze, compute=1))
        for name, value in sizes_of(p, *shape, squeeze).items():
            ctx.set(getattr(dut.sizes, name), value)
        await ctx.tick().repeat(2)  # the loop limits are registered
        ctx.set(dut.go, 1)
        await ctx.tick()
        ctx.set(dut.go, 0)
        fifo, written_at = deque(), {}
        released, ready_at = 0, int(rng.integers(0, input_gap + 1))
        squeeze_groups = written = 0
        freed = was_ready = False
        expanded_rows = set()
        for now in range(limit):
            pixel_ready = released < h * w and now >= ready_at
            ctx.set(dut.pixel_ready, pixel_ready)
            ctx.set(dut.group_freed, freed)
            ctx.set(dut.squeeze_written, written_at.pop(now, False))
            written += ctx.get(dut.squeeze_written)
            if ctx.get(dut.issue.valid):
                op = dut.issue.payload
                values = [ctx.get(op.first), ctx.get(op.last), ctx.get(op.pad),
                          ctx.get(op.squeeze), ctx.get(op.w_addr), ctx.get(op.in_addr.word),
                          ctx.get(op.in_addr.slot), ctx.get(op.row), ctx.get(op.word),
                          ctx.get(op.tag.kind), ctx.get(op.tag.chan), ctx.get(op.tag.row),
                          ctx.get(op.tag.xoff), ctx.get(op.left)]
                got.append(tuple(values))
                kind = values[9]
                if kind == Kind.SQUEEZE and values[0] and values[10] == 0:
                    assert was_ready, "a pixel's squeeze issued before the pixel arrived"
                if kind != Kind.SQUEEZE and values[11] not in expanded_rows:
                    expanded_rows.add(values[11])
                    assert written == squeeze_groups, \
                        f"row {values[11]} expanded with squeeze groups still unwritten"
                if values[1]:  # a group's last beat: its sums enter the FIFO
                    fifo.append(kind)
                    squeeze_groups += kind == Kind.SQUEEZE
                    assert len(fifo) <= CREDITS, "more groups issued than the FIFO holds"
            # the requantizer pops a group now and then; the credit returns a cycle late
            freed = bool(fifo) and rng.random() < pop_rate
            if freed and fifo.popleft() == Kind.SQUEEZE:
                written_at[now + WRITE_LATENCY] = True
            if ctx.get(dut.release):
                assert pixel_ready, "released a slot not read"
                released += 1
                ready_at = now + 1 + int(rng.integers(0, input_gap + 1))
            was_ready = pixel_ready
            waits["input"] += ctx.get(dut.input_wait)
            waits["credit"] += ctx.get(dut.credit_stall)
            if ctx.get(dut.done) and ctx.get(dut.idle) and not fifo:
                break
            await ctx.tick()
        else:
            raise AssertionError(f"no end within {limit} cycles")
        assert released == (h * w if squeeze else 0)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return got, waits


LAYERS = [
    (SMALL, (3, 3, 5, 4, 4, 5), 1),  # partial groups and words everywhere
    (SMALL, (4, 2, 8, 3, 0, 6), 1),  # no expand1x1
    (SMALL, (2, 4, 3, 2, 6, 0), 1),  # no expand3x3
    (SMALL, (3, 2, 5, 4, 2, 3), 0),  # reuse of a retained map: no squeeze, no input
    (SMALL, (1, 1, 1, 1, 1, 1), 1),  # one pixel: every 3x3 tap but the centre is padding
    (SINGLE, (4, 3, 3, 2, 3, 2), 1),  # one lane each way
]


@pytest.mark.parametrize("p, shape, squeeze", LAYERS)
@pytest.mark.parametrize("input_gap, pop_rate", [(0, 1.0), (6, 0.04)],
                         ids=["full-rate", "gaps-and-slow-requantizer"])
def test_issued_operations_follow_the_loop_nest(p, shape, squeeze, input_gap, pop_rate):
    got, waits = run_sequencer(p, shape, squeeze, input_gap=input_gap, pop_rate=pop_rate,
                               seed=sum(shape))
    want = loop_nest(p, *shape, squeeze)
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        assert g == w, f"operation {i}: " + ", ".join(
            f"{f} {a} != {b}" for f, a, b in zip(FIELDS, g, w, strict=True) if a != b)
    if input_gap == 0 and pop_rate == 1:
        # nothing outside holds it up: it never waits for a pixel or a credit
        assert waits == {"input": 0, "credit": 0}
    elif len(want) > 50:
        assert waits["credit"] > 0  # the credits did hold it back
        assert waits["input"] > 0 or not squeeze
