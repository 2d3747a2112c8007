"""task=train: train, validate every epoch, keep the best epoch, then evaluate it on the test split."""

from __future__ import annotations

import logging
from contextlib import ExitStack
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from leukemia import names
from leukemia.config import Config, check_config
from leukemia.data.augmentation import BatchAugmentation
from leukemia.data.cache import cache_folder
from leukemia.data.decoding import png
from leukemia.data.feed import check_decodable
from leukemia.data.layouts import load_splits
from leukemia.data.loading import displayable, preview
from leukemia.data.manifest import Manifest, Splits, summarize, summary_lines
from leukemia.errors import UserError
from leukemia.evaluation.decision import Decision
from leukemia.evaluation.figures import confusion_matrix_figure, image_grid_figure, learning_curves_figure
from leukemia.evaluation.metrics import confusion_counts
from leukemia.evaluation.report import Report
from leukemia.evaluation.subjects import COUNTS
from leukemia.names import (
    ACCURACY,
    BEST_EPOCH,
    CALIBRATION_INTERCEPT,
    CALIBRATION_SLOPE,
    CLASS_NAMES,
    ECE,
    ECE_CALIBRATED,
    INTERVAL_SCORES,
    RATES,
    SUBJECT,
    SUBJECT_ACCURACY,
    SUBJECT_ROC_AUC,
    SUBJECT_THRESHOLD,
    SUBJECTS,
    TEMPERATURE_AT_BOUND,
    TEST,
    THRESHOLD,
    VAL,
    final,
    interval,
    of,
)
from leukemia.tasks.context import (
    check_fits_data,
    command_line_overrides,
    launch_context,
    output_dir,
    sweep_job_number,
    sweep_run_id,
)
from leukemia.tasks.resume import CHECKPOINT_TAG, ResumePoint, log_unlogged_epochs, requeued_run, resume_point
from leukemia.tasks.scoring import Evaluator
from leukemia.tracking.cell_model import MODEL_NAME, Preprocessing
from leukemia.tracking.registry import register
from leukemia.tracking.runs import Run, flatten, tracked_run
from leukemia.training.checkpoint import CHECKPOINT_NAME, claimed
from leukemia.training.loop import BestEpoch, Progress, Trainer
from leukemia.training.runtime import resolve_device, seed_everything
from leukemia.training.schema import Monitor
from leukemia.training.stopping import Stopped, StopRequest

log = logging.getLogger(__name__)


def log_dataset(run: Run, splits: Splits) -> None:
    """The dataset summary: a table in the log, counts as params, the table and subject lists as JSON, and each
    split as one of the run's Datasets."""
    table = summarize(splits)
    for line in summary_lines(table):
        log.info(line)
    run.log_params({f"dataset.{split}.{key}": value for split, row in table.items() for key, value in row.items()})
    subjects = {m.name: sorted(m.subject_set()) for m in splits.present() if m.subjects is not None}
    run.log_dict({"counts": table, "subjects": subjects}, "data/summary.json")
    for manifest in splits.present():
        counts = {key: str(value) for key, value in table[manifest.name].items()}
        run.log_dataset(manifest.table(), manifest.name, manifest.source, counts)


def log_training_preview(run: Run, cfg: Config, splits: Splits, run_name: str) -> None:
    """A grid of training images as the model sees them (denormalised to view): decoded and augmented as the
    feed does it, with an augmentation of their own (the run's random draws stay as they were)."""
    batch = preview(splits.train, cfg.data.crop_size, cfg.data.image_size, count=16)
    if not len(batch.labels):
        return
    augmentation = BatchAugmentation(cfg.augmentation, cfg.data.mean, cfg.data.std, torch.device("cpu"), cfg.seed)
    images = displayable(augmentation(batch.images, train=True), cfg.data.mean, cfg.data.std)
    title = f"{run_name}: training images after preprocessing and augmentation"
    run.log_figure(image_grid_figure(images, batch.labels.tolist(), CLASS_NAMES, title), "figures/train_samples.png")


