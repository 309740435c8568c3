"""External memory through the real LiteDRAM controller: the simulated board with LiteDRAM's
PHY model, brought up by the driver, written and read back through the link; every bad
access refused with an error that names it, by the host and by the device."""

import dataclasses
import json
import re
import time
from pathlib import Path

import numpy as np
import pytest
import serial

from boards import get_board
from hw.dram import DramGenerationError, generate, generate_variant
from sim.board import SimulatedBoard
from sim.fuzz import run as fuzz
from spec.dram import ARTY_DDR3, ULX3S_SDR, VARIANTS, record
from spec.protocol import MAX_PAYLOAD, Command, encode_frame, pack_mem
from sw.driver import Accelerator, DeviceError
from sw.driver.__main__ import main as driver_main
from sw.driver.memory import MemoryAccessError


@pytest.mark.parametrize("variant", VARIANTS[1:])
def test_recorded_bring_up_data_is_litedrams(variant):
    """spec/dram_data holds what LiteDRAM generates today: the register addresses and the
    init sequence the driver plays are the generated core's own."""
    generated = generate_variant(variant)
    assert generated.record == record(variant)
    assert generated.verilog.exists() and "module litedram_core" in generated.verilog_text()


def test_generated_verilog_is_a_function_of_the_configuration(tmp_path):
    """A controller generated again after other generations, and after migen objects were
    made in this process, is the same Verilog (its comments aside). Generated in the caller's
    process, its always blocks came out in another order (migen orders them by a
    per-process object counter): the same logic, but another netlist for nextpnr, whose
    ULX3S result then depended on what the process had done before."""
    import migen

    first = generate(ULX3S_SDR, sim=False, root=tmp_path / "a")
    generate(ARTY_DDR3, sim=True, root=tmp_path / "b")
    made = [migen.Signal() for _ in range(1000)]
    again = generate(ULX3S_SDR, sim=False, root=tmp_path / "c")
    assert made and first.verilog != again.verilog

    def logic(core):  # its comments have a date and a hierarchy in no fixed order
        text = re.sub(r"/\*.*?\*/", "", core.verilog_text(), flags=re.S)
        return [line for line in text.splitlines() if not line.lstrip().startswith("//")]
    assert logic(first) == logic(again)


def test_a_generator_failure_is_one_line_naming_its_log(tmp_path):
    bad = dataclasses.replace(ULX3S_SDR, module="NoSuchChip")
    with pytest.raises(DramGenerationError, match=r"^LiteDRAM's generator failed for "
                       r"ulx3s_sdr_sim: AttributeError: .*NoSuchChip.* \(log: (.*)\)$") as exc:
        generate(bad, sim=True, clock_hz=50_000_000, root=tmp_path)
    assert "\n" not in str(exc.value)
    log = Path(re.search(r"\(log: (.*)\)$", str(exc.value)).group(1))
    assert "Traceback" in log.read_text()
    # nothing that looks generated is left behind
    assert [p.name for p in tmp_path.iterdir() if p.is_dir()] == []


def _instance_params(verilog: str, cell: str) -> dict[str, float | str]:
    """The parameters of the one instance of ``cell`` in Migen's Verilog."""
    blocks = re.findall(rf"^{cell} #\((.*?)\n\) ", verilog, re.S | re.M)
    assert len(blocks) == 1, f"{len(blocks)} instances of {cell}"
    params = {}
    for name, value in re.findall(r"\.(\w+)\s*\(([^)]*)\)", blocks[0]):
        value = value.strip().strip('"')
        sized = re.fullmatch(r"\d+'d(\d+)", value)
        params[name] = float(sized.group(1)) if sized else (
            float(value) if re.fullmatch(r"[\d.]+", value) else value)
    return params


