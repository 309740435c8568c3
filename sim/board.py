"""The simulated board: the accelerator core's RTL, compiled with Verilator, behind a pty.

It is the bitstream's core (``hw.core.AcceleratorCore``: link layer, engine, counters) with
only the UART PHY replaced by a direct byte stream, and it appears as a serial device, so the
driver's serial code path is the one used with a board.

    python -m sim.board [--board arty_a7] [--param NAME=VALUE ...] [--params FILE.toml]

runs one and prints the device path, for other tools to connect to. ``--param`` and
``--params`` override the board's engine parameters as ``python -m hw.build`` does; a bad one
is refused before anything is built.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from contextlib import contextmanager
from functools import cache
from pathlib import Path

from amaranth.back import verilog

from boards import BOARDS, DEFAULT_BOARD, get_board
from hw.core import AcceleratorCore
from hw.dram import variant_clock
from hw.top import SimMemoryTop
from spec.cli import ArgumentParser, Progress, add_quiet
from spec.dram import DramConfig
from spec.params import EngineParams, ParamError, parse_overrides

from . import verilator
from .verilator import HARNESS, build


@cache
def core_verilog(params: EngineParams, clock_hz: int, baud: int,
                 memory: DramConfig | None = None) -> str:
    """The simulated board's Verilog: the core alone, or with ``memory`` the core beside the
    LiteDRAM controller with its PHY model (``hw.top.SimMemoryTop``), whose generated
    Verilog follows."""
    if memory is None:
        return verilog.convert(AcceleratorCore(params, clock_hz=clock_hz, baud=baud),
                               name="accelerator_core")
    top = SimMemoryTop(params, clock_hz=clock_hz, baud=baud, memory=memory)
    return (verilog.convert(top, name="accelerator_core") + "\n"
            + top.generated.verilog_text())


def _harness_args(params: EngineParams, clock_hz: int, baud: int,
                  memory: DramConfig | None) -> tuple:
    defines = ()
    if memory is not None:
        # a controller on a clock of its own (the board's ``dram_clock_hz``): the harness
        # drives the top's ``dram_clk`` at that rate, an integer fraction of the clock's
        ratio, rest = divmod(clock_hz, variant_clock(memory))
        if rest:
            raise ValueError(f"{memory.name}: the simulated board needs the memory's clock to "
                             f"divide the system clock ({clock_hz} Hz)")
        if ratio != 1:
            defines = (f"DRAM_CLOCK_DIV={ratio}",)
    return "board_tb", core_verilog(params, clock_hz, baud, memory), \
        [HARNESS / "board_tb.cpp"], "accelerator_core", defines


def harness(params: EngineParams, clock_hz: int, baud: int,
            memory: DramConfig | None = None) -> Path:
    name, text, sources, top, defines = _harness_args(params, clock_hz, baud, memory)
    return build(name, text, sources, top, defines=defines)


def harness_built(params: EngineParams, clock_hz: int, baud: int,
                  memory: DramConfig | None = None) -> bool:
    """Whether the simulated board for these parameters is compiled already, so that a start
    takes seconds rather than a Verilator build of a minute or two (the core is elaborated
    to tell, a few seconds, which a start then reuses)."""
    name, text, sources, top, defines = _harness_args(params, clock_hz, baud, memory)
    return verilator.executable(name, text, sources, top, defines=defines).exists()


class SimulatedBoard:
    """A running simulated board; ``port`` is its serial device. Use as a context manager."""

    def __init__(self, board: str = DEFAULT_BOARD, params: EngineParams | None = None, *,
                 memory: bool = False):
        b = get_board(board)
        self.board = b
        self.params = params or b.engine
        #: the board's external memory (``memory=True``: the LiteDRAM controller with
        #: LiteDRAM's PHY model), or None. Without it the simulated board is the bitstream
        #: ``python -m hw.build`` makes today, which streams everything over the link; the
        #: memory doubles the simulator's work per cycle.
        if memory and b.dram is None:
            raise ValueError(f"{board} has no external memory to simulate")
        self.memory = b.dram if memory else None
        self.clock_hz = b.clock_hz
        self.baud = b.baud
        self._proc: subprocess.Popen | None = None
        self.port: str | None = None

    def start(self, timeout: float = 600.0) -> SimulatedBoard:
        exe = harness(self.params, self.clock_hz, self.baud, self.memory)
        self._proc = subprocess.Popen([str(exe)], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, text=True)
        deadline = time.monotonic() + timeout
        line = self._proc.stdout.readline()
        if not line.startswith("PTY ") or time.monotonic() > deadline:
            self.stop()
            raise RuntimeError(f"simulated board did not start: {line!r}")
        self.port = line.split(None, 1)[1].strip()
        return self

    def stop(self) -> None:
        if self._proc is not None:
            if self._proc.stdin:
                self._proc.stdin.close()  # the harness exits when its stdin closes
            if self._proc.stdout:
                self._proc.stdout.close()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def __enter__(self) -> SimulatedBoard:
        return self.start() if self._proc is None else self

    def __exit__(self, *exc) -> None:
        self.stop()


@contextmanager
def simulated_accelerator(board: str = DEFAULT_BOARD, params: EngineParams | None = None,
                          *, memory: bool = False, **kw):
    """The driver's :class:`~sw.driver.Accelerator` on a simulated board (with its external
    memory if ``memory``), both closed at the end: what ``python -m sw.driver`` does without
    ``--port``. The driver itself only ever sees a serial port (``kw`` goes to
    ``Accelerator.open``)."""
    from sw.driver import Accelerator

    with SimulatedBoard(board, params, memory=memory) as sim, \
            Accelerator.open(sim.port, sim.baud, **kw) as acc:
        acc.description = f"simulated {board} ({sim.port})"
        yield acc


def main(argv=None) -> int:
    ap = ArgumentParser(prog="python -m sim.board", description=__doc__,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--board", default=DEFAULT_BOARD, choices=sorted(BOARDS),
                    help=f"board whose core to simulate (default: {DEFAULT_BOARD})")
    ap.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                    help="override an engine parameter of the board's, repeatable")
    ap.add_argument("--params", metavar="FILE.toml",
                    help="engine parameters from a TOML file (an [engine] table or top level)")
    ap.add_argument("--memory", action="store_true",
                    help="include the board's external memory: its LiteDRAM controller with "
                         "LiteDRAM's PHY model (the simulation then runs about half as fast)")
    add_quiet(ap)
    args = ap.parse_args(argv)
    board = get_board(args.board)
    try:
        params = parse_overrides(board.engine, args.param, args.params)
    except ParamError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    progress = Progress(quiet=args.quiet)
    running = False
    try:
        memory = board.dram if args.memory else None
        if args.memory and memory is None:
            print(f"error: {board.name} has no external memory (--memory)", file=sys.stderr)
            return 2
        if not harness_built(params, board.clock_hz, board.baud, memory):
            progress.note("building the simulated board with Verilator (a minute or two; "
                          "cached for the next start)...")
        with SimulatedBoard(args.board, params, memory=args.memory) as sim:
            running = True
            print(sim.port, flush=True)
            progress.note(f"simulated {sim.board.name} running on {sim.port}; Ctrl-C to stop")
            while sim.running:
                time.sleep(0.5)
    except KeyboardInterrupt:
        if running:  # Ctrl-C is how a running board is stopped
            return 0
        print("interrupted", file=sys.stderr)
        return 130
    except (verilator.SimulatorError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)  # a failed build: its log follows
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
