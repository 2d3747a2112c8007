"""One pass over a loader: prediction with and without test-time flips on a real loader over image files, and
the timing of a training epoch against a loader and a model of known pace."""

import time

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torchvision_reference import preprocessing

from leukemia.data.layouts.lab import read_lab_csv
from leukemia.data.loading import Batch, make_loader
from leukemia.training.engine import predict, run_epoch

from conftest import write_lab_layout


class LeftHeavy(nn.Module):
    """Orientation-sensitive on purpose: the logit of class 1 is the left half's mean minus the right half's
    plus the top half's mean, so flips change its output."""

    def forward(self, images):
        width, height = images.shape[-1] // 2, images.shape[-2] // 2
        left, right = images[..., :width].mean(dim=(1, 2, 3)), images[..., width:].mean(dim=(1, 2, 3))
        top = images[..., :height, :].mean(dim=(1, 2, 3))
        return torch.stack([torch.zeros_like(left), 4 * (left - right) + top], dim=1)


def test_flip_tta_averages_the_softmax_of_the_four_flips(tmp_path):
    root = write_lab_layout(tmp_path, {"test": 6})
    manifest = read_lab_csv(root / "resnet_18_test.csv", "test", labelled=False)
    transform = preprocessing(36, 32, [0.5] * 3, [0.5] * 3)
    loader = make_loader(manifest, transform, batch_size=4, num_workers=0, shuffle=False, seed=0)
    model = LeftHeavy()
    plain = predict(model, loader, torch.device("cpu"), flips=False, progress=False)
    flipped = predict(model, loader, torch.device("cpu"), flips=True, progress=False)
    images = torch.stack([transform(Image.open(path).convert("RGB")) for path in manifest.paths])
    views = [images, images.flip(-1), images.flip(-2), images.flip(-2, -1)]
    expected = torch.stack([model(view).softmax(dim=1) for view in views]).mean(dim=0)
    assert np.allclose(flipped.probabilities, expected.numpy(), atol=1e-6)
    assert np.allclose(plain.probabilities, model(images).softmax(dim=1).numpy(), atol=1e-6)
    assert not np.allclose(plain.probabilities, flipped.probabilities)
    assert plain.targets.tolist() == [-1] * 6 and plain.probabilities.shape == (6, 2)


class Paced:
    """Five batches of 4 images, each ready only after 20 ms: a loader of known pace."""

    def __iter__(self):
        for _ in range(5):
            time.sleep(0.02)
            yield Batch(torch.zeros(4, 3, 2, 2), torch.tensor([0, 1, 0, 1]), torch.arange(4), [])


class Slow(nn.Module):
    """A model that takes at least 10 ms per batch."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(12, 2)

    def forward(self, images):
        time.sleep(0.01)
        return self.linear(images.flatten(1))


def test_an_epoch_times_what_it_waited_for_data_apart_from_the_model():
    model = Slow()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    result = run_epoch(model, Paced(), nn.CrossEntropyLoss(), torch.device("cpu"), optimizer, progress=False)
    assert result.waiting >= 5 * 0.02  # every batch's 20 ms
    assert result.seconds - result.waiting >= 5 * 0.01  # the model's time is not waiting
    timing = result.timing
    assert timing["images_per_s"] == pytest.approx(20 / result.seconds)
    assert timing["data_wait_fraction"] == pytest.approx(result.waiting / result.seconds)
    evaluated = run_epoch(model, Paced(), nn.CrossEntropyLoss(), torch.device("cpu"), progress=False)
    assert evaluated.waiting >= 5 * 0.02 and len(evaluated.targets) == 20
