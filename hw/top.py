"""Tops: ``UartTop`` (UART PHY + core, board-independent), ``SimMemoryTop`` (the simulated
board with memory) and ``BoardTop`` (a bitstream's: clocking, pins, memory).

``UartTop`` is what cocotb tests at the bit level; ``BoardTop`` adds the board's clocking
(system clock ``board.clock_hz``), the UART pins from amaranth-boards, LEDs, and the board's
external memory through the generated LiteDRAM controller (``hw.dram``).
"""

from amaranth import (
    ClockDomain,
    ClockSignal,
    DomainRenamer,
    Instance,
    Module,
    ResetSignal,
    Signal,
)
from amaranth.lib import io, stream, wiring
from amaranth.lib.wiring import In, Out

from boards.base import Board
from spec.dram import DramConfig, variant_index
from spec.params import EngineParams

from .core import DEFAULT_STALL_CYCLES, AcceleratorCore
from .uart import UARTRx, UARTTx, baud_divisor


def connect_memory(m, core, dram, config: DramConfig, separate: bool) -> None:
    """The core's memory ports to the controller's (``hw.dram.LiteDRAM``): directly, or with
    ``separate`` through crossings into the controller's ``dram`` domain (``hw.dram_cdc``)."""
    from .core import MEMORY_PORTS
    from .dram import USER_PORTS
    from .dram_cdc import NativePortCDC, WishboneCDC

    for core_port, dram_port in zip(MEMORY_PORTS, USER_PORTS, strict=True):
        theirs = getattr(dram, f"port_{dram_port}")
        if separate:
            m.submodules[f"{dram_port}_cdc"] = cdc = NativePortCDC(config.addr_bits,
                                                                  config.port_bits)
            wiring.connect(m, getattr(core, core_port), cdc.i)
            wiring.connect(m, cdc.o, theirs)
        else:
            wiring.connect(m, getattr(core, core_port), theirs)
    if separate:
        m.submodules.bus_cdc = cdc = WishboneCDC()
        wiring.connect(m, core.dram_bus, cdc.i)
        wiring.connect(m, cdc.o, dram.bus)
    else:
        wiring.connect(m, core.dram_bus, dram.bus)


class UartTop(wiring.Component):
    """The accelerator behind an 8N1 UART: ``rx``/``tx`` are the serial pins."""

    rx: In(1, init=1)
    tx: Out(1, init=1)
    busy: Out(1)

    def __init__(self, params: EngineParams, *, clock_hz: int, baud: int,
                 stall_cycles: int = DEFAULT_STALL_CYCLES, rx_idle: int | None = None,
                 multipliers: str = "dsp", memory: DramConfig | None = None,
                 mem_variant: int = 0, resident: bool = True):
        self._divisor = baud_divisor(clock_hz, baud)
        # with memory, the core's controller ports (``core.dram_*``) are the enclosing top's
        self.core = AcceleratorCore(params, clock_hz=clock_hz, baud=baud,
                                    stall_cycles=stall_cycles, rx_idle=rx_idle,
                                    multipliers=multipliers, memory=memory,
                                    mem_variant=mem_variant, resident=resident)
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        m.submodules.core = core = self.core
        m.submodules.uart_rx = rx = UARTRx(self._divisor)
        m.submodules.uart_tx = tx = UARTTx(self._divisor)
        wiring.connect(m, rx.o, core.rx)
        wiring.connect(m, core.tx, tx.i)
        m.d.comb += [rx.rx.eq(self.rx), self.tx.eq(tx.tx), self.busy.eq(core.busy),
                     core.uart_error.eq(rx.framing_error | rx.overrun)]
        return m


