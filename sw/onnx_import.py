"""ONNX in: a float or QDQ-quantized SqueezeNet graph to this project's network.

The graph is read as a chain of layers. QuantizeLinear/DequantizeLinear pairs are folded
away into the scale and zero point of the tensor between them; weights arrive int8 through
their DequantizeLinear. Patterns recognised:

* **Fire**: a 1x1 Conv whose output feeds exactly a 1x1 Conv and a 3x3 Conv (padding 1),
  each followed by an optional Relu, concatenated [1x1, 3x3] on channels; an optional Add of
  that concat and the Fire's input is the simple bypass. These run on the engine.
* Conv (+ Relu), MaxPool (ceil mode), GlobalAveragePool, then Flatten/Reshape at the end:
  the host runs them with the golden model.

Anything else is refused with an error naming the node and the reason.

A QDQ model (onnxruntime's ``quantize_static``) keeps its own scales and zero points; the
expand convolutions requantize straight to the concat's scale (onnxruntime goes through each
branch's own scale first, a second rounding: the two agree within 1 LSB). A float model is
quantized with this project's post-training quantization.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from spec.quant import INT8, quantize_multiplier_pair

from . import ops
from .network import Conv, Fire, GlobalAvgPool, MaxPool, Network
from .quantize import QAvgPool, QConv, QuantizedNetwork, _requant, quantize_network
from .weights import Weights

_PASS_THROUGH = {"Identity", "Dropout"}
_TAIL = {"Flatten", "Reshape", "Squeeze"}
#: What :func:`load_model` maps, as its errors say it.
SUPPORTED = ("Fire modules, Conv (with an optional Relu), MaxPool (ceil mode), "
             "GlobalAveragePool, then Flatten, Reshape or Squeeze at the end; Identity and "
             "Dropout pass through")


def _names(ops) -> str:
    ops = sorted(ops)
    return ", ".join(ops[:-1]) + " or " + ops[-1]


class UnsupportedModel(ValueError):
    """A node or pattern the importer cannot map; the message names the node."""


@dataclass
class QParams:
    scale: float
    zero: int


@dataclass
class ImportedModel:
    """An ONNX model as a chain of this project's layers."""

    path: str
    net: Network
    input_size: tuple[int, int]
    quantized: bool  #: a QDQ model (its own scales) rather than a float one
    weights: Weights  #: float weights (dequantized for a QDQ model)
    qnet: QuantizedNetwork | None = None  #: for QDQ models, built from the model's scales
    #: per Fire layer: (input tensor, output tensor) as quantized in the graph
    fire_tensors: dict[str, tuple[str, str]] = field(default_factory=dict)
    #: tensor name -> the QuantizeLinear output holding its int8 values
    quantized_names: dict[str, str] = field(default_factory=dict)

    def quantize(self, calibration_images) -> QuantizedNetwork:
        """The integer network: the model's own for QDQ, post-training quantized otherwise."""
        if self.qnet is not None:
            return self.qnet
        return quantize_network(self.net, self.weights, calibration_images)


