"""ONNX models of this project's networks, as ``torch.onnx.export`` lays SqueezeNet out.

Neither torch nor torchvision is needed: the graph is written with ``onnx.helper`` in
torchvision's structure and parameter names (NCHW, Conv/Relu/MaxPool(ceil)/Concat,
GlobalAveragePool, Flatten), so tests and users without torch get the same models a
``torch.onnx.export(torchvision.models.squeezenet1_1(...))`` gives. ``quantize_qdq`` runs
onnxruntime's own static quantizer (QDQ, per-channel int8 weights, int8 activations).
"""

from __future__ import annotations

import numpy as np

from .network import Conv, Fire, GlobalAvgPool, MaxPool, Network
from .weights import Weights

OPSET = 17


def export_float(net: Network, weights: Weights, size: int = 224):
    """The float network as an ONNX ModelProto with input ``input`` (N, 3, size, size)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits = [], []
    counter = [0]

    def name(kind):
        counter[0] += 1
        return f"{kind}_{counter[0]}"

    def conv(x, prefix, k, stride, pad, tag, relu=True):
        w = np.asarray(weights[f"{prefix}.weight"], dtype=np.float32)
        b = np.asarray(weights[f"{prefix}.bias"], dtype=np.float32)
        inits.extend([numpy_helper.from_array(w, f"{prefix}.weight"),
                      numpy_helper.from_array(b, f"{prefix}.bias")])
        y = f"/{tag}/Conv_output_0"
        nodes.append(helper.make_node("Conv", [x, f"{prefix}.weight", f"{prefix}.bias"], [y],
                                      name=f"/{tag}/Conv", kernel_shape=[k, k],
                                      strides=[stride, stride], pads=[pad] * 4))
        if not relu:
            return y
        r = f"/{tag}/Relu_output_0"
        nodes.append(helper.make_node("Relu", [y], [r], name=f"/{tag}/Relu"))
        return r

    x = "input"
    for layer in net.layers:
        if isinstance(layer, Conv):
            tag = layer.prefix.replace(".", "/")
            x = conv(x, layer.prefix, layer.kernel, layer.stride, layer.pad, tag, layer.relu)
        elif isinstance(layer, MaxPool):
            y = f"/{layer.name}/MaxPool_output_0"
            nodes.append(helper.make_node("MaxPool", [x], [y], name=f"/{layer.name}/MaxPool",
                                          kernel_shape=[layer.kernel] * 2,
                                          strides=[layer.stride] * 2, ceil_mode=1))
            x = y
        elif isinstance(layer, Fire):
            tag = layer.prefix.replace(".", "/")
            s = conv(x, f"{layer.prefix}.squeeze", 1, 1, 0, f"{tag}/squeeze")
            e1 = conv(s, f"{layer.prefix}.expand1x1", 1, 1, 0, f"{tag}/expand1x1")
            e3 = conv(s, f"{layer.prefix}.expand3x3", 3, 1, 1, f"{tag}/expand3x3")
            y = f"/{tag}/Concat_output_0"
            nodes.append(helper.make_node("Concat", [e1, e3], [y], name=f"/{tag}/Concat",
                                          axis=1))
            if layer.bypass:
                z = f"/{tag}/Add_output_0"
                nodes.append(helper.make_node("Add", [y, x], [z], name=f"/{tag}/Add"))
                y = z
            x = y
        elif isinstance(layer, GlobalAvgPool):
            y = "/classifier/GlobalAveragePool_output_0"
            nodes.append(helper.make_node("GlobalAveragePool", [x], [y],
                                          name="/classifier/GlobalAveragePool"))
            nodes.append(helper.make_node("Flatten", [y], ["output"], name="/Flatten", axis=1))
            x = "output"
    graph = helper.make_graph(
        nodes, net.name,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, size, size])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", net.num_classes])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="squeezefpga")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def quantize_qdq(float_path: str, out_path: str, calibration: list[np.ndarray]) -> None:
    """onnxruntime's static quantizer: QDQ, per-channel int8 weights, int8 activations."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._it = iter([{"input": x[None].astype(np.float32)} for x in calibration])

        def get_next(self):
            return next(self._it, None)

    quantize_static(float_path, out_path, Reader(), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QInt8,
                    weight_type=QuantType.QInt8)


def main(argv=None) -> int:
    """python -m sw.onnx_export --arch squeezenet1_1 --size 96 --out m.onnx [--qdq q.onnx]"""
    import argparse
    import sys

    import onnx

    from .images import random_images
    from .model import get_weights
    from .network import ARCHS, get_arch

    ap = argparse.ArgumentParser(prog="python -m sw.onnx_export",
                                 description="Write a network as a float ONNX model (torch "
                                             "export layout) and, optionally, onnxruntime's "
                                             "QDQ quantization of it.")
    ap.add_argument("--arch", default="squeezenet1_1", choices=sorted(ARCHS))
    ap.add_argument("--weights", help=".npz or .pth (default: deterministic random init)")
    ap.add_argument("--size", type=int, default=224, help="input size (default: 224)")
    ap.add_argument("--out", required=True, help="float model path")
    ap.add_argument("--qdq", help="also write onnxruntime's QDQ quantization here")
    ap.add_argument("--calib", type=int, default=16,
                    help="random calibration images for the quantizer (default: 16)")
    args = ap.parse_args(argv)
    try:
        net = get_arch(args.arch)
        weights = get_weights(net, args.weights)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    onnx.save(export_float(net, weights, args.size), args.out)
    print(f"wrote {args.out} ({net.name}, {weights.source}, input {args.size})")
    if args.qdq:
        calib = [im.transpose(2, 0, 1) for im in random_images(args.calib, args.size, seed=1)]
        quantize_qdq(args.out, args.qdq, calib)
        print(f"wrote {args.qdq} (onnxruntime quantize_static: QDQ, per-channel int8)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
