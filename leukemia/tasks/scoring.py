"""The evaluation that ends every training run and every task=eval: calibration and the operating point chosen
on validation, then the test split scored per cell and per subject, with intervals, curves and Grad-CAM.

Validation fixes two numbers: the temperature (fitted to the validation cells' probabilities) and the
threshold (``eval.threshold``, a number or ``balanced``, chosen on the calibrated validation probabilities).
Every label afterwards (submission, predictions, subjects, the logged model) is P(ALL) >= threshold, on
calibrated probabilities.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn

from leukemia.config import TTA, Config
from leukemia.data.cache import cache_folder
from leukemia.data.decoding import Normalisation, decode_pixels, read_image
from leukemia.data.feed import build_feed
from leukemia.data.manifest import CLASS_NAMES, Manifest
from leukemia.evaluation.bootstrap import bootstrap_intervals
from leukemia.evaluation.calibration import TEMPERATURE_RANGE, brier, calibrated, fit_temperature, reliability
from leukemia.evaluation.decision import labels_at, operating_threshold
from leukemia.evaluation.explain import grad_cam, overlay, showcase
from leukemia.evaluation.metrics import (
    average_precision,
    classification_metrics,
    confusion_counts,
    confusion_matrix,
    roc_auc,
)
from leukemia.evaluation.subjects import subject_metrics, subject_table
from leukemia.tasks.context import output_dir
from leukemia.tracking.evaluation_figures import curve_figure, gradcam_figure, reliability_figure
from leukemia.tracking.figures import confusion_matrix_figure
from leukemia.tracking.runs import Run
from leukemia.training.engine import Predictions, predict
from leukemia.training.runtime import Acceleration

log = logging.getLogger(__name__)

SUBMISSION = "submission.csv"
PREDICTIONS = "predictions.csv"
SHOWN = ("accuracy", "balanced_accuracy", "f1_weighted", "roc_auc", "ece", "ece_calibrated", "subject_accuracy")


@dataclass(frozen=True)
class Calibration:
    """What validation fixed: the temperature the logits are divided by, and the decision threshold."""

    temperature: float
    threshold: float


@dataclass
class Evaluator:
    """Predicts a split with the model as trained (``runnable``: compiled, channels-last, autocast as configured)
    and explains it with the plain ``network``; logs into ``run``."""

    cfg: Config
    runnable: nn.Module
    network: nn.Module
    device: torch.device
    acceleration: Acceleration
    run: Run

    def predictions(self, manifest: Manifest, description: str) -> Predictions:
        """In order, no augmentation, larger batches (``eval.batch_factor``), flip TTA with ``eval.tta``; never
        skips a file (every test row needs a prediction)."""
        cfg = self.cfg
        feed = build_feed(manifest, cfg.data, cfg.augmentation, train=False, device=self.device, seed=cfg.seed,
                          cache_folder=cache_folder(cfg.paths.cache_dir), batch_size=cfg.data.batch_size *
                          cfg.eval.batch_factor, skip_bad=False)  # fmt: skip
        return predict(self.runnable, feed.loader, self.device, TTA(cfg.eval.tta) == TTA.flips, description,
                       cfg.trainer.progress, feed.prepare, **self.acceleration.step)  # fmt: skip

    def calibrate(self, valid: Manifest) -> Calibration:
        """Fit the temperature on the validation split, fix the threshold there; log both with the validation
        split's calibration, curves and subject scores."""
        raw = self.predictions(valid, "calibrate (valid)")
        temperature = fit_temperature(raw.log_probabilities, raw.targets)
        if not TEMPERATURE_RANGE[0] * 1.01 < temperature < TEMPERATURE_RANGE[1] / 1.01:
            log.warning("the temperature reached the end of its range (%.3g, %d validation images): the validation "
                        "split does not pin it down; its calibrated probabilities are not to be trusted",
                        temperature, len(valid))  # fmt: skip
        probability_all = calibrated(raw.log_probabilities, temperature)[:, 1]
        calibration = Calibration(temperature, operating_threshold(self.cfg.eval.threshold, probability_all,
                                                                   raw.targets))  # fmt: skip
        metrics = {"temperature": temperature, "threshold": calibration.threshold}
        metrics |= self.score_split("val", valid, raw, calibration)
        self.run.log_metrics(metrics)
        log.info("validation: temperature %.3f, threshold %.3f (eval.threshold=%s), ECE %.4f -> %.4f calibrated",
                 temperature, calibration.threshold, self.cfg.eval.threshold, metrics["val_ece"],
                 metrics["val_ece_calibrated"])  # fmt: skip
        return calibration

    def score_split(self, prefix: str, split: Manifest, raw: Predictions, calibration: Calibration) -> dict:
        """A labelled split's calibration (before and after the temperature), its ROC and PR figures, and its
        subject table and scores where subjects are known."""
        probabilities = calibrated(raw.log_probabilities, calibration.temperature)
        probability_all, targets = probabilities[:, 1], raw.targets
        trained, scaled = reliability(raw.probabilities, targets), reliability(probabilities, targets)
        metrics = {f"{prefix}_ece": trained.ece, f"{prefix}_brier": brier(raw.probabilities, targets),
                   f"{prefix}_ece_calibrated": scaled.ece, f"{prefix}_brier_calibrated": brier(probabilities, targets),
                   f"{prefix}_average_precision": average_precision(targets, probability_all)}  # fmt: skip
        title = f"{self.run.name}: {split.name} ({len(split)} images)"
        curves = {"as trained": trained, f"temperature {calibration.temperature:.2f}": scaled}
        self.run.log_figure(reliability_figure(curves, title), f"figures/{prefix}_reliability.png")
        predicted = labels_at(probability_all, calibration.threshold)
        for kind in ("roc", "pr") if len(np.unique(targets)) > 1 else ():  # a one-class split has no curve
            figure = curve_figure(kind, targets, probability_all, predicted, calibration.threshold, title)
            self.run.log_figure(figure, f"figures/{prefix}_{kind}.png")
        if split.subjects is not None:
            table = self.log_subjects(prefix, split, probability_all, calibration.threshold, targets)
            metrics |= {f"{prefix}_{key}": value for key, value in subject_metrics(table).items()}
        return metrics

    def log_subjects(self, prefix: str, split: Manifest, probability_all: np.ndarray, threshold: float,
                     targets: np.ndarray | None) -> pd.DataFrame:  # fmt: skip
        """The split's subject table: ``subjects.csv`` for the test split, ``val_subjects.csv`` for validation."""
        table = subject_table(probability_all, split.subjects, threshold, targets)
        self.run.log_text(table.to_csv(index=False), "subjects.csv" if prefix == "test" else f"{prefix}_subjects.csv")
        return table

    def explain(self, test: Manifest, probability_all: np.ndarray, predicted: np.ndarray) -> None:
        """``figures/gradcam.png``: per class the most confident correct and wrong test cell and its heat map."""
        chosen = showcase(probability_all, np.asarray(test.labels), predicted)
        data = self.cfg.data
        pixels = torch.stack([decode_pixels(read_image(test.paths[i]), data.crop_size, data.image_size)
                              for i in chosen.values()])  # fmt: skip
        inputs = Normalisation(data.mean, data.std, self.device)(pixels.to(self.device))
        heat = grad_cam(self.network, inputs, torch.as_tensor(predicted[list(chosen.values())], device=self.device))
        images = pixels.permute(0, 2, 3, 1).numpy()
        panels = {key: (images[k], overlay(images[k], heat[k]), max(probability_all[i], 1 - probability_all[i]))
                  for k, (key, i) in enumerate(chosen.items())}  # fmt: skip
        title = f"{self.run.name}: Grad-CAM on the test split (layer4's last block)"
        self.run.log_figure(gradcam_figure(panels, CLASS_NAMES, title), "figures/gradcam.png")

    def intervals(self, test: Manifest, probability_all: np.ndarray, threshold: float) -> dict[str, float]:
        """Bootstrap intervals of the test scores (``eval.bootstrap`` draws of subjects, or of cells)."""
        if not self.cfg.eval.bootstrap:
            return {}
        found = bootstrap_intervals(np.asarray(test.labels), probability_all, threshold, test.subjects,
                                    self.cfg.eval.bootstrap, self.cfg.seed)  # fmt: skip
        self.run.set_tags({"test_ci": f"{found.level:.0%} bootstrap, {found.resamples} draws of {found.method}"})
        log.info("test: %.0f%% intervals from %d bootstrap draws of %s", found.level * 100, found.resamples,
                 found.method)  # fmt: skip
        return {f"test_{key}_ci_{end}": value for key, (low, high) in found.bounds.items()
                for end, value in (("low", low), ("high", high))}  # fmt: skip

    def test(self, test: Manifest, calibration: Calibration) -> dict[str, float]:
        """Predict the test split: write and log the submission and the predictions, the subject table where
        subjects are known; with labels, log and return the ``test_*`` metrics, intervals and figures."""
        raw = self.predictions(test, "test")
        probability_all = calibrated(raw.log_probabilities, calibration.temperature)[:, 1]
        predicted = labels_at(probability_all, calibration.threshold)
        self.write_predictions(test, probability_all, predicted)
        if test.labels is None:
            if test.subjects is not None:
                self.log_subjects("test", test, probability_all, calibration.threshold, None)
            log.info("the test split has no labels: predictions only")
            return {}
        matrix = confusion_matrix(raw.targets, predicted, len(CLASS_NAMES))
        metrics = {f"test_{key}": value for key, value in classification_metrics(matrix, CLASS_NAMES).items()}
        metrics["test_roc_auc"] = roc_auc(raw.targets, probability_all)
        metrics |= self.score_split("test", test, raw, calibration)
        metrics |= self.intervals(test, probability_all, calibration.threshold)
        self.run.log_metrics(metrics)
        title = (f"{self.run.name}: test ({len(test)} images, tta={TTA(self.cfg.eval.tta).value}, "
                 f"threshold {calibration.threshold:.3g})")  # fmt: skip
        self.run.log_figure(confusion_matrix_figure(matrix, CLASS_NAMES, title), "figures/test_confusion_matrix.png")
        self.run.log_dict(confusion_counts(matrix, CLASS_NAMES), "figures/test_confusion_matrix.json")
        self.explain(test, probability_all, predicted)
        shown = [f"{key} {metrics[f'test_{key}']:.4f}" for key in SHOWN if f"test_{key}" in metrics]
        log.info("test: %s", "  ".join(shown))
        return metrics

    def write_predictions(self, test: Manifest, probability_all: np.ndarray, predicted: np.ndarray) -> None:
        """``submission.csv`` (``ID,label``: the test CSV's own IDs, same rows, same order) and
        ``predictions.csv`` (with both calibrated class probabilities, and the true label where known), in the
        output folder and in the run."""
        folder = output_dir()
        folder.mkdir(parents=True, exist_ok=True)
        submission = pd.DataFrame({"ID": test.identifiers(), "label": predicted})
        submission.to_csv(folder / SUBMISSION, index=False)
        detail = submission.assign(probability_normal=1.0 - probability_all, probability_all=probability_all)
        if test.labels is not None:
            detail["true_label"] = test.labels
        detail.to_csv(folder / PREDICTIONS, index=False)
        for name in (SUBMISSION, PREDICTIONS):
            self.run.log_artifact(folder / name)
        log.info("submission: %d rows (%s) -> %s", len(submission), test.source, folder / SUBMISSION)
