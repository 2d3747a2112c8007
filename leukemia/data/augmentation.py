"""Training-time augmentation built from the ``augmentation`` config group, in one place: on whole uint8 batches
on the training device (a GPU, or the CPU), rotation, zoom and flips, colour jitter, then float conversion and
normalisation. torchvision's per-image transforms are its reference in the tests, pixel for pixel."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from leukemia.data.decoding import Normalisation
from leukemia.data.schema import AugmentationConfig

GREY_WEIGHTS = (0.2989, 0.587, 0.114)  # luma weights as torchvision's rgb_to_grayscale uses them


class BatchAugmentation:
    """Every batch's last step, on whole uint8 batches on the training device: for training, per-sample random
    rotation and zoom (nearest pixel, black fill, as torchvision's RandomRotation and RandomAffine), flips and
    colour jitter; then float conversion and per-channel normalisation. Its random draws come from its own
    seeded generator.

    Rotations and flips are applied in one fixed order; as the angles are symmetric around 0 (a flip turns a
    rotation by a into one by -a), that gives the same distribution as the lab recipe's torchvision RandomOrder.
    """

    def __init__(self, aug_cfg: AugmentationConfig, mean: list[float], std: list[float], device: torch.device,
                 seed: int):  # fmt: skip
        self.degrees, self.scale_jitter = aug_cfg.rotation_degrees, aug_cfg.scale_jitter
        self.hflip_p, self.vflip_p = aug_cfg.hflip_p, aug_cfg.vflip_p
        self.brightness, self.contrast, self.saturation = aug_cfg.brightness, aug_cfg.contrast, aug_cfg.saturation
        self.grey = torch.tensor(GREY_WEIGHTS, device=device).view(1, 3, 1, 1)
        self.normalise = Normalisation(mean, std, device)
        self.generator = torch.Generator(device=device).manual_seed(seed)

    def _uniform(self, count: int) -> torch.Tensor:
        return torch.rand(count, generator=self.generator, device=self.grey.device)

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
        return self.normalise(images)
