"""Issue 14: models made by the real tools. torchvision's SqueezeNets and a small Fire network,
exported by torch's default (dynamo) and legacy (TorchScript) ONNX exporters, quantized by
onnxruntime's quantize_static (QDQ and QOperator, int8 and uint8 activations, per-channel and
per-tensor weights), read by the importer and held against onnxruntime.

Skipped without torch; `make setup` installs the torch extra, so CI runs them."""

import dataclasses
import json

import numpy as np
import onnx
import pytest

pytest.importorskip("torch")
pytest.importorskip("torchvision")
pytest.importorskip("onnxscript")

import torch_models as tm  # noqa: E402

from spec.quant import INT8  # noqa: E402
from sw import ops  # noqa: E402
from sw.driver.__main__ import main as driver_main  # noqa: E402
from sw.images import random_images  # noqa: E402
from sw.onnx_compare import compare, ort_session  # noqa: E402
from sw.onnx_import import load_model  # noqa: E402

INPUTS = 20  # comparison inputs per case


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """Exports and quantizations, each made once: ``made(kind, exporter, ...)``."""
    base = tmp_path_factory.mktemp("torch_onnx")
    cache = {}

    def make(arch, biases, exporter, act=None, per_channel=True, fmt="QDQ"):
        key = (arch, biases, exporter)
        if key not in cache:
            model = (tm.fire_network() if arch == "fire" else
                     tm.torchvision_squeezenet(arch, biases))
            cache[key] = tm.export(model, base / f"{'_'.join(key)}.onnx",
                                   dynamo=exporter == "dynamo")
        if act is None:
            return cache[key]
        qkey = key + (act, per_channel, fmt)
        if qkey not in cache:
            cache[qkey] = tm.quantize(cache[key], base / f"{'_'.join(map(str, qkey))}.onnx",
                                      activations=act, per_channel=per_channel, fmt=fmt)
        return cache[qkey]

    return make


def case_id(case):
    arch, biases, exporter, act, pc, fmt = case
    return f"{arch}-{biases}-{exporter}-{fmt}-{act}-{'pc' if pc else 'pt'}"


@pytest.mark.parametrize("case", tm.CASES, ids=[case_id(c) for c in tm.CASES])
def test_torchvision_squeezenet_against_onnxruntime(made, case):
    """The done-when matrix, through the golden model (the device matches it bit for bit:
    test_onnx.py, and test_cli_runs_real_exports_on_the_device below)."""
    arch, biases, exporter, act, per_channel, fmt = case
    path = made(arch, biases, exporter, act, per_channel, fmt)
    imported = load_model(path)
    assert imported.qformat == fmt and imported.num_classes == 1000
    assert [f.name for f in imported.net.fires] == [f"fire{i}" for i in range(2, 10)]
    assert imported.batch is None  # exported with a dynamic batch dimension
    result = tm.golden_compare(path, INPUTS)
    assert result["fire_max_lsb"] <= 1, result
    assert result["logits_sqnr_db"] >= 35.0, result
    if fmt == "QDQ":
        # onnxruntime's integer kernels and its QDQ reference, and ours against that
        # reference, within the same bar
        kernels = result["ort_kernels_vs_reference"]
        assert kernels["logits_sqnr_db"] >= 35.0, kernels
        assert kernels["ours_logits_sqnr_db"] >= 35.0, kernels
    else:
        assert result["ort_kernels_vs_reference"] is None
    assert result["top1_agreement"] >= 0.95, result


def single_rounding(qnet):
    """``qnet`` with every twice-rounded expand folded into one requantization straight to
    the concat's scale (the branch's range kept as a ceiling): the engine before it rounded
    twice."""
    from spec.quant import quantize_multiplier

    layers = dict(qnet.layers)
    for name, layer in qnet.fire_layers().items():
        parts = {}
        for part in ("expand1x1", "expand3x3"):
            conv = getattr(layer, part)
            rq, rs = conv.rq, conv.rq.rescale
            if rs is None:
                continue
            pairs = [quantize_multiplier(float(m) / 2.0**n * rs.m / 2.0**rs.n)
                     for m, n in zip(rq.m, rq.n, strict=True)]
            top = min(rs(np.array([INT8.act_max]))[0], INT8.act_max)
            parts[part] = dataclasses.replace(conv, rq=ops.Requant(
                np.array([a for a, _ in pairs]), np.array([b for _, b in pairs]), rs.z_out,
                True, hi=int(top)))
        layers[name] = dataclasses.replace(layer, **parts)
    return dataclasses.replace(qnet, layers=layers)


