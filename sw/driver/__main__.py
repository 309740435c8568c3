"""Host driver command line.

    python -m sw.driver info         [device options]
    python -m sw.driver run-fire     [--layer fire2] [network options] [device options]
    python -m sw.driver infer        [--image cat.jpg] [network options] [device options]
    python -m sw.driver infer        --model M.onnx [--image cat.jpg | --input X.npy]
                                     [--calibrate DIR|X.npy|random] [--labels FILE]
                                     [--check] [device options]
    python -m sw.driver bench        [--image cat.jpg] [network options] [device options]
    python -m sw.driver compare-onnx --model M_qdq.onnx [--inputs 100] [--input X.npy]
                                     [device options]
    python -m sw.driver evaluate     [--dataset mnist5k|digits] [--limit N]
                                     [--weights F --arch mnist_fire] [device options]
    python -m sw.driver memtest      [--size BYTES] [--base ADDR] [--pattern P ...]
                                     [--copy-to ADDR] [device options]

network options: [--arch squeezenet1_1|squeezenet1_0|squeezenet1_0_bypass|mnist_fire]
                 [--weights F --calibrate DIR|X.npy|random]
                 [--size 224] [--calib 8] [--check]
device options:  [--port PORT] [--baud N] [--board arty_a7] [--param NAME=VALUE ...]
                 [--params FILE.toml] [--timeout 10] [--sim-memory] [--json] [--quiet]

With --port it talks to a board on that serial port; without it, it starts the simulated
board (the board's RTL under Verilator behind a pty; built once and cached per engine:
--param bits=16 builds a 16-bit one). The network is quantized at the width the device's
engine reports. --size must let the network's Fire layers fit the board's engine (its max_h x
max_w; `infer --help` gives the range); every input is checked before anything starts.
Progress goes to stderr (--quiet silences it); every command takes --json for its result on
stdout. evaluate runs the shipped trained model (sw/data/mnist_fire_mnist5k.npz, from
python -m sw.train) on the held-out digits of sw.train's split: top-1 on the device, the
golden model and the float reference. memtest writes and reads back patterns in a device's
external memory (DRAM) through the link, then has the device copy them with its DMA
(docs/memory.md); the simulated board has its memory with --sim-memory (memtest always),
and the driver brings the memory up on open.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from boards import BOARDS, DEFAULT_BOARD, get_board
from spec.cli import ArgumentParser, Progress, add_quiet, at_least, positive_float, seconds
from spec.params import EngineParams, parse_overrides
from spec.quant import QuantSpec
from sw import ops
from sw.images import MAX_UPSCALE, ImageError, load_image, random_images
from sw.model import get_weights, top5
from sw.network import ARCHS, get_arch
from sw.quantize import quantize_network
from sw.weights import WeightsError, load

from .accelerator import Accelerator
from .errors import DriverError
from .runner import run_network


@contextmanager
def device(args):
    """The device the arguments name, closed (a simulated board stopped) at the end.

    ``args.opened`` records what was opened, for the message after a Ctrl-C.
    """
    if args.port:
        with Accelerator.open(args.port, args.baud or get_board(args.board).baud,
                              timeout=args.timeout) as acc:
            args.opened = "port"
            yield acc
        return
    # The command line is where the parts meet: it starts the simulated board (sim) and hands
    # the driver its port; the driver (sw.driver) never imports the simulator.
    from sim.board import harness_built, simulated_accelerator

    board = get_board(args.board)
    memory = args.command == "memtest" or args.sim_memory
    if memory and board.dram is None:
        raise DriverError(f"the {args.board} board has no external memory to simulate")
    building = not harness_built(args.engine, board.clock_hz, board.baud,
                                 board.dram if memory else None)
    changed = {k: v for k, v in args.engine.to_dict().items()
               if board.engine.to_dict()[k] != v}
    note(args, f"no --port: starting the simulated {args.board} board"
               + "".join(f", {k}={v}" for k, v in changed.items())
               + (" (this first start builds it with Verilator, a minute or two)"
                  if building else ""))
    with simulated_accelerator(args.board, args.engine, memory=memory,
                               timeout=args.timeout) as acc:
        args.opened = "simulated"
        yield acc


def progress(args) -> Progress:
    return Progress(quiet=args.quiet)


def note(args, text: str) -> None:
    progress(args).note(text)


def cycle_summary(compute: int, cycles: int, clock_hz: int) -> str:
    """The two device figures, labelled: the engine's own cycles and those spent waiting."""
    return (f"{compute:,} compute cycles ({compute / clock_hz * 1e3:.1f} ms at "
            f"{clock_hz / 1e6:g} MHz), {cycles - compute:,} more waiting on the link")


def emit(args, result: dict, text: str) -> None:
    print(json.dumps(result, indent=2) if args.json else text, flush=True)


def engine_params(args) -> EngineParams:
    """The engine the command expects: the --board definition's, with --param/--params
    (which build the simulated board; a board on --port reports its own)."""
    if args.port and (args.param or args.params):
        raise DriverError("--param and --params choose the simulated board's engine; a "
                          f"board on --port {args.port} reports its own (drop them)")
    return parse_overrides(get_board(args.board).engine, args.param, args.params)


def check_size(args, net, size) -> None:
    """Refuse an input size the network or the engine cannot take, before anything runs
    (the engine's limits are the --board definition's, with --param/--params)."""
    label = (f"--size {size}" if isinstance(size, int)
             else f"the model's input {size[0]}x{size[1]}")
    net.check_input(size, args.engine, label=label, engine=f"the {args.board} engine")


CALIBRATE_HOW = ("--calibrate DIR (PNG or JPEG images), --calibrate X.npy (a float (N, 3, "
                 "H, W) batch, normalized as the model expects) or --calibrate random "
                 "(random images: poor ranges for a trained model)")


