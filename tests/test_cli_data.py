"""The data features end to end through the real CLI and a real sqlite MLflow store: the published C-NMC
tree, the dataset summary and preview, class balancing, skipped images, clear failures."""

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from conftest import FAST, SHARED_DATA, run_cli, runs_of, write_cnmc_tree, write_lab_layout

pytestmark = pytest.mark.slow  # end-to-end: every test here runs the real CLI

SMALL = ("data.crop_size=36", "data.image_size=32", "data.batch_size=8", "data.num_workers=0", "trainer.progress=false")


def only_run(folder):
    client = MlflowClient(tracking_uri=f"sqlite:///{folder / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("leukemia").experiment_id])
    return client, run


def artifact_json(client, run, path, folder):
    return json.loads(Path(client.download_artifacts(run.info.run_id, path, str(folder))).read_text())


@pytest.fixture(scope="module")
def cnmc_run(tmp_path_factory):
    """A run on a small published-layout tree, subject-disjoint split, class-balanced sampling."""
    folder = tmp_path_factory.mktemp("cnmc-run")
    tree = write_cnmc_tree(folder / "C-NMC_Leukemia", per_subject=6)
    result = run_cli("data=cnmc", f"data.root={tree}", "data.split=subjects", "data.val_fraction=0.3",
                     "data.balance=sampler", "trainer.epochs=2", *SMALL, cwd=folder)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return folder, result, *only_run(folder)


def test_cnmc_run_finishes_with_a_subject_disjoint_summary(cnmc_run):
    folder, _, client, run = cnmc_run
    assert run.info.status == "FINISHED" and run.data.tags["data"] == "cnmc"
    summary = artifact_json(client, run, "data/summary.json", folder)
    subjects = {split: set(names) for split, names in summary["subjects"].items()}
    assert not subjects["train"] & subjects["valid"] and not subjects["test"] & (subjects["train"] | subjects["valid"])
    assert subjects["train"] | subjects["valid"] == {"1", "2", "3", "4", "5", "H1", "H2", "H3"}
    params = run.data.params
    for split in ("train", "valid", "test"):
        for key, value in summary["counts"][split].items():
            assert params[f"dataset.{split}.{key}"] == str(value)
    assert summary["counts"]["test"] == {"images": 6, "normal": 3, "all": 3, "subjects": 2}
    assert int(params["dataset.train.images"]) + int(params["dataset.valid.images"]) == 48
    assert params["data.balance"] == "sampler" and params["data.split"] == "subjects"


def test_cnmc_run_prints_the_summary_and_logs_a_training_preview(cnmc_run):
    folder, result, client, run = cnmc_run
    output = result.stdout + result.stderr
    header = next(line for line in output.splitlines() if line.split()[-5:] == ["split", "images", "normal", "all",
                                                                               "subjects"])  # fmt: skip
    assert header and "valid" in output.split(header)[1].splitlines()[2]
    listed = {item.path for item in client.list_artifacts(run.info.run_id, "figures")}
    assert "figures/train_samples.png" in listed
    png = client.download_artifacts(run.info.run_id, "figures/train_samples.png", str(folder))
    assert Path(png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and Path(png).stat().st_size > 10_000


def test_cnmc_run_diagnoses_its_validation_and_test_subjects(cnmc_run):
    folder, _, client, run = cnmc_run
    metrics = run.data.metrics
    tested = pd.read_csv(client.download_artifacts(run.info.run_id, "predictions.csv", str(folder)))
    subjects = pd.read_csv(
        client.download_artifacts(run.info.run_id, "subjects.csv", str(folder)), dtype={"subject": str}
    )
    assert subjects["subject"].tolist() == ["90", "H90"] and subjects["true_label"].tolist() == [1, 0]
    prelim = pd.read_csv(folder / "C-NMC_Leukemia/validation_data/C-NMC_test_prelim_phase_data_labels.csv")
    subject_of = ["90" if label else "H90" for label in prelim["labels"]]  # the prelim table names each cell's subject
    means = tested.assign(subject=subject_of).groupby("subject")["probability_all"].mean()
    assert subjects["mean_probability_all"].tolist() == pytest.approx(means.tolist())
    called = (means >= metrics["subject_threshold"]).astype(int).tolist()  # chosen on validation subjects
    assert run.data.tags["subject_threshold"].startswith(("chosen on", "the cell threshold"))
    assert metrics["test_subject_accuracy"] == pytest.approx(((called[0] == 1) + (called[1] == 0)) / 2)
    assert metrics["test_subjects"] == 2 and metrics["val_subjects"] >= 2
    valid = pd.read_csv(client.download_artifacts(run.info.run_id, "val_subjects.csv", str(folder)))
    assert len(valid) == metrics["val_subjects"] and valid["cells"].sum() == int(
        run.data.params["dataset.valid.images"]
    )
    per_class = valid.groupby("true_label").size()
    assert ("val_subject_roc_auc" in metrics) == (len(per_class) == 2 and per_class.min() >= 2)
    # One subject per class: no interval holds its level, and none is logged (cells are not resampled instead).
    assert run.data.tags["test_ci"].startswith("no intervals: 1 + 1 subjects (ALL + normal); at least 3 per class")
    assert not [key for key in metrics if key.startswith("test_") and "_ci_" in key and "subject" not in key]
    assert run.data.tags["test_subject_roc_auc"].startswith("absent: 1 ALL + 1 normal subjects")
    assert metrics["test_subject_tp"] + metrics["test_subject_fn"] == 1
    assert "test_calibration_slope" in metrics or run.data.tags["test_calibration_slope"].startswith("absent")
    assert run.data.tags["temperature_at_bound"].split(":")[0] in ("true", "false")


def test_skipped_images_are_warned_counted_and_listed_and_loss_weights_logged(tmp_path):
    root = write_lab_layout(tmp_path / "data", {"train": 24, "valid": 8})
    data = (root / "train" / "5.bmp").read_bytes()
    (root / "train" / "5.bmp").write_bytes(data[: len(data) // 2])
    edit = pd.read_csv(root / "train.csv")
    edit.loc[edit.index[:4], "label"] = 1  # 14 ALL, 10 normal
    edit.to_csv(root / "train.csv", index=False)
    result = run_cli(*FAST, f"data.root={root}", "trainer.epochs=2", "data.on_bad_image=skip",
                     "data.balance=loss", "data.num_workers=1", cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    assert output.count("skipped an unreadable image") == 1 and "train/5.bmp (image file is truncated" in output
    client, run = only_run(tmp_path)
    assert run.info.status == "FINISHED"
    history = client.get_metric_history(run.info.run_id, "skipped_images")
    assert [point.value for point in history] == [1, 1]
    listed = Path(client.download_artifacts(run.info.run_id, "data/skipped_images.txt", str(tmp_path))).read_text()
    assert listed.startswith(str(root / "train" / "5.bmp")) and "truncated" in listed
    assert float(run.data.params["balance.weight_normal"]) == pytest.approx(24 / (2 * 10))
    assert float(run.data.params["balance.weight_all"]) == pytest.approx(24 / (2 * 14))


@pytest.mark.parametrize(
    ("break_tree", "culprit"),
    [
        (lambda tree: shutil.rmtree(tree), "no such folder"),
        (lambda tree: (tree / "training_data/fold_0/all/scan 1.bmp").write_bytes(b"BM"), "scan 1.bmp"),
    ],
    ids=["root", "name"],
)
def test_a_bad_cnmc_tree_fails_in_one_line_before_any_run(tmp_path, break_tree, culprit):
    tree = write_cnmc_tree(tmp_path / "C-NMC_Leukemia", per_subject=1, size=8, prelim=0)
    break_tree(tree)
    result = run_cli("data=cnmc", f"data.root={tree}", *SMALL, cwd=tmp_path)
    assert result.returncode == 1
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("error: ") and culprit in last_line and str(tree) in last_line
    assert runs_of(tmp_path)[1] == []  # failed before any run was opened


@pytest.mark.skipif(not (SHARED_DATA / "cnmc-sample").is_dir(), reason="real C-NMC sample not available")
def test_real_cells_train_through_the_published_layout(tmp_path):
    sample = SHARED_DATA / "cnmc-sample"
    fold_of = {"1": 0, "H6": 0, "78": 1, "H48": 1, "H3": 1, "57": 2, "H49": 2}
    tree = tmp_path / "C-NMC_Leukemia"
    for row in pd.read_csv(sample / "labels.csv").itertuples():
        folder = tree / "training_data" / f"fold_{fold_of[row.subject]}" / ("all" if row.label else "hem")
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(sample / row.path, folder)
    result = run_cli("data=cnmc", f"data.root={tree}", "data.image_size=64", "data.num_workers=0",
                     "trainer.epochs=1", "trainer.progress=false", cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "no prelim test set found" in result.stdout + result.stderr
    client, run = only_run(tmp_path)
    assert run.info.status == "FINISHED"
    assert (run.data.params["dataset.train.subjects"], run.data.params["dataset.valid.subjects"]) == ("5", "2")
    assert "dataset.test.images" not in run.data.params


def test_demo_run_trains_end_to_end_with_subjects_in_its_summary(tmp_path):
    result = run_cli("data=demo", f"paths.cache_dir={tmp_path / 'cache'}", "data.subjects_all=4",
                     "data.subjects_normal=3", "data.images_per_subject=4", "data.source_size=48",
                     "data.crop_size=40", "trainer.epochs=1", *SMALL, cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    _, run = only_run(tmp_path)
    assert run.info.status == "FINISHED" and run.data.tags["data"] == "demo"
    params = run.data.params
    assert (params["dataset.train.subjects"], params["dataset.valid.subjects"]) == ("3", "2")
    assert (params["dataset.train.images"], params["dataset.test.images"]) == ("12", "8")


def edge_lab(folder: Path, change) -> Path:
    """A small lab set with test labels (all ALL: a test split of one class), changed by ``change(root)``."""
    root = write_lab_layout(folder / "lab", {"train": 32, "valid": 16, "test": 8})
    test = pd.read_csv(root / "resnet_18_test.csv")
    test.assign(label=1).to_csv(root / "test_labels.csv", index=False)
    change(root)
    return root


EDGE_CASES = {
    # an unreadable validation image under data.on_bad_image=skip: left out of every validation pass, calibration
    # included; the one-class test split gets its defined scores, the others absent with a reason
    "skip-valid-one-class-test": (lambda root: (root / "valid" / "3.bmp").write_bytes(b"broken"),
                                  ("data.on_bad_image=skip",), 0, ""),
    # the test split may skip nothing: found before training, not after it
    "unreadable-test": (lambda root: (root / "test" / "2.bmp").write_bytes(b"broken"), ("data.on_bad_image=skip",),
                        1, "test/2.bmp: cannot be read as an image"),
    "unreadable-test-no-cache": (lambda root: (root / "test" / "2.bmp").write_bytes(b"broken"),
                                 ("data.cache=none",), 1, "test/2.bmp: cannot be read as an image"),
    "balanced-one-class-valid": (
        lambda root: pd.read_csv(root / "valid.csv").assign(label=1).to_csv(root / "valid.csv", index=False),
        ("eval.threshold=balanced",), 1, "eval.threshold=balanced: the validation split holds one class only"),
}  # fmt: skip


@pytest.mark.parametrize("case", EDGE_CASES)
def test_awkward_splits_train_and_evaluate_or_are_refused_before_any_run(tmp_path, case):
    change, overrides, code, message = EDGE_CASES[case]
    root = edge_lab(tmp_path, change)
    result = run_cli(*FAST, f"data.root={root}", "data.test_labels_csv=test_labels.csv", "trainer.epochs=1",
                     f"paths.cache_dir={tmp_path / 'cache'}", *overrides, cwd=tmp_path)  # fmt: skip
    assert result.returncode == code, result.stderr[-3000:]
    assert "Traceback" not in result.stdout + result.stderr
    if code:
        last = result.stderr.strip().splitlines()[-1]
        assert last.startswith("error: ") and message in last, last
        assert runs_of(tmp_path)[1] == []  # refused before the run opened, before the first epoch
        return
    client, run = only_run(tmp_path)
    metrics, tags = run.data.metrics, run.data.tags
    assert run.info.status == "FINISHED" and metrics["test_accuracy"] >= 0 and metrics["test_sensitivity"] >= 0
    assert "test_roc_auc" not in metrics and tags["test_roc_auc"].startswith("absent: undefined")
    assert "test_specificity" not in metrics and "test_accuracy_normal" not in metrics  # no normal test cell
    assert all(value == value for value in metrics.values())  # no NaN logged as a number
    predictions = pd.read_csv(Path(tags["output_dir"]) / "predictions.csv", dtype={"ID": str})
    assert predictions["ID"].tolist() == pd.read_csv(root / "resnet_18_test.csv")["Path"].tolist()
