"""Input images: torchvision-style preprocessing through Pillow, and reproducible test inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


#: The most an image may be enlarged on its way to the network (see :func:`load_image`).
MAX_UPSCALE = 4


class ImageError(ValueError):
    """An input image that cannot be read, or that is too small to be one."""


def _to_8bit(img, path):
    """A 16- or 32-bit integer image (Pillow modes ``I;16*`` and ``I``) as 8-bit ``L``.

    Pillow's own conversion to ``L`` or ``RGB`` clips these at 255, so a 16-bit image would
    come out all white: the values are scaled instead, 65535 to 255. A 16-bit PNG or PGM
    opens as ``I;16`` or ``I`` with values up to 65535; anything larger is refused.
    """
    from PIL import Image

    values = np.asarray(img, dtype=np.int64)
    if values.size and (values.min() < 0 or values.max() > 65535):
        raise ImageError(f"{path}: an integer image (Pillow mode {img.mode}) with values "
                         "outside 0..65535 is not supported; save it as an 8- or 16-bit PNG")
    return Image.fromarray(np.rint(values / 257.0).astype(np.uint8), mode="L")


def load_image(path: str | Path, size: int = 224) -> np.ndarray:
    """Resize the short side to ``size * 256/224``, center-crop ``size``, normalize; HWC.

    This is torchvision's ImageNet preprocessing; an image already ``size`` x ``size`` is
    only normalized (no 1.14x zoom of a dataset's own 32x32 pictures). 16-bit images are
    scaled to 8 bits first.
    An image is enlarged by at most :data:`MAX_UPSCALE` (4x): a shorter side below a quarter
    of the resize target (64 pixels for a 224 input) is refused with :class:`ImageError`
    rather than blown up from a few pixels into a picture of nothing.
    """
    from PIL import Image, UnidentifiedImageError

    short = round(size * 256 / 224)
    need = -(-short // MAX_UPSCALE)
    try:
        with Image.open(path) as img:
            w, h = img.size
            if min(w, h) < need:
                raise ImageError(
                    f"{path} is {w}x{h}: too small for a {size}x{size} input (its shorter "
                    f"side is resized to {short}, enlarging at most {MAX_UPSCALE}x, so it "
                    f"must be at least {need} pixels)")
            if img.mode == "F":
                raise ImageError(f"{path}: floating-point images (Pillow mode F) are not "
                                 "supported; save it as an 8- or 16-bit PNG")
            if img.mode == "I" or img.mode.startswith("I;16"):
                img = _to_8bit(img, path)
            img = img.convert("RGB")
            if (w, h) != (size, size):  # an image already at the input size is taken as is
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
