"""DDR3 read leveling from the host: what LiteX's BIOS does (``sdram_read_leveling``), over
the link's CSR bridge.

The read data of each byte lane (module) passes an IDELAY of ``delays`` taps and a bitslip of
``bitslips`` positions in the PHY. For each lane, every bitslip is scanned over every tap
with a write-then-read test pattern; the bitslip with the widest run of working taps wins,
and the tap in the middle of that run is set. :func:`level_reads` is the search; it works
through a :class:`Probe` (reset/increment a lane's delay and bitslip, count a lane's errors
on the test pattern), so the same search runs against the board (:class:`DfiProbe`, on the
PHY's and the DFI injector's registers) and against a model of a tap window in the tests.

Unverified on silicon: no board has run :class:`DfiProbe` yet (docs/memory.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


class Probe(Protocol):
    def reset_delay(self, module: int) -> None: ...
    def inc_delay(self, module: int) -> None: ...
    def reset_bitslip(self, module: int) -> None: ...
    def inc_bitslip(self, module: int) -> None: ...
    def errors(self, module: int) -> int: ...


@dataclass(frozen=True)
class LaneLevel:
    """The result for one byte lane: the chosen bitslip and tap, and the window of working
    taps it is centred in (``None`` when no tap worked at any bitslip)."""

    module: int
    bitslip: int | None
    start: int | None
    end: int | None  #: last working tap (inclusive)
    delay: int | None

    @property
    def ok(self) -> bool:
        return self.delay is not None

    def to_dict(self) -> dict:
        return {"module": self.module, "bitslip": self.bitslip, "window": [self.start, self.end],
                "delay": self.delay}


def longest_run(working: list[bool]) -> tuple[int, int] | None:
    """(first, last) of the longest run of True (the earliest of equals), None if none."""
    best, start = None, None
    for i, ok in enumerate([*working, False]):
        if ok and start is None:
            start = i
        elif not ok and start is not None:
            if best is None or i - start > best[1] - best[0] + 1:
                best = (start, i - 1)
            start = None
    return best


def level_reads(probe: Probe, *, modules: int, delays: int, bitslips: int) -> list[LaneLevel]:
    """Scan and set every lane; returns the result per lane (the lane is left at its chosen
    bitslip and tap, or at bitslip 0, tap 0 when nothing worked)."""
    results = []
    for module in range(modules):
        best = None  # (width, bitslip, first, last)
        probe.reset_bitslip(module)
        for bitslip in range(bitslips):
            if bitslip:
                probe.inc_bitslip(module)
            probe.reset_delay(module)
            working = []
            for tap in range(delays):
                if tap:
                    probe.inc_delay(module)
                working.append(probe.errors(module) == 0)
            run = longest_run(working)
            if run and (best is None or run[1] - run[0] + 1 > best[0]):
                best = (run[1] - run[0] + 1, bitslip, *run)
        probe.reset_bitslip(module)
        probe.reset_delay(module)
        if best is None:
            results.append(LaneLevel(module, None, None, None, None))
            continue
        _, bitslip, first, last = best
        delay = (first + last) // 2
        for _ in range(bitslip):
            probe.inc_bitslip(module)
        for _ in range(delay):
            probe.inc_delay(module)
        results.append(LaneLevel(module, bitslip, first, last, delay))
    return results


class DfiProbe:
    """:class:`Probe` on a board's DDR3 through the memory's CSRs (``sw.driver.memory``):
    the A7DDRPHY's ``dly_sel``, ``rdly_dq_rst``/``_inc`` and ``rdly_dq_bitslip_rst``/
    ``_bitslip``; the test pattern is written and read back through the DFI injector
    (software control: call between the initialization sequence and handing the DFI back),
    as LiteX's BIOS does: activate row 0 of bank 0, write a burst on the write phase, read
    it on the read phase, compare the lane's bytes of every phase, precharge."""

    PATTERN_SEEDS = (0x5A3C_96E1, 0x0F1E_2D3C)

    def __init__(self, memory):
        self.m = memory
        rec = memory.record
        self.phy = rec.phy
        self.c = rec.constants
        self.phases = rec.phases

    def _select(self, module):
        self.m.csr_write("ddrphy_dly_sel", 1 << module)

    def _pulse(self, module, name):
        self._select(module)
        self.m.csr_write(name, 1)
        self.m.csr_write("ddrphy_dly_sel", 0)

    def reset_delay(self, module):
        self._pulse(module, "ddrphy_rdly_dq_rst")

    def inc_delay(self, module):
        self._pulse(module, "ddrphy_rdly_dq_inc")

    def reset_bitslip(self, module):
        self._pulse(module, "ddrphy_rdly_dq_bitslip_rst")

    def inc_bitslip(self, module):
        self._pulse(module, "ddrphy_rdly_dq_bitslip")

    def _command(self, phase, command, address=0, bank=0):
        m = self.m
        m.csr_write(f"sdram_dfii_pi{phase}_address", address)
        m.csr_write(f"sdram_dfii_pi{phase}_baddress", bank)
        m.csr_write(f"sdram_dfii_pi{phase}_command", command)
        m.csr_write(f"sdram_dfii_pi{phase}_command_issue", 1)

    def errors(self, module):
        c, phy = self.c, self.phy
        cs, we, cas, ras = (c["dfii_command_cs"], c["dfii_command_we"], c["dfii_command_cas"],
                            c["dfii_command_ras"])
        mask = (1 << phy["dfi_databits"]) - 1
        errors = 0
        for seed in self.PATTERN_SEEDS:
            words = [(seed * (p + 1) * 0x9E37_79B9) & mask for p in range(self.phases)]
            self._command(0, ras | cs)  # activate row 0, bank 0
            for p, word in enumerate(words):
                self.m.csr_write(f"sdram_dfii_pi{p}_wrdata", word)
            self._command(phy["wrphase"], cas | we | cs | c["dfii_command_wrdata"])
            self._command(phy["rdphase"], cas | cs | c["dfii_command_rddata"])
            got = [self.m.csr_read(f"sdram_dfii_pi{p}_rddata") for p in range(self.phases)]
            self._command(0, ras | we | cs, address=1 << 10)  # precharge all
            half = phy["databits"]
            for want, have in zip(words, got, strict=True):
                for edge in (0, half):  # the rising and falling edge's data
                    shift = edge + 8 * module
                    if (want >> shift) & 0xFF != (have >> shift) & 0xFF:
                        errors += 1
        return errors
