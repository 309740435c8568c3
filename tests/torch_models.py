"""Models made by the real tools, for the ONNX tests: torchvision's SqueezeNets and a small
Fire network, exported by torch's two ONNX exporters (the default, dynamo-based one and the
legacy TorchScript one) and quantized by onnxruntime's ``quantize_static``.

Needs torch, torchvision and onnxscript (the project's ``torch`` extra). Run as a script it
prints the issue-14 table: every torchvision case through this project's golden model (which
the device matches bit for bit, tests/test_onnx.py) against onnxruntime:

    .venv/bin/python tests/torch_models.py [--size 64] [--inputs 40] [--json]
"""

from __future__ import annotations

import contextlib
import sys
import warnings
from pathlib import Path

from sw.images import random_images

SIZE = 64  #: small inputs keep the tests quick; every layer still has an output


def torchvision_squeezenet(arch: str, biases: str = "zero", seed: int = 0):
    """torchvision's ``arch`` (``squeezenet1_0`` or ``squeezenet1_1``), randomly initialized
    as torchvision does (every bias zero), or with ``biases="random"`` ones."""
    import torch
    import torchvision

    torch.manual_seed(seed)
    model = getattr(torchvision.models, arch)(weights=None).eval()
    if biases == "random":
        with torch.no_grad():
            for module in model.modules():
                if isinstance(module, torch.nn.Conv2d):
                    module.bias.uniform_(-0.05, 0.05)
    return model


def fire_network(num_classes: int = 10, seed: int = 0):
    """A small classifier of Fire modules, one with the simple bypass (a user's own model)."""
    import torch
    from torch import nn

    class Fire(nn.Module):
        def __init__(self, cin, s, e1, e3, bypass=False):
            super().__init__()
            self.squeeze = nn.Conv2d(cin, s, 1)
            self.expand1x1 = nn.Conv2d(s, e1, 1)
            self.expand3x3 = nn.Conv2d(s, e3, 3, padding=1)
            self.bypass = bypass

        def forward(self, x):
            s = torch.relu(self.squeeze(x))
            y = torch.cat([torch.relu(self.expand1x1(s)), torch.relu(self.expand3x3(s))], 1)
            return y + x if self.bypass else y

    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(3, 32, 3, stride=2), nn.ReLU(), nn.MaxPool2d(3, 2, ceil_mode=True),
        Fire(32, 8, 16, 16), Fire(32, 8, 16, 16, bypass=True),
        nn.MaxPool2d(3, 2, ceil_mode=True), Fire(32, 12, 24, 24),
        nn.Dropout(0.5), nn.Conv2d(48, num_classes, 1), nn.ReLU(),
        nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten())
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                module.bias.uniform_(-0.05, 0.05)
    return model.eval()


def export(model, path, *, dynamo: bool, size: int = SIZE, opset: int | None = None) -> str:
    """``torch.onnx.export`` with a dynamic batch dimension; ``dynamo=False`` is the legacy
    exporter. Their deprecation and tracing notices are the exporters' own, not ours."""
    import torch

    x = torch.randn(1, 3, size, size)
    kw = {"input_names": ["input"], "output_names": ["logits"], "dynamo": dynamo}
    if opset is not None:
        kw["opset_version"] = opset
    if dynamo:
        kw["dynamic_shapes"] = ({0: torch.export.Dim("N")},)
    else:
        kw["dynamic_axes"] = {"input": {0: "N"}, "logits": {0: "N"}}
    # the dynamo exporter prints its steps ("[torch.onnx] Obtain model graph ...") on stdout:
    # to stderr with them, so that stdout holds only results (--json)
    with warnings.catch_warnings(), contextlib.redirect_stdout(sys.stderr):
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), str(path), **kw)
    return str(path)


