"""Independent references for the tests: torchvision's per-image transforms, as the course seed used them.

Production augments whole uint8 batches on the device (``leukemia.data.augmentation``); these per-image PIL
transforms are what its pixels and distributions are checked against.
"""

from __future__ import annotations

from collections.abc import Sequence

from torchvision import transforms

from leukemia.data.decoding import pad_to_square


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