def _log_outcome(run: Run, run_name: str, best: BestEpoch, history: dict[str, list[float]]) -> None:
    """End-of-run artifacts: best- and final-epoch metrics, confusion matrix (figure + counts), curves, weights."""
    run.log_metrics({BEST_EPOCH: best.epoch} | {names.best(key): value for key, value in best.metrics.items()})
    # The last epoch's validation scores: what cross-validation reports, as picking an epoch by the validation
    # fold would flatter it.
    run.log_metrics({final(key): values[-1] for key, values in history.items() if key.startswith(of(VAL, ""))})
    title = f"{run_name}: validation, best epoch {best.epoch} by {best.monitor.value}"
    run.log_figure(confusion_matrix_figure(best.matrix, CLASS_NAMES, title), "figures/confusion_matrix.png")
    run.log_dict(confusion_counts(best.matrix, CLASS_NAMES, epoch=best.epoch), "figures/confusion_matrix.json")
    run.log_figure(learning_curves_figure(history, run_name), "figures/learning_curves.png")
    run.log_state_dict(best.state, "weights/best.pt")


def log_model(run: Run, cfg: Config, best: BestEpoch, example: Manifest, decision: Decision) -> None:
    """The best epoch as the run's MLflow Model, with its temperature and threshold and a decoded image of
    ``example`` as its input example; with ``registry.name``, registered as a new version of that model."""
    data = cfg.data
    spec = Preprocessing(cfg.model.depth, cfg.model.num_classes, data.crop_size, data.image_size, data.mean, data.std,
                         decision)  # fmt: skip
    pixels = preview(example, data.crop_size, data.image_size, count=2).images  # one of each class, readable
    model_uri = run.log_model(best.state, spec, png(pixels[0]))
    if cfg.registry.name:
        tags = {"depth": str(cfg.model.depth), "data": data.name, "monitor": best.monitor.value,
                best.monitor.value: f"{best.value:.6g}", "run_name": run.name}  # fmt: skip
        version = register(model_uri, cfg.registry.name, tags)
        log.info("registered as models:/%s/%s", version.name, version.version)


def _begin(run: Run, composed: DictConfig, trainer: Trainer, splits: Splits, resumed: ResumePoint | None) -> Progress:
    """What a run logs once (again, the same, when it starts over), or, resumed, its checkpoint's state and any
    epochs MLflow has not seen."""
    cfg = trainer.cfg
    container = OmegaConf.to_container(composed, resolve=True, enum_to_str=True)
    run.log_text(OmegaConf.to_yaml(container), "config/config.yaml")  # a resume may raise trainer.epochs
    if resumed and resumed.state:
        progress = trainer.restore(resumed.state)
        log_unlogged_epochs(run, cfg.tracking.uri, progress.history)
        return progress
    logged = resumed.run.params if resumed else {}  # a run starting over keeps the params it logged
    run.log_params({k: v for k, v in (flatten(container) | trainer.balance_params).items() if k not in logged})
    run.log_text(OmegaConf.to_yaml(command_line_overrides()), "config/overrides.yaml")
    log_dataset(run, splits)
    log_training_preview(run, cfg, splits, run.name)
    return Progress(BestEpoch(Monitor(cfg.trainer.monitor)))


def _say_how_to_continue(stop: KeyboardInterrupt, run: Run, progress: Progress, checkpoint: Path) -> None:
    continue_with = f"python run.py resume={run.id}"
    log.warning("stopped in epoch %d; the checkpoint after epoch %d is %s; continue with: %s",
                progress.epoch + 1, progress.epoch, checkpoint, continue_with)  # fmt: skip
    if isinstance(stop, Stopped):
        stop.continue_with = continue_with


