"""Legitimate but awkward test and validation splits (one class, one subject, one cell) end in absent metrics
with a reason, never a traceback and never a NaN logged as a number; the rows of every evaluation table are
the split's own, in its order."""

from __future__ import annotations

import math

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from leukemia.evaluation import report as reports
from leukemia.evaluation.bootstrap import bootstrap_intervals
from leukemia.evaluation.decision import Decision
from leukemia.evaluation.metrics import classification_metrics
from leukemia.evaluation.report import Scored, validation_report
from leukemia.tracking.runs import UNDEFINED, tracked_run
from leukemia.tracking.schema import TrackingConfig
from leukemia.training.engine import Predictions

RNG = np.random.default_rng(0)


def log_probabilities(count: int) -> np.ndarray:
    probability = RNG.uniform(0.05, 0.95, count)
    return np.log(np.stack([1 - probability, probability], axis=1))


SPLITS = {
    "one class": (np.ones(12, dtype=np.int64), None),
    "one class, three subjects": (np.ones(12, dtype=np.int64), [str(i % 3) for i in range(12)]),
    "one subject": (np.array([0, 1] * 6), ["P7"] * 12),
    "one cell": (np.array([1]), None),
    "one normal cell with its subject": (np.array([0]), ["007"]),
}


@pytest.mark.parametrize("split", SPLITS)
def test_a_test_split_of_one_class_subject_or_cell_is_reported_without_a_traceback(split, tmp_path):
    targets, subjects = SPLITS[split]
    scored = Scored("test", "run", "test", log_probabilities(len(targets)), targets, subjects)
    report = reports.test_report(scored, Decision(), [f"{k}.bmp" for k in range(len(targets))], "none", 200, 0)
    assert report.tables["predictions.csv"]["ID"].tolist() == [f"{k}.bmp" for k in range(len(targets))]
    assert "no intervals" in report.tags["test_ci"]  # too few subjects or cells of a class for one to hold
    undefined = {key for key, value in report.metrics.items() if not math.isfinite(value)}
    if len(np.unique(targets)) == 1:
        assert "test_roc_auc" in undefined
        absent = "test_specificity" if targets[0] == 1 else "test_sensitivity"
        assert absent not in report.metrics  # a recall of a class the split lacks: undefined, not 0
        assert ("test_accuracy_normal" if targets[0] == 1 else "test_accuracy_all") not in report.metrics
    folder = tmp_path / "store"
    folder.mkdir()
    track = TrackingConfig(f"sqlite:///{folder / 'mlflow.db'}", "edges", "http://ui", system_metrics_s=None)
    with tracked_run(track, split, {}) as run:
        run.log_report(report)
    logged = MlflowClient(tracking_uri=track.uri).get_run(run.id).data
    assert all(math.isfinite(value) for value in logged.metrics.values())
    assert {key for key in undefined if logged.tags.get(key) == UNDEFINED} == undefined and undefined.isdisjoint(
        logged.metrics
    )  # fmt: skip


def test_a_validation_split_of_one_class_fits_its_decision_with_absent_scores():
    decision, report = validation_report(Scored("val", "run", "valid", log_probabilities(5), np.ones(5, int)), "0.5")
    assert decision.threshold == 0.5 and "val_average_precision" in report.metrics
    assert not math.isfinite(report.metrics["val_average_precision"])


def test_the_interval_of_a_one_class_split_is_absent_with_its_reason():
    found = bootstrap_intervals(np.ones(6, int), [np.linspace(0.2, 0.9, 6)], [0.5], None, 200)
    assert found.design.reason and all(np.isnan(low) for low, _ in found.bounds.values())


def test_a_class_the_split_lacks_has_no_recall_and_a_class_it_holds_has_its_own():
    assert "accuracy_normal" not in classification_metrics(np.array([[0, 0], [3, 5]]))
    assert classification_metrics(np.array([[0, 4], [0, 5]]))["accuracy_normal"] == 0.0  # present, all missed


def test_predictions_are_put_in_their_manifests_order_by_the_rows_they_carry():
    shuffled = Predictions(np.arange(8.0).reshape(4, 2), np.array([1, 0, 1, 0]), np.array([2, 0, 3, 1]))
    ordered = shuffled.in_manifest_order(4)
    assert ordered.rows.tolist() == [0, 1, 2, 3] and ordered.log_probabilities[:, 0].tolist() == [2, 6, 0, 4]
    assert ordered.targets.tolist() == [0, 0, 1, 1]
    for rows in ([0, 1, 2, 2], [0, 1, 2], [0, 1, 2, 5]):  # a row twice, a row missing, a row from elsewhere
        broken = Predictions(np.zeros((len(rows), 2)), np.zeros(len(rows)), np.array(rows))
        with pytest.raises(RuntimeError, match="do not cover each row once"):
            broken.in_manifest_order(4)
