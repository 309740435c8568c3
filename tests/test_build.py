"""``python -m hw.build``: the Arty plan and resource report, overrides, the open ECP5 flow."""

import json
import re

import pytest

from boards import get_board
from hw.build import main as build_main
from hw.build import platform_for
from hw.top import BoardTop
from hw.uart import baud_divisor
from spec.dram import ARTY_DDR3, ULX3S_SDR, variant_index


def test_list_boards(capsys):
    assert build_main(["--list-boards"]) == 0
    out = capsys.readouterr().out
    for name in ("arty_a7", "arty_a7_100t", "ulx3s"):
        assert name in out


def test_arty_a7_plan_includes_the_dram(tmp_path):
    """Vivado's plan (what hw.build writes before it estimates): the LiteDRAM core, its
    constraints and every DDR3 pin."""
    board = get_board("arty_a7")
    top = BoardTop(board)
    platform_for(board, "Vivado").build(top, name="top", do_build=False).extract(tmp_path)
    assert top.dram.variant == "arty_ddr3" and top.dram.record.clock_hz == board.clock_hz
    assert top.mem_variant == variant_index(ARTY_DDR3, sim=False)
    # Vivado reads the core and LiteDRAM's constraints of its synchronizers
    tcl = (tmp_path / "top.tcl").read_text()
    assert 'add_files "litedram_core.v"' in tcl and 'read_xdc "litedram_core_timing.xdc"' in tcl
    assert "module litedram_core" in (tmp_path / "litedram_core.v").read_text()
    timing = (tmp_path / "litedram_core_timing.xdc").read_text()
    assert "ars_ff1" in timing and "mr_ff" in timing and "LOC X" not in timing
    # every DDR3 pin placed with its I/O standard (amaranth-boards' ddr3 resource), the
    # internal reference for the SSTL135 inputs; the oscillator's clock constraint
    xdc = (tmp_path / "top.xdc").read_text()
    ports = {m.group(1): m.group(2) for m in re.finditer(
        r'set_property LOC (\w+) \[get_ports "(ddr3_0__[^"]+)"\]', xdc)}
    # a, ba, ras/cas/we/cs, cke/odt/reset, dm, dq, dqs pairs, clock pair
    assert len(ports) == 14 + 3 + 4 + 3 + 2 + 16 + 2 * 2 + 2
    for pin, port in (("K5", "ddr3_0__dq__io\\[0]"), ("U9", "ddr3_0__clk__p"),
                      ("N1", "ddr3_0__dqs__n\\[0]"), ("K6", "ddr3_0__rst__io")):
        assert ports.get(pin) == port, (pin, ports.get(pin))
    assert xdc.count('IOSTANDARD "SSTL135"') >= 40 and 'IOSTANDARD "DIFF_SSTL135"' in xdc
    assert "INTERNAL_VREF 0.675 [get_iobanks 34]" in xdc
    assert re.search(r"create_clock -name clk100_0__io -period 10", xdc)
    # the design's clock is the one the controller makes: no MMCM of the top's own
    verilog = (tmp_path / "top.v").read_text()
    assert "MMCME2_BASE" not in verilog and "litedram_core" in verilog


@pytest.mark.slow
def test_arty_a7_plan_and_estimate(tmp_path, capsys):
    out = tmp_path / "arty"
    assert build_main(["--board", "arty_a7", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "Vivado is not on PATH" in text
    for name in ("top.v", "top.xdc", "top.tcl", "build_top.sh", "report.json",
                 "litedram_core.v", "litedram_core_timing.xdc"):
        assert (out / name).is_file(), name
    report = json.loads((out / "report.json").read_text())
    assert report["board"] == "arty_a7" and report["device"].startswith("xc7a35t")
    assert report["memory"] == {"variant": "arty_ddr3",
                                "mem_variant": variant_index(ARTY_DDR3, sim=False),
                                "controller": "LiteDRAM 2024.12 (A7DDRPHY, MT41K128M16)",
                                "clock_hz": 96_000_000, "resident": True}
    res = report["resources"]
    for key in ("LUT", "FF", "DSP48E1", "RAMB36", "RAMB18"):
        assert isinstance(res[key], int)
    assert report["capacity"]["DSP48E1"] == 90 and report["capacity"]["RAMB36_equiv"] == 50
    assert report["fits"] is True
    assert res["DSP48E1"] <= 90 and res["RAMB36"] + (res["RAMB18"] + 1) // 2 <= 50
    assert res["LUT"] <= 0.85 * 20800
    # the estimate counts the core: its PHY (a serializer and a delay per DQ, the DQ and
    # DQS pin buffers) and its clocking
    cells = report["memory_cells"]
    assert cells["ISERDESE2"] >= 16 and cells["OSERDESE2"] >= 16 and cells["IDELAYE2"] >= 16
    assert cells["IOBUF"] == 16 and cells["IOBUFDS"] == 2 and cells["OBUFDS"] == 1
    assert cells["IDELAYCTRL"] == 1 and cells["MMCME2_ADV"] == 1 and cells["PLLE2_ADV"] == 1


@pytest.mark.slow
def test_arty_a7_estimate_without_resident_mode(tmp_path, capsys):
    """``--no-resident``: the Arty A7-35T's streaming build, the memory without resident
    mode's layer sequencer, pools and window packer (the default has them)."""
    out = tmp_path / "arty_streaming"
    assert build_main(["--board", "arty_a7", "--no-resident", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["memory"]["resident"] is False and report["fits"] is True
    res = report["resources"]
    assert res["DSP48E1"] <= 90 and res["RAMB36"] + (res["RAMB18"] + 1) // 2 <= 50
    assert res["LUT"] <= 0.85 * 20800


@pytest.mark.slow
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
    assert all(f >= report["target_mhz_by_clock"][name]
               for name, f in report["fmax_by_clock"].items()), report["fmax_by_clock"]
    # the default ULX3S bitstream has the SDR SDRAM controller on its own 50 MHz clock
    # (docs/memory.md): the system clock, the controller's and the SDRAM clock pin's copy of
    # it, each held to its constraint above; resident mode stays out
    assert report["memory"]["variant"] == "ulx3s_sdr" and not report["memory"]["resident"]
    assert set(report["target_mhz_by_clock"].values()) == {100.0, 50.0}
    assert len(report["fmax_by_clock"]) == 3, report["fmax_by_clock"]


def test_ulx3s_plan_with_the_memory(tmp_path):
    """`hw.build --board ulx3s --memory`'s design, elaborated into the open flow's plan (not
    placed: that is 15 to 40 minutes): the generated SDR controller with its pins, the SDRAM
    clock from the PLL's phase-shifted copy through an ODDRX1F, the identity's variant."""
    board = get_board("ulx3s")
    top = BoardTop(board, memory=True)
    plan = platform_for(board).build(top, name="top", do_build=False)
    files = {name: (c.decode() if isinstance(c, bytes) else c) for name, c in plan.files.items()}
    assert "module litedram_core" in files["litedram_core.v"]
    assert "inout" in re.search(r"\n\s*(\w+)\s+wire\s+\[15:0\]\s+sdram_dq", files["litedram_core.v"]
                                ).group(1)
    il = files["top.il"]
    assert "litedram_core" in il and "ODDRX1F" in il
    assert top.mem_variant == variant_index(ULX3S_SDR, sim=False)
    lpf = files["top.lpf"]
    for pin in ("sdram_0__dq", "sdram_0__a", "sdram_0__clk"):
        assert pin in lpf, pin
