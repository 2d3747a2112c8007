import json
import random

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torchvision import transforms
from torchvision_reference import preprocessing

from leukemia.data.augmentation import BatchAugmentation
from leukemia.data.decoding import decoding, pad_to_square
from leukemia.data.layouts.demo import SPEC_FILE, TEST_CSV_NAMES, DemoSpec, demo_splits, ensure_demo_dataset
from leukemia.data.layouts.lab import lab_splits, read_lab_csv
from leukemia.data.loading import class_weights, make_loader, preview
from leukemia.data.manifest import Manifest
from leukemia.errors import UserError

from conftest import SHARED_DATA, compose_config, write_lab_layout


def unnormalised(crop_size: int, image_size: int):
    """Preprocessing that leaves pixel values in [0, 1], so tests can reason about them."""
    return preprocessing(crop_size, image_size, mean=[0, 0, 0], std=[1, 1, 1])


def lab_cfg(root, **overrides):
    return compose_config("data=lab", f"data.root={root}", *(f"data.{k}={v}" for k, v in overrides.items())).data


@pytest.mark.parametrize("style", ["plain", "new_dataset"])
def test_both_path_styles_resolve_to_the_image_files(tmp_path, style):
    root = write_lab_layout(tmp_path, {"train": 4, "valid": 2, "test": 2}, path_style=style)
    splits = lab_splits(lab_cfg(root))
    assert [len(splits.train), len(splits.valid), len(splits.test)] == [4, 2, 2]
    assert all(path.is_file() and path.is_absolute() for path in splits.train.paths)
    assert splits.train.paths[1].parent.name == "train" and splits.train.labels == [0, 1, 0, 1]
    assert splits.test.labels is None


def test_new_dataset_paths_beside_the_csv_also_resolve(tmp_path):
    """./new_dataset/... with the CSVs in the folder that holds new_dataset/ (as the demo writes it)."""
    folder = write_lab_layout(tmp_path, {"train": 2, "valid": 2}, path_style="new_dataset")
    for name in ("train", "valid"):
        (folder / f"{name}.csv").rename(tmp_path / f"{name}.csv")
    splits = lab_splits(lab_cfg(tmp_path))
    assert splits.valid.paths[0] == (folder / "valid" / "0.bmp").resolve()


def test_loader_yields_resized_rgb_tensors(tmp_path):
    root = write_lab_layout(tmp_path, {"train": 6, "valid": 2})
    loader = make_loader(
        read_lab_csv(root / "train.csv", "train", labelled=True),
        unnormalised(36, 32), batch_size=4, num_workers=0, shuffle=False, seed=0,
    )  # fmt: skip
    images, labels, rows, _ = next(iter(loader))
    assert images.shape == (4, 3, 32, 32) and images.dtype == torch.float32
    assert images.min() >= 0.0 and images.max() <= 1.0
    assert labels.tolist() == [0, 1, 0, 1] and rows.tolist() == [0, 1, 2, 3]


def first_image(manifest, crop_size=36, image_size=32):
    loader = make_loader(manifest, unnormalised(crop_size, image_size), batch_size=1, num_workers=0, shuffle=False,
                         seed=0)  # fmt: skip
    return next(iter(loader)).images[0]


PURPLE = (120, 40, 140)


def odd_mode_images(folder):
    """One 40x40 file per awkward mode, each a purple (or grey) square on black; returns {mode: path}."""
    square = np.zeros((40, 40, 3), np.uint8)
    square[10:30, 10:30] = PURPLE
    rgb = Image.fromarray(square)
    rgba = np.dstack([square, np.full((40, 40), 255, np.uint8)])
    rgba[:10, :, :3] = 255  # white where fully transparent: must come out black
    rgba[:10, :, 3] = 0
    grey16 = (square[..., 0].astype(np.uint16) * 257).astype(np.uint16)
    images = {
        "L": rgb.convert("L"),
        "P": rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=8),
        "RGBA": Image.fromarray(rgba),
        "LA": Image.fromarray(rgba).convert("LA"),
        "I;16": Image.fromarray(grey16),
        "CMYK": rgb.convert("CMYK"),
    }
    paths = {}
    for mode, image in images.items():
        paths[mode] = folder / f"{mode.replace(';', '')}.{'tif' if mode == 'CMYK' else 'png'}"
        image.save(paths[mode])
        with Image.open(paths[mode]) as written:
            assert written.mode == mode
    return paths


