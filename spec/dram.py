"""External memory: the DRAM configurations of the boards, and what the host needs to bring a
LiteDRAM controller up without a CPU on the board.

The controller is LiteDRAM's, generated from PyPI at build time (``hw.dram``). A
:class:`DramConfig` is what the generator is given; the *variant* is a configuration as
generated for a board (``"arty_a7"``) or for the simulated board (``"arty_a7_sim"``, the same
controller with LiteDRAM's ``SDRAMPHYModel`` in place of the PHY). What the host needs of a
generated core (its control/status register addresses, the DFI injector's bits, the
initialization sequence LiteDRAM computes for the memory at the clock) is recorded, per
variant, in ``spec/dram_data/VARIANT.json`` by ``python -m hw.dram --record``; a test
regenerates each core and holds the record to it, so LiteDRAM stays the one source.

The device reports its variant in IDENTITY (``mem_variant``, an index into
:data:`VARIANTS`, 0 meaning no memory); the driver runs :func:`init_sequence` through the
link's CSR bridge.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

DATA = Path(__file__).resolve().parent / "dram_data"


@dataclass(frozen=True)
class DramConfig:
    """One board's memory, as LiteDRAM's generator takes it (``litedram.gen`` YAML keys)."""

    name: str
    memtype: str  #: "DDR3" or "SDR"
    module: str  #: a ``litedram.modules`` class name
    phy: str  #: a ``litedram.phy`` class name
    module_nb: int  #: data bytes of the memory bus (module chips x bytes each)
    size: int  #: bytes
    #: the native user port's width: the memory bus width x 2 (DDR) x the PHY's phases
    port_bits: int
    #: electrical settings (DDR3 only), as LiteDRAM names them
    rtt_nom: str | None = None
    rtt_wr: str | None = None
    ron: str | None = None
    description: str = ""

    @property
    def port_bytes(self) -> int:
        return self.port_bits // 8

    @property
    def words(self) -> int:
        """Native-port words of the memory."""
        return self.size // self.port_bytes

    @property
    def addr_bits(self) -> int:
        return (self.words - 1).bit_length()


ARTY_DDR3 = DramConfig(
    name="arty_ddr3", memtype="DDR3", module="MT41K128M16", phy="A7DDRPHY", module_nb=2,
    size=256 << 20, port_bits=128, rtt_nom="60ohm", rtt_wr="60ohm", ron="34ohm",
    description="256 MB DDR3 (MT41K128M16, 16-bit bus), Artix-7 A7DDRPHY")
ULX3S_SDR = DramConfig(
    name="ulx3s_sdr", memtype="SDR", module="IS42S16160", phy="GENSDRPHY", module_nb=2,
    size=32 << 20, port_bits=16,
    description="32 MB SDR SDRAM (IS42S16160, 16-bit bus), generic SDR PHY")
CONFIGS = {c.name: c for c in (ARTY_DDR3, ULX3S_SDR)}

#: Every generated variant, by the index the device reports (0: no memory).
VARIANTS = ["", "arty_ddr3", "arty_ddr3_sim", "ulx3s_sdr", "ulx3s_sdr_sim"]
MEMORY_KINDS = {"DDR3": 1, "SDR": 2}


def variant_name(config: DramConfig, sim: bool) -> str:
    return config.name + ("_sim" if sim else "")


def variant_index(config: DramConfig, sim: bool) -> int:
    return VARIANTS.index(variant_name(config, sim))


def variant_config(index: int) -> tuple[DramConfig, bool] | None:
    """The configuration and simulation flag of a reported variant, None for no memory."""
    if index == 0:
        return None
    if not 0 < index < len(VARIANTS):
        raise ValueError(f"memory variant {index} is unknown to this host (known: 1 to "
                         f"{len(VARIANTS) - 1}): rebuild the device from this version")
    name = VARIANTS[index]
    sim = name.endswith("_sim")
    return CONFIGS[name.removesuffix("_sim")], sim


@dataclass(frozen=True)
class InitCommand:
    """One step of the initialization sequence (what LiteX's BIOS plays): the address and
    bank set on phase 0, then either ``bits`` written to the DFI injector's control register
    (``control``: reset, CKE, ODT) or a command issued on phase 0; then a wait."""

    comment: str
    address: int
    bank: int
    control: bool  #: ``bits`` are ``dfii_control_*`` bits, else ``dfii_command_*`` bits
    bits: int
    delay: int  #: clock cycles to wait afterwards (LiteDRAM's figure)


@dataclass(frozen=True)
class DramRecord:
    """What the host needs of one generated controller (``spec/dram_data/VARIANT.json``)."""

    variant: str
    csr: dict  #: CSR name -> byte address on the core's control bus
    constants: dict  #: dfii_control_* and dfii_command_* bits
    init: list  #: of :class:`InitCommand`
    phases: int  #: DFI phases
    litedram: str  #: the LiteDRAM version it was generated with
    clock_hz: int  #: the controller clock the timings are for
    #: the PHY's settings the host needs (LiteDRAM's ``PhySettings``): ``rdphase``,
    #: ``wrphase``, ``databits``, ``dfi_databits``, ``modules`` (byte lanes), ``delays`` and
    #: ``bitslips`` (read-leveling taps; 0 where the PHY has none), ``read_leveling``
    phy: dict = field(default_factory=dict)

    def to_json(self) -> str:
        d = {k: getattr(self, k) for k in ("variant", "litedram", "clock_hz", "phases",
                                           "csr", "constants", "phy")}
        d["init"] = [vars(c) for c in self.init]
        return json.dumps(d, indent=1, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> DramRecord:
        d = json.loads(text)
        d["init"] = [InitCommand(**c) for c in d["init"]]
        return cls(**d)


@cache
def record(variant: str) -> DramRecord:
    path = DATA / f"{variant}.json"
    if not path.exists():
        raise FileNotFoundError(f"no recorded LiteDRAM data for memory variant {variant!r} "
                                f"({path}): run `python -m hw.dram --record`")
    return DramRecord.from_json(path.read_text())
