"""``python -m hw.build``: the Arty plan and resource report, overrides, the open ECP5 flow."""

import json

import pytest

from boards import get_board
from hw.build import main as build_main
from hw.uart import baud_divisor


def test_list_boards(capsys):
    assert build_main(["--list-boards"]) == 0
    out = capsys.readouterr().out
    for name in ("arty_a7", "arty_a7_100t", "ulx3s"):
        assert name in out


def test_arty_a7_plan_and_estimate(tmp_path, capsys):
    out = tmp_path / "arty"
    assert build_main(["--board", "arty_a7", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "Vivado is not on PATH" in text
    for name in ("top.v", "top.xdc", "top.tcl", "build_top.sh", "report.json"):
        assert (out / name).is_file(), name
    assert "create_clock" in (out / "top.xdc").read_text()
    report = json.loads((out / "report.json").read_text())
    assert report["board"] == "arty_a7" and report["device"].startswith("xc7a35t")
    res = report["resources"]
    for key in ("LUT", "FF", "DSP48E1", "RAMB36", "RAMB18"):
        assert isinstance(res[key], int)
    assert report["capacity"]["DSP48E1"] == 90 and report["capacity"]["RAMB36_equiv"] == 50
    assert report["fits"] is True
    assert res["DSP48E1"] <= 90 and res["RAMB36"] + (res["RAMB18"] + 1) // 2 <= 50
    assert res["LUT"] <= 0.85 * 20800


def test_a_design_that_does_not_fit_names_the_resource(tmp_path, capsys):
    out = tmp_path / "big"
    assert build_main(["--board", "arty_a7", "--out", str(out), "--param", "oc_lanes=6"]) == 1
    err = capsys.readouterr().err
    assert "does not fit" in err and "DSP48E1" in err
    assert json.loads((out / "report.json").read_text())["fits"] is False


def test_parameter_errors_are_one_line(tmp_path, capsys):
    assert build_main(["--board", "arty_a7", "--out", str(tmp_path), "--param",
                       "ic_lanes=3"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ic_lanes=3: must be a power of two") and err.count("\n") == 1
    toml = tmp_path / "p.toml"
    toml.write_text("[engine]\nnot_a_param = 1\n")
    assert build_main(["--board", "arty_a7", "--out", str(tmp_path), "--params",
                       str(toml)]) == 2
    assert "unknown engine parameter 'not_a_param'" in capsys.readouterr().err


@pytest.mark.parametrize("clock,baud", [(96_000_000, b) for b in
                                        (12_000_000, 6_000_000, 3_000_000, 2_000_000,
                                         1_000_000, 921_600, 115_200)]
                         + [(100_000_000, b) for b in (2_000_000, 1_000_000, 115_200)])
def test_supported_bauds_are_within_one_percent(clock, baud):
    div = baud_divisor(clock, baud)
    assert abs(clock / div - baud) / baud <= 0.01


def test_unsupported_baud_is_refused():
    with pytest.raises(ValueError, match="baud=3000000: 100 MHz / 33 is 1.01% off"):
        baud_divisor(100_000_000, 3_000_000)


@pytest.mark.slow
def test_ulx3s_open_flow_to_bitstream(tmp_path, capsys):
    out = tmp_path / "ulx3s"
    assert build_main(["--board", "ulx3s", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert (out / "top.bit").stat().st_size > 100_000
    assert report["fits"] is True
    # the bitstream meets its own clock (the build fails otherwise), and that is the 100 MHz
    # the Arty's engine must reach on the ECP5-85F (speed 6)
    assert report["timing_met"] is True
    assert get_board("ulx3s").clock_hz == 100_000_000
    assert report["fmax_mhz"] >= 100, report["fmax_by_clock"]
