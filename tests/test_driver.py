"""The host driver end to end through the simulated board (the core's RTL under Verilator,
behind a pty), with faults injected on the transport: every fault is detected and then
retried or reported; a wrong result is never returned."""

import dataclasses
import json
import time

import numpy as np
import pytest

from sim.board import simulated_accelerator
from sim.fire_cases import random_conv, random_fire, random_input
from spec.params import ConfigError
from spec.protocol import Command, Frame, FrameDecoder, LinkError, Reply, encode_frame, item_bytes
from spec.tiling import Shape
from sw import ops
from sw.driver import CRCError, DeviceError, LinkTimeout, OutputLost
from sw.driver.__main__ import main as driver_main


class FaultyPort:
    """A serial port with faults: ``corrupt_writes``/``drop_writes`` name the write calls
    (host to device) to damage, ``corrupt_reads`` the read calls (device to host), and
    ``stall`` makes the device deaf and mute; ``interrupt_after`` raises KeyboardInterrupt
    on that write, as Ctrl-C would."""

    def __init__(self, port):
        self.port = port
        self.writes = self.reads = 0
        self.corrupt_writes: set[int] = set()
        self.drop_writes: set[int] = set()
        self.lose_writes: set[int] = set()  # never reach the device at all
        self.lost_seqs: list[int] = []  # SEQ of each frame lost that way
        self.corrupt_reads: set[int] = set()
        self.stall = False
        self.interrupt_after = None
        self.replies = FrameDecoder()  # everything the device sent, as it sent it
        self.seen: list[Frame] = []

    @property
    def in_waiting(self):
        return self.port.in_waiting

    @property
    def timeout(self):
        return self.port.timeout

    @timeout.setter
    def timeout(self, value):
        self.port.timeout = value

    def write(self, data):
        self.writes += 1
        if self.interrupt_after is not None and self.writes >= self.interrupt_after:
            self.interrupt_after = None
            raise KeyboardInterrupt
        if self.stall:
            return len(data)
        data = bytearray(data)
        if self.writes in self.lose_writes:
            self.lost_seqs.append(data[2])  # SYNC KIND SEQ ...
            return len(data)
        if self.writes in self.corrupt_writes and len(data) > 9:
            data[len(data) // 2] ^= 0x5A
        if self.writes in self.drop_writes and len(data) > 20:
            del data[10:15]
        return self.port.write(bytes(data))

    def read(self, n):
        data = self.port.read(n)
        if self.stall:
            return b""
        if data:
            self.seen += self.replies.feed(data)
            self.reads += 1
            if self.reads in self.corrupt_reads:
                data = bytearray(data)
                data[len(data) // 2] ^= 0xFF
                data = bytes(data)
        return data

    def close(self):
        self.port.close()


@pytest.fixture(scope="module")
def board():
    with simulated_accelerator(timeout=3.0, retries=3) as acc:
        faulty = FaultyPort(acc.link.port)
        acc.link.port = faulty
        yield acc, faulty


@pytest.fixture
def acc(board):
    acc, faulty = board
    faulty.corrupt_writes.clear()
    faulty.drop_writes.clear()
    faulty.lose_writes.clear()
    faulty.lost_seqs.clear()
    faulty.corrupt_reads.clear()
    faulty.stall = False
    faulty.interrupt_after = None
    acc.link.timeout = 3.0
    acc.reset()
    faulty.seen.clear()
    return acc, faulty


def layer_case(seed, shape=(4, 5, 128, 32, 128, 128), bypass=False):
    rng = np.random.default_rng(seed)
    h, w, cin, s, e1, e3 = shape
    layer = random_fire(rng, cin, s, e1, e3, bypass=bypass)
    x = random_input(rng, h, w, cin)
    return layer, x, ops.fire(x, layer)


def test_identify_reads_the_engine_parameters(acc):
    a, _ = acc
    ident = a.identify()
    assert ident.params.lanes == 80 and ident.clock_hz == 96_000_000
    assert ident.rx_slots >= 1 and ident.max_payload == 4096


def test_layers_bit_exact_single_and_tiled(acc):
    a, _ = acc
    for seed, shape, bypass in [(1, (4, 5, 128, 32, 128, 128), False),
                                (2, (3, 3, 512, 64, 256, 256), True)]:
        layer, x, want = layer_case(seed, shape, bypass)
        r = a.run_fire(layer, x)
        np.testing.assert_array_equal(r.output, want)
        assert r.cycles > 0 and r.runs == (1 if shape[2] == 128 else 3)
    c = a.counters()
    assert c["runs"] >= 3 and c["bad_crc"] == 0


def test_corrupted_bytes_to_the_device_are_resent(acc):
    a, faulty = acc
    layer, x, want = layer_case(3)
    faulty.corrupt_writes.update({faulty.writes + 3, faulty.writes + 7})
    before = a.link.stats.resends
    np.testing.assert_array_equal(a.run_fire(layer, x).output, want)
    assert a.link.stats.resends > before
    assert a.counters()["bad_crc"] >= 2


def test_dropped_bytes_to_the_device_are_resent(acc):
    a, faulty = acc
    layer, x, want = layer_case(4)
    faulty.drop_writes.add(faulty.writes + 4)
    before = a.link.stats.resends
    np.testing.assert_array_equal(a.run_fire(layer, x).output, want)
    assert a.link.stats.resends > before


def test_corrupted_output_is_never_returned(acc):
    a, faulty = acc
    layer, x, want = layer_case(5)
    # damage what comes back: the run is detected as incomplete and run again
    faulty.corrupt_reads.update({faulty.reads + 5, faulty.reads + 9})
    np.testing.assert_array_equal(a.run_fire(layer, x).output, want)
    # damage every read: no result at all rather than a wrong one
    a.run_retries, saved = 1, a.run_retries
    try:
        faulty.corrupt_reads.update(range(faulty.reads + 1, faulty.reads + 100000))
        with pytest.raises((OutputLost, LinkTimeout, CRCError)):
            a.run_fire(layer, x)
    finally:
        a.run_retries = saved
        faulty.corrupt_reads.clear()


def test_a_stalled_device_times_out_naming_the_command(acc):
    a, faulty = acc
    a.link.timeout = 0.5
    faulty.stall = True
    with pytest.raises(LinkTimeout, match="READ_COUNTERS"):
        a.counters()
    faulty.stall = False
    a.reset()
    assert a.counters()["error"] == 0


def test_device_error_names_the_field(acc):
    a, _ = acc
    layer, x, _ = layer_case(6, (8, 8, 64, 16, 64, 64))
    real = a.identity
    # a host that believes the engine is bigger than it is (63 rows packs like 56): the
    # device still refuses
    big = dataclasses.replace(real, params=real.params.replace(max_h=63))
    a._identity = big
    try:
        xx = np.concatenate([x] * 8, axis=0)[:60]  # 60 rows > max_h = 56
        with pytest.raises(DeviceError, match="h: height is 0 or above max_h") as info:
            a.run_fire(layer, xx)
        assert info.value.field == "h"
    finally:
        a._identity = real
    a.reset()
    np.testing.assert_array_equal(a.run_fire(layer, x).output, ops.fire(x, layer))


# Each dimension one past the device's maximum, in a layer the host plans with a maximum it
# believes larger (2**k - 1 for a k-bit field: the configuration word still packs): the device
# refuses it, naming the field, and then runs a layer bit-exactly.
BEYOND = {"h": ("max_h", 0), "w": ("max_w", 1), "cin": ("max_cin", 2),
          "s": ("max_squeeze", 3), "e1": ("max_e1", 4), "e3": ("max_e3", 5)}
CODES = {"h": ConfigError.H, "w": ConfigError.W, "cin": ConfigError.CIN,
         "s": ConfigError.SQUEEZE, "e1": ConfigError.E1, "e3": ConfigError.E3}


@pytest.mark.parametrize("field", list(BEYOND))
def test_each_dimension_beyond_the_maximum_is_refused(acc, field):
    a, _ = acc
    name, index = BEYOND[field]
    code = CODES[field]
    real = a.identity
    limit = getattr(real.params, name)
    shape = [2, 2, 16, 16, 5, 5]  # small everywhere else: one run
    shape[index] = limit + 1
    layer, x, _ = layer_case(20, tuple(shape))
    believed = real.params.replace(**{name: (1 << limit.bit_length()) - 1})
    a._identity = dataclasses.replace(real, params=believed)
    try:
        assert len(a.plan(Shape(*shape)).tiles) == 1  # one run, whose CONFIGURE is refused
        with pytest.raises(DeviceError) as info:
            a.run_fire(layer, x)
    finally:
        a._identity = real
    assert info.value.code == code and info.value.field == code.field == field
    assert str(info.value) == f"device refused the configuration: {field}: {code.message}"
    # no reset by hand: the driver put both sides back in step after the refusal
    small, xs, want = layer_case(21, (3, 4, 64, 16, 64, 64))
    np.testing.assert_array_equal(a.run_fire(small, xs).output, want)


def raw_exchange(faulty, data: bytes, timeout: float = 3.0) -> list[Frame]:
    """Write ``data`` around the driver's link and return the device's answer frames."""
    faulty.write(data)
    decoder, frames = FrameDecoder(), []
    deadline = time.monotonic() + timeout
    while not frames and time.monotonic() < deadline:
        faulty.timeout = 0.05
        frames = decoder.feed(faulty.read(4096))
    return frames


def test_a_frame_ahead_of_sequence_is_refused_and_not_taken(acc):
    """Frames are taken strictly in SEQ order: one a SEQ ahead is answered ERROR SEQUENCE
    with the SEQ the device expects, and is not acted on (a CONFIGURE does not reach the
    engine, a READ_COUNTERS is not answered with counters); the driver, whose SEQ is still the
    expected one, goes on without a reset."""
    a, faulty = acc
    layer, x, want = layer_case(22, (3, 4, 64, 16, 64, 64))
    runs = a.counters()["runs"]
    expected = a.link.seq
    ahead = (expected + 1) & 0xFF
    plan = a.plan(Shape(3, 4, 64, 16, 64, 64))
    # a configuration that, taken, would count a run (it loads and computes nothing)
    word = plan.config(plan.tiles[0], layer, load=False, compute=False)
    config = word.to_bytes(item_bytes(a.params)[Command.CONFIGURE], "little")
    for command, payload in ((Command.READ_COUNTERS, b""), (Command.CONFIGURE, config)):
        frames = raw_exchange(faulty, encode_frame(command, ahead, payload))
        assert [(f.kind, f.seq, f.payload[:2]) for f in frames] == [
            (Reply.ERROR, ahead, bytes([LinkError.SEQUENCE, expected]))], frames
    c = a.counters()  # at the SEQ the device expects: answered
    assert c["runs"] == runs and c["error"] == 0  # the CONFIGURE never reached the engine
    np.testing.assert_array_equal(a.run_fire(layer, x).output, want)


def test_a_lost_frame_makes_the_next_one_ahead_and_the_driver_goes_back(acc):
    """A frame lost on the wire: the next one arrives ahead of sequence, the device answers
    ERROR SEQUENCE naming the lost frame's SEQ, and the driver resends from there at once
    (no timeout), with a bit-exact result."""
    a, faulty = acc
    layer, x, want = layer_case(23)
    faulty.lose_writes.add(faulty.writes + 3)
    before = a.link.stats.resends
    bad_crc = a.counters()["bad_crc"]
    a.link.timeout = 60.0  # a recovery by timeout would take this long
    start = time.monotonic()
    np.testing.assert_array_equal(a.run_fire(layer, x).output, want)
    assert time.monotonic() - start < 30.0  # recovered on the device's answer
    assert len(faulty.lost_seqs) == 1
    lost = faulty.lost_seqs[0]
    refusals = [f for f in faulty.seen if f.kind == Reply.ERROR]
    assert refusals and all(f.payload[:2] == bytes([LinkError.SEQUENCE, lost])
                            for f in refusals), refusals
    assert refusals[0].seq == (lost + 1) & 0xFF
    assert a.link.stats.resends > before
    assert a.counters()["bad_crc"] == bad_crc  # nothing was corrupted, only lost


def test_ctrl_c_leaves_the_device_usable(acc):
    a, faulty = acc
    layer, x, want = layer_case(7)
    faulty.interrupt_after = faulty.writes + 6
    with pytest.raises(KeyboardInterrupt):
        a.run_fire(layer, x)
    np.testing.assert_array_equal(a.run_fire(layer, x).output, want)


def test_out_of_order_frames_get_a_stall_or_error_not_a_hang(acc):
    a, _ = acc
    a.link.timeout = 30.0  # the device's stall timeout is 2**20 cycles of simulation
    # input for a layer that was never configured: the device answers (no hang)
    stalls = a.counters()["stalls"]
    with pytest.raises(DeviceError, match="no progress during RUN_INPUT"):
        a.link.request(Command.RUN_INPUT, bytes(16))
    # the device answered only once the frame's one item was dropped, not when it had
    # crossed towards the engine (hw.core's register); the driver then reset the device, and
    # the next layer is bit-exact and stalls nowhere
    layer, x, want = layer_case(7)
    np.testing.assert_array_equal(a.run_fire(layer, x).output, want)
    assert a.counters()["stalls"] == stalls + 1
    a.reset()
    assert a.counters()["stalls"] >= 1


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert driver_main(["info", "--port", str(tmp_path / "ttyNOPE")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot open serial port") and err.count("\n") == 1
    (tmp_path / "bad.png").write_bytes(b"not an image")
    assert driver_main(["infer", "--port", str(tmp_path / "x"), "--image",
                        str(tmp_path / "bad.png")]) == 2
    err = capsys.readouterr().err
    assert "not a readable PNG or JPEG" in err and err.count("\n") == 1
    np.savez(tmp_path / "w.npz", junk=np.zeros(3))
    assert driver_main(["infer", "--weights", str(tmp_path / "w.npz")]) == 2
    err = capsys.readouterr().err
    assert "does not fit squeezenet1_1" in err and err.count("\n") == 1


def test_cli_run_fire_json(capsys):
    assert driver_main(["run-fire", "--layer", "fire9", "--size", "96", "--calib", "2",
                        "--check", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["match"] is True and out["runs"] == 3
    assert 0 < out["compute_cycles"] <= out["device_cycles"]


def test_convolutions_on_the_device(acc):
    """``run_conv`` through the simulated board: conv10's shape smaller (5x4x512 -> 70, two
    channel blocks), conv1 v1.1 packed (3x3 stride 2 on a 23x23 image), a map wider than the
    engine's max_w without ReLU (3x70: two pixel blocks); bit-exact, with cycles; a damaged
    reply is run again, never returned; a Fire layer runs after them (its weights reloaded)."""
    a, faulty = acc
    rng = np.random.default_rng(30)
    cases = [((5, 4, 512), 70, 1, 1, True, 2), ((23, 23, 3), 64, 3, 2, True, 1),
             ((3, 70, 96), 24, 1, 1, False, 2)]
    for (h, w, cin), cout, kernel, stride, relu, runs in cases:
        conv, z_in = random_conv(rng, cout, cin, kernel, relu=relu)
        x = random_input(rng, h, w, cin)
        r = a.run_conv(conv, x, z_in=z_in, stride=stride)
        np.testing.assert_array_equal(
            r.output, ops.conv2d(x, conv.weight, conv.bias, z_in, conv.rq, stride=stride))
        assert r.runs == runs and 0 < r.compute <= r.cycles
    faulty.corrupt_reads.update({faulty.reads + 3})
    np.testing.assert_array_equal(a.run_conv(conv, x, z_in=z_in).output,
                                  ops.conv2d(x, conv.weight, conv.bias, z_in, conv.rq))
    layer, xf, want = layer_case(31, (3, 4, 64, 16, 64, 64))
    np.testing.assert_array_equal(a.run_fire(layer, xf).output, want)


def test_cli_infer_runs_the_convolutions_on_the_device(capsys):
    """``infer --check --json``: conv1 (packed, 63x63 at 128x128: past the engine's 56x56),
    every Fire layer and conv10 on the device, each bit-exact, with compute cycles, MACs and
    utilization; the pools on the host."""
    assert driver_main(["infer", "--arch", "squeezenet1_1", "--size", "128", "--calib", "2",
                        "--check", "--json", "--quiet"]) == 0
    out = json.loads(capsys.readouterr().out)
    where = {r["name"]: r["where"] for r in out["layers"]}
    assert [n for n, w in where.items() if w == "host"] == ["maxpool1", "maxpool2", "maxpool3",
                                                            "avgpool"]
    device = [r for r in out["layers"] if r["where"] == "device"]
    assert [r["name"] for r in device][::len(device) - 1] == ["conv1", "conv10"]
    assert out["all_match"] is True and all(r["match"] is True for r in device)
    for r in device:
        assert 0 < r["compute_cycles"] <= r["cycles"]
        assert 0 < r["utilization"] <= 1 and r["macs"] > 0
    conv1 = device[0]
    assert conv1["shape"] == [63, 63, 64] and conv1["macs"] == 63 * 63 * 64 * 27


def test_a_wide_configuration_from_the_link_loses_no_value(acc, monkeypatch):
    """A host that asks for the wide output (``wide``, the layer sequencer's) over the link:
    the core clears the field, the run gives one value a beat on the link's path, and every
    value arrives, bit-exact."""
    from spec.tiling import ConvPlan

    a, _ = acc
    config = ConvPlan.config
    monkeypatch.setattr(ConvPlan, "config",
                        lambda self, *args, **kw: config(self, *args, **dict(kw, wide=True)))
    rng = np.random.default_rng(40)
    conv, z_in = random_conv(rng, 24, 32)
    x = random_input(rng, 3, 5, 32)
    r = a.run_conv(conv, x, z_in=z_in)
    np.testing.assert_array_equal(r.output, ops.conv2d(x, conv.weight, conv.bias, z_in, conv.rq))
