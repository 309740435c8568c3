"""cocotb testbench of ``hw.dsp.registered_product`` as built for an ECP5: the MULT18X18D
instance (with a behavioural model of the block) against the generic registers, cycle by
cycle, and both against Python's product.

Run through ``tests/test_dsp.py``. The model below is ours, written from Lattice's sysDSP
usage guide for just what ``hw.dsp`` uses (input registers A and B and the output register
on CLK0, CE0 high, RST0 low, signed operands); it checks the instance's wiring (operand
extension, bit order, the product's slice), not the silicon.
"""

from __future__ import annotations

import random

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import RisingEdge, Timer

#: operand shapes of the pairs in the design under test: (a bits, a signed, b bits, b signed)
PAIRS = [(9, True, 8, True), (17, False, 17, False), (17, True, 17, False),
         (10, True, 17, False)]


def mult18x18d_model() -> str:
    """Verilog of the MULT18X18D subset that ``hw.dsp`` instantiates."""
    ports = ([f"A{i}" for i in range(18)] + [f"B{i}" for i in range(18)]
             + [f"C{i}" for i in range(18)]
             + ["SIGNEDA", "SIGNEDB", "SOURCEA", "SOURCEB", "CLK0", "CE0", "RST0"])
    outs = [f"P{i}" for i in range(36)]
    a = ", ".join(f"A{i}" for i in reversed(range(18)))
    b = ", ".join(f"B{i}" for i in reversed(range(18)))
    return "\n".join([
        "module MULT18X18D(" + ", ".join(ports + outs) + ");",
        '  parameter REG_INPUTA_CLK = "NONE";',
        '  parameter REG_INPUTB_CLK = "NONE";',
        '  parameter REG_OUTPUT_CLK = "NONE";',
        *[f"  input {p};" for p in ports],
        *[f"  output {p};" for p in outs],
        "  reg signed [17:0] ra, rb;",
        "  reg signed [35:0] rp;",
        "  initial begin",
        '    if (REG_INPUTA_CLK != "CLK0" || REG_INPUTB_CLK != "CLK0"',
        '        || REG_OUTPUT_CLK != "CLK0") begin',
        '      $display("MULT18X18D model: registers on CLK0 only"); $finish;',
        "    end",
        "  end",
        "  always @(posedge CLK0) if (CE0) begin",
        f"    ra <= RST0 ? 18'sd0 : {{{a}}};",
        f"    rb <= RST0 ? 18'sd0 : {{{b}}};",
        "    rp <= RST0 ? 36'sd0 : ((SIGNEDA && SIGNEDB) ? ra * rb : 36'sbx);",
        "  end",
        f"  assign {{{', '.join(reversed(outs))}}} = rp;",
        "endmodule",
    ])


def _value(bits, signed, rng):
    return rng.randrange(-(1 << (bits - 1)), 1 << (bits - 1)) if signed \
        else rng.randrange(0, 1 << bits)


def _read(handle, bits):
    value = int(handle.value)
    return value - (1 << bits) if value >> (bits - 1) else value


@cocotb.test()
async def products_match(dut):
    rng = random.Random(5)
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    dut.rst.value = 0
    history = []
    for cycle in range(400):
        # extremes first, then random operands
        values = []
        for k, (ab, asg, bb, bsg) in enumerate(PAIRS):
            if cycle < 4:
                lo_a, hi_a = (-(1 << (ab - 1)), (1 << (ab - 1)) - 1) if asg else (0, (1 << ab) - 1)
                lo_b, hi_b = (-(1 << (bb - 1)), (1 << (bb - 1)) - 1) if bsg else (0, (1 << bb) - 1)
                a, b = [(lo_a, lo_b), (lo_a, hi_b), (hi_a, lo_b), (hi_a, hi_b)][cycle]
            else:
                a, b = _value(ab, asg, rng), _value(bb, bsg, rng)
            getattr(dut, f"a{k}").value = a & ((1 << ab) - 1)
            getattr(dut, f"b{k}").value = b & ((1 << bb) - 1)
            values.append((a, b))
        history.append(values)
        await RisingEdge(dut.clk)
        await Timer(1, unit="ns")
        if len(history) >= 2:  # two edges: operands registered, then the product
            for k, (ab, _, bb, _) in enumerate(PAIRS):
                a, b = history[-2][k]
                width = ab + bb + 1
                generic = _read(getattr(dut, f"generic{k}"), width)
                primitive = _read(getattr(dut, f"primitive{k}"), width)
                assert generic == a * b, (cycle, k, a, b, generic)
                assert primitive == a * b, (cycle, k, a, b, primitive)
