"""The feed: the decode cache (built once, shared, invalidated, atomic) and batched augmentation, checked
against PIL and torchvision per image."""

import logging
import os
import threading

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision.transforms import functional as TF

from leukemia.data.augmentation import BatchAugmentation
from leukemia.data.cache import decoded_loader, decoded_split, epoch_batches, readable_labels, readable_rows
from leukemia.data.decoding import decoding
from leukemia.data.feed import build_feed
from leukemia.data.layouts.lab import read_lab_csv
from leukemia.data.loading import Batch
from leukemia.data.resident import ResidentBatches, resident_pixels, room_for
from leukemia.errors import UserError

from conftest import compose_config, write_lab_layout


@pytest.fixture
def manifest(tmp_path):
    root = write_lab_layout(tmp_path / "lab", {"train": 10}, size=48)
    return read_lab_csv(root / "train.csv", "train", labelled=True)


def test_cache_holds_exactly_what_pil_decodes_and_is_built_once(manifest, tmp_path, caplog):
    with caplog.at_level(logging.INFO):
        first = decoded_split(manifest, 40, 32, tmp_path / "cache")
    assert first.pixels.shape == (10, 3, 32, 32) and first.pixels.dtype == np.uint8
    for row, path in enumerate(manifest.paths):  # PIL alone: the 40 px center of a 48 px image, bilinear to 32
        expected = np.asarray(Image.open(path).convert("RGB").crop((4, 4, 44, 44)).resize((32, 32), Image.BILINEAR))
        assert np.array_equal(first.pixels[row], expected.transpose(2, 0, 1))
    assert caplog.text.count("decoded the train split once") == 1
    built = first.path.stat().st_mtime_ns
    caplog.clear()
    again = decoded_split(manifest, 40, 32, tmp_path / "cache")
    assert again.path == first.path and again.path.stat().st_mtime_ns == built and "decoded" not in caplog.text
    assert decoded_split(manifest, 40, 24, tmp_path / "cache").path != first.path  # other parameters, other cache
    assert not list((tmp_path / "cache").glob("*.partial"))


def test_a_changed_image_file_makes_a_new_cache(manifest, tmp_path):
    first = decoded_split(manifest, 40, 32, tmp_path / "cache")
    Image.fromarray(np.full((48, 48, 3), 255, np.uint8)).save(manifest.paths[3])
    second = decoded_split(manifest, 40, 32, tmp_path / "cache")
    assert second.path != first.path
    assert second.pixels[3].min() == 255 and np.array_equal(second.pixels[2], first.pixels[2])


def test_parallel_builders_wait_for_one_complete_cache(manifest, tmp_path):
    results, errors = [], []

    def build():
        try:
            results.append(decoded_split(manifest, 40, 32, tmp_path / "cache"))
        except Exception as error:  # surfaced by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=build) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and len({result.path for result in results}) == 1
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 1
    assert all(np.array_equal(result.pixels, results[0].pixels) for result in results)


def test_unreadable_files_fail_the_build_or_are_left_out(manifest, tmp_path):
    data = manifest.paths[4].read_bytes()
    manifest.paths[4].write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match=r"train/4.bmp: cannot be read as an image .*data.on_bad_image=skip"):
        decoded_split(manifest, 40, 32, tmp_path / "cache")
    decoded = decoded_split(manifest, 40, 32, tmp_path / "cache", skip_bad=True)
    assert decoded.readable.tolist() == [True] * 4 + [False] + [True] * 5
    assert len(decoded.skipped) == 1 and "train/4.bmp (image file is truncated" in decoded.skipped[0]
    for where in WHERE:
        batches = list(cached_batches(decoded, manifest, 4, shuffle=False, seed=0, where=where))
        assert sum(len(batch.labels) for batch in batches) == 9
        expected = torch.tensor(manifest.labels)[decoded.readable]
        assert torch.equal(torch.cat([batch.labels for batch in batches]), expected)
        assert torch.cat([batch.rows for batch in batches]).tolist() == [0, 1, 2, 3, 5, 6, 7, 8, 9]
    with pytest.raises(UserError, match=r"train/4.bmp .*found when this split was decoded"):
        decoded_split(manifest, 40, 32, tmp_path / "cache")  # the cache remembers it


WHERE = ("disk", "device")  # the decode cache read per batch from its file, or resident in memory


