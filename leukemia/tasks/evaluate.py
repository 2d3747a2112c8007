"""task=eval, and the test evaluation that ends task=train: a Kaggle-style submission for the test split, and
test metrics when the split is labelled.

``python run.py task=eval run_id=<id>`` reads the run's own resolved config and best weights back from MLflow
and logs into a new child run nested under it (the training run's own numbers stay as they were);
``weights=<file>`` evaluates a local state_dict with the config composed on the command line.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import NamedTuple

import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from leukemia.config import GROUPS, TTA, Config, check_config
from leukemia.data.cache import cache_folder
from leukemia.data.feed import Feed, build_feed
from leukemia.data.layouts import load_splits
from leukemia.data.manifest import CLASS_NAMES, Manifest
from leukemia.errors import UserError
from leukemia.models import build_model, load_trained, read_state_dict
from leukemia.tasks.context import command_line_overrides, launch_context, output_dir, override_key, sweep_job_number
from leukemia.tracking.figures import confusion_matrix_figure
from leukemia.tracking.runs import Run, tracked_run
from leukemia.tracking.store import Store
from leukemia.training.engine import predict
from leukemia.training.metrics import classification_metrics, confusion_counts, confusion_matrix, roc_auc
from leukemia.training.runtime import Acceleration, resolve_device

log = logging.getLogger(__name__)

SUBMISSION = "submission.csv"
PREDICTIONS = "predictions.csv"
# Keys the eval command sets for itself rather than taking from the evaluated run.
EVAL_KEYS = ("task", "run_id", "weights", "eval", "tracking", "trainer.device", "trainer.progress", "hydra")


def evaluation_feed(cfg: Config, manifest: Manifest, device: torch.device) -> Feed:
    """In order, no augmentation, larger batches; never skips a file (every test row needs a prediction)."""
    batch_size = cfg.data.batch_size * cfg.eval.batch_factor
    cache = cache_folder(cfg.paths.cache_dir)
    return build_feed(manifest, cfg.data, cfg.augmentation, train=False, device=device, seed=cfg.seed,
                      cache_folder=cache, batch_size=batch_size, skip_bad=False)  # fmt: skip


def evaluate_test(
    model: nn.Module, cfg: Config, test: Manifest, device: torch.device, run: Run, acceleration: Acceleration
) -> dict:
    """Predict the test split; write and log ``submission.csv`` (``ID,label``: the test CSV's own IDs, same
    rows, same order) and ``predictions.csv``; with labels, log and return the ``test_*`` metrics."""
    flips = TTA(cfg.eval.tta) == TTA.flips
    feed = evaluation_feed(cfg, test, device)
    predictions = predict(model, feed.loader, device, flips, "test", cfg.trainer.progress, feed.prepare,
                          **acceleration.step)  # fmt: skip
    folder = output_dir()
    folder.mkdir(parents=True, exist_ok=True)
    submission = pd.DataFrame({"ID": test.identifiers(), "label": predictions.labels})
    submission.to_csv(folder / SUBMISSION, index=False)
    detail = submission.assign(**{f"probability_{name}": predictions.probabilities[:, k]
                                  for k, name in enumerate(CLASS_NAMES)})  # fmt: skip
    if test.labels is not None:
        detail["true_label"] = test.labels
    detail.to_csv(folder / PREDICTIONS, index=False)
    for name in (SUBMISSION, PREDICTIONS):
        run.log_artifact(folder / name)
    log.info("submission: %d rows (%s) -> %s", len(submission), test.source, folder / SUBMISSION)
    if test.labels is None:
        log.info("the test split has no labels: predictions only")
        return {}
    matrix = confusion_matrix(predictions.targets, predictions.labels, len(CLASS_NAMES))
    metrics = {f"test_{key}": value for key, value in classification_metrics(matrix, CLASS_NAMES).items()}
    metrics["test_roc_auc"] = roc_auc(predictions.targets, predictions.probabilities[:, 1])
    run.log_metrics(metrics)
    title = f"{run.name}: test ({len(test)} images, tta={TTA(cfg.eval.tta).value})"
    run.log_figure(confusion_matrix_figure(matrix, CLASS_NAMES, title), "figures/test_confusion_matrix.png")
    run.log_dict(confusion_counts(matrix, CLASS_NAMES), "figures/test_confusion_matrix.json")
    log.info("test: " + "  ".join(f"{key.removeprefix('test_')} {value:.4f}" for key, value in metrics.items()))
    return metrics


def config_of_run(merged: DictConfig, cfg: DictConfig) -> DictConfig:
    """The evaluated run's stored config (typed again by the current schemas), with the eval command's own keys
    and its single-key overrides (``data.root=…``) on top."""
    missing = [key for key in ("model", "data") if OmegaConf.is_missing(merged, key)]
    if missing:
        raise UserError(f"run {cfg.run_id}: its config/config.yaml lacks {missing}; task=eval reads runs of task=train")
    own_groups = {key: merged[key].name for key in GROUPS}
    for key in ("task", "eval", "tracking", "run_id", "weights"):
        OmegaConf.update(merged, key, cfg[key], force_add=True)
    OmegaConf.update(merged, "trainer", {"device": cfg.trainer.device, "progress": cfg.trainer.progress}, merge=True)
    for override in command_line_overrides():
        key = override_key(override)
        if key.startswith(EVAL_KEYS):
            continue
        if key in GROUPS and override.split("=", 1)[1] == own_groups[key]:
            continue  # naming the run's own option changes nothing
        if key in GROUPS or "." not in key:
            raise UserError(
                f"{override}: task=eval keeps the evaluated run's config groups; override single keys "
                f"(data.root=…, data.test_csv=…), or evaluate a file with weights=<path> and any config"
            )
        OmegaConf.update(merged, key, OmegaConf.select(cfg, key), force_add=True)
    return merged


class Source(NamedTuple):
    """What an evaluation evaluates: the weights, the config they were trained with, and how to name them."""

    cfg: DictConfig
    state: dict[str, torch.Tensor]
    label: str  # how messages name the weights
    run_name: str
    parent: str | None  # the evaluated run, which the evaluation run is nested under


def _source(cfg: DictConfig) -> Source:
    """A run's best weights and its own config (``run_id=``), or a state_dict file and the command line's."""
    if bool(cfg.run_id) == bool(cfg.weights):
        raise UserError("task=eval needs exactly one of run_id=<MLflow run id> or weights=<state_dict file>")
    if not cfg.run_id:
        weights = Path(cfg.weights)
        return Source(cfg, read_state_dict(weights, "weights"), f"weights={weights}", f"eval-{weights.stem}", None)
    store = Store(cfg.tracking.uri)
    source = store.run(cfg.run_id)
    with tempfile.TemporaryDirectory() as scratch:
        no_weights = "the run ended before a validation epoch; evaluate a file with weights=<path> instead"
        state = read_state_dict(store.download(source, "weights/best.pt", Path(scratch), no_weights), "weights")
    run_cfg = config_of_run(store.stored_config(source, "task=eval reads runs made by task=train"), cfg)
    return Source(run_cfg, state, f"run {source.id}'s weights/best.pt", f"{source.name}-eval", source.id)


def evaluate(composed: DictConfig) -> dict[str, float]:
    """Evaluate a run's best weights (``run_id=``) or a state_dict file (``weights=``) on the test split."""
    source = _source(composed)
    check_config(source.cfg)
    cfg: Config = OmegaConf.to_object(composed)
    run_cfg: Config = OmegaConf.to_object(source.cfg)
    device = resolve_device(cfg.trainer.device, sweep_job_number())
    model = build_model(run_cfg.model.depth, run_cfg.model.num_classes)
    load_trained(model, source.state, source.label, run_cfg.model.name)
    test = load_splits(run_cfg.data).test
    if test is None:
        raise UserError(
            f"data.root={run_cfg.data.root}: no test split found there; point data.root (or data.test_csv, "
            f"data.test_set) at a test set"
        )
    _, tags = launch_context(cfg)
    tags |= {
        "model": run_cfg.model.name,
        "data": run_cfg.data.name,
        "evaluated": source.parent or str(Path(cfg.weights)),
    }
    track = cfg.tracking
    with tracked_run(track, source.run_name, tags, source.parent) as run:
        log.info("evaluation run %s (%d test images): %s", run.id, len(test), run.link)
        run.log_params({"eval.tta": TTA(cfg.eval.tta).value, "data.root": run_cfg.data.root, "test.source": test.source,
                        "test.images": len(test), "weights": source.label})  # fmt: skip
        acceleration = Acceleration.for_device(cfg.trainer, device)
        runnable = acceleration.model(model, device, compile_model=False)
        return evaluate_test(runnable, run_cfg, test, device, run, acceleration)
