"""What a board definition holds."""

from __future__ import annotations

from dataclasses import dataclass, field

from spec.dram import DramConfig
from spec.params import EngineParams


@dataclass(frozen=True)
class Board:
    name: str
    description: str
    device: str  #: FPGA part, as its vendor names it
    family: str  #: "xc7" or "ecp5"
    clock_hz: int  #: system clock the engine and link run at
    baud: int  #: UART rate of the link (fixed when the bitstream is built)
    engine: EngineParams  #: default engine parameters for this device
    #: device capacity by resource, for fit checks
    capacity: dict[str, int] = field(default_factory=dict)
    #: how the MAC array builds its products (``hw.mac_array.MULTIPLIERS``)
    multipliers: str = "dsp"
    #: the board's external memory, driven by the LiteDRAM controller (``hw.dram``)
    dram: DramConfig | None = None
    #: SDR SDRAM: how many degrees of the system clock the memory's clock pin lags it
    #: (the top's PLL makes the shifted copy; docs/memory.md, "Clocking")
    dram_clock_phase: float = 0.0
    #: the memory controller's clock where it is not ``clock_hz`` (None: the same clock): a
    #: domain of its own, its ports crossing into the design's (``hw.dram_cdc``)
    dram_clock_hz: int | None = None
    #: whether ``python -m hw.build`` puts the memory's controller in the bitstream unless
    #: told (``--memory`` / ``--no-memory``): off where the design does not meet its clock
    #: with it yet
    dram_in_bitstream: bool = True
    #: whether the bitstream has the layer sequencer, the pools and the window packer
    #: (resident mode, docs/resident.md) beside the memory unless told (``--resident`` /
    #: ``--no-resident``): off where they do not fit the device yet
    resident_in_bitstream: bool = True