def cached_batches(decoded, manifest, batch_size, shuffle, seed, where, balanced=False):
    """The split's batches from the decode cache: read from its file, or gathered where it resides."""
    labels = readable_labels(decoded, manifest)
    batches = epoch_batches(labels, batch_size, shuffle, torch.Generator().manual_seed(seed), balanced)
    if where == "disk":
        return decoded_loader(decoded, labels, batches)
    pixels = resident_pixels(decoded, manifest.name, torch.device("cpu"))
    return ResidentBatches(pixels, labels, readable_rows(decoded), batches)


@pytest.mark.parametrize("where", WHERE)
def test_cached_batches_shuffle_per_seed_and_keep_labels_with_their_images(manifest, tmp_path, where):
    decoded = decoded_split(manifest, 40, 32, tmp_path / "cache")
    in_order = next(iter(cached_batches(decoded, manifest, 10, shuffle=False, seed=0, where=where)))
    assert torch.equal(in_order.images, torch.from_numpy(np.array(decoded.pixels)))
    assert in_order.labels.tolist() == manifest.labels
    first = [b.labels.tolist() for b in cached_batches(decoded, manifest, 3, shuffle=True, seed=1, where=where)]
    second = [b.labels.tolist() for b in cached_batches(decoded, manifest, 3, shuffle=True, seed=1, where=where)]
    assert first == second and sum(map(len, first)) == 10
    for batch in cached_batches(decoded, manifest, 3, shuffle=True, seed=2, where=where):
        for image, label, carried in zip(batch.images, batch.labels, batch.rows, strict=True):
            row = next(r for r in range(10) if torch.equal(image, torch.from_numpy(np.array(decoded.pixels[r]))))
            assert manifest.labels[row] == label and carried == row  # the row travels with its pixels


@pytest.mark.parametrize("balanced", [False, True])
def test_a_resident_split_yields_the_batches_read_from_disk_epoch_after_epoch(manifest, tmp_path, balanced):
    decoded = decoded_split(manifest, 40, 32, tmp_path / "cache")
    disk, resident = (cached_batches(decoded, manifest, 3, True, 7, where, balanced) for where in WHERE)
    assert isinstance(resident, ResidentBatches) and len(resident) == len(disk) == 4
    for _ in range(3):  # each epoch draws a new order, the same for both
        for one, other in zip(disk, resident, strict=True):
            assert torch.equal(one.images, other.images) and torch.equal(one.labels, other.labels)


def test_a_split_that_does_not_fit_is_read_from_disk_with_one_line(manifest, tmp_path, monkeypatch, caplog):
    data_cfg = compose_config("data=lab", "data.crop_size=40", "data.image_size=32", "data.cache=device").data
    resident = build_feed(manifest, data_cfg, compose_config().augmentation, True, torch.device("cpu"), 5,
                          tmp_path / "cache")  # fmt: skip
    assert isinstance(resident.loader, ResidentBatches)
    assert resident.loader.pixels.shape == (10, 3, 32, 32) and resident.loader.pixels.dtype == torch.uint8
    monkeypatch.setattr("leukemia.data.resident.RESERVE", 1.0)  # nothing left beside the model
    with caplog.at_level(logging.INFO, logger="leukemia.data.resident"):
        fallback = build_feed(manifest, data_cfg, compose_config().augmentation, True, torch.device("cpu"), 5,
                              tmp_path / "cache")  # fmt: skip
    assert isinstance(fallback.loader, DataLoader)
    (line,) = caplog.messages
    assert "the train split (0.0 GB) does not fit in cpu memory" in line
    assert "read from the decode cache on disk" in line
    for one, other in zip(resident.loader, fallback.loader, strict=True):
        assert torch.equal(resident.prepare(one.images), fallback.prepare(other.images))


def test_room_for_a_split_keeps_the_reserve_for_the_model():
    gb = 10**9
    assert room_for(3 * gb, free=100 * gb, total=141 * gb)  # C-NMC at 350 px on an H200
    assert not room_for(3 * gb, free=10 * gb, total=16 * gb)  # 10 free, 8 kept: 2 left
    assert room_for(2 * gb, free=10 * gb, total=16 * gb)


def augmenter(seed=0, **overrides):
    cfg = compose_config(*(f"augmentation.{key}={value}" for key, value in overrides.items())).augmentation
    return BatchAugmentation(cfg, [0.5, 0.4, 0.3], [0.2, 0.25, 0.3], torch.device("cpu"), seed=seed)


