"""ONNX in: models generated here (onnx.helper in torch's export layout, quantized by
onnxruntime's own quantize_static), run through this project and held against onnxruntime."""

import json

import numpy as np
import onnx
import pytest

from sim.board import simulated_accelerator
from spec.quant import quantize_rescale, rescale
from sw import ops, reference
from sw.driver.__main__ import main as driver_main
from sw.driver.runner import run_network_batch
from sw.images import random_images
from sw.network import ARCHS
from sw.onnx_compare import compare
from sw.onnx_export import export_float, quantize_qdq
from sw.onnx_import import UnsupportedModel, load_model
from sw.weights import random_init

SIZE = 64


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    out = {}
    base = tmp_path_factory.mktemp("onnx")
    for arch in ("squeezenet1_1", "squeezenet1_0", "squeezenet1_0_bypass"):
        net = ARCHS[arch]
        weights = random_init(net)
        f = base / f"{arch}.onnx"
        q = base / f"{arch}_qdq.onnx"
        onnx.save(export_float(net, weights, SIZE), f)
        calib = [im.transpose(2, 0, 1) for im in random_images(8, SIZE, seed=1)]
        quantize_qdq(str(f), str(q), calib)
        out[arch] = (net, weights, str(f), str(q))
    return out


@pytest.fixture(scope="module")
def board():
    with simulated_accelerator() as acc:
        yield acc


def device_runners(acc, checked: dict):
    """Runners for ``compare`` that run on the device and hold every result against the
    golden model bit for bit: each Fire layer's output, and each whole network's output."""

    def fires(name, layer, xs):
        outs = [r.output for r in acc.run_fire_batch(layer, xs)]
        for x, out in zip(xs, outs, strict=True):
            np.testing.assert_array_equal(out, ops.fire(x, layer),
                                          f"{name}: the device differs from the golden model")
        checked["fires"] += len(xs)
        return outs

    def network(qnet, xs):
        outs = run_network_batch(acc, qnet, xs)[0]
        for x, out in zip(xs, outs, strict=True):
            np.testing.assert_array_equal(out, qnet.forward(x),
                                          "the network on the device differs from the golden "
                                          "model")
        checked["networks"] += len(xs)
        return outs

    return fires, network


@pytest.mark.parametrize("arch", ["squeezenet1_1", "squeezenet1_0", "squeezenet1_0_bypass"])
def test_qdq_model_against_onnxruntime_on_the_device(models, board, arch):
    net, _, _, qdq = models[arch]
    imported = load_model(qdq)
    assert imported.quantized and imported.input_size == (SIZE, SIZE)
    assert [f.name for f in imported.net.fires] == [f.name for f in net.fires]
    assert [f.bypass for f in imported.net.fires] == [f.bypass for f in net.fires]
    checked = {"fires": 0, "networks": 0}
    result = compare(imported, *device_runners(board, checked), inputs=4, batch=4)
    # the device matched the golden model bit for bit on every Fire layer and network run
    assert checked == {"fires": 4 * len(net.fires), "networks": 4}
    assert result["fire_max_lsb"] <= 1, result
    assert result["fire_identical_fraction"] > 0.9
    assert result["logits_sqnr_db"] >= 30.0
    assert result["top1_agreement"] >= 0.75


def test_golden_against_onnxruntime_over_more_inputs(models):
    """The same figures on 40 inputs through the golden model, which the device matches bit
    for bit (asserted in the test above, layer by layer and network by network): fast enough
    for more inputs."""
    _, _, _, qdq = models["squeezenet1_1"]
    imported = load_model(qdq)
    result = compare(imported, lambda name, layer, xs: [ops.fire(x, layer) for x in xs],
                     lambda qnet, xs: [qnet.forward(x) for x in xs], inputs=40)
    assert result["fire_max_lsb"] <= 1
    assert result["logits_sqnr_db"] >= 30.0
    assert result["top1_agreement_confident"] in (None, 1.0) or \
        result["top1_agreement_confident"] >= 0.98


def test_float_model_is_quantized_here(models):
    net, weights, float_path, _ = models["squeezenet1_1"]
    imported = load_model(float_path)
    assert not imported.quantized
    for name, array in weights.arrays.items():
        np.testing.assert_array_equal(imported.weights[name], array)
    qnet = imported.quantize(random_images(4, SIZE, seed=1))
    image = random_images(1, SIZE, seed=8)[0]
    ref = reference.forward(net, weights, image)
    got = qnet.logits(image)
    assert 10 * np.log10(np.sum(ref**2) / np.sum((ref - got) ** 2)) > 25


