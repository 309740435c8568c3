"""Resident mode: the network's weights and a layer program in the device's memory, the
layers walked by the on-chip sequencer (``hw.layer_sequencer``, ``spec.program``).

``compile_network`` lays a quantized network out in memory: for every run of every layer
the device runs (a Fire layer's output-channel tiles, planned by ``spec.tiling``), its
configuration word, weight rows and parameters, and a descriptor; the feature maps between
layers; a stats record per run. Consecutive device layers form one *segment*, one program:
the host writes the segment's input map, starts its program, and reads its output map. The
layers the device does not run yet (conv1, the pools, conv10 and the average pool, until
their units are in the gateware) run on the host between segments, as in streaming mode.

``ResidentNetwork`` (from ``Accelerator.load``) writes everything once, checks it by reading
it back (a CRC of each region), and infers images.
"""

from __future__ import annotations

import time
import zlib
from dataclasses import dataclass, field

import numpy as np

from spec.layers import ConvLayer
from spec.params import EngineParams, config_bits, qparam_bits
from spec.program import (
    STATS_BYTES,
    InMode,
    Op,
    pack_descriptor,
    pack_items,
    pack_weight_rows,
    unpack_stats,
    value_bytes,
)
from spec.tiling import ConvPlan, ConvShape, FirePlan, Shape, lanes_to_ints
from spec.windows import out_size, pack_window_weights, packed_channels
from sw import ops
from sw.network import Conv, Fire, GlobalAvgPool, MaxPool
from sw.quantize import QuantizedNetwork, avgpool_requant

from .errors import DriverError
from .runner import LayerRecord, NetworkResult, check_width

#: every region starts on this many bytes (a descriptor; a whole number of any port's words)
ALIGN = 64


