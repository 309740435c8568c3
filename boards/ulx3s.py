"""Radiona ULX3S with an ECP5-85F: the board with a fully open bitstream flow.

Its 25 MHz oscillator gives 100 MHz from the PLL (x 4); 2 Mbaud is an exact divider there
(50 cycles a bit) and within the FT231X's 3 Mbaud. It runs the Arty A7-35T's engine at
100 MHz, the clock this build proves for the Arty (see docs/engine.md, "Timing").
"""

from __future__ import annotations

from spec.dram import ULX3S_SDR
from spec.params import EngineParams

from .base import Board

ULX3S = Board(
    name="ulx3s",
    description="Radiona ULX3S (LFE5U-85F-6BG381C), FT231X USB-UART",
    device="LFE5U-85F-6BG381C",
    family="ecp5",
    clock_hz=100_000_000,
    baud=2_000_000,
    # The Arty A7-35T's engine: this build is also its open timing proxy.
    engine=EngineParams(),
    dram=ULX3S_SDR,
    # LiteX's ULX3S target's choice for its full-rate SDR PHY: 2.5 ns at 100 MHz, the setup
    # the SDRAM sees on the controller's registered outputs (docs/memory.md, "Clocking")
    dram_clock_phase=90.0,
    # the SDR controller on a clock of its own, LiteX's ULX3S target's 50 MHz: its bank
    # machines' paths do not fit 10 ns on this device (docs/memory.md, "Clocking")
    dram_clock_hz=50_000_000,
    # the bitstream has the SDR controller (every clock met: docs/memory.md), not resident
    # mode's layer sequencer, pools and window packer, with which the design's clock was
    # 80.7 MHz (`--resident` builds them)
    resident_in_bitstream=False,
    capacity={"LUT": 83640, "FF": 83640, "MULT18X18D": 156, "EBR": 208},
    # yosys leaves the MULT18X18D's registers unused: instantiated with them (hw.dsp)
    multipliers="mult18x18d",
)