def test_grayscale_palette_rgba_and_16_bit_images_become_rgb_on_black(tmp_path):
    for mode, path in odd_mode_images(tmp_path).items():
        image = first_image(Manifest("train", [path], [0]), crop_size=40, image_size=40)
        assert image.shape == (3, 40, 40), mode
        assert image[:, :10].max() == 0, mode  # black border, including formerly transparent white pixels
        inside = image[:, 20, 20] * 255
        if mode in ("P", "RGBA", "CMYK"):
            assert torch.allclose(inside, torch.tensor(PURPLE, dtype=torch.float), atol=2), mode
        else:  # grey levels: the purple's luminance, equal in all three channels
            assert inside.min() > 50 and inside.max() - inside.min() < 1e-3, mode


@pytest.mark.parametrize("size", [(20, 20), (60, 24)])
def test_images_smaller_than_the_crop_or_not_square_are_padded_with_black(tmp_path, size):
    Image.fromarray(np.full((size[1], size[0], 3), 200, np.uint8)).save(tmp_path / "small.bmp")
    image = first_image(Manifest("train", [tmp_path / "small.bmp"], [1]), crop_size=40, image_size=40)
    assert image.shape == (3, 40, 40)
    assert image[:, 20, 20].min() > 0.7 and image[:, 0, 0].max() == 0 and image[:, 39, 39].max() == 0


def test_an_undecodable_image_is_named_when_read(tmp_path):
    (tmp_path / "broken.bmp").write_bytes(b"BM not really an image")
    with pytest.raises(UserError, match=r"broken.bmp: cannot be read as an image .*data.on_bad_image=skip"):
        first_image(Manifest("train", [tmp_path / "broken.bmp"], [1]))


