"""ONNX in: a float, QDQ or QOperator SqueezeNet graph, as the real tools write them, to this
project's network.

The graph is first normalized (:func:`_normalize`): ``Constant`` nodes, ``Identity`` and
``Dropout`` and every subgraph computed from constants alone are folded (the legacy
TorchScript exporter routes equal weights through ``Identity``); a QOperator model
(``QLinearConv``, ``QLinearConcat``, ``QLinearAdd``, ``QLinearGlobalAveragePool``,
``QLinearAveragePool``, and ``MaxPool``/``Reshape``/``Flatten`` on integer tensors) is rewritten
into the equivalent QDQ form, every integer tensor a ``QuantizeLinear`` output.

Then the graph is read as a chain of layers. QuantizeLinear/DequantizeLinear pairs are folded
away into the scale and zero point of the tensor between them; weights arrive int8 through
their DequantizeLinear. Patterns recognised:

* **Fire**: a 1x1 Conv whose output feeds exactly a 1x1 Conv and a 3x3 Conv (padding 1),
  each followed by an optional Relu, concatenated [1x1, 3x3] on channels; an optional Add of
  that concat and the Fire's input is the simple bypass. These run on the engine.
* Conv (+ Relu; the bias may be absent, as the dynamo exporter drops all-zero ones), MaxPool
  (ceil mode), global average pooling (``GlobalAveragePool``, ``ReduceMean`` over the two
  spatial axes, or an ``AveragePool`` whose kernel is the whole map), then Flatten, Reshape
  or Squeeze at the end: the host runs them with the golden model.

Anything else is refused with an error naming the node and what would be needed. The batch
dimension may be dynamic; height and width must be fixed.

Activations may be int8 or uint8: a uint8 tensor ``q_u`` with zero point ``z_u`` is the
engine's int8 ``q_u - 128`` with zero point ``z_u - 128`` (the same real values,
``s (q - z)``, and the same rounding and clamping, shifted by 128), which is how it is read.
Weights are int8 with zero point 0, per output channel or per tensor.

A QDQ model (onnxruntime's ``quantize_static``) keeps its own scales and zero points. A Fire
expand whose own quantization differs from the concat's is rounded twice, as the model says
(Conv -> QuantizeLinear at the branch's scale, then DequantizeLinear -> Concat ->
QuantizeLinear at the concat's): the engine's first requantization goes to the branch's scale,
its second (:class:`spec.layers.Rescale`) to the concat's, with a multiplier chosen so that it
gives onnxruntime's own float32 result for every value the branch can hold
(:func:`rescale_like_onnxruntime`). A global average
pool left in float (onnxruntime does not quantize ``ReduceMean``) is computed exactly: the
sum at scale ``s_in / N``. A float model is quantized with this project's post-training
quantization.
"""

from __future__ import annotations

import ast
import dataclasses
import json
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np

from spec.layers import Rescale
from spec.quant import (
    INT8,
    RESCALE_MULT_BITS,
    RESCALE_SHIFT_MAX,
    quantize_multiplier_pair,
    quantize_rescale,
    rescale,
)

from . import ops
from .network import Conv, Fire, GlobalAvgPool, MaxPool, Network
from .quantize import QAvgPool, QConv, QuantizedNetwork, _requant, quantize_network
from .weights import Weights

_TAIL = {"Flatten", "Reshape", "Squeeze"}
_GLOBAL_POOLS = {"GlobalAveragePool", "ReduceMean", "AveragePool"}
#: What :func:`load_model` maps, as its errors say it.
SUPPORTED = ("Fire modules, Conv (with an optional Relu), MaxPool (ceil mode), "
             "GlobalAveragePool (or ReduceMean or AveragePool over the whole map), then "
             "Flatten, Reshape or Squeeze at the end; Identity, Dropout and Constant fold away")
#: Metadata keys a model's class names are read from (the first present).
LABEL_KEYS = ("labels", "classes", "class_names", "names")
#: Activation types the engine takes: its int8 directly, uint8 shifted by 128.
_ACTIVATION_SHIFT = {np.dtype(np.int8): 0, np.dtype(np.uint8): 128}


def _names(ops) -> str:
    ops = sorted(ops)
    return ", ".join(ops[:-1]) + " or " + ops[-1]


class UnsupportedModel(ValueError):
    """A node or pattern the importer cannot map; the message names the node."""


@dataclass
class QParams:
    scale: float
    zero: int  #: in the engine's int8 (a uint8 zero point less 128)


