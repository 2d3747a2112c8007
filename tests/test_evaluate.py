"""Evaluation and reports end to end: the submission a training run writes, task=eval by run id or weights
file, task=plot over a sweep; through the real CLI and a real sqlite MLflow store."""

import json
import shutil
import signal
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from sklearn import metrics as reference
from torchvision_reference import preprocessing

from leukemia.models import build_model

from conftest import FAST, client_for, run_cli, run_clis, signal_after, start, write_lab_layout

pytestmark = pytest.mark.slow  # end-to-end: every test here runs the real CLI

EPOCHS = 3


def runs_by_kind(folder, kind):
    client = client_for(folder)
    experiment = client.get_experiment_by_name("leukemia")
    return [run for run in client.search_runs([experiment.experiment_id]) if run.data.tags.get("kind") == kind]


def csv_artifact(client, run, name, folder):
    return pd.read_csv(client.download_artifacts(run.info.run_id, name, str(folder)))


def output_dir_of(run):
    return Path(run.data.tags["output_dir"])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A lab set whose test CSV has no labels (as the course's Kaggle CSVs), with the labels kept aside, and
    one training run on it."""
    folder = tmp_path_factory.mktemp("eval")
    root = write_lab_layout(folder / "lab", {"train": 48, "valid": 16, "test": 12})
    test = pd.read_csv(root / "resnet_18_test.csv")
    test.assign(label=[index % 2 for index in range(len(test))]).to_csv(root / "test_labels.csv", index=False)
    result = run_cli(*FAST, f"data.root={root}", f"trainer.epochs={EPOCHS}", "optim=adam", cwd=folder)
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = runs_by_kind(folder, "train")
    return folder, root, run


def test_training_ends_with_a_submission_in_the_test_csv_order(trained, tmp_path):
    folder, root, run = trained
    client = client_for(folder)
    submission = csv_artifact(client, run, "submission.csv", tmp_path)
    test_csv = pd.read_csv(root / "resnet_18_test.csv")
    assert list(submission.columns) == ["ID", "label"]
    assert submission.ID.tolist() == test_csv.Path.tolist()  # exactly the Path strings, same rows, same order
    assert set(submission.label) <= {0, 1}
    written = pd.read_csv(output_dir_of(run) / "submission.csv")
    assert written.equals(submission)
    assert not any(key.startswith("test_") for key in run.data.metrics)  # no labels: predictions only


def predict_directly(weights, root, flips=False, csv="resnet_18_test.csv", both=False):
    """Probabilities of class 1 (``both``: of both classes) for the images of a CSV, computed here from the
    weights file alone."""
    model = build_model(18, 2)
    model.load_state_dict(torch.load(weights, weights_only=True))
    model.eval()
    transform = preprocessing(36, 32, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    paths = pd.read_csv(root / csv).Path
    images = torch.stack([transform(Image.open(root / path).convert("RGB")) for path in paths])
    views = [images, images.flip(-1), images.flip(-2), images.flip(-2, -1)] if flips else [images]
    with torch.no_grad():
        probabilities = torch.stack([model(view).softmax(dim=1) for view in views]).mean(dim=0)
    return probabilities.numpy() if both else probabilities[:, 1].numpy()


def scaled(probabilities, temperature):
    """Softmax of the log-probabilities divided by the temperature, in torch."""
    return torch.softmax(torch.log(torch.as_tensor(probabilities, dtype=torch.float64)) / temperature, dim=1).numpy()


def nll(probabilities, targets, temperature):
    return float(torch.nn.functional.nll_loss(torch.log(torch.as_tensor(scaled(probabilities, temperature))),
                                              torch.as_tensor(targets)))  # fmt: skip


def ece_directly(probabilities, targets):
    """Guo et al.'s ECE with 15 equal-width bins of top-class confidence, as a plain loop."""
    total = 0.0
    for k in range(15):
        inside = [
            i for i, p in enumerate(probabilities) if k / 15 <= p.max() < (k + 1) / 15 or (k == 14 and p.max() == 1)
        ]
        if inside:
            confidence = np.mean([probabilities[i].max() for i in inside])
            accuracy = np.mean([probabilities[i].argmax() == targets[i] for i in inside])
            total += len(inside) / len(probabilities) * abs(accuracy - confidence)
    return total


@pytest.mark.parametrize("tta", ["none", "flips"])
def test_eval_by_run_id_logs_a_child_run_whose_metrics_match_a_direct_computation(trained, tmp_path, tta):
    folder, root, run = trained
    result = run_cli("task=eval", f"run_id={run.info.run_id}", "data.test_labels_csv=test_labels.csv",
                     f"eval.tta={tta}", "trainer.progress=false", cwd=folder)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    client = client_for(folder)
    (child,) = [r for r in runs_by_kind(folder, "eval") if r.data.params["eval.tta"] == tta]
    assert child.info.status == "FINISHED" and child.info.run_name == f"{run.info.run_name}-eval"
    assert child.data.tags["mlflow.parentRunId"] == run.info.run_id
    weights = client.download_artifacts(run.info.run_id, "weights/best.pt", str(tmp_path))
    raw = predict_directly(weights, root, flips=tta == "flips", both=True)
    truth = np.array([index % 2 for index in range(12)])
    metrics = child.data.metrics
    # The temperature fitted on validation is the best one of a fine grid; labels at 0.5 are the uncalibrated ones.
    valid = pd.read_csv(root / "valid.csv")
    valid_raw = predict_directly(weights, root, flips=tta == "flips", csv="valid.csv", both=True)
    grid = min(nll(valid_raw, valid.label, t) for t in np.exp(np.linspace(np.log(0.05), np.log(20), 2001)))
    assert nll(valid_raw, valid.label, metrics["temperature"]) <= grid + 1e-6
    probability = scaled(raw, metrics["temperature"])[:, 1]
    predicted = (probability >= 0.5).astype(int)
    assert metrics["threshold"] == 0.5 and predicted.tolist() == (raw[:, 1] >= 0.5).astype(int).tolist()
    assert metrics["test_ece"] == pytest.approx(ece_directly(raw, truth), abs=1e-6)
    assert metrics["test_ece_calibrated"] == pytest.approx(ece_directly(scaled(raw, metrics["temperature"]), truth),
                                                           abs=1e-6)  # fmt: skip
    assert metrics["test_brier"] == pytest.approx(reference.brier_score_loss(truth, raw[:, 1]), abs=1e-6)
    for key in ("accuracy", "balanced_accuracy", "f1_weighted", "roc_auc", "sensitivity", "specificity"):
        if f"test_{key}_ci_low" in metrics:  # none where every draw gives the same value (a perfect score)
            assert metrics[f"test_{key}_ci_low"] <= metrics[f"test_{key}"] <= metrics[f"test_{key}_ci_high"]
    # This layout names no subjects: cells are resampled, and the tag says what that assumes.
    assert child.data.tags["test_ci"].startswith("95% bootstrap-t, 1000 draws of 6 + 6 cells (ALL + normal)")
    assert (
        child.data.tags["test_ci"].endswith("cells assumed independent (no subjects known)")
        or "none for" in child.data.tags["test_ci"]
    )
    assert metrics["test_accuracy"] == pytest.approx(reference.accuracy_score(truth, predicted))
    assert metrics["test_balanced_accuracy"] == pytest.approx(reference.balanced_accuracy_score(truth, predicted))
    assert metrics["test_f1_weighted"] == pytest.approx(reference.f1_score(truth, predicted, average="weighted"))
    assert metrics["test_roc_auc"] == pytest.approx(reference.roc_auc_score(truth, probability), abs=1e-6)
    assert metrics["test_accuracy_normal"] == pytest.approx(reference.recall_score(truth, predicted, pos_label=0))
    submission = csv_artifact(client, child, "submission.csv", tmp_path)
    assert submission.ID.tolist() == pd.read_csv(root / "resnet_18_test.csv").Path.tolist()
    assert submission.label.tolist() == predicted.tolist()
    details = csv_artifact(client, child, "predictions.csv", tmp_path)
    assert np.allclose(details.probability_all, probability, atol=1e-5)
    listed = {item.path for item in client.list_artifacts(child.info.run_id, "figures")}
    figures = ("test_confusion_matrix", "test_roc", "test_pr", "test_reliability", "val_reliability", "gradcam")
    assert {f"figures/{name}.png" for name in figures} <= listed
    assert client.get_run(run.info.run_id).info.status == "FINISHED"  # the training run is left as it was


def test_eval_of_a_weights_file_uses_the_command_line_config(trained, tmp_path):
    folder, root, run = trained
    weights = client_for(folder).download_artifacts(run.info.run_id, "weights/best.pt", str(tmp_path))
    result = run_cli("task=eval", f"weights={weights}", *FAST, f"data.root={root}", cwd=folder)
    assert result.returncode == 0, result.stderr[-3000:]
    (evaluation,) = [r for r in runs_by_kind(folder, "eval") if r.info.run_name == "eval-best"]
    assert "mlflow.parentRunId" not in evaluation.data.tags
    written = pd.read_csv(output_dir_of(evaluation) / "submission.csv")
    assert written.label.tolist() == (predict_directly(weights, root) >= 0.5).astype(int).tolist()


def last_line(result):
    return result.stderr.strip().splitlines()[-1]


def test_bad_eval_requests_fail_in_one_line_naming_the_culprit(trained, tmp_path):
    folder, root, run = trained
    run_id = run.info.run_id
    weights = client_for(folder).download_artifacts(run_id, "weights/best.pt", str(tmp_path))
    broken = tmp_path / "broken-lab"
    shutil.copytree(root, broken)
    (broken / "test" / "4.bmp").unlink()
    cases = [
        (["run_id=0123456789abcdef"], "run_id=0123456789abcdef: no such run in sqlite:///mlflow.db"),
        ([], "task=eval needs exactly one of run_id=<MLflow run id> or weights=<state_dict file>"),
        ([f"weights={weights}", *FAST, f"data.root={root}", "model=resnet50"], "does not fit resnet50 with 2 classes"),
        ([f"weights={weights}", *FAST, f"data.root={root}", "model.num_classes=3"], "the file's head has 2"),
        ([f"weights={tmp_path / 'none.pt'}"], f"weights={tmp_path / 'none.pt'}: no such file"),
        ([f"run_id={run_id}", f"data.root={broken}"], "resnet_18_test.csv: 1 of 12 image files do not exist"),
        ([f"run_id={run_id}", "model=resnet50"], "model=resnet50: task=eval keeps the evaluated run's config groups"),
    ]
    before = len(runs_by_kind(folder, "eval"))
    results = run_clis([("task=eval", *arguments) for arguments, _ in cases], cwd=folder)
    for (arguments, message), result in zip(cases, results, strict=True):
        assert result.returncode == 1, (arguments, result.stderr[-2000:])
        assert last_line(result).startswith("error: ") and message in last_line(result), arguments
    assert len(runs_by_kind(folder, "eval")) == before  # none of these opened a run


def test_a_run_without_weights_is_named(tmp_path):
    root = write_lab_layout(tmp_path / "data", {"train": 8, "valid": 4})
    (root / "valid" / "3.bmp").write_bytes(b"BM truncated")  # fails the run in its first validation
    crashed = run_cli(
        *FAST, f"data.root={root}", "trainer.epochs=1", "run_name=crashed", "data.cache=none", cwd=tmp_path
    )  # decoding per image meets the file mid-run
    assert crashed.returncode == 1
    (failed,) = runs_by_kind(tmp_path, "train")
    result = run_cli("task=eval", f"run_id={failed.info.run_id}", cwd=tmp_path)
    assert result.returncode == 1
    assert f"run {failed.info.run_id} (crashed, FAILED) has no weights/best.pt" in last_line(result)


def test_a_demo_run_diagnoses_subjects_at_a_balanced_threshold_with_subject_intervals(tmp_path):
    demo = ("data=demo", "data.subjects_all=15", "data.subjects_normal=15", "data.images_per_subject=8",
            "data.image_size=32", f"paths.cache_dir={tmp_path / 'cache'}")  # fmt: skip
    result = run_cli(*demo, "trainer.epochs=2", "trainer.progress=false", "eval.threshold=balanced",
                     "eval.bootstrap=200", cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = runs_by_kind(tmp_path, "train")
    client, metrics = client_for(tmp_path), run.data.metrics
    assert run.data.params["eval.threshold"] == "balanced" and 0 < metrics["threshold"] < 1
    cells = csv_artifact(client, run, "predictions.csv", tmp_path)
    assert cells.label.tolist() == (cells.probability_all >= metrics["threshold"]).astype(int).tolist()
    truth = pd.read_csv(next((tmp_path / "cache").glob("demo-v1/*/test_labels.csv")))
    assert cells.subject.astype(str).tolist() == truth.subject.astype(str).tolist()  # each cell's subject logged
    cells["subject"] = cells.subject.astype(str)
    expected = cells.groupby("subject").agg(cells=("label", "size"), fraction_all=("label", "mean"),
                                            mean_probability_all=("probability_all", "mean"))  # fmt: skip
    subjects = csv_artifact(client, run, "subjects.csv", tmp_path).astype({"subject": str}).set_index("subject")
    assert subjects.index.tolist() == sorted(truth.subject.astype(str).unique()) and len(subjects) == 6
    assert subjects.cells.tolist() == expected.cells.tolist()
    assert subjects.fraction_all.tolist() == pytest.approx(expected.fraction_all.tolist())
    assert subjects.mean_probability_all.tolist() == pytest.approx(expected.mean_probability_all.tolist())
    assert run.data.tags["subject_threshold"].startswith("chosen on 3 ALL + 3 normal validation subjects")
    valid = csv_artifact(client, run, "val_subjects.csv", tmp_path)
    best = reference.balanced_accuracy_score(
        valid.true_label, valid.mean_probability_all >= metrics["subject_threshold"]
    )
    assert best == max(reference.balanced_accuracy_score(valid.true_label, valid.mean_probability_all >= t)
                       for t in valid.mean_probability_all)  # fmt: skip
    called = (expected.mean_probability_all >= metrics["subject_threshold"]).astype(int)
    assert subjects.predicted_label.tolist() == called.tolist()
    true_of = truth.groupby(truth.subject.astype(str)).label.first()
    assert metrics["test_subject_accuracy"] == pytest.approx(reference.accuracy_score(true_of, called))
    assert metrics["test_subject_balanced_accuracy"] == pytest.approx(
        reference.balanced_accuracy_score(true_of, called)
    )
    assert metrics["val_subjects"] == 6 and "val_subject_accuracy" in metrics
    assert run.data.tags["test_ci"] == "95% bootstrap-t, 200 draws of 3 + 3 subjects (ALL + normal)" or run.data.tags[
        "test_ci"
    ].startswith("95% bootstrap-t, 200 draws of 3 + 3 subjects (ALL + normal); none for")
    assert (
        metrics["test_balanced_accuracy_ci_low"] <= metrics["test_balanced_accuracy"]
        or "balanced_accuracy" in run.data.tags["test_ci"]
    )
    assert "test_subject_roc_auc" in metrics  # 3 + 3 subjects
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    model = Path(mlflow.artifacts.download_artifacts(f"runs:/{run.info.run_id}/model", dst_path=str(tmp_path / "m")))
    spec = json.loads((model / "artifacts" / "preprocessing.json").read_text())
    assert spec["temperature"] == pytest.approx(metrics["temperature"]) and spec["threshold"] == metrics["threshold"]
    gradcam = Image.open(client.download_artifacts(run.info.run_id, "figures/gradcam.png", str(tmp_path)))
    assert gradcam.size == (1000, 560)  # two classes, four panels each


def test_plot_compares_the_latest_sweep_in_figures_tables_and_a_plot_run(tiny_lab, tmp_path):
    test = pd.read_csv(tiny_lab / "resnet_18_test.csv")
    test.assign(label=[index % 2 for index in range(len(test))]).to_csv(tmp_path / "test_labels.csv", index=False)
    sweep = run_cli("-m", *FAST, f"data.root={tiny_lab}", "trainer.epochs=2", "optim.lr=0.01,0.001",
                    f"data.test_labels_csv={tmp_path / 'test_labels.csv'}", cwd=tmp_path)  # fmt: skip
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    result = run_cli("task=plot", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    (report,) = runs_by_kind(tmp_path, "plot")
    trained = runs_by_kind(tmp_path, "train")
    assert report.info.status == "FINISHED" and set(report.data.tags["compared_runs"].split()) == {
        run.info.run_id for run in trained
    }
    folder = output_dir_of(report)
    for name in ("comparison_accuracy.png", "comparison_loss.png", "confusion_matrices.png"):
        assert (folder / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    listed = {item.path for item in client_for(tmp_path).list_artifacts(report.info.run_id, "plot")}
    assert {"plot/comparison_accuracy.png", "plot/summary.csv", "plot/summary.md"} <= listed
    table = pd.read_csv(folder / "summary.csv")
    assert sorted(table.run_id) == sorted(run.info.run_id for run in trained)
    assert sorted(table["optim.lr"]) == [0.001, 0.01]
    by_id = {run.info.run_id: run for run in trained}
    for row in table.itertuples():
        assert row.best_val_accuracy == pytest.approx(by_id[row.run_id].data.metrics["best_val_accuracy"])
    # The reference is the best on validation; each other run's difference from it is paired on the same cells.
    reference = max(trained, key=lambda run: run.data.metrics["best_val_f1_weighted"])
    markdown = (folder / "summary.md").read_text().splitlines()
    assert markdown[0].startswith(f"Reference: **{reference.info.run_name}** (`{reference.info.run_id}`), the best "
                                  f"by best_val_f1_weighted") and "never by a test score" in markdown[0]  # fmt: skip
    assert markdown[2].startswith("| run | run_id |") and len(markdown) == 6
    verdicts = dict(zip(table.run_id, table.verdict.fillna(""), strict=True))
    other = next(run.info.run_id for run in trained if run.info.run_id != reference.info.run_id)
    assert verdicts[reference.info.run_id] == "reference"
    # 8 test cells, no subjects: cells are resampled; a difference every draw gives alike has no interval.
    assert verdicts[other] in ("better", "worse", "not distinguishable", "")
    paired = table.set_index("run_id").loc[other]
    test_scores = {run.info.run_id: run.data.metrics["test_f1_weighted"] for run in trained}
    assert paired.f1_weighted_difference == pytest.approx(test_scores[other] - test_scores[reference.info.run_id])
    if verdicts[other]:
        assert report.data.metrics[f"paired_{other}_f1_weighted_log_odds_ratio_ci_low"] == pytest.approx(
            paired.f1_weighted_log_odds_ratio_ci_low
        )
    chosen = run_cli("task=plot", f"plot.runs=[{trained[0].info.run_id}]", cwd=tmp_path)
    assert chosen.returncode == 0, chosen.stderr[-3000:]
    assert len(runs_by_kind(tmp_path, "plot")) == 2


def test_plot_without_a_sweep_says_what_to_do(tmp_path):
    result = run_cli("task=plot", cwd=tmp_path)
    assert result.returncode == 1
    assert "no sweep runs in sqlite:///mlflow.db; run a sweep" in last_line(result)


def test_a_stopped_evaluation_ends_its_run_killed_with_exit_143(trained, tmp_path):
    folder, _, run = trained
    many = write_lab_layout(tmp_path / "many", {"train": 4, "valid": 4, "test": 3000})
    process = start(("task=eval", f"run_id={run.info.run_id}", f"data.root={many}", "eval.tta=flips"), folder)
    output = signal_after(process, signal.SIGTERM, marker="evaluation run ")
    assert process.returncode == 143, output[-3000:]
    assert "stopped by SIGTERM" in output and "Traceback" not in output
    child = output.split("evaluation run ", 1)[1].split(" ", 1)[0]
    assert client_for(folder).get_run(child).info.status == "KILLED"