def test_arty_controller_makes_the_board_clock():
    """The Arty's controller makes the board's 96 MHz (12 Mbaud / 8) itself: MMCM then PLL,
    each within its -1 speed grade's VCO range, sys4x at four times sys, its DQS copy at 90
    degrees, the IDELAY reference at 200 MHz."""
    core = generate_variant("arty_ddr3")
    assert core.record.clock_hz == get_board("arty_a7").clock_hz == 96_000_000
    text = core.verilog_text()
    mmcm = _instance_params(text, "MMCME2_ADV")
    vco = 1e3 / mmcm["CLKIN1_PERIOD"] * mmcm["CLKFBOUT_MULT_F"] / mmcm["DIVCLK_DIVIDE"]
    assert 600 <= vco <= 1200
    assert vco / mmcm["CLKOUT0_DIVIDE_F"] == 96 and vco / mmcm["CLKOUT1_DIVIDE"] == 200
    pll = _instance_params(text, "PLLE2_ADV")
    assert abs(1e3 / pll["CLKIN1_PERIOD"] - 96) < 1e-6
    vco = 96 * pll["CLKFBOUT_MULT"] / pll["DIVCLK_DIVIDE"]
    assert 800 <= vco <= 1600
    outs = {n: (vco / pll[f"CLKOUT{n}_DIVIDE"], pll[f"CLKOUT{n}_PHASE"]) for n in range(3)}
    assert sorted(outs.values()) == [(96, 0), (384, 0), (384, 90)]
    assert text.count("\nIDELAYCTRL ") == 1 and text.count("\nBUFG ") == 5
    # the design's clock is the PLL's 96 MHz, and its reset waits for both to lock
    both = re.search(r"assign (\w+) = \(\w*mmcm_locked & \w*pll_locked\);", text)
    assert both and f"assign pll_locked = {both.group(1)};" in text


def test_ulx3s_controller_declares_its_data_pins_inout():
    """LiteX's ECP5 Trellis tristate wires TRELLIS_IO's pad as an instance input, which
    would make the core's data bus an ``input`` port; hw.dram's override keeps it inout."""
    text = generate_variant("ulx3s_sdr").verilog_text()
    assert re.search(r"inout\s+wire\s+\[15:0\] sdram_dq,", text)
    assert text.count("TRELLIS_IO #(") == 16 and "input  wire   [15:0] sdram_dq" not in text


def test_ulx3s_phy_commands_are_registered_and_start_as_a_nop():
    """The ULX3S's PHY takes the DFI through a register (100 MHz on the ECP5), its
    active-low commands high until the first cycle: no command at power-up."""
    text = generate_variant("ulx3s_sdr").verilog_text()
    for name in ("cs_n", "ras_n", "cas_n", "we_n"):
        assert re.search(rf"reg\s+\w*_dfi_{name} = 1'd1;", text), name
    assert re.search(r"reg\s+\w*_dfi_rddata_en = 1'd0;", text)


@pytest.fixture(scope="module")
def board():
    with SimulatedBoard("arty_a7", memory=True) as sim:
        yield sim


@pytest.fixture(scope="module")
def acc(board):
    with Accelerator.open(board.port, board.baud) as a:
        yield a


def test_identity_reports_the_memory(acc):
    ident = acc.identity
    assert VARIANTS[ident.mem_variant] == "arty_ddr3_sim"
    assert ident.mem_size == 256 << 20 and ident.mem_port_bits == 128
    up = acc.memory.bring_up_result
    assert up.init_done and up.steps == len(record("arty_ddr3_sim").init)


def test_write_read_back_any_alignment(acc):
    rng = np.random.default_rng(7)
    mem = acc.memory
    for addr, n in [(0, 16), (0x1000, 9000), (0x20003, 1), (0x30007, 5001),
                    ((256 << 20) - 4096, 4096)]:
        data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        mem.write(addr, data)
        assert mem.read(addr, n) == data, (addr, n)
    # a partial-word write keeps the rest of its words
    mem.write(0x40000, bytes(range(48)))
    mem.write(0x40005, b"\xff\xfe")
    expect = bytearray(range(48))
    expect[5:7] = b"\xff\xfe"
    assert mem.read(0x40000, 48) == bytes(expect)


def test_host_refuses_access_beyond_the_memory(acc):
    with pytest.raises(MemoryAccessError, match=r"beyond the memory \(268,435,456 bytes"):
        acc.memory.read((256 << 20) - 8, 16)
    with pytest.raises(MemoryAccessError, match="beyond"):
        acc.memory.write(-1, b"x")


