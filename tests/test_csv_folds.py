"""data=csv (a generic manifest of real image files) and K-fold cross-validation: the layout, its errors, the
fold assignment, and fold sweeps summarised by task=plot, through the real CLI and store."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from leukemia.data.decoding import decoding
from leukemia.data.layouts import load_splits
from leukemia.data.manifest import Manifest
from leukemia.data.splitting import fold_assignment, split_fold
from leukemia.errors import UserError

from conftest import SHARED_DATA, compose_config, run_cli, runs_of, separable_cell


def write_manifest(root: Path, rows: list[dict], size=(40, 40), seed: int = 0) -> Path:
    """Images under ``root/cells`` and ``root/labels.csv`` listing them (paths relative to the CSV)."""
    rng = np.random.default_rng(seed)
    (root / "cells").mkdir(parents=True, exist_ok=True)
    for index, row in enumerate(rows):
        label = int(row["label"]) if pd.notna(row.get("label")) else index % 2
        cell = separable_cell(rng, max(size), label)[: size[1], : size[0]]
        row["path"] = f"cells/{index}.png"
        Image.fromarray(cell).save(root / row["path"])
    pd.DataFrame(rows).to_csv(root / "labels.csv", index=False)
    return root


def csv_cfg(root: Path, *overrides: str):
    return compose_config("data=csv", f"data.root={root}", *overrides).data


def pool_rows(count: int, subjects: int | None = None) -> list[dict]:
    rows = [{"label": index % 2} for index in range(count)]
    if subjects:
        for index, row in enumerate(rows):  # subjects hold one class each, as patients do
            row["subject"] = f"{'A' if row['label'] else 'H'}{(index // 2) % subjects}"
    return rows


def test_a_manifest_with_a_split_column_gives_its_splits_and_an_unlabelled_test(tmp_path):
    rows = [{"label": i % 2, "split": "train"} for i in range(8)] + [
        {"label": i % 2, "split": "valid"} for i in range(4)
    ]
    rows += [{"label": None, "split": "test"} for _ in range(3)]
    root = write_manifest(tmp_path, rows)
    splits = load_splits(csv_cfg(root))
    assert (len(splits.train), len(splits.valid), len(splits.test)) == (8, 4, 3)
    assert splits.test.labels is None
    assert splits.test.identifiers() == ["cells/12.png", "cells/13.png", "cells/14.png"]  # as the CSV writes them
    assert all(path.is_absolute() and path.is_file() for path in splits.train.paths)


def test_without_a_split_column_fold_0_of_5_validates(tmp_path):
    root = write_manifest(tmp_path, pool_rows(20))
    splits = load_splits(csv_cfg(root))
    assert (len(splits.train), len(splits.valid), splits.test) == (16, 4, None)
    assert Counter(splits.valid.labels) == {0: 2, 1: 2}


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda t: t.assign(split=["train"] * (len(t) - 1) + ["tset"]), r"'split' must be train, valid, test or empty"),
        (lambda t: t.assign(label=[0, 1] * (len(t) // 2 - 1) + [0, 2]), r"'label' must be 0 \(normal\) or 1 \(ALL\)"),
        (lambda t: t.assign(path=[*t.path[:-1], "cells/gone.png"]), r"1 of 10 image files do not exist"),
        (lambda t: t.assign(subject=["s1"] * (len(t) - 1) + [None]), r"'subject' is blank in 1 of 10 rows \(row 11\)"),
        (lambda t: t.drop(columns=["label"]), r"missing column\(s\) \['label'\]"),
    ],
    ids=["split", "label", "missing-file", "subject-blank", "no-label-column"],
)
def test_a_bad_manifest_is_refused_in_one_line_naming_the_file(tmp_path, change, message):
    root = write_manifest(tmp_path, pool_rows(10))
    table = pd.read_csv(root / "labels.csv")
    change(table).to_csv(root / "labels.csv", index=False)
    with pytest.raises(UserError, match=message) as error:
        load_splits(csv_cfg(root))
    assert "labels.csv" in str(error.value) and "\n" not in str(error.value)


def test_a_missing_root_names_the_key(tmp_path):
    with pytest.raises(UserError, match=r"data.root=.*nowhere: no such folder; point data.root \(or paths.csv_root\)"):
        load_splits(csv_cfg(tmp_path / "nowhere"))


def test_folds_are_stratified_cover_the_pool_once_and_follow_the_seed():
    pool = Manifest("train", [Path(f"/x/{i}.png") for i in range(53)], [int(i % 3 == 0) for i in range(53)])
    folds = fold_assignment(pool, 5, seed=42)
    assert folds == fold_assignment(pool, 5, seed=42)
    assert folds != fold_assignment(pool, 5, seed=1)
    for label in (0, 1):
        per_fold = Counter(f for f, y in zip(folds, pool.labels, strict=True) if y == label)
        assert max(per_fold.values()) - min(per_fold.values()) <= 1  # each class spread evenly
    valid_sets = [set(split_fold(pool, 5, fold, 42)[1].paths) for fold in range(5)]
    assert sum(len(s) for s in valid_sets) == 53 and set().union(*valid_sets) == set(pool.paths)


def test_folds_keep_each_subject_whole():
    rows = pool_rows(60, subjects=6)
    pool = Manifest("train", [Path(f"/x/{i}.png") for i in range(60)], [r["label"] for r in rows],
                    [r["subject"] for r in rows])  # fmt: skip
    folds = fold_assignment(pool, 3, seed=0)
    fold_of_subject: dict[str, set[int]] = {}
    for subject, fold in zip(pool.subjects, folds, strict=True):
        fold_of_subject.setdefault(subject, set()).add(fold)
    assert all(len(f) == 1 for f in fold_of_subject.values())
    assert set(folds) == {0, 1, 2}


def test_too_many_folds_or_a_fold_out_of_range_is_refused():
    rows = pool_rows(12, subjects=2)
    pool = Manifest("train", [Path(f"/x/{i}.png") for i in range(12)], [r["label"] for r in rows],
                    [r["subject"] for r in rows], "labels.csv")  # fmt: skip
    with pytest.raises(UserError, match=r"data.folds=3: labels.csv has 2 'normal' subjects .* data.folds=2 or fewer"):
        split_fold(pool, 3, 0, 0)
    with pytest.raises(UserError, match=r"data.fold=2: must be one of 0 … 1 \(data.folds=2\)"):
        split_fold(pool, 2, 2, 0)


def test_folds_apply_to_the_lab_layout_pool_too(tiny_lab):
    cfg = compose_config("data=lab", f"data.root={tiny_lab}", "data.folds=4", "data.fold=3").data
    splits = load_splits(cfg)
    assert (len(splits.train), len(splits.valid)) == (72, 24)  # 64 train + 32 valid, a quarter validates


def test_without_a_crop_a_wide_image_is_padded_to_a_black_square():
    wide = np.full((20, 60, 3), 200, np.uint8)  # 60 wide, 20 high
    pixels = decoding(None, 30)(Image.fromarray(wide)).numpy()
    assert pixels.shape == (3, 30, 30)
    assert (pixels[:, :9] == 0).all() and (pixels[:, -9:] == 0).all()  # black above and below
    assert (pixels[:, 12:18] == 200).all()  # the image itself in the middle band


@pytest.mark.slow
def test_a_fold_sweep_tags_its_runs_and_plot_reports_the_mean_over_folds(tmp_path):
    root = write_manifest(tmp_path / "data", pool_rows(24), size=(44, 36))  # not square: padded
    sweep = run_cli("-m", "data=csv", f"data.root={root}", "data.image_size=32", "data.batch_size=8",
                    "data.folds=2", "data.fold=0,1", "trainer.epochs=3", "trainer.progress=false",
                    "scheduler=cosine", "scheduler.warmup_epochs=1", "trainer.label_smoothing=0.1",
                    "optim.lr=0.01", cwd=tmp_path)  # fmt: skip
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    client, runs = runs_of(tmp_path)
    assert sorted((run.data.tags["fold"], run.data.tags["folds"]) for run in runs) == [("0", "2"), ("1", "2")]
    for run in runs:
        assert run.info.run_name.endswith(f"-fold{run.data.tags['fold']}-job{run.data.tags['sweep_job']}")
        last = {key: client.get_metric_history(run.info.run_id, key)[-1] for key in ("val_accuracy", "val_loss")}
        assert all(point.step == 3 for point in last.values())
        assert run.data.metrics["final_val_accuracy"] == last["val_accuracy"].value
        lr = [p.value for p in sorted(client.get_metric_history(run.info.run_id, "lr"), key=lambda p: p.step)]
        assert lr == pytest.approx([0.005, 0.01, 0.005])  # warm-up from lr/2, then the cosine over 2 epochs
        assert run.data.params["dataset.valid.images"] == "12"

    report = run_cli("task=plot", cwd=tmp_path)
    assert report.returncode == 0, report.stderr[-3000:]
    (folder,) = {Path(line.split("report in ", 1)[1].split(" and MLflow run", 1)[0])
                 for line in (report.stdout + report.stderr).splitlines() if "report in " in line}  # fmt: skip
    table = pd.read_csv(folder / "cv_summary.csv")
    finals = [run.data.metrics["final_val_accuracy"] for run in runs]
    assert table["folds"].tolist() == [2]
    assert table["val_accuracy_mean"][0] == pytest.approx(np.mean(finals))
    assert table["val_accuracy_std"][0] == pytest.approx(np.std(finals, ddof=1))
    assert table["val_accuracy_min"][0] == pytest.approx(min(finals))
    assert "±" in (folder / "cv_summary.md").read_text()
    reports = [r for r in client.search_runs([runs[0].info.experiment_id]) if r.data.tags.get("kind") == "plot"]
    assert reports[0].data.metrics["cv_val_accuracy_mean"] == pytest.approx(np.mean(finals))


@pytest.mark.skipif(not (SHARED_DATA / "allidb2-sample").is_dir(), reason="real ALL-IDB2 sample not available")
def test_real_allidb2_cells_read_as_a_csv_manifest_in_two_folds():
    cfg = compose_config("data=csv", f"data.root={SHARED_DATA / 'allidb2-sample'}", "data.folds=2", "data.fold=1")
    splits = load_splits(cfg.data)
    assert (len(splits.train), len(splits.valid)) == (130, 130)
    assert Counter(splits.valid.labels) == {0: 65, 1: 65}
    assert splits.train.subjects is None  # the sample's subject column is empty


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED_DATA / "allidb2-sample").is_dir(), reason="real ALL-IDB2 sample not available")
def test_the_allidb2_recipe_learns_real_cells_in_two_short_folds(tmp_path):
    """The experiment's settings on the real sample, shortened: 2 folds of 130, 8 epochs at 64 px. A short run
    needs a lower peak rate than the recipe's 0.05 (see docs/RESULTS.md)."""
    sample = SHARED_DATA / "allidb2-sample"
    short = ("data.folds=2", "data.fold=0,1", "trainer.epochs=8", "data.image_size=64", "optim.lr=0.002",
             "scheduler.warmup_epochs=0")  # fmt: skip
    result = run_cli("-m", "experiment=allidb2_cv", f"data.root={sample}", *short, "trainer.progress=false",
                     f"paths.cache_dir={tmp_path}", cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    _, runs = runs_of(tmp_path)
    assert sorted(run.data.tags["fold"] for run in runs) == ["0", "1"]
    assert all(run.info.status == "FINISHED" and run.data.params["dataset.valid.images"] == "130" for run in runs)
    finals = [run.data.metrics["final_val_accuracy"] for run in runs]
    assert np.mean(finals) >= 0.65, finals  # chance is 0.5; measured 0.74 (0.81, 0.67)
