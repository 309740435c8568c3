"""Whole-network inference: the host runs conv1, the pools, conv10 and the average pool with
the golden model; every Fire layer runs on the device.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from sw import ops
from sw.quantize import QuantizedNetwork

from .accelerator import Accelerator, FireResult
from .errors import DriverError


@dataclass
class LayerRecord:
    name: str
    where: str  #: "device" or "host"
    seconds: float  #: host wall time
    cycles: int | None = None  #: device cycles, waiting on the link included
    compute: int | None = None  #: of those, the engine's own (not waiting on the link)
    runs: int | None = None
    match: bool | None = None  #: bit-exact with the golden model (with check=True)
    shape: list[int] = field(default_factory=list)
    fire: FireResult | None = None
    macs: int | None = None  #: (resident) the layer's multiply-accumulates
    utilization: float | None = None  #: (resident) macs / (cycles x the array's lanes)

    def as_dict(self) -> dict:
        d = {"name": self.name, "where": self.where, "seconds": self.seconds,
             "cycles": self.cycles, "compute_cycles": self.compute, "match": self.match,
             "shape": self.shape}
        if self.macs is not None:
            d.update(macs=self.macs, utilization=self.utilization)
        if self.fire is not None:
            d.update(runs=self.fire.runs, bytes_down=self.fire.bytes_down,
                     bytes_up=self.fire.bytes_up, payload_down=self.fire.payload_down,
                     payload_up=self.fire.payload_up)
        return d


@dataclass
class NetworkResult:
    logits: np.ndarray  #: dequantized, float
    layers: list[LayerRecord]
    seconds: float
    #: (resident) bytes over the link for this image: ``bytes_down``, ``bytes_up``
    link: dict | None = None
    #: (resident) the network's integer output, before dequantization
    output: np.ndarray | None = None

    @property
    def all_match(self) -> bool:
        return all(r.match for r in self.layers if r.where == "device")

    @property
    def device_cycles(self) -> int:
        """Device cycles of the layers run there, waiting on the link included."""
        return sum(r.cycles or 0 for r in self.layers if r.where == "device")

    @property
    def compute_cycles(self) -> int:
        """The engine's own cycles of the layers run on the device."""
        return sum(r.compute or 0 for r in self.layers if r.where == "device")


def check_width(acc: Accelerator, qnet: QuantizedNetwork) -> None:
    """Refuse a network quantized to another width than the device's engine: its values
    would fit, but the engine clamps and rounds at its own width, not the network's."""
    bits = acc.params.bits
    if qnet.spec.bits != bits:
        raise DriverError(f"the device's engine computes {bits}-bit values, but the network "
                          f"is quantized to {qnet.spec.bits} bits")


def run_network(acc: Accelerator, qnet: QuantizedNetwork, image: np.ndarray, *,
                check: bool = False, on_layer=None) -> NetworkResult:
    """Infer one float HWC image; Fire layers on ``acc``. ``on_layer(record)`` after each."""
    check_width(acc, qnet)
    records: list[LayerRecord] = []
    started = [time.perf_counter()]

    def fire_on_device(name, layer, x):
        result = acc.run_fire(layer, x)
        match = None
        if check:
            match = bool(np.array_equal(result.output, ops.fire(x, layer, qnet.spec)))
        records.append(LayerRecord(name, "device", result.seconds, result.cycles,
                                   result.compute, result.runs, match,
                                   list(result.output.shape), result))
        return result.output

    def after(name, x_in, y):
        now = time.perf_counter()
        if not records or records[-1].name != name:
            records.append(LayerRecord(name, "host", now - started[0], shape=list(y.shape)))
        else:
            records[-1].seconds = now - started[0]
        started[0] = now
        if on_layer is not None:
            on_layer(records[-1])

    start = time.perf_counter()
    out = qnet.forward(qnet.quantize_input(image), fire_executor=fire_on_device,
                       on_layer=after)
    return NetworkResult(qnet.dequantize_output(out), records, time.perf_counter() - start)


def run_network_batch(acc: Accelerator, qnet: QuantizedNetwork, images_q: list[np.ndarray],
                      *, check: bool = False, on_layer=None):
    """Infer a batch of already-quantized HWC inputs layer by layer (each Fire layer's
    weights loaded once for the whole batch); returns (int outputs, per-layer records)."""
    check_width(acc, qnet)
    xs = [np.asarray(x, dtype=np.int64) for x in images_q]
    records: list[LayerRecord] = []
    for layer in qnet.net.layers:
        start = time.perf_counter()
        q = qnet.layers.get(layer.name)
        if isinstance(q, ops.FireLayer):
            results = acc.run_fire_batch(q, xs)
            match = None
            if check:
                match = all(np.array_equal(r.output, ops.fire(x, q, qnet.spec))
                            for r, x in zip(results, xs, strict=True))
            xs = [r.output for r in results]
            rec = LayerRecord(layer.name, "device", time.perf_counter() - start,
                              sum(r.cycles for r in results), sum(r.compute for r in results),
                              results[0].runs, match, list(xs[0].shape), results[0])
        else:
            xs = [qnet.run_layer(layer.name, x) for x in xs]
            rec = LayerRecord(layer.name, "host", time.perf_counter() - start,
                              shape=list(xs[0].shape))
        records.append(rec)
        if on_layer is not None:
            on_layer(rec)
    return xs, records