@dataclass
class ImportedModel:
    """An ONNX model as a chain of this project's layers."""

    path: str
    net: Network
    input_size: tuple[int, int]
    quantized: bool  #: a QDQ or QOperator model (its own scales) rather than a float one
    weights: Weights  #: float weights (dequantized for a quantized model)
    qnet: QuantizedNetwork | None = None  #: for quantized models, built from the model's scales
    #: per Fire layer: (input tensor, output tensor) as quantized in the graph
    fire_tensors: dict[str, tuple[str, str]] = field(default_factory=dict)
    #: tensor name -> the tensor in the model file holding its integer values
    quantized_names: dict[str, str] = field(default_factory=dict)
    #: integer tensor in the model file -> its element type, ``int8`` or ``uint8``
    quantized_dtypes: dict[str, str] = field(default_factory=dict)
    qformat: str = "float"  #: ``float``, ``QDQ`` or ``QOperator``
    labels: list[str] | None = None  #: class names from the model's metadata
    batch: int | None = None  #: a fixed batch dimension, None when dynamic
    input_name: str = "input"

    @property
    def num_classes(self) -> int:
        return self.net.num_classes

    def quantize(self, calibration_images) -> QuantizedNetwork:
        """The integer network: the model's own for QDQ, post-training quantized otherwise."""
        if self.qnet is not None:
            return self.qnet
        return quantize_network(self.net, self.weights, calibration_images)

    def to_int8(self, name: str, values: np.ndarray) -> np.ndarray:
        """An integer tensor of the model file (onnxruntime's output) in the engine's int8."""
        shift = 128 if self.quantized_dtypes.get(name) == "uint8" else 0
        return np.asarray(values).astype(np.int64) - shift


# ------------------------------------------------------------------------- normalization
def _attr(node, name, default=None):
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _constant_value(node) -> np.ndarray:
    from onnx import numpy_helper

    a = node.attribute[0]
    if a.name == "value":
        return numpy_helper.to_array(a.t)
    if a.name in ("value_float", "value_floats"):
        return np.array(_attr(node, a.name), dtype=np.float32)
    if a.name in ("value_int", "value_ints"):
        return np.array(_attr(node, a.name), dtype=np.int64)
    raise UnsupportedModel(f"node {node.name!r} (Constant): a {a.name} constant is not "
                           "supported (only tensors and numbers)")


def _evaluate(node, const: dict, opsets) -> list[np.ndarray]:
    """Run one node whose inputs are all constants (onnx's reference evaluator)."""
    import onnx
    from onnx import helper
    from onnx.reference import ReferenceEvaluator

    inputs = [i for i in node.input if i]
    graph = helper.make_graph(
        [node], "fold",
        [helper.make_value_info(i, helper.make_tensor_type_proto(
            helper.np_dtype_to_tensor_dtype(const[i].dtype), None)) for i in inputs],
        [helper.make_value_info(o, onnx.TypeProto()) for o in node.output if o])
    try:
        values = ReferenceEvaluator(helper.make_model(graph, opset_imports=opsets)).run(
            None, {i: const[i] for i in inputs})
    except Exception as exc:  # the evaluator raises whatever the operator raises
        raise UnsupportedModel(f"node {node.name!r} ({node.op_type}): computes a constant "
                               f"that could not be evaluated ({exc})") from None
    return [np.asarray(v) for v in values]


def _normalize(model):
    """The graph's nodes with constants, Identity and Dropout folded away, a QOperator model
    rewritten to QDQ; returns ``(nodes, constants, input name, output name)``."""
    from onnx import numpy_helper

    g = model.graph
    const = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    alias: dict[str, str] = {}
    nodes = []
    for node in g.node:
        if any(i in alias for i in node.input):
            renamed = type(node)()
            renamed.CopyFrom(node)
            for k, name in enumerate(node.input):
                renamed.input[k] = alias.get(name, name)
            node = renamed
        op, inputs = node.op_type, [i for i in node.input if i]
        if op == "Constant":
            const[node.output[0]] = _constant_value(node)
        elif op in ("Identity", "Dropout"):  # Dropout is an identity in inference
            if inputs[0] in const:
                const[node.output[0]] = const[inputs[0]]
            else:
                alias[node.output[0]] = inputs[0]
        elif inputs and all(i in const for i in inputs) and op != "DequantizeLinear":
            # a DequantizeLinear of a constant is a quantized weight: kept, to be read
            for name, value in zip(node.output, _evaluate(node, const, model.opset_import),
                                   strict=False):
                const[name] = value
        else:
            nodes.append(node)
    if any(n.op_type.startswith("QLinear") for n in nodes):
        nodes = _qoperator_to_qdq(nodes, const)
    inputs = [i.name for i in g.input if i.name not in const]
    if len(inputs) != 1:
        raise UnsupportedModel(f"the model has {len(inputs)} inputs "
                               f"({', '.join(inputs) or 'none'}): one image input is needed")
    if len(g.output) != 1:
        raise UnsupportedModel(f"the model has {len(g.output)} outputs: one (the logits) is "
                               "needed")
    out = g.output[0].name
    return nodes, const, inputs[0], alias.get(out, out)


