"""Resident mode on the simulated board with its memory (the real LiteDRAM controller and
LiteDRAM's PHY model): layer programs walked by the on-chip sequencer, bit-exact against the
golden model; every bad descriptor stopped with its name, the device answering after; the
link refusing what would disturb a running program and serving the memory meanwhile."""


import numpy as np
import pytest

from sim.board import SimulatedBoard
from sim.fire_cases import random_fire, random_input
from spec.params import ConfigError, pack_config
from spec.program import (
    DESC_BYTES,
    STATS_BYTES,
    Items,
    Op,
    SeqError,
    Unit,
    pack_descriptor,
    unpack_descriptor,
    unpack_stats,
)
from spec.protocol import Command, LinkError, Reply, item_bytes, pack_mem
from sw import ops
from sw.driver import Accelerator, DeviceError
from sw.driver.resident import Layout
from sw.network import get_arch
from sw.quantize import quantize_network
from sw.weights import random_init

BASE = 0x100000  # programs and data here; below it, scratch for the memory-traffic checks


@pytest.fixture(scope="module")
def board():
    with SimulatedBoard("arty_a7", memory=True) as sim:
        yield sim


@pytest.fixture(scope="module")
def acc(board):
    with Accelerator.open(board.port, board.baud) as a:
        yield a


@pytest.fixture
def device(acc):
    acc.reset()
    return acc


def two_layers(acc, seed, shapes):
    """A program of chained random Fire layers: (layout, program, [(layer, x, slot)])."""
    rng = np.random.default_rng(seed)
    mem = acc.memory
    lay = Layout(acc.params, port_bits=mem.config.port_bits, mem_size=mem.size, base=BASE)
    h, w, cin = shapes[0][:3]
    src = lay.slot((h, w, cin))
    x = random_input(rng, h, w, cin)
    descs, steps = [], []
    first = src
    for (_, _, c, s, e1, e3) in shapes:
        layer = random_fire(rng, c, s, e1, e3)
        more, out, runs = lay.fire(f"fire{len(steps)}", layer, src)
        descs += more
        steps.append((layer, out, runs))
        src = out
    program = lay.program(descs)
    for addr, data in lay.regions:
        mem.write(addr, data)
    mem.write(first.addr, first.pack(x))
    return lay, program, descs, x, steps


def test_program_runs_fire_layers_bit_exact(device):
    """Two chained layers, the second tiled (a retained squeeze map; a tile of e1 and e3
    channels, e3-only tiles, runs ending mid-word): every output exactly the golden model's,
    the stats record the words read."""
    acc = device
    shapes = [(5, 6, 64, 16, 64, 64), (5, 6, 128, 64, 256, 256)]
    lay, program, descs, x, steps = two_layers(acc, 1, shapes)
    assert len(descs) > 2  # the second layer is tiled
    assert any(d["len0"] == 0 for d in descs) and any(d["len0"] and d["len1"] for d in descs)
    assert any(d["len1"] % 16 for d in descs)
    counters = acc.run_program(program)
    assert counters["prog_status"] == SeqError.OK and counters["prog_index"] == len(descs)
    mem = acc.memory
    for layer, out, _ in steps:
        want = ops.fire(x, layer)
        got = out.unpack(mem.read(out.addr, out.nbytes))
        np.testing.assert_array_equal(got, want)
        x = want
    # stats: the words of the descriptor, configuration, weights, parameters and input
    it = Items.of(acc.params, mem.config.port_bits)
    for d, run in zip(descs, [r for _, _, runs in steps for r in runs], strict=True):
        st = unpack_stats(mem.read(run.stats_addr, STATS_BYTES))
        words = (it.desc + it.cfg + it.weights * acc.params.oc_lanes * d["w_rows"]
                 + it.qparams * d["q_count"]
                 + it.input * d["in_beats"])
        assert st["words_read"] == words
        assert st["cycles"] >= st["engine_cycles"] >= st["compute"] > 0
        assert st["words_written"] > 0


def bad_program(acc, change, seed=2):
    """A one-layer program with its first descriptor changed by ``change(desc)``."""
    lay, program, descs, x, steps = two_layers(acc, seed, [(3, 4, 32, 16, 32, 32)])
    d = dict(descs[0])
    change(d, lay)
    acc.memory.write(program, pack_descriptor(**d))
    return program, (x, steps)