def _align(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


@dataclass
class MapSlot:
    """A feature map in memory: HWC, channels padded to whole input beats (``c_pad``; a raw
    image for the window packer has none), each value ``vb`` little-endian bytes."""

    addr: int
    shape: tuple[int, int, int]  #: (h, w, c)
    c_pad: int
    vb: int

    @property
    def nbytes(self) -> int:
        h, w, _ = self.shape
        return h * w * self.c_pad * self.vb

    @property
    def dtype(self) -> str:
        return {1: "<i1", 2: "<i2", 4: "<i4"}[self.vb]

    def pack(self, x: np.ndarray) -> bytes:
        h, w, c = self.shape
        buf = np.zeros((h, w, self.c_pad), dtype=np.int64)
        buf[:, :, :c] = x
        return buf.astype(self.dtype).tobytes()

    def unpack(self, raw: bytes) -> np.ndarray:
        h, w, c = self.shape
        arr = np.frombuffer(raw, dtype=self.dtype)
        return arr.reshape(h, w, self.c_pad)[:, :, :c].astype(np.int64)


@dataclass
class RunInfo:
    layer: str
    tile: int
    stats_addr: int
    macs: int


@dataclass
class Segment:
    """Consecutive device layers: one program. The first segment has a second input slot
    and its program's twin reading it (``programs[1]``, ``inputs[1]``): the next image
    uploads while the current one computes."""

    layers: list[str]
    program: int  #: the program's address
    input: MapSlot
    outputs: dict[str, MapSlot]
    runs: list[RunInfo] = field(default_factory=list)
    programs: list[int] = field(default_factory=list)  #: per input slot
    inputs: list[MapSlot] = field(default_factory=list)


@dataclass
class Image:
    """What ``compile_network`` lays out: the regions to write and where things are."""

    regions: list[tuple[int, bytes]]
    segments: list[Segment]
    end: int  #: first free byte

    @property
    def nbytes(self) -> int:
        return sum(len(b) for _, b in self.regions)


class ResidentError(DriverError):
    """A network this device cannot hold or run resident, or a program that failed."""


def device_layer(layer, q) -> str | None:
    """The :class:`Layout` method that puts ``layer`` on the device, or None (the host runs
    it): Fire layers without bypass, convolutions the engine's 1x1 mode takes (conv1 with
    its windows packed on the device), max pools 3x3/2, the global average pool."""
    if isinstance(layer, Fire):
        return "fire" if not layer.bypass else None
    if isinstance(layer, MaxPool):
        return "maxpool" if (layer.kernel, layer.stride) == (3, 2) else None
    if isinstance(layer, GlobalAvgPool):
        return "avgpool"
    if isinstance(layer, Conv):
        conv = q.conv
        if conv.rq.hi is not None or conv.rq.rescale is not None:
            return None
        if layer.kernel == 1 and q.pad == 0 and q.stride == 1:
            return "conv"
        window = q.pad == 0 and layer.cin <= 4 and layer.kernel <= 7 and q.stride <= 2
        return "conv" if window else None
    return None


class Layout:
    """Allocates the device's memory and lays runs out in it: the pieces of
    :func:`compile_network`, usable on their own (a test's one-layer program)."""

    def __init__(self, p: EngineParams, *, port_bits: int, mem_size: int, base: int = 0):
        beat = p.ic_lanes * p.bits
        if p.bits not in (8, 16) or beat % port_bits:
            raise ResidentError(f"resident mode needs 8- or 16-bit values and input beats of "
                                f"whole memory words: the engine has {p.bits}-bit values, "
                                f"{beat}-bit beats, the memory {port_bits}-bit words")
        self.p, self.port_bits, self.mem_size = p, port_bits, mem_size
        self.vb = value_bytes(p)
        self.end = _align(base)
        self.regions: list[tuple[int, bytes]] = []

    def alloc(self, n: int) -> int:
        addr = self.end
        self.end = _align(addr + max(n, 1))
        if self.end > self.mem_size:
            raise ResidentError(f"the network does not fit the device's memory: "
                                f"{self.end:,} bytes needed, {self.mem_size:,} there")
        return addr

    def put(self, data: bytes) -> int:
        addr = self.alloc(len(data))
        self.regions.append((addr, data))
        return addr

    def slot(self, shape, *, raw: bool = False, vb: int | None = None) -> MapSlot:
        """A map's place: channels padded to whole beats, or ``raw`` (an image as it is)."""
        h, w, c = shape
        c_pad = c if raw else -(-c // self.p.ic_lanes) * self.p.ic_lanes
        s = MapSlot(0, (h, w, c), c_pad, vb or self.vb)
        s.addr = self.alloc(s.nbytes)
        return s

    def _engine_run(self, cfg: int, rows, qp) -> dict:
        """A run's configuration item, weight rows and parameters written; its fields."""
        p = self.p
        d = dict(op=Op.ENGINE, stats=1, stats_addr=self.alloc(STATS_BYTES),
                 cfg_addr=self.put(pack_items([cfg], config_bits(p), self.port_bits)))
        if len(rows):
            d.update(w_addr=self.put(pack_weight_rows(lanes_to_ints(rows, p.bits), p,
                                                      self.port_bits)),
                     w_rows=len(rows),
                     q_addr=self.put(pack_items(qp, qparam_bits(p), self.port_bits)),
                     q_count=len(qp))
        return d

    def conv(self, name: str, q, src: MapSlot) -> tuple[list[dict], MapSlot, list[RunInfo]]:
        """A convolution (``sw.quantize.QConv``) on the engine's 1x1 mode: conv10 as it is,
        conv1 with its windows packed by the device's window packer from the raw image."""
        p, vb, ic = self.p, self.vb, self.p.ic_lanes
        conv = q.conv
        cout, cin, k, _ = conv.weight.shape
        h, w, _ = src.shape
        window = not (k == 1 and q.pad == 0 and q.stride == 1)
        if window:
            if q.pad:
                raise ResidentError(f"{name}: the window packer takes no padding")
            if src.c_pad != cin:
                raise ResidentError(f"{name}: the window packer reads a raw image")
            conv = ConvLayer(pack_window_weights(conv.weight, ic), conv.bias, conv.rq)
            oh, ow = out_size(h, k, q.stride, 0), out_size(w, k, q.stride, 0)
            cin_l = packed_channels(k, cin, ic)
        else:
            oh, ow, cin_l = h, w, cin
        plan = ConvPlan(p, ConvShape(oh, ow, cin_l, cout), relu=bool(conv.rq.relu))
        out = self.slot((oh, ow, cout))
        descs, runs = [], []
        for t, run in enumerate(plan.runs):
            # the sequencer takes the engine's wide output: up to three values a beat
            d = self._engine_run(plan.config(run, conv, q.z_in, wide=True),
                                 plan.weight_rows(run, conv) if run.load else [],
                                 plan.qparams(run, conv) if run.load else [])
            n = len(run.pixels)
            d.update(out_addr=out.addr + run.pixels.start * out.c_pad * vb, out_pixels=n,
                     out_stride=out.c_pad * vb, off0=run.channels.start * vb,
                     len0=len(run.channels), in_beats=n * plan.kc)
            if window:
                d.update(self._window_band(src, run.pixels, k, q.stride, ow, plan.kc,
                                           q.z_in))
            else:
                d.update(in_addr=src.addr + run.pixels.start * src.c_pad * vb)
            descs.append(d)
            runs.append(RunInfo(name, t, d["stats_addr"], n * cin * k * k * len(run.channels)))
        return descs, out, runs

    def _window_band(self, src: MapSlot, pixels: range, k: int, stride: int, ow: int,
                     beats_per_pixel: int, z: int) -> dict:
        """The raw image rows a run of output pixels needs, read from a beat boundary: the
        packer's extra output pixels before the run's are skipped."""
        h, w, cin = src.shape
        lanes = self.p.ic_lanes
        r0, r1 = pixels.start // ow, (pixels.stop - 1) // ow
        first = r0 * stride  # the band's first image row; moved up to a beat boundary
        start = first
        while (start * w * cin) % lanes:
            start -= stride
        rows = r1 * stride + k - start
        skip = ((first - start) // stride * ow + pixels.start - r0 * ow) * beats_per_pixel
        return dict(in_mode=InMode.WINDOW, in_addr=src.addr + start * w * cin * self.vb,
                    raw_beats=-(-rows * w * cin // lanes), skip_beats=skip, h=rows, w=w,
                    c=cin, k=k, stride=stride, z_in=z)

    def maxpool(self, name: str, layer, src: MapSlot) -> tuple[list[dict], MapSlot,
                                                                list[RunInfo]]:
        h, w, c = src.shape
        oh, ow = layer.out_hw(h, w)
        out = self.slot((oh, ow, c))
        cw = src.c_pad // self.p.ic_lanes
        d = dict(op=Op.MAXPOOL, stats=1, stats_addr=self.alloc(STATS_BYTES), h=h, w=w, c=cw,
                 in_addr=src.addr, in_beats=h * w * cw, out_addr=out.addr)
        return [d], out, [RunInfo(name, 0, d["stats_addr"], 0)]

    def avgpool(self, name: str, q, src: MapSlot) -> tuple[list[dict], MapSlot,
                                                           list[RunInfo]]:
        h, w, c = src.shape
        cw = src.c_pad // self.p.ic_lanes
        d = dict(op=Op.AVGPOOL, stats=1, stats_addr=self.alloc(STATS_BYTES), h=h, w=w, c=cw,
                 in_addr=src.addr, in_beats=h * w * cw, z_in=q.z_in, exact=int(q.exact))
        if q.exact:  # the sums themselves, 32-bit
            out = self.slot((1, 1, c), vb=4)
        else:
            rq = avgpool_requant(q, h * w)
            d.update(mult=int(rq.m[0]), shift=int(rq.n[0]), z_out=q.z_out)
            out = self.slot((1, 1, c))
        d["out_addr"] = out.addr
        return [d], out, [RunInfo(name, 0, d["stats_addr"], 0)]

    def fire(self, name: str, q: ops.FireLayer, src: MapSlot) -> tuple[list[dict], MapSlot,
                                                                       list[RunInfo]]:
        """Descriptors (as fields) of one Fire layer reading ``src``; its output's slot."""
        p, vb = self.p, self.vb
        h, w, _ = src.shape
        cin, s, e1, e3 = q.shape
        plan = FirePlan(p, Shape(h, w, cin, s, e1, e3))
        out = self.slot((h, w, e1 + e3))
        descs, runs = [], []
        for t, tile in enumerate(plan.tiles):
            d = self._engine_run(plan.config(tile, q, load=True, compute=True),
                                 plan.weight_rows(tile, q), plan.qparams(tile, q))
            d.update(in_addr=src.addr if tile.squeeze else 0,
                     in_beats=h * w * plan.kc if tile.squeeze else 0,
                     out_addr=out.addr, out_pixels=h * w, out_stride=out.c_pad * vb,
                     off0=tile.e1.start * vb, len0=len(tile.e1),
                     off1=(e1 + tile.e3.start) * vb, len1=len(tile.e3))
            descs.append(d)
            macs = h * w * ((cin * s if tile.squeeze else 0) + s * len(tile.e1)
                            + 9 * s * len(tile.e3))
            runs.append(RunInfo(name, t, d["stats_addr"], macs))
        return descs, out, runs

    def program(self, descs: list[dict]) -> int:
        """Write the descriptors and an END; the program's address."""
        return self.put(b"".join(pack_descriptor(**d) for d in descs)
                        + pack_descriptor(op=Op.END))


def compile_network(qnet: QuantizedNetwork, p: EngineParams, *, port_bits: int,
                    mem_size: int, input_shape: tuple[int, int, int], base: int = 0) -> Image:
    """Lay ``qnet`` out for a device with engine ``p`` and a ``port_bits`` memory port."""
    lay = Layout(p, port_bits=port_bits, mem_size=mem_size, base=base)
    segments: list[Segment] = []
    shape = tuple(input_shape)
    current: Segment | None = None
    descs: list[dict] = []

    def close_segment():
        nonlocal current, descs
        if current is not None:
            current.program = lay.program(descs)
            current.programs, current.inputs = [current.program], [current.input]
            if not segments:  # the first: a second input slot, the twin program reading it
                other = lay.slot(current.input.shape, raw=current.input.c_pad
                                 == current.input.shape[2], vb=current.input.vb)
                lo, hi = current.input.addr, current.input.addr + current.input.nbytes
                delta = other.addr - lo
                twin = [dict(d, in_addr=d["in_addr"] + delta)
                        if d.get("in_beats") and lo <= d.get("in_addr", -1) < hi else d
                        for d in descs]
                current.programs.append(lay.program(twin))
                current.inputs.append(other)
            segments.append(current)
        current, descs = None, []

    for layer in qnet.net.layers:
        q = qnet.layers.get(layer.name)
        method = device_layer(layer, q)
        if method is None:
            close_segment()
            shape = _out_shape(layer, shape)
            continue
        if current is None:
            raw = isinstance(layer, Conv) and layer.kernel > 1
            current = Segment([], 0, lay.slot(shape, raw=raw), {})
        src = current.outputs[current.layers[-1]] if current.layers else current.input
        more, out, runs = getattr(lay, method)(layer.name, q or layer, src)
        descs += more
        current.runs += runs
        current.layers.append(layer.name)
        current.outputs[layer.name] = out
        shape = out.shape
    close_segment()
    return Image(lay.regions, segments, lay.end)


def _out_shape(layer, shape):
    h, w, c = shape
    oh, ow = layer.out_hw(h, w)
    cout = getattr(layer, "cout", c)
    return oh, ow, cout


class ResidentNetwork:
    """A network loaded into a device's memory (``Accelerator.load``)."""

    def __init__(self, acc, qnet: QuantizedNetwork, input_shape, *, verify: bool = True,
                 progress=None):
        check_width(acc, qnet)
        mem = acc.memory
        if mem is None:
            raise ResidentError("resident mode needs a device with external memory "
                                "(this one has none: use --mode stream)")
        if not acc.identity.sequencer:
            raise ResidentError("resident mode needs the layer sequencer, which this "
                                "device was built without (use --mode stream)")
        self.acc, self.qnet, self.mem = acc, qnet, mem
        self.image = compile_network(qnet, acc.params, port_bits=mem.config.port_bits,
                                     mem_size=mem.size, input_shape=tuple(input_shape))
        start = time.perf_counter()
        for addr, data in self.image.regions:
            mem.write(addr, data)
            if progress is not None:
                progress(len(data))
        self.load_seconds = time.perf_counter() - start
        self.verified = False
        if verify:
            self.verify()

    def verify(self) -> None:
        """Read every region back and compare CRCs: a load the device did not take whole is
        an error here, not a wrong result later."""
        for addr, data in self.image.regions:
            got = self.mem.read(addr, len(data))
            if zlib.crc32(got) != zlib.crc32(data):
                raise ResidentError(f"the memory at {addr:#x} ({len(data):,} bytes) does not "
                                    "read back as written: the load failed")
        self.verified = True

    def infer(self, image: np.ndarray, *, check: bool = False) -> NetworkResult:
        """One float HWC image: the device's segments resident, the rest on the host."""
        qnet = self.qnet
        x = qnet.quantize_input(image)
        records: list[LayerRecord] = []
        by_first = {seg.layers[0]: seg for seg in self.image.segments}
        names = [la.name for la in qnet.net.layers]
        start = time.perf_counter()
        link0 = (self.acc.link.stats.bytes_down, self.acc.link.stats.bytes_up)
        i = 0
        while i < len(names):
            name = names[i]
            seg = by_first.get(name)
            if seg is None:
                t0 = time.perf_counter()
                x = qnet.run_layer(name, x)
                records.append(LayerRecord(name, "host", time.perf_counter() - t0,
                                           shape=list(x.shape)))
                i += 1
                continue
            t0 = time.perf_counter()
            if tuple(x.shape) != seg.input.shape:
                raise ResidentError(f"{name}: input {tuple(x.shape)}, the program was "
                                    f"compiled for {seg.input.shape}")
            self.mem.write(seg.input.addr, seg.input.pack(x))
            self.acc.run_program(seg.program)
            for rec in self._records(seg):
                out = seg.outputs[rec.name]
                if check or rec.name == seg.layers[-1]:
                    y = out.unpack(self.mem.read(out.addr, out.nbytes))
                    if check:
                        rec.match = bool(np.array_equal(y, qnet.run_layer(rec.name, x)))
                    x = y
                rec.seconds = time.perf_counter() - t0
                records.append(rec)
                t0 = time.perf_counter()
                i += 1
        link = {"bytes_down": self.acc.link.stats.bytes_down - link0[0],
                "bytes_up": self.acc.link.stats.bytes_up - link0[1]}
        return NetworkResult(qnet.dequantize_output(x), records, time.perf_counter() - start,
                             link, x)

    @property
    def whole(self) -> bool:
        """Every layer runs on the device, in one program."""
        segs = self.image.segments
        return len(segs) == 1 and segs[0].layers == [la.name for la in self.qnet.net.layers]

    def _records(self, seg: Segment, seconds: float = 0.0) -> list[LayerRecord]:
        """Per-layer records of the segment's last run, from the sequencer's stats (the
        segment's ``seconds`` shared among its layers)."""
        stats = {r.stats_addr: unpack_stats(self.mem.read(r.stats_addr, STATS_BYTES))
                 for r in seg.runs}
        lanes = self.acc.params.lanes
        records = []
        for lname in seg.layers:
            runs = [r for r in seg.runs if r.layer == lname]
            cycles = sum(stats[r.stats_addr]["cycles"] for r in runs)
            macs = sum(r.macs for r in runs)
            records.append(LayerRecord(
                lname, "device", seconds / len(seg.layers), cycles,
                sum(stats[r.stats_addr]["compute"] for r in runs), len(runs), None,
                list(seg.outputs[lname].shape), macs=macs or None, lanes=lanes))
        return records

    def stream(self, images, *, on_image=None):
        """Float HWC images through the whole-device program, each image's upload while the
        one before it computes (two input slots): yields ``(int output, records)``."""
        if not self.whole:
            raise ResidentError("streaming images needs every layer on the device: "
                                + ", ".join(la.name for la in self.qnet.net.layers
                                            if la.name not in self.image.segments[0].layers)
                                + " run on the host")
        acc, qnet = self.acc, self.qnet
        seg = self.image.segments[0]
        out = seg.outputs[seg.layers[-1]]
        images = iter(images)
        first = next(images, None)
        if first is None:
            return
        current = qnet.quantize_input(first)
        self.mem.write(seg.inputs[0].addr, seg.inputs[0].pack(current))
        slot, t0 = 0, time.perf_counter()
        before = acc.start_program(seg.programs[0])
        i = 0
        while True:
            upcoming = next(images, None)
            if upcoming is not None:  # uploads while the device computes
                nxt = seg.inputs[1 - slot]
                self.mem.write(nxt.addr, nxt.pack(qnet.quantize_input(upcoming)))
            acc.wait_program(before)
            y = out.unpack(self.mem.read(out.addr, out.nbytes))
            records = self._records(seg, time.perf_counter() - t0)
            if upcoming is not None:
                slot, t0 = 1 - slot, time.perf_counter()
                before = acc.start_program(seg.programs[slot])
            yield y, records
            if on_image is not None:
                on_image(f"input {i}")
            i += 1
            if upcoming is None:
                return

    def infer_batch(self, images, *, check: bool = False, on_image=None):
        """Float HWC images; returns (int outputs, per-layer records with each layer's
        cycles summed over the images), as ``run_network_batch``. Without ``check`` and
        with every layer on the device, each upload overlaps the compute before it."""
        if self.whole and not check:
            pairs = list(self.stream(images, on_image=on_image))
            outs = [y for y, _ in pairs]
            results = [records for _, records in pairs]
        else:
            outs, results = [], []
            for i, image in enumerate(images):
                result = self.infer(image, check=check)
                outs.append(result.output)
                results.append(result.layers)
                if on_image is not None:
                    on_image(f"input {i}")
        totals = results[0] if results else []
        for layers in results[1:]:
            for total, rec in zip(totals, layers, strict=True):
                total.seconds += rec.seconds
                if rec.where == "device":
                    total.cycles += rec.cycles
                    total.compute += rec.compute
                    if rec.macs:
                        total.macs += rec.macs
                    total.match = (total.match and rec.match) if check else None
        return outs, totals

    def frame_link_bytes(self, image) -> dict:
        """Bytes over the link one streamed image costs, each way: its upload, the start of
        its program, one COUNTERS poll, the output's read (the host's waiting polls, as many
        as the simulator's speed makes them, left out). Runs the image once."""
        acc, seg = self.acc, self.image.segments[0]
        stats = acc.link.stats
        out = seg.outputs[seg.layers[-1]]
        total = {"bytes_down": 0, "bytes_up": 0}

        def counted(action):
            d, u = stats.bytes_down, stats.bytes_up
            result = action()
            total["bytes_down"] += stats.bytes_down - d
            total["bytes_up"] += stats.bytes_up - u
            return result

        x = self.qnet.quantize_input(image)
        counted(lambda: self.mem.write(seg.inputs[0].addr, seg.inputs[0].pack(x)))
        before = counted(lambda: acc.start_program(seg.programs[0]))
        acc.wait_program(before)
        counted(acc.counters)
        counted(lambda: self.mem.read(out.addr, out.nbytes))
        return total