def test_expands_are_rounded_twice_as_onnxruntime_does(made):
    """onnxruntime rounds a Fire expand to its branch's own scale, then to the concat's:
    the importer does the same (``Requant.rescale``), and the Fire outputs are identical to
    onnxruntime's but for a few values in 10^5 (its float convolution's own roundings); fold
    the two roundings into one, as the engine did before, and ~5% of them are 1 LSB off and
    the logits' SQNR falls by more than 5 dB."""
    path = made("squeezenet1_0", "zero", "dynamo", "int8", True)
    imported = load_model(path)
    twice = [p for f in imported.qnet.fire_layers().values()
             for p in (f.expand1x1, f.expand3x3) if p.rq.rescale is not None]
    assert len(twice) == 8  # one branch of each Fire: the concat takes the other's scale
    assert all(p.rq.hi is None for p in twice)
    ours = tm.golden_compare(path, INPUTS)
    assert ours["fire_max_lsb"] <= 1 and ours["fire_identical_fraction"] > 0.9999, ours
    imported.qnet = single_rounding(imported.qnet)
    once = compare(imported, lambda name, layer, xs: [ops.fire(x, layer) for x in xs],
                   lambda qnet, xs: [qnet.forward(x) for x in xs], inputs=INPUTS)
    assert once["fire_identical_fraction"] < 0.97, once
    assert ours["logits_sqnr_db"] > once["logits_sqnr_db"] + 5


def uint8_as_int8(path, out):
    """The same QDQ model with every uint8 activation zero point z stored as int8 z - 128."""
    from onnx import numpy_helper

    model = onnx.load(path)
    shifted = 0
    for t in model.graph.initializer:
        a = numpy_helper.to_array(t)
        if a.dtype == np.uint8:
            t.CopyFrom(numpy_helper.from_array((a.astype(np.int16) - 128).astype(np.int8),
                                               t.name))
            shifted += 1
    assert shifted > 0  # every activation zero point (the test checks none is left uint8)
    onnx.save(model, out)
    return str(out)


def test_uint8_activations_are_int8_shifted_by_128_bit_for_bit(made, tmp_path):
    """uint8 q with zero point z is int8 q - 128 with zero point z - 128: onnxruntime's QDQ
    reference computes every quantized tensor of the uint8 model exactly 128 above the int8
    twin's, with identical logits; the importer reads the two into the same integer network,
    whose outputs are then the same bit for bit."""
    u8 = made("squeezenet1_1", "random", "dynamo", "uint8", True)
    i8 = uint8_as_int8(u8, tmp_path / "int8_twin.onnx")
    mu, mi = load_model(u8), load_model(i8)
    assert set(mu.quantized_dtypes.values()) == {"uint8"}
    assert set(mi.quantized_dtypes.values()) == {"int8"}
    names = sorted(mu.quantized_dtypes)
    assert names == sorted(mi.quantized_dtypes)
    x = np.stack([im.transpose(2, 0, 1) for im in random_images(4, tm.SIZE, seed=5)])
    ru = ort_session(mu, names, reference=True).run(["logits", *names], {"input": x})
    ri = ort_session(mi, names, reference=True).run(["logits", *names], {"input": x})
    np.testing.assert_array_equal(ru[0], ri[0])
    for name, a, b in zip(names, ru[1:], ri[1:], strict=True):
        assert a.dtype == np.uint8 and b.dtype == np.int8
        np.testing.assert_array_equal(a.astype(np.int64) - 128, b.astype(np.int64), name)
        np.testing.assert_array_equal(mu.to_int8(name, a), mi.to_int8(name, b), name)
    assert mu.qnet.scales == mi.qnet.scales
    for name, layer in mu.qnet.fire_layers().items():
        twin = mi.qnet.layers[name]
        for part in ("squeeze", "expand1x1", "expand3x3"):
            a, b = getattr(layer, part), getattr(twin, part)
            np.testing.assert_array_equal(a.weight, b.weight)
            np.testing.assert_array_equal(a.bias, b.bias)
            np.testing.assert_array_equal(a.rq.m, b.rq.m)
            np.testing.assert_array_equal(a.rq.n, b.rq.n)
            assert (a.rq.z_out, a.rq.relu, a.rq.hi, a.rq.rescale) == \
                (b.rq.z_out, b.rq.relu, b.rq.hi, b.rq.rescale)
        assert layer.z_in == twin.z_in
    for im in random_images(3, tm.SIZE, seed=6):
        np.testing.assert_array_equal(mu.qnet.forward(mu.qnet.quantize_input(im)),
                                      mi.qnet.forward(mi.qnet.quantize_input(im)))


