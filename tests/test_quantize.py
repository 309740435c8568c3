"""Post-training quantization quality on the deterministic random init."""

import numpy as np
import pytest

from sw import model, ops
from sw.images import random_images
from sw.network import ARCHS
from sw.quantize import end_to_end, layer_sqnr, quantize_network
from sw.weights import random_init


@pytest.fixture(scope="module")
def v11():
    net = ARCHS["squeezenet1_1"]
    weights = random_init(net)
    return net, weights, quantize_network(net, weights, random_images(16, 224, seed=1))


def test_every_fire_reaches_30db(v11):
    net, weights, qnet = v11
    report = layer_sqnr(qnet, weights, random_images(16, 224, seed=2))
    fires = {r.name: r.sqnr_db for r in report if r.name.startswith("fire")}
    assert set(fires) == {f.name for f in net.fires}
    assert min(fires.values()) >= 30.0, fires


def test_end_to_end_against_float(v11):
    net, weights, qnet = v11
    e2e = end_to_end(qnet, weights, random_images(4, 224, seed=2))
    assert e2e["logits_sqnr_db"] >= 25.0
    assert 0.0 <= e2e["top1_agreement"] <= 1.0


def test_fire_layers_hold_int8_weights(v11):
    _, _, qnet = v11
    for layer in qnet.fire_layers().values():
        for conv in (layer.squeeze, layer.expand1x1, layer.expand3x3):
            assert np.abs(conv.weight).max() <= 127
            assert np.all(conv.rq.m < 2**31) and np.all(conv.rq.n >= 1)
        assert layer.expand1x1.rq.z_out == layer.expand3x3.rq.z_out  # one concat scale


def test_bypass_network_quantizes():
    net = ARCHS["squeezenet1_0_bypass"]
    weights = random_init(net)
    qnet = quantize_network(net, weights, random_images(2, 96, seed=1))
    fire3 = qnet.layers["fire3"]
    assert isinstance(fire3, ops.FireLayer) and fire3.bypass is not None
    out = qnet.forward(qnet.quantize_input(random_images(1, 96, seed=9)[0]))
    assert out.shape == (1, 1, 1000)


def test_infer_cli_labels_random_weights(capsys):
    assert model.main(["infer", "--arch", "squeezenet1_1", "--input", "96", "--calib", "2"]) == 0
    out = capsys.readouterr().out
    assert "random init" in out and "top-5" in out