#: QOperator nodes: (float op, positions of the (x, scale, zero) inputs, of the output's
#: (scale, zero)); QLinearConv's weights and bias are handled on their own.
_QLINEAR = {
    "QLinearAdd": ("Add", [(0, 1, 2), (3, 4, 5)], (6, 7)),
    "QLinearGlobalAveragePool": ("GlobalAveragePool", [(0, 1, 2)], (3, 4)),
    "QLinearAveragePool": ("AveragePool", [(0, 1, 2)], (3, 4)),
}
#: Ops a QOperator model applies to integer tensors as they are (same scale in and out).
_INTEGER_OPS = {"MaxPool", "Reshape", "Flatten", "Squeeze", "Unsqueeze"}


def _qoperator_to_qdq(nodes, const: dict) -> list:
    """QOperator nodes rewritten as DequantizeLinear -> float op -> QuantizeLinear.

    Every integer tensor keeps its name and becomes a QuantizeLinear output, so the QDQ
    reading applies unchanged and the tensors named are those of the model file.
    """
    from onnx import helper

    qp: dict[str, tuple[str, str]] = {}  # integer tensor -> (scale, zero point) names
    dq_of: dict[str, str] = {}
    out = []

    def dequantized(name, scale=None, zero=None, axis=None):
        if name in dq_of:
            return dq_of[name]
        scale, zero = (scale, zero) if scale is not None else qp[name]
        base = name[:-len("_quantized")] if name.endswith("_quantized") else name
        y = f"{base}_DequantizeLinear_Output"
        kw = {"axis": axis} if axis is not None else {}
        out.append(helper.make_node("DequantizeLinear", [name, scale, zero], [y],
                                    name=f"{base}_DequantizeLinear", **kw))
        dq_of[name] = y
        return y

    def quantize(node, y_float, y, scale, zero):
        out.append(helper.make_node("QuantizeLinear", [y_float, scale, zero], [y],
                                    name=f"{node.name}_QuantizeLinear"))
        qp[y] = (scale, zero)

    def attrs(node, drop=()):
        return {a.name: helper.get_attribute_value(a) for a in node.attribute
                if a.name not in drop}

    for node in nodes:
        op, i = node.op_type, node.input
        y = node.output[0] if node.output else ""
        if op == "QuantizeLinear":
            out.append(node)
            qp[y] = (i[1], i[2] if len(i) > 2 else "")
        elif op == "QLinearConv":
            x = dequantized(i[0], i[1], i[2])
            w = dequantized(i[3], i[4], i[5], axis=0)
            conv_in = [x, w]
            if len(i) > 8 and i[8]:
                bias_scale = f"{i[8]}_scale"
                const[bias_scale] = (np.asarray(const[i[1]], np.float32)
                                     * np.asarray(const[i[4]], np.float32))
                bias_zero = f"{i[8]}_zero"
                const[bias_zero] = np.zeros(const[bias_scale].shape, np.int32)
                conv_in.append(dequantized(i[8], bias_scale, bias_zero, axis=0))
            out.append(helper.make_node("Conv", conv_in, [f"{y}_float"], name=node.name,
                                        **attrs(node)))
            quantize(node, f"{y}_float", y, i[6], i[7])
        elif op == "QLinearConcat":
            xs = [dequantized(i[k], i[k + 1], i[k + 2]) for k in range(2, len(i), 3)]
            out.append(helper.make_node("Concat", xs, [f"{y}_float"], name=node.name,
                                        **attrs(node)))
            quantize(node, f"{y}_float", y, i[0], i[1])
        elif op in _QLINEAR:
            float_op, xs, (ys, yz) = _QLINEAR[op]
            if _attr(node, "channels_last", 0):
                raise UnsupportedModel(f"node {node.name!r} ({op}): channels_last=1 is not "
                                       "supported (the graph is NCHW)")
            args = [dequantized(i[a], i[b], i[c]) for a, b, c in xs]
            out.append(helper.make_node(float_op, args, [f"{y}_float"], name=node.name,
                                        **attrs(node, drop=("channels_last",))))
            quantize(node, f"{y}_float", y, i[ys], i[yz])
        elif op.startswith("QLinear"):
            raise UnsupportedModel(f"node {node.name!r} ({op}): {op} is not supported; a "
                                   "QOperator model maps QLinearConv, QLinearConcat, "
                                   "QLinearAdd (a Fire bypass), QLinearGlobalAveragePool and "
                                   "QLinearAveragePool (over the whole map)")
        elif op in _INTEGER_OPS and i[0] in qp:
            args = [dequantized(i[0])] + list(i[1:])
            out.append(helper.make_node(op, args, [f"{y}_float"], name=node.name,
                                        **attrs(node)))
            quantize(node, f"{y}_float", y, *qp[i[0]])
        elif any(name in qp for name in i) and op != "DequantizeLinear":
            raise UnsupportedModel(f"node {node.name!r} ({op}): takes an integer tensor; a "
                                   f"QOperator model may apply only {_names(_INTEGER_OPS)} "
                                   "to one as it is")
        else:
            out.append(node)
    return out