def reference_tensor(image, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3)):
    return TF.normalize(TF.to_tensor(image), list(mean), list(std))


def test_without_augmentation_the_tensor_path_equals_the_pil_path(manifest):
    images = [decoding(40, 32)(Image.open(path).convert("RGB")) for path in manifest.paths]
    batch = augmenter()(torch.stack(images), train=False)
    expected = torch.stack([reference_tensor(TF.to_pil_image(image)) for image in images])
    assert torch.allclose(batch, expected, atol=1e-6)


def test_flips_are_exact_and_drawn_per_image_at_their_probability(manifest):
    image = decoding(40, 32)(Image.open(manifest.paths[1]).convert("RGB"))
    batch = image.expand(400, -1, -1, -1)
    out = augmenter(rotation_degrees=0, hflip_p=0.5, vflip_p=0)(batch, train=True)
    plain, mirrored = reference_tensor(TF.to_pil_image(image)), reference_tensor(TF.hflip(TF.to_pil_image(image)))
    is_plain = [torch.allclose(o, plain, atol=1e-6) for o in out]
    is_mirrored = [torch.allclose(o, mirrored, atol=1e-6) for o in out]
    assert all(p or m for p, m in zip(is_plain, is_mirrored, strict=True))
    assert 0.42 < np.mean(is_mirrored) < 0.58
    both = augmenter(rotation_degrees=0, hflip_p=1, vflip_p=1)(image[None], train=True)[0]
    assert torch.allclose(both, reference_tensor(TF.vflip(TF.hflip(TF.to_pil_image(image)))), atol=1e-6)


def test_rotation_matches_torchvision_within_interpolation_tolerance(manifest):
    augment = augmenter(rotation_degrees=20, hflip_p=0, vflip_p=0)
    angles = ((torch.rand(8, generator=torch.Generator().manual_seed(0)) * 2 - 1) * 20).tolist()
    image = decoding(40, 32)(Image.open(manifest.paths[1]).convert("RGB"))
    out = augment(image.expand(8, -1, -1, -1), train=True)
    for rotated, angle in zip(out, angles, strict=True):
        expected = reference_tensor(TF.rotate(TF.to_pil_image(image), angle))  # nearest, black fill
        same = torch.isclose(rotated, expected, atol=1e-5).all(dim=0).float().mean()
        assert same > 0.99, (angle, same)  # on this CPU: every pixel equal
    assert max(abs(angle) for angle in angles) > 10  # the draws span the range, not just near-zero angles


def geometric_augmenter(seed=0, **overrides):
    return augmenter(**{"rotation_degrees": 20, "hflip_p": 0.5, "vflip_p": 0.5, **overrides}, seed=seed)


def test_cached_pixels_rotate_then_flip_as_pil_does_for_their_draws(manifest, tmp_path):
    pixels = torch.from_numpy(np.array(decoded_split(manifest, 40, 32, tmp_path / "cache").pixels))
    out = geometric_augmenter(seed=7)(pixels, train=True)
    draws = torch.rand(30, generator=torch.Generator().manual_seed(7))  # the draws, in the order they are made
    angles, hflips, vflips = ((draws[:10] * 2 - 1) * 20).tolist(), draws[10:20] < 0.5, draws[20:] < 0.5
    for source, result, angle, hflip, vflip in zip(pixels, out, angles, hflips, vflips, strict=True):
        expected = TF.rotate(TF.to_pil_image(source), angle)  # nearest, black fill
        expected = TF.vflip(expected) if vflip else expected
        expected = TF.hflip(expected) if hflip else expected
        same = torch.isclose(result, reference_tensor(expected), atol=1e-5).all(dim=0).float().mean()
        assert same > 0.99, (angle, same)  # all but rounding ties at pixel borders
    assert 0 < hflips.sum() < 10 and 0 < vflips.sum() < 10 and max(map(abs, angles)) > 10