class SimMemoryTop(wiring.Component):
    """The simulated board's top with external memory: the accelerator core beside the same
    LiteDRAM controller a board has, generated with LiteDRAM's PHY model in place of the PHY
    (``hw.dram``). Its ports are the core's byte streams. The controller runs on the design's
    clock, or where its board gives it a clock of its own (``dram_clock_hz``), on the
    ``dram`` domain's (the top's ``dram_clk``/``dram_rst`` ports), its ports crossing as on
    the board (``hw.dram_cdc``)."""

    rx: In(stream.Signature(8))
    tx: Out(stream.Signature(8))
    uart_error: In(1)
    busy: Out(1)
    active: Out(1)

    def __init__(self, params: EngineParams, *, clock_hz: int, baud: int, memory: DramConfig,
                 **core_kw):
        from .dram import generate, variant_clock

        #: the controller's clock (its own domain where it is not ``clock_hz``)
        self.dram_clock_hz = variant_clock(memory)
        self.generated = generate(memory, sim=True, clock_hz=self.dram_clock_hz)
        self.core = AcceleratorCore(params, clock_hz=clock_hz, baud=baud, memory=memory,
                                    mem_variant=variant_index(memory, sim=True), **core_kw)
        self._memory = memory
        self._separate = self.dram_clock_hz != clock_hz
        super().__init__()

    def elaborate(self, platform):
        from .dram import LiteDRAM

        m = Module()
        m.submodules.core = core = self.core
        dram = LiteDRAM(self.generated)
        if self._separate:
            dram = DomainRenamer("dram")(dram)
        m.submodules.dram = dram
        wiring.connect(m, wiring.flipped(self.rx), core.rx)
        wiring.connect(m, core.tx, wiring.flipped(self.tx))
        connect_memory(m, core, dram, self._memory, self._separate)
        m.d.comb += [core.uart_error.eq(self.uart_error), self.busy.eq(core.busy),
                     self.active.eq(core.active)]
        return m


