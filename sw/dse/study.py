"""The design space, a point's figures, the resumable store and the tasks that run on Dask.

A *network point* (:class:`NetPoint`) is a Fire stack of the paper's metaparameters for
28x28 digits (``sw.network.design_space``'s rule on ``mnist_fire``'s layout: a 3x3 conv1, four
Fire modules, pools after conv1 and fire3, ten classes), with simple bypass on or off, its
squeeze and expand channels pruned by a ratio, and a bit width. An *engine* is an
:class:`~spec.params.EngineParams` on a board. A row of the study is one network point on one
engine: its parameters, model bytes at the bit width, MACs, the engine's cycles for the Fire
layers and frames/s from the cost model (``spec.cost``), the engine's resources (a yosys
estimate, shared by every point on that engine) and the accuracy of the network trained with
``sw.train`` at a few seeds (mean and spread).

The slow parts are *tasks*: one training per (network point, seed), one yosys estimate per
engine, one RTL run per sampled (point, engine). Each has a key (a dict of everything its
result depends on); :class:`Store` keeps each result in a file named by the key's hash, so a
rerun submits only the tasks whose files are missing. Tasks are plain module functions with
JSON-able arguments and results, so any Dask worker with this package installed can run them
and only the client writes the store.
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import json
import math
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, fields
from functools import cache
from pathlib import Path

import numpy as np

from spec.cli import Progress
from spec.cost import Latencies, fire_cost
from spec.params import EngineParams
from spec.quant import QuantSpec
from spec.tiling import PlanError, Shape

from ..network import Network, squeezenet

SIDE = 28  #: the digits' side
#: The paper's values (Section 5, Figure 3).
PAPER_SR = (0.125, 0.25, 0.5, 0.75, 1.0)
PAPER_PCT3X3 = (0.01, 0.25, 0.5, 0.75, 0.99)


class DseError(ValueError):
    """A study that cannot run as asked; the message is one line."""


# ------------------------------------------------------------------------ the design space
@dataclass(frozen=True)
class NetPoint:
    """A network of the study: the paper's metaparameters on ``mnist_fire``'s layout.

    ``e_i = base_e + incr_e * floor(i / freq)`` expand filters in Fire module ``i``, of which
    ``round(pct3x3 * e_i)`` are 3x3, and ``max(1, round(sr * e_i))`` squeeze filters; the
    defaults are ``mnist_fire``'s. ``prune`` removes that share of every Fire module's squeeze,
    expand1x1 and expand3x3 channels (at least one of each is kept) and the network is trained
    at those widths from scratch. ``bits`` is the weight and activation width of the
    quantized model (model bytes, integer accuracy) and of the engine it runs on.
    """

    base_e: int = 64
    incr_e: int = 64
    pct3x3: float = 0.5
    freq: int = 2
    sr: float = 0.125
    bypass: bool = True
    prune: float = 0.0
    bits: int = 8

    def __post_init__(self):
        if self.base_e < 1 or self.incr_e < 0 or self.freq < 1:
            raise DseError(f"base_e={self.base_e}, incr_e={self.incr_e}, freq={self.freq}: "
                           "need base_e >= 1, incr_e >= 0, freq >= 1")
        if not 0 <= self.pct3x3 <= 1 or not 0 < self.sr <= 4:
            raise DseError(f"pct3x3={self.pct3x3}, sr={self.sr}: need 0 <= pct3x3 <= 1 and "
                           "0 < sr <= 4")
        if not 0 <= self.prune < 1:
            raise DseError(f"prune={self.prune}: a ratio of channels removed, 0 <= prune < 1")
        QuantSpec(self.bits)  # 2 to 16

    @property
    def fires(self) -> list[tuple[int, int, int]]:
        """``(s1x1, e1x1, e3x3)`` per Fire module."""
        keep = 1 - self.prune
        out = []
        for i in range(4):
            e = self.base_e + self.incr_e * (i // self.freq)
            e3 = round(e * self.pct3x3)
            s, e1 = max(1, round(e * self.sr)), e - e3
            if self.prune:
                s, e1, e3 = (max(1, round(c * keep)) for c in (s, e1, e3))
            out.append((s, e1, e3))
        return out

    def network(self) -> Network:
        fires = self.fires
        # simple bypass as the paper places it (around fire3, 5, 7, 9: every other module),
        # where the module's input and output channels match: fire3 and fire5 at freq 2, as
        # in mnist_fire
        bypass = ()
        if self.bypass:
            couts = [64] + [e1 + e3 for _, e1, e3 in fires]
            bypass = tuple(i + 2 for i in range(1, 4, 2) if couts[i] == couts[i + 1])
        return squeezenet(self.name, fires, conv1=(64, 3, 1), pool_after=(0, 2),
                          bypass=bypass, num_classes=10, classifier_relu=False)

    @property
    def name(self) -> str:
        return (f"fire_sr{self.sr:g}_p{self.pct3x3:g}_b{self.base_e}+{self.incr_e}f{self.freq}"
                f"{'_bypass' if self.bypass else ''}"
                f"{f'_prune{self.prune:g}' if self.prune else ''}_int{self.bits}")

    def to_dict(self) -> dict:
        return asdict(self)


#: ``mnist_fire``: the shipped model's network.
SHIPPED_POINT = NetPoint()


@dataclass(frozen=True)
class Engine:
    """An engine configuration on a board (the board's clock and capacity come with it)."""

    board: str
    params: EngineParams
    clock_hz: int
    family: str
    multipliers: str
    capacity: dict = field(default_factory=dict, hash=False, compare=False)

    @property
    def label(self) -> str:
        p = self.params
        return f"{self.board} {p.ic_lanes}x{p.oc_lanes} int{p.bits}"

    def key(self) -> dict:
        """What a synthesis depends on: the parameters, the multiplier style and the family
        (two boards of one family share an estimate)."""
        return {"params": self.params.to_dict(), "multipliers": self.multipliers,
                "family": self.family}


@dataclass(frozen=True)
class Budget:
    """How long each point trains and on how much data it is measured (``sw.train``)."""

    epochs: int = 6
    max_steps: int | None = None
    train_limit: int | None = None
    test_limit: int | None = None
    calib: int = 100

    def to_dict(self) -> dict:
        return asdict(self)


AXIS_FIELDS = [f.name for f in fields(NetPoint)]


def grid(axes: dict[str, Iterable]) -> list[NetPoint]:
    """Every combination of the axes' values (the others at their defaults), in order,
    duplicates dropped."""
    names = list(axes)
    points = [NetPoint(**dict(zip(names, combo, strict=True)))
              for combo in itertools.product(*(axes[n] for n in names))]
    return list(dict.fromkeys(points))


def random_points(axes: dict[str, Iterable], count: int, seed: int = 0) -> list[NetPoint]:
    """``count`` distinct points drawn (seeded) from the grid of ``axes``."""
    every = grid(axes)
    rng = np.random.default_rng(seed)
    pick = rng.permutation(len(every))[:count]
    return [every[i] for i in sorted(pick)]


# ------------------------------------------------------------------- the figures of a point
def model_bytes(net: Network, bits: int) -> int:
    """The quantized model's bytes: weights at ``bits`` (packed), 32-bit biases."""
    shapes = net.param_shapes
    weights = sum(int(np.prod(s)) for k, s in shapes.items() if k.endswith(".weight"))
    biases = sum(int(np.prod(s)) for k, s in shapes.items() if k.endswith(".bias"))
    return math.ceil(weights * bits / 8) + 4 * biases


def fire_shapes(net: Network) -> list[tuple[Shape, bool]]:
    """Each Fire layer's shape (at the digits' 28x28) and whether it has a bypass."""
    out = []
    for row in net.shapes(SIDE):
        if row["kind"] == "Fire":
            fire = net.layer(row["name"])
            h, w, cin = row["input"]
            out.append((Shape(h, w, cin, fire.s1x1, fire.e1x1, fire.e3x3), fire.bypass))
    return out


def network_figures(point: NetPoint) -> dict:
    """Parameters, model bytes and MACs (conv1 and conv10 included) at 28x28."""
    net = point.network()
    rows = net.shapes(SIDE)
    return {"params": net.params, "model_bytes": model_bytes(net, point.bits),
            "macs": sum(r["macs"] for r in rows),
            "fire_macs": sum(r["macs"] for r in rows if r["kind"] == "Fire")}


def device_figures(point: NetPoint, engine: Engine, latencies: Latencies) -> dict:
    """The cost model's cycles for the point's Fire layers on ``engine`` (what the engine
    runs; conv1, the pools and conv10 stay on the host) and the frames/s they allow at the
    board's clock, the link aside; ``device_error`` names a layer the engine cannot take."""
    if point.bits != engine.params.bits:
        return {"fire_cycles": None, "fps": None,
                "device_error": f"the engine is int{engine.params.bits}, the model "
                                f"int{point.bits}"}
    cycles = macs = 0
    for shape, bypass in fire_shapes(point.network()):
        macs += shape.macs
        try:
            cycles += fire_cost(engine.params, shape, bypass=bypass and engine.params.bypass,
                                latencies=latencies).cycles
        except PlanError as exc:
            return {"fire_cycles": None, "fps": None, "device_error": str(exc)}
    # utilization: the Fire layers' MACs over what the MAC array could do in those cycles
    return {"fire_cycles": cycles, "fps": engine.clock_hz / cycles, "device_error": None,
            "utilization": macs / (cycles * engine.params.lanes)}


# ----------------------------------------------------------------------------- the store
def key_hash(kind: str, key: dict) -> str:
    text = json.dumps({"kind": kind, **key}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


class Store:
    """Task results, one JSON file each (``DIR/<kind>/<hash>.json``, holding the key and the
    result), written whole by a rename so that an interrupted study leaves no half file."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def path(self, kind: str, key: dict) -> Path:
        return self.root / kind / f"{key_hash(kind, key)}.json"

    def get(self, kind: str, key: dict):
        path = self.path(kind, key)
        if not path.exists():
            return None
        return json.loads(path.read_text())["result"]

    def put(self, kind: str, key: dict, result) -> None:
        path = self.path(kind, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"kind": kind, "key": key, "result": result}, indent=1))
        tmp.replace(path)


@dataclass
class Task:
    """One slow step: ``fn(*args)`` on a worker, its result stored under ``kind`` and ``key``."""

    kind: str
    key: dict
    fn: Callable
    args: tuple
    label: str


def run_tasks(client, tasks: list[Task], store: Store, progress: Progress) -> dict:
    """Submit the tasks whose results are not stored yet, store each as it finishes (a
    progress bar over them), and return ``{"done", "skipped", "failed": [(label, error)]}``.
    A failed task is reported, not stored: a rerun tries it again."""
    from distributed import as_completed

    todo = [t for t in tasks if not store.path(t.kind, t.key).exists()]
    skipped = len(tasks) - len(todo)
    if skipped:
        progress.note(f"{skipped} of {len(tasks)} tasks already in {store.root}: skipped")
    failed = []
    if not todo:
        return {"done": 0, "skipped": skipped, "failed": failed}
    # the yosys estimates first (minutes each: not last), then the RTL runs, the reference,
    # and the trainings in the caller's order (a stable sort)
    order = {"resources": 0, "rtl": 1, "reference": 2, "train": 3}
    todo.sort(key=lambda t: order.get(t.kind, 9))
    futures = {}
    for i, t in enumerate(todo):
        # Dask runs higher priorities first: the tasks in the order given
        future = client.submit(t.fn, *t.args, key=f"{t.kind}-{key_hash(t.kind, t.key)}",
                               pure=False, priority=len(todo) - i)
        futures[future] = t
    with progress.bar(len(todo), "design-space tasks", "task") as bar:
        for future in as_completed(futures):
            t = futures.pop(future)
            try:
                result = future.result()
            except Exception as exc:  # a task's own error: report it, keep the others going
                failed.append((t.label, f"{type(exc).__name__}: {exc}"))
                bar.update(f"{t.label} FAILED")
                continue
            store.put(t.kind, t.key, result)
            bar.update(t.label)
    return {"done": len(todo) - len(failed), "skipped": skipped, "failed": failed}


# ------------------------------------------------------------------ the training task
@cache
def _dataset(name: str):
    from ..train import load_dataset

    return load_dataset(name)


def _subsets(data, budget: Budget):
    from ..train import stratified_subset

    train_idx, test_idx = data.train, data.test
    if budget.train_limit is not None:
        train_idx = stratified_subset(train_idx, data.labels, budget.train_limit)
    if budget.test_limit is not None:
        test_idx = stratified_subset(test_idx, data.labels, budget.test_limit)
    return train_idx, test_idx


def _measure(net: Network, weights, data, train_idx, test_idx, budget: Budget,
             bits: int) -> dict:
    """Float accuracy (torch) and integer accuracy (post-training quantization at ``bits``
    through the golden model) on the test images."""
    from ..quantize import quantize_network
    from ..train import calibration_indices, float_logits, int8_logits

    test_x, test_y = data.inputs(test_idx), data.labels[test_idx]
    f_pred = float_logits(net, weights, test_x).argmax(axis=1)
    calib = calibration_indices(data, train_idx, budget.calib)
    qnet = quantize_network(net, weights, list(data.inputs(calib)), QuantSpec(bits))
    q_pred = int8_logits(qnet, test_x).argmax(axis=1)
    return {"float_accuracy": float(np.mean(f_pred == test_y)),
            "int_accuracy": float(np.mean(q_pred == test_y)), "test_images": len(test_idx)}


def train_point(point: dict, dataset: str, seed: int, budget: dict) -> dict:
    """Train one network point at one seed (``sw.train.train``) and measure it: a task."""
    from ..train import train

    start = time.perf_counter()
    p, b = NetPoint(**point), Budget(**budget)
    net = p.network()
    data = _dataset(dataset)
    train_idx, test_idx = _subsets(data, b)
    result = train(net, data, train_idx, epochs=b.epochs, seed=seed, max_steps=b.max_steps)
    out = _measure(net, result.weights, data, train_idx, test_idx, b, p.bits)
    return {**out, "steps": result.steps, "final_loss": result.final_loss,
            "train_seconds": result.seconds, "seconds": time.perf_counter() - start,
            "worker_pid": os.getpid()}


def measure_shipped(dataset: str, budget: dict) -> dict:
    """The shipped model (``sw/data/mnist_fire_mnist5k.npz``, trained 40 epochs) measured as
    the study's points are: a task."""
    from ..train import SHIPPED_MODEL
    from ..weights import load

    b = Budget(**budget)
    net = SHIPPED_POINT.network()
    data = _dataset(dataset)
    train_idx, test_idx = _subsets(data, b)
    return _measure(net, load(SHIPPED_MODEL, net), data, train_idx, test_idx, b, 8)


# ---------------------------------------------------------------------------- the table
def summarize_seeds(results: list[dict]) -> dict:
    """Mean and spread (max - min, and the sample standard deviation) over seeds."""
    out = {"seeds_done": len(results)}
    for name in ("float_accuracy", "int_accuracy"):
        values = [r[name] for r in results]
        if values:
            out[name] = float(np.mean(values))
            out[f"{name}_spread"] = float(max(values) - min(values))
            out[f"{name}_std"] = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
        else:
            out[name] = out[f"{name}_spread"] = out[f"{name}_std"] = None
    out["train_seconds"] = float(sum(r["seconds"] for r in results))
    return out


COLUMNS = (AXIS_FIELDS + [
    "board", "ic_lanes", "oc_lanes", "lanes", "weight_depth", "squeeze_depth", "params",
    "model_bytes", "macs", "fire_macs", "fire_cycles", "fps", "utilization", "device_error",
    "seeds_done", "float_accuracy", "float_accuracy_spread", "float_accuracy_std",
    "int_accuracy", "int_accuracy_spread", "int_accuracy_std", "train_seconds", "LUT", "FF",
    "DSP", "BRAM36", "fits"])


def write_table(rows: list[dict], out: Path) -> tuple[Path, Path]:
    """``DIR/table.json`` (every field) and ``DIR/table.csv`` (:data:`COLUMNS`)."""
    out.mkdir(parents=True, exist_ok=True)
    json_path, csv_path = out / "table.json", out / "table.csv"
    json_path.write_text(json.dumps(rows, indent=1))
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return json_path, csv_path


def pareto(rows: list[dict]) -> list[dict]:
    """The rows no other row beats on integer accuracy, frames/s and model bytes at once
    (at least as good on all three, better on one); rows without all three are left out."""
    ok = [r for r in rows if r.get("fps") and r.get("int_accuracy") is not None]

    def beats(a, b):
        ge = (a["int_accuracy"] >= b["int_accuracy"] and a["fps"] >= b["fps"]
              and a["model_bytes"] <= b["model_bytes"])
        gt = (a["int_accuracy"] > b["int_accuracy"] or a["fps"] > b["fps"]
              or a["model_bytes"] < b["model_bytes"])
        return ge and gt

    return [r for r in ok if not any(beats(o, r) for o in ok if o is not r)]
