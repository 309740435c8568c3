"""The Fire engine's generated Verilog in a compiled Verilator harness.

Full-size layers take hundreds of thousands of cycles: this runs them at C++ speed (about
a million cycles a second) with the engine's streams fed from queues, optionally with random
gaps on the inputs and backpressure on the output. Used by ``hw.bench`` and the tests.
"""

from __future__ import annotations

import subprocess
import tempfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
from amaranth.back import verilog

from hw.engine import FireEngine
from spec.layers import ConvLayer
from spec.params import EngineParams
from spec.protocol import ENGINE_STREAMS, item_bits
from spec.tiling import ConvPlan, FirePlan, lanes_to_ints
from sw.ops import FireLayer

from .verilator import HARNESS, build, pack_beats


@cache
def engine_verilog(params: EngineParams, multipliers: str = "dsp") -> str:
    return verilog.convert(FireEngine(params, multipliers=multipliers),
                           name="fire_engine")


def harness(params: EngineParams, multipliers: str = "dsp") -> Path:
    defines = [f"OUTPUT_BITS={params.bits}"] + (["HAS_BYPASS"] if params.bypass else [])
    return build("engine_tb", engine_verilog(params, multipliers),
                 [HARNESS / "engine_tb.cpp"], "fire_engine", defines=defines)


@dataclass
class RunResult:
    error: int
    cycles: int  #: configuration to last output beat
    compute: int  #: ``cycles`` less the cycles spent waiting on a stream
    outputs: np.ndarray


@dataclass
class HarnessResult:
    total_cycles: int
    runs: list[RunResult]
    timeout: bool


def run_streams(params: EngineParams, streams: dict, *, gaps=0, backpressure=0, seed=0,
                max_cycles=2_000_000_000, multipliers="dsp") -> HarnessResult:
    """Offer every queue at once; return each handled configuration's outcome."""
    widths = {ENGINE_STREAMS[cmd]: bits for cmd, bits in item_bits(params).items()}
    widths.setdefault("bypass", params.bits)  # the harness reads a bypass queue regardless
    exe = harness(params, multipliers)
    with tempfile.TemporaryDirectory() as tmp:
        stim, res = Path(tmp) / "stim.bin", Path(tmp) / "res.bin"
        with open(stim, "wb") as f:
            for name in ("cfg", "weights", "qparams", "input", "bypass"):
                beats = pack_beats(streams.get(name, []), widths[name])
                np.array([beats.shape[0], beats.shape[1]], dtype="<u4").tofile(f)
                beats.tofile(f)
        proc = subprocess.run([str(exe), str(stim), str(res), str(gaps), str(backpressure),
                               str(seed), str(max_cycles)], capture_output=True, text=True)
        if proc.returncode not in (0, 1):
            raise RuntimeError(f"engine harness failed ({proc.returncode}): {proc.stderr}")
        raw = np.fromfile(res, dtype="<u4")
        if proc.returncode == 1:
            print(proc.stderr.strip())
    total, n_runs, timeout = (int(v) for v in raw[:3])
    table = raw[3:3 + 4 * n_runs].reshape(n_runs, 4)
    values = raw[3 + 4 * n_runs:].view("<i4").astype(np.int64)
    runs, at = [], 0
    for error, cycles, compute, count in table.tolist():
        runs.append(RunResult(error, cycles, compute, values[at:at + count]))
        at += count
    return HarnessResult(total, runs, bool(timeout))


def fire_streams(plan: FirePlan, layer: FireLayer, x: np.ndarray) -> dict:
    """All runs of a plan as stream queues: each tile loads its weights and computes."""
    bits = plan.p.bits
    s = {"cfg": [], "weights": [], "qparams": [], "input": [], "bypass": []}
    for tile in plan.tiles:
        s["cfg"].append(plan.config(tile, layer, load=True, compute=True))
        s["weights"] += lanes_to_ints(plan.weight_rows(tile, layer), bits)
        s["qparams"] += plan.qparams(tile, layer)
        if tile.squeeze:
            s["input"] += lanes_to_ints(plan.input_words(x), bits)
        if plan.bypass:
            s["bypass"] += [int(v) for v in plan.bypass_values(tile, x)]
    return s


def run_fire(plan: FirePlan, layer: FireLayer, x: np.ndarray, **kw):
    """Run a whole Fire layer; returns ``(output HWC, HarnessResult)``."""
    result = run_streams(plan.p, fire_streams(plan, layer, x), **kw)
    if result.timeout:
        raise RuntimeError("engine harness timed out")
    bad = [r.error for r in result.runs if r.error]
    if bad:
        raise RuntimeError(f"engine refused a configuration: error {bad[0]}")
    if len(result.runs) != len(plan.tiles):
        raise RuntimeError(f"{len(result.runs)} runs for {len(plan.tiles)} tiles")
    return plan.assemble([r.outputs for r in result.runs]), result


def conv_streams(plan: ConvPlan, conv: ConvLayer, z_in: int, x: np.ndarray) -> dict:
    """All runs of a 1x1-convolution plan as stream queues (each channel block's weights
    loaded by its first run)."""
    bits = plan.p.bits
    s = {"cfg": [], "weights": [], "qparams": [], "input": [], "bypass": []}
    for run in plan.runs:
        s["cfg"].append(plan.config(run, conv, z_in))
        if run.load:
            s["weights"] += lanes_to_ints(plan.weight_rows(run, conv), bits)
            s["qparams"] += plan.qparams(run, conv)
        s["input"] += lanes_to_ints(plan.input_words(run, x), bits)
    return s


def run_conv(plan: ConvPlan, conv: ConvLayer, z_in: int, x: np.ndarray, **kw):
    """Run a whole 1x1 convolution; returns ``(output HWC, HarnessResult)``."""
    result = run_streams(plan.p, conv_streams(plan, conv, z_in, x), **kw)
    if result.timeout:
        raise RuntimeError("engine harness timed out")
    bad = [r.error for r in result.runs if r.error]
    if bad:
        raise RuntimeError(f"engine refused a configuration: error {bad[0]}")
    if len(result.runs) != len(plan.runs):
        raise RuntimeError(f"{len(result.runs)} runs for {len(plan.runs)} planned")
    return plan.assemble([r.outputs for r in result.runs]), result
