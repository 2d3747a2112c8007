"""task=eval: the evaluation that ends task=train (leukemia.tasks.scoring), again, for a run's best weights or a
state_dict file: calibration on the validation split, a Kaggle-style submission for the test split, and test
metrics, intervals and figures when the split is labelled.

``python run.py task=eval run_id=<id>`` reads the run's own resolved config and best weights back from MLflow
and logs into a new child run nested under it (the training run's own numbers stay as they were);
``weights=<file>`` evaluates a local state_dict with the config composed on the command line.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import NamedTuple

import torch
from omegaconf import DictConfig, OmegaConf

from leukemia.config import GROUPS, TTA, Config, check_config
from leukemia.data.cache import cache_folder
from leukemia.data.feed import check_decodable
from leukemia.data.layouts import load_splits
from leukemia.errors import UserError
from leukemia.models import build_model, load_trained, read_state_dict
from leukemia.tasks.context import (
    check_fits_data,
    command_line_overrides,
    launch_context,
    override_key,
    sweep_job_number,
)
from leukemia.tasks.scoring import Evaluator
from leukemia.tracking.runs import tracked_run
from leukemia.tracking.store import Store
from leukemia.training.runtime import Acceleration, resolve_device

log = logging.getLogger(__name__)

# Keys the eval command sets for itself rather than taking from the evaluated run.
EVAL_KEYS = ("task", "run_id", "weights", "eval", "tracking", "trainer.device", "trainer.progress", "hydra")


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
    splits = load_splits(run_cfg.data)
    check_fits_data(run_cfg, splits)
    test = splits.test
    if test is None:
        raise UserError(
            f"data.root={run_cfg.data.root}: no test split found there; point data.root (or data.test_csv, "
            f"data.test_set) at a test set"
        )
    check_decodable(test, run_cfg.data, cache_folder(run_cfg.paths.cache_dir))  # before the evaluation run opens
    _, tags = launch_context(cfg)
    tags |= {
        "model": run_cfg.model.name,
        "data": run_cfg.data.name,
        "evaluated": source.parent or str(Path(cfg.weights)),
    }
    track = cfg.tracking
    with tracked_run(track, source.run_name, tags, source.parent) as run:
        log.info("evaluation run %s (%d test images): %s", run.id, len(test), run.link)
        run.log_params({"eval.tta": TTA(cfg.eval.tta).value, "eval.threshold": cfg.eval.threshold,
                        "eval.bootstrap": cfg.eval.bootstrap, "data.root": run_cfg.data.root,
                        "test.source": test.source, "test.images": len(test), "weights": source.label})  # fmt: skip
        acceleration = Acceleration.for_device(cfg.trainer, device)
        runnable = acceleration.model(model, device, compile_mode=None)
        evaluator = Evaluator(run_cfg, runnable, model, device, acceleration, run)
        decision, _ = evaluator.calibrate(splits.valid)
        return evaluator.test(test, decision).metrics