class _Graph:
    def __init__(self, model):
        from onnx import numpy_helper

        g = model.graph
        self.model = model
        self.init = {t.name: numpy_helper.to_array(t) for t in g.initializer}
        self.qparams: dict[str, QParams] = {}
        self.q_output: dict[str, str] = {}  # float tensor -> its QuantizeLinear output
        self.alias: dict[str, str] = {}  # DequantizeLinear output -> the float tensor
        self.const_weights: dict[str, tuple] = {}  # DQ output -> (int array, scale, zero)
        self.nodes = []
        q_of = {}
        for node in g.node:
            if node.op_type == "QuantizeLinear":
                s, z = self._scalar_qparams(node)
                self.qparams[node.input[0]] = QParams(s, z)
                self.q_output[node.input[0]] = node.output[0]
                q_of[node.output[0]] = node.input[0]
        for node in g.node:
            if node.op_type == "DequantizeLinear":
                src = node.input[0]
                if src in self.init:
                    scale = self.init[node.input[1]]
                    zero = self.init[node.input[2]] if len(node.input) > 2 else 0
                    self.const_weights[node.output[0]] = (self.init[src], scale, zero, node)
                elif src in q_of:
                    self.alias[node.output[0]] = q_of[src]
                else:
                    raise UnsupportedModel(f"node {node.name!r} (DequantizeLinear): its input "
                                           f"{src!r} is neither a constant nor quantized")
            elif node.op_type != "QuantizeLinear":
                self.nodes.append(node)
        self.consumers: dict[str, list] = {}
        for node in self.nodes:
            for name in node.input:
                self.consumers.setdefault(self.resolve(name), []).append(node)
        self.input = g.input[0].name
        self.output = self.resolve(g.output[0].name)

    def _scalar_qparams(self, node) -> tuple[float, int]:
        scale = self.init.get(node.input[1])
        zero = self.init.get(node.input[2]) if len(node.input) > 2 else np.array(0)
        if scale is None or np.size(scale) != 1:
            raise UnsupportedModel(f"node {node.name!r} (QuantizeLinear): activations must "
                                   "have one scale per tensor")
        if zero is not None and np.asarray(zero).dtype != np.int8:
            raise UnsupportedModel(f"node {node.name!r} (QuantizeLinear): activations must "
                                   f"be int8, not {np.asarray(zero).dtype}")
        return float(scale), int(zero)

    def resolve(self, name: str) -> str:
        while name in self.alias:
            name = self.alias[name]
        return name

    def users(self, tensor: str) -> list:
        return self.consumers.get(tensor, [])

    def attr(self, node, name, default=None):
        from onnx import helper

        for a in node.attribute:
            if a.name == name:
                return helper.get_attribute_value(a)
        return default

    def weight(self, name: str):
        """(float array, int array or None, per-channel scale or None) of a weight input."""
        if name in self.const_weights:
            q, scale, zero, node = self.const_weights[name]
            if np.any(np.asarray(zero) != 0):
                raise UnsupportedModel(f"node {node.name!r}: weights must be symmetric "
                                       "(zero point 0)")
            axis = self.attr(node, "axis", 1)
            scale = np.asarray(scale, dtype=np.float64)
            if scale.size > 1 and axis != 0:
                raise UnsupportedModel(f"node {node.name!r}: per-channel scales must be on "
                                       "axis 0 (output channels)")
            shape = (-1,) + (1,) * (q.ndim - 1)
            real = q.astype(np.float64) * (scale.reshape(shape) if scale.size > 1 else scale)
            return real.astype(np.float32), q.astype(np.int64), scale
        if name in self.init:
            return self.init[name].astype(np.float32), None, None
        raise UnsupportedModel(f"weight {name!r} is neither a constant nor a quantized one")


def _conv_info(g: _Graph, node, cur: str):
    if node.op_type != "Conv":
        return None
    k = g.attr(node, "kernel_shape")
    strides = g.attr(node, "strides", [1, 1])
    pads = g.attr(node, "pads", [0, 0, 0, 0])
    group = g.attr(node, "group", 1)
    dil = g.attr(node, "dilations", [1, 1])
    if group != 1 or list(dil) != [1, 1]:
        raise UnsupportedModel(f"node {node.name!r} (Conv): grouped or dilated convolution "
                               "is not supported")
    if k is None or k[0] != k[1] or strides[0] != strides[1] or len(set(pads)) != 1:
        raise UnsupportedModel(f"node {node.name!r} (Conv): only square kernels, equal "
                               "strides and symmetric padding are supported")
    if len(node.input) < 3:
        raise UnsupportedModel(f"node {node.name!r} (Conv): a bias is required")
    return {"node": node, "kernel": int(k[0]), "stride": int(strides[0]), "pad": int(pads[0])}


def _after_relu(g: _Graph, tensor: str):
    """The tensor after an optional Relu, and whether there was one."""
    users = g.users(tensor)
    if len(users) == 1 and users[0].op_type == "Relu":
        return g.resolve(users[0].output[0]), True
    return tensor, False


def _prefix(weight_name: str, default: str) -> str:
    return weight_name[:-len(".weight")] if weight_name.endswith(".weight") else default


def read_model(path):
    """``onnx.load`` with its failures as one :class:`UnsupportedModel` line.

    A truncated or non-ONNX file makes protobuf raise ``DecodeError`` from deep inside (or,
    for some bytes, parse into an empty model): both are "not a readable ONNX model".
    """
    import onnx
    from google.protobuf.message import DecodeError

    if not Path(path).exists():
        raise UnsupportedModel(f"model file {path} does not exist")
    if not Path(path).is_file():
        raise UnsupportedModel(f"model {path} is not a file")
    try:
        model = onnx.load(str(path))
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise UnsupportedModel(f"{path} is not a readable ONNX model (the file is truncated "
                               f"or of another kind: {str(exc).splitlines()[0]})") from None
    if not model.graph.node or not model.graph.input or not model.graph.output:
        raise UnsupportedModel(f"{path} is not a readable ONNX model (it holds no graph: "
                               "nodes, an input and an output)")
    return model


