"""What ``hw.dram`` hands LiteDRAM's generator for the board variants, in Migen (imported only
while generating: LiteX and Migen are needed for nothing else).

``ArtyCascadeCRG``: the Arty's controller clocks. LiteDRAM's own ``LiteDRAMS7DDRPHYCRG`` makes
sys, sys4x, its 90-degree copy and the 200 MHz IDELAY reference with one PLLE2 from the
100 MHz oscillator; no VCO gives 96 MHz (the clock that divides 12 Mbaud exactly, the board's)
beside 384 and 200 MHz. Two cascaded CMTs do (LiteX's own ``S7MMCM`` and ``S7PLL`` find the
settings; speed grade -1):

- MMCME2: 100 MHz x 12 = 1200 MHz VCO (600-1200), CLKOUT0 / 12.5 (fractional, CLKOUT0 only)
  = 96 MHz into a BUFG, CLKOUT1 / 6 = 200 MHz for IDELAYCTRL;
- PLLE2 from that 96 MHz: x 16 = 1536 MHz VCO (800-1600), / 16 = 96 MHz (sys), / 4 = 384 MHz
  (sys4x) and / 4 at 90 degrees (sys4x_dqs), each on a BUFG.

``pll_locked`` is both locked; sys is held in reset (``AsyncResetSynchronizer``) until it is.
The design's one clock domain is sys: the core's ``user_clk``/``user_rst``.

``TrellisTristate``: LiteX's ECP5 Trellis override of ``Tristate`` connects ``TRELLIS_IO``'s
pad pin ``B`` as an instance *input*, so Migen declares the pad (``sdram_dq``) an ``input``
of the generated core although the core drives it. This one connects ``B`` as the inout it
is: the core's Verilog then declares ``inout`` ports, as the board top wires them.
"""

from __future__ import annotations

import copy

from litex.gen import LiteXModule
from litex.soc.cores.clock import S7IDELAYCTRL, S7MMCM, S7PLL
from migen import ClockDomain, Instance, Module, Signal
from migen.fhdl.bitcontainer import value_bits_sign
from migen.genlib.resetsync import AsyncResetSynchronizer


class ArtyCascadeCRG(LiteXModule):
    def __init__(self, platform, core_config):
        assert core_config["memtype"] == "DDR3"
        self.rst = Signal()
        self.cd_sys = ClockDomain()
        self.cd_sys4x = ClockDomain(reset_less=True)
        self.cd_sys4x_dqs = ClockDomain(reset_less=True)
        self.cd_iodelay = ClockDomain()
        self.cd_pll_in = ClockDomain(reset_less=True)

        clk = platform.request("clk")
        rst = platform.request("rst")
        speed = core_config["speedgrade"]
        f_sys = core_config["sys_clk_freq"]

        # exact frequencies (margin 0): 96 MHz must divide 12 Mbaud, not come within 1%
        self.mmcm = mmcm = S7MMCM(speedgrade=speed)
        self.comb += mmcm.reset.eq(rst | self.rst)
        mmcm.register_clkin(clk, core_config["input_clk_freq"])
        mmcm.create_clkout(self.cd_pll_in, f_sys, margin=0, with_reset=False)
        mmcm.create_clkout(self.cd_iodelay, core_config["iodelay_clk_freq"], margin=0)

        self.pll = pll = S7PLL(speedgrade=speed)
        self.comb += pll.reset.eq(~mmcm.locked | rst | self.rst)
        pll.register_clkin(self.cd_pll_in.clk, f_sys)
        pll.create_clkout(self.cd_sys, f_sys, margin=0, with_reset=False)
        pll.create_clkout(self.cd_sys4x, 4 * f_sys, margin=0, with_reset=False)
        pll.create_clkout(self.cd_sys4x_dqs, 4 * f_sys, phase=90, margin=0, with_reset=False)

        locked = Signal()
        self.comb += locked.eq(mmcm.locked & pll.locked)
        self.specials += AsyncResetSynchronizer(self.cd_sys, ~locked)
        self.comb += platform.request("pll_locked").eq(locked)

        self.idelayctrl = S7IDELAYCTRL(self.cd_iodelay)


class _TrellisTristateImpl(Module):
    def __init__(self, io, o, oe, i):
        nbits, _ = value_bits_sign(io)
        for bit in range(nbits):
            self.specials += Instance(
                "TRELLIS_IO", p_DIR="BIDIR",
                io_B=io[bit] if nbits > 1 else io,
                i_I=o[bit] if nbits > 1 else o,
                o_O=i[bit] if nbits > 1 else i,
                i_T=~oe)


class TrellisTristate:
    @staticmethod
    def lower(dr):
        return _TrellisTristateImpl(dr.target, dr.o, dr.oe, dr.i)


class RegisteredGENSDRPHY(Module):
    """LiteDRAM's ``GENSDRPHY`` behind a register on every DFI signal into it, for the ULX3S.

    The PHY puts the DFI command straight into its output registers; in front of them is
    LiteDRAM's DFI injector (the multiplexer between the controller and the host's bring-up
    commands), and that path did not meet 100 MHz on the ECP5. The register delays the
    commands, the write data and the read enables alike, so writes keep their timing and
    reads take one cycle more (``read_latency`` + 1, which the controller reads from these
    settings). The registered command outputs start as a NOP (the active-low ones high).
    """

    def __init__(self, pads, sys_clk_freq=100e6, cl=None):
        from litedram.phy.dfi import Interface
        from litedram.phy.gensdrphy import GENSDRPHY

        self.submodules.phy = phy = GENSDRPHY(pads, sys_clk_freq, cl)
        self.settings = copy.copy(phy.settings)
        self.settings.read_latency = phy.settings.read_latency + 1
        inner = phy.dfi.p0
        self.dfi = dfi = Interface(len(inner.address), len(inner.bank), len(inner.cs_n),
                                   len(inner.wrdata))
        outer = dfi.p0
        for name in ("address", "bank", "cs_n", "cas_n", "ras_n", "we_n", "cke", "odt",
                     "reset_n", "wrdata", "wrdata_en", "wrdata_mask", "rddata_en"):
            src = getattr(outer, name)
            reg = Signal(len(src), name=f"dfi_{name}",
                         reset=(1 << len(src)) - 1 if name.endswith("_n") else 0)
            self.sync += reg.eq(src)
            self.comb += getattr(inner, name).eq(reg)
        self.comb += [outer.rddata.eq(inner.rddata), outer.rddata_valid.eq(inner.rddata_valid)]