@pytest.mark.parametrize("command, fields, data, words", [
    (Command.READ_MEM, {"addr": (256 << 20) - 16, "length": 32}, b"", "beyond end"),
    (Command.READ_MEM, {"addr": 8, "length": 16}, b"", "unaligned"),
    (Command.READ_MEM, {"addr": 0, "length": 24}, b"", "unaligned"),
    (Command.READ_MEM, {"addr": 0, "length": MAX_PAYLOAD + 16}, b"", "too long"),
    (Command.WRITE_MEM, {"addr": (256 << 20) - 16}, bytes(32), "beyond end"),
    (Command.WRITE_MEM, {"addr": 4}, bytes(16), "unaligned"),
    (Command.WRITE_MEM, {"addr": 0}, bytes(17), "unaligned"),
])
def test_device_refuses_bad_memory_frames(acc, command, fields, data, words):
    """Frames the driver would never send, sent raw: the device answers each with an ERROR
    naming the fault, writes nothing, and goes on working."""
    mem = acc.memory
    mem.write((256 << 20) - 32, bytes(range(32)))
    with pytest.raises(DeviceError, match=words):
        acc._request(command, pack_mem(command, **fields) + data, 0)
    assert mem.read((256 << 20) - 32, 32) == bytes(range(32))
    assert acc.identify().mem_variant


def test_device_copy_with_its_dma(acc):
    """COPY_MEM: the DMA reader and writer move a region (several chunks and a short last
    one) through the controller's own ports; the copy reads back equal, the source is
    untouched, and the counters count every word, at most one a cycle each way."""
    mem = acc.memory
    rng = np.random.default_rng(3)
    n = 16 * (2 * 1024 + 17)
    data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
    mem.write(0x100000, data)
    mem.write(0x200000 + n, b"\xaa" * 16)  # the word after the copy stays as it was
    dma = mem.copy(0x100000, 0x200000, n)
    assert mem.read(0x200000, n + 16) == data + b"\xaa" * 16
    assert mem.read(0x100000, n) == data
    assert dma["dma_words"] == n // 16
    assert n // 16 <= dma["dma_read_cycles"] and n // 16 <= dma["dma_write_cycles"]
    with pytest.raises(MemoryAccessError, match="overlap"):
        mem.copy(0x100000, 0x100010, 64)
    # random word counts (one word; across chunk edges) at random word addresses
    for words in (1, int(rng.integers(2, 1024)), int(rng.integers(1025, 2100))):
        src, dst = (16 * int(a) for a in rng.integers(0x50000, 0x60000, 2) * [1, 2])
        data = rng.integers(0, 256, 16 * words, dtype=np.uint8).tobytes()
        mem.write(src, data)
        assert mem.copy(src, dst, 16 * words)["dma_words"] == words
        assert mem.read(dst, 16 * words) == data, (src, dst, words)


def test_device_refuses_a_copy_beyond_the_memory(acc):
    with pytest.raises(DeviceError, match="beyond end"):
        acc._request(Command.COPY_MEM, pack_mem(Command.COPY_MEM, src=0,
                                                dst=(256 << 20) - 16, length=32), 0)
    assert acc.memory.read(0, 16) is not None


@pytest.fixture
def other_host(acc):
    """A second host (the command line) on the board: ``acc`` resynchronizes afterwards, as
    a host does after another had the port."""
    yield
    acc.reset()


def test_reset_in_the_middle_of_memory_commands(acc):
    """A RESET while a long device copy and a write are under way (a host that died or was
    interrupted): the device drops them, answers the RESET, and the memory and its DMA work
    afterwards, with no stale answer or stale data in the way."""
    mem = acc.memory
    link = acc.link
    copy = encode_frame(Command.COPY_MEM, link.seq, pack_mem(
        Command.COPY_MEM, src=0x400000, dst=0x800000, length=4 << 20))
    write = encode_frame(Command.WRITE_MEM, (link.seq + 1) & 0xFF,
                         pack_mem(Command.WRITE_MEM, addr=0xC00000) + bytes(range(256)) * 15)
    link.port.write(copy + write)
    time.sleep(0.3)  # the copy is under way
    acc.reset()
    assert acc.identify().mem_variant
    data = bytes(np.random.default_rng(5).integers(0, 256, 8192, dtype=np.uint8))
    mem.write(0xD00000, data)
    assert mem.read(0xD00000, 8192) == data
    assert mem.copy(0xD00000, 0xE00000, 8192)["dma_words"] == 512
    assert mem.read(0xE00000, 8192) == data


