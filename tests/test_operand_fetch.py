"""Amaranth-simulator tests of the operand fetch: each issued operation reaches the MAC
array four cycles later with the weight row, the input word (squeeze) or the squeeze-buffer
word (expand) it addressed, its zero point, and its group's channel count."""

from __future__ import annotations

import numpy as np
from amaranth.sim import Simulator

from hw.layouts import Kind
from hw.line_buffer import LineBuffer
from hw.operand_fetch import OperandFetch
from spec.params import EngineParams

P = EngineParams(bits=8, ic_lanes=2, oc_lanes=3, max_h=6, max_w=5, max_cin=8,
                 max_squeeze=4, max_e1=6, max_e3=6, weight_depth=48, squeeze_depth=80)
#: cycles from an operation on ``issue`` to its operands on ``operands``
LATENCY = 4


def test_operands_meet_their_operation():
    rng = np.random.default_rng(3)
    dut = OperandFetch(P)
    ic, bits = P.ic_lanes, P.bits
    lo, hi = P.spec.act_min, P.spec.act_max + 1
    weights = rng.integers(0, 1 << P.weight_row_bits, P.weight_depth, dtype=np.uint64)
    inputs = rng.integers(lo, hi, (2, 4, ic))  # slot, word, lane
    squeeze_map = rng.integers(lo, hi, (P.max_h + 1, P.squeeze_depth + 1, ic))
    z_in, z_sq = -7, 11
    ops = []
    for _ in range(300):
        squeeze = int(rng.integers(0, 2))
        ops.append(dict(valid=int(rng.random() < 0.8), first=int(rng.integers(0, 2)),
                        last=int(rng.integers(0, 2)), pad=int(rng.integers(0, 2)),
                        squeeze=squeeze, w_addr=int(rng.integers(0, P.weight_depth)),
                        slot=int(rng.integers(0, 2)), in_word=int(rng.integers(0, 4)),
                        row=int(rng.integers(0, P.max_h + 1)),
                        word=int(rng.integers(0, P.squeeze_depth + 1)),
                        kind=Kind.SQUEEZE if squeeze else Kind(int(rng.integers(1, 3))),
                        chan=int(rng.integers(0, 8)), tag_row=int(rng.integers(0, 6)),
                        xoff=int(rng.integers(0, 70)), left=int(rng.integers(1, 7))))
    got, channels = [], []

    async def bench(ctx):
        ctx.set(dut.z_in, z_in)
        ctx.set(dut.z_sq, z_sq)
        lb_requests = [(0, 0)] * LineBuffer.read_latency
        w_addr, in_addr = 0, (0, 0)
        for cycle in range(len(ops) + LATENCY + 2):
            op = ops[cycle] if cycle < len(ops) else dict(ops[0], valid=0)
            # the memories: weight and input reads a cycle after their (registered) address,
            # the line buffer read_latency after its request
            ctx.set(dut.weight_read.data, int(weights[w_addr]))
            ctx.set(dut.input_read.data, [int(v) for v in inputs[in_addr[0], in_addr[1]]])
            row, word = lb_requests.pop(0)
            ctx.set(dut.lb_data, [int(v) for v in squeeze_map[row, word]])
            # the issued operation (the sequencer's register)
            ctx.set(dut.issue.valid, op["valid"])
            payload = dut.issue.payload
            for name in ("first", "last", "pad", "squeeze", "w_addr", "row", "word", "left"):
                ctx.set(getattr(payload, name), op[name])
            ctx.set(payload.in_addr.slot, op["slot"])
            ctx.set(payload.in_addr.word, op["in_word"])
            for name, key in (("kind", "kind"), ("chan", "chan"), ("row", "tag_row"),
                              ("xoff", "xoff")):
                ctx.set(getattr(payload.tag, name), op[key])
            lb_requests.append((ctx.get(dut.lb_row), ctx.get(dut.lb_word)))
            w_addr = ctx.get(dut.weight_read.addr)
            in_addr = (ctx.get(dut.input_read.addr.slot), ctx.get(dut.input_read.addr.word))
            out = dut.operands.payload
            if ctx.get(dut.operands.valid):
                got.append((cycle, ctx.get(out.act.as_value()), ctx.get(out.weights.as_value()),
                            ctx.get(out.z), ctx.get(out.pad), ctx.get(out.first),
                            ctx.get(out.last), ctx.get(out.tag)))
            channels.append(ctx.get(dut.group_channels))
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()

    def word_bits(lanes):
        return sum((int(v) & ((1 << bits) - 1)) << (bits * i) for i, v in enumerate(lanes))

    tag_layout = dut.issue.payload.tag.shape()
    want = []
    for cycle, op in enumerate(ops):
        if not op["valid"]:
            continue
        act = (inputs[op["slot"], op["in_word"]] if op["squeeze"]
               else squeeze_map[op["row"], op["word"]])
        count = min(op["left"], P.oc_lanes)
        tag = tag_layout.const({"kind": op["kind"], "chan": op["chan"], "count": count,
                                "row": op["tag_row"], "xoff": op["xoff"]}).as_value().value
        want.append((cycle + LATENCY, word_bits(act), int(weights[op["w_addr"]]),
                     z_in if op["squeeze"] else z_sq, op["pad"], op["first"], op["last"], tag))
    assert got == want
    # the compute counter's view: a group's channels, two cycles after its last beat issued
    for cycle, op in enumerate(ops):
        expect = min(op["left"], P.oc_lanes) if op["valid"] and op["last"] else 0
        assert channels[cycle + 2] == expect, cycle
