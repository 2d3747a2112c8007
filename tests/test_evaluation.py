"""The evaluation's numbers against hand-worked examples and independent computations (scikit-learn, torch)."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.calibration import calibration_curve
from sklearn.metrics import accuracy_score, balanced_accuracy_score, roc_auc_score

from leukemia.data.manifest import Manifest
from leukemia.errors import UserError
from leukemia.evaluation.calibration import (
    balanced_threshold,
    brier,
    fit_decision,
    fit_temperature,
    recalibration,
    reliability,
    reliability_all,
)
from leukemia.evaluation.decision import Decision, labels_at, log_probabilities
from leukemia.evaluation.explain import grad_cam, overlay, showcase
from leukemia.evaluation.subjects import subject_metrics, subject_table
from leukemia.models import build_model


def two_class(probability_all):
    probability_all = np.asarray(probability_all, dtype=np.float64)
    return np.stack([1 - probability_all, probability_all], axis=1)


# Subjects


def toy_manifest() -> Manifest:
    """Six cells of three subjects: A (ALL, 3 cells), B (normal, 2), C (ALL, 1)."""
    paths = [Path(f"/cells/{name}.bmp") for name in "abcdef"]
    return Manifest("test", paths, [1, 1, 1, 0, 0, 1], ["A", "A", "A", "B", "B", "C"], "toy")


def test_subject_table_aggregates_cells_as_worked_by_hand():
    manifest = toy_manifest()
    probability = np.array([0.9, 0.8, 0.3, 0.2, 0.6, 0.4])
    table = subject_table(probability, manifest.subjects, 0.5, np.asarray(manifest.labels))
    assert table["subject"].tolist() == ["A", "B", "C"]
    assert table["cells"].tolist() == [3, 2, 1]
    assert table["fraction_all"].tolist() == pytest.approx([2 / 3, 1 / 2, 0])
    assert table["mean_probability_all"].tolist() == pytest.approx([2 / 3, 0.4, 0.4])
    assert table["predicted_label"].tolist() == [1, 0, 0]
    assert table["true_label"].tolist() == [1, 0, 1]
    metrics, absent = subject_metrics(table)
    assert metrics["subject_accuracy"] == pytest.approx(2 / 3)
    assert metrics["subject_balanced_accuracy"] == pytest.approx((1 / 1 + 1 / 2) / 2)
    assert metrics["subjects"] == 3
    # 2 ALL subjects (A called ALL, C not), 1 normal (B, called normal).
    assert [metrics[f"subject_{name}"] for name in ("tp", "fn", "fp", "tn")] == [1, 1, 0, 1]
    assert metrics["subject_sensitivity"] == 0.5 and metrics["subject_specificity"] == 1.0
    # One normal subject: a subject ROC AUC would only say whether B sits below A and C; absent, with why.
    assert "subject_roc_auc" not in metrics
    assert absent["subject_roc_auc"].startswith("absent: 2 ALL + 1 normal subjects")


def test_a_subject_is_all_when_most_of_its_cells_are():
    # D: 1 ALL cell of 3 (normal by majority); E: 2 of 3 (ALL); F, G: all normal, all ALL.
    subjects = ["D"] * 3 + ["E"] * 3 + ["F"] * 2 + ["G"] * 2
    targets = np.array([1, 0, 0, 1, 1, 0, 0, 0, 1, 1])
    table = subject_table(np.full(10, 0.9), subjects, 0.5, targets)
    assert table["true_label"].tolist() == [0, 1, 0, 1]
    metrics, _ = subject_metrics(table)
    assert [metrics[f"subject_{name}"] for name in ("tp", "fn", "fp", "tn")] == [2, 0, 2, 0]
    assert metrics["subject_roc_auc"] == 0.5  # 2 + 2 subjects: given


def test_subject_rates_have_exact_clopper_pearson_intervals():
    from scipy.stats import binomtest

    # 7 ALL subjects, 5 called ALL; 4 normal subjects, 3 called normal.
    table = pd.DataFrame({"true_label": [1] * 7 + [0] * 4, "predicted_label": [1] * 5 + [0] * 2 + [0] * 3 + [1],
                          "mean_probability_all": np.linspace(0.1, 0.9, 11)})  # fmt: skip
    metrics, _ = subject_metrics(table)
    for rate, (hits, trials) in {"sensitivity": (5, 7), "specificity": (3, 4), "ppv": (5, 6), "npv": (3, 5)}.items():
        expected = binomtest(hits, trials).proportion_ci(0.95, method="exact")
        assert metrics[f"subject_{rate}"] == pytest.approx(hits / trials)
        assert metrics[f"subject_{rate}_ci_low"] == pytest.approx(expected.low)
        assert metrics[f"subject_{rate}_ci_high"] == pytest.approx(expected.high)
    assert metrics["subject_sensitivity_ci_low"] == pytest.approx(0.2904, abs=1e-4)  # a published table's value


def test_subject_labels_follow_the_threshold_on_the_mean():
    table = subject_table(np.array([0.9, 0.8, 0.3, 0.2, 0.6, 0.4]), toy_manifest().subjects, 0.65)
    assert table["predicted_label"].tolist() == [1, 0, 0]  # A's mean 0.667 >= 0.65
    assert "true_label" not in table
    table = subject_table(np.array([0.9, 0.8, 0.3, 0.2, 0.6, 0.4]), toy_manifest().subjects, 0.7)
    assert table["predicted_label"].tolist() == [0, 0, 0]
    assert table["fraction_all"].tolist() == pytest.approx([2 / 3, 0, 0])


def test_subject_metrics_match_scikit_learn_on_random_subjects():
    rng = np.random.default_rng(3)
    subjects = rng.choice([f"s{k}" for k in range(12)], 300)
    truth_of = {f"s{k}": k % 2 for k in range(12)}
    targets = np.array([truth_of[s] for s in subjects])
    probability = np.clip(0.3 * targets + rng.random(300) * 0.7, 0, 1)
    table = subject_table(probability, subjects, 0.5, targets)
    means = {s: probability[subjects == s].mean() for s in sorted(truth_of)}
    truth = [truth_of[s] for s in sorted(truth_of)]
    predicted = [int(means[s] >= 0.5) for s in sorted(truth_of)]
    metrics, _ = subject_metrics(table)
    assert metrics["subject_accuracy"] == pytest.approx(accuracy_score(truth, predicted))
    assert metrics["subject_balanced_accuracy"] == pytest.approx(balanced_accuracy_score(truth, predicted))
    assert metrics["subject_roc_auc"] == pytest.approx(roc_auc_score(truth, [means[s] for s in sorted(truth_of)]))


# Calibration


def test_ece_on_known_probabilities_as_worked_by_hand():
    # Confidences 0.95 (right), 0.95 (wrong), 0.55 (right), 0.65 (right) fall in bins 14, 14, 8 and 9 of 15:
    # ECE = 2/4 |0.5 - 0.95| + 1/4 |1 - 0.55| + 1/4 |1 - 0.65| = 0.425.
    probabilities = two_class([0.95, 0.05, 0.55, 0.35])
    targets = np.array([1, 1, 1, 0])
    assert reliability(probabilities, targets).ece == pytest.approx(0.425)
    bins = reliability(probabilities, targets)
    assert bins.counts[[8, 9, 14]].tolist() == [1, 1, 2] and bins.counts.sum() == 4
    assert reliability(two_class([1.0, 0.0]), np.array([1, 0])).ece == 0.0


def test_a_confidence_on_a_bin_edge_falls_in_the_bin_above():
    # 0.6 and 0.8 are the lower edges of bins 9 and 12 of 15 ([lo, hi)): 0.6 correct, 0.8 wrong.
    probabilities = two_class([0.6, 0.8, 1.0])
    bins = reliability(probabilities, np.array([1, 0, 1]))
    assert bins.counts[[8, 9, 11, 12, 14]].tolist() == [0, 1, 0, 1, 1]
    assert bins.ece == pytest.approx((0.4 + 0.8 + 0.0) / 3)
    positive = reliability_all(np.array([0.0, 0.2, 0.6]), np.array([0, 1, 1]))
    assert positive.counts[[0, 2, 3, 8, 9]].tolist() == [1, 0, 1, 0, 1]


def test_the_all_class_reliability_matches_scikit_learns_calibration_curve():
    rng = np.random.default_rng(1)
    probability = rng.random(3000)
    targets = (rng.random(3000) < probability**1.5).astype(int)
    curve = reliability_all(probability, targets)
    fraction, mean = calibration_curve(targets, probability, n_bins=15, strategy="uniform")
    filled = curve.counts > 0
    assert curve.accuracy[filled] == pytest.approx(fraction)
    assert curve.confidence[filled] == pytest.approx(mean)


def test_the_recalibration_slope_and_intercept_match_scikit_learns_unpenalised_fit():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(2)
    margin = rng.normal(0, 2, 4000)
    targets = (rng.random(4000) < 1 / (1 + np.exp(-(0.3 + 0.5 * margin)))).astype(int)  # overconfident by 2
    probability = 1 / (1 + np.exp(-margin))
    fit = recalibration(probability, targets)
    reference = LogisticRegression(C=np.inf, tol=1e-10, max_iter=1000).fit(margin[:, None], targets)
    assert fit.slope == pytest.approx(reference.coef_[0, 0], rel=1e-4)
    assert fit.intercept == pytest.approx(reference.intercept_[0], rel=1e-3)
    assert fit.slope == pytest.approx(0.5, abs=0.06) and fit.intercept == pytest.approx(0.3, abs=0.1)
    separated = recalibration(np.array([0.1, 0.2, 0.8, 0.9]), np.array([0, 0, 1, 1]))
    assert np.isnan(separated.slope) and "separate" in separated.reason


def test_reliability_bins_match_scikit_learns_calibration_curve():
    rng = np.random.default_rng(0)
    probability = rng.random(2000)
    targets = (rng.random(2000) < probability**2).astype(int)
    probabilities = two_class(probability)
    bins = reliability(probabilities, targets)
    confidence = probabilities.max(axis=1)
    correct = (probabilities.argmax(axis=1) == targets).astype(int)
    accuracy, mean_confidence = calibration_curve(correct, confidence, n_bins=15, strategy="uniform")
    filled = bins.counts > 0
    assert bins.accuracy[filled] == pytest.approx(accuracy)
    assert bins.confidence[filled] == pytest.approx(mean_confidence)


def test_brier_is_the_mean_squared_error_of_the_probability_of_all():
    probability, targets = np.array([0.9, 0.2, 0.6, 0.5]), np.array([1, 0, 0, 1])
    expected = np.mean((probability - targets) ** 2)
    assert brier(two_class(probability), targets) == pytest.approx(expected)


def test_calibrated_probabilities_are_the_softmax_of_the_scaled_logits():
    # The last row saturates a float32 softmax (a probability of 0): its log-softmax still holds the logits.
    logits = torch.tensor([[2.0, -1.0], [0.3, 0.1], [-4.0, 5.0], [60.0, -20.0]])
    for temperature in (0.5, 1.0, 3.0, 20.0):
        expected = (logits / temperature).softmax(dim=1).numpy()
        calibrated = Decision(temperature).probabilities(logits.log_softmax(dim=1).numpy())
        assert calibrated == pytest.approx(expected, abs=1e-6)


def overconfident(count: int, seed: int, sharpness: float = 4.0):
    """A model whose logits are ``sharpness`` times those of a calibrated one: labels drawn from the calibrated
    probabilities, log-probabilities reported from the sharpened logits."""
    rng = np.random.default_rng(seed)
    margin = rng.normal(0, 1.5, count)
    targets = (rng.random(count) < 1 / (1 + np.exp(-margin))).astype(int)
    logits = torch.tensor(np.stack([np.zeros(count), sharpness * margin], axis=1))
    return logits.log_softmax(dim=1).numpy(), targets


def test_temperature_scaling_lowers_the_ece_of_an_overconfident_model():
    validation, validation_targets = overconfident(4000, seed=1)
    test, test_targets = overconfident(4000, seed=2)
    temperature = fit_temperature(validation, validation_targets)
    assert temperature == pytest.approx(4.0, rel=0.15)
    before = reliability(np.exp(test), test_targets).ece
    calibrated = Decision(temperature).probabilities(test)
    after = reliability(calibrated, test_targets).ece
    assert before > 0.1 and after < before / 3
    assert brier(calibrated, test_targets) < brier(np.exp(test), test_targets)
    # Dividing the logits keeps their sign: the labels at 0.5 stay as they were.
    assert (calibrated.argmax(axis=1) == test.argmax(axis=1)).all()


def test_flip_augmentation_averages_the_softmax_of_the_four_flipped_views():
    torch.manual_seed(0)
    network = build_model(18, 2).eval()
    inputs = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        views = [inputs, inputs.flip(-1), inputs.flip(-2), inputs.flip(-2).flip(-1)]
        mean = torch.stack([network(view).softmax(dim=1) for view in views]).mean(dim=0)
        assert log_probabilities(network, inputs, flips=True).exp() == pytest.approx(mean, abs=1e-6)
        assert log_probabilities(network, inputs).exp() == pytest.approx(network(inputs).softmax(dim=1), abs=1e-6)


# The operating point


def test_labels_at_call_a_cell_all_from_the_threshold_up():
    assert labels_at(np.array([0.2, 0.5, 0.49, 0.9]), 0.5).tolist() == [0, 1, 0, 1]
    assert labels_at(np.array([0.2, 0.5, 0.49, 0.9]), 0.3).tolist() == [0, 1, 1, 1]


def test_the_balanced_threshold_maximises_balanced_accuracy_over_every_candidate():
    rng = np.random.default_rng(5)
    for _ in range(10):
        targets = rng.integers(0, 2, 80)
        probability = np.round(np.clip(0.25 * targets + rng.random(80) * 0.75, 0, 1), 2)  # with ties
        threshold = balanced_threshold(probability, targets)
        best = max(balanced_accuracy_score(targets, labels_at(probability, t)) for t in np.unique(probability))
        assert balanced_accuracy_score(targets, labels_at(probability, threshold)) == pytest.approx(best)
        assert threshold in probability


def test_equal_balanced_accuracies_are_told_apart_exactly_and_the_one_nearest_one_half_wins():
    # 0.92 (TPR 1/5, FPR 0) and 0.5 (TPR 3/5, FPR 2/5) both give balanced accuracy 0.6, but as rates
    # TPR - FPR differs by an ulp (0.2 vs 0.19999999999999996): a float equality test skips the tie-break.
    targets = np.array([1, 0, 1, 0, 1, 0, 0, 0, 1, 1])
    probability = np.array([0.92, 0.63, 0.51, 0.51, 0.5, 0.47, 0.25, 0.04, 0.04, 0.01])
    assert (1 / 5 - 0 / 5) != (3 / 5 - 2 / 5)
    assert balanced_threshold(probability, targets) == 0.5


def test_the_balanced_threshold_is_the_one_nearest_one_half_among_the_best_on_random_sets():
    rng = np.random.default_rng(11)
    for _ in range(300):
        targets = rng.integers(0, 2, 40)
        if len(np.unique(targets)) < 2:
            continue
        probability = np.round(rng.random(40), 2)
        positives, negatives = (targets == 1).sum(), (targets == 0).sum()
        called = {t: probability >= t for t in np.unique(probability)}
        gains = {t: int((c & (targets == 1)).sum()) * negatives - int((c & (targets == 0)).sum()) * positives
                 for t, c in called.items()}  # fmt: skip
        best = [t for t, gain in gains.items() if gain == max(gains.values())]
        assert balanced_threshold(probability, targets) == min(best, key=lambda t: (abs(t - 0.5), t))


def test_a_skewed_model_gets_a_threshold_below_one_half():
    # Every normal cell below 0.2, every ALL cell between 0.25 and 0.45: 0.5 calls all of them normal.
    probability = np.array([0.05, 0.1, 0.15, 0.25, 0.3, 0.45])
    targets = np.array([0, 0, 0, 1, 1, 1])
    assert balanced_threshold(probability, targets) == 0.25
    with pytest.raises(UserError, match="eval.threshold=balanced"):
        balanced_threshold(probability, np.ones(6, dtype=int))


def test_the_decision_fits_the_temperature_then_the_threshold_on_the_calibrated_probabilities():
    log_probabilities, targets = overconfident(400, seed=3)
    temperature = fit_temperature(log_probabilities, targets)
    assert fit_decision(log_probabilities, targets, "0.7") == Decision(temperature, 0.7)
    balanced = fit_decision(log_probabilities, targets, "balanced")
    assert balanced.temperature == temperature
    assert balanced.threshold == balanced_threshold(Decision(temperature).probability_all(log_probabilities), targets)
    assert balanced.threshold != balanced_threshold(np.exp(log_probabilities[:, 1]), targets)


# Grad-CAM


def hand_grad_cam(network, inputs, classes):
    """Grad-CAM by hand: the gradient of each class score with respect to layer4's last block, averaged over
    the map, weights that block's activations; ReLU, bilinear upsampling, scaled by the max."""
    kept = {}
    handle = network.layer4[-1].register_forward_hook(lambda module, args, output: kept.update(a=output))
    network.eval()
    logits = network(inputs)
    handle.remove()
    activations = kept["a"]
    gradients = torch.autograd.grad(logits[torch.arange(len(classes)), classes].sum(), activations)[0]
    cam = torch.relu((gradients.mean(dim=(2, 3), keepdim=True) * activations).sum(dim=1, keepdim=True))
    cam = torch.nn.functional.interpolate(cam, size=inputs.shape[-2:], mode="bilinear", align_corners=False)
    cam = cam.squeeze(1).detach().numpy()
    peak = cam.reshape(len(cam), -1).max(axis=1).reshape(-1, 1, 1)
    return np.divide(cam, peak, out=np.zeros_like(cam), where=peak > 0)