# ---------------------------------------------------------------------------- the graph
class _Graph:
    def __init__(self, model):
        nodes, self.init, self.input, output = _normalize(model)
        self.model = model
        self.qparams: dict[str, QParams] = {}
        self.q_output: dict[str, str] = {}  # float tensor -> its QuantizeLinear output
        self.q_dtype: dict[str, str] = {}  # QuantizeLinear output -> int8 or uint8
        self.alias: dict[str, str] = {}  # DequantizeLinear output -> the float tensor
        self.const_weights: dict[str, tuple] = {}  # DQ output -> (int array, scale, zero)
        self.nodes = []
        q_of = {}
        for node in nodes:
            if node.op_type == "QuantizeLinear":
                s, z, dtype = self._scalar_qparams(node)
                self.qparams[node.input[0]] = QParams(s, z)
                self.q_output[node.input[0]] = node.output[0]
                self.q_dtype[node.output[0]] = dtype
                q_of[node.output[0]] = node.input[0]
        for node in nodes:
            if node.op_type == "DequantizeLinear":
                src = node.input[0]
                if src in self.init:
                    scale = self.init[node.input[1]]
                    zero = self.init[node.input[2]] if len(node.input) > 2 and \
                        node.input[2] else 0
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
                if name and name not in self.init and name not in self.const_weights:
                    self.consumers.setdefault(self.resolve(name), []).append(node)
        self.output = self.resolve(output)

    def _scalar_qparams(self, node) -> tuple[float, int, str]:
        """(scale, zero point in the engine's int8, element type) of an activation."""
        from onnx import helper

        scale = self.init.get(node.input[1])
        has_zero = len(node.input) > 2 and node.input[2]
        if scale is None or np.size(scale) != 1 or (has_zero and
                                                      node.input[2] not in self.init):
            raise UnsupportedModel(f"node {node.name!r} (QuantizeLinear): activations must "
                                   "have one constant scale and zero point per tensor")
        if has_zero:
            zero = np.asarray(self.init[node.input[2]])
        else:  # no zero point: uint8 unless output_dtype (opset 21) says otherwise
            to = _attr(node, "output_dtype", 0)
            zero = np.zeros((), helper.tensor_dtype_to_np_dtype(to) if to else np.uint8)
        if zero.dtype not in _ACTIVATION_SHIFT:
            raise UnsupportedModel(f"node {node.name!r} (QuantizeLinear): activations must "
                                   f"be int8 or uint8 (the engine is 8-bit), not {zero.dtype}")
        shift = _ACTIVATION_SHIFT[zero.dtype]
        return float(scale), int(zero) - shift, zero.dtype.name

    def resolve(self, name: str) -> str:
        while name in self.alias:
            name = self.alias[name]
        return name

    def users(self, tensor: str) -> list:
        return self.consumers.get(tensor, [])

    def attr(self, node, name, default=None):
        return _attr(node, name, default)

    def weight(self, name: str):
        """(float array, int array or None, per-channel scale or None) of a weight input."""
        if name in self.const_weights:
            q, scale, zero, node = self.const_weights[name]
            unsigned = np.asarray(q).dtype == np.uint8
            q, zero = q.astype(np.int64), np.asarray(zero).astype(np.int64)
            if unsigned:  # uint8 weights: the int8 ones, shifted by 128
                q, zero = q - 128, zero - 128
            if np.any(zero != 0):
                raise UnsupportedModel(f"node {node.name!r}: weights must be symmetric "
                                       "(zero point 0, or 128 for uint8)")
            axis = self.attr(node, "axis", 1)
            scale = np.asarray(scale, dtype=np.float64)
            if scale.size > 1 and axis != 0:
                raise UnsupportedModel(f"node {node.name!r}: per-channel scales must be on "
                                       "axis 0 (output channels)")
            shape = (-1,) + (1,) * (q.ndim - 1)
            real = q.astype(np.float64) * (scale.reshape(shape) if scale.size > 1 else scale)
            return real.astype(np.float32), q, scale
        if name in self.init:
            return np.asarray(self.init[name]).astype(np.float32), None, None
        raise UnsupportedModel(f"weight {name!r} is neither a constant nor a quantized one")

    def bias(self, node, cout: int):
        """A Conv's bias as :meth:`weight` gives it; zeros when the Conv has none."""
        if len(node.input) > 2 and node.input[2]:
            return self.weight(node.input[2])
        return np.zeros(cout, np.float32), None, None