def quantize(float_path, out_path, *, activations: str = "int8", per_channel: bool = True,
             fmt: str = "QDQ", calibration: int = 8, size: int = SIZE) -> str:
    """onnxruntime's ``quantize_static``: int8 weights, ``activations`` int8 or uint8,
    ``fmt`` QDQ or QOperator, calibrated on ``calibration`` random images."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    images = [im.transpose(2, 0, 1)[None] for im in random_images(calibration, size, seed=1)]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._it = iter([{"input": x} for x in images])

        def get_next(self):
            return next(self._it, None)

    quantize_static(str(float_path), str(out_path), Reader(),
                    quant_format=getattr(QuantFormat, fmt), per_channel=per_channel,
                    activation_type=QuantType.QInt8 if activations == "int8"
                    else QuantType.QUInt8, weight_type=QuantType.QInt8)
    return str(out_path)


def golden_compare(path, inputs: int, images=None) -> dict:
    """:func:`sw.onnx_compare.compare` with the golden model standing in for the device."""
    from sw import ops
    from sw.onnx_compare import compare
    from sw.onnx_import import load_model

    return compare(load_model(path), lambda name, layer, xs: [ops.fire(x, layer) for x in xs],
                   lambda qnet, xs: [qnet.forward(x) for x in xs], inputs=inputs,
                   images=images)


#: The done-when cases: (arch, biases, exporter, activations, per-channel, format).
CASES = [(arch, biases, exporter, act, pc, "QDQ")
         for arch in ("squeezenet1_0", "squeezenet1_1") for biases in ("zero", "random")
         for exporter in ("dynamo", "legacy") for act in ("int8", "uint8")
         for pc in (True, False)] + \
        [(arch, "random", "dynamo", act, True, "QOperator")
         for arch in ("squeezenet1_0", "squeezenet1_1") for act in ("int8", "uint8")]


def main(argv=None) -> int:
    import argparse
    import json
    import tempfile
    import time

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=SIZE)
    ap.add_argument("--inputs", type=int, default=40)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        floats = {}
        for arch, biases, exporter, act, pc, fmt in CASES:
            key = (arch, biases, exporter)
            if key not in floats:
                floats[key] = export(torchvision_squeezenet(arch, biases),
                                     Path(tmp) / f"{'_'.join(key)}.onnx",
                                     dynamo=exporter == "dynamo", size=args.size)
            q = quantize(floats[key], Path(tmp) / f"{'_'.join(key)}_{act}_{pc}_{fmt}.onnx",
                         activations=act, per_channel=pc, fmt=fmt, size=args.size)
            start = time.perf_counter()
            r = golden_compare(q, args.inputs)
            k = r["ort_kernels_vs_reference"] or {}
            rows.append({"model": arch, "biases": biases, "exporter": exporter,
                         "format": fmt, "activations": act, "per_channel": pc,
                         "fire_max_lsb": r["fire_max_lsb"],
                         "logits_sqnr_db": r["logits_sqnr_db"],
                         "top1_agreement": r["top1_agreement"],
                         "ort_kernels_vs_reference_sqnr_db": k.get("logits_sqnr_db"),
                         "ort_kernels_vs_reference_top1": k.get("top1_agreement"),
                         "seconds": time.perf_counter() - start})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{args.inputs} random {args.size}x{args.size} inputs per case; ours: the golden "
          "model (= the device, bit for bit)")
    print(f"{'model':<14} {'biases':<6} {'exporter':<8} {'format':<9} {'act':<5} {'per-ch':<6} "
          f"{'fire LSB':>8} {'SQNR dB':>8} {'top-1':>6} {'ORT int vs ref dB':>17}")
    for r in rows:
        kernel = r["ort_kernels_vs_reference_sqnr_db"]
        print(f"{r['model']:<14} {r['biases']:<6} {r['exporter']:<8} {r['format']:<9} "
              f"{r['activations']:<5} {'yes' if r['per_channel'] else 'no':<6} "
              f"{r['fire_max_lsb']:>8} {r['logits_sqnr_db']:>8.2f} "
              f"{r['top1_agreement']:>6.3f} "
              f"{'-' if kernel is None else f'{kernel:.2f}':>17}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