@pytest.mark.parametrize("exporter", ["dynamo", "legacy"])
@pytest.mark.parametrize("fmt,act", [("QDQ", "int8"), ("QDQ", "uint8"), ("QOperator", "uint8")])
def test_fire_network_with_a_bypass(made, exporter, fmt, act):
    """A user's own 10-class Fire network, a bypass (Add, QLinearAdd) in it."""
    path = made("fire", "random", exporter, act, True, fmt)
    imported = load_model(path)
    assert [f.bypass for f in imported.net.fires] == [False, True, False]
    assert imported.num_classes == 10
    result = tm.golden_compare(path, INPUTS)
    assert result["fire_max_lsb"] <= 1, result
    assert result["logits_sqnr_db"] >= 35.0, result
    assert result["top1_agreement"] >= 0.95, result


def run_cli(argv, capsys):
    capsys.readouterr()  # only the command's own output: not what came before it
    try:
        code = driver_main(argv)
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_runs_real_exports_on_the_device(made, tmp_path, capsys):
    """`infer --model` and `compare-onnx` on the simulated board: a dynamo export in uint8
    per-tensor QDQ (its expands rounded twice, checked bit for bit against the golden model),
    a legacy one in int8 QDQ fed the user's own inputs, and a QOperator one."""
    batch = np.stack([im.transpose(2, 0, 1) for im in random_images(2, tm.SIZE, seed=4)])
    np.save(tmp_path / "x.npy", batch.astype(np.float32))
    qdq = made("squeezenet1_1", "random", "dynamo", "uint8", False)
    # its expands are rounded twice (one branch of each Fire at its own scale): the device
    # runs the second requantization, bit for bit as the golden model (--check)
    assert all(f.rescaled for f in load_model(qdq).qnet.fire_layers().values())
    code, out, err = run_cli(["infer", "--model", qdq, "--input", str(tmp_path / "x.npy"),
                              "--check", "--json", "--quiet"], capsys)
    assert code == 0, err
    out = json.loads(out)
    assert out["all_match"] is True and out["classes"] == 1000
    assert out["quantization"] == "the model's own QDQ quantization"
    # onnxruntime's logits for the same inputs: the device's within the comparison's bars
    ort = ort_session(load_model(qdq), []).run(None, {"input": batch.astype(np.float32)})[0]
    for entry, want in zip(out["inputs"], ort, strict=True):
        assert entry["top5"][0]["class"] == int(np.argmax(want))
        assert entry["top5"][0]["name"] != "class 0"  # ImageNet's names for 1000 classes
    legacy = made("squeezenet1_0", "zero", "legacy", "int8", True)
    code, out, err = run_cli(["compare-onnx", "--model", legacy, "--input",
                              str(tmp_path / "x.npy"), "--json", "--quiet"], capsys)
    assert code == 0, err
    out = json.loads(out)
    assert out["inputs"] == 2 and out["source"] == f"2 inputs from {tmp_path / 'x.npy'}"
    assert out["fire_max_lsb"] <= 1 and out["logits_sqnr_db"] >= 35
    assert out["ort_kernels_vs_reference"]["logits_sqnr_db"] > 35
    qop = made("squeezenet1_1", "random", "dynamo", "int8", True, "QOperator")
    code, out, err = run_cli(["compare-onnx", "--model", qop, "--inputs", "2"], capsys)
    assert code == 0, err
    assert "(QOperator) on 2 random 64x64 inputs" in out
    assert "none (a QOperator model has no QDQ reference)" in out


