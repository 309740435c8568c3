"""Network definitions: torchvision's names, parameter counts and MACs."""

import json

import numpy as np
import pytest

from sw import model
from sw.network import ARCHS, design_space, get_arch, squeezenet
from sw.weights import WeightsError, load, random_init, save_npz


def test_v11_totals():
    s = model.summary(ARCHS["squeezenet1_1"], 224)
    assert s["params"] == 1_235_496
    assert abs(s["macs"] - 349.2e6) <= 0.005 * 349.2e6


def test_v10_totals():
    net = ARCHS["squeezenet1_0"]
    assert net.params == 1_248_424
    assert abs(model.summary(net, 224)["macs"] - 818.9e6) <= 0.005 * 818.9e6


def test_bypass_variant_adds_no_parameters():
    net = ARCHS["squeezenet1_0_bypass"]
    assert net.params == ARCHS["squeezenet1_0"].params
    assert [f.name for f in net.fires if f.bypass] == ["fire3", "fire5", "fire7", "fire9"]


def test_torchvision_names():
    shapes = ARCHS["squeezenet1_1"].param_shapes
    assert shapes["features.0.weight"] == (64, 3, 3, 3)
    assert shapes["features.3.squeeze.weight"] == (16, 64, 1, 1)
    assert shapes["features.12.expand3x3.weight"] == (256, 64, 3, 3)
    assert shapes["classifier.1.weight"] == (1000, 512, 1, 1)
    v10 = ARCHS["squeezenet1_0"].param_shapes
    assert v10["features.0.weight"] == (96, 3, 7, 7)
    assert v10["features.12.squeeze.bias"] == (64,)


def test_design_space_reproduces_v10():
    net = design_space("ds", base_e=128, incr_e=128, pct3x3=0.5, freq=2, sr=0.125)
    assert net.param_shapes == ARCHS["squeezenet1_0"].param_shapes


def test_design_space_varies_squeeze_ratio():
    net = design_space("sr", sr=0.75, pct3x3=0.25)
    f = net.fires[0]
    assert (f.s1x1, f.e1x1, f.e3x3) == (96, 96, 32)


def test_bypass_needs_matching_channels():
    with pytest.raises(ValueError, match="Cin == e1x1"):
        squeezenet("bad", [(16, 64, 64)], bypass=(2,))


def test_unknown_arch():
    with pytest.raises(ValueError, match="squeezenet1_1"):
        get_arch("resnet50")


def test_npz_round_trip_and_errors(tmp_path):
    net = ARCHS["squeezenet1_1"]
    w = random_init(net, seed=4)
    path = tmp_path / "w.npz"
    save_npz(path, w)
    back = load(path, net)
    for k, v in w.arrays.items():
        np.testing.assert_array_equal(back[k], v)
    with pytest.raises(WeightsError, match="features.0.weight has shape"):
        load(path, ARCHS["squeezenet1_0"])
    bad = dict(w.arrays)
    del bad["classifier.1.bias"]
    np.savez(tmp_path / "missing.npz", **bad)
    with pytest.raises(WeightsError, match="missing classifier.1.bias"):
        load(tmp_path / "missing.npz", net)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(WeightsError, match="not a readable"):
        load(tmp_path / "junk.npz", net)


def test_random_init_is_deterministic():
    a = random_init(ARCHS["squeezenet1_1"], 0)
    b = random_init(ARCHS["squeezenet1_1"], 0)
    assert a.is_random and "random init" in a.source
    for k in a.arrays:
        np.testing.assert_array_equal(a[k], b[k])


def test_summary_cli_json(capsys):
    assert model.main(["summary", "--arch", "squeezenet1_1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["params"] == 1_235_496 and "macs" in out
    assert [r["name"] for r in out["layers"]][:3] == ["conv1", "maxpool1", "fire2"]


def test_cli_reports_bad_weights_in_one_line(tmp_path, capsys):
    (tmp_path / "w.npz").write_bytes(b"nope")
    assert model.main(["infer", "--weights", str(tmp_path / "w.npz")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
