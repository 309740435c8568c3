"""The simulated board: the accelerator core's RTL, compiled with Verilator, behind a pty.

It is the bitstream's core (``hw.core.AcceleratorCore``: link layer, engine, counters) with
only the UART PHY replaced by a direct byte stream, and it appears as a serial device, so the
driver's serial code path is the one used with a board.

    python -m sim.board [--board arty_a7] [--param NAME=VALUE ...]

runs one and prints the device path, for other tools to connect to.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from functools import cache
from pathlib import Path

from amaranth.back import verilog

from boards import BOARDS, DEFAULT_BOARD, get_board
from hw.core import AcceleratorCore
from hw.params import EngineParams

from .verilator import HARNESS, build


@cache
def core_verilog(params: EngineParams, clock_hz: int, baud: int) -> str:
    return verilog.convert(AcceleratorCore(params, clock_hz=clock_hz, baud=baud),
                           name="accelerator_core")


def harness(params: EngineParams, clock_hz: int, baud: int) -> Path:
    return build("board_tb", core_verilog(params, clock_hz, baud),
                 [HARNESS / "board_tb.cpp"], "accelerator_core")


class SimulatedBoard:
    """A running simulated board; ``port`` is its serial device. Use as a context manager."""

    def __init__(self, board: str = DEFAULT_BOARD, params: EngineParams | None = None):
        b = get_board(board)
        self.board = b
        self.params = params or b.engine
        self.clock_hz = b.clock_hz
        self.baud = b.baud
        self._proc: subprocess.Popen | None = None
        self.port: str | None = None

    def start(self, timeout: float = 600.0) -> SimulatedBoard:
        exe = harness(self.params, self.clock_hz, self.baud)
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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sim.board", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--board", default=DEFAULT_BOARD, choices=sorted(BOARDS),
                    help=f"board whose core to simulate (default: {DEFAULT_BOARD})")
    args = ap.parse_args(argv)
    print("building the simulated board (cached after the first time)...", file=sys.stderr)
    with SimulatedBoard(args.board) as sim:
        print(sim.port, flush=True)
        print(f"simulated {sim.board.name} running on {sim.port}; Ctrl-C to stop",
              file=sys.stderr)
        try:
            while sim.running:
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
