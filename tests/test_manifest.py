"""Checks every layout's manifests pass before training, the data.limit pick, the subject split, the summary."""

import logging
from pathlib import Path

import pandas as pd
import pytest

from leukemia.data.layouts import load_splits
from leukemia.data.manifest import Manifest, Splits, limit_manifest, summarize, summary_lines
from leukemia.data.splitting import split_by_subject
from leukemia.errors import UserError

from conftest import compose_config, write_lab_layout


def lab_cfg(root, *overrides):
    return compose_config("data=lab", f"data.root={root}", *overrides).data


def edit_csv(path, change):
    table = pd.read_csv(path)
    change(table).to_csv(path, index=False)


def test_a_path_listed_twice_is_named(tmp_path):
    root = write_lab_layout(tmp_path, {"train": 4, "valid": 2})
    edit_csv(root / "train.csv", lambda table: pd.concat([table, table.iloc[[1]]]))
    with pytest.raises(UserError, match=r"train.csv: 1 image paths are listed more than once \(first: .*train/1.bmp\)"):
        load_splits(lab_cfg(root))


def test_an_image_in_two_splits_is_named(tmp_path):
    root = write_lab_layout(tmp_path, {"train": 4, "valid": 2})
    edit_csv(
        root / "valid.csv", lambda table: pd.concat([table, pd.DataFrame({"Path": ["train/3.bmp"], "label": [1]})])
    )
    with pytest.raises(UserError, match=r"the train and valid splits share 1 image files \(first: .*train/3.bmp\)"):
        load_splits(lab_cfg(root))


def test_an_empty_split_is_refused(tmp_path):
    root = write_lab_layout(tmp_path, {"train": 4, "valid": 2})
    edit_csv(root / "valid.csv", lambda table: table.iloc[:0])
    with pytest.raises(UserError, match=r"valid.csv: has no rows; the valid split needs at least one image"):
        load_splits(lab_cfg(root))


def test_a_train_split_of_one_class_is_refused_a_valid_split_warned(tmp_path, caplog):
    root = write_lab_layout(tmp_path, {"train": 4, "valid": 4})
    edit_csv(root / "valid.csv", lambda table: table[table.label == 1])
    load_splits(lab_cfg(root))
    assert "the valid split has no 'normal' images" in caplog.text
    edit_csv(root / "train.csv", lambda table: table[table.label == 1])
    with pytest.raises(UserError, match=r"train.csv: the train split has no 'normal' images; training needs both"):
        load_splits(lab_cfg(root))


def test_subjects_shared_by_lab_splits_are_warned(tmp_path, caplog):
    root = write_lab_layout(tmp_path, {"train": 4, "valid": 2})
    edit_csv(root / "train.csv", lambda table: table.assign(subject=["7", "H2", "7", "H3"]))
    edit_csv(root / "valid.csv", lambda table: table.assign(subject=["H3", "9"]))
    with caplog.at_level(logging.WARNING):
        splits = load_splits(lab_cfg(root))
    assert splits.train.subjects == ["7", "H2", "7", "H3"]
    assert "the train and valid splits share 1 subjects (H3): scores on valid will be optimistic" in caplog.text


def manifest_of(labels, name="train"):
    return Manifest(name, [Path(f"/cells/{k}.bmp") for k in range(len(labels))], labels)


def test_limit_keeps_both_classes_in_proportion_and_the_original_order():
    manifest = manifest_of([1, 1, 0] * 30)
    limited = limit_manifest(manifest, 12)
    assert limited.class_counts() == {"normal": 4, "all": 8}
    assert limited.paths == sorted(limited.paths, key=lambda p: int(p.stem))
    assert limit_manifest(manifest, 12) == limited  # a fixed pick
    assert limit_manifest(manifest_of([1] * 50 + [0]), 5).class_counts() == {"normal": 1, "all": 4}
    assert limit_manifest(manifest, 1000) is manifest
    test = Manifest("test", manifest.paths, None)
    assert limit_manifest(test, 5).paths == manifest.paths[:5]


def test_data_limit_applies_to_every_split(tmp_path):
    root = write_lab_layout(tmp_path, {"train": 20, "valid": 10, "test": 9})
    splits = load_splits(lab_cfg(root, "data.limit=6"))
    assert [len(m) for m in splits.present()] == [6, 6, 6]
    assert splits.train.class_counts() == {"normal": 3, "all": 3}
    with pytest.raises(UserError, match=r"data.limit=0: must be at least 1"):
        load_splits(lab_cfg(root, "data.limit=0"))


def pooled(subject_labels, per_subject=3):
    subjects = [s for s in subject_labels for _ in range(per_subject)]
    labels = [subject_labels[s] for s in subjects]
    return Manifest("pool", [Path(f"/cells/{k}.bmp") for k in range(len(subjects))], labels, subjects, "pool.csv")


def test_subject_split_refuses_bad_fractions_and_too_few_subjects():
    pool = pooled({"1": 1, "2": 1, "H1": 0, "H2": 0})
    for fraction in (0, 1, 1.5):
        with pytest.raises(UserError, match=rf"data.val_fraction={fraction}: must be between 0 and 1"):
            split_by_subject(pool, fraction, seed=0)
    with pytest.raises(
        UserError, match=r"pool.csv: 1 'normal' subject\(s\); a subject-disjoint split needs at least 2"
    ):
        split_by_subject(pooled({"1": 1, "2": 1, "H1": 0}), 0.2, seed=0)
    train, valid = split_by_subject(pool, 0.2, seed=0)
    assert len(train.subject_set()) == len(valid.subject_set()) == 2 and not train.subject_set() & valid.subject_set()


def test_summary_counts_images_classes_and_subjects():
    train = Manifest("train", [Path("/a"), Path("/b"), Path("/c")], [1, 0, 1], ["1", "H1", "2"])
    valid = Manifest("valid", [Path("/d")], [0], ["H2"])
    test = Manifest("test", [Path("/e"), Path("/f")], None)

    table = summarize(Splits(train, valid, test))
    assert table == {
        "train": {"images": 3, "normal": 1, "all": 2, "subjects": 2 + 1},
        "valid": {"images": 1, "normal": 1, "all": 0, "subjects": 1},
        "test": {"images": 2},
    }
    lines = summary_lines(table)
    assert lines[0].split() == ["split", "images", "normal", "all", "subjects"]
    assert lines[1].split() == ["train", "3", "1", "2", "3"] and lines[3].split() == ["test", "2", "-", "-", "-"]