def test_grad_cam_matches_a_hand_computation():
    torch.manual_seed(0)
    network = build_model(18, 2)
    inputs = torch.randn(3, 3, 64, 64)
    classes = torch.tensor([0, 1, 1])
    heat = grad_cam(network, inputs, classes)
    assert heat.shape == (3, 64, 64)
    assert heat.min() >= 0 and heat.max() == pytest.approx(1.0)
    assert heat == pytest.approx(hand_grad_cam(network, inputs, classes), abs=1e-4)


def test_overlay_blends_the_heat_map_over_the_image():
    image = np.zeros((8, 8, 3), dtype=np.uint8)
    blended = overlay(image, np.ones((8, 8)), alpha=0.5)
    assert blended.shape == (8, 8, 3) and blended.dtype == np.uint8
    assert (blended[..., 0] > 40).all() and (blended[..., 2] < 10).all()  # jet's hot end is red
    assert (overlay(image, np.zeros((8, 8)), alpha=0.0) == 0).all()


def test_showcase_picks_the_most_confident_correct_and_wrong_cell_of_each_class():
    probability = np.array([0.1, 0.3, 0.8, 0.95, 0.6, 0.2])
    targets = np.array([0, 0, 0, 1, 1, 1])
    chosen = showcase(probability, targets, labels_at(probability, 0.5))
    assert chosen == {(0, "correct"): 0, (0, "wrong"): 2, (1, "correct"): 3, (1, "wrong"): 5}
    assert (1, "wrong") not in showcase(probability[:5], targets[:5], labels_at(probability[:5], 0.5))