def truncated_copy(source, target):
    data = source.read_bytes()
    target.write_bytes(data[: len(data) // 2])
    return target


def test_a_truncated_image_is_named_or_skipped_and_reported(tmp_path):
    root = write_lab_layout(tmp_path, {"train": 4})
    truncated = truncated_copy(root / "train" / "1.bmp", root / "train" / "truncated.bmp")
    manifest = Manifest("train", [root / "train" / "0.bmp", truncated, root / "train" / "2.bmp"], [0, 1, 0])
    with pytest.raises(UserError, match=r"truncated.bmp: cannot be read as an image \(image file is truncated"):
        first_image(manifest.select([1]))
    loader = make_loader(manifest, unnormalised(36, 32), batch_size=2, num_workers=0, shuffle=False, seed=0,
                         skip_bad=True)  # fmt: skip
    batches = list(loader)
    assert [len(batch.labels) for batch in batches] == [1, 1]
    assert batches[0].labels.tolist() == [0] and len(batches[0].skipped) == 1
    assert [batch.rows.tolist() for batch in batches] == [[0], [2]]  # each image with its manifest row
    (skipped,) = batches[0].skipped
    assert skipped.row == 1 and skipped.description.startswith(f"{truncated} (image file is truncated")
    only_bad = make_loader(manifest.select([1]), unnormalised(36, 32), 2, 0, False, 0, skip_bad=True)
    batch = next(iter(only_bad))
    assert batch.images.numel() == 0 and len(batch.skipped) == 1


def test_the_balanced_sampler_draws_both_classes_equally_often(tmp_path):
    root = write_lab_layout(tmp_path, {"train": 2})
    paths = [root / "train" / "0.bmp"] * 30 + [root / "train" / "1.bmp"] * 10
    manifest = Manifest("train", paths, [1] * 30 + [0] * 10)
    assert class_weights(manifest).tolist() == pytest.approx([2.0, 2 / 3])
    drawn = []
    for seed in range(20):
        loader = make_loader(manifest, unnormalised(36, 32), 40, 0, True, seed, balanced=True)
        drawn += next(iter(loader)).labels.tolist()
    assert len(drawn) == 800 and 0.42 < np.mean(drawn) < 0.58  # 0.75 without balancing
    again = make_loader(manifest, unnormalised(36, 32), 40, 0, True, 19, balanced=True)
    assert next(iter(again)).labels.tolist() == drawn[-40:]


def test_the_preview_leaves_the_random_sequence_unchanged(tmp_path):
    root = write_lab_layout(tmp_path, {"train": 20})
    manifest = read_lab_csv(root / "train.csv", "train", labelled=True)
    augmentation = BatchAugmentation(compose_config().augmentation, [0, 0, 0], [1, 1, 1], torch.device("cpu"), 0)
    torch.manual_seed(0)
    random.seed(0)
    batch = preview(manifest, 36, 32, count=8)
    shown = augmentation(batch.images, train=True)
    after = (torch.rand(3), random.random())
    torch.manual_seed(0)
    random.seed(0)
    assert torch.equal(after[0], torch.rand(3)) and after[1] == random.random()
    assert batch.images.shape == (8, 3, 32, 32) and set(batch.labels.tolist()) == {0, 1}
    assert batch.images.dtype == torch.uint8 and shown.shape == (8, 3, 32, 32) and shown.max() <= 1


def test_missing_root_names_the_path_and_suggests_demo(tmp_path):
    with pytest.raises(UserError, match=rf"data.root={tmp_path / 'absent'}: no such folder.*data=demo"):
        lab_splits(lab_cfg(tmp_path / "absent"))


def test_missing_csv_names_the_file(tmp_path):
    root = write_lab_layout(tmp_path, {"train": 2})
    with pytest.raises(UserError, match=rf"{root / 'valid.csv'}: no such CSV"):
        lab_splits(lab_cfg(root))


def test_missing_image_files_are_counted_and_the_first_few_named(tmp_path):
    root = write_lab_layout(tmp_path, {"train": 8, "valid": 2})
    for index in (2, 3, 5, 6):
        (root / "train" / f"{index}.bmp").unlink()
    with pytest.raises(
        UserError,
        match=r"train.csv: 4 of 8 image files do not exist \(first: .*train/2.bmp, .*train/3.bmp, .*/5.bmp, …\)",
    ):
        lab_splits(lab_cfg(root))


def test_csv_without_label_column_names_the_columns(tmp_path):
    root = write_lab_layout(tmp_path, {"train": 2, "valid": 2})
    pd.read_csv(root / "valid.csv").rename(columns={"label": "class"}).to_csv(root / "valid.csv", index=False)
    with pytest.raises(UserError, match=r"valid.csv: missing column\(s\) \['label'\]; found \['Path', 'class'\]"):
        lab_splits(lab_cfg(root))


def test_labels_other_than_0_and_1_name_the_rows(tmp_path):
    root = write_lab_layout(tmp_path, {"train": 4, "valid": 2})
    table = pd.read_csv(root / "train.csv").astype({"label": object})
    table.loc[1, "label"] = "ALL"
    table.loc[2, "label"] = 2
    table.to_csv(root / "train.csv", index=False)
    with pytest.raises(
        UserError,
        match=r"train.csv: 'label' must be 0 \(normal\) or 1 \(ALL\); 2 of 4 rows are not "
        r"\(row 3 has 'ALL', row 4 has '2'\)",
    ):
        lab_splits(lab_cfg(root))


def test_a_csv_that_is_not_a_table_is_named(tmp_path):
    root = write_lab_layout(tmp_path, {"train": 2, "valid": 2})
    (root / "valid.csv").write_bytes(b"\xff\xfe\x00binary\x00\x81")
    with pytest.raises(UserError, match=r"valid.csv: not a readable CSV"):
        lab_splits(lab_cfg(root))


SMALL_DEMO = DemoSpec(seed=3, subjects_all=4, subjects_normal=3, images_per_subject=5, source_size=64)


def test_demo_set_is_deterministic_and_in_the_lab_layout(tmp_path):
    first = ensure_demo_dataset(tmp_path / "a", SMALL_DEMO)
    second = ensure_demo_dataset(tmp_path / "b", SMALL_DEMO)
    for name in ("train.csv", "valid.csv", *TEST_CSV_NAMES):
        assert (first / name).read_bytes() == (second / name).read_bytes()
    train = pd.read_csv(first / "train.csv")
    assert list(train.columns[:2]) == ["Path", "label"]
    assert (first / train.Path[0]).read_bytes() == (second / train.Path[0]).read_bytes()
    with Image.open(first / train.Path[0]) as image:
        assert (image.format, image.mode, image.size) == ("BMP", "RGB", (64, 64))
    assert list(pd.read_csv(first / TEST_CSV_NAMES[0]).columns) == ["Path"]


def test_demo_splits_are_subject_disjoint_with_both_classes(tmp_path):
    root = ensure_demo_dataset(tmp_path / "demo", SMALL_DEMO)
    subjects = {split: set(pd.read_csv(root / f"{split}.csv").subject) for split in ("train", "valid")}
    subjects["test"] = set(pd.read_csv(root / "test_labels.csv").subject)
    assert not subjects["train"] & subjects["valid"]
    assert not subjects["train"] & subjects["test"] and not subjects["valid"] & subjects["test"]
    for split in ("train", "valid"):
        assert set(pd.read_csv(root / f"{split}.csv").label) == {0, 1}


def test_default_demo_set_is_about_two_to_one_all_to_normal(tmp_path):
    data_cfg = compose_config(f"paths.cache_dir={tmp_path}").data
    splits = demo_splits(data_cfg)
    counts = {name: sum(m.class_counts()[name] for m in (splits.train, splits.valid)) for name in ("all", "normal")}
    assert counts["all"] == 2 * counts["normal"]
    assert len(splits.train) >= 3 * len(splits.valid) / 2 and splits.test is not None


def test_demo_cells_sit_on_black_and_blasts_are_larger(tmp_path):
    root = ensure_demo_dataset(tmp_path / "demo", SMALL_DEMO)
    table = pd.concat([pd.read_csv(root / "train.csv"), pd.read_csv(root / "valid.csv")])
    areas = {0: [], 1: []}
    for path, label in zip(table.Path, table.label, strict=True):
        pixels = np.asarray(Image.open(root / path)).astype(int)
        assert pixels[:3, :3].max() == 0  # black background in the corners
        areas[label].append((pixels.sum(axis=2) > 30).sum())
    assert np.mean(areas[1]) > np.mean(areas[0])


def test_too_few_demo_subjects_for_three_splits_is_refused(tmp_path):
    spec = DemoSpec(seed=0, subjects_all=4, subjects_normal=2, images_per_subject=2, source_size=32)
    with pytest.raises(UserError, match="data.subjects_normal=2: the demo needs at least 3"):
        ensure_demo_dataset(tmp_path / "demo", spec)


def test_a_demo_folder_made_with_other_settings_is_refused(tmp_path):
    root = ensure_demo_dataset(tmp_path / "demo", SMALL_DEMO)
    spec = json.loads((root / SPEC_FILE).read_text())
    other = DemoSpec(**(spec | {"seed": 4}))
    with pytest.raises(UserError, match=rf"data.root={root} holds a demo set made with other settings"):
        ensure_demo_dataset(root, other)


@pytest.mark.skipif(not (SHARED_DATA / "cnmc-sample").is_dir(), reason="real C-NMC sample not available")
def test_real_cnmc_cells_read_through_the_lab_reader(tmp_path):
    sample = SHARED_DATA / "cnmc-sample"
    table = pd.read_csv(sample / "labels.csv")
    lab = pd.DataFrame({"Path": [str(sample / p) for p in table.path], "label": table.label})
    lab.to_csv(tmp_path / "train.csv", index=False)
    lab.to_csv(tmp_path / "valid.csv", index=False)
    splits = lab_splits(lab_cfg(tmp_path))
    loader = make_loader(splits.train, unnormalised(350, 64), batch_size=11, num_workers=0, shuffle=False, seed=0)
    images, labels, rows, _ = next(iter(loader))
    assert images.shape == (11, 3, 64, 64) and labels.sum().item() == 5
    # Cells are stained purple: blue and red above green inside the cell.
    red, green, blue = images.mean(dim=(0, 2, 3)).tolist()
    assert blue > green and red > green


@pytest.mark.parametrize("size", [(48, 48), (45, 45), (30, 52), (61, 27), (20, 20)])
@pytest.mark.parametrize("crop", [40, 35, None])
def test_decoding_equals_torchvision_center_crop_and_resize(size, crop):
    """The per-image step, checked against torchvision's transforms (the course seed's), pixel for pixel."""
    rng = np.random.default_rng(sum(size))
    image = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    first = transforms.CenterCrop(crop) if crop is not None else transforms.Lambda(pad_to_square)
    reference = transforms.Compose([first, transforms.Resize(32, antialias=True), transforms.PILToTensor()])
    decoded = decoding(crop, 32)(image)
    assert decoded.dtype == torch.uint8 and torch.equal(decoded, reference(image))
