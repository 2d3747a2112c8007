"""The published C-NMC 2019 tree (data=cnmc): names, folds, subject-disjoint splits, test sets, bad trees."""

import logging
import shutil

import pandas as pd
import pytest

from leukemia.data.layouts import load_splits
from leukemia.data.layouts.cnmc import cnmc_splits, parse_cell_name
from leukemia.errors import UserError

from conftest import SHARED_DATA, compose_config, write_cnmc_tree

PRELIM_CSV = "validation_data/C-NMC_test_prelim_phase_data_labels.csv"


def cnmc_cfg(root, *overrides):
    return compose_config("data=cnmc", f"data.root={root}", *overrides).data


def subjects_of(manifest):
    return set(manifest.subjects)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("UID_57_29_1_all.bmp", ("57", 1)),
        ("UID_H49_35_1_hem.bmp", ("H49", 0)),
        ("UID_h3_6_1_hem.png", ("H3", 0)),  # a real lowercase name
        ("uid_H10_1_2_HEM.BMP", ("H10", 0)),
        ("1.bmp", None),
        ("UID_57_29_all.bmp", None),
        ("UID_X7_1_1_all.bmp", None),
        ("UID_57_1_1_blast.bmp", None),
    ],
)
def test_cell_names_give_subject_and_label(name, expected):
    assert parse_cell_name(name) == expected


def test_fold_split_validates_on_one_fold_and_reads_the_labelled_test_set(tmp_path):
    root = write_cnmc_tree(tmp_path)
    splits = cnmc_splits(cnmc_cfg(root))
    assert subjects_of(splits.valid) == {"4", "5", "H3"}
    assert subjects_of(splits.train) == {"1", "2", "H1", "3", "H2"}
    assert (len(splits.train), len(splits.valid)) == (20, 12)
    for manifest in (splits.train, splits.valid):
        for path, label, subject in zip(manifest.paths, manifest.labels, manifest.subjects, strict=True):
            assert path.is_absolute() and path.parent.name == ("hem" if label == 0 else "all")
            assert path.name.startswith(f"UID_{subject}_")
    assert splits.test.paths[0].name == "1.bmp" and splits.test.labels == [1, 0, 1, 0, 1, 0]
    assert subjects_of(splits.test) == {"90", "H90"}
    other = cnmc_splits(cnmc_cfg(root, "data.val_fold=0"))
    assert subjects_of(other.valid) == {"1", "2", "H1"}


def test_tcia_spelling_without_test_folders_trains_and_says_no_test_set(tmp_path, caplog):
    root = write_cnmc_tree(tmp_path, training="C-NMC_training_data", prelim=0)
    with caplog.at_level(logging.INFO):
        splits = cnmc_splits(cnmc_cfg(root))
    assert splits.test is None and len(splits.train) == 20
    assert "no prelim test set found" in caplog.text and "test evaluation is skipped" in caplog.text


def test_final_test_set_is_unlabelled_in_natural_order(tmp_path):
    root = write_cnmc_tree(tmp_path, prelim=0, final=11)
    test = cnmc_splits(cnmc_cfg(root, "data.test_set=final")).test
    assert [path.name for path in test.paths[:3]] == ["1.bmp", "2.bmp", "3.bmp"]
    assert test.paths[-2].name == "10.bmp" and test.labels is None
    assert cnmc_splits(cnmc_cfg(root, "data.test_set=none")).test is None