def test_augmentation_draws_follow_the_seed_and_the_probabilities(manifest, tmp_path):
    image = torch.from_numpy(np.array(decoded_split(manifest, 40, 32, tmp_path / "cache").pixels[1]))
    batch = image.expand(400, -1, -1, -1)
    flips = geometric_augmenter(seed=3, rotation_degrees=0, vflip_p=0)(batch, train=True)
    plain, mirrored = reference_tensor(TF.to_pil_image(image)), reference_tensor(TF.hflip(TF.to_pil_image(image)))
    is_mirrored = torch.tensor([torch.allclose(out, mirrored, atol=1e-6) for out in flips])
    is_plain = torch.tensor([torch.allclose(out, plain, atol=1e-6) for out in flips])
    assert (is_plain | is_mirrored).all() and 0.42 < is_mirrored.float().mean() < 0.58
    same_seed = [geometric_augmenter(seed=3)(batch[:8], train=True) for _ in range(2)]
    assert torch.equal(*same_seed)
    assert not torch.equal(same_seed[0], geometric_augmenter(seed=4)(batch[:8], train=True))


@pytest.mark.parametrize("cache", ["disk", "none"])
def test_training_batches_are_the_same_whatever_the_number_of_workers(manifest, tmp_path, cache):
    def epochs(workers):
        data_cfg = compose_config("data=lab", "data.crop_size=40", "data.image_size=32", "data.batch_size=4",
                                  f"data.num_workers={workers}", f"data.cache={cache}").data  # fmt: skip
        feed = build_feed(manifest, data_cfg, compose_config().augmentation, True, torch.device("cpu"), 5,
                          tmp_path / "cache")  # fmt: skip
        return [[(feed.prepare(batch.images), batch.labels) for batch in feed.loader] for _ in range(2)]

    alone, parallel = epochs(0), epochs(2)
    assert not torch.equal(alone[0][0][0], alone[1][0][0])  # each epoch draws anew
    for one, other in zip(sum(alone, []), sum(parallel, []), strict=True):
        assert torch.equal(one[0], other[0]) and torch.equal(one[1], other[1])


