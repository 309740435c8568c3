"""Post-training quantization quality on the deterministic random init."""

import json

import numpy as np
import pytest

from sw import model, reference
from sw.images import random_images
from sw.network import ARCHS, Conv, Fire
from sw.quantize import end_to_end, layer_sqnr, quantize_network
from sw.weights import random_init


@pytest.fixture(scope="module")
def v11():
    net = ARCHS["squeezenet1_1"]
    weights = random_init(net)
    return net, weights, quantize_network(net, weights, random_images(16, 224, seed=1))


def layer_errors(qnet, weights, images):
    """Per conv/Fire layer, over ``images``: the signal energy, the error energy and the
    largest error of the integer layer against the float layer (``sw.reference``) given the
    same (dequantized) input, in units of the layer's output quantization step."""
    names = [layer.name for layer in qnet.net.layers]
    out = {}

    def observe(name, x_in, y):
        layer = qnet.net.layer(name)
        if not isinstance(layer, (Conv, Fire)):
            return
        i = names.index(name)
        s_in, z_in = qnet.scales["input" if i == 0 else names[i - 1]]
        x_real = ((np.asarray(x_in, np.float64) - z_in) * s_in).astype(np.float32)
        ref = reference.run_layer(layer, x_real, weights).astype(np.float64)
        s_y, z_y = qnet.scales[name]
        got = (np.asarray(y, np.float64) - z_y) * s_y
        sig, noise, count, worst = out.get(name, (0.0, 0.0, 0, 0.0))
        err = (got - ref) / s_y
        out[name] = (sig + float(np.sum(ref**2)), noise + float(np.sum((got - ref) ** 2)),
                     count + err.size, max(worst, float(np.abs(err).max())))

    for image in images:
        qnet.forward(qnet.quantize_input(image), on_layer=observe)
    return out


def test_every_fire_is_within_its_quantization_step(v11):
    """Each Fire layer against the float layer on the same input: the error is what its two
    roundings (squeeze and expand, each uniform with RMS step/sqrt(12) = 0.29 step) and the
    int8 weights explain: RMS below half an output step, no error beyond 4 steps, and so an
    SQNR above 20 log10(signal RMS / (step / 2)), and above 30 dB."""
    net, weights, qnet = v11
    images = random_images(4, 224, seed=2)
    errors = layer_errors(qnet, weights, images)
    fires = [f.name for f in net.fires]
    assert [n for n in errors if n.startswith("fire")] == fires
    report = {r.name: r.sqnr_db for r in layer_sqnr(qnet, weights, images)}
    for name in fires:
        sig, noise, count, worst = errors[name]
        step = qnet.scales[name][0]
        rms_steps = np.sqrt(noise / count) / step
        assert rms_steps < 0.5, (name, rms_steps)
        assert worst <= 4.0, (name, worst)
        sqnr = 10 * np.log10(sig / noise)
        bound = 20 * np.log10(np.sqrt(sig / count) / (step / 2))
        assert sqnr > bound and sqnr >= 30.0, (name, sqnr, bound)
        # the report the CLI prints says the same
        assert report[name] == pytest.approx(sqnr, rel=1e-9)


def test_end_to_end_against_float(v11):
    """Logits against the float network: an RMS error within 1.5 steps of the logits'
    quantization, SQNR from that bound, and the same top-1 wherever the float top-1 leads by
    more than the largest error could move it."""
    net, weights, qnet = v11
    images = random_images(4, 224, seed=2)
    ref = np.array([reference.forward(net, weights, im) for im in images], np.float64)
    got = np.array([qnet.logits(im) for im in images], np.float64)
    step = qnet.scales[net.layers[-1].name][0]
    rms = np.sqrt(np.mean((ref - got) ** 2))
    assert rms < 1.5 * step, rms / step
    sqnr = 10 * np.log10(np.sum(ref**2) / np.sum((ref - got) ** 2))
    assert sqnr > 20 * np.log10(np.sqrt(np.mean(ref**2)) / (1.5 * step)) and sqnr >= 25.0
    worst = np.abs(ref - got).max()
    ordered = np.sort(ref, axis=1)
    confident = ordered[:, -1] - ordered[:, -2] > 2 * worst
    assert confident.sum() >= 3, "too few inputs with a clear float top-1 to compare"
    np.testing.assert_array_equal(got[confident].argmax(1), ref[confident].argmax(1))
    e2e = end_to_end(qnet, weights, images)
    assert e2e["logits_sqnr_db"] == pytest.approx(sqnr, rel=1e-9)
    assert e2e["top1_agreement"] == np.mean(got.argmax(1) == ref.argmax(1)) == 1.0
    assert e2e["inputs"] == 4


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
    bypassed = [name for name, q in qnet.fire_layers().items() if q.bypass is not None]
    assert bypassed == ["fire3", "fire5", "fire7", "fire9"]
    # the add's multipliers are the scale ratios: Fire output and Fire input to the sum
    fire3 = qnet.layers["fire3"]
    b = fire3.bypass
    s_c, z_c = qnet.scales["fire3.concat"]
    s_x, z_x = qnet.scales["fire2"]
    s_y, z_y = qnet.scales["fire3"]
    assert (b.z_a, b.z_b, b.z_out) == (z_c, z_x, z_y) and fire3.z_in == z_x
    assert b.mult_a / 2**b.shift == pytest.approx(s_c / s_y, rel=2**-29)
    assert b.mult_b / 2**b.shift == pytest.approx(s_x / s_y, rel=2**-29)
    # and the whole integer network follows the float one, bypasses included
    image = random_images(1, 96, seed=9)[0]
    out = qnet.forward(qnet.quantize_input(image))
    assert out.shape == (1, 1, 1000)
    ref = reference.forward(net, weights, image).astype(np.float64)
    got = qnet.dequantize_output(out)
    step = qnet.scales[net.layers[-1].name][0]
    assert np.sqrt(np.mean((ref - got) ** 2)) < 1.5 * step


def test_infer_cli_labels_random_weights(capsys):
    assert model.main(["infer", "--arch", "squeezenet1_1", "--input", "96", "--calib", "2"]) == 0
    out = capsys.readouterr().out
    assert "random init" in out and "top-5" in out
    assert model.main(["infer", "--arch", "squeezenet1_1", "--input", "96", "--calib", "2",
                       "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert "random init" in r["weights"]
    # the printed ranking is the logits' own, largest first, with softmax probabilities
    logits = np.array(r["logits"])
    assert [t["class"] for t in r["top5"]] == list(np.argsort(-logits, kind="stable")[:5])
    probs = np.exp(logits - logits.max()) / np.sum(np.exp(logits - logits.max()))
    for t in r["top5"]:
        assert t["logit"] == logits[t["class"]]
        assert t["prob"] == pytest.approx(probs[t["class"]], rel=1e-9)
    # and the text output lists those classes
    for t in r["top5"]:
        assert f"{t['class']:4d} {t['name']}" in out
