"""One image file (or its bytes) to the uint8 pixels a model sees, and those pixels to its normalised input: what
training, evaluation, prediction and a served model share. Plain PIL and torch, nothing of the project's config,
so a logged model loads it without the training stack."""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def pad_to_square(image: Image.Image) -> Image.Image:
    """The image centred on a black square (the cells' background) as wide as its longer side."""
    if image.width == image.height:
        return image
    side = max(image.size)
    square = Image.new(image.mode, (side, side))
    square.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
    return square


def center_crop(image: Image.Image, size: int) -> Image.Image:
    """The central ``size`` x ``size`` pixels, taken as torchvision's CenterCrop takes them: a side shorter than
    ``size`` is first padded with black on both sides (the extra pixel, if any, after)."""
    width, height = image.size
    if width < size or height < size:
        canvas = Image.new(image.mode, (max(width, size), max(height, size)))
        canvas.paste(image, ((canvas.width - width) // 2, (canvas.height - height) // 2))
        image, (width, height) = canvas, canvas.size
    left, top = int(round((width - size) / 2)), int(round((height - size) / 2))
    return image.crop((left, top, left + size, top + size))


def decode_pixels(image: Image.Image, crop_size: int | None, image_size: int) -> torch.Tensor:
    """``image`` center-cropped to ``crop_size`` (or, without one, padded to a black square), resized
    (bilinear) to ``image_size``, as a uint8 (3, size, size) tensor."""
    framed = center_crop(image, crop_size) if crop_size is not None else pad_to_square(image)
    resized = framed.resize((image_size, image_size), Image.Resampling.BILINEAR)
    return torch.from_numpy(np.array(resized, dtype=np.uint8)).permute(2, 0, 1).contiguous()


def decoding(crop_size: int | None, image_size: int) -> Callable[[Image.Image], torch.Tensor]:
    """Center crop in source pixels (or, without a crop size, a black square pad) and resize to uint8
    (3, size, size) tensors: all that happens per image, and what the decode cache stores.

    Images of any size work: one smaller than ``crop_size`` (or not square) is padded with black, the C-NMC
    background, to the crop, and the crop is resized to ``image_size``."""
    return partial(decode_pixels, crop_size=crop_size, image_size=image_size)


SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I")


def to_rgb(image: Image.Image) -> Image.Image:
    """Any image mode as 8-bit RGB. Transparent pixels become black (the C-NMC background) rather than
    whatever colour they hide; 16-bit grey is scaled to 8 bits rather than clipped to white."""
    if image.mode in SIXTEEN_BIT_MODES:
        grey = np.clip(np.asarray(image, dtype=np.float64) / 257.0, 0, 255).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        black = Image.new("RGBA", image.size, (0, 0, 0, 255))
        return Image.alpha_composite(black, image.convert("RGBA")).convert("RGB")
    return image.convert("RGB")


# What PIL raises for broken, unknown or absurdly large files (a header claiming billions of pixels)
UNREADABLE = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def read_image(source: Path | str | bytes) -> Image.Image:
    """A file (or a file's bytes) decoded now as 8-bit RGB: a truncated file fails here, not half-black later.
    Raises one of ``UNREADABLE`` for what is not a decodable image."""
    with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
        image.load()
        return to_rgb(image)


def png(pixels: torch.Tensor) -> bytes:
    """uint8 (3, H, W) pixels as a PNG file's bytes."""
    buffer = io.BytesIO()
    Image.fromarray(pixels.permute(1, 2, 0).numpy()).save(buffer, format="PNG")
    return buffer.getvalue()


class Normalisation:
    """uint8 (N, 3, H, W) pixels to the float input the model was trained on: ``(x / 255 - mean) / std`` per
    channel, computed as one subtraction and one multiplication on the 0..255 values."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], device: torch.device):
        self.offset = torch.tensor(mean, device=device).view(1, 3, 1, 1) * 255
        self.scale = 1 / (torch.tensor(std, device=device).view(1, 3, 1, 1) * 255)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised in place when ``images`` is already a float tensor."""
        return images.float().sub_(self.offset).mul_(self.scale)