def _finish(run: Run, trainer: Trainer, progress: Progress, splits: Splits, stop: StopRequest) -> float:
    """The best epoch's record, its calibration on validation and model, its test evaluation (which a stop may
    end: a resume then does it again), the skipped files, the run's description; returns the monitored value."""
    best = progress.best
    if best.state is None:
        raise UserError("no epoch gave a finite validation score; check trainer.epochs and the valid split")
    _log_outcome(run, run.name, best, progress.history)
    trainer.model.load_state_dict(best.state)
    evaluator = Evaluator(trainer.cfg, trainer.runnable, trainer.model, trainer.device, trainer.acceleration, run)
    with stop.interruptible():
        decision, validated = evaluator.calibrate(splits.valid)
    log_model(run, trainer.cfg, best, splits.train, decision)
    tested = Report()
    if splits.test is not None:
        with stop.interruptible():
            tested = evaluator.test(splits.test, decision)
    if progress.skipped.seen:
        run.log_text("\n".join(progress.skipped.seen) + "\n", "data/skipped_images.txt")
    run.set_description(description(run, trainer.cfg, best, validated | tested, decision))
    log.info("best epoch %d: %s %.4f; %s", best.epoch, best.monitor.value, best.value, run.where_to_look)
    return best.value


def _scores(metrics: dict[str, float], split: str, scores: tuple[str, ...] = INTERVAL_SCORES) -> str:
    """``accuracy 0.9560 [0.9300, 0.9780], …``: a split's scores, with their intervals where logged."""
    shown = []
    for score in scores:
        key = of(split, score)
        if key in metrics:
            low, high = (metrics.get(bound) for bound in interval(key))
            bounds = "" if low is None else f" [{low:.4f}, {high:.4f}]"
            shown.append(f"{score} {metrics[key]:.4f}{bounds}")
    return ", ".join(shown)


def _evaluation_lines(evaluated: Report) -> list[str]:
    """The description's lines on the test split: scores with intervals (and how they were made, or why there
    are none), per subject, calibration, and the temperature's bound where it was reached."""
    metrics, tags = evaluated.metrics, evaluated.tags
    lines = [f"- test: {_scores(metrics, TEST) or 'no labelled test split'}"]
    lines += [f"- test intervals: {tags[of(TEST, 'ci')]}"] if of(TEST, "ci") in tags else []
    subjects = metrics.get(of(TEST, SUBJECTS))
    if subjects:
        counts = ", ".join(f"{name} {metrics[of(TEST, f'{SUBJECT}_{name}')]:.0f}" for name in COUNTS)
        auc = tags.get(of(TEST, SUBJECT_ROC_AUC)) or f"{metrics[of(TEST, SUBJECT_ROC_AUC)]:.4f}"
        rates = _scores(metrics, TEST, tuple(f"{SUBJECT}_{rate}" for rate in RATES))
        lines += [f"- test subjects ({subjects:.0f}; {counts}): accuracy {metrics[of(TEST, SUBJECT_ACCURACY)]:.4f}, "
                  f"{rates} (95% exact intervals); ROC AUC {auc}; a subject is ALL at mean P(ALL) >= "
                  f"{metrics.get(SUBJECT_THRESHOLD, metrics[THRESHOLD]):.3f}, "
                  f"{tags.get(SUBJECT_THRESHOLD, 'the cell threshold')}"]  # fmt: skip
    if of(TEST, ECE) in metrics:
        intercept, slope = (metrics.get(of(TEST, key)) for key in (CALIBRATION_INTERCEPT, CALIBRATION_SLOPE))
        slope = tags.get(of(TEST, CALIBRATION_SLOPE)) or f"intercept {intercept:.3f}, slope {slope:.3f}"
        lines += [f"- test calibration: ECE {metrics[of(TEST, ECE)]:.4f} as trained, "
                  f"{metrics[of(TEST, ECE_CALIBRATED)]:.4f} calibrated; logistic recalibration {slope}"]  # fmt: skip
    bound = tags.get(TEMPERATURE_AT_BOUND, "false")
    return lines + ([f"- **temperature at its bound**: {bound.removeprefix('true: ')}"] if bound != "false" else [])