def refused_config(lay, p):
    """A configuration the engine refuses (width beyond max_w), as the descriptor's item."""
    from spec.params import config_bits
    from spec.program import pack_items
    word = pack_config(p, h=3, w=p.max_w + 1, cin=32, s=16, e1=32, e3=32, load=1, compute=1,
                       squeeze=1)
    return lay.put(pack_items([word], config_bits(p), 128))


@pytest.mark.parametrize("case", ["bad_op", "misaligned", "beyond", "refused", "short_input"])
def test_bad_descriptor_is_stopped_by_name_and_the_device_goes_on(device, case):
    acc = device
    size = acc.memory.size

    def change(d, lay):
        if case == "bad_op":
            d["op"] = 9
        elif case == "misaligned":
            d["cfg_addr"] += 8
        elif case == "beyond":
            d["in_addr"] = size - 16  # the input runs past the end of the memory
        elif case == "refused":
            d["cfg_addr"] = refused_config(lay, acc.params)
            for addr, data in lay.regions[-1:]:
                acc.memory.write(addr, data)
        elif case == "short_input":
            d["in_beats"] -= 1  # the engine waits for a beat that never comes

    program, _ = bad_program(acc, change)
    expect = {"bad_op": (SeqError.BAD_OP, "BAD_OP"), "misaligned": (SeqError.ALIGN, "ALIGN"),
              "beyond": (SeqError.RANGE, "RANGE"),
              "refused": (SeqError.CONFIG, "w: "),
              "short_input": (SeqError.STALL, "STALL")}[case]
    with pytest.raises(DeviceError, match=expect[1]) as info:
        acc.run_program(program)
    assert info.value.code == expect[0]
    c = acc.counters()
    assert c["prog_status"] == expect[0] and c["prog_active"] == 0 and c["prog_index"] == 0
    if case == "bad_op":
        assert c["prog_detail"] == 9
    if case == "misaligned":
        assert c["prog_detail"] == 1  # cfg_addr, the first word-aligned field
    if case == "refused":
        assert c["prog_detail"] == ConfigError.W
    # the device answers, and a good program after it runs bit-exact
    assert acc.identify().mem_size == size
    lay, program, descs, x, steps = two_layers(acc, 3, [(3, 4, 32, 16, 32, 32)])
    acc.run_program(program)
    layer, out, _ = steps[0]
    np.testing.assert_array_equal(out.unpack(acc.memory.read(out.addr, out.nbytes)),
                                  ops.fire(x, layer))


def test_link_refuses_what_would_disturb_a_program_and_serves_the_memory(device):
    """While a program runs (one layer forty times over: millions of cycles), streaming
    commands, COPY_MEM and another RUN_PROGRAM are refused as BUSY; memory writes and reads
    go on (the next image's upload overlaps the current one's compute); a RESET stops the
    program, and the engine works after it."""
    acc = device
    lay, _, descs, x, steps = two_layers(acc, 6, [(28, 28, 64, 16, 64, 64)])
    program = lay.program(descs * 40)
    acc.memory.write(*lay.regions[-1])
    before = acc.start_program(program)
    assert acc.counters()["prog_active"] == 1
    config = bytes(item_bytes(acc.params)[Command.CONFIGURE])
    for command, payload in [(Command.CONFIGURE, config),
                             (Command.COPY_MEM, pack_mem(Command.COPY_MEM, src=0, dst=4096,
                                                         length=16)),
                             (Command.RUN_PROGRAM, program.to_bytes(4, "little"))]:
        with pytest.raises(DeviceError, match="a layer program is running") as info:
            acc._request(command, payload, Reply.ACK)
        assert info.value.code == LinkError.BUSY
    data = np.random.default_rng(4).integers(0, 256, 5000, dtype=np.uint8).tobytes()
    acc.memory.write(0x1000, data)
    assert acc.memory.read(0x1000, len(data)) == data
    assert acc.counters()["prog_active"] == 1
    acc.reset()
    c = acc.counters()
    assert c["prog_active"] == 0 and c["prog_status"] == SeqError.ABORTED
    assert (c["programs"] - before) == 1 and c["prog_index"] < 40
    layer, out, _ = steps[0]
    acc.memory.write(out.addr, bytes(out.nbytes))
    again = lay.program(descs)
    acc.memory.write(*lay.regions[-1])
    assert acc.run_program(again)["prog_index"] == len(descs)
    np.testing.assert_array_equal(out.unpack(acc.memory.read(out.addr, out.nbytes)),
                                  ops.fire(x, layer))


