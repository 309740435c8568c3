"""Float weights: deterministic random initialization, ``.npz`` files, torchvision ``.pth``.

Names and shapes are torchvision's (``features.3.squeeze.weight``, OIHW), so a state_dict
of ``torchvision.models.squeezenet1_1`` loads unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .network import Network


class WeightsError(ValueError):
    """Weights that do not fit the architecture, or a file that is not a weights file."""


@dataclass(frozen=True)
class Weights:
    """Float32 arrays by torchvision name, and where they came from (printed with results)."""

    arrays: dict[str, np.ndarray]
    source: str

    @property
    def is_random(self) -> bool:
        return self.source.startswith("random init")

    def __getitem__(self, name: str) -> np.ndarray:
        return self.arrays[name]


def random_init(net: Network, seed: int = 0) -> Weights:
    """Deterministic random weights, not trained: results on them mean nothing about images.

    Kaiming-uniform convolution weights and PyTorch's default uniform biases; the final
    convolution (conv10) is normal(0, 0.01) as in torchvision.
    """
    rng = np.random.default_rng(seed)
    arrays = {}
    for name, shape in net.param_shapes.items():
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else None
        if name.endswith(".weight"):
            if name.startswith("classifier."):
                arrays[name] = rng.normal(0.0, 0.01, shape)
            else:
                bound = np.sqrt(6.0 / fan_in)
                arrays[name] = rng.uniform(-bound, bound, shape)
        else:
            w_shape = net.param_shapes[name[: -len("bias")] + "weight"]
            bound = 1.0 / np.sqrt(np.prod(w_shape[1:]))
            arrays[name] = rng.uniform(-bound, bound, shape)
    return Weights({k: v.astype(np.float32) for k, v in arrays.items()},
                   f"random init (seed {seed}), not trained")


def check_fits(net: Network, arrays: dict[str, np.ndarray], source: str) -> None:
    """Raise :class:`WeightsError` naming the first missing, extra or mis-shaped tensor."""
    expected = net.param_shapes
    missing = [k for k in expected if k not in arrays]
    extra = [k for k in arrays if k not in expected]
    for name, shape in expected.items():
        got = tuple(arrays[name].shape) if name in arrays else tuple(shape)
        if got != tuple(shape):
            raise WeightsError(f"{source} does not fit {net.name}: {name} has shape {got}, "
                               f"expected {tuple(shape)}")
    if missing:
        raise WeightsError(f"{source} does not fit {net.name}: missing {missing[0]}"
                           + (f" and {len(missing) - 1} more" if len(missing) > 1 else ""))
    if extra:
        raise WeightsError(f"{source} does not fit {net.name}: unexpected tensor {extra[0]}"
                           + (f" and {len(extra) - 1} more" if len(extra) > 1 else ""))


def save_npz(path: str | Path, weights: Weights) -> None:
    np.savez(path, **weights.arrays)


def load(path: str | Path, net: Network) -> Weights:
    """Load ``.npz`` (torchvision names) or ``.pth`` (a torchvision state_dict; needs torch)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist")
    if path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files}
        except Exception as exc:  # np.load raises several types for a non-npz file
            raise WeightsError(f"{path} is not a readable .npz file: {exc}") from None
    elif path.suffix in (".pth", ".pt"):
        arrays = _load_torch(path)
    else:
        raise WeightsError(f"{path}: weights must be .npz, or .pth with torch installed")
    try:
        arrays = {k: np.asarray(v, dtype=np.float32) for k, v in arrays.items()}
    except (TypeError, ValueError) as exc:
        raise WeightsError(f"{path}: a tensor is not numeric: {exc}") from None
    check_fits(net, arrays, str(path))
    check_finite(arrays, str(path))
    return Weights(arrays, str(path))


def check_finite(arrays: dict[str, np.ndarray], source: str) -> None:
    """Raise :class:`WeightsError` naming the first tensor holding NaN or infinity (which
    quantization would otherwise meet as "cannot convert float NaN to integer")."""
    for name, array in arrays.items():
        nan = int(np.isnan(array).sum())
        inf = int(np.isinf(array).sum())
        if nan or inf:
            what = " and ".join(f"{n} {kind}" for n, kind in ((nan, "NaN"), (inf, "infinite"))
                                if n)
            raise WeightsError(f"{source}: tensor {name} holds {what} value"
                               f"{'s' if nan + inf > 1 else ''} of {array.size}; weights "
                               "must be finite")


def _load_torch(path: Path) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError:
        raise WeightsError(f"{path}: loading .pth needs torch (pip install torch), "
                           "or convert it to .npz") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsError(f"{path} is not a readable torch file: {exc}") from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise WeightsError(f"{path} holds a {type(state).__name__}, not a state_dict")
    return {k: v.detach().cpu().numpy() for k, v in state.items()}
