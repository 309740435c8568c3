"""Registered multipliers: ``a * b`` two cycles later, operands and product registered.

Generic Amaranth registers, which Xilinx synthesis packs into the DSP48E1's A/B and M/P
registers; on an ECP5 platform with ``primitive=True``, a MULT18X18D instance with its own
input and output registers enabled. yosys maps an ECP5 multiplier combinationally, and then
the routes into and out of the DSP row plus the block's 3.9 ns made every multiplier a
~10 ns path; nextpnr times the registered block as MULT18X18D_REGS_ALL. Simulation (no
platform) always runs the generic form, cycle for cycle the same.
"""

from __future__ import annotations

from amaranth import ClockSignal, Const, Instance, Module, Signal, signed
from amaranth.vendor import LatticePlatform

#: widest operand of one MULT18X18D: 18 bits signed (17 unsigned)
MULT_WIDTH = 18


def _is_ecp5(platform) -> bool:
    return isinstance(platform, LatticePlatform) and platform.family == "ecp5"


def registered_product(m: Module, platform, a, b, name: str, *, primitive: bool = False):
    """``a * b`` (each signed or unsigned by its shape) two cycles after ``a`` and ``b``.

    With ``primitive`` on an ECP5 platform, both operands must fit a MULT18X18D port (18 bits
    signed, 17 unsigned).
    """
    width = len(a) + len(b) + 1
    product = Signal(signed(width), name=name, reset_less=True)
    if primitive and _is_ecp5(platform):
        ports = {}
        for port, operand in (("A", a), ("B", b)):
            extended = Signal(signed(MULT_WIDTH), name=f"{name}_{port.lower()}")
            assert len(operand) + (not operand.shape().signed) <= MULT_WIDTH, operand.shape()
            m.d.comb += extended.eq(operand)  # sign or zero extension: always signed
            ports.update({f"i_{port}{j}": extended[j] for j in range(MULT_WIDTH)})
        p = Signal(2 * MULT_WIDTH, name=f"{name}_p")
        ports.update({f"o_P{j}": p[j] for j in range(2 * MULT_WIDTH)})
        ports.update({f"i_C{j}": Const(0) for j in range(MULT_WIDTH)})
        m.submodules[f"{name}_dsp"] = Instance(
            "MULT18X18D",
            p_REG_INPUTA_CLK="CLK0", p_REG_INPUTB_CLK="CLK0", p_REG_OUTPUT_CLK="CLK0",
            i_CLK0=ClockSignal(), i_CE0=Const(1), i_RST0=Const(0),
            i_SIGNEDA=Const(1), i_SIGNEDB=Const(1), i_SOURCEA=Const(0), i_SOURCEB=Const(0),
            **ports)
        m.d.comb += product.eq(p[:width].as_signed())
    else:
        ra = Signal.like(a, name=f"{name}_ra", reset_less=True)
        rb = Signal.like(b, name=f"{name}_rb", reset_less=True)
        m.d.sync += [ra.eq(a), rb.eq(b), product.eq(ra * rb)]
    return product