def load_model(path) -> ImportedModel:
    """Read an ONNX model (a path, or an ``onnx.ModelProto``) into a chain of layers (see
    the module docstring); :class:`UnsupportedModel` names what cannot be read or mapped."""
    model = read_model(path) if not hasattr(path, "graph") else path
    g = _Graph(model)
    shape = model.graph.input[0].type.tensor_type.shape.dim
    dims = [d.dim_value for d in shape]
    if len(dims) != 4 or dims[1] != 3 or not dims[2] or not dims[3]:
        raise UnsupportedModel(f"input {g.input!r}: expected a fixed (N, 3, H, W) shape, got "
                               f"{[d.dim_value or d.dim_param for d in shape]}")
    size = (dims[2], dims[3])
    quantized = bool(g.qparams)

    layers, arrays = [], {}
    fire_tensors, outputs = {}, {}
    conv_nodes = {}  # weight prefix -> its Conv node
    branches = {}  # Fire name -> its expand1x1 and expand3x3 output tensors
    counts = {"pool": 0}
    # SqueezeNet's numbering: conv1, fire2 ... fire9, conv10 count convolutions and Fires
    def number():
        return 1 + sum(isinstance(la, (Conv, Fire)) for la in layers)

    cur = g.resolve(g.input)
    outputs["input"] = cur
    channels = 3
    tail = False
    while cur != g.output:
        users = g.users(cur)
        if not users:
            raise UnsupportedModel(f"tensor {cur!r} leads nowhere: the graph is not a chain")
        if tail:
            node = users[0]
            if node.op_type not in _TAIL | _PASS_THROUGH:
                raise UnsupportedModel(f"node {node.name!r} ({node.op_type}): only "
                                       f"{_names(_TAIL)} may follow the global average pool")
            cur = g.resolve(node.output[0])
            continue
        fire = _match_fire(g, cur, users)
        if fire is not None:
            name = f"fire{number()}"
            sq_w = fire["squeeze"]["node"].input[1]
            prefix = _prefix(sq_w.rsplit(".squeeze", 1)[0] + ".weight"
                             if ".squeeze." in sq_w else sq_w, name)
            convs = {"squeeze": fire["squeeze"], "expand1x1": fire["e1"],
                     "expand3x3": fire["e3"]}
            w = {}
            for part, info in convs.items():
                real, _, _ = g.weight(info["node"].input[1])
                bias, _, _ = g.weight(info["node"].input[2])
                w[part] = (real, bias)
                arrays[f"{prefix}.{part}.weight"] = real
                arrays[f"{prefix}.{part}.bias"] = bias
                conv_nodes[f"{prefix}.{part}"] = info["node"]
            s, e1, e3 = (w["squeeze"][0].shape[0], w["expand1x1"][0].shape[0],
                         w["expand3x3"][0].shape[0])
            layer = Fire(name, prefix, channels, s, e1, e3, bypass=fire["add"] is not None)
            layers.append(layer)
            fire_tensors[name] = (cur, fire["output"])
            outputs[name] = fire["output"]
            outputs[f"{name}.squeeze"] = fire["s_out"]
            outputs[f"{name}.concat"] = fire["concat_out"]
            branches[name] = (fire["e1_out"], fire["e3_out"])
            channels = e1 + e3
            cur = fire["output"]
            continue
        if len(users) != 1:
            names = ", ".join(f"{u.name!r} ({u.op_type})" for u in users)
            raise UnsupportedModel(f"tensor {cur!r} branches to {names}: only Fire modules "
                                   "may branch")
        node = users[0]
        op = node.op_type
        if op == "Conv":
            info = _conv_info(g, node, cur)
            name = f"conv{number()}"
            real, _, _ = g.weight(node.input[1])
            bias, _, _ = g.weight(node.input[2])
            out, relu = _after_relu(g, g.resolve(node.output[0]))
            prefix = _prefix(node.input[1].replace("_DequantizeLinear_Output", ""), name)
            if prefix == name:
                prefix = f"host.{name}"
            arrays[f"{prefix}.weight"] = real
            arrays[f"{prefix}.bias"] = bias
            conv_nodes[prefix] = node
            if real.shape[1] != channels:
                raise UnsupportedModel(f"node {node.name!r} (Conv): expects {real.shape[1]} "
                                       f"input channels, the tensor has {channels}")
            layers.append(Conv(name, prefix, channels, real.shape[0], info["kernel"],
                               info["stride"], info["pad"], relu))
            channels = real.shape[0]
            outputs[name] = out
            cur = out
        elif op == "MaxPool":
            k = g.attr(node, "kernel_shape")
            strides = g.attr(node, "strides", [1, 1])
            pads = g.attr(node, "pads", [0, 0, 0, 0])
            if not g.attr(node, "ceil_mode", 0) or any(pads) or k[0] != k[1] \
                    or strides[0] != strides[1]:
                raise UnsupportedModel(f"node {node.name!r} (MaxPool): only square, unpadded "
                                       "pools in ceil mode (torchvision's) are supported")
            counts["pool"] += 1
            name = f"maxpool{counts['pool']}"
            layers.append(MaxPool(name, int(k[0]), int(strides[0])))
            cur = g.resolve(node.output[0])
            outputs[name] = cur
        elif op == "GlobalAveragePool":
            layers.append(GlobalAvgPool())
            cur = g.resolve(node.output[0])
            outputs["avgpool"] = cur
            tail = True
        elif op in _PASS_THROUGH:
            cur = g.resolve(node.output[0])
        elif op in _TAIL:
            after = f"after {layers[-1].name}" if layers else "on the input"
            raise UnsupportedModel(f"node {node.name!r} ({op}) {after}: {op} is supported "
                                   "only after GlobalAveragePool, at the end of the graph "
                                   "(the classifier is a 1x1 Conv, then GlobalAveragePool)")
        else:
            raise UnsupportedModel(f"node {node.name!r} ({op}): {op} is not supported; the "
                                   f"importer maps {SUPPORTED}")
    if not layers or not isinstance(layers[-1], GlobalAvgPool):
        raise UnsupportedModel("the graph must end in GlobalAveragePool (then Flatten)")
    last_conv = [la for la in layers if isinstance(la, Conv)][-1]
    net = Network(Path(str(getattr(path, "name", path))).stem or "onnx", tuple(layers),
                  num_classes=last_conv.cout, default_input=size[0])
    weights = Weights(arrays, f"{Path(str(path)).name} ({'QDQ' if quantized else 'float'})")
    imported = ImportedModel(str(path), net, size, quantized, weights,
                             fire_tensors=fire_tensors, quantized_names=dict(g.q_output))
    if quantized:
        imported.qnet = _qdq_network(g, net, outputs, weights, conv_nodes, branches)
    return imported


