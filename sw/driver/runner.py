"""Whole-network inference. :func:`run_network` (one image, streaming) runs every Fire layer
and every convolution the engine can take (conv1 with its windows packed, conv10) on the
device, the pools and the average pool on the host with the golden model;
:func:`run_network_batch` runs the Fire layers on the device, the rest on the host.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from spec.tiling import PlanError
from sw import ops
from sw.quantize import QConv, QuantizedNetwork

from .accelerator import Accelerator, FireResult, conv_plan
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
    fire: FireResult | None = None  #: the device's result (a Fire layer's or a convolution's)
    macs: int | None = None  #: the layer's multiply-accumulates (device layers)
    lanes: int | None = None  #: the engine's multipliers

    @property
    def utilization(self) -> float | None:
        """MACs / (compute cycles x lanes): the share of the MAC array the layer kept busy."""
        if not (self.macs and self.compute and self.lanes):
            return None
        return self.macs / (self.compute * self.lanes)

    def as_dict(self) -> dict:
        d = {"name": self.name, "where": self.where, "seconds": self.seconds,
             "cycles": self.cycles, "compute_cycles": self.compute, "match": self.match,
             "shape": self.shape, "macs": self.macs, "utilization": self.utilization}
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


def conv_on_device(acc: Accelerator, q, x) -> bool:
    """Whether the device's engine can run layer ``q`` on ``x`` as a convolution."""
    if not isinstance(q, QConv):
        return False
    try:
        conv_plan(acc.params, q.conv, x, z_in=q.z_in, stride=q.stride, pad=q.pad)
    except PlanError:
        return False
    return True


def _macs(x: np.ndarray, y: np.ndarray, q) -> int:
    """A device layer's multiply-accumulates, from its input and output shapes."""
    if isinstance(q, ops.FireLayer):
        cin, s, e1, e3 = q.shape
        h, w = x.shape[:2]
        return h * w * (cin * s + s * e1 + 9 * s * e3)
    cout, cin, kh, kw = q.conv.weight.shape
    return y.shape[0] * y.shape[1] * cout * cin * kh * kw


def run_network(acc: Accelerator, qnet: QuantizedNetwork, image: np.ndarray, *,
                check: bool = False, on_layer=None) -> NetworkResult:
    """Infer one float HWC image: Fire layers and convolutions on ``acc`` (streamed), pools
    on the host. ``on_layer(record)`` after each layer."""
    check_width(acc, qnet)
    records: list[LayerRecord] = []
    lanes = acc.params.lanes
    start = time.perf_counter()
    x = np.asarray(qnet.quantize_input(image), dtype=np.int64)
    for layer in qnet.net.layers:
        began = time.perf_counter()
        q = qnet.layers.get(layer.name)
        if isinstance(q, ops.FireLayer) or conv_on_device(acc, q, x):
            if isinstance(q, ops.FireLayer):
                result = acc.run_fire(q, x)
            else:
                result = acc.run_conv(q.conv, x, z_in=q.z_in, stride=q.stride, pad=q.pad)
            y = result.output
            match = None
            if check:
                match = bool(np.array_equal(y, qnet.run_layer(layer.name, x)))
            rec = LayerRecord(layer.name, "device", result.seconds, result.cycles,
                              result.compute, result.runs, match, list(y.shape), result,
                              _macs(x, y, q), lanes)
        else:
            y = qnet.run_layer(layer.name, x)
            rec = LayerRecord(layer.name, "host", time.perf_counter() - began,
                              shape=list(y.shape))
        records.append(rec)
        if on_layer is not None:
            on_layer(rec)
        x = y
    return NetworkResult(qnet.dequantize_output(x), records, time.perf_counter() - start)


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