# The comparison table


def test_the_summary_shows_each_interval_and_the_paired_difference_from_the_reference():
    from leukemia.tasks.plot import markdown, with_intervals

    table = pd.DataFrame({
        "run": ["a", "b", "c"],
        "test_accuracy": [0.90, 0.85, np.nan],
        "test_accuracy_ci_low": [0.86, 0.80, np.nan],
        "test_accuracy_ci_high": [0.94, 0.89, np.nan],
        "f1_weighted_difference": [np.nan, -0.039, np.nan],
        "f1_weighted_log_odds_ratio": [np.nan, -0.39, np.nan],
        "f1_weighted_log_odds_ratio_ci_low": [np.nan, -0.48, np.nan],
        "f1_weighted_log_odds_ratio_ci_high": [np.nan, -0.32, np.nan],
        "roc_auc_difference": [np.nan, -0.01, np.nan],
        "roc_auc_log_odds_ratio_ci_low": [np.nan, -0.02, np.nan],
        "verdict": ["reference", "worse", ""],
    })  # fmt: skip
    shown = with_intervals(table)
    assert shown["test_accuracy"].tolist() == ["0.9000 [0.8600, 0.9400]", "0.8500 [0.8000, 0.8900]", ""]
    assert shown["f1_weighted_log_odds_ratio"].tolist() == ["", "-0.3900 [-0.4800, -0.3200]", ""]
    assert not [column for column in shown if column.endswith("_ci_low") or column.startswith("roc_auc_")]
    assert "| b | 0.8500 [0.8000, 0.8900] | -0.0390 | -0.3900 [-0.4800, -0.3200] | worse |" in markdown(shown)