def test_descriptor_layout_round_trips():
    fields = dict(op=Op.ENGINE, stats=1, cfg_addr=0x1234_5670, w_rows=65535, in_beats=(1 << 24) - 1,
                  off1=7, len1=9, stats_addr=0xFFFF_FFC0)
    raw = pack_descriptor(**fields)
    assert len(raw) == DESC_BYTES
    back = unpack_descriptor(raw)
    assert {k: back[k] for k in fields} == fields
    assert sum(back.values()) == sum(fields.values())
    with pytest.raises(ValueError, match="w_rows"):
        pack_descriptor(w_rows=1 << 16)
    with pytest.raises(ValueError, match="unknown"):
        pack_descriptor(colour=1)


def test_network_resident_matches_the_golden_model(acc):
    """SqueezeNet v1.1 loaded once (checked by read-back) and run as one program: conv1 with
    its windows packed on the device, the max pools, every Fire layer, conv10 and the
    average pool, each layer's output bit-exact, the logits the golden model's; then three
    images streamed, each uploaded while the one before computes."""
    net = get_arch("squeezenet1_1")
    rng = np.random.default_rng(5)
    images = [rng.random((64, 64, 3)).astype(np.float32) for _ in range(4)]
    qnet = quantize_network(net, random_init(net, 1), images[:2])
    resident = acc.load(qnet, (64, 64, 3))
    assert resident.verified and resident.whole
    result = resident.infer(images[1], check=True)
    assert [r.name for r in result.layers] == [la.name for la in net.layers]
    assert all(r.where == "device" and r.match for r in result.layers)
    assert all(r.cycles >= r.compute > 0 for r in result.layers if r.macs)
    np.testing.assert_array_equal(result.logits, qnet.logits(images[1]))
    streamed = list(resident.stream(images[1:]))
    assert len(streamed) == 3
    for image, (y, records) in zip(images[1:], streamed, strict=True):
        np.testing.assert_array_equal(y, qnet.forward(qnet.quantize_input(image)))
        # the stats are this image's: every layer ran, the whole within a few refreshes
        assert [r.name for r in records] == [r.name for r in result.layers]
        assert all(r.cycles > 0 for r in records)
        assert sum(r.cycles for r in records) == pytest.approx(result.device_cycles, rel=0.02)
    # the twin program reads the other slot: two different images, two different outputs
    assert not np.array_equal(streamed[0][0], streamed[1][0])


def unit_program(acc, op, **fields):
    """A one-descriptor program of a pool op on a small map at BASE."""
    mem = acc.memory
    lay = Layout(acc.params, port_bits=mem.config.port_bits, mem_size=mem.size, base=BASE)
    src = lay.slot((5, 5, 16))
    out = lay.slot((5, 5, 16))
    d = dict(op=op, h=5, w=5, c=1, in_addr=src.addr, in_beats=25, out_addr=out.addr)
    d.update(fields)
    program = lay.program([d])
    for addr, data in lay.regions:
        mem.write(addr, data)
    return program


@pytest.mark.parametrize("op,fields,unit,error", [
    (Op.MAXPOOL, dict(h=1, in_beats=5), Unit.MAXPOOL, 1),  # no output row: H
    (Op.MAXPOOL, dict(c=40, in_beats=25 * 40), Unit.MAXPOOL, 3),  # beyond max_cw: CW
    (Op.AVGPOOL, dict(w=300), Unit.AVGPOOL, 2),  # beyond the unit's field: W
    (Op.AVGPOOL, dict(mult=1 << 20, shift=0), Unit.AVGPOOL, 4),  # SHIFT
])
def test_a_unit_refusing_its_sizes_stops_the_program_naming_it(device, op, fields, unit,
                                                                error):
    acc = device
    program = unit_program(acc, op, **fields)
    with pytest.raises(DeviceError, match="UNIT"):
        acc.run_program(program)
    c = acc.counters()
    assert c["prog_status"] == SeqError.UNIT and c["prog_detail"] == (unit << 4 | error)
    # and the same unit runs a good program right after
    ok = unit_program(acc, op, mult=1 << 30, shift=31)
    assert acc.run_program(ok)["prog_status"] == SeqError.OK