def description(run: Run, cfg: Config, best: BestEpoch, evaluated: Report, decision: Decision) -> str:
    """The run page's Description: what was trained, the best epoch's validation and the test scores (with
    intervals, per subject, calibration), where the model and the figures are."""
    tested = of(TEST, ACCURACY) in evaluated.metrics
    figures = ("confusion_matrix", "learning_curves", "train_samples", "val_reliability")
    figures += ("test_confusion_matrix", "test_roc", "test_pr", "test_reliability", "test_reliability_all",
                "test_decision_curve", "gradcam") if tested else ()  # fmt: skip
    links = ", ".join(f"[{name.replace('_', ' ')}]({run.artifact_link(f'figures/{name}.png')})" for name in figures)
    tta = " on the mean of four flips (eval.tta=flips)" * decision.flips
    return "\n".join([
        f"**{cfg.model.name}** on **{cfg.data.name}** ({cfg.data.root}), {cfg.optim.name} lr {cfg.optim.lr:g}, "
        f"{cfg.trainer.epochs} epochs",
        "",
        f"- best epoch: {best.epoch}, by {best.monitor.value} {best.value:.4f}",
        f"- validation (best epoch): {_scores(best.metrics, VAL)}",
        f"- calibrated on validation{tta}: temperature {decision.temperature:.3f}, threshold "
        f"{decision.threshold:.3f} (eval.threshold={cfg.eval.threshold})",
        *_evaluation_lines(evaluated),
        f"- model: `runs:/{run.id}/{MODEL_NAME}`" + (f", a version of `{cfg.registry.name}`" * bool(cfg.registry.name)),
        f"- figures: {links}",
    ])  # fmt: skip


def _prepare(composed: DictConfig, hold: ExitStack) -> tuple[ResumePoint | None, DictConfig, Trainer, Splits]:
    """The run to resume (``resume=``, or the one a requeued cluster job began) with its checkpoint folder
    claimed in ``hold``; the effective config, and the data and the trainer built for it (typed, converted once)."""
    run_id = composed.resume or requeued_run(output_dir())
    resumed = resume_point(composed, run_id, hold) if run_id else None
    composed = resumed.cfg if resumed else composed
    check_config(composed)
    cfg: Config = OmegaConf.to_object(composed)
    seed_everything(cfg.seed, cfg.trainer.deterministic)
    device = resolve_device(cfg.trainer.device, sweep_job_number())
    splits = load_splits(cfg.data)
    check_fits_data(cfg, splits)
    trainer = Trainer(cfg, splits, device)
    if splits.test is not None:
        check_decodable(splits.test, cfg.data, cache_folder(cfg.paths.cache_dir))
    return resumed, composed, trainer, splits


def train(composed: DictConfig, stop: StopRequest) -> float:
    """Train, validate each epoch, keep the best epoch's weights; returns the best epoch's ``trainer.monitor``
    value, what a hyper-parameter search optimises. With ``resume=<run id>`` (or in a requeued cluster job),
    continue that run from its last checkpoint."""
    with ExitStack() as hold:  # the run's checkpoint folder, claimed while it trains
        with stop.interruptible():  # reading and decoding the data can take minutes
            resumed, composed, trainer, splits = _prepare(composed, hold)
        cfg = trainer.cfg
        run_name, tags = launch_context(cfg)
        if resumed:
            run_name, tags["resumed_after_epoch"] = resumed.run.name, str(resumed.epoch)
        tags["data_from"] = trainer.train_feed.where  # data.cache as it turned out: device, disk or files
        log.info("%s on %s: %d train / %d valid images, device %s, training data from %s",
                 run_name, cfg.data.name, len(splits.train), len(splits.valid), trainer.device,
                 trainer.train_feed.where)  # fmt: skip
        track, reopen = cfg.tracking, resumed.run.id if resumed else None
        with tracked_run(track, run_name, tags, parent_run_id=sweep_run_id(), reopen_run_id=reopen) as run:
            checkpoint = resumed.checkpoint if resumed else output_dir() / "checkpoints" / run.id / CHECKPOINT_NAME
            if not resumed:
                hold.enter_context(claimed(checkpoint.parent, run.id))
            run.set_tags({CHECKPOINT_TAG: str(checkpoint)})
            progress = _begin(run, composed, trainer, splits, resumed)
            log.info("MLflow run %s: %s", run.id, run.link)
            progress.skipped.add(trainer.train_feed.skipped + trainer.val_feed.skipped)
            try:
                trainer.fit(progress, checkpoint, run.id, stop, run.log_metrics)
                return _finish(run, trainer, progress, splits, stop)
            except KeyboardInterrupt as stopped:
                _say_how_to_continue(stopped, run, progress, checkpoint)
                raise
