"""``hw.dsp.registered_product``: the ECP5 MULT18X18D form against the generic one."""

from amaranth import Module, signed, unsigned
from amaranth.back import verilog
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out
from amaranth_boards.ulx3s import ULX3S_85F_Platform

from hw.dsp import registered_product
from sim.cocotb_runner import run_cocotb
from sim.tb_dsp import PAIRS, mult18x18d_model


class Products(wiring.Component):
    """Each operand pair of ``PAIRS`` multiplied twice: by the primitive and generically."""

    def __init__(self):
        members = {}
        for k, (ab, asg, bb, bsg) in enumerate(PAIRS):
            members[f"a{k}"] = In(signed(ab) if asg else unsigned(ab))
            members[f"b{k}"] = In(signed(bb) if bsg else unsigned(bb))
            members[f"generic{k}"] = Out(signed(ab + bb + 1))
            members[f"primitive{k}"] = Out(signed(ab + bb + 1))
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        for k in range(len(PAIRS)):
            a, b = getattr(self, f"a{k}"), getattr(self, f"b{k}")
            m.d.comb += [
                getattr(self, f"generic{k}").eq(registered_product(m, platform, a, b, f"g{k}")),
                getattr(self, f"primitive{k}").eq(
                    registered_product(m, platform, a, b, f"p{k}", primitive=True)),
            ]
        return m


def products_verilog() -> str:
    return verilog.convert(Products(), name="products", platform=ULX3S_85F_Platform())


def test_primitive_instantiated_with_its_registers():
    text = products_verilog()
    assert text.count("MULT18X18D #(") == len(PAIRS)
    for param in ("REG_INPUTA_CLK", "REG_INPUTB_CLK", "REG_OUTPUT_CLK"):
        assert text.count(f'.{param}("CLK0")') == len(PAIRS)


def test_primitive_matches_generic_and_python(request):
    run_cocotb(name="dsp", verilog=products_verilog() + "\n" + mult18x18d_model() + "\n",
               toplevel="products", test_module="sim.tb_dsp",
               sim=request.config.getoption("--sim"))
