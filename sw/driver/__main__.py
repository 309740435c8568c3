"""Host driver command line.

    python -m sw.driver info     [--port PORT --baud N]
    python -m sw.driver run-fire [--arch A] [--layer fire2] [--check]
    python -m sw.driver infer    [--arch A] [--image cat.jpg] [--weights F] [--check]
    python -m sw.driver bench    [--arch A]

With --port it talks to a board on that serial port; without it, it starts the simulated
board (the board's RTL under Verilator behind a pty; built once and cached). Every command
takes --json.
"""

from __future__ import annotations

import argparse
import json
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from boards import BOARDS, DEFAULT_BOARD, get_board
from sw import ops
from sw.images import ImageError, load_image, random_images
from sw.model import get_weights, top5
from sw.network import ARCHS, Fire, get_arch
from sw.quantize import quantize_network
from sw.weights import WeightsError

from .accelerator import Accelerator
from .errors import DriverError
from .runner import run_network

#: SQUEEZENET.md: Fire-only offload over a 12 Mbaud UART tops out near 0.65 frames/s.
UART_LIMIT_FPS = 0.65


@contextmanager
def device(args):
    if args.port:
        acc = Accelerator.open(args.port, args.baud or get_board(args.board).baud,
                               timeout=args.timeout)
    else:
        note(args, f"no --port: starting the simulated {args.board} board "
                   "(the first start builds it with Verilator, a minute or two)")
        acc = Accelerator.simulated(args.board, timeout=args.timeout)
    try:
        yield acc
    finally:
        acc.close()