def test_unsupported_node_is_named(models, tmp_path):
    _, _, float_path, _ = models["squeezenet1_1"]
    model = onnx.load(float_path)
    relu = next(n for n in model.graph.node if n.op_type == "Relu")
    relu.op_type = "Sigmoid"
    relu.name = "/features/0/Sigmoid"
    path = tmp_path / "sigmoid.onnx"
    onnx.save(model, path)
    with pytest.raises(UnsupportedModel, match=r"node '/features/0/Sigmoid' \(Sigmoid\)"):
        load_model(path)


def test_unsupported_concat_order_is_named(models, tmp_path):
    _, _, float_path, _ = models["squeezenet1_1"]
    model = onnx.load(float_path)
    cat = next(n for n in model.graph.node if n.op_type == "Concat")
    cat.input[0], cat.input[1] = cat.input[1], cat.input[0]
    path = tmp_path / "swapped.onnx"
    onnx.save(model, path)
    with pytest.raises(UnsupportedModel, match=cat.name):
        load_model(path)


def test_cli_infer_with_a_batch(models, tmp_path, capsys):
    _, _, _, qdq = models["squeezenet1_1"]
    batch = np.stack([im.transpose(2, 0, 1) for im in random_images(2, SIZE, seed=4)])
    np.save(tmp_path / "x.npy", batch.astype(np.float32))
    assert driver_main(["infer", "--model", qdq, "--input", str(tmp_path / "x.npy"),
                        "--check", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["inputs"]) == 2 and out["all_match"] is True
    for entry in out["inputs"]:
        assert len(entry["logits"]) == 1000 and len(entry["top5"]) == 5
    np.save(tmp_path / "bad.npy", np.zeros((2, 3, 32, 32), np.float32))
    assert driver_main(["infer", "--model", qdq, "--input", str(tmp_path / "bad.npy")]) == 2
    assert "expected a float32 batch (N, 3, 64, 64)" in capsys.readouterr().err


# ------------------------------------------------------- single node forms (issue 14)
def with_pool(float_path, nodes_after, opset=17, extra_inits=()):
    """The float model with its GlobalAveragePool and Flatten replaced by ``nodes_after``
    (taking ``x``, giving ``output``)."""
    from onnx import helper

    model = onnx.load(float_path)
    pool = next(n for n in model.graph.node if n.op_type == "GlobalAveragePool")
    x = pool.input[0]
    keep = [n for n in model.graph.node if n.op_type not in ("GlobalAveragePool", "Flatten")]
    del model.graph.node[:]
    model.graph.node.extend(keep)
    for node in nodes_after:
        node.input[:] = [x if i == "x" else i for i in node.input]
        model.graph.node.append(node)
    model.graph.initializer.extend(extra_inits)
    del model.opset_import[:]
    model.opset_import.append(helper.make_opsetid("", opset))
    onnx.checker.check_model(model)
    return model


POOL_FORMS = {
    "ReduceMean-13-attr": (13, lambda h: [
        h.make_node("ReduceMean", ["x"], ["m"], axes=[2, 3], keepdims=1),
        h.make_node("Flatten", ["m"], ["output"])]),
    "ReduceMean-18-input": (18, lambda h: [
        h.make_node("Constant", [], ["axes"], value_ints=[-1, -2]),
        h.make_node("ReduceMean", ["x", "axes"], ["m"], keepdims=1),
        h.make_node("Constant", [], ["c"], value_ints=[1000]),
        h.make_node("Constant", [], ["n"], value_ints=[-1]),
        h.make_node("Concat", ["n", "c"], ["shape"], axis=0),  # a constant subgraph
        h.make_node("Reshape", ["m", "shape"], ["output"])]),
    "ReduceMean-keepdims0": (18, lambda h: [
        h.make_node("Constant", [], ["axes"], value_ints=[2, 3]),
        h.make_node("ReduceMean", ["x", "axes"], ["output"], keepdims=0)]),
    "AveragePool-whole-map": (22, lambda h: [
        h.make_node("AveragePool", ["x"], ["m"], kernel_shape=[3, 3]),
        h.make_node("Identity", ["m"], ["i"]),
        h.make_node("Constant", [], ["axes"], value_ints=[3, 2]),
        h.make_node("Squeeze", ["i", "axes"], ["output"])]),
}


@pytest.mark.parametrize("form", POOL_FORMS)
def test_global_pool_forms(models, form):
    """Every way the exporters write global average pooling, on a float model: the same
    network, and the same integer network, as GlobalAveragePool + Flatten gives."""
    from onnx import helper

    net, weights, float_path, _ = models["squeezenet1_1"]
    opset, nodes = POOL_FORMS[form]
    imported = load_model(with_pool(float_path, nodes(helper), opset))
    assert imported.net.layers == load_model(float_path).net.layers
    image = random_images(1, SIZE, seed=8)[0]
    np.testing.assert_allclose(reference.forward(imported.net, imported.weights, image),
                               reference.forward(net, weights, image), rtol=1e-6)


def test_a_pool_that_is_not_global_is_named(models):
    from onnx import helper

    _, _, float_path, _ = models["squeezenet1_1"]
    model = with_pool(float_path, [helper.make_node("AveragePool", ["x"], ["m"],
                                                    kernel_shape=[2, 2], name="/avg"),
                                   helper.make_node("Flatten", ["m"], ["output"])])
    with pytest.raises(UnsupportedModel, match=r"node '/avg' \(AveragePool\): only a pool "
                                               r"over the whole 3x3 map"):
        load_model(model)
    model = with_pool(float_path, [helper.make_node("ReduceMean", ["x"], ["m"], axes=[1],
                                                    name="/mean"),
                                   helper.make_node("Flatten", ["m"], ["output"])], opset=13)
    with pytest.raises(UnsupportedModel, match=r"node '/mean' \(ReduceMean\): only a mean "
                                               r"over the two spatial axes"):
        load_model(model)


def test_bias_free_convs_and_identity_weights(models):
    """A Conv without a bias (the dynamo exporter drops all-zero ones) has zero bias; a weight
    reached through Identity (the legacy exporter's shared constants) is that weight."""
    from onnx import helper

    net, weights, float_path, _ = models["squeezenet1_1"]
    model = onnx.load(float_path)
    for node in list(model.graph.node):
        if node.op_type == "Conv" and "squeeze" in node.input[1]:
            del node.input[2]
        elif node.op_type == "Conv" and "expand1x1" in node.input[1]:
            shared = node.input[1] + "/shared"
            model.graph.node.insert(0, helper.make_node("Identity", [node.input[1]], [shared]))
            node.input[1] = shared
    imported = load_model(model)
    for fire in net.fires:
        np.testing.assert_array_equal(imported.weights[f"{fire.prefix}.squeeze.bias"],
                                      np.zeros(fire.s1x1, np.float32))
        np.testing.assert_array_equal(imported.weights[f"{fire.prefix}.expand1x1.weight"],
                                      weights[f"{fire.prefix}.expand1x1.weight"])


def test_activations_of_other_widths_are_refused(models, tmp_path):
    from onnx import numpy_helper

    _, _, _, qdq = models["squeezenet1_1"]
    model = onnx.load(qdq)
    q = next(n for n in model.graph.node if n.op_type == "QuantizeLinear")
    zero = next(t for t in model.graph.initializer if t.name == q.input[2])
    zero.CopyFrom(numpy_helper.from_array(np.array(0, np.int16), zero.name))
    with pytest.raises(UnsupportedModel, match=rf"node {q.name!r} \(QuantizeLinear\): "
                                               "activations must be int8 or uint8"):
        load_model(model)


def test_an_image_at_the_input_size_is_not_resized(tmp_path):
    from PIL import Image

    from sw.images import IMAGENET_MEAN, IMAGENET_STD, load_image

    pixels = np.random.default_rng(3).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "x.png")
    np.testing.assert_array_equal(load_image(tmp_path / "x.png", 32),
                                  (pixels.astype(np.float32) / 255.0 - IMAGENET_MEAN)
                                  / IMAGENET_STD)