def test_fuzz_with_memory_commands(board, other_host, acc):
    """The link fuzzer with memory commands in the mix (random kinds, addresses, lengths,
    headers cut short or overlong): every IDENTIFY after a chunk is answered, the order is
    never lost, and the memory works afterwards."""
    with serial.Serial(board.port, board.baud, timeout=0.01) as port:
        result = fuzz(port, chunks=150, seed=4, limit=2.0, memory_size=acc.memory.size)
    assert result["failures"] == []
    assert result["checks_passed"] == result["checks"] == 150
    assert result["by_kind"]["memory_command"] > 0
    acc.reset()
    acc.memory.write(0x20, b"after the fuzz")
    assert acc.memory.read(0x20, 14) == b"after the fuzz"


def test_open_goes_on_when_the_memory_does_not_come_up(board, other_host, monkeypatch):
    """A memory that does not come up (on a board: a byte lane without a read window) does
    not stop the open: the device still streams, and the failure is in the result."""
    from sw.driver import memory as memory_module

    def fail(self):
        raise MemoryAccessError("arty_ddr3: read leveling found no working window on byte "
                                "lane(s) 1: the memory cannot be used")

    monkeypatch.setattr(memory_module.Memory, "bring_up", fail)
    with Accelerator.open(board.port, board.baud) as other:
        assert other.identify().mem_variant
        result = other.memory.bring_up_result
        assert not result.init_done and "lane(s) 1" in result.error


def test_memtest_command(board, other_host, capsys):
    """``python -m sw.driver memtest`` on a small size: no errors through the link or in the
    device's copy, and DMA figures from the device's counters (at most a word a cycle)."""
    code = driver_main(["memtest", "--port", board.port, "--baud", str(board.baud),
                        "--size", "32768", "--base", "0x300000", "--json", "--quiet"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["errors"] == 0 and out["memory"] == "arty_ddr3_sim"
    assert [p["errors"] for p in out["patterns"]] == [0, 0]
    copy = out["device_copy"]
    assert copy["errors"] == 0 and copy["dst"] == 0x300000 + 32768
    assert copy["words"] == 32768 // 16
    assert 0 < copy["read_words_per_cycle"] <= 1 and 0 < copy["write_words_per_cycle"] <= 1


def test_memtest_refuses_a_region_beyond_the_memory(board, other_host, capsys):
    code = driver_main(["memtest", "--port", board.port, "--baud", str(board.baud),
                        "--size", "32768", "--base", hex((256 << 20) - 16384), "--quiet"])
    assert code == 2
    assert "inside the memory" in capsys.readouterr().err


def test_csr_read_back(acc):
    """The control bus: the registers the bring-up wrote read back."""
    assert acc.memory.csr_read("ddrctrl_init_done") == 1
    assert acc.memory.csr_read("sdram_dfii_control") == record("arty_ddr3_sim").constants[
        "dfii_control_sel"]


def test_memory_not_brought_up_answers_with_a_timeout():
    """The controller blocks its user port until brought up: the device gives up on it and
    says so (it never hangs), and the memory works once the host has brought it up."""
    with SimulatedBoard("arty_a7", memory=True) as sim, \
            Accelerator.open(sim.port, sim.baud, bring_up=False) as acc:
        with pytest.raises(DeviceError, match="did not answer.*brought up"):
            acc.memory.write(0, bytes(16))
        assert acc.identify().mem_variant  # the link is fine
        acc.memory.bring_up()
        acc.memory.write(0, bytes(range(16)))
        assert acc.memory.read(0, 16) == bytes(range(16))


def test_device_without_memory_refuses_memory_commands():
    with SimulatedBoard("arty_a7", memory=False) as sim, \
            Accelerator.open(sim.port, sim.baud) as acc:
        assert acc.memory is None and acc.identity.mem_variant == 0
        with pytest.raises(DeviceError, match="without external memory"):
            acc._request(Command.READ_MEM, pack_mem(Command.READ_MEM, addr=0, length=16), 0)
        assert acc.identify().mem_variant == 0
