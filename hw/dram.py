"""The LiteDRAM controller, generated with LiteDRAM's own generator (``litedram.gen``) from
PyPI, cached by its configuration, and the Amaranth side of it.

``generate(config, sim=..., clock_hz=...)`` returns a :class:`GeneratedCore`: the Verilog of
a standalone ``litedram_core`` (no CPU: its control bus is a Wishbone port, ``wb_ctrl``, and
three native user ports: the link bridge's and the DMA's), and the
:class:`~spec.dram.DramRecord` of what the host needs to bring it up. ``sim=True`` generates
the same controller with LiteDRAM's ``SDRAMPHYModel`` in place of the PHY, for the simulated
board. Generation takes seconds, in a Python process of its own (so that the Verilog depends
on the configuration alone); the result is kept under ``build/dram/`` by a hash of
everything that goes into it.

    python -m hw.dram --record     # regenerate every variant, write spec/dram_data/*.json
    python -m hw.dram --variant arty_ddr3_sim   # generate one, print its Verilog's path
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass
from importlib.metadata import version
from pathlib import Path

from amaranth import ClockSignal, Instance, Module
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from boards import BOARDS
from spec.cache import build_lock, publish, scratch_dir
from spec.cli import ArgumentParser
from spec.dram import (
    CONFIGS,
    DATA,
    VARIANTS,
    DramConfig,
    DramRecord,
    InitCommand,
    variant_name,
)

from .memory_bridge import WISHBONE_SIGNATURE, native_port_signature  # noqa: I001
from .stream_fifo import StreamSlice

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "build" / "dram"
#: Bumped when what this module asks of the generator changes (part of the cache key).
GENERATOR_REVISION = 5
#: The controller's native user ports, arbitrated by its crossbar: the link's memory bridge,
#: the DMA reader and the DMA writer.
USER_PORTS = ("bridge", "dma_rd", "dma_wr")
#: Bumped when what this module asks of the generator for the board variants alone changes
#: (their clocking, pin cells, the ULX3S PHY's register): part of their cache key only, so
#: that the simulated board's controllers, and the Verilator builds made of them, stay
#: cached.
BOARD_GENERATOR_REVISION = 2


def variant_clock(config: DramConfig) -> int:
    """The clock a variant's controller is generated for: its board's memory clock
    (``boards``: ``dram_clock_hz``, or the system clock where the controller shares the
    design's one clock domain), on the board and in the simulated board alike. On the Arty
    the controller makes that clock itself (``hw.litedram_crg.ArtyCascadeCRG``)."""
    clocks = {b.dram_clock_hz or b.clock_hz for b in BOARDS.values() if b.dram == config}
    if len(clocks) != 1:
        raise ValueError(f"{config.name}: the boards with this memory disagree on their "
                         f"clock ({sorted(clocks)}) or there are none")
    return clocks.pop()


class DramGenerationError(RuntimeError):
    """LiteDRAM's generator failed, or is not installed."""


@dataclass(frozen=True)
class GeneratedCore:
    variant: str
    directory: Path
    verilog: Path  #: ``litedram_core.v``
    record: DramRecord
    config: DramConfig
    sim: bool

    def verilog_text(self) -> str:
        return self.verilog.read_text()

    @property
    def timing_xdc(self) -> Path | None:
        """The Xilinx variant's design constraints (``litedram_core_timing.xdc``)."""
        path = self.verilog.parent / "litedram_core_timing.xdc"
        return path if path.exists() else None


def _core_config(config: DramConfig, clock_hz: int) -> dict:
    """The generator's configuration (what ``litedram_gen`` reads from YAML), as Python."""
    from litedram import modules, phy

    cfg = {
        "speedgrade": -1, "cpu": None, "memtype": config.memtype, "uart": "rs232",
        "sdram_module": getattr(modules, config.module), "sdram_module_nb": config.module_nb,
        "sdram_rank_nb": 1, "sdram_phy": getattr(phy, config.phy),
        "input_clk_freq": 100e6, "sys_clk_freq": float(clock_hz), "iodelay_clk_freq": 200e6,
        "cmd_buffer_depth": 16,
        "user_ports": {name: {"type": "native"} for name in USER_PORTS},
    }
    if config.memtype == "DDR3":
        cfg.update(rtt_nom=config.rtt_nom, rtt_wr=config.rtt_wr, ron=config.ron,
                   cmd_latency=0)
    if config.phy == "GENSDRPHY":
        cfg["device"] = "LFE5U-85F-6BG381C"
    return cfg


def _key(config: DramConfig, sim: bool, clock_hz: int) -> str:
    digest = hashlib.sha256(json.dumps(
        [asdict(config), sim, clock_hz, GENERATOR_REVISION,
         *(() if sim else (BOARD_GENERATOR_REVISION,)), version("litedram"),
         version("litex"), version("migen")], sort_keys=True).encode())
    return digest.hexdigest()[:16]


class _VerilogOnly:
    """A LiteX toolchain that writes the design's Verilog and nothing else: the simulation
    platform's own would go on to set up LiteX's simulator (and need its tap device)."""

    def build(self, platform, fragment, build_dir, build_name, **kwargs):
        os.makedirs(build_dir, exist_ok=True)
        platform.finalize(fragment)
        out = platform.get_verilog(fragment, name=build_name,
                                   regular_comb=kwargs.get("regular_comb", False))
        out.write(os.path.join(build_dir, f"{build_name}.v"))
        return out.ns


def _generate(config: DramConfig, sim: bool, clock_hz: int, out: Path) -> DramRecord:
    import logging

    from litedram import gen
    from litedram.init import get_sdram_phy_init_sequence
    from litex.build.lattice import LatticePlatform
    from litex.build.sim import SimPlatform
    from litex.build.xilinx import XilinxPlatform
    from litex.soc.integration.builder import Builder

    logging.getLogger("LiteXSoC").setLevel(logging.WARNING)
    for name in ("S7MMCM", "S7PLL"):
        logging.getLogger(name).setLevel(logging.WARNING)
    cfg = _core_config(config, clock_hz)
    build_kw = {}
    crg = gen.LiteDRAMS7DDRPHYCRG
    sdr_phy = gen.litedram_phys.GENSDRPHY
    if sim:
        platform = SimPlatform("", io=[])
        platform.toolchain = _VerilogOnly()
    elif config.phy == "GENSDRPHY":
        from migen.fhdl.specials import Tristate

        from .litedram_crg import RegisteredGENSDRPHY, TrellisTristate

        platform = LatticePlatform(cfg["device"], io=[], toolchain="trellis")
        build_kw["special_overrides"] = {Tristate: TrellisTristate}
        # the PHY behind a register (100 MHz on the ECP5): LiteDRAMCore picks its code
        # path by the PHY's class, so it is handed over under GENSDRPHY's name
        sdr_phy = cfg["sdram_phy"] = RegisteredGENSDRPHY
    else:
        from .litedram_crg import ArtyCascadeCRG

        platform = XilinxPlatform("", io=[], toolchain="vivado")
        crg = ArtyCascadeCRG
    # LiteDRAMCore picks its CRG by PHY from this module-level name: ours for the Arty
    saved, gen.LiteDRAMS7DDRPHYCRG = gen.LiteDRAMS7DDRPHYCRG, crg
    saved_phy, gen.litedram_phys.GENSDRPHY = gen.litedram_phys.GENSDRPHY, sdr_phy
    try:
        soc = gen.LiteDRAMCore(platform, cfg)
        builder = Builder(soc, output_dir=str(out), compile_gateware=False,
                          compile_software=False)
        builder.build(build_name="litedram_core", regular_comb=False, **build_kw)
    finally:
        gen.LiteDRAMS7DDRPHYCRG = saved
        gen.litedram_phys.GENSDRPHY = saved_phy
    xdc = out / "gateware" / "litedram_core.xdc"
    if xdc.exists():
        # the generated XDC places the core's ports on pin "X" (the generator has no board);
        # the board top places them. Its design constraints (false paths of the reset and
        # clock-domain synchronizers) are what the board's build needs of it.
        text = xdc.read_text()
        design = text[text.index("# Design constraints"):]
        (out / "gateware" / "litedram_core_timing.xdc").write_text(
            "# LiteDRAM's design constraints of litedram_core (hw.dram)\n" + design)
    settings = soc.sdram.controller.settings
    sequence, _ = get_sdram_phy_init_sequence(settings.phy, settings.timing)
    constants = {"dfii_control_sel": 0x01, "dfii_control_cke": 0x02, "dfii_control_odt": 0x04,
                 "dfii_control_reset_n": 0x08, "dfii_command_cs": 0x01,
                 "dfii_command_we": 0x02, "dfii_command_cas": 0x04, "dfii_command_ras": 0x08,
                 "dfii_command_wrdata": 0x10, "dfii_command_rddata": 0x20}
    init = []
    for comment, a, ba, cmd, delay in sequence:
        parts = [p.strip().lower() for p in str(cmd).split("|") if p.strip()]
        control = parts[0].startswith("dfii_control")
        if any(p.startswith("dfii_control") != control for p in parts):
            raise DramGenerationError(f"init step {comment!r} mixes control and command bits")
        bits = 0
        for part in parts:
            bits |= constants[part]
        init.append(InitCommand(comment=comment, address=a, bank=ba, control=control,
                                bits=bits, delay=int(delay)))
    csr = {}
    for line in (out / "csr.csv").read_text().splitlines():
        fields = line.split(",")
        if fields[0] == "csr_register":
            csr[fields[1]] = int(fields[2], 16)
    p = settings.phy

    def plain(value):  # a setting that is a migen Signal: its reset value
        return int(getattr(getattr(value, "reset", None), "value", value))

    phy = {"rdphase": plain(p.rdphase), "wrphase": plain(p.wrphase),
           "databits": p.databits, "dfi_databits": p.dfi_databits, "modules": p.strobes,
           "delays": p.delays, "bitslips": p.bitslips, "read_leveling": bool(p.read_leveling)}
    return DramRecord(variant=variant_name(config, sim), csr=csr, constants=constants,
                      init=init, phases=p.nphases, litedram=version("litedram"),
                      clock_hz=clock_hz, phy=phy)


#: :func:`_generate_child`'s exit status when LiteDRAM cannot be imported.
_NOT_INSTALLED = 3


def _generate_in_fresh_process(config: DramConfig, sim: bool, clock_hz: int, out: Path, *,
                               log: Path) -> None:
    """:func:`_generate` into ``out`` (its ``record.json`` too), in a new Python process.

    The Verilog must be a function of the configuration alone: migen numbers every object
    it makes from one counter per process and orders statements of its output by that
    number, so a controller generated after others in the same process (the Arty's and then
    the ULX3S's in one test run) came out with its always blocks in another order. The same
    logic, but another netlist for nextpnr: one such order routed at 100.3 MHz where the
    core generated alone gives 109.2, and CI's build with the core a test run had cached did
    not finish in its time. In a new interpreter the Verilog is the same every time (its
    comments aside: a date, and a hierarchy listed in no fixed order). A failure is one
    line; LiteX's output is kept in ``log``."""
    request = json.dumps({"config": asdict(config), "sim": sim, "clock_hz": clock_hz,
                          "out": str(out)})
    proc = subprocess.run(
        [sys.executable, "-c", "import hw.dram; hw.dram._generate_child()"], input=request,
        cwd=ROOT, capture_output=True, text=True)
    if proc.returncode == 0:
        log.unlink(missing_ok=True)
        return
    log.write_text(proc.stdout + proc.stderr)
    lines = proc.stderr.strip().splitlines() or ["no output"]
    if proc.returncode == _NOT_INSTALLED:
        raise DramGenerationError(lines[-1])
    raise DramGenerationError(f"LiteDRAM's generator failed for {variant_name(config, sim)}: "
                              f"{lines[-1]} (log: {log})")


def _generate_child() -> None:
    """The new process of :func:`_generate_in_fresh_process`: its request on stdin."""
    req = json.loads(sys.stdin.read())
    out = Path(req["out"])
    try:
        rec = _generate(DramConfig(**req["config"]), req["sim"], req["clock_hz"], out)
    except ImportError as exc:
        print(f"LiteDRAM is not installed ({exc}): run the README's setup (make setup)",
              file=sys.stderr)
        sys.exit(_NOT_INSTALLED)
    (out / "record.json").write_text(rec.to_json())


def generate(config: DramConfig, *, sim: bool, clock_hz: int | None = None,
             root: Path = BUILD) -> GeneratedCore:
    """The generated controller for ``config`` (cached; safe for concurrent callers)."""
    name = variant_name(config, sim)
    clock_hz = clock_hz or variant_clock(config)
    target = Path(root) / f"{name}_{_key(config, sim, clock_hz)}"
    verilog = target / "gateware" / "litedram_core.v"

    def result():
        rec = DramRecord.from_json((target / "record.json").read_text())
        return GeneratedCore(name, target, verilog, rec, config, sim)

    if (target / "record.json").exists():
        return result()
    with build_lock(target):
        if (target / "record.json").exists():
            return result()
        work = scratch_dir(target)
        try:
            _generate_in_fresh_process(config, sim, clock_hz, work,
                                       log=target.parent / f"{target.name}.log")
            publish(work, target)
        finally:
            shutil.rmtree(work, ignore_errors=True)  # gone already when published
    return result()


#: The core's memory pins by the board resource's subsignal (amaranth-boards' ``sdram`` and
#: ``ddr3`` resources): core port name, resource subsignal. Pins whose name ends in ``_n``
#: are active low in the core and must be ``PinsN`` in the resource (checked).
_PADS = {
    "SDR": [("sdram_a", "a"), ("sdram_ba", "ba"), ("sdram_ras_n", "ras"),
            ("sdram_cas_n", "cas"), ("sdram_we_n", "we"), ("sdram_cs_n", "cs"),
            ("sdram_cke", "clk_en"), ("sdram_dm", "dqm"), ("sdram_dq", "dq")],
    "DDR3": [("ddram_a", "a"), ("ddram_ba", "ba"), ("ddram_ras_n", "ras"),
             ("ddram_cas_n", "cas"), ("ddram_we_n", "we"), ("ddram_cs_n", "cs"),
             ("ddram_cke", "clk_en"), ("ddram_odt", "odt"), ("ddram_reset_n", "rst"),
             ("ddram_dm", "dm"), ("ddram_dq", "dq"), ("ddram_dqs", "dqs"),
             ("ddram_clk", "clk")],
}
#: The core's pins it drives through its own bidirectional cells.
_INOUT = {"sdram_dq", "ddram_dq", "ddram_dqs"}


def _pad_connections(memtype: str, pads) -> dict:
    """``Instance`` keyword arguments connecting the core's memory pins to ``pads`` (a
    board resource requested with ``dir="-"``: the core has its own pin cells)."""
    conns = {}
    for core_name, sub in _PADS[memtype]:
        port = getattr(pads, sub)
        kind = "io" if core_name in _INOUT else "o"
        if hasattr(port, "p"):  # a differential pair: the core has the _p and _n pins
            conns[f"{kind}_{core_name}_p"] = port.p
            conns[f"{kind}_{core_name}_n"] = port.n
            continue
        low = core_name.endswith("_n")
        if any(bool(x) != low for x in port.invert):
            raise ValueError(f"{core_name}: the board's {sub!r} pins are "
                             f"{'not ' if low else ''}active low")
        conns[f"{kind}_{core_name}"] = port.io
    return conns


class ReadDataRegister(wiring.Component):
    """A register on a native port's read data, from the controller (``i``) to the design
    (``o``). LiteDRAM's crossbar pushes read data whether or not the port is ready (it
    never looks at ``rdata.ready``), so this is a plain pipeline register: one cycle of
    latency; the design must take every word it asked for, as without it."""

    def __init__(self, bits: int):
        super().__init__({"i": In(stream.Signature(bits)), "o": Out(stream.Signature(bits))})

    def elaborate(self, platform):
        m = Module()
        m.d.comb += self.i.ready.eq(self.o.ready)
        m.d.sync += [self.o.valid.eq(self.i.valid), self.o.payload.eq(self.i.payload)]
        return m


class LiteDRAM(wiring.Component):
    """The generated ``litedram_core`` as an Amaranth component (an ``Instance``; the Verilog
    goes into the build beside the design's). ``port_NAME``: its native user ports
    (``USER_PORTS``); ``bus``: its control bus; ``init_done``/``init_error``: what the host
    wrote to its ``ddrctrl`` registers after bringing it up (the user ports are blocked
    until then).

    The simulation variant runs on the design's ``sync`` clock, the PHY model inside. A
    board variant takes ``pads`` (the memory's board resource, requested with ``dir="-"``)
    and ``clk``/``rst`` (the ULX3S core: the system clock it runs on; the Arty core: the
    oscillator its CRG makes its clocks from), and gives ``user_clk``/``user_rst``, the
    clock and reset its ports are in, and on the Arty ``pll_locked``. The SDR SDRAM's clock
    pin is the board top's (``hw.top``).
    """

    def __init__(self, core: GeneratedCore, pads=None):
        if core.sim != (pads is None):
            raise ValueError(f"{core.variant}: " + ("a simulated controller has no pins"
                                                    if core.sim else
                                                    "a board's controller needs its pins"))
        self.core = core
        self._pads = pads
        c = core.config
        members = {
            **{f"port_{name}": In(native_port_signature(c.addr_bits, c.port_bits))
               for name in USER_PORTS},
            "bus": In(WISHBONE_SIGNATURE),
            "init_done": Out(1), "init_error": Out(1),
        }
        if not core.sim:
            members.update(clk=In(1), rst=In(1), user_clk=Out(1), user_rst=Out(1))
            if c.memtype == "DDR3":
                members["pll_locked"] = Out(1)
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        b = self.bus
        ports = {}
        c = self.core.config
        for name in USER_PORTS:
            # each port through a register slice on its commands and a register on its read
            # data. The command slice (``hw.stream_fifo.StreamSlice``) cuts the
            # combinational loop through LiteDRAM's crossbar (its ``cmd.ready`` depends on
            # the port's ``cmd.valid`` and address) into register-to-register paths, and
            # takes nothing while the controller blocks its ports (``init_done`` and not
            # ``init_error``): a command the controller would not take is not taken here
            # either, so no stale command waits in the slice for the controller to come up.
            # The write data goes straight to the controller, which takes a word when it
            # asks for it without looking at valid.
            outer = getattr(self, f"port_{name}")
            p = native_port_signature(c.addr_bits, c.port_bits).flip().create(
                path=(f"{name}_inner",))
            m.submodules[f"{name}_cmd_slice"] = cmd_slice = StreamSlice(outer.cmd.payload.shape())
            m.submodules[f"{name}_rdata_reg"] = rdata_reg = ReadDataRegister(c.port_bits)
            wiring.connect(m, wiring.flipped(outer.cmd), cmd_slice.i)
            m.d.comb += [p.cmd.valid.eq(cmd_slice.o.valid),
                         p.cmd.payload.eq(cmd_slice.o.payload),
                         cmd_slice.o.ready.eq(p.cmd.ready),
                         cmd_slice.enable.eq(self.init_done & ~self.init_error)]
            wiring.connect(m, wiring.flipped(outer.wdata), p.wdata)
            wiring.connect(m, p.rdata, rdata_reg.i)
            wiring.connect(m, rdata_reg.o, wiring.flipped(outer.rdata))
            u = f"user_port_{name}_"
            ports.update({
                f"i_{u}cmd_valid": p.cmd.valid, f"o_{u}cmd_ready": p.cmd.ready,
                f"i_{u}cmd_we": p.cmd.payload.we, f"i_{u}cmd_addr": p.cmd.payload.addr,
                f"i_{u}wdata_valid": p.wdata.valid, f"o_{u}wdata_ready": p.wdata.ready,
                f"i_{u}wdata_data": p.wdata.payload.data, f"i_{u}wdata_we": p.wdata.payload.we,
                f"o_{u}rdata_valid": p.rdata.valid, f"i_{u}rdata_ready": p.rdata.ready,
                f"o_{u}rdata_data": p.rdata.payload})
        if self.core.sim:
            ports.update(i_clk=ClockSignal(), i_sim_trace=0)
        else:
            ports.update(i_clk=self.clk, i_rst=self.rst, o_user_clk=self.user_clk,
                         o_user_rst=self.user_rst,
                         **_pad_connections(self.core.config.memtype, self._pads))
            if self.core.config.memtype == "DDR3":
                ports["o_pll_locked"] = self.pll_locked
        m.submodules.litedram_core = Instance(
            "litedram_core",
            o_init_done=self.init_done, o_init_error=self.init_error,
            i_wb_ctrl_adr=b.adr, i_wb_ctrl_dat_w=b.dat_w, o_wb_ctrl_dat_r=b.dat_r,
            i_wb_ctrl_sel=b.sel, i_wb_ctrl_cyc=b.cyc, i_wb_ctrl_stb=b.stb, i_wb_ctrl_we=b.we,
            o_wb_ctrl_ack=b.ack, o_wb_ctrl_err=b.err, i_wb_ctrl_cti=0, i_wb_ctrl_bte=0,
            **ports)
        return m


def generate_variant(variant: str) -> GeneratedCore:
    if variant not in VARIANTS[1:]:
        raise ValueError(f"unknown memory variant {variant!r}; choose from "
                         f"{', '.join(VARIANTS[1:])}")
    sim = variant.endswith("_sim")
    return generate(CONFIGS[variant.removesuffix("_sim")], sim=sim)


def main(argv=None) -> int:
    ap = ArgumentParser(prog="python -m hw.dram", description=__doc__,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--record", action="store_true",
                    help=f"generate every variant and write its record to {DATA}")
    ap.add_argument("--variant", choices=VARIANTS[1:],
                    help="generate this variant and print the path of its Verilog")
    args = ap.parse_args(argv)
    if not args.record and not args.variant:
        ap.error("give --record or --variant")
    try:
        if args.variant:
            print(generate_variant(args.variant).verilog)
        if args.record:
            DATA.mkdir(exist_ok=True)
            for variant in VARIANTS[1:]:
                core = generate_variant(variant)
                (DATA / f"{variant}.json").write_text(core.record.to_json())
                print(f"{variant}: {DATA / (variant + '.json')}")
    except DramGenerationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