def test_cli_resident_refused_without_memory(capsys):
    from sw.driver.__main__ import main as driver_main
    rc = driver_main(["infer", "--mode", "resident", "--size", "64", "--json"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert err[-1].startswith("error: --mode resident:") and "no external memory" in err[-1]


def test_cli_bench_resident_reports_every_layer(capsys):
    """bench --mode resident --check --json on the simulated board with memory: every layer
    on the device and bit-exact, per-layer cycles, MACs and utilization, the totals, the
    link bytes one more image costs and the projected frames/s with overlapping uploads."""
    import json

    from sw.driver.__main__ import main as driver_main
    rc = driver_main(["bench", "--sim-memory", "--size", "64", "--check", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["mode"] == "resident" and out["all_match"] is True
    assert out["host_layers"] == [] and len(out["layers"]) == 14
    for layer in out["layers"]:
        assert layer["where"] == "device" and layer["match"] is True and layer["cycles"] > 0
        if layer["name"].startswith(("conv", "fire")):
            assert layer["macs"] > 0 and 0 < layer["utilization"] <= 1
    assert out["device_cycles"] == sum(la["cycles"] for la in out["layers"])
    assert out["link_bytes_down"] > 64 * 64 * 3  # the image, in frames
    assert out["projected_fps"] == pytest.approx(
        1 / max(out["device_cycles"] / out["clock_hz"],
                max(out["link_bytes_down"], out["link_bytes_up"]) * 10 / out["baud"]))


@pytest.mark.parametrize("len0,off0,gap,stride", [
    (12, 0, 0, 16),  # whole words, as conv1's pixels are
    (7, 3, 5, 29),  # two runs a pixel at odd offsets, pixels across word boundaries
    (1, 15, 0, 13),  # a run of one value at a word's last byte, then the rest at once
    (11, 6, 31, 45),  # the second run beyond the next word: the open word written first
])
def test_wide_conv_output_lands_in_any_pattern(device, len0, off0, gap, stride):
    """A conv run on the engine's wide output (up to three values a beat) written by the
    output packer in a pattern of two runs a pixel at any byte offset and stride: every
    value at its address, every byte around them untouched, run three times over in one
    program (the DRAM controller's refreshes holding the writer up now and then)."""
    from sim.fire_cases import random_conv
    from spec.quant import narrow_ok
    from spec.tiling import ConvPlan, ConvShape
    acc = device
    mem = acc.memory
    p = acc.params
    rng = np.random.default_rng(len0 + stride)
    shape = ConvShape(4, 50, 32, 12)
    conv, z_in = random_conv(rng, shape.cout, shape.cin)
    assert narrow_ok(conv.rq.m, conv.rq.n, p.spec)
    x = random_input(rng, shape.h, shape.w, shape.cin)
    plan = ConvPlan(p, shape)
    (run,) = plan.runs
    lay = Layout(p, port_bits=mem.config.port_bits, mem_size=mem.size, base=BASE)
    src = lay.slot((shape.h, shape.w, shape.cin))
    pixels = shape.h * shape.w
    size = pixels * stride + 64
    out_addr = lay.alloc(size)
    d = lay._engine_run(plan.config(run, conv, z_in, wide=True),
                        plan.weight_rows(run, conv), plan.qparams(run, conv))
    off1 = off0 + len0 + gap
    d.update(in_addr=src.addr, in_beats=pixels * plan.kc, out_addr=out_addr,
             out_pixels=pixels, out_stride=stride, off0=off0, len0=len0, off1=off1,
             len1=shape.cout - len0)
    program = lay.program([d, d, d])
    for addr, data in lay.regions:
        mem.write(addr, data)
    mem.write(src.addr, src.pack(x))
    fill = bytes([0x5A]) * size
    mem.write(out_addr, fill)
    counters = acc.run_program(program)
    assert counters["prog_status"] == SeqError.OK, counters
    want = np.frombuffer(fill, np.uint8).copy()
    y = ops.conv2d(x, conv.weight, conv.bias, z_in, conv.rq).reshape(pixels, shape.cout)
    for i in range(pixels):
        base = i * stride
        want[base + off0:base + off0 + len0] = y[i, :len0].astype(np.int8).view(np.uint8)
        want[base + off1:base + off1 + shape.cout - len0] = \
            y[i, len0:].astype(np.int8).view(np.uint8)
    got = np.frombuffer(mem.read(out_addr, size), np.uint8)
    np.testing.assert_array_equal(got, want)
