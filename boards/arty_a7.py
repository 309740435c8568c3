"""Digilent Arty A7-35T and A7-100T (Artix-7, FT2232H USB-UART on TXD/RXD only)."""

from __future__ import annotations

from spec.dram import ARTY_DDR3
from spec.params import EngineParams

from .base import Board

#: 96 MHz from the MMCM: 8 clocks per bit at 12 Mbaud, and exact dividers for every
#: FT2232H rate 12M/N (docs/link.md, "UART and clock").
SYS_CLOCK_HZ = 96_000_000

ARTY_A7 = Board(
    name="arty_a7",
    description="Digilent Arty A7-35T (XC7A35T-1CSG324C)",
    device="xc7a35ticsg324-1L",
    family="xc7",
    clock_hz=SYS_CLOCK_HZ,
    baud=12_000_000,
    # 16 x 5 = 80 multipliers (+ 4 for the requantizer and 4 for the bypass add) of the 90
    # DSP48E1; weights 1024 rows x 80 bytes, squeeze map 3072 x 16 bytes.
    engine=EngineParams(),
    dram=ARTY_DDR3,
    capacity={"LUT": 20800, "FF": 41600, "DSP48E1": 90, "RAMB36": 50, "RAMB18": 100},
)

ARTY_A7_100T = Board(
    name="arty_a7_100t",
    description="Digilent Arty A7-100T (XC7A100T-1CSG324C)",
    device="xc7a100tcsg324-1",
    family="xc7",
    clock_hz=SYS_CLOCK_HZ,
    baud=12_000_000,
    # Same array (one requantizer lane bounds what more multipliers would gain on fire2/3),
    # twice the weight buffer: fewer output-channel tiles.
    engine=EngineParams(weight_depth=2048, squeeze_depth=4096),
    dram=ARTY_DDR3,
    capacity={"LUT": 63400, "FF": 126800, "DSP48E1": 240, "RAMB36": 135, "RAMB18": 270},
)
