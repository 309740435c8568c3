"""ONNX in: models generated here (onnx.helper in torch's export layout, quantized by
onnxruntime's own quantize_static), run through this project and held against onnxruntime."""

import json

import numpy as np
import onnx
import pytest

from sim.board import simulated_accelerator
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
