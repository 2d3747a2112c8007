import numpy as np
import pytest

from leukemia.evaluation.metrics import average_precision, classification_metrics, confusion_matrix, roc_auc


def test_confusion_matrix_rows_are_true_classes():
    targets = np.array([0, 0, 0, 1, 1, 1, 1, 1])
    predictions = np.array([0, 1, 1, 1, 1, 1, 1, 0])
    assert confusion_matrix(targets, predictions, 2).tolist() == [[1, 2], [1, 4]]


def test_metrics_match_hand_computation():
    # 3 normal (1 right), 5 ALL (4 right)
    metrics = classification_metrics(np.array([[1, 2], [1, 4]]))
    assert metrics["accuracy"] == pytest.approx(5 / 8)
    assert metrics["accuracy_normal"] == pytest.approx(1 / 3)
    assert metrics["accuracy_all"] == pytest.approx(4 / 5)
    assert metrics["balanced_accuracy"] == pytest.approx((1 / 3 + 4 / 5) / 2)
    f1_normal = 2 * (1 / 2) * (1 / 3) / (1 / 2 + 1 / 3)
    f1_all = 2 * (4 / 6) * (4 / 5) / (4 / 6 + 4 / 5)
    assert metrics["f1_weighted"] == pytest.approx((3 * f1_normal + 5 * f1_all) / 8)
    # ALL positive: TP 4, FN 1, FP 2, TN 1.
    assert metrics["sensitivity"] == pytest.approx(4 / 5) and metrics["specificity"] == pytest.approx(1 / 3)
    assert metrics["ppv"] == pytest.approx(4 / 6) and metrics["npv"] == pytest.approx(1 / 2)


def test_predicting_only_the_majority_class_scores_half_balanced_accuracy():
    metrics = classification_metrics(np.array([[0, 10], [0, 20]]))
    assert metrics["accuracy"] == pytest.approx(2 / 3)
    assert metrics["balanced_accuracy"] == pytest.approx(0.5)
    assert metrics["accuracy_normal"] == 0.0
    assert "npv" not in metrics  # nothing called normal: undefined, left out (not 0)


def brute_force_auc(targets, scores):
    pairs = [(p, n) for p in scores[targets == 1] for n in scores[targets == 0]]
    return sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in pairs) / len(pairs)


def test_roc_auc_equals_the_pairwise_definition_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(20):
        targets = rng.integers(0, 2, 40)
        scores = np.round(rng.random(40), 1)  # many ties
        if 0 < targets.sum() < 40:
            assert roc_auc(targets, scores) == pytest.approx(brute_force_auc(targets, scores))
    assert roc_auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.8, 0.9])) == 1.0
    assert roc_auc(np.array([0, 0, 1, 1]), np.array([0.9, 0.8, 0.2, 0.1])) == 0.0
    assert np.isnan(roc_auc(np.array([1, 1]), np.array([0.2, 0.3])))


def test_average_precision_is_the_step_area_under_the_precision_recall_curve():
    # Ranked by score: ALL, normal, ALL, normal. Precision at each ALL cell: 1/1, then 2/3; AP = (1 + 2/3) / 2.
    targets, scores = np.array([1, 0, 1, 0]), np.array([0.9, 0.8, 0.7, 0.1])
    assert average_precision(targets, scores) == pytest.approx((1 + 2 / 3) / 2)
    assert np.isnan(average_precision(np.array([0, 0]), np.array([0.2, 0.3])))