def test_hidden_and_non_image_files_are_ignored(tmp_path):
    root = write_cnmc_tree(tmp_path)
    (root / "training_data" / "fold_0" / "all" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (root / "training_data" / "fold_0" / "hem" / "notes.txt").write_text("scanned 2019")
    assert len(cnmc_splits(cnmc_cfg(root)).train) == 20


MANY_SUBJECTS = {
    0: ["1", "2", "3", "4", "H1", "H2"],
    1: ["5", "6", "7", "H3", "H4"],
    2: ["8", "9", "10", "H5", "h6"],
}


@pytest.mark.parametrize("fraction", [0.2, 0.5])
def test_subject_split_never_puts_a_subject_in_two_splits(tmp_path_factory, fraction):
    root = write_cnmc_tree(tmp_path_factory.mktemp("cnmc"), MANY_SUBJECTS, per_subject=2, size=16)
    seen = set()
    for seed in range(12):
        splits = cnmc_splits(cnmc_cfg(root, "data.split=subjects", f"data.val_fraction={fraction}",
                                      f"data.split_seed={seed}"))  # fmt: skip
        train, valid = subjects_of(splits.train), subjects_of(splits.valid)
        assert not train & valid and not (train | valid) & subjects_of(splits.test)
        assert train | valid == {s.upper() for fold in MANY_SUBJECTS.values() for s in fold}
        assert set(splits.train.labels) == {0, 1} and set(splits.valid.labels) == {0, 1}
        assert len(splits.train) + len(splits.valid) == 32
        seen.add(frozenset(valid))
    assert len(seen) > 3  # the seed changes the split
    again = cnmc_splits(cnmc_cfg(root, "data.split=subjects", f"data.val_fraction={fraction}", "data.split_seed=11"))
    assert subjects_of(again.valid) == set(valid)


def test_subject_split_takes_about_the_asked_share_of_images(tmp_path):
    folds = {0: [str(k) for k in range(1, 11)] + [f"H{k}" for k in range(1, 11)]}
    root = write_cnmc_tree(tmp_path, folds, per_subject=2, size=16, prelim=0)
    splits = cnmc_splits(cnmc_cfg(root, "data.split=subjects", "data.val_fraction=0.3"))
    assert splits.valid.class_counts() == {"normal": 6, "all": 6}


def test_a_subject_shared_between_folds_is_kept_out_of_training(tmp_path, caplog):
    root = write_cnmc_tree(tmp_path, {0: ["1", "2", "H1"], 1: ["3", "H2"], 2: ["1", "H3"]})
    splits = cnmc_splits(cnmc_cfg(root))
    assert "1" in subjects_of(splits.valid) and "1" not in subjects_of(splits.train)
    assert "1 subjects of fold_2 also appear in other folds (1): their 4 images there are left out" in caplog.text


@pytest.mark.parametrize(
    ("break_tree", "overrides", "message"),
    [
        (lambda root: shutil.rmtree(root), [], r"data.root=.*: no such folder; point data.root \(or paths.cnmc_root\)"),
        (lambda root: shutil.rmtree(root / "training_data"), [], r"no training_data/ or C-NMC_training_data/ folder"),
        (lambda root: [shutil.rmtree(p) for p in (root / "training_data").iterdir()], [], r"no fold_0/, fold_1/"),
        (lambda root: None, ["data.val_fold=5"], r"data.val_fold=5: .* has image folds \[0, 1, 2\]; pick one"),
        (
            lambda root: (root / "training_data/fold_1/all/IMG_0001.bmp").write_bytes(b"BM"),
            [],
            r"1 image names do not follow UID_<subject>_<image>_<cell>_<all\|hem> \(first: .*IMG_0001.bmp\)",
        ),
        (
            lambda root: shutil.copy(
                root / "training_data/fold_1/all/UID_3_1_1_all.bmp", root / "training_data/fold_1/hem"
            ),
            [],
            r"1 images sit in a class folder their name contradicts \(first: .*fold_1/hem/UID_3_1_1_all.bmp\)",
        ),
        (lambda root: (root / PRELIM_CSV).unlink(), [], r"C-NMC_test_prelim_phase_data: no C-NMC_test_prelim_phase"),
        (
            lambda root: pd.read_csv(root / PRELIM_CSV).drop(columns="labels").to_csv(root / PRELIM_CSV, index=False),
            [],
            r"labels.csv: missing column\(s\) \['labels'\]; found \['Patient_ID', 'new_names'\]",
        ),
        (
            lambda root: (
                pd.read_csv(root / PRELIM_CSV).replace({"labels": {0: "hem"}}).to_csv(root / PRELIM_CSV, index=False)
            ),
            [],
            r"'labels' must be 0 \(normal\) or 1 \(ALL\); 3 of 6 rows are not \(row 3 has 'hem', row 5 has 'hem', "
            r"row 7 has 'hem'\)",
        ),
        (
            lambda root: [(root / f"validation_data/C-NMC_test_prelim_phase_data/{k}.bmp").unlink() for k in (2, 5)],
            [],
            r"labels.csv: 2 of 6 image files do not exist \(first: .*/2.bmp, .*/5.bmp\); 'new_names' are read",
        ),
    ],
    ids=["root", "training", "folds", "val-fold", "name", "class-folder", "prelim-csv", "column", "labels", "files"],
)
def test_a_bad_tree_is_refused_naming_the_culprit(tmp_path, break_tree, overrides, message):
    root = write_cnmc_tree(tmp_path / "cnmc")
    break_tree(root)
    with pytest.raises(UserError, match=message):
        load_splits(cnmc_cfg(root, *overrides))


def test_split_options_are_checked_at_composition():
    with pytest.raises(Exception, match="data.split"):
        compose_config("data=cnmc", "data.split=random")


@pytest.mark.skipif(not (SHARED_DATA / "cnmc-sample").is_dir(), reason="real C-NMC sample not available")
def test_real_cells_in_a_published_tree(tmp_path):
    """The 11 real cells (original UID names, one lowercase h) laid out as the Kaggle download lays them out."""
    sample = SHARED_DATA / "cnmc-sample"
    fold_of = {"1": 0, "H6": 0, "78": 1, "H48": 1, "H3": 1, "57": 2, "H49": 2}
    for row in pd.read_csv(sample / "labels.csv").itertuples():
        folder = tmp_path / "training_data" / f"fold_{fold_of[row.subject]}" / ("all" if row.label else "hem")
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(sample / row.path, folder)
    splits = load_splits(cnmc_cfg(tmp_path))
    assert subjects_of(splits.valid) == {"57", "H49"} and subjects_of(splits.train) == {"1", "H6", "78", "H48", "H3"}
    table = pd.read_csv(sample / "labels.csv").set_index("subject")
    for manifest in (splits.train, splits.valid):
        for subject, label in zip(manifest.subjects, manifest.labels, strict=True):
            assert table.loc[[subject], "label"].iloc[0] == label
    assert splits.test is None


def test_a_symlink_loop_in_the_tree_is_left_out_of_the_walk_and_named_when_a_csv_lists_it(tmp_path, caplog):
    root = write_cnmc_tree(tmp_path)
    (root / "training_data" / "fold_0" / "all" / "UID_1_9_1_all.bmp").symlink_to("UID_1_9_1_all.bmp")
    splits = cnmc_splits(cnmc_cfg(root))  # the walk reads the tree's files, and warns of the loop
    assert "UID_1_9_1_all.bmp" not in {path.name for path in splits.train.paths}
    assert "1 image names are no file to read" in caplog.text
    prelim = root / "validation_data" / "C-NMC_test_prelim_phase_data"
    (prelim / "1.bmp").unlink()
    (prelim / "1.bmp").symlink_to("1.bmp")
    with pytest.raises(UserError, match=r"1 of 6 image files do not exist \(first: .*1.bmp\)"):
        cnmc_splits(cnmc_cfg(root))
