"""Independent references for the tests: torchvision's per-image transforms, as the course seed used them.

Production augments whole uint8 batches on the device (``leukemia.data.augmentation``); these per-image PIL
transforms are what its pixels and distributions are checked against.
"""

from __future__ import annotations

from collections.abc import Sequence

from torchvision import transforms

from leukemia.data.decoding import pad_to_square


def torchvision_augmentation(aug_cfg) -> transforms.Compose | None:
    """The ``augmentation`` group as torchvision transforms per PIL image, or None when it asks for none."""
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
    if not (aug_cfg.brightness > 0 or aug_cfg.contrast > 0 or aug_cfg.saturation > 0):
        return geometric if steps else None
    colour = transforms.ColorJitter(aug_cfg.brightness, aug_cfg.contrast, aug_cfg.saturation)
    return transforms.Compose([geometric, colour] if steps else [colour])


def preprocessing(
    crop_size: int | None,
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    augmentation: transforms.Compose | None = None,
) -> transforms.Compose:
    """Per PIL image: center crop (or square pad), resize, (augment,) to a float tensor, normalise per channel."""
    first = transforms.CenterCrop(crop_size) if crop_size is not None else transforms.Lambda(pad_to_square)
    steps = [first, transforms.Resize(image_size, antialias=True)]
    if augmentation is not None:
        steps.append(augmentation)
    steps += [transforms.ToTensor(), transforms.Normalize(list(mean), list(std))]
    return transforms.Compose(steps)