def predictions(probability, targets, subjects=None, order=None):
    table = pd.DataFrame({"ID": [f"c{k}.bmp" for k in range(len(targets))], "probability_all": probability,
                          "true_label": targets})  # fmt: skip
    if subjects is not None:
        table["subject"] = subjects
    return table if order is None else table.iloc[order].reset_index(drop=True)


def test_a_paired_comparison_matches_rows_by_id_and_says_better_worse_or_not_distinguishable():
    from interval_simulation import SCENARIOS

    from leukemia.evaluation.bootstrap import bootstrap_intervals
    from leukemia.evaluation.comparison import paired_comparison

    targets, probability, subjects = SCENARIOS[0].sample(np.random.default_rng(8), 20, 10)
    better = np.clip(probability + np.where(targets == 1, 0.3, -0.3), 0, 1)
    reference = predictions(probability, targets, subjects)
    shuffled = predictions(better, targets, subjects, order=np.random.default_rng(0).permutation(len(targets)))
    row = paired_comparison(reference, shuffled, (0.5, 0.5), 400, 0)
    expected = bootstrap_intervals(targets, [probability, better], [0.5, 0.5], subjects, 400, 0)
    assert row["f1_weighted_difference"] == pytest.approx(expected.point["f1_weighted"])
    assert row["f1_weighted_log_odds_ratio"] == pytest.approx(expected.ratio["f1_weighted"])
    assert (row["f1_weighted_log_odds_ratio_ci_low"], row["f1_weighted_log_odds_ratio_ci_high"]) == pytest.approx(
        expected.bounds["f1_weighted"]
    )
    assert row["verdict"] == "better" and row["f1_weighted_log_odds_ratio_ci_low"] > 0
    assert paired_comparison(shuffled, reference, (0.5, 0.5), 400, 0)["verdict"] == "worse"
    noisy = predictions(np.clip(probability + np.random.default_rng(1).normal(0, 0.01, len(targets)), 0, 1),
                        targets, subjects)  # fmt: skip
    assert paired_comparison(reference, noisy, (0.5, 0.5), 400, 0)["verdict"] == "not distinguishable"
    kept = np.r_[0:180, 1200:1260]  # 3 ALL subjects, 1 normal (ALL subjects come first, 60 cells each)
    few = paired_comparison(reference.iloc[kept], predictions(better, targets, subjects).iloc[kept], (0.5, 0.5),
                            400, 0)  # fmt: skip
    assert few["verdict"] == "" and few["why"].startswith("no intervals: 3 + 1 subjects")
    other_cells = predictions(better[1:], targets[1:])
    assert (
        paired_comparison(reference, other_cells, (0.5, 0.5), 400, 0)["why"]
        == "the runs were tested on different cells"
    )


