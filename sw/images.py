"""Input images: torchvision-style preprocessing through Pillow, and reproducible test inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


class ImageError(ValueError):
    """An input image that cannot be read."""


def load_image(path: str | Path, size: int = 224) -> np.ndarray:
    """Resize the short side to ``size * 256/224``, center-crop ``size``, normalize; HWC."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
            short = round(size * 256 / 224)
            w, h = img.size
            scale = short / min(w, h)
            img = img.resize((max(size, round(w * scale)), max(size, round(h * scale))),
                             Image.Resampling.BILINEAR)
            w, h = img.size
            left, top = (w - size) // 2, (h - size) // 2
            img = img.crop((left, top, left + size, top + size))
            pixels = np.asarray(img, dtype=np.float32) / 255.0
    except FileNotFoundError:
        raise ImageError(f"image {path} does not exist") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise ImageError(f"{path} is not a readable PNG or JPEG image: {exc}") from None
    return (pixels - IMAGENET_MEAN) / IMAGENET_STD


def random_images(count: int, size: int = 224, seed: int = 0) -> list[np.ndarray]:
    """Uniform random RGB images, normalized like ImageNet inputs (HWC float32)."""
    rng = np.random.default_rng(seed)
    return [((rng.uniform(0, 1, (size, size, 3)).astype(np.float32) - IMAGENET_MEAN)
             / IMAGENET_STD) for _ in range(count)]