def test_compare_onnx_takes_a_batch(models, tmp_path, capsys):
    _, _, _, qdq = models["squeezenet1_1"]
    np.save(tmp_path / "x.npy", np.zeros((2, 3, SIZE, SIZE), np.float32))
    assert driver_main(["compare-onnx", "--model", qdq, "--input", str(tmp_path / "x.npy"),
                        "--inputs", "3"]) == 2
    assert capsys.readouterr().err == (f"error: --inputs 3: {tmp_path / 'x.npy'} holds only 2 "
                                       "inputs\n")
    np.save(tmp_path / "bad.npy", np.zeros((2, 3, 32, 32), np.float32))
    assert driver_main(["compare-onnx", "--model", qdq, "--input",
                        str(tmp_path / "bad.npy")]) == 2
    assert "expected a float32 batch (N, 3, 64, 64)" in capsys.readouterr().err


def golden(imported, **kw):
    return compare(imported, lambda name, layer, xs: [ops.fire(x, layer) for x in xs],
                   lambda qnet, xs: [qnet.forward(x) for x in xs], **kw)


def test_qoperator_bypass_model_and_a_fixed_batch(models, tmp_path):
    """onnxruntime's QOperator format (QLinearConv, QLinearConcat, QLinearAdd for the
    bypass) read as the QDQ model it is equivalent to; a model with a fixed batch of 1 runs
    one input at a time in onnxruntime."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    _, _, float_path, _ = models["squeezenet1_0_bypass"]
    calib = iter([{"input": im.transpose(2, 0, 1)[None]}
                  for im in random_images(4, SIZE, seed=1)])

    class Reader(CalibrationDataReader):
        def get_next(self):
            return next(calib, None)

    path = tmp_path / "qop.onnx"
    quantize_static(float_path, str(path), Reader(), quant_format=QuantFormat.QOperator,
                    per_channel=True, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8)
    model = onnx.load(path)
    assert {"QLinearConv", "QLinearConcat", "QLinearAdd"} <= {n.op_type
                                                              for n in model.graph.node}
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    model.graph.output[0].type.tensor_type.shape.dim[0].dim_value = 1
    onnx.save(model, path)
    imported = load_model(path)
    assert imported.qformat == "QOperator" and imported.batch == 1
    assert [f.bypass for f in imported.net.fires] == [False, True, False, True, False, True,
                                                      False, True]
    result = golden(imported, inputs=3)
    assert result["fire_max_lsb"] <= 1 and result["logits_sqnr_db"] >= 35, result
    node = next(n for n in model.graph.node if n.op_type == "QLinearAdd")
    node.op_type = "QLinearMul"
    with pytest.raises(UnsupportedModel, match=rf"node {node.name!r} \(QLinearMul\): "
                                               "QLinearMul is not supported; a QOperator "
                                               "model maps QLinearConv"):
        load_model(model)


def ort_dequantize_quantize(q, a, b):
    """onnxruntime itself: DequantizeLinear (``a``) then QuantizeLinear (``b``) of int8 ``q``."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    inits = [helper.make_tensor("sa", TensorProto.FLOAT, [], [a.scale]),
             helper.make_tensor("za", TensorProto.INT8, [], [a.zero]),
             helper.make_tensor("sb", TensorProto.FLOAT, [], [b.scale]),
             helper.make_tensor("zb", TensorProto.INT8, [], [b.zero])]
    graph = helper.make_graph(
        [helper.make_node("DequantizeLinear", ["q", "sa", "za"], ["x"]),
         helper.make_node("QuantizeLinear", ["x", "sb", "zb"], ["y"])], "rescale",
        [helper.make_tensor_value_info("q", TensorProto.INT8, [None])],
        [helper.make_tensor_value_info("y", TensorProto.INT8, [None])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), options,
                                providers=["CPUExecutionProvider"])
    return sess.run(None, {"q": np.asarray(q, np.int8)})[0].astype(np.int64)


