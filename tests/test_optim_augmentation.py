import math

import pytest
import torch

from leukemia.data.augmentation import BatchAugmentation
from leukemia.training.optim import build_optimizer, build_scheduler

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


def batch_augmentation(*overrides: str, seed: int = 0) -> BatchAugmentation:
    cfg = compose_config(*overrides).augmentation
    return BatchAugmentation(cfg, [0.0, 0.0, 0.0], [1 / 255] * 3, torch.device("cpu"), seed)  # output = pixel values


def cells(count: int = 64) -> torch.Tensor:
    """A bright square off centre on black: each rotation, flip and zoom moves it somewhere else."""
    images = torch.zeros(count, 3, 16, 16, dtype=torch.uint8)
    images[:, :, 2:7, 3:8] = 200
    return images


def test_lab_augmentation_rotates_and_flips_with_the_configured_ranges():
    augment = batch_augmentation("augmentation=lab")
    assert (augment.degrees, augment.hflip_p, augment.vflip_p, augment.scale_jitter) == (20, 0.5, 0.5, 0)
    images = cells()
    out = augment(images, train=True)
    assert not torch.equal(out, images.float())  # training batches move
    assert torch.equal(augment(images, train=False), images.float())  # validation batches do not


def test_no_augmentation_means_no_transform():
    augment = batch_augmentation("augmentation=none")
    assert torch.equal(augment(cells(), train=True), cells().float())


def test_zoom_and_colour_jitter_come_after_the_geometry_so_the_fill_stays_black():
    augment = batch_augmentation("augmentation.scale_jitter=0.1", "augmentation.brightness=0.2",
                                 "augmentation.saturation=0.3")  # fmt: skip
    assert (augment.scale_jitter, augment.brightness, augment.saturation, augment.contrast) == (0.1, 0.2, 0.3, 0)
    images = torch.zeros(32, 3, 16, 16, dtype=torch.uint8)
    images[:, :, 4:12, 4:12] = torch.tensor([120, 60, 150], dtype=torch.uint8).view(1, 3, 1, 1)
    out = augment(images, train=True)
    assert torch.equal(out[:, :, 0, 0], torch.zeros(32, 3))  # a corner: the black fill, black after jitter
    centre = out[:, :, 8, 8]
    assert centre.std(dim=0).min() > 1  # brightness and saturation vary per image


def test_warm_up_then_cosine():
    warm = lr_per_epoch("scheduler=cosine", "scheduler.warmup_epochs=2")
    assert warm[:3] == pytest.approx([0.1 / 3, 0.2 / 3, 0.1]) and warm[3] < 0.1 and warm[-1] > 0


def test_the_default_warm_up_takes_at_most_half_the_run():
    assert lr_per_epoch(epochs=10)[:5] == pytest.approx(
        [0.025, 0.05, 0.075, 0.1, 0.1 * (1 + math.cos(math.pi / 7)) / 2]
    )
    assert lr_per_epoch(epochs=3) == pytest.approx([0.05, 0.1, 0.05])
    assert lr_per_epoch(epochs=1) == [0.1]