def _match_fire(g: _Graph, cur: str, users: list):
    """A Fire module starting at tensor ``cur``, or None."""
    convs = [u for u in users if u.op_type == "Conv"]
    adds = [u for u in users if u.op_type == "Add"]
    if len(convs) != 1 or len(users) != 1 + len(adds) or len(adds) > 1:
        return None
    squeeze = _conv_info(g, convs[0], cur)
    if squeeze["kernel"] != 1 or squeeze["stride"] != 1:
        return None
    s_out, _ = _after_relu(g, g.resolve(squeeze["node"].output[0]))
    branches = g.users(s_out)
    if len(branches) != 2 or any(b.op_type != "Conv" for b in branches):
        return None
    infos = [_conv_info(g, b, s_out) for b in branches]
    by_kernel = {i["kernel"]: i for i in infos}
    if set(by_kernel) != {1, 3}:
        return None
    e1, e3 = by_kernel[1], by_kernel[3]
    if e1["stride"] != 1 or e3["stride"] != 1 or e1["pad"] != 0 or e3["pad"] != 1:
        raise UnsupportedModel(f"node {e3['node'].name!r}: a Fire expand must be 1x1 and 3x3 "
                               "(padding 1), stride 1")
    e1_out, _ = _after_relu(g, g.resolve(e1["node"].output[0]))
    e3_out, _ = _after_relu(g, g.resolve(e3["node"].output[0]))
    cat_users = g.users(e1_out)
    if len(cat_users) != 1 or cat_users[0].op_type != "Concat" \
            or g.users(e3_out) != cat_users:
        raise UnsupportedModel(f"node {e1['node'].name!r}: the Fire expands must meet in one "
                               "Concat")
    cat = cat_users[0]
    if g.attr(cat, "axis") not in (1, -3):
        raise UnsupportedModel(f"node {cat.name!r} (Concat): must join channels (axis 1)")
    order = [g.resolve(i) for i in cat.input]
    if order != [e1_out, e3_out]:
        raise UnsupportedModel(f"node {cat.name!r} (Concat): the engine outputs [1x1, 3x3]; "
                               "this model concatenates them in another order")
    cat_out = g.resolve(cat.output[0])
    out, add = cat_out, None
    if adds:
        add = adds[0]
        if sorted(g.resolve(i) for i in add.input) != sorted([cat_out, cur]):
            raise UnsupportedModel(f"node {add.name!r} (Add): a bypass must add the Fire's "
                                   "input and its concat")
        out = g.resolve(add.output[0])
    return {"squeeze": squeeze, "e1": e1, "e3": e3, "s_out": s_out, "concat_out": cat_out,
            "e1_out": e1_out, "e3_out": e3_out, "add": add, "output": out}