def _conv_info(g: _Graph, node, cur: str):
    if node.op_type != "Conv":
        return None
    k = g.attr(node, "kernel_shape")
    strides = g.attr(node, "strides", [1, 1])
    pads = g.attr(node, "pads", [0, 0, 0, 0])
    group = g.attr(node, "group", 1)
    dil = g.attr(node, "dilations", [1, 1])
    if g.attr(node, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        raise UnsupportedModel(f"node {node.name!r} (Conv): auto_pad is not supported "
                               "(explicit pads are)")
    if group != 1 or list(dil) != [1, 1]:
        raise UnsupportedModel(f"node {node.name!r} (Conv): grouped or dilated convolution "
                               "is not supported")
    if k is None:
        w = g.init.get(node.input[1])
        if w is None and node.input[1] in g.const_weights:
            w = g.const_weights[node.input[1]][0]
        k = list(np.shape(w)[2:]) if w is not None else None
    if k is None or k[0] != k[1] or strides[0] != strides[1] or len(set(pads)) != 1:
        raise UnsupportedModel(f"node {node.name!r} (Conv): only square kernels, equal "
                               "strides and symmetric padding are supported")
    return {"node": node, "kernel": int(k[0]), "stride": int(strides[0]), "pad": int(pads[0])}


def _after_relu(g: _Graph, tensor: str):
    """The tensor after an optional Relu, and whether there was one."""
    users = g.users(tensor)
    if len(users) == 1 and users[0].op_type == "Relu":
        return g.resolve(users[0].output[0]), True
    return tensor, False


def _prefix(weight_name: str, default: str) -> str:
    for suffix in ("_DequantizeLinear_Output", "_quantized"):
        weight_name = weight_name.replace(suffix, "")
    return weight_name[:-len(".weight")] if weight_name.endswith(".weight") else default


def _global_pool(g: _Graph, node, hw: tuple[int, int]) -> None:
    """Refuse a pooling node that is not an average over the whole ``hw`` map."""
    op = node.op_type
    if op == "ReduceMean":
        axes = g.attr(node, "axes")
        if axes is None and len(node.input) > 1 and node.input[1]:
            if node.input[1] not in g.init:
                raise UnsupportedModel(f"node {node.name!r} (ReduceMean): its axes must be "
                                       "a constant")
            axes = g.init[node.input[1]].tolist()
        if axes is None or sorted(int(a) % 4 for a in np.atleast_1d(axes)) != [2, 3]:
            raise UnsupportedModel(f"node {node.name!r} (ReduceMean): only a mean over the "
                                   f"two spatial axes (2, 3) is supported, not axes {axes}")
    elif op == "AveragePool":
        k = list(g.attr(node, "kernel_shape", []))
        pads = g.attr(node, "pads", [0, 0, 0, 0])
        if k != list(hw) or any(pads) or \
                g.attr(node, "auto_pad", b"NOTSET") not in (b"NOTSET", b"VALID"):
            raise UnsupportedModel(f"node {node.name!r} (AveragePool): only a pool over the "
                                   f"whole {hw[0]}x{hw[1]} map (global average pooling, "
                                   f"unpadded) is supported, not kernel {k}, pads {pads}")


def _check_tail(g: _Graph, node, channels: int) -> None:
    """Refuse a Reshape, Flatten or Squeeze after the pool that does not give (N, C)."""
    op = node.op_type
    if op == "Flatten" and g.attr(node, "axis", 1) != 1:
        raise UnsupportedModel(f"node {node.name!r} (Flatten): only axis 1, giving (N, "
                               f"{channels}), is supported")
    if op == "Reshape":
        shape = g.init.get(node.input[1])
        if shape is None:
            raise UnsupportedModel(f"node {node.name!r} (Reshape): its shape must be a "
                                   "constant (or computed from constants)")
        shape = [int(s) for s in np.asarray(shape).ravel()]
        if len(shape) != 2 or shape[1] not in (channels, -1) or \
                (shape[0] not in (-1, 0, 1) and shape[1] != channels):
            raise UnsupportedModel(f"node {node.name!r} (Reshape): to {shape}; only (N, "
                                   f"{channels}) is supported after the pool")
    if op == "Squeeze":
        axes = g.attr(node, "axes")
        if axes is None and len(node.input) > 1 and node.input[1]:
            axes = g.init.get(node.input[1])
        if axes is not None and sorted(int(a) % 4 for a in np.atleast_1d(axes)) != [2, 3]:
            raise UnsupportedModel(f"node {node.name!r} (Squeeze): only the two spatial "
                                   f"axes (2, 3) may be squeezed, not {axes}")


def _labels(model, classes: int) -> list[str] | None:
    """Class names from the model's metadata (:data:`LABEL_KEYS`): a JSON list, a dict of
    index to name (JSON or Python literal), or one name per line."""
    props = {p.key: p.value for p in model.metadata_props}
    key = next((k for k in LABEL_KEYS if k in props), None)
    if key is None:
        return None
    text = props[key].strip()
    value = None
    if text[:1] in "[{":
        try:
            value = json.loads(text)
        except ValueError:
            try:
                value = ast.literal_eval(text)
            except (ValueError, SyntaxError):
                value = None
    if isinstance(value, dict):
        try:
            value = [str(value[k]) for k in sorted(value, key=int)]
        except (TypeError, ValueError):
            value = None
    names = [str(v) for v in value] if isinstance(value, list) else text.splitlines()
    if len(names) != classes:
        raise UnsupportedModel(f"the model's metadata {key!r} names {len(names)} classes, "
                               f"but the model has {classes} outputs")
    return names


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
    graph_input = next(i for i in model.graph.input if i.name == g.input)
    shape = graph_input.type.tensor_type.shape.dim
    dims = [d.dim_value for d in shape]
    if len(dims) != 4 or dims[1] != 3 or not dims[2] or not dims[3]:
        raise UnsupportedModel(f"input {g.input!r}: expected a (N, 3, H, W) shape with H and "
                               "W fixed (N may be dynamic), got "
                               f"{[d.dim_value or d.dim_param or '?' for d in shape]}")
    size = (dims[2], dims[3])
    quantized = bool(g.qparams)
    qformat = ("QOperator" if any(n.op_type.startswith("QLinear") for n in model.graph.node)
               else "QDQ") if quantized else "float"

    layers, arrays = [], {}
    fire_tensors, outputs = {}, {}
    conv_nodes = {}  # weight prefix -> its Conv node
    branches = {}  # Fire name -> its expand1x1 and expand3x3 output tensors
    tail_tensors = []  # the tensors after the global average pool
    counts = {"pool": 0}
    # SqueezeNet's numbering: conv1, fire2 ... fire9, conv10 count convolutions and Fires
    def number():
        return 1 + sum(isinstance(la, (Conv, Fire)) for la in layers)

    cur = g.resolve(g.input)
    outputs["input"] = cur
    channels, hw = 3, size
    tail = False
    while cur != g.output:
        users = g.users(cur)
        if not users:
            raise UnsupportedModel(f"tensor {cur!r} leads nowhere: the graph is not a chain")
        if tail:
            node = users[0]
            if len(users) > 1 or node.op_type not in _TAIL:
                raise UnsupportedModel(f"node {node.name!r} ({node.op_type}): only "
                                       f"{_names(_TAIL)} may follow the global average pool")
            _check_tail(g, node, channels)
            cur = g.resolve(node.output[0])
            tail_tensors.append(cur)
            continue
        fire = _match_fire(g, cur, users)
        if fire is not None:
            name = f"fire{number()}"
            sq_w = _prefix(fire["squeeze"]["node"].input[1], "") + ".weight"
            prefix = _prefix(sq_w.rsplit(".squeeze", 1)[0] + ".weight"
                             if ".squeeze." in sq_w else sq_w, name)
            convs = {"squeeze": fire["squeeze"], "expand1x1": fire["e1"],
                     "expand3x3": fire["e3"]}
            w = {}
            for part, info in convs.items():
                real, _, _ = g.weight(info["node"].input[1])
                bias, _, _ = g.bias(info["node"], real.shape[0])
                w[part] = (real, bias)
                arrays[f"{prefix}.{part}.weight"] = real
                arrays[f"{prefix}.{part}.bias"] = bias
                conv_nodes[f"{prefix}.{part}"] = info["node"]
            s, e1, e3 = (w["squeeze"][0].shape[0], w["expand1x1"][0].shape[0],
                         w["expand3x3"][0].shape[0])
            if w["squeeze"][0].shape[1] != channels:
                raise UnsupportedModel(f"node {fire['squeeze']['node'].name!r} (Conv): "
                                       f"expects {w['squeeze'][0].shape[1]} input channels, "
                                       f"the tensor has {channels}")
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
            bias, _, _ = g.bias(node, real.shape[0])
            out, relu = _after_relu(g, g.resolve(node.output[0]))
            prefix = _prefix(node.input[1], name)
            if prefix == name:
                prefix = f"host.{name}"
            arrays[f"{prefix}.weight"] = real
            arrays[f"{prefix}.bias"] = bias
            conv_nodes[prefix] = node
            if real.shape[1] != channels:
                raise UnsupportedModel(f"node {node.name!r} (Conv): expects {real.shape[1]} "
                                       f"input channels, the tensor has {channels}")
            layer = Conv(name, prefix, channels, real.shape[0], info["kernel"],
                         info["stride"], info["pad"], relu)
            layers.append(layer)
            channels, hw = real.shape[0], layer.out_hw(*hw)
            outputs[name] = out
            cur = out
        elif op == "MaxPool":
            k = g.attr(node, "kernel_shape")
            strides = g.attr(node, "strides", [1, 1])
            pads = g.attr(node, "pads", [0, 0, 0, 0])
            if not g.attr(node, "ceil_mode", 0) or any(pads) or k[0] != k[1] \
                    or strides[0] != strides[1] or list(g.attr(node, "dilations", [1, 1])) \
                    != [1, 1] or len(node.output) > 1 and node.output[1]:
                raise UnsupportedModel(f"node {node.name!r} (MaxPool): only square, unpadded "
                                       "pools in ceil mode (torchvision's) are supported")
            counts["pool"] += 1
            name = f"maxpool{counts['pool']}"
            layer = MaxPool(name, int(k[0]), int(strides[0]))
            layers.append(layer)
            hw = layer.out_hw(*hw)
            cur = g.resolve(node.output[0])
            outputs[name] = cur
        elif op in _GLOBAL_POOLS:
            _global_pool(g, node, hw)
            layers.append(GlobalAvgPool())
            cur = g.resolve(node.output[0])
            outputs["avgpool"] = cur
            tail = True
        elif op in _TAIL:
            after = f"after {layers[-1].name}" if layers else "on the input"
            raise UnsupportedModel(f"node {node.name!r} ({op}) {after}: {op} is supported "
                                   "only after GlobalAveragePool, at the end of the graph "
                                   "(the classifier is a 1x1 Conv, then GlobalAveragePool)")
        else:
            raise UnsupportedModel(f"node {node.name!r} ({op}): {op} is not supported; the "
                                   f"importer maps {SUPPORTED}")
    if not layers or not isinstance(layers[-1], GlobalAvgPool):
        raise UnsupportedModel("the graph must end in global average pooling (then Flatten)")
    last_conv = [la for la in layers if isinstance(la, Conv)][-1]
    net = Network(Path(str(getattr(path, "name", path))).stem or "onnx", tuple(layers),
                  num_classes=last_conv.cout, default_input=size[0])
    weights = Weights(arrays, f"{Path(str(path)).name} ({qformat})")
    imported = ImportedModel(str(path), net, size, quantized, weights,
                             fire_tensors=fire_tensors, quantized_names=dict(g.q_output),
                             quantized_dtypes=dict(g.q_dtype), qformat=qformat,
                             labels=_labels(model, last_conv.cout),
                             batch=dims[0] or None, input_name=g.input)
    if quantized:
        imported.qnet = _qdq_network(g, net, outputs, weights, conv_nodes, branches,
                                     tail_tensors, hw)
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
                 conv_nodes: dict, branches: dict, tail_tensors: list,
                 pool_hw: tuple[int, int]) -> QuantizedNetwork:
    """The quantized model's own integer network: its int8 weights, int32 biases, scales."""

    def qp(tensor: str, what: str) -> QParams:
        if tensor not in g.qparams:
            raise UnsupportedModel(f"tensor {tensor!r} ({what}) is not quantized: a QDQ model "
                                   "must quantize every activation up to the global average "
                                   "pool")
        return g.qparams[tensor]

    # the pool's output: its own quantization, or the first of the tail's; none (onnxruntime
    # leaves ReduceMean in float) is the exact mean, the sum at scale s_in / N
    pooled = [t for t in [outputs["avgpool"], *tail_tensors] if t in g.qparams]
    scales = {name: (qp(t, name).scale, qp(t, name).zero) for name, t in outputs.items()
              if name != "avgpool"}
    exact_pool = not pooled
    if pooled:
        scales["avgpool"] = (g.qparams[pooled[0]].scale, g.qparams[pooled[0]].zero)
    layers: dict[str, object] = {}

    def conv_layer(node, x: QParams, y: QParams, relu: bool, branch: QParams | None = None):
        """A quantized convolution; ``branch``: the expand's own quantization, whose largest
        value, requantized to ``y``, becomes the ceiling (onnxruntime saturates there)."""
        _, wq, s_w = g.weight(node.input[1])
        if wq is None:
            raise UnsupportedModel(f"node {node.name!r}: weights are not quantized")
        b_real, bq, s_b = g.bias(node, wq.shape[0])
        s_w = np.broadcast_to(np.asarray(s_w, dtype=np.float64), (wq.shape[0],))
        expected = x.scale * s_w
        if bq is None or not np.allclose(np.broadcast_to(s_b, expected.shape), expected,
                                         rtol=1e-4):
            bq = np.rint(b_real.astype(np.float64) / expected).astype(np.int64)
        if branch is not None and (branch.scale, branch.zero) != (y.scale, y.zero):
            # rounded to the branch's own scale first, then to ``y``'s (the concat's)
            rq = _requant(x.scale, s_w, branch.scale, branch.zero, True)
            rq = dataclasses.replace(rq, rescale=rescale_like_onnxruntime(branch, y))
        else:
            rq = _requant(x.scale, s_w, y.scale, y.zero, relu or y.zero == INT8.act_min)
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
            if exact_pool:
                scales[layer.name] = (x.scale / (pool_hw[0] * pool_hw[1]), 0)
                layers[layer.name] = QAvgPool(x.scale, x.zero, *scales[layer.name],
                                              exact=True)
            else:
                y = QParams(*scales[layer.name])
                layers[layer.name] = QAvgPool(x.scale, x.zero, y.scale, y.zero)
        x = QParams(*scales[layer.name])
    return QuantizedNetwork(net, INT8, layers, scales, weights.source)


