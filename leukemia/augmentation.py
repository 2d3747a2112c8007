"""Training-time augmentation built from the ``augmentation`` config group (training images only): per image
with PIL (``data.pipeline=pil``), or for ``data.pipeline=tensor`` on uint8 pixels: rotation and flips per batch on
a GPU, or per image in the loader's workers on a CPU, then float conversion and normalisation per batch."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision import transforms


def build_augmentation(aug_cfg: Any) -> transforms.Compose | None:
    """The configured transforms, or None when the group asks for none."""
    steps: list = []
    if aug_cfg.rotation_degrees > 0:
        steps.append(transforms.RandomRotation(aug_cfg.rotation_degrees))
    if aug_cfg.hflip_p > 0:
        steps.append(transforms.RandomHorizontalFlip(aug_cfg.hflip_p))
    if aug_cfg.vflip_p > 0:
        steps.append(transforms.RandomVerticalFlip(aug_cfg.vflip_p))
    if not steps:
        return None
    return transforms.RandomOrder(steps) if aug_cfg.random_order else transforms.Compose(steps)


def rotation_and_flips(degrees: float, hflip: bool, vflip: bool, size: int) -> tuple[float, ...]:
    """PIL's affine matrix (output pixel -> source pixel) of ``Image.rotate(degrees)`` followed by the flips."""
    angle = -math.radians(degrees)
    cos, sin = round(math.cos(angle), 15), round(math.sin(angle), 15)  # as Image.rotate rounds them
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

    def __call__(self, pixels: np.ndarray, seed: int) -> np.ndarray:
        """``pixels`` (N, 3, size, size) uint8, each image rotated and flipped at random."""
        rng = np.random.default_rng(seed)
        count, size = len(pixels), pixels.shape[-1]
        angles = rng.uniform(-self.degrees, self.degrees, count)
        hflips, vflips = rng.random(count) < self.hflip_p, rng.random(count) < self.vflip_p
        out = np.empty_like(pixels)
        for image, target, angle, hflip, vflip in zip(pixels, out, angles, hflips, vflips, strict=True):
            matrix = rotation_and_flips(angle, hflip, vflip, size)
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
        self.hflip_p, self.vflip_p = (aug_cfg.hflip_p, aug_cfg.vflip_p) if geometric else (0, 0)
        # (x / 255 - mean) / std as one subtraction and one multiplication on the 0..255 values
        self.offset = torch.tensor(mean, device=device).view(1, 3, 1, 1) * 255
        self.scale = 1 / (torch.tensor(std, device=device).view(1, 3, 1, 1) * 255)
        self.generator = torch.Generator(device=device).manual_seed(seed)

    def _uniform(self, count: int) -> torch.Tensor:
        return torch.rand(count, generator=self.generator, device=self.offset.device)

    def rotate(self, images: torch.Tensor) -> torch.Tensor:
        angles = (self._uniform(len(images)) * 2 - 1) * math.radians(self.degrees)
        cos, sin, zero = angles.cos(), angles.sin(), torch.zeros_like(angles)
        theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
        grid = F.affine_grid(theta, list(images.shape), align_corners=False)
        return F.grid_sample(images, grid, mode="nearest", padding_mode="zeros", align_corners=False)

    def flip(self, images: torch.Tensor, probability: float, dim: int) -> torch.Tensor:
        chosen = (self._uniform(len(images)) < probability).view(-1, 1, 1, 1)
        return torch.where(chosen, images.flip(dim), images)

    def __call__(self, images: torch.Tensor, train: bool) -> torch.Tensor:
        images = images.float()
        if train:
            if self.degrees > 0:
                images = self.rotate(images)
            if self.hflip_p > 0:
                images = self.flip(images, self.hflip_p, -1)
            if self.vflip_p > 0:
                images = self.flip(images, self.vflip_p, -2)
        return images.sub_(self.offset).mul_(self.scale)