def _qdq_network(g: _Graph, net: Network, outputs: dict, weights: Weights,
                 conv_nodes: dict, branches: dict) -> QuantizedNetwork:
    """The QDQ model's own integer network: its int8 weights, int32 biases, scales."""

    def qp(tensor: str, what: str) -> QParams:
        if tensor not in g.qparams:
            raise UnsupportedModel(f"tensor {tensor!r} ({what}) is not quantized: a QDQ model "
                                   "must quantize every activation")
        return g.qparams[tensor]

    scales = {name: (qp(t, name).scale, qp(t, name).zero) for name, t in outputs.items()}
    layers: dict[str, object] = {}

    def conv_layer(node, x: QParams, y: QParams, relu: bool, branch: QParams | None = None):
        """A quantized convolution; ``branch``: the expand's own quantization, whose largest
        value, requantized to ``y``, becomes the ceiling (onnxruntime saturates there)."""
        _, wq, s_w = g.weight(node.input[1])
        b_real, bq, s_b = g.weight(node.input[2])
        if wq is None:
            raise UnsupportedModel(f"node {node.name!r}: weights are not quantized")
        s_w = np.broadcast_to(np.asarray(s_w, dtype=np.float64), (wq.shape[0],))
        expected = x.scale * s_w
        if bq is None or not np.allclose(np.broadcast_to(s_b, expected.shape), expected,
                                         rtol=1e-4):
            bq = np.rint(b_real.astype(np.float64) / expected).astype(np.int64)
        rq = _requant(x.scale, s_w, y.scale, y.zero, relu or y.zero == INT8.act_min)
        if branch is not None:
            top = y.zero + round((INT8.act_max - branch.zero) * branch.scale / y.scale)
            if top < INT8.act_max:
                rq = dataclasses.replace(rq, hi=max(top, y.zero))
        return ops.ConvLayer(wq, bq.astype(np.int64), rq)

    x = QParams(*scales["input"])
    for layer in net.layers:
        if isinstance(layer, Conv):
            node = conv_nodes[layer.prefix]
            y = QParams(*scales[layer.name])
            layers[layer.name] = QConv(x.zero, conv_layer(node, x, y, layer.relu),
                                       layer.stride, layer.pad)
        elif isinstance(layer, MaxPool):
            y = QParams(*scales[layer.name])
            if not (np.isclose(y.scale, x.scale) and y.zero == x.zero):
                raise UnsupportedModel(f"{layer.name}: a max pool must keep its input's scale")
        elif isinstance(layer, Fire):
            sq = QParams(*scales[f"{layer.name}.squeeze"])
            cat = QParams(*scales[f"{layer.name}.concat"])
            p = layer.prefix
            squeeze = conv_layer(conv_nodes[f"{p}.squeeze"], x, sq, True)
            e1 = conv_layer(conv_nodes[f"{p}.expand1x1"], sq, cat, True,
                            branch=qp(branches[layer.name][0], f"{layer.name} expand1x1"))
            e3 = conv_layer(conv_nodes[f"{p}.expand3x3"], sq, cat, True,
                            branch=qp(branches[layer.name][1], f"{layer.name} expand3x3"))
            bypass = None
            if layer.bypass:
                y = QParams(*scales[layer.name])
                a, b, n = quantize_multiplier_pair(cat.scale / y.scale, x.scale / y.scale)
                bypass = ops.AddParams(cat.zero, x.zero, a, b, n, y.zero)
            layers[layer.name] = ops.FireLayer(x.zero, squeeze, e1, e3, bypass)
        elif isinstance(layer, GlobalAvgPool):
            y = QParams(*scales[layer.name])
            layers[layer.name] = QAvgPool(x.scale, x.zero, y.scale, y.zero)
        x = QParams(*scales[layer.name])
    return QuantizedNetwork(net, INT8, layers, scales, weights.source)
