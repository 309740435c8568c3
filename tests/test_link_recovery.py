"""A link nobody can wedge: the simulated board (the core's RTL behind a pty) after a host
that died mid-frame, the driver's resynchronization, and a small fuzz campaign.

The UART-level counterparts (every cut point of a frame, at 12 Mbaud) are in
``sim/tb_board.py``; the long campaign is ``python -m sim.fuzz --chunks 20000``.
"""

import json
import os
import random
import re
import time

import pytest
import serial

from sim.board import SimulatedBoard
from sim.fuzz import CheckFailed, Fuzzer
from sim.fuzz import run as fuzz
from spec.protocol import Command, Reply, encode_frame, item_bytes
from sw.driver import Accelerator, LinkTimeout
from sw.driver.__main__ import main as driver_main
from sw.driver.link import Link


@pytest.fixture(scope="module")
def sim():
    with SimulatedBoard() as board:
        yield board


def expected_seq(port) -> int:
    """RESET with a SEQ of ours: the device then expects the next one."""
    link = Link(port, timeout=5.0)
    link.seq = 0x30
    link.reset()
    return link.seq


@pytest.mark.parametrize("cut", [1, 4, 6, 7, 8, 60, 246, 247, 248])
def test_info_succeeds_after_a_frame_cut_short(sim, cut, capsys):
    """A host writes part of a frame with the SEQ the device expects and dies; the next
    ``sw.driver info`` answers within 2 s (it may have to resend its RESET once the device
    drops the cut frame: its RESET can land in that frame's payload)."""
    with serial.Serial(sim.port, sim.baud, timeout=0.05) as port:
        seq = expected_seq(port)
        rows = bytes(3 * item_bytes(sim.params)[Command.LOAD_WEIGHTS])
        frame = encode_frame(Command.LOAD_WEIGHTS, seq, rows)
        assert len(frame) == 249
        port.write(frame[:cut])
        port.flush()
    start = time.monotonic()
    assert driver_main(["info", "--port", sim.port, "--baud", str(sim.baud), "--json",
                        "--quiet"]) == 0
    elapsed = time.monotonic() - start
    info = json.loads(capsys.readouterr().out)
    assert info["params"]["ic_lanes"] == sim.params.ic_lanes
    assert elapsed < 2.0, f"cut after {cut} bytes: info took {elapsed:.2f} s"
    if cut >= 7:  # past the header: the device waited for the rest, then dropped it
        assert info["counters"]["rx_timeouts"] >= 1


def test_a_frame_swallowed_by_a_cut_one_is_resent_at_once(sim):
    """The driver's own IDENTIFY lands in the payload of a frame cut short; the device drops
    that frame with ERROR TIMEOUT for the same SEQ, and the driver resends at once instead of
    waiting out its timeout."""
    with Accelerator.open(sim.port, sim.baud, timeout=10.0) as acc:
        before = acc.counters()["rx_timeouts"]
        # the next SEQ, so the device takes the header and waits for 150 more bytes
        acc.link.port.write(encode_frame(Command.LOAD_QPARAMS, acc.link.seq, bytes(200))[:50])
        resends = acc.link.stats.resends
        start = time.monotonic()
        assert acc.identify().params == sim.params
        assert time.monotonic() - start < 2.0  # far below the 10 s timeout
        assert acc.link.stats.resends > resends
        assert acc.counters()["rx_timeouts"] == before + 1


def test_reset_gives_up_in_its_timeout_and_says_what_it_tried(tmp_path):
    """Nothing behind the port: RESET fails within --timeout (not five times over), and the
    message says how often it was sent, over how long, and that nothing came back."""
    master, slave = os.openpty()
    try:
        with serial.Serial(os.ttyname(slave), 12_000_000, timeout=0.05) as port:
            link = Link(port, timeout=1.5)
            start = time.monotonic()
            with pytest.raises(LinkTimeout) as err:
                link.reset()
            elapsed = time.monotonic() - start
    finally:
        os.close(master)
        os.close(slave)
    assert 1.4 < elapsed < 2.0
    text = str(err.value)
    assert re.search(r"sent [3-5] times over 1\.[5-7] s", text), text
    assert "0 bytes came back" in text
    assert "12,000,000 baud" in text and "\n" not in text


def test_fuzz_campaign(sim):
    """Every kind of malformed chunk, each followed by an IDENTIFY that must be answered
    within a second; the device counts what it dropped."""
    with serial.Serial(sim.port, sim.baud, timeout=0.01) as port:
        result = fuzz(port, chunks=300, seed=11, limit=1.0)
    assert result["failures"] == []
    assert result["checks_passed"] == result["checks"] == 300
    assert set(result["by_kind"]) == {"random_bytes", "sync_run", "truncated",
                                      "bad_header_crc", "bad_payload_crc", "oversized_length",
                                      "unknown_command", "out_of_sequence", "bad_length"}
    assert result["slowest_recovery_s"] < 1.0
    counters = result["device_counters"]
    assert counters["rx_timeouts"] > 0 and counters["bad_crc"] > 0
    assert counters["bad_header"] > 0 and counters["uart_errors"] == 0


def test_the_fuzzer_notices_a_device_that_loses_the_order(sim):
    """The fuzz check is not a formality: a device whose SEQ differs from the fuzzer's count
    fails it (here the fuzzer is handed a wrong count, as a device that took a bad frame
    would give it)."""
    with serial.Serial(sim.port, sim.baud, timeout=0.01) as port:
        fuzzer = Fuzzer(port, 1.0, random.Random(1))
        fuzzer.reset()
        fuzzer.expected = (fuzzer.expected + 3) & 0xFF
        with pytest.raises(CheckFailed, match="lost track of the order"):
            fuzzer.ask(Command.IDENTIFY, Reply.IDENTITY)
