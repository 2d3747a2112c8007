"""Training-time augmentation built from the ``augmentation`` config group (training images only)."""

from __future__ import annotations

from typing import Any

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
