"""Training-time augmentation built from the ``augmentation`` config group (training images only): per image
with PIL (``data.pipeline=pil``) or per batch on the training device (``data.pipeline=tensor``)."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
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


class BatchAugmentation:
    """The tensor pipeline's second half, on whole uint8 batches on the training device: per-sample random
    rotation (nearest pixel, black fill, as torchvision's RandomRotation) and flips for training, then float
    conversion and per-channel normalisation. Its random draws come from its own seeded generator.

    Rotations and flips are applied in one fixed order; as the angles are symmetric around 0 (a flip turns a
    rotation by a into one by -a), that gives the same distribution as the PIL path's random order.
    """

    def __init__(self, aug_cfg: Any, mean: list[float], std: list[float], device: torch.device, seed: int):
        self.degrees = aug_cfg.rotation_degrees
        self.hflip_p, self.vflip_p = aug_cfg.hflip_p, aug_cfg.vflip_p
        self.mean = torch.tensor(mean, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, device=device).view(1, 3, 1, 1)
        self.generator = torch.Generator(device=device).manual_seed(seed)

    def _uniform(self, count: int) -> torch.Tensor:
        return torch.rand(count, generator=self.generator, device=self.mean.device)

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
        images = images.float().div_(255)
        if train:
            if self.degrees > 0:
                images = self.rotate(images)
            if self.hflip_p > 0:
                images = self.flip(images, self.hflip_p, -1)
            if self.vflip_p > 0:
                images = self.flip(images, self.vflip_p, -2)
        return images.sub_(self.mean).div_(self.std)
