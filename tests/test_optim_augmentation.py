import math

import pytest
import torch
from torchvision import transforms

from leukemia.augmentation import build_augmentation
from leukemia.optim import build_optimizer, build_scheduler

from conftest import compose_config


def parameters():
    return torch.nn.Linear(3, 2).parameters()


@pytest.mark.parametrize(
    "option,torch_class,expected",
    [
        ("sgd", torch.optim.SGD, {"lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4, "nesterov": True}),
        ("adam", torch.optim.Adam, {"lr": 1e-3, "betas": (0.9, 0.999), "weight_decay": 0.0}),
        ("adamw", torch.optim.AdamW, {"lr": 1e-3, "betas": (0.9, 0.999), "weight_decay": 0.01}),
    ],
)
def test_each_optim_option_builds_its_torch_optimizer(option, torch_class, expected):
    optimizer = build_optimizer(compose_config(f"optim={option}").optim, parameters())
    assert type(optimizer) is torch_class
    group = optimizer.param_groups[0]
    assert {key: group[key] for key in expected} == expected


def test_learning_rate_override_reaches_the_optimizer():
    optimizer = build_optimizer(compose_config("optim=adamw", "optim.lr=0.02").optim, parameters())
    assert optimizer.param_groups[0]["lr"] == 0.02


def lr_per_epoch(*overrides, epochs=4):
    cfg = compose_config("optim.lr=0.1", *overrides)
    optimizer = build_optimizer(cfg.optim, parameters())
    scheduler = build_scheduler(cfg.scheduler, optimizer, epochs)
    rates = []
    for _ in range(epochs):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
    return rates


def test_schedulers_shape_the_learning_rate_per_epoch():
    assert lr_per_epoch("scheduler=none") == [0.1] * 4
    assert lr_per_epoch("scheduler=step", "scheduler.step_size=2", "scheduler.gamma=0.5") == pytest.approx(
        [0.1, 0.1, 0.05, 0.05]
    )
    cosine = lr_per_epoch("scheduler=cosine", "scheduler.warmup_epochs=0")
    assert cosine[0] == 0.1 and all(a > b for a, b in zip(cosine, cosine[1:], strict=False)) and cosine[-1] > 0


def test_lab_augmentation_is_a_random_order_of_rotation_and_flips():
    augmentation = build_augmentation(compose_config("augmentation=lab").augmentation)
    assert isinstance(augmentation, transforms.RandomOrder)
    kinds = {type(step): step for step in augmentation.transforms}
    assert kinds.keys() == {transforms.RandomRotation, transforms.RandomHorizontalFlip, transforms.RandomVerticalFlip}
    assert kinds[transforms.RandomRotation].degrees == [-20.0, 20.0]
    assert kinds[transforms.RandomHorizontalFlip].p == 0.5 and kinds[transforms.RandomVerticalFlip].p == 0.5


def test_no_augmentation_means_no_transform():
    assert build_augmentation(compose_config("augmentation=none").augmentation) is None


def test_fixed_order_when_random_order_is_off():
    cfg = compose_config("augmentation.random_order=false", "augmentation.vflip_p=0")
    augmentation = build_augmentation(cfg.augmentation)
    assert isinstance(augmentation, transforms.Compose)
    assert [type(step) for step in augmentation.transforms] == [
        transforms.RandomRotation,
        transforms.RandomHorizontalFlip,
    ]


def test_zoom_and_colour_jitter_on_the_pil_path_are_an_affine_then_a_colour_jitter():
    cfg = compose_config("augmentation.scale_jitter=0.1", "augmentation.brightness=0.2", "augmentation.saturation=0.3")
    augmentation = build_augmentation(cfg.augmentation)
    geometric, colour = augmentation.transforms  # colour after the geometry, so the black fill stays black
    affine = next(step for step in geometric.transforms if isinstance(step, transforms.RandomAffine))
    assert affine.degrees == [-20.0, 20.0] and affine.scale == (0.9, 1.1)
    assert isinstance(colour, transforms.ColorJitter)
    assert colour.brightness == (0.8, 1.2) and colour.saturation == (0.7, 1.3) and colour.contrast is None
    only_colour = build_augmentation(compose_config("augmentation=none", "augmentation.contrast=0.1").augmentation)
    assert [type(step) for step in only_colour.transforms] == [transforms.ColorJitter]


def test_warm_up_then_cosine():
    warm = lr_per_epoch("scheduler=cosine", "scheduler.warmup_epochs=2")
    assert warm[:3] == pytest.approx([0.1 / 3, 0.2 / 3, 0.1]) and warm[3] < 0.1 and warm[-1] > 0


def test_the_default_warm_up_takes_at_most_half_the_run():
    assert lr_per_epoch(epochs=10)[:5] == pytest.approx(
        [0.025, 0.05, 0.075, 0.1, 0.1 * (1 + math.cos(math.pi / 7)) / 2]
    )
    assert lr_per_epoch(epochs=3) == pytest.approx([0.05, 0.1, 0.05])
    assert lr_per_epoch(epochs=1) == [0.1]