def test_the_reference_run_is_the_best_on_validation_not_on_test():
    from leukemia.tasks.plot import reference_run
    from leukemia.tracking.store import RunRecord

    def run(name, monitor_value, test_value, monitor="val_f1_weighted"):
        return RunRecord(name, name, "0", "FINISHED", 0, {"trainer.monitor": monitor},
                         {}, {f"best_{monitor}": monitor_value, "test_f1_weighted": test_value})  # fmt: skip

    runs = [run("a", 0.90, 0.95), run("b", 0.93, 0.80), run("c", 0.91, 0.99)]
    assert reference_run(runs) == (runs[1], "best_val_f1_weighted")
    losses = [run("a", 0.30, 0.9, "val_loss"), run("b", 0.20, 0.8, "val_loss")]
    assert reference_run(losses)[0].name == "b"  # a loss: the lowest
    assert reference_run([RunRecord("x", "x", "0", "FAILED", 0, {}, {}, {})]) == (None, "best_val_f1_weighted")


# The decision curve


def test_net_benefit_as_worked_by_hand():
    from leukemia.evaluation.decision_curve import decision_curve

    # 10 cells, 4 ALL. At p_t = 0.2 (odds 1/4): called ALL are P(ALL) >= 0.2: 3 ALL and 2 normal cells.
    targets = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
    probability = np.array([0.9, 0.6, 0.3, 0.1, 0.5, 0.2, 0.15, 0.1, 0.05, 0.0])
    curve = decision_curve(targets, probability, np.array([0.2, 0.5]))
    assert curve["model"].tolist() == pytest.approx([3 / 10 - 2 / 10 * 0.25, 2 / 10 - 1 / 10 * 1.0])
    assert curve["treat_all"].tolist() == pytest.approx([0.4 - 0.6 * 0.25, 0.4 - 0.6 * 1.0])
    assert curve["treat_none"].tolist() == [0.0, 0.0]