@pytest.mark.slow
def test_a_tiny_run_trains_through_the_cache_and_reuses_it(tiny_lab, tmp_path):
    from conftest import FAST, run_cli

    args = (*FAST, f"data.root={tiny_lab}", "trainer.epochs=2", f"paths.cache_dir={tmp_path}")
    first = run_cli(*args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    assert (first.stdout + first.stderr).count("split once") == 3  # train, valid, test
    second = run_cli(*args, cwd=tmp_path)
    assert second.returncode == 0 and "split once" not in second.stdout + second.stderr
    assert len(list((tmp_path / "decoded").glob("*.npy"))) == 3
    assert "best epoch" in second.stdout + second.stderr and os.path.isdir(tmp_path / "mlruns")


@pytest.mark.slow
def test_the_benchmark_prints_its_table_and_a_json_last_line(tmp_path):
    import json
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "leukemia.bench", "--device", "cpu", "--images", "8", "--image-size", "32",
         "--batch-size", "4", "--workers", "0", "--steps", "1"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.strip().splitlines()
    summary = json.loads(lines[-1])
    assert summary["device"] == "cpu" and summary["image_size"] == 32
    for key in ("loader_speedup", "model_step_ratio", "seed_loader_images_per_s", "project_loader_images_per_s",
                "project_step_images_per_s", "torchvision_step_images_per_s", "epoch_images_per_s"):  # fmt: skip
        assert summary[key] > 0, key
    assert 0 < summary["data_wait_fraction"] < 1
    assert summary["loader_speedup"] == pytest.approx(
        summary["project_loader_images_per_s"] / summary["seed_loader_images_per_s"], rel=0.02
    )
    assert any(line.startswith("(a) loader, project feed") for line in lines)


@pytest.mark.parametrize("kind", ["brightness", "contrast", "saturation"])
def test_colour_jitter_matches_torchvision_for_its_draws(manifest, kind):
    augment = augmenter(rotation_degrees=0, hflip_p=0, vflip_p=0, **{kind: 0.4})
    image = decoding(40, 32)(Image.open(manifest.paths[1]).convert("RGB"))
    out = augment(image.expand(8, -1, -1, -1), train=True)
    factors = 0.6 + 0.8 * torch.rand(8, generator=torch.Generator().manual_seed(0))  # the draws, in order
    adjust = {"brightness": TF.adjust_brightness, "contrast": TF.adjust_contrast, "saturation": TF.adjust_saturation}
    for jittered, factor in zip(out, factors.tolist(), strict=True):
        expected = TF.normalize(adjust[kind](image.float() / 255, factor), [0.5, 0.4, 0.3], [0.2, 0.25, 0.3])
        assert torch.allclose(jittered, expected, atol=1e-4), (kind, factor)
    assert factors.min() < 0.8 and factors.max() > 1.2


def test_rotation_with_zoom_matches_torchvision_affine_for_its_draws(manifest, tmp_path):
    pixels = torch.from_numpy(np.array(decoded_split(manifest, 40, 32, tmp_path / "cache").pixels))
    out = augmenter(rotation_degrees=20, hflip_p=0, vflip_p=0, scale_jitter=0.2, seed=5)(pixels, train=True)
    draws = torch.rand(20, generator=torch.Generator().manual_seed(5))
    angles, scales = ((draws[:10] * 2 - 1) * 20).tolist(), (0.8 + 0.4 * draws[10:]).tolist()
    for source, result, angle, scale in zip(pixels, out, angles, scales, strict=True):
        # TF.affine turns the other way from TF.rotate on PIL images; RandomAffine draws both ways alike
        expected = TF.affine(TF.to_pil_image(source), -angle, [0, 0], scale, [0.0, 0.0])
        same = torch.isclose(result, reference_tensor(expected), atol=1e-5).all(dim=0).float().mean()
        assert same > 0.97, (angle, scale, same)
    assert min(scales) < 0.9 and max(scales) > 1.1


def test_zoom_on_the_device_matches_torchvision_affine_for_its_draws(manifest):
    augment = augmenter(rotation_degrees=0, hflip_p=0, vflip_p=0, scale_jitter=0.2)
    image = decoding(40, 32)(Image.open(manifest.paths[1]).convert("RGB"))
    out = augment(image.expand(8, -1, -1, -1), train=True)
    draws = torch.rand(16, generator=torch.Generator().manual_seed(0))
    scales = (0.8 + 0.4 * draws[8:]).tolist()  # after the (zero) angles
    for zoomed, scale in zip(out, scales, strict=True):
        expected = reference_tensor(TF.affine(TF.to_pil_image(image), 0.0, [0, 0], scale, [0.0, 0.0]))
        same = torch.isclose(zoomed, expected, atol=1e-5).all(dim=0).float().mean()
        assert same > 0.95, (scale, same)


@pytest.mark.slow
def test_the_study_times_every_depth_and_projects_the_course_from_its_epochs(tmp_path):
    import json
    import subprocess
    import sys

    from leukemia.bench.study import COURSE_EPOCHS

    result = subprocess.run(
        [sys.executable, "-m", "leukemia.bench", "--study", "--device", "cpu", "--images", "40", "--image-size",
         "32", "--max-batch", "64", "--workers", "0", "--steps", "1"],
        cwd=tmp_path, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.strip().splitlines()
    summary = json.loads(lines[-1])
    course = "resnet18 120 epochs, resnet50 120 epochs, resnet152 40 epochs"
    assert summary["projected_for"] == f"{course}; 30 train + 6 valid images at 32 px"  # the lab's share of 40
    by_depth = summary["epoch_seconds"]
    for which, key in (("fastest", "study_minutes_projected"), ("batch32", "study_minutes_projected_batch32")):
        minutes = sum(epochs * by_depth[f"resnet{depth}"][which] for depth, epochs in COURSE_EPOCHS.items()) / 60
        assert summary[key] == pytest.approx(minutes, abs=0.01)
    assert set(summary["fastest_batch"].values()) <= {32, 64}
    assert summary["epoch_to_step_ratio"] > 0 and 0 < summary["data_wait_fraction"] < 1
    # each depth at batch 32 and at its fastest batch, once if that is 32
    rows = sum(1 if batch == 32 else 2 for batch in summary["fastest_batch"].values())
    assert sum(line.startswith("resnet") for line in lines) == rows


def test_the_benchmark_counts_images_per_second_against_a_known_pace():
    """An independent reference for the benchmark's rates: a loader that takes at least 20 ms per batch of 4
    images cannot be measured faster than 200 images/s; the measured rate also counts every image."""
    import time

    from leukemia.bench.pipeline import images_per_second

    class Paced:
        def __iter__(self):
            for _ in range(5):
                time.sleep(0.02)
                yield Batch(torch.zeros(4, 3, 2, 2), torch.zeros(4, dtype=torch.long), torch.arange(4), [])

    seen = []
    rate = images_per_second(Paced(), torch.device("cpu"), prepare=lambda images: seen.append(len(images)) or images)
    assert 50 < rate <= 200 and seen == [4] * 10  # an untimed pass, then the timed one