def onnxruntime_requantize(q: np.ndarray, a: QParams, b: QParams) -> np.ndarray:
    """onnxruntime's DequantizeLinear (``a``) then QuantizeLinear (``b``) of int8 values ``q``
    (the engine's int8), in its float32 arithmetic: ``float(q - z_a) * s_a``, divided by
    ``s_b``, rounded half to even, plus ``z_b``, saturated (MLAS's MlasQuantizeLinear; also
    the table QLinearConcat builds)."""
    x = (np.asarray(q, np.int64) - a.zero).astype(np.float32) * np.float32(a.scale)
    y = np.rint(x / np.float32(b.scale)).astype(np.int64) + b.zero
    return np.clip(y, INT8.act_min, INT8.act_max)


def rescale_like_onnxruntime(a: QParams, b: QParams) -> Rescale:
    """The second requantization from ``a`` to ``b`` of a ReLU'd tensor (values ``z_a`` to
    the largest), its multiplier chosen so that it equals :func:`onnxruntime_requantize` on
    every one of them: of the multipliers ``m / 2**n`` (``n`` as :func:`quantize_rescale`
    normalizes ``s_a / s_b``) inside the interval where round-half-up gives onnxruntime's
    values, the one nearest ``s_a / s_b``. When no multiplier is inside (an exact tie, which
    onnxruntime rounds to even, or an interval narrower than the multiplier's step), the
    nearest to ``s_a / s_b``: then at most those values differ by 1."""
    real = a.scale / b.scale
    m0, n = quantize_rescale(real)
    q = np.arange(a.zero, INT8.act_max + 1)
    want = onnxruntime_requantize(q, a, b)
    lo, hi = Fraction(0), None  # M in [lo, hi) gives ``want`` for every d = q - z_a > 0
    for d, y in zip((q - a.zero).tolist(), want.tolist(), strict=True):
        if d == 0:
            continue
        k = y - b.zero
        lo = max(lo, Fraction(2 * k - 1, 2 * d))
        if y < INT8.act_max:  # saturated at the top: any larger value is as good
            top = Fraction(2 * k + 1, 2 * d)
            hi = top if hi is None else min(hi, top)
    scale = 1 << n
    first = -(-lo.numerator * scale // lo.denominator)  # ceil(lo * 2**n)
    last = (1 << RESCALE_MULT_BITS) - 1
    if hi is not None:
        last = min(last, -(-hi.numerator * scale // hi.denominator) - 1)
    m = min(max(m0, first), last) if first <= last else m0
    result = Rescale(a.zero, int(m), int(n), b.zero)
    assert n <= RESCALE_SHIFT_MAX
    if first <= last:  # the claim above, checked
        assert np.array_equal(rescale(q, a.zero, m, n, b.zero), want)
    return result