def calibration_images(args, size: int | tuple[int, int], *,
                       required: str = "") -> tuple[list[np.ndarray], str]:
    """The calibration images (HWC float) ``--calibrate`` names, and how to say where they
    came from. Without ``--calibrate``: ``--calib`` random images, unless ``required`` (the
    reason calibration data must be given) is set, which makes it an error."""
    h, w = (size, size) if isinstance(size, int) else size
    source = args.calibrate
    if source is None and required:
        raise ImageError(f"{required}: quantizing it needs calibration data, {CALIBRATE_HOW}")
    if source is None or source == "random":
        if h != w:
            raise ImageError(f"the model takes {h}x{w} inputs: calibrate with --calibrate "
                             "X.npy")
        if source == "random":
            print(f"warning: calibrating on {args.calib} random images (--calibrate random); "
                  "a trained model's ranges want its own data", file=sys.stderr, flush=True)
        return random_images(args.calib, h, seed=1), f"{args.calib} random images"
    path = Path(source)
    if path.suffix.lower() == ".npy":
        batch = load_batch(source, h, w, option="--calibrate")
        return ([b.transpose(1, 2, 0).astype(np.float32) for b in batch],
                f"{len(batch)} inputs from {source}")
    if not path.is_dir():
        raise ImageError(f"--calibrate {source}: not a directory, an .npy file or 'random' "
                         f"({CALIBRATE_HOW})")
    if h != w:
        raise ImageError(f"the model takes {h}x{w} inputs: calibrate with --calibrate X.npy")
    paths = sorted(p for p in path.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    if not paths:
        raise ImageError(f"--calibrate {source}: no PNG or JPEG images there")
    return [load_image(p, h) for p in paths], f"{len(paths)} images in {source}"


def class_labels(args, classes: int, model_labels: list[str] | None) -> list[str] | None:
    """Class names: ``--labels FILE`` (one per line), else the model's own (its metadata),
    else None (ImageNet's for a 1000-class output, class numbers otherwise)."""
    if not getattr(args, "labels", None):
        return model_labels
    try:
        names = Path(args.labels).read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ImageError(f"--labels {args.labels}: not a readable text file "
                         f"({getattr(exc, 'strerror', None) or exc})") from None
    while names and not names[-1].strip():
        names.pop()
    if len(names) != classes:
        raise ImageError(f"--labels {args.labels} names {len(names)} classes (one per line), "
                         f"but the model has {classes} outputs")
    return names


def network(args):
    """The network and its weights, with --size checked: fast, before any long work."""
    net = get_arch(args.arch)
    check_size(args, net, args.size)
    return net, get_weights(net, args.weights)


def calibration(args, size: int):
    # random calibration suits random weights; trained ones want their own data, or an
    # explicit --calibrate random
    required = f"--weights {args.weights} are trained weights" if args.weights else ""
    return calibration_images(args, size, required=required)


def quantize(args, net, images, how, weights, spec: QuantSpec):
    """Post-training quantization at the device's width (``spec``: what it reports)."""
    with progress(args).step(f"quantizing {net.name} to {spec.bits} bits: calibrating on "
                             f"{how}"):
        return quantize_network(net, weights, images, spec)


# ------------------------------------------------------------------------------- commands
def cmd_info(args) -> int:
    with device(args) as acc:
        ident = acc.identity
        counters = acc.counters()
        desc = acc.description
        mem = acc.memory
        memory = None if mem is None else {
            "variant": mem.variant, "kind": mem.config.memtype, "bytes": mem.size,
            "port_bits": mem.config.port_bits, "description": mem.config.description,
            "bring_up": mem.bring_up_result.to_dict() if mem.bring_up_result else None}
    p = ident.params
    result = {"device": desc, "protocol": ident.version, "clock_hz": ident.clock_hz,
              "baud": ident.baud, "max_payload": ident.max_payload, "rx_slots": ident.rx_slots,
              "params": p.to_dict(), "lanes": p.lanes, "memory": memory,
              "resident": bool(mem is not None and ident.sequencer), "counters": counters}
    text = "\n".join([
        f"device: {desc}",
        f"protocol {ident.version}, clock {ident.clock_hz / 1e6:g} MHz, link {ident.baud:,} "
        f"baud, frames up to {ident.max_payload} bytes, {ident.rx_slots} frame buffers",
        f"engine: int{p.bits}, {p.ic_lanes}x{p.oc_lanes} = {p.lanes} lanes, maxima "
        f"{p.max_h}x{p.max_w}, Cin {p.max_cin}, S {p.max_squeeze}, E1 {p.max_e1}, E3 "
        f"{p.max_e3}; weight buffer {p.weight_depth} rows, squeeze buffer "
        f"{p.squeeze_depth} words, bypass {'yes' if p.bypass else 'no'}",
        "memory: none (streaming only)" if memory is None else
        f"memory: {memory['description']}; {memory['bytes']:,} bytes on a "
        f"{memory['port_bits']}-bit port ({memory['variant']}); brought up: "
        + ("yes" if memory["bring_up"] and memory["bring_up"]["init_done"] else
           f"no ({memory['bring_up']['error']})" if memory["bring_up"]
           and memory["bring_up"]["error"] else "no"),
        "resident mode (layer sequencer): " + ("yes" if result["resident"] else "no"),
        "counters: " + ", ".join(f"{k} {v}" for k, v in counters.items()),
    ])
    emit(args, result, text)
    return 0


#: memtest's patterns: a region's bytes from its byte addresses and a seed
MEMTEST_PATTERNS = ("random", "address", "inverted-address", "ones", "zeros")


def memtest_pattern(name: str, addr: int, n: int, seed: int) -> bytes:
    """``n`` bytes of pattern ``name`` for the region at byte address ``addr``."""
    if name == "random":
        return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()
    if name in ("address", "inverted-address"):
        # each aligned 32-bit word holds its own byte address: catches aliased addresses
        first = addr // 4
        words = np.arange(first, (addr + n + 3) // 4 + 1, dtype=np.uint64) * 4
        raw = (words & 0xFFFFFFFF).astype("<u4").tobytes()[addr - 4 * first:][:n]
        return raw if name == "address" else bytes(255 - b for b in raw)
    return (b"\xff" if name == "ones" else b"\x00") * n


def cmd_memtest(args) -> int:
    with device(args) as acc:
        mem = acc.memory
        if mem is None:
            raise DriverError(f"{acc.description} has no external memory: memtest needs a "
                              "device built with it")
        size = args.size
        if size % mem.word or not 0 < size <= mem.size:
            raise DriverError(f"--size {size}: a multiple of the memory's {mem.word}-byte "
                              f"words, at most {mem.size:,}")
        base = args.base
        if base % mem.word or base + size > mem.size:
            raise DriverError(f"--base {base:#x}: a multiple of {mem.word} with the region "
                              f"inside the memory ({mem.size:,} bytes)")
        dst = args.copy_to if args.copy_to is not None else base + size
        if dst % mem.word or dst + size > mem.size or (dst < base + size and base < dst + size):
            raise DriverError(f"the copy's destination {dst:#x}: a multiple of {mem.word}, "
                              f"its {size:,} bytes inside the memory ({mem.size:,} bytes) and "
                              f"apart from the region at {base:#x} (see --copy-to)")
        results, errors = [], 0
        bar = progress(args)
        for i, name in enumerate(args.pattern):
            data = memtest_pattern(name, base, size, args.seed + i)
            t0 = time.monotonic()
            mem.write(base, data)
            t1 = time.monotonic()
            back = mem.read(base, size)
            t2 = time.monotonic()
            bad = int(np.count_nonzero(np.frombuffer(back, np.uint8)
                                       != np.frombuffer(data, np.uint8)))
            errors += bad
            results.append({"pattern": name, "bytes": size, "errors": bad,
                            "write_seconds": t1 - t0, "read_seconds": t2 - t1,
                            "write_mb_s": size / (t1 - t0) / 1e6,
                            "read_mb_s": size / (t2 - t1) / 1e6})
            bar.note(f"{name}: {bad} byte errors, write {size / (t1 - t0) / 1e6:.3f} MB/s, "
                     f"read {size / (t2 - t1) / 1e6:.3f} MB/s")
        # the device copies the last pattern with its DMA; the copy is read back and checked
        dma = mem.copy(base, dst, size)
        copied = mem.read(dst, size)
        copy_errors = int(np.count_nonzero(np.frombuffer(copied, np.uint8)
                                           != np.frombuffer(back, np.uint8)))
        errors += copy_errors
        clock = acc.identity.clock_hz
        mem_clock = mem.record.clock_hz
        desc = acc.description
    total_w = sum(r["write_seconds"] for r in results)
    total_r = sum(r["read_seconds"] for r in results)
    n = size * len(results)
    words = dma["dma_words"]
    # the counters count the design's clock; the port's peak is a word a cycle of the
    # controller's (the same clock, or one of its own: the ULX3S's 50 MHz)
    peak = mem_clock / clock  # words per design cycle
    rd = words / dma["dma_read_cycles"] / peak if dma["dma_read_cycles"] else 0.0
    wr = words / dma["dma_write_cycles"] / peak if dma["dma_write_cycles"] else 0.0
    port_bytes = mem.word
    on_device = {"src": base, "dst": dst, "bytes": size, "errors": copy_errors, "words": words,
              "read_cycles": dma["dma_read_cycles"], "write_cycles": dma["dma_write_cycles"],
              "read_words_per_cycle": rd, "write_words_per_cycle": wr,
              "read_mb_s": rd * port_bytes * mem_clock / 1e6,
              "write_mb_s": wr * port_bytes * mem_clock / 1e6,
              "port_peak_mb_s": port_bytes * mem_clock / 1e6, "clock_hz": clock,
              "memory_clock_hz": mem_clock}
    result = {"device": desc, "memory": mem.variant, "base": base, "size": size,
              "patterns": results, "errors": errors, "device_copy": on_device,
              "link_write_mb_s": n / total_w / 1e6, "link_read_mb_s": n / total_r / 1e6,
              "note": "link MB/s is host wall time through the link (on the simulated board, "
                      "the simulator's speed, not a UART's)"}
    text = (f"memtest on {desc}: {mem.variant}, {size:,} bytes at {base:#x}, "
            f"{len(results)} pattern(s) and a device copy to {dst:#x}: {errors} byte errors\n"
            f"through the link: {result['link_write_mb_s']:.3f} MB/s write, "
            f"{result['link_read_mb_s']:.3f} MB/s read (host wall time)\n"
            f"on the device (DMA, {words:,} words of {port_bytes} bytes, from its cycle "
            f"counters): read {rd:.3f} words/cycle ({on_device['read_mb_s']:.0f} MB/s), write "
            f"{wr:.3f} words/cycle ({on_device['write_mb_s']:.0f} MB/s) of the port's 1 word a "
            f"cycle ({on_device['port_peak_mb_s']:.0f} MB/s at {mem_clock / 1e6:g} MHz)")
    emit(args, result, text)
    return 0 if errors == 0 else 1


def cmd_run_fire(args) -> int:
    net, weights = network(args)
    if args.layer not in [f.name for f in net.fires]:
        raise DriverError(f"{args.arch} has no Fire layer {args.layer!r}; choose from "
                          f"{', '.join(f.name for f in net.fires)}")
    images, how = calibration(args, args.size)
    with device(args) as acc:
        qnet = quantize(args, net, images, how, weights, acc.params.spec)
        inputs = {}
        qnet.forward(qnet.quantize_input(random_images(1, args.size, seed=3)[0]),
                     on_layer=lambda name, x, y: inputs.__setitem__(name, x))
        x = inputs[args.layer]
        qlayer = qnet.layers[args.layer]
        r = acc.run_fire(qlayer, x)
        clock = acc.identity.clock_hz
    match = bool(np.array_equal(r.output, ops.fire(x, qlayer, qnet.spec))) if args.check \
        else None
    result = {"arch": net.name, "layer": args.layer, "input": list(x.shape),
              "output": list(r.output.shape), "compute_cycles": r.compute,
              "device_cycles": r.cycles, "link_wait_cycles": r.cycles - r.compute,
              "clock_hz": clock, "runs": r.runs, "host_seconds": r.seconds,
              "bytes_down": r.bytes_down, "bytes_up": r.bytes_up, "match": match,
              "weights": weights.source}
    text = (f"{net.name} {args.layer} on {x.shape[0]}x{x.shape[1]}x{x.shape[2]} "
            f"({weights.source}), {r.runs} run(s): {cycle_summary(r.compute, r.cycles, clock)}"
            f"; {r.seconds:.2f} s host wall time, {r.bytes_down:,} bytes down, "
            f"{r.bytes_up:,} up" + ("" if match is None else
                                     f"; bit-exact: {'yes' if match else 'NO'}"))
    emit(args, result, text)
    return 0 if match in (None, True) else 1


def _run(args, want_check: bool, *, frame_bytes: bool = False):
    net, weights = network(args)
    if args.image:
        image, label = load_image(args.image, args.size), args.image
    else:
        image, label = random_images(1, args.size, seed=3)[0], "a random input (seed 3)"
    images, how = calibration(args, args.size)
    with device(args) as acc:
        ident = acc.identity
        qnet = quantize(args, net, images, how, weights, ident.params.spec)
        args.resolved_mode = resolve_mode(args, acc)
        args.frame_link = None
        if args.resolved_mode == "resident":
            resident = acc.load(qnet, (args.size, args.size, net.in_channels))
            result = resident.infer(image, check=want_check)
            if frame_bytes and resident.whole:
                args.frame_link = resident.frame_link_bytes(image)
        else:
            with progress(args).bar(len(net.layers), net.name, "layer") as bar:
                result = run_network(acc, qnet, image, check=want_check,
                                     on_layer=lambda rec: bar.update(rec.name))
    return net, weights, label, ident, result


def resolve_mode(args, acc) -> str:
    """``--mode``: resident where the device has memory (``auto``), else streaming; an
    explicit ``resident`` on a device without memory is an error naming it."""
    mode = getattr(args, "mode", "stream") or "auto"
    able = acc.memory is not None and acc.identity.sequencer
    if mode == "auto":
        return "resident" if able else "stream"
    if mode == "resident" and acc.memory is None:
        raise DriverError(f"--mode resident: {acc.description} has no external memory "
                          "(use --mode stream, or --sim-memory for the simulated board)")
    if mode == "resident" and not able:
        raise DriverError(f"--mode resident: {acc.description} was built without the layer "
                          "sequencer (hw.build --resident; use --mode stream)")
    return mode


def load_batch(path: str, h: int, w: int, option: str = "--input") -> np.ndarray:
    """A float (N, 3, h, w) batch from an .npy file, N >= 1, every value finite; errors
    name it as ``option``."""
    try:
        batch = np.load(path)
    except (OSError, ValueError) as exc:
        raise ImageError(f"{option} {path}: not a readable .npy file: {exc}") from None
    if batch.ndim != 4 or batch.shape[1:] != (3, h, w):
        raise ImageError(f"{option} {path}: expected a float32 batch (N, 3, {h}, {w}) "
                         f"for this model, got {batch.shape}")
    if batch.shape[0] == 0:
        raise ImageError(f"{option} {path}: the batch is empty (shape {batch.shape}); it needs "
                         "at least one input")
    if not np.issubdtype(batch.dtype, np.floating):
        raise ImageError(f"{option} {path}: the batch is {batch.dtype}, expected float32 "
                         "values already normalized as the model expects (integers would be "
                         "taken as such without any scaling)")
    bad = ~np.isfinite(batch)
    if bad.any():
        nan = int(np.isnan(batch).sum())
        raise ImageError(f"{option} {path}: {int(bad.sum())} of {batch.size} values are not "
                         f"finite ({nan} NaN, {int(bad.sum()) - nan} infinite), in input"
                         f"{'s' if bad.any(axis=(1, 2, 3)).sum() > 1 else ''} "
                         f"{', '.join(map(str, np.flatnonzero(bad.any(axis=(1, 2, 3)))[:5]))}")
    return batch


def cmd_infer_onnx(args) -> int:
    from sw.onnx_import import load_model

    from .runner import run_network_batch

    imported = load_model(args.model)
    if imported.quantized and args.calibrate is not None:
        raise ImageError(f"--calibrate {args.calibrate}: {args.model} is already quantized "
                         f"({imported.qformat}) and runs with its own scales; drop --calibrate")
    h, w = imported.input_size
    check_size(args, imported.net, (h, w))
    names = class_labels(args, imported.num_classes, imported.labels)
    if args.input:
        batch = load_batch(args.input, h, w)
        images = [b.transpose(1, 2, 0).astype(np.float32) for b in batch]
        labels = [f"{args.input}[{i}]" for i in range(len(images))]
    else:
        if h != w:
            raise ImageError(f"the model takes {h}x{w} inputs: give them as --input X.npy")
        if args.image:
            images, labels = [load_image(args.image, h)], [args.image]
        else:
            images, labels = random_images(1, h, seed=3), ["a random input (seed 3)"]
    if imported.quantized:
        qnet = imported.qnet
        how = f"the model's own {imported.qformat} quantization"
    else:
        calibration, source = calibration_images(
            args, (h, w), required=f"{args.model} is a float model")
        with progress(args).step(f"quantizing {args.model}: calibrating on {source}"):
            qnet = imported.quantize(calibration)
        how = f"post-training quantization on {source}"
    with device(args) as acc:
        args.resolved_mode = resolve_mode(args, acc)
        if args.resolved_mode == "resident":
            resident = acc.load(qnet, (h, w, qnet.net.in_channels))
            with progress(args).bar(len(images), "resident", "input") as bar:
                outs, records = resident.infer_batch(images, check=args.check,
                                                     on_image=bar.update)
        else:
            with progress(args).bar(len(qnet.net.layers), f"{len(images)} input"
                                    f"{'s' if len(images) > 1 else ''}", "layer") as bar:
                outs, records = run_network_batch(
                    acc, qnet, [qnet.quantize_input(im) for im in images], check=args.check,
                    on_layer=lambda rec: bar.update(rec.name))
        clock = acc.identity.clock_hz
    results = []
    for label, out in zip(labels, outs, strict=True):
        logits = qnet.dequantize_output(out)
        results.append({"input": label, "logits": logits.tolist(),
                        "top5": top5(logits, names)})
    layers = [r.as_dict() for r in records]
    out = {"model": args.model, "quantization": how, "input_size": [h, w],
           "classes": imported.num_classes, "mode": args.resolved_mode,
           "inputs": results, "layers": layers,
           "top5": results[0]["top5"], "logits": results[0]["logits"]}
    if args.check:
        out["all_match"] = all(r.match for r in records if r.where == "device")
    lines = [f"{args.model} ({how}), input {h}x{w}"]
    for r in results:
        best = ", ".join(f"{t['class']} {t['name']} {t['prob'] * 100:.1f}%"
                         for t in r["top5"][:3])
        lines.append(f"{r['input']}: {best}")
    compute = sum(r.compute or 0 for r in records)
    cycles = sum(r.cycles or 0 for r in records)
    out.update(compute_cycles=compute, device_cycles=cycles, link_wait_cycles=cycles - compute)
    lines.append(f"Fire layers on the device, {len(images)} input(s): "
                 f"{cycle_summary(compute, cycles, clock)}"
                 + (f"; bit-exact: {'yes' if out['all_match'] else 'NO'}" if args.check else ""))
    emit(args, out, "\n".join(lines))
    return 0 if (not args.check or out["all_match"]) else 1


def cmd_compare_onnx(args) -> int:
    from sw.onnx_compare import compare, comparison_images
    from sw.onnx_import import UnsupportedModel, load_model

    from .runner import check_width, run_network_batch

    imported = load_model(args.model)
    if not imported.quantized:
        raise UnsupportedModel(f"{args.model} is a float model: compare-onnx needs a QDQ or "
                               "QOperator model (onnxruntime.quantization.quantize_static)")
    check_size(args, imported.net, imported.input_size)
    h, w = imported.input_size
    if args.input:
        batch = load_batch(args.input, h, w)
        if args.inputs is not None and args.inputs > len(batch):
            raise ImageError(f"--inputs {args.inputs}: {args.input} holds only {len(batch)} "
                             "inputs")
        batch = batch[:args.inputs]
        images = [b.transpose(1, 2, 0).astype(np.float32) for b in batch]
        source = f"{len(images)} inputs from {args.input}"
    else:
        images = comparison_images(imported, args.inputs or 100, seed=11)
        source = f"{len(images)} random {h}x{w} inputs"
    with device(args) as acc:
        check_width(acc, imported.qnet)
        with progress(args).bar(len(images), "compared", "input") as bar:
            counted = [0]

            def batch_done(done, total):
                bar.update(n=done - counted[0])
                counted[0] = done

            result = compare(
                imported,
                run_fires=lambda name, layer, xs: [r.output
                                                   for r in acc.run_fire_batch(layer, xs)],
                run_network=lambda qnet, xs: run_network_batch(acc, qnet, xs)[0],
                images=images, on_batch=batch_done)
    result["source"] = source
    conf = result["top1_agreement_confident"]
    kernels = result["ort_kernels_vs_reference"]
    text = "\n".join([
        f"{args.model} ({imported.qformat}) on {source}, against onnxruntime:",
        f"Fire outputs (fed onnxruntime's inputs): at most {result['fire_max_lsb']} LSB off, "
        f"{result['fire_identical_fraction'] * 100:.2f}% of {result['fire_values']:,} values "
        "identical",
        f"logits SQNR {result['logits_sqnr_db']:.2f} dB",
        f"top-1 agreement {result['top1_agreement'] * 100:.1f}% overall; "
        + (f"{conf * 100:.1f}% of the {result['confident_inputs']} inputs whose top-1 leads by "
           "more than 2 LSB" if conf is not None else "no input leads by more than 2 LSB"),
        "onnxruntime's integer kernels against its own QDQ reference (every optimization "
        "off), on the same inputs: " + (
            f"logits SQNR {kernels['logits_sqnr_db']:.2f} dB, top-1 agreement "
            f"{kernels['top1_agreement'] * 100:.1f}%, Fire outputs (end to end) at most "
            f"{kernels['fire_max_lsb']} LSB apart; this project against that reference: "
            f"{kernels['ours_logits_sqnr_db']:.2f} dB, "
            f"{kernels['ours_top1_agreement'] * 100:.1f}%" if kernels is not None
            else "none (a QOperator model has no QDQ reference)"),
    ])
    emit(args, result, text)
    return 0


def cmd_infer(args) -> int:
    if args.model or args.input:
        if not args.model:
            raise ImageError("--input X.npy goes with --model")
        if args.input and args.image:
            raise ImageError("give --image or --input, not both")
        return cmd_infer_onnx(args)
    names = class_labels(args, get_arch(args.arch).num_classes, None)
    net, weights, label, ident, result = _run(args, args.check)
    best = top5(result.logits, names)
    layers = [r.as_dict() for r in result.layers]
    compute, cycles, clock = result.compute_cycles, result.device_cycles, ident.clock_hz
    out = {"arch": net.name, "weights": weights.source, "input": label,
           "mode": args.resolved_mode,
           "top5": best, "layers": layers, "logits": result.logits.tolist(),
           "host_seconds": result.seconds, "compute_cycles": compute,
           "device_cycles": cycles, "link_wait_cycles": cycles - compute, "clock_hz": clock}
    if args.check:
        out["all_match"] = result.all_match
    resident = args.resolved_mode == "resident"
    lines = [f"{net.name} on {label}", f"weights: {weights.source}",
             "mode: " + ("resident (weights and a layer program in the device's memory)"
                         if resident else "streaming (weights and maps over the link)"),
             "top-5:"]
    lines += [f"  {t['prob'] * 100:6.2f}%  {t['class']:4d} {t['name']}" for t in best]
    host = [r.name for r in result.layers if r.where == "host"]
    if resident:
        # a pool's cycles are its work, not waiting: show each layer's cycles as they are
        lines.append(f"{'layer':<10} {'on':<7} {'cycles':>12} {'engine cyc':>11} "
                     f"{'host ms':>9}" + ("  bit-exact" if args.check else ""))
        for r in result.layers:
            cyc = f"{r.cycles:,}" if r.cycles is not None else "-"
            comp = f"{r.compute:,}" if r.compute else "-"
            mark = "" if r.match is None else ("  yes" if r.match else "  NO")
            lines.append(f"{r.name:<10} {r.where:<7} {cyc:>12} {comp:>11} "
                         f"{r.seconds * 1e3:>9.1f}{mark}")
        lines.append(f"layers on the device: {cycles:,} cycles with their memory waits "
                     f"({cycles / clock * 1e3:.1f} ms at {clock / 1e6:g} MHz, "
                     f"{clock / cycles:.1f} frames/s), {compute:,} of them the engine's "
                     "compute")
        lines.append(f"whole inference {result.seconds:.1f} s host wall time (the image "
                     "written and the outputs read back over the link included"
                     + (f"; {', '.join(host)} on the host" if host else "") + ")")
    else:
        lines.append(f"{'layer':<10} {'on':<7} {'compute cyc':>12} {'link wait':>11} "
                     f"{'host ms':>9}" + ("  bit-exact" if args.check else ""))
        for r in result.layers:
            comp = f"{r.compute:,}" if r.compute is not None else "-"
            wait = f"{r.cycles - r.compute:,}" if r.cycles is not None else "-"
            mark = "" if r.match is None else ("  yes" if r.match else "  NO")
            lines.append(f"{r.name:<10} {r.where:<7} {comp:>12} {wait:>11} "
                         f"{r.seconds * 1e3:>9.1f}{mark}")
        lines.append(f"layers on the device: {cycle_summary(compute, cycles, clock)}; "
                     f"the engine alone would run them {clock / compute:.1f} times a second")
        lines.append(f"whole inference {result.seconds:.1f} s host wall time ("
                     + (f"{', '.join(host)} on the host; " if host else "")
                     + "the device's link waits included)")
    if args.check:
        lines.append("every device layer bit-exact with the golden model: "
                     + ("yes" if result.all_match else "NO"))
    emit(args, out, "\n".join(lines))
    return 0 if (not args.check or result.all_match) else 1


def cmd_bench(args) -> int:
    net, weights, label, ident, result = _run(args, args.check, frame_bytes=True)
    if args.resolved_mode == "resident":
        return bench_resident(args, net, ident, result)
    baud = args.baud or ident.baud
    clock = ident.clock_hz
    rows, wire_total, payload_total, frame_s, bare_s = [], 0, 0, 0.0, 0.0
    for r in result.layers:
        if r.where != "device":
            continue
        f = r.fire
        down_s, up_s = f.bytes_down * 10 / baud, f.bytes_up * 10 / baud
        device_s = f.compute / ident.clock_hz
        # the UART is full duplex and the engine overlaps both: the slowest of the three
        layer_s = max(down_s, up_s, device_s)
        frame_s += layer_s
        # the payload alone, with no framing at all: what the UART could ever do
        bare_s += max(f.payload_down, f.payload_up) * 10 / baud
        wire_total += f.bytes_down + f.bytes_up
        payload_total += f.payload_down + f.payload_up
        rows.append({"layer": r.name, "compute_cycles": f.compute, "device_cycles": f.cycles,
                     "link_wait_cycles": f.cycles - f.compute, "runs": f.runs,
                     "bytes_down": f.bytes_down, "bytes_up": f.bytes_up,
                     "payload_down": f.payload_down, "payload_up": f.payload_up,
                     "wire_ms_down": down_s * 1e3, "wire_ms_up": up_s * 1e3,
                     "compute_ms": device_s * 1e3, "layer_ms": layer_s * 1e3,
                     "match": r.match})
    overhead = wire_total / payload_total
    fps = 1 / frame_s
    out = {"arch": net.name, "baud": baud, "clock_hz": ident.clock_hz, "layers": rows,
           "protocol_overhead": overhead, "projected_fps": fps, "uart_limit_fps": 1 / bare_s,
           "compute_cycles": sum(r["compute_cycles"] for r in rows),
           "device_cycles": sum(r["device_cycles"] for r in rows),
           "host_seconds": result.seconds}
    out["link_wait_cycles"] = out["device_cycles"] - out["compute_cycles"]
    out["compute_fps"] = ident.clock_hz / out["compute_cycles"]
    lines = [f"{net.name}: device layers over the link at {baud:,} baud, device at "
             f"{ident.clock_hz / 1e6:g} MHz",
             f"{'layer':<7} {'compute cyc':>11} {'compute ms':>10} {'down B':>10} {'up B':>10} "
             f"{'wire ms down':>13} {'up':>8}"]
    for r in rows:
        lines.append(f"{r['layer']:<7} {r['compute_cycles']:>11,} {r['compute_ms']:>10.2f} "
                     f"{r['bytes_down']:>10,} {r['bytes_up']:>10,} {r['wire_ms_down']:>13.1f} "
                     f"{r['wire_ms_up']:>8.1f}")
    lines.append(f"device: {cycle_summary(out['compute_cycles'], out['device_cycles'], clock)}")
    lines.append(f"protocol overhead (wire bytes / payload bytes): {overhead:.4f}")
    lines.append(f"projected streaming offload on the board: {fps:.2f} frames/s "
                 f"(the UART's limit, payload alone, {out['uart_limit_fps']:.2f} frames/s; the "
                 "engine's compute alone "
                 f"{out['compute_fps']:.1f} frames/s)")
    emit(args, out, "\n".join(lines))
    return 0 if (not args.check or result.all_match) else 1


def bench_resident(args, net, ident, result) -> int:
    """bench --mode resident: the device's cycles per layer (its memory waits included) from
    the sequencer's stats, and the link's bytes for one image."""
    baud = args.baud or ident.baud
    clock = ident.clock_hz
    rows = [r.as_dict() for r in result.layers]
    device = [r for r in result.layers if r.where == "device"]
    cycles = sum(r.cycles for r in device)
    frame = args.frame_link  # whole network on the device: what one more image costs
    link = frame or result.link
    # the UART is full duplex: a direction's bytes at 10 bits each (8N1)
    link_s = max(link["bytes_down"], link["bytes_up"]) * 10 / baud
    out = {"arch": net.name, "mode": "resident", "baud": baud, "clock_hz": clock,
           "layers": rows, "device_cycles": cycles,
           "compute_cycles": sum(r.compute for r in device),
           "device_fps": clock / cycles if cycles else None,
           "device_layers": [r.name for r in device],
           "host_layers": [r.name for r in result.layers if r.where == "host"],
           "link_bytes_down": link["bytes_down"], "link_bytes_up": link["bytes_up"],
           "link_seconds_per_frame": link_s, "host_seconds": result.seconds}
    if frame is not None:
        device_s = cycles / clock
        out["projected_fps"] = 1 / max(device_s, link_s)
        out["limited_by"] = "link" if link_s > device_s else "device"
    if args.check:
        out["all_match"] = result.all_match
    lines = [f"{net.name}, resident: device at {clock / 1e6:g} MHz, link {baud:,} baud",
             f"{'layer':<10} {'on':<7} {'cycles':>10} {'MACs':>12} {'util':>6}"]
    for r in result.layers:
        if r.where == "device":
            util = f"{r.utilization:.3f}" if r.utilization is not None else "-"
            lines.append(f"{r.name:<10} {r.where:<7} {r.cycles:>10,} {r.macs or 0:>12,} "
                         f"{util:>6}")
        else:
            lines.append(f"{r.name:<10} {r.where:<7} {'-':>10} {'-':>12} {'-':>6}")
    lines.append(f"device layers: {cycles:,} cycles (memory waits included) = "
                 f"{cycles / clock * 1e3:.2f} ms, {clock / cycles:.1f} frames/s at the board "
                 "clock" if cycles else "no layer on the device")
    if frame is not None:
        lines.append(f"link per image: {link['bytes_down']:,} bytes down (the image), "
                     f"{link['bytes_up']:,} up: {link_s * 1e3:.1f} ms at {baud:,} baud")
        lines.append(f"projected with the next image uploading while this one computes: "
                     f"{out['projected_fps']:.2f} frames/s (the {out['limited_by']} is the "
                     "limit)")
    else:
        lines.append(f"link: {link['bytes_down']:,} bytes down, {link['bytes_up']:,} up for "
                     f"the image: {link_s * 1e3:.1f} ms at {baud:,} baud (the maps between "
                     "the host's and the device's layers included: "
                     + ", ".join(out["host_layers"]) + " run on the host)")
    emit(args, out, "\n".join(lines))
    return 0 if (not args.check or result.all_match) else 1


def cmd_evaluate(args) -> int:
    """Top-1 on a data set's held-out images through the device, the golden model and the
    float reference, the same images for all three."""
    from sw import reference, train

    from .runner import run_network_batch

    net = get_arch(args.arch)
    check_size(args, net, train.SIDE)
    weights_path = args.weights or str(train.SHIPPED_MODEL)
    weights = load(weights_path, net)
    data = train.load_dataset(args.dataset)
    test = data.test if args.limit is None else train.stratified_subset(
        data.test, data.labels, args.limit)
    calib = train.calibration_indices(data, data.train, args.calib)
    inputs, labels = data.inputs(test), data.labels[test]
    device_out, all_layers_match = [], True
    compute = cycles = 0
    with device(args) as acc:
        clock = acc.identity.clock_hz
        # quantized as sw.train does, at the width the device's engine reports
        qnet = quantize(args, net, list(data.inputs(calib)),
                        f"{len(calib)} {data.name} training images", weights, acc.params.spec)
        with progress(args).step(f"golden model and float reference on {len(test)} test "
                                 "images"):
            golden = [qnet.forward(qnet.quantize_input(x)) for x in inputs]
            floats = np.array([reference.forward(net, weights, x) for x in inputs])
        started = time.perf_counter()
        with progress(args).bar(len(test), f"{net.name} on the device", "image") as bar:
            for first in range(0, len(test), args.chunk):
                chunk = inputs[first:first + args.chunk]
                outs, records = run_network_batch(
                    acc, qnet, [qnet.quantize_input(x) for x in chunk], check=True)
                device_out += outs
                all_layers_match &= all(r.match for r in records if r.where == "device")
                compute += sum(r.compute or 0 for r in records)
                cycles += sum(r.cycles or 0 for r in records)
                bar.update(n=len(chunk))
        device_seconds = time.perf_counter() - started
    exact = [bool(np.array_equal(d, g)) for d, g in zip(device_out, golden, strict=True)]
    d_pred = np.array([int(np.argmax(qnet.dequantize_output(d))) for d in device_out])
    g_pred = np.array([int(np.argmax(qnet.dequantize_output(g))) for g in golden])
    f_pred = floats.argmax(axis=1)
    out = {"arch": net.name, "weights": weights.source, "dataset": data.name,
           "images": len(test), "calibration_images": len(calib), "bits": qnet.spec.bits,
           "device_accuracy": float(np.mean(d_pred == labels)),
           "golden_accuracy": float(np.mean(g_pred == labels)),
           "float_accuracy": float(np.mean(f_pred == labels)),
           "device_golden_agreement": float(np.mean(d_pred == g_pred)),
           "golden_float_agreement": float(np.mean(g_pred == f_pred)),
           "bit_exact_images": sum(exact), "all_bit_exact": all(exact) and all_layers_match,
           "compute_cycles": compute, "device_cycles": cycles,
           "link_wait_cycles": cycles - compute, "clock_hz": clock,
           "device_seconds": device_seconds}
    text = "\n".join([
        f"{net.name} ({weights.source}) on {len(test)} held-out {data.name} images, "
        f"{qnet.spec.bits}-bit engine",
        f"top-1: device {out['device_accuracy'] * 100:.2f}%, golden model "
        f"{out['golden_accuracy'] * 100:.2f}%, float {out['float_accuracy'] * 100:.2f}%",
        f"agreement: device/golden {out['device_golden_agreement'] * 100:.2f}%, golden/float "
        f"{out['golden_float_agreement'] * 100:.2f}%",
        f"bit-exact device vs golden model: {sum(exact)}/{len(exact)} images"
        + ("; every Fire layer of each bit-exact too" if all_layers_match
           else "; some Fire layer differed"),
        f"device: {cycle_summary(compute, cycles, clock)}; {seconds(device_seconds)} host "
        "wall time on the device path (Fire layers on the device, the rest on the host)",
    ])
    emit(args, out, text)
    return 0 if out["all_bit_exact"] else 1


COMMANDS = {
    "info": (cmd_info, "the device's identity (engine parameters) and counters"),
    "run-fire": (cmd_run_fire, "run one Fire layer of a network on the device"),
    "infer": (cmd_infer, "whole-network inference, Fire layers and convolutions on the "
                         "device"),
    "bench": (cmd_bench, "per-layer device cycles, link bytes and wire time; projected fps"),
    "compare-onnx": (cmd_compare_onnx, "a QDQ ONNX model here against onnxruntime: Fire "
                                       "outputs, logits SQNR, top-1 agreement"),
    "evaluate": (cmd_evaluate, "top-1 on held-out real digits: device, golden model and "
                               "float, with their agreement and bit-exactness"),
    "memtest": (cmd_memtest, "write and read back patterns in the device's external memory "
                             "(DRAM) through the link: errors and MB/s"),
}


def size_ranges(board: str) -> str:
    """The input sizes each built-in network takes on ``board``'s engine, for --help."""
    params = get_board(board).engine
    spans = [f"{name} {lo} to {hi}" for name, (lo, hi) in
             ((name, net.input_range(params)) for name, net in ARCHS.items())]
    return (f"on the {board} engine (max_h x max_w = {params.max_h}x{params.max_w}): "
            + ", ".join(spans))


def parser() -> argparse.ArgumentParser:
    ap = ArgumentParser(prog="python -m sw.driver", description=__doc__,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND",
                            title="commands (python -m sw.driver COMMAND --help for each)")
    for name, (_, help_text) in COMMANDS.items():
        s = sub.add_parser(name, help=help_text, description=help_text)
        dev = s.add_argument_group("device options")
        dev.add_argument("--port", help="serial port of a board (default: the simulated board)")
        dev.add_argument("--baud", type=at_least(1), metavar="N",
                         help="link baud (default: the board's, 12 Mbaud for the Arty A7)")
        dev.add_argument("--board", default=DEFAULT_BOARD, choices=sorted(BOARDS),
                         help=f"board definition: its engine's limits and the simulated "
                              f"board (default: {DEFAULT_BOARD})")
        dev.add_argument("--timeout", type=positive_float, default=10.0, metavar="SECONDS",
                         help="seconds without an answer before a command fails, above 0 "
                              "(default: 10)")
        dev.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                         help="an engine parameter of the simulated board's, repeatable "
                              "(e.g. bits=16; as python -m hw.build --param; not with --port: "
                              "a board reports its own)")
        dev.add_argument("--params", metavar="FILE.toml",
                         help="the simulated board's engine parameters from a TOML file")
        dev.add_argument("--sim-memory", action="store_true",
                         help="without --port: simulate the board with its external memory "
                              "(LiteDRAM with its PHY model; half the simulation speed). "
                              "memtest always does")
        dev.add_argument("--json", action="store_true", help="print machine-readable JSON")
        add_quiet(dev)
        if name == "info":
            continue
        if name == "memtest":
            s.add_argument("--size", type=at_least(1), default=1 << 20, metavar="BYTES",
                           help="bytes of each pattern, whole memory words (default: 1 MiB)")
            s.add_argument("--base", type=lambda t: int(t, 0), default=0, metavar="ADDR",
                           help="byte address the region starts at (default: 0)")
            s.add_argument("--pattern", action="append", choices=MEMTEST_PATTERNS,
                           help="pattern, repeatable (default: random and address)")
            s.add_argument("--seed", type=int, default=1, help="seed of the random pattern")
            s.add_argument("--copy-to", type=lambda t: int(t, 0), metavar="ADDR",
                           help="where the device copies the region with its DMA (default: "
                                "right after it)")
            continue
        if name == "compare-onnx":
            s.add_argument("--model", metavar="MODEL.onnx", required=True,
                           help="a QDQ or QOperator model from "
                                "onnxruntime.quantization.quantize_static")
            s.add_argument("--inputs", type=at_least(1), metavar="N",
                           help="inputs for the comparison, at least 1 (default: 100 random "
                                "ones; with --input, the first N of the batch)")
            s.add_argument("--input", metavar="X.npy",
                           help="compare on this float batch (N, 3, H, W), N >= 1, finite, "
                                "normalized as the model expects, instead of random inputs")
            continue
        if name == "evaluate":
            s.add_argument("--dataset", default="mnist5k", choices=("mnist5k", "digits"),
                           help="the held-out images of this data set's fixed split "
                                "(sw.train's; default: mnist5k)")
            s.add_argument("--limit", type=at_least(1), metavar="N",
                           help="N of the test images (stratified), not all of them")
            s.add_argument("--arch", default="mnist_fire", choices=sorted(ARCHS),
                           help="network (default: mnist_fire)")
            s.add_argument("--weights", metavar="FILE",
                           help="trained .npz (default: the shipped "
                                "sw/data/mnist_fire_mnist5k.npz)")
            s.add_argument("--calib", type=at_least(1), default=200, metavar="N",
                           help="training images to calibrate on (default: 200, as sw.train)")
            s.add_argument("--chunk", type=at_least(1), default=50, metavar="N",
                           help="images per batch on the device (default: 50)")
            continue
        s.add_argument("--arch", default="squeezenet1_1", choices=sorted(ARCHS),
                       help="network (default: squeezenet1_1)")
        s.add_argument("--weights", metavar="FILE",
                       help=".npz with torchvision names, or .pth with torch installed "
                            "(default: deterministic random init)")
        s.add_argument("--size", type=int, default=224, metavar="N",
                       help="input height and width (default: 224; with --model, the "
                            f"model's own); {size_ranges(DEFAULT_BOARD)}")
        s.add_argument("--calib", type=at_least(1), default=8, metavar="N",
                       help="random calibration images, at least 1 (default: 8; with "
                            "--model or --weights, only with --calibrate random)")
        s.add_argument("--calibrate", metavar="DIR|X.npy|random",
                       help="calibrate on the PNG/JPEG images in DIR (an image already at "
                            "the input size is not resized), on a float (N, 3, H, W) .npy "
                            "batch, or on --calib random images (a float --model and "
                            "--weights need one of these; random warns; without --weights "
                            "the random-init network is calibrated on random images)")
        s.add_argument("--check", action="store_true",
                       help="compare every device layer with the golden model")
        if name == "run-fire":
            s.add_argument("--layer", default="fire2", help="Fire layer (default: fire2)")
        if name in ("infer", "bench"):
            s.add_argument("--image", metavar="PATH",
                           help="PNG or JPEG (default: random); it is enlarged at most "
                                f"{MAX_UPSCALE}x, so its shorter side must be at least "
                                f"{-(-256 // MAX_UPSCALE)} pixels for a 224 input")
        if name in ("infer", "bench"):
            s.add_argument("--mode", choices=("auto", "resident", "stream"), default="auto",
                           help="resident: load the weights and a layer program into the "
                                "device's memory once and run the Fire layers from it (the "
                                "other layers on the host for now); stream: send every "
                                "weight and map over the link; auto (default): resident "
                                "where the device has memory (--sim-memory for the "
                                "simulated board)")
        if name == "infer":
            s.add_argument("--model", metavar="MODEL.onnx",
                           help="run an ONNX SqueezeNet (float: quantized here; QDQ: as is)")
            s.add_argument("--input", metavar="X.npy",
                           help="an already-normalized float batch (N, 3, H, W), N >= 1, "
                                "finite, instead of an image (with --model)")
            s.add_argument("--labels", metavar="FILE",
                           help="class names, one per line, as many as the model's outputs "
                                "(default: the model's metadata 'labels'; ImageNet's for "
                                "1000 classes; class numbers otherwise)")
    return ap


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    args.opened = None
    if args.command == "memtest" and not args.pattern:
        args.pattern = ["random", "address"]
    run, _ = COMMANDS[args.command]
    try:
        args.engine = engine_params(args)
        return run(args)
    except (DriverError, ImageError, WeightsError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if args.opened == "simulated":
            print("interrupted (the simulated board was stopped)", file=sys.stderr)
        elif args.opened == "port":
            print(f"interrupted (the device on {args.port} was reset if a command was "
                  "running)", file=sys.stderr)
        else:
            print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