def note(args, text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def emit(args, result: dict, text: str) -> None:
    print(json.dumps(result, indent=2) if args.json else text, flush=True)


def calibration_images(args, size: int) -> list[np.ndarray]:
    if args.calibrate:
        paths = sorted(p for p in Path(args.calibrate).iterdir()
                       if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
        if not paths:
            raise ImageError(f"--calibrate {args.calibrate}: no PNG or JPEG images there")
        return [load_image(p, size) for p in paths]
    return random_images(args.calib, size, seed=1)


def quantized(args, size: int):
    net = get_arch(args.arch)
    weights = get_weights(net, args.weights)
    return net, weights, quantize_network(net, weights, calibration_images(args, size))


# ------------------------------------------------------------------------------- commands
def cmd_info(args) -> int:
    with device(args) as acc:
        ident = acc.identity
        counters = acc.counters()
        desc = acc.description
    p = ident.params
    result = {"device": desc, "protocol": ident.version, "clock_hz": ident.clock_hz,
              "baud": ident.baud, "max_payload": ident.max_payload, "rx_slots": ident.rx_slots,
              "params": p.to_dict(), "lanes": p.lanes, "counters": counters}
    text = "\n".join([
        f"device: {desc}",
        f"protocol {ident.version}, clock {ident.clock_hz / 1e6:g} MHz, link {ident.baud:,} "
        f"baud, frames up to {ident.max_payload} bytes, {ident.rx_slots} frame buffers",
        f"engine: int{p.bits}, {p.ic_lanes}x{p.oc_lanes} = {p.lanes} lanes, maxima "
        f"{p.max_h}x{p.max_w}, Cin {p.max_cin}, S {p.max_squeeze}, E1 {p.max_e1}, E3 "
        f"{p.max_e3}; weight buffer {p.weight_depth} rows, squeeze buffer "
        f"{p.squeeze_depth} words, bypass {'yes' if p.bypass else 'no'}",
        "counters: " + ", ".join(f"{k} {v}" for k, v in counters.items()),
    ])
    emit(args, result, text)
    return 0


def cmd_run_fire(args) -> int:
    net, weights, qnet = quantized(args, args.size)
    layer = net.layer(args.layer) if args.layer in [f.name for f in net.fires] else None
    if not isinstance(layer, Fire):
        raise DriverError(f"{args.arch} has no Fire layer {args.layer!r}; choose from "
                          f"{', '.join(f.name for f in net.fires)}")
    inputs = {}
    qnet.forward(qnet.quantize_input(random_images(1, args.size, seed=3)[0]),
                 on_layer=lambda name, x, y: inputs.__setitem__(name, x))
    x = inputs[args.layer]
    qlayer = qnet.layers[args.layer]
    with device(args) as acc:
        r = acc.run_fire(qlayer, x)
        clock = acc.identity.clock_hz
    match = bool(np.array_equal(r.output, ops.fire(x, qlayer, qnet.spec))) if args.check \
        else None
    result = {"arch": net.name, "layer": args.layer, "input": list(x.shape),
              "output": list(r.output.shape), "cycles": r.cycles, "runs": r.runs,
              "seconds": r.seconds, "bytes_down": r.bytes_down, "bytes_up": r.bytes_up,
              "match": match, "weights": weights.source}
    text = (f"{net.name} {args.layer} on {x.shape[0]}x{x.shape[1]}x{x.shape[2]} "
            f"({weights.source}): {r.cycles:,} device cycles ({r.cycles / clock * 1e3:.2f} ms "
            f"at {clock / 1e6:g} MHz) in {r.runs} run(s), {r.seconds:.2f} s wall, "
            f"{r.bytes_down:,} bytes down, {r.bytes_up:,} up"
            + ("" if match is None else f"; bit-exact: {'yes' if match else 'NO'}"))
    emit(args, result, text)
    return 0 if match in (None, True) else 1


def _run(args, want_check: bool):
    from tqdm import tqdm

    net, weights, qnet = quantized(args, args.size)
    if args.image:
        image, label = load_image(args.image, args.size), args.image
    else:
        image, label = random_images(1, args.size, seed=3)[0], "a random input (seed 3)"
    with device(args) as acc:
        ident = acc.identity
        bar = tqdm(total=len(net.layers), desc=net.name, unit="layer", file=sys.stderr,
                   disable=None if not args.json else True, leave=False)
        result = run_network(acc, qnet, image, check=want_check,
                             on_layer=lambda rec: (bar.update(1),
                                                   bar.set_postfix_str(rec.name)))
        bar.close()
    return net, weights, label, ident, result


def cmd_infer_onnx(args) -> int:
    from sw.onnx_import import load_model

    from .runner import run_network_batch

    imported = load_model(args.model)
    h, w = imported.input_size
    if args.input:
        try:
            batch = np.load(args.input)
        except (OSError, ValueError) as exc:
            raise ImageError(f"--input {args.input}: not a readable .npy file: {exc}") from None
        if batch.ndim != 4 or batch.shape[1:] != (3, h, w):
            raise ImageError(f"--input {args.input}: expected a float32 batch (N, 3, {h}, {w}) "
                             f"for this model, got {batch.shape}")
        images = [b.transpose(1, 2, 0).astype(np.float32) for b in batch]
        labels = [f"{args.input}[{i}]" for i in range(len(images))]
    else:
        if h != w:
            raise ImageError(f"the model takes {h}x{w} inputs: give them as --input X.npy")
        if args.image:
            images, labels = [load_image(args.image, h)], [args.image]
        else:
            images, labels = random_images(1, h, seed=3), ["a random input (seed 3)"]
    if imported.quantized:
        qnet = imported.qnet
        how = "the model's own QDQ quantization"
    else:
        qnet = imported.quantize(calibration_images(args, h))
        how = ("post-training quantization on " + (args.calibrate or
                                                   f"{args.calib} random images"))
    with device(args) as acc:
        outs, records = run_network_batch(acc, qnet, [qnet.quantize_input(im) for im in images],
                                          check=args.check)
    results = []
    for label, out in zip(labels, outs, strict=True):
        logits = qnet.dequantize_output(out)
        results.append({"input": label, "logits": logits.tolist(), "top5": top5(logits)})
    layers = [r.as_dict() for r in records]
    out = {"model": args.model, "quantization": how, "input_size": [h, w],
           "inputs": results, "layers": layers,
           "top5": results[0]["top5"], "logits": results[0]["logits"]}
    if args.check:
        out["all_match"] = all(r.match for r in records if r.where == "device")
    lines = [f"{args.model} ({how}), input {h}x{w}"]
    for r in results:
        best = ", ".join(f"{t['class']} {t['name']} {t['prob'] * 100:.1f}%"
                         for t in r["top5"][:3])
        lines.append(f"{r['input']}: {best}")
    lines.append(f"Fire layers on the device: {sum(r.cycles or 0 for r in records):,} cycles"
                 + (f"; bit-exact: {'yes' if out['all_match'] else 'NO'}" if args.check else ""))
    emit(args, out, "\n".join(lines))
    return 0 if (not args.check or out["all_match"]) else 1


def cmd_compare_onnx(args) -> int:
    from sw.onnx_compare import compare
    from sw.onnx_import import load_model

    from .runner import run_network_batch

    imported = load_model(args.model)
    with device(args) as acc:
        result = compare(
            imported,
            run_fires=lambda name, layer, xs: [r.output for r in acc.run_fire_batch(layer, xs)],
            run_network=lambda qnet, xs: run_network_batch(acc, qnet, xs)[0],
            inputs=args.inputs)
    conf = result["top1_agreement_confident"]
    text = "\n".join([
        f"{args.model} on {result['inputs']} random {result['input_size'][0]}x"
        f"{result['input_size'][1]} inputs, against onnxruntime:",
        f"Fire outputs (fed onnxruntime's inputs): at most {result['fire_max_lsb']} LSB off, "
        f"{result['fire_identical_fraction'] * 100:.2f}% of {result['fire_values']:,} values "
        "identical",
        f"logits SQNR {result['logits_sqnr_db']:.2f} dB",
        f"top-1 agreement {result['top1_agreement'] * 100:.1f}% overall; "
        + (f"{conf * 100:.1f}% of the {result['confident_inputs']} inputs whose top-1 leads by "
           "more than 2 LSB" if conf is not None else "no input leads by more than 2 LSB"),
    ])
    emit(args, result, text)
    return 0


def cmd_infer(args) -> int:
    if args.model or args.input:
        if not args.model:
            raise ImageError("--input X.npy goes with --model")
        return cmd_infer_onnx(args)
    net, weights, label, ident, result = _run(args, args.check)
    best = top5(result.logits)
    layers = [r.as_dict() for r in result.layers]
    out = {"arch": net.name, "weights": weights.source, "input": label,
           "top5": best, "layers": layers, "logits": result.logits.tolist(),
           "seconds": result.seconds, "device_cycles": result.device_cycles,
           "clock_hz": ident.clock_hz}
    if args.check:
        out["all_match"] = result.all_match
    lines = [f"{net.name} on {label}", f"weights: {weights.source}", "top-5:"]
    lines += [f"  {t['prob'] * 100:6.2f}%  {t['class']:4d} {t['name']}" for t in best]
    lines.append(f"{'layer':<10} {'on':<7} {'cycles':>11} {'ms':>9}"
                 + ("  bit-exact" if args.check else ""))
    for r in result.layers:
        cyc = f"{r.cycles:,}" if r.cycles is not None else "-"
        mark = "" if r.match is None else ("  yes" if r.match else "  NO")
        lines.append(f"{r.name:<10} {r.where:<7} {cyc:>11} {r.seconds * 1e3:>9.1f}{mark}")
    lines.append(f"Fire layers on the device: {result.device_cycles:,} cycles = "
                 f"{result.device_cycles / ident.clock_hz * 1e3:.1f} ms at "
                 f"{ident.clock_hz / 1e6:g} MHz; whole inference {result.seconds:.1f} s wall")
    if args.check:
        lines.append("every Fire layer bit-exact with the golden model: "
                     + ("yes" if result.all_match else "NO"))
    emit(args, out, "\n".join(lines))
    return 0 if (not args.check or result.all_match) else 1


def cmd_bench(args) -> int:
    net, weights, label, ident, result = _run(args, args.check)
    baud = args.baud or ident.baud
    rows, wire_total, payload_total, frame_s = [], 0, 0, 0.0
    for r in result.layers:
        if r.where != "device":
            continue
        f = r.fire
        down_s, up_s = f.bytes_down * 10 / baud, f.bytes_up * 10 / baud
        device_s = f.cycles / ident.clock_hz
        # the UART is full duplex and the engine overlaps both: the slowest of the three
        layer_s = max(down_s, up_s, device_s)
        frame_s += layer_s
        wire_total += f.bytes_down + f.bytes_up
        payload_total += f.payload_down + f.payload_up
        rows.append({"layer": r.name, "cycles": f.cycles, "runs": f.runs,
                     "bytes_down": f.bytes_down, "bytes_up": f.bytes_up,
                     "payload_down": f.payload_down, "payload_up": f.payload_up,
                     "wire_ms_down": down_s * 1e3, "wire_ms_up": up_s * 1e3,
                     "device_ms": device_s * 1e3, "layer_ms": layer_s * 1e3,
                     "match": r.match})
    overhead = wire_total / payload_total
    fps = 1 / frame_s
    out = {"arch": net.name, "baud": baud, "clock_hz": ident.clock_hz, "layers": rows,
           "protocol_overhead": overhead, "projected_fps": fps, "uart_limit_fps": UART_LIMIT_FPS,
           "device_cycles": sum(r["cycles"] for r in rows), "sim_seconds": result.seconds}
    lines = [f"{net.name}: Fire layers over the link at {baud:,} baud, device at "
             f"{ident.clock_hz / 1e6:g} MHz",
             f"{'layer':<7} {'cycles':>10} {'down B':>10} {'up B':>10} {'wire ms down':>13} "
             f"{'up':>8} {'device ms':>10}"]
    for r in rows:
        lines.append(f"{r['layer']:<7} {r['cycles']:>10,} {r['bytes_down']:>10,} "
                     f"{r['bytes_up']:>10,} {r['wire_ms_down']:>13.1f} {r['wire_ms_up']:>8.1f} "
                     f"{r['device_ms']:>10.2f}")
    lines.append(f"protocol overhead (wire bytes / payload bytes): {overhead:.4f}")
    lines.append(f"projected Fire-only offload on the board: {fps:.2f} frames/s "
                 f"(UART limit about {UART_LIMIT_FPS} frames/s; device compute alone "
                 f"{ident.clock_hz / out['device_cycles']:.1f} frames/s)")
    emit(args, out, "\n".join(lines))
    return 0 if (not args.check or result.all_match) else 1


COMMANDS = {
    "info": (cmd_info, "the device's identity (engine parameters) and counters"),
    "run-fire": (cmd_run_fire, "run one Fire layer of a network on the device"),
    "infer": (cmd_infer, "whole-network inference, Fire layers on the device"),
    "bench": (cmd_bench, "per-layer device cycles, link bytes and wire time; projected fps"),
    "compare-onnx": (cmd_compare_onnx, "a QDQ ONNX model here against onnxruntime: Fire "
                                       "outputs, logits SQNR, top-1 agreement"),
}


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m sw.driver", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    for name, (_, help_text) in COMMANDS.items():
        s = sub.add_parser(name, help=help_text, description=help_text)
        s.add_argument("--port", help="serial port of a board (default: the simulated board)")
        s.add_argument("--baud", type=int, help="link baud (default: the board's, 12 Mbaud "
                                                "for the Arty A7)")
        s.add_argument("--board", default=DEFAULT_BOARD, choices=sorted(BOARDS),
                       help=f"board definition (default: {DEFAULT_BOARD})")
        s.add_argument("--timeout", type=float, default=10.0,
                       help="seconds without an answer before a command fails (default: 10)")
        s.add_argument("--json", action="store_true", help="print machine-readable JSON")
        if name == "info":
            continue
        if name == "compare-onnx":
            s.add_argument("--model", metavar="MODEL.onnx", required=True,
                           help="a QDQ model from onnxruntime.quantization.quantize_static")
            s.add_argument("--inputs", type=int, default=100, metavar="N",
                           help="random inputs for the comparison (default: 100)")
            continue
        s.add_argument("--arch", default="squeezenet1_1", choices=sorted(ARCHS),
                       help="network (default: squeezenet1_1)")
        s.add_argument("--weights", metavar="FILE",
                       help=".npz with torchvision names, or .pth with torch installed "
                            "(default: deterministic random init)")
        s.add_argument("--size", type=int, default=224, metavar="N",
                       help="input height and width (default: 224; an ONNX model's own)")
        s.add_argument("--calib", type=int, default=8, metavar="N",
                       help="random calibration images (default: 8)")
        s.add_argument("--calibrate", metavar="DIR",
                       help="calibrate on the PNG/JPEG images in DIR instead")
        s.add_argument("--check", action="store_true",
                       help="compare every device layer with the golden model")
        if name == "run-fire":
            s.add_argument("--layer", default="fire2", help="Fire layer (default: fire2)")
        if name in ("infer", "bench"):
            s.add_argument("--image", metavar="PATH", help="PNG or JPEG (default: random)")
        if name == "infer":
            s.add_argument("--model", metavar="MODEL.onnx",
                           help="run an ONNX SqueezeNet (float: quantized here; QDQ: as is)")
            s.add_argument("--input", metavar="X.npy",
                           help="an already-normalized float32 batch (N, 3, H, W) instead of "
                                "an image")
    return ap


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    run, _ = COMMANDS[args.command]
    try:
        return run(args)
    except (DriverError, ImageError, WeightsError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted (the device was reset)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