def test_net_benefit_matches_scikit_learns_confusion_matrix_at_every_threshold():
    from sklearn.metrics import confusion_matrix as sklearn_matrix

    from leukemia.evaluation.decision_curve import THRESHOLDS, decision_curve

    rng = np.random.default_rng(9)
    targets = rng.integers(0, 2, 500)
    probability = np.clip(0.3 * targets + rng.random(500) * 0.7, 0, 1)
    curve = decision_curve(targets, probability)
    assert curve["threshold_probability"].tolist() == pytest.approx(np.arange(1, 100) / 100)
    for p_t, model, treat_all in zip(THRESHOLDS, curve["model"], curve["treat_all"], strict=True):
        (_, fp), (_, tp) = sklearn_matrix(targets, (probability >= p_t).astype(int), labels=[0, 1])
        assert model == pytest.approx(tp / 500 - fp / 500 * p_t / (1 - p_t))
        assert treat_all == pytest.approx(targets.mean() - (1 - targets.mean()) * p_t / (1 - p_t))


def test_the_subject_threshold_is_chosen_on_validation_subjects_halfway_below_the_best():
    from leukemia.evaluation.subjects import fit_subject_threshold

    # Validation subjects' means: ALL 0.97, 0.95, 0.99; normal 0.10, 0.40. Best: 0.95 (all right); halfway down
    # to the next lower mean (0.40): 0.675. A cell threshold of 0.9998 would call every ALL subject normal.
    table = pd.DataFrame({"true_label": [1, 1, 1, 0, 0], "mean_probability_all": [0.97, 0.95, 0.99, 0.10, 0.40]})
    chosen, how = fit_subject_threshold(table)
    assert chosen == pytest.approx(0.675) and how.startswith("chosen on 3 ALL + 2 normal validation subjects")
    assert fit_subject_threshold(table.iloc[:3]) == (None, "the cell threshold: the validation split lacks "
                                                           "subjects of a class")  # fmt: skip
    cells = subject_table(np.array([0.96, 0.94, 0.5, 0.3]), ["A", "A", "B", "B"], 0.9998, np.array([1, 1, 0, 0]),
                          subject_threshold=chosen)  # fmt: skip
    assert cells["fraction_all"].tolist() == [0, 0]  # cells at the cell threshold
    assert cells["predicted_label"].tolist() == [1, 0]  # subjects at theirs
    assert Decision(threshold=0.9998).subject_cutoff == 0.9998
    assert Decision(threshold=0.9998, subject_threshold=chosen).subject_cutoff == chosen