def test_second_rounding_equals_onnxruntime_on_every_value():
    """A twice-rounded expand's second requantization (branch scale -> concat scale) gives,
    for every value a ReLU'd branch can hold, exactly what onnxruntime's DequantizeLinear ->
    QuantizeLinear gives: the importer's float32 account of onnxruntime is onnxruntime's, and
    the integer multiplier it picks reproduces it. The plain nearest multiplier does not
    always (each pair is its own: the search is what makes them all exact)."""
    from sw.onnx_import import QParams, onnxruntime_requantize, rescale_like_onnxruntime

    rng = np.random.default_rng(14)
    q = np.arange(-128, 128)
    nearest_off = 0
    for _ in range(300):
        s_b = float(np.float32(rng.uniform(0.002, 0.2)))
        a = QParams(float(np.float32(s_b * rng.uniform(0.3, 1.0))), int(rng.integers(-128, 0)))
        b = QParams(s_b, int(rng.integers(-128, 0)))
        want = ort_dequantize_quantize(q, a, b)
        np.testing.assert_array_equal(onnxruntime_requantize(q, a, b), want)
        rs = rescale_like_onnxruntime(a, b)
        reach = q >= a.zero  # a ReLU'd branch holds its zero point and above
        np.testing.assert_array_equal(rs(q[reach]), want[reach], str((a, b)))
        m0, n0 = quantize_rescale(a.scale / b.scale)
        assert rs.n == n0 and abs(rs.m - m0) <= 2
        nearest_off += int(np.any(rescale(q[reach], a.zero, m0, n0, b.zero) != want[reach]))
    assert nearest_off > 0


def test_second_rounding_at_exact_ties_is_within_one():
    """s_a / s_b = 1/2 exactly: onnxruntime rounds the ties (odd values) to even, which no
    round-half-up multiplier can do on all of them; the importer's is then the nearest, 1 LSB
    off at ties only."""
    from sw.onnx_import import QParams, onnxruntime_requantize, rescale_like_onnxruntime

    a, b = QParams(0.025, -128), QParams(0.05, -128)
    q = np.arange(-128, 128)
    want = onnxruntime_requantize(q, a, b)
    got = rescale_like_onnxruntime(a, b)(q)
    ties = (q - a.zero) % 2 == 1
    assert np.abs(got - want).max() == 1
    assert np.all(got[~ties] == want[~ties]) and np.any(got[ties] != want[ties])