def test_ten_class_model_labels_and_calibration(made, tmp_path, capsys):
    """A float 10-class model: no silent random calibration, --calibrate X.npy, its own
    labels from --labels or from its metadata, never ImageNet's."""
    path = made("fire", "random", "dynamo")
    batch = np.stack([im.transpose(2, 0, 1) for im in random_images(3, tm.SIZE, seed=9)])
    np.save(tmp_path / "calib.npy", batch.astype(np.float32))
    np.save(tmp_path / "x.npy", batch[:1].astype(np.float32))
    base = ["infer", "--model", path, "--input", str(tmp_path / "x.npy"), "--quiet"]
    code, out, err = run_cli(base, capsys)
    assert code == 2 and err.count("\n") == 1, err
    assert f"error: {path} is a float model: quantizing it needs calibration data" in err
    assert "--calibrate X.npy" in err and "--calibrate random" in err

    names = [f"digit {i}" for i in range(10)]
    (tmp_path / "labels.txt").write_text("\n".join(names) + "\n")
    code, out, err = run_cli(base + ["--calibrate", str(tmp_path / "calib.npy"), "--labels",
                                     str(tmp_path / "labels.txt"), "--json", "--check"],
                             capsys)
    assert code == 0, err
    out = json.loads(out)
    assert out["classes"] == 10 and out["all_match"] is True
    assert out["quantization"] == ("post-training quantization on 3 inputs from "
                                   f"{tmp_path / 'calib.npy'}")
    top = out["inputs"][0]["top5"]
    assert len(top) == 5 and all(t["name"] == names[t["class"]] for t in top)

    (tmp_path / "nine.txt").write_text("\n".join(names[:9]))
    code, _, err = run_cli(base + ["--calibrate", "random", "--labels",
                                   str(tmp_path / "nine.txt")], capsys)
    assert code == 2 and "names 9 classes (one per line), but the model has 10" in err

    model = onnx.load(path)
    onnx.helper.set_model_props(model, {"labels": json.dumps([f"cls-{i}" for i in range(10)])})
    onnx.save(model, tmp_path / "with_labels.onnx")
    code, out, err = run_cli(["infer", "--model", str(tmp_path / "with_labels.onnx"),
                              "--input", str(tmp_path / "x.npy"), "--calibrate", "random",
                              "--calib", "2", "--json", "--quiet"], capsys)
    assert code == 0, err
    assert err == ("warning: calibrating on 2 random images (--calibrate random); a trained "
                   "model's ranges want its own data\n")
    top = json.loads(out)["inputs"][0]["top5"]
    assert all(t["name"] == f"cls-{t['class']}" for t in top)


def test_quantized_ten_class_model_without_labels_prints_class_numbers(made, tmp_path,
                                                                       capsys):
    path = made("fire", "random", "legacy", "int8", True)
    np.save(tmp_path / "x.npy", random_images(1, tm.SIZE, seed=2)[0].transpose(2, 0, 1)[None])
    code, out, err = run_cli(["infer", "--model", path, "--input", str(tmp_path / "x.npy"),
                              "--quiet"], capsys)
    assert code == 0, err
    assert "great white shark" not in out and "tench" not in out
    first = out.splitlines()[1]
    assert first.startswith(f"{tmp_path / 'x.npy'}[0]: ") and " class " in first



def test_cli_runs_a_real_export_resident_with_the_stream_modes_logits(made, tmp_path, capsys):
    """`infer --model qdq.onnx --input batch.npy` on the simulated board with its memory runs
    resident (the whole network one program, each input's upload overlapping the one
    before's compute) and gives exactly the logits streaming mode gives; with --check every
    layer is compared on the device."""
    batch = np.stack([im.transpose(2, 0, 1) for im in random_images(3, tm.SIZE, seed=5)])
    np.save(tmp_path / "x.npy", batch.astype(np.float32))
    qdq = made("squeezenet1_1", "random", "dynamo", "uint8", False)
    args = ["infer", "--model", qdq, "--input", str(tmp_path / "x.npy"), "--json", "--quiet",
            "--sim-memory"]
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    resident = json.loads(out)
    code, out, err = run_cli(args + ["--mode", "stream"], capsys)
    assert code == 0, err
    stream = json.loads(out)
    assert resident["mode"] == "resident" and stream["mode"] == "stream"
    assert [e["logits"] for e in resident["inputs"]] == [e["logits"] for e in stream["inputs"]]
    assert all(la["where"] == "device" for la in resident["layers"])
    code, out, err = run_cli(args + ["--check"], capsys)
    assert code == 0, err
    checked = json.loads(out)
    assert checked["all_match"] is True and all(la["match"] for la in checked["layers"])
