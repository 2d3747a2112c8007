"""Training-time augmentation built from the ``augmentation`` config group (training images only): per image
with PIL (``data.pipeline=pil``), or for ``data.pipeline=tensor`` on uint8 pixels: rotation, zoom and flips per
batch on a GPU, or per image in the loader's workers on a CPU, then colour jitter, float conversion and
normalisation per batch on the training device."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision import transforms

GREY_WEIGHTS = (0.2989, 0.587, 0.114)  # luma weights as torchvision's rgb_to_grayscale uses them


def has_colour_jitter(aug_cfg: Any) -> bool:
    return aug_cfg.brightness > 0 or aug_cfg.contrast > 0 or aug_cfg.saturation > 0


def build_augmentation(aug_cfg: Any) -> transforms.Compose | None:
    """The configured transforms, or None when the group asks for none."""
    steps: list = []
    if aug_cfg.scale_jitter > 0:  # rotation and zoom as one affine transform (nearest, black fill)
        zoom = (1 - aug_cfg.scale_jitter, 1 + aug_cfg.scale_jitter)
        steps.append(transforms.RandomAffine(aug_cfg.rotation_degrees, scale=zoom))
    elif aug_cfg.rotation_degrees > 0:
        steps.append(transforms.RandomRotation(aug_cfg.rotation_degrees))
    if aug_cfg.hflip_p > 0:
        steps.append(transforms.RandomHorizontalFlip(aug_cfg.hflip_p))
    if aug_cfg.vflip_p > 0:
        steps.append(transforms.RandomVerticalFlip(aug_cfg.vflip_p))
    geometric = transforms.RandomOrder(steps) if aug_cfg.random_order else transforms.Compose(steps)
    if not has_colour_jitter(aug_cfg):
        return geometric if steps else None
    colour = transforms.ColorJitter(aug_cfg.brightness, aug_cfg.contrast, aug_cfg.saturation)
    return transforms.Compose([geometric, colour] if steps else [colour])


def rotation_and_flips(degrees: float, hflip: bool, vflip: bool, size: int, scale: float = 1.0) -> tuple[float, ...]:
    """PIL's affine matrix (output pixel -> source pixel) of ``Image.rotate(degrees)`` with a zoom by ``scale``
    about the centre, followed by the flips."""
    angle = -math.radians(degrees)
    cos, sin = round(math.cos(angle), 15), round(math.sin(angle), 15)  # as Image.rotate rounds them
    cos, sin = cos / scale, sin / scale
    center = size / 2
    a, b, c = cos, sin, center - cos * center - sin * center
    d, e, f = -sin, cos, center + sin * center - cos * center
    if hflip:  # x -> size - x
        a, c, d, f = -a, c + a * size, -d, f + d * size
    if vflip:  # y -> size - y
        b, c, e, f = -b, c + b * size, -e, f + e * size
    return a, b, c, d, e, f


class PixelAugmentation:
    """The tensor pipeline's rotation and flips on a CPU, per image on cached uint8 pixels in the loader's
    workers: PIL's integer affine transform of each channel is several times faster there than a batched float
    ``grid_sample``. The pixels equal PIL's ``rotate`` (nearest, black fill) followed by the flips, as
    torchvision's RandomRotation does. Each batch's draws come from the seed the batch arrives with."""

    def __init__(self, aug_cfg: Any):
        self.degrees = aug_cfg.rotation_degrees
        self.hflip_p, self.vflip_p = aug_cfg.hflip_p, aug_cfg.vflip_p
        self.scale_jitter = aug_cfg.scale_jitter

    def __call__(self, pixels: np.ndarray, seed: int) -> np.ndarray:
        """``pixels`` (N, 3, size, size) uint8, each image rotated, zoomed and flipped at random."""
        rng = np.random.default_rng(seed)
        count, size = len(pixels), pixels.shape[-1]
        angles = rng.uniform(-self.degrees, self.degrees, count)
        hflips, vflips = rng.random(count) < self.hflip_p, rng.random(count) < self.vflip_p
        scales = rng.uniform(1 - self.scale_jitter, 1 + self.scale_jitter, count) if self.scale_jitter else [1] * count
        out = np.empty_like(pixels)
        for image, target, angle, hflip, vflip, scale in zip(pixels, out, angles, hflips, vflips, scales, strict=True):
            matrix = rotation_and_flips(angle, hflip, vflip, size, scale)
            for channel, plane in enumerate(image):
                moved = Image.fromarray(plane).transform((size, size), Image.Transform.AFFINE, matrix,
                                                         Image.Resampling.NEAREST)  # fmt: skip
                target[channel] = np.asarray(moved)
        return out


class BatchAugmentation:
    """The tensor pipeline's last step, on whole uint8 batches on the training device: per-sample random
    rotation (nearest pixel, black fill, as torchvision's RandomRotation) and flips for training unless the
    loader did them (``geometric=False``), then float conversion and per-channel normalisation. Its random draws
    come from its own seeded generator.

    Rotations and flips are applied in one fixed order; as the angles are symmetric around 0 (a flip turns a
    rotation by a into one by -a), that gives the same distribution as the PIL path's random order.
    """

    def __init__(
        self, aug_cfg: Any, mean: list[float], std: list[float], device: torch.device, seed: int, geometric: bool = True
    ):
        self.degrees = aug_cfg.rotation_degrees if geometric else 0
        self.scale_jitter = aug_cfg.scale_jitter if geometric else 0
        self.hflip_p, self.vflip_p = (aug_cfg.hflip_p, aug_cfg.vflip_p) if geometric else (0, 0)
        self.brightness, self.contrast, self.saturation = aug_cfg.brightness, aug_cfg.contrast, aug_cfg.saturation
        self.grey = torch.tensor(GREY_WEIGHTS, device=device).view(1, 3, 1, 1)
        # (x / 255 - mean) / std as one subtraction and one multiplication on the 0..255 values
        self.offset = torch.tensor(mean, device=device).view(1, 3, 1, 1) * 255
        self.scale = 1 / (torch.tensor(std, device=device).view(1, 3, 1, 1) * 255)
        self.generator = torch.Generator(device=device).manual_seed(seed)

    def _uniform(self, count: int) -> torch.Tensor:
        return torch.rand(count, generator=self.generator, device=self.offset.device)

    def _factors(self, count: int, spread: float) -> torch.Tensor:
        """Per-image factors from [1 - spread, 1 + spread], shaped to scale a batch."""
        return (1 - spread + 2 * spread * self._uniform(count)).view(-1, 1, 1, 1)

    def rotate(self, images: torch.Tensor) -> torch.Tensor:
        angles = (self._uniform(len(images)) * 2 - 1) * math.radians(self.degrees)
        cos, sin, zero = angles.cos(), angles.sin(), torch.zeros_like(angles)
        if self.scale_jitter:  # sampling the source at 1/s zooms by s
            zoom = self._factors(len(images), self.scale_jitter).view(-1)
            cos, sin = cos / zoom, sin / zoom
        theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
        grid = F.affine_grid(theta, list(images.shape), align_corners=False)
        return F.grid_sample(images, grid, mode="nearest", padding_mode="zeros", align_corners=False)

    def flip(self, images: torch.Tensor, probability: float, dim: int) -> torch.Tensor:
        chosen = (self._uniform(len(images)) < probability).view(-1, 1, 1, 1)
        return torch.where(chosen, images.flip(dim), images)

    def jitter_colour(self, images: torch.Tensor) -> torch.Tensor:
        """Brightness, contrast and saturation per image on 0..255 floats, each clamped, as torchvision's
        ``adjust_*`` functions compute them."""
        count = len(images)
        if self.brightness > 0:
            images = (images * self._factors(count, self.brightness)).clamp_(0, 255)
        if self.contrast > 0:
            mean = (images * self.grey).sum(1, keepdim=True).mean((2, 3), keepdim=True)
            images = ((images - mean) * self._factors(count, self.contrast) + mean).clamp_(0, 255)
        if self.saturation > 0:
            grey = (images * self.grey).sum(1, keepdim=True)
            images = ((images - grey) * self._factors(count, self.saturation) + grey).clamp_(0, 255)
        return images

    def __call__(self, images: torch.Tensor, train: bool) -> torch.Tensor:
        images = images.float()
        if train:
            if self.degrees > 0 or self.scale_jitter > 0:
                images = self.rotate(images)
            if self.hflip_p > 0:
                images = self.flip(images, self.hflip_p, -1)
            if self.vflip_p > 0:
                images = self.flip(images, self.vflip_p, -2)
            images = self.jitter_colour(images)
        return images.sub_(self.offset).mul_(self.scale)
