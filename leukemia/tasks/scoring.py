"""The evaluation that ends every training run and every task=eval: the model predicts the validation and test
splits, ``leukemia.evaluation`` reports on them, the run logs the reports, and the output folder keeps the
submission.

Validation fixes the decision: the temperature (fitted to the validation cells' probabilities), the threshold
(``eval.threshold``, a number or ``balanced``, chosen on the calibrated validation probabilities) and, where
subjects are known, the subject threshold (chosen on the validation subjects' mean probabilities). Every cell
label afterwards (submission, predictions, the logged model) is P(ALL) >= threshold, on calibrated
probabilities (of the four flips' mean with ``eval.tta=flips``); every subject label, mean P(ALL) >= the
subject threshold.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace

import torch
from torch import nn

from leukemia.config import TTA, Config
from leukemia.data.cache import cache_folder
from leukemia.data.decoding import Normalisation, decode_pixels, read_image
from leukemia.data.feed import build_feed
from leukemia.data.manifest import Manifest
from leukemia.data.schema import OnBadImage
from leukemia.evaluation.decision import Decision
from leukemia.evaluation.explain import showcase
from leukemia.evaluation.report import (
    PREDICTIONS,
    SUBMISSION,
    Report,
    Scored,
    explanation_report,
    test_report,
    validation_report,
)
from leukemia.names import ECE, ECE_CALIBRATED, INTERVAL_SCORES, SUBJECT_ACCURACY, TEST, VAL, of
from leukemia.tasks.context import output_dir
from leukemia.tracking.runs import Run
from leukemia.training.engine import predict
from leukemia.training.runtime import Acceleration

log = logging.getLogger(__name__)

SHOWN = (*INTERVAL_SCORES, ECE, ECE_CALIBRATED, SUBJECT_ACCURACY)


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

    def scored(self, prefix: str, split: Manifest, description: str) -> Scored:
        """The split's predictions: in order, no augmentation, larger batches (``eval.batch_factor``), flip TTA
        with ``eval.tta``. The validation split leaves out unreadable files as training did (``data.on_bad_image``);
        the test split never does (every test row needs a prediction)."""
        cfg = self.cfg
        skip = prefix == VAL and cfg.data.on_bad_image == OnBadImage.skip
        feed = build_feed(split, cfg.data, cfg.augmentation, train=False, device=self.device, seed=cfg.seed,
                          cache_folder=cache_folder(cfg.paths.cache_dir), batch_size=cfg.data.batch_size *
                          cfg.eval.batch_factor, skip_bad=skip)  # fmt: skip
        raw = predict(self.runnable, feed.loader, self.device, TTA(cfg.eval.tta) == TTA.flips, description,
                      cfg.trainer.progress, feed.prepare, **self.acceleration.step)  # fmt: skip
        raw = raw.in_manifest_order(len(split), complete=not skip)  # row i of every table: the split's file i
        kept = split if not skip else split.select(raw.rows.tolist())
        targets = None if split.labels is None else raw.targets
        return Scored(prefix, self.run.name, split.name, raw.log_probabilities, targets, kept.subjects)

    def calibrate(self, valid: Manifest) -> tuple[Decision, Report]:
        """The decision fitted on the validation split (with the flips ``eval.tta`` scores by), and its report
        (the split's calibration, curves and subject scores), logged."""
        decision, report = validation_report(self.scored(VAL, valid, "calibrate (valid)"), self.cfg.eval.threshold)
        decision = replace(decision, flips=TTA(self.cfg.eval.tta) == TTA.flips)
        self.run.log_report(report)
        log.info("validation: temperature %.3f, threshold %.3f (eval.threshold=%s), ECE %.4f -> %.4f calibrated",
                 decision.temperature, decision.threshold, self.cfg.eval.threshold, report.metrics[of(VAL, ECE)],
                 report.metrics[of(VAL, ECE_CALIBRATED)])  # fmt: skip
        return decision, report

    def explanation(self, test: Manifest, scored: Scored, decision: Decision) -> Report:
        """Grad-CAM of the most confident correct and wrong test cell of each class."""
        probability_all = decision.probability_all(scored.log_probabilities)
        predicted = decision.labels(probability_all)
        chosen = showcase(probability_all, scored.targets, predicted)
        data = self.cfg.data
        pixels = torch.stack([decode_pixels(read_image(test.paths[i]), data.crop_size, data.image_size)
                              for i in chosen.values()])  # fmt: skip
        title = f"{self.run.name}: Grad-CAM on the test split (layer4's last block)"
        normalise = Normalisation(data.mean, data.std, self.device)
        return explanation_report(self.network, normalise, pixels, chosen, probability_all, predicted, title)

    def test(self, test: Manifest, decision: Decision) -> Report:
        """Predict the test split at the decision: the submission and predictions (into the output folder too),
        the subject table where subjects are known; with labels, the ``test_*`` metrics, intervals and figures.
        Returns the report logged."""
        cfg = self.cfg
        scored = self.scored(TEST, test, "test")
        report = test_report(scored, decision, test.identifiers(), TTA(cfg.eval.tta).value, cfg.eval.bootstrap,
                             cfg.seed)  # fmt: skip
        if scored.targets is not None:
            report |= self.explanation(test, scored, decision)
        folder = output_dir()
        folder.mkdir(parents=True, exist_ok=True)
        for name in (SUBMISSION, PREDICTIONS):
            report.tables[name].to_csv(folder / name, index=False)
        log.info("submission: %d rows (%s) -> %s", len(test), test.source, folder / SUBMISSION)
        self.run.log_report(report)
        if scored.targets is None:
            log.info("the test split has no labels: predictions only")
        else:
            shown = {key: report.metrics.get(of(TEST, key), math.nan) for key in SHOWN}
            log.info(
                "test: %s", "  ".join(f"{key} {value:.4f}" for key, value in shown.items() if math.isfinite(value))
            )
        return report