class BoardTop(wiring.Component):
    """A board's bitstream top: clocking, UART pins, the accelerator, its external memory
    (``board.dram``) through the generated LiteDRAM controller, LEDs
    (0: engine busy; 1 and 2: the controller's ``init_done`` and ``init_error``).

    One clock domain, ``sync``, at ``board.clock_hz`` (docs/memory.md, "The board tops and
    their clocking"):

    - xc7 with memory: the controller makes it (``hw.litedram_crg.ArtyCascadeCRG``: MMCM and
      PLL from the 100 MHz oscillator) and the design runs on its ``user_clk``/``user_rst``;
    - ecp5: the top's PLL makes it from the 25 MHz oscillator, and a copy
      ``board.dram_clock_phase`` degrees later that drives the SDRAM's clock pin through an
      ODDRX1F; the SDR controller runs on the system clock and gives back its reset;
    - without memory: the top's MMCM or PLL, the reset held until it locks.
    """

    def __init__(self, board: Board, params: EngineParams | None = None, *,
                 memory: bool | None = None, resident: bool | None = None):
        self.board = board
        self.params = params or board.engine
        self.dram = None  #: the generated controller (``hw.dram.GeneratedCore``) or None
        #: the layer sequencer, pools and window packer beside the memory (resident mode)
        self.resident = board.resident_in_bitstream if resident is None else resident
        if memory is None:
            memory = board.dram_in_bitstream
        if memory and board.dram is None:
            raise ValueError(f"{board.name} has no external memory")
        #: the memory controller's clock (the system clock unless the board says)
        self.dram_clock_hz = board.dram_clock_hz or board.clock_hz
        if memory:
            from .dram import generate

            self.dram = generate(board.dram, sim=False, clock_hz=self.dram_clock_hz)
        super().__init__({})

    @property
    def mem_variant(self) -> int:
        """What the device reports in IDENTITY (``spec.dram.VARIANTS``; 0: no memory)."""
        return variant_index(self.board.dram, sim=False) if self.dram else 0

    def elaborate(self, platform):
        from .dram import LiteDRAM

        m = Module()
        b = self.board
        mem = self.dram
        m.domains.sync = ClockDomain("sync")
        clk_in = platform.request(platform.default_clk, dir="-")
        m.submodules.clk_in = clk_buf = io.Buffer("i", clk_in)
        f_in = platform.default_clk_frequency
        dram = None
        if mem is not None:
            pads = platform.request("ddr3" if b.family == "xc7" else "sdram", 0, dir="-")
            dram = LiteDRAM(mem, pads=pads)
            if self.dram_clock_hz != b.clock_hz:
                dram = DomainRenamer("dram")(dram)
            m.submodules.dram = dram
            platform.add_file("litedram_core.v", mem.verilog_text())
            if mem.timing_xdc is not None:
                platform.add_file("litedram_core_timing.xdc", mem.timing_xdc.read_text())

        # the controller's own clock domain (``dram``) where it runs slower than the design
        # (``board.dram_clock_hz``): its ports cross through ``hw.dram_cdc``
        separate = dram is not None and self.dram_clock_hz != b.clock_hz
        if b.family == "xc7" and dram is not None:
            if separate:
                raise ValueError(f"{b.name}: the DDR3 controller runs on the system clock")
            # the controller's CRG makes the system clock from the oscillator
            m.d.comb += [dram.clk.eq(clk_buf.i), dram.rst.eq(0)]
        else:
            locked = Signal()
            clk_sys = Signal()
            if b.family == "xc7":
                self._mmcm(m, clk_buf.i, clk_sys, locked, f_in)
            elif b.family == "ecp5":
                outputs = []
                if dram is not None:
                    clk_dram = Signal() if separate else clk_sys
                    if separate:
                        outputs.append((clk_dram, self.dram_clock_hz, 0.0))
                    m.domains.sdram_clk = ClockDomain("sdram_clk", reset_less=True, local=True)
                    outputs.append((ClockSignal("sdram_clk"), self.dram_clock_hz,
                                    b.dram_clock_phase))
                self._pll(m, clk_buf.i, clk_sys, locked, f_in, outputs)
            else:
                raise ValueError(f"{b.name}: no clocking for family {b.family!r}")
        # (Vivado and nextpnr derive the generated clocks' constraints from the oscillator's)
        if dram is not None and b.family == "ecp5":
            # the controller synchronizes the reset (LiteX's AsyncResetSynchronizer)
            m.d.comb += [dram.clk.eq(clk_dram), dram.rst.eq(~locked)]
            # the SDRAM's clock pin: the phase-shifted clock through an ODDRX1F
            m.submodules.sdram_clk_pin = ck = io.DDRBuffer("o", pads.clk, o_domain="sdram_clk")
            m.d.comb += [ck.o[0].eq(1), ck.o[1].eq(0)]
        if separate:
            m.domains.dram = ClockDomain("dram")
            m.d.comb += [ClockSignal("dram").eq(dram.user_clk),
                         ResetSignal("dram").eq(dram.user_rst)]
        if dram is not None and not separate:
            m.d.comb += [ClockSignal("sync").eq(dram.user_clk),
                         ResetSignal("sync").eq(dram.user_rst)]
        else:
            m.d.comb += ClockSignal("sync").eq(clk_sys)
            # hold the design in reset until the clock is stable, released synchronously;
            # these two flops drive the domain's reset, so the reset must not act on them
            sync1 = Signal(init=1, reset_less=True)
            sync2 = Signal(init=1, reset_less=True)
            m.d.sync += [sync1.eq(~locked), sync2.eq(sync1)]
            m.d.comb += ResetSignal("sync").eq(sync2)

        m.submodules.top = top = UartTop(self.params, clock_hz=b.clock_hz, baud=b.baud,
                                         multipliers=b.multipliers,
                                         memory=b.dram if dram is not None else None,
                                         mem_variant=self.mem_variant,
                                         resident=self.resident)
        if dram is not None:
            connect_memory(m, top.core, dram, b.dram, separate)
        uart = platform.request("uart", 0, dir="-")
        m.submodules.uart_rx_pin = rx_buf = io.Buffer("i", uart.rx)
        m.submodules.uart_tx_pin = tx_buf = io.Buffer("o", uart.tx)
        m.d.comb += [top.rx.eq(rx_buf.i), tx_buf.o.eq(top.tx)]
        leds = [top.busy] + ([dram.init_done, dram.init_error] if dram is not None else [])
        for i, value in enumerate(leds):
            led = platform.request("led", i, dir="-")
            m.submodules[f"led{i}_pin"] = led_buf = io.Buffer("o", led)
            m.d.comb += led_buf.o.eq(value)
        return m

    def _mmcm(self, m, clk_in, clk_sys, locked, f_in):
        # 100 MHz x 48 / 5 = 960 MHz VCO (600-1200), / 10 = 96 MHz
        mult, div = 48.0, 5
        out_div = mult * f_in / div / self.board.clock_hz
        vco = f_in * mult / div
        if abs(out_div - round(out_div * 8) / 8) > 1e-9 or not 600e6 <= vco <= 1200e6:
            raise ValueError(f"{self.board.name}: no MMCM setting for {self.board.clock_hz} Hz")
        fb, clk_out = Signal(), Signal()
        m.submodules.mmcm = Instance(
            "MMCME2_BASE",
            p_CLKIN1_PERIOD=1e9 / f_in, p_CLKFBOUT_MULT_F=mult, p_DIVCLK_DIVIDE=div,
            p_CLKOUT0_DIVIDE_F=out_div, i_CLKIN1=clk_in, i_CLKFBIN=fb, o_CLKFBOUT=fb,
            o_CLKOUT0=clk_out, o_LOCKED=locked, i_RST=0, i_PWRDWN=0)
        m.submodules.bufg = Instance("BUFG", i_I=clk_out, o_O=clk_sys)

    def _pll(self, m, clk_in, clk_sys, locked, f_in, outputs=()):
        # f_out = f_in * CLKFB_DIV / CLKI_DIV (feedback from CLKOP), VCO = f_out * CLKOP_DIV
        # in 400-800 MHz, phase detector >= 3.125 MHz; e.g. 25 MHz * 4 = 100 MHz, VCO 600.
        # outputs: up to three more (CLKOS, CLKOS2, CLKOS3) as (signal, Hz, degrees late)
        f_out = self.board.clock_hz
        op_div = 600_000_000 // f_out
        for ref_div in range(1, 129):
            fb_div, rest = divmod(f_out * ref_div, int(f_in))
            if (not rest and 1 <= fb_div <= 128 and f_in / ref_div >= 3.125e6
                    and 400e6 <= f_out * op_div <= 800e6):
                break
        else:
            raise ValueError(f"{self.board.name}: no PLL setting for {f_out} Hz")
        vco = f_out * op_div
        # Phases count VCO cycles (CPHASE) and eighths of one (FPHASE); CPHASE = DIV - 1 is
        # an output's zero (as LiteX's ECP5PLL sets them)
        if len(outputs) > 3:
            raise ValueError(f"{self.board.name}: more PLL outputs than the EHXPLLL has")
        more = {}
        for port, (signal, freq, phase) in zip(("CLKOS", "CLKOS2", "CLKOS3")[:len(outputs)],
                                               outputs, strict=True):
            div, rest = divmod(vco, freq)
            if rest or not 1 <= div <= 128:
                raise ValueError(f"{self.board.name}: no PLL output for {freq} Hz "
                                 f"(VCO {vco / 1e6:g} MHz)")
            steps = round(phase * div / 45)
            more.update({f"p_{port}_ENABLE": "ENABLED", f"p_{port}_DIV": div,
                         f"p_{port}_CPHASE": div - 1 + (steps >> 3),
                         f"p_{port}_FPHASE": steps & 7, f"o_{port}": signal,
                         f"i_EN{port}": 0,
                         f"a_FREQUENCY_PIN_{port}": str(freq / 1e6)})
        m.submodules.pll = Instance(
            "EHXPLLL",
            a_FREQUENCY_PIN_CLKI=str(f_in / 1e6), a_FREQUENCY_PIN_CLKOP=str(f_out / 1e6),
            a_ICP_CURRENT="12", a_LPF_RESISTOR="8", a_MFG_ENABLE_FILTEROPAMP="1",
            a_MFG_GMCREF_SEL="2",
            p_PLLRST_ENA="DISABLED", p_INTFB_WAKE="DISABLED", p_STDBY_ENABLE="DISABLED",
            p_DPHASE_SOURCE="DISABLED", p_OUTDIVIDER_MUXA="DIVA", p_OUTDIVIDER_MUXB="DIVB",
            p_OUTDIVIDER_MUXC="DIVC", p_OUTDIVIDER_MUXD="DIVD", p_CLKI_DIV=ref_div,
            p_CLKOP_ENABLE="ENABLED", p_CLKOP_DIV=op_div, p_CLKOP_CPHASE=op_div - 1,
            p_CLKOP_FPHASE=0, p_FEEDBK_PATH="CLKOP", p_CLKFB_DIV=fb_div,
            i_RST=0, i_STDBY=0, i_CLKI=clk_in, o_CLKOP=clk_sys, i_CLKFB=clk_sys,
            i_PHASESEL0=0, i_PHASESEL1=0, i_PHASEDIR=1, i_PHASESTEP=1, i_PHASELOADREG=1,
            i_PLLWAKESYNC=0, i_ENCLKOP=0, o_LOCK=locked, **more)
