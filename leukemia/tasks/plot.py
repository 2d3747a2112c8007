"""task=plot: compare training runs read back from MLflow.

By default the runs of the latest sweep in ``tracking.experiment``, or those named by ``plot.runs``. Writes the
seed's comparison figure (train and validation accuracy per epoch of every run, on one figure), the loss
curves, the runs' confusion matrices side by side, and a summary table (CSV and Markdown) of each run's best
metrics and hyper-parameters, into the job's output folder and into a new MLflow run of kind "plot"; names
the registered champion among the runs' model versions.

Runs are compared with a reference, the best on validation (``best_<trainer.monitor>``, never a test score),
by a paired bootstrap of the difference of their test scores on the same cells: "better", "worse" or "not
distinguishable" from the interval of that difference (``leukemia.evaluation.comparison``).
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from leukemia.config import Config
from leukemia.errors import UserError
from leukemia.evaluation.comparison import COMPARED, VERDICT, WHY, difference, odds_ratio, paired_comparison
from leukemia.evaluation.figures import comparison_figure, confusion_grid_figure
from leukemia.evaluation.report import PREDICTIONS
from leukemia.names import (
    ACCURACY,
    BALANCED_ACCURACY,
    BEST_EPOCH,
    CHALLENGE,
    CLASS_ACCURACIES,
    CLASS_NAMES,
    ECE,
    ECE_CALIBRATED,
    F1_WEIGHTED,
    INTERVAL_SCORES,
    LOSS,
    SUBJECT_ACCURACY,
    SUBJECT_BALANCED_ACCURACY,
    TEMPERATURE,
    TEST,
    THRESHOLD,
    TRAIN,
    VAL,
    best,
    final,
    interval,
    of,
)
from leukemia.tasks.context import launch_context, output_dir
from leukemia.tracking.registry import CHAMPION, Version, versions_of
from leukemia.tracking.runs import tracked_run
from leukemia.tracking.store import RunRecord, Store
from leukemia.training.schema import Monitor

log = logging.getLogger(__name__)

CURVES = tuple(of(split, score) for score in (ACCURACY, LOSS) for split in (TRAIN, VAL))
# Hyper-parameters every summary row shows; any other param that differs between the runs is added.
KEY_PARAMS = ("model.name", "optim.name", "optim.lr", "data.batch_size", "data.image_size", "trainer.epochs")
SUMMARY_METRICS = (
    BEST_EPOCH,
    *(best(of(VAL, score)) for score in (ACCURACY, BALANCED_ACCURACY, F1_WEIGHTED, *CLASS_ACCURACIES)),
    *(
        of(TEST, score)
        for score in (*INTERVAL_SCORES, SUBJECT_ACCURACY, SUBJECT_BALANCED_ACCURACY, ECE, ECE_CALIBRATED)
    ),
    TEMPERATURE,
    THRESHOLD,
)
# Test scores logged with bootstrap intervals (test_<score>_ci_low, _ci_high); the Markdown table shows each
# as ``score [low, high]``, and the paired difference of the challenge metric from the reference run's.
INTERVAL_METRICS = tuple(of(TEST, score) for score in INTERVAL_SCORES)
PAIRED = odds_ratio(CHALLENGE)  # shown in summary.md with the difference; the others are in summary.csv only
PAIRED_DETAIL = tuple(name(score) for score in COMPARED if score != CHALLENGE for name in (difference, odds_ratio))
# Params that differ between runs without being hyper-parameters (or that follow from one, as the depth).
NOT_HYPERPARAMETERS = ("dataset.", "paths.", "tracking.", "run_name", "run_id", "weights", "plot.", "task",
                       "model.depth", "data.test_csv", "data.test_labels_csv")  # fmt: skip


def select_runs(store: Store, cfg: Config) -> tuple[list[RunRecord], str]:
    """The runs to compare and what they are (for titles): ``plot.runs``, else the newest sweep's jobs."""
    if cfg.plot.runs:
        return [store.run(run_id, key="plot.runs") for run_id in cfg.plot.runs], f"{len(cfg.plot.runs)} runs"
    swept = [run for run in store.runs(cfg.tracking.experiment)
             if run.tags.get("task") == "train" and "sweep_id" in run.tags]  # fmt: skip
    if not swept:
        raise UserError(
            f"tracking.experiment={cfg.tracking.experiment}: no sweep runs in {cfg.tracking.uri}; run a sweep "
            f"(python run.py -m model=resnet18,resnet50) or name runs with plot.runs=[<id>,<id>]"
        )
    sweep = swept[0].tags["sweep_id"]  # runs come newest first
    runs = sorted((run for run in swept if run.tags["sweep_id"] == sweep), key=lambda run: int(run.tags["sweep_job"]))
    return runs, "sweep " + " ".join(Path(sweep).parts[-2:])  # multirun/<date>/<time>-<pid>


def varying_params(runs: list[RunRecord]) -> list[str]:
    """Hyper-parameters whose values differ between the runs (what tells them apart)."""
    keys = sorted({key for run in runs for key in run.params if not key.startswith(NOT_HYPERPARAMETERS)})
    return [key for key in keys if len({run.params.get(key) for run in runs}) > 1]


def run_labels(runs: list[RunRecord], varying: list[str]) -> list[str]:
    """``resnet18 sgd lr=0.001`` plus the other hyper-parameters that differ; made unique with the run name."""
    extras = [key for key in varying if key not in ("model.name", "model.depth", "optim.name", "optim.lr")][:3]
    labels = []
    for run in runs:
        params = run.params
        label = f"{params.get('model.name', '?')} {params.get('optim.name', '?')} lr={params.get('optim.lr')}"
        labels.append(label + "".join(f" {key.split('.')[-1]}={params.get(key)}" for key in extras))
    if len(set(labels)) < len(labels):
        labels = [f"{label} [{run.name}]" for label, run in zip(labels, runs, strict=True)]
    return labels


def summary_table(runs: list[RunRecord], varying: list[str], versions: list[Version]) -> pd.DataFrame:
    """One row per run: its hyper-parameters, best metrics and, when it registered its model, the version
    (``cells/2 @champion``)."""
    columns = list(dict.fromkeys([*KEY_PARAMS, *varying]))
    registered = {run.id: " ".join(f"{v.name}/{v.version}" + f" @{CHAMPION}" * v.champion for v in versions
                                   if v.run_id == run.id) for run in runs}  # fmt: skip
    rows = []
    for run in runs:
        row = {"run": run.name, "run_id": run.id, "status": run.status}
        row |= {"registered": registered[run.id]} if versions else {}
        row |= {key: run.params.get(key, "") for key in columns}
        row |= {key: run.metrics[key] for key in SUMMARY_METRICS if key in run.metrics}
        row |= {bound: run.metrics[bound] for key in INTERVAL_METRICS for bound in interval(key)
                if bound in run.metrics}  # fmt: skip
        rows.append(row)
    return pd.DataFrame(rows)


def with_intervals(table: pd.DataFrame) -> pd.DataFrame:
    """The summary with each interval beside its score (``0.9560 [0.9300, 0.9780]``) and, where the runs were
    compared with the reference, each one's paired difference of the challenge metric with its interval and
    the verdict (``better``, ``worse``, ``not distinguishable``; the reference says ``reference``)."""

    def shown_with(value: float, low: float, high: float) -> str:
        return "" if np.isnan(value) else f"{value:.4f}" + ("" if np.isnan(low) else f" [{low:.4f}, {high:.4f}]")

    shown = table.copy()
    for key in (*INTERVAL_METRICS, PAIRED):
        low, high = interval(key)
        if low in shown:
            shown[key] = [shown_with(*values) for values in zip(table[key], table[low], table[high], strict=True)]
            shown = shown.drop(columns=[low, high])
    dropped = [column for column in shown if column.startswith(PAIRED_DETAIL)]
    if WHY in shown and not shown[WHY].fillna("").astype(bool).any():
        dropped.append(WHY)  # every comparison was made
    return shown.drop(columns=dropped)


def reference_run(runs: list[RunRecord]) -> tuple[RunRecord | None, str]:
    """The run the others are compared with: the best by its validation ``best_<trainer.monitor>`` (never a
    test score), and that metric's name; None where no run has it."""
    monitor = Monitor(runs[0].params.get("trainer.monitor", Monitor.val_f1_weighted.value).split(".")[-1])
    key = best(monitor.value)
    candidates = [run for run in runs if key in run.metrics]
    if not candidates:
        return None, key
    sign = -1 if monitor.direction == "minimize" else 1
    return max(candidates, key=lambda run: sign * run.metrics[key]), key


def paired_table(store: Store, runs: list[RunRecord], reference: RunRecord, scratch: Path, cfg: Config
                 ) -> pd.DataFrame:  # fmt: skip
    """Per run, its paired comparison with ``reference`` on their test predictions (``predictions.csv``)."""
    predictions = {}
    for run in runs:
        try:
            path = store.download(run, PREDICTIONS, scratch / run.id, "")
        except UserError:
            continue
        predictions[run.id] = pd.read_csv(path, dtype={"ID": str, "subject": str}, keep_default_na=False)
    rows = []
    for run in runs:
        if run.id == reference.id:
            row = {VERDICT: "reference", WHY: ""}
        elif run.id not in predictions or reference.id not in predictions:
            row = {VERDICT: "", WHY: f"no {PREDICTIONS} to pair"}
        else:
            thresholds = (reference.metrics.get(THRESHOLD, 0.5), run.metrics.get(THRESHOLD, 0.5))
            row = paired_comparison(predictions[reference.id], predictions[run.id], thresholds, cfg.eval.bootstrap,
                                    cfg.seed)  # fmt: skip
        rows.append({"run_id": run.id, **row})
    table = pd.DataFrame(rows)
    first = ["run_id", *(column for column in table if column not in ("run_id", VERDICT, WHY))]
    return table[[*first, VERDICT, WHY]]  # the differences, then what they say


CV_METRICS = tuple(of(VAL, score) for score in (ACCURACY, BALANCED_ACCURACY, F1_WEIGHTED, *CLASS_ACCURACIES, LOSS))
FOLD_PARAMS = ("data.fold",)  # what differs between the folds of one configuration


def worst_fold(metric: str) -> tuple[str, Any]:
    """The column for a metric's worst fold and how to find it: the highest loss, the lowest score."""
    return (f"{metric}_max", np.max) if metric == of(VAL, LOSS) else (f"{metric}_min", np.min)


def cv_summary(runs: list[RunRecord], varying: list[str]) -> pd.DataFrame | None:
    """Cross-validation: per configuration (the runs that differ only in ``data.fold``), the number of folds and
    the mean, sample standard deviation and worst fold of each final-epoch validation metric. None when no run
    is a fold."""
    configuration = [key for key in varying if key not in FOLD_PARAMS]
    groups: dict[tuple[str, ...], list[RunRecord]] = {}
    for run in runs:
        if "fold" in run.tags:
            groups.setdefault(tuple(run.params.get(key, "") for key in configuration), []).append(run)
    if not groups:
        return None
    rows = []
    for values, members in groups.items():
        row: dict[str, Any] = dict(zip(configuration, values, strict=True)) | {"folds": len(members)}
        for metric in CV_METRICS:
            finals = np.array([run.metrics.get(final(metric), np.nan) for run in members])
            row[f"{metric}_mean"] = float(np.mean(finals))
            row[f"{metric}_std"] = float(np.std(finals, ddof=1)) if len(finals) > 1 else np.nan
            column, worst = worst_fold(metric)
            row[column] = float(worst(finals))
        rows.append(row)
    return pd.DataFrame(rows)


def readable(folds: pd.DataFrame) -> pd.DataFrame:
    """The cross-validation table with each metric in one cell: ``mean ± std (worst fold)``."""
    shown = folds[[column for column in folds.columns if not column.startswith(CV_METRICS)]].copy()
    for metric in CV_METRICS:
        columns = zip(folds[f"{metric}_mean"], folds[f"{metric}_std"], folds[worst_fold(metric)[0]], strict=True)
        shown[metric] = [f"{mean:.4f} ± {std:.4f} (worst {bad:.4f})" for mean, std, bad in columns]
    return shown


def markdown(table: pd.DataFrame) -> str:
    """A GitHub-style Markdown table (numbers to 4 decimals, best_epoch as an integer)."""

    def cell(column: str, value: object) -> str:
        if isinstance(value, float):
            return "" if np.isnan(value) else f"{value:.0f}" if column == BEST_EPOCH else f"{value:.4f}"
        return str(value)

    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    for row in table.itertuples(index=False):
        lines.append(
            "| " + " | ".join(cell(column, value) for column, value in zip(table.columns, row, strict=True)) + " |"
        )
    return "\n".join(lines) + "\n"


def confusion_matrices(store: Store, runs: list[RunRecord], labels: list[str], scratch: Path) -> dict:
    """Each run's best-epoch validation confusion matrix (runs without one are left out, with a warning)."""
    matrices = {}
    for run, label in zip(runs, labels, strict=True):
        try:
            path = store.download(run, "figures/confusion_matrix.json", scratch / run.id, "")
        except UserError:
            log.warning("run %s (%s) has no confusion matrix; it is left out of the grid", run.id, run.name)
            continue
        matrices[label] = np.array(json.loads(path.read_text())["counts"])
    return matrices


def comparison_note(reference: RunRecord | None, key: str) -> str:
    """summary.md's first lines: which run is the reference, chosen how, and how the differences were made."""
    if reference is None:
        return f"No paired comparison: no run has {key} (the validation metric the reference is chosen by).\n\n"
    return (f"Reference: **{reference.name}** (`{reference.id}`), the best by {key} = {reference.metrics[key]:.4f} "
            f"on validation (never by a test score). `{difference(CHALLENGE)}`: each run's {CHALLENGE} minus the "
            f"reference's on the same test cells; `{PAIRED}`: logit of its {CHALLENGE} minus the reference's, with "
            f"a paired 95% bootstrap interval (the same draws of subjects, or cells where none are known, for both "
            f"runs); `{VERDICT}`: better or worse where that interval excludes 0, else not distinguishable."
            "\n\n")  # fmt: skip


def write_tables(folder: Path, runs: list[RunRecord], varying: list[str], versions: list[Version],
                 paired: pd.DataFrame | None, note: str) -> tuple[pd.DataFrame, pd.DataFrame | None]:  # fmt: skip
    """The summary table (with the paired comparison, where made) and, over fold runs, the cross-validation
    summary, as CSV and Markdown (``note`` first) in ``folder``."""
    table = summary_table(runs, varying, versions)
    if paired is not None:
        table = table.merge(paired, on="run_id", how="left")
    table.to_csv(folder / "summary.csv", index=False)
    (folder / "summary.md").write_text(note + markdown(with_intervals(table)))
    folds = cv_summary(runs, varying)
    if folds is not None:
        folds.to_csv(folder / "cv_summary.csv", index=False)
        (folder / "cv_summary.md").write_text(markdown(readable(folds)))
    return table, folds


def paired_metrics(table: pd.DataFrame) -> dict[str, float]:
    """The plot run's metrics of the comparison: ``paired_<run id>_<score>_difference``, ``…_log_odds_ratio``
    and the latter's bounds."""
    names = tuple(name(score) for score in COMPARED for name in (difference, odds_ratio))
    columns = [column for column in table if column.startswith(names)]
    return {f"paired_{row['run_id']}_{column}": float(row[column]) for _, row in table.iterrows()
            for column in columns if np.isfinite(row[column])}  # fmt: skip


def plot(composed: DictConfig) -> dict[str, float]:
    """Compare runs: figures and tables into the output folder and a new "plot" run; returns nothing to
    optimise (an empty dict)."""
    cfg: Config = OmegaConf.to_object(composed)
    store = Store(cfg.tracking.uri)
    runs, what = select_runs(store, cfg)
    varying = varying_params(runs)
    labels = run_labels(runs, varying)
    histories = {
        label: {key: store.history(run.id, key) for key in CURVES} for label, run in zip(labels, runs, strict=True)
    }
    folder = output_dir()
    folder.mkdir(parents=True, exist_ok=True)
    versions = versions_of(cfg.tracking.uri, [run.id for run in runs])
    reference, key = reference_run(runs)
    with tempfile.TemporaryDirectory() as scratch:
        matrices = confusion_matrices(store, runs, labels, Path(scratch))
        paired = None if reference is None else paired_table(store, runs, reference, Path(scratch), cfg)
    table, folds = write_tables(folder, runs, varying, versions, paired, comparison_note(reference, key))
    tables = ["summary.csv", "summary.md"] + (["cv_summary.csv", "cv_summary.md"] if folds is not None else [])
    figures = {
        "comparison_accuracy.png": comparison_figure(histories, "accuracy", "accuracy", f"Accuracy per epoch: {what}"),
        "comparison_loss.png": comparison_figure(histories, "loss", "cross-entropy", f"Loss per epoch: {what}"),
    }
    if matrices:
        title = f"Validation confusion matrices (best epoch): {what}"
        figures["confusion_matrices.png"] = confusion_grid_figure(matrices, CLASS_NAMES, title)
    _, tags = launch_context(cfg)
    tags = {key: value for key, value in tags.items() if key not in ("model", "data")}
    tags["compared_runs"] = " ".join(run.id for run in runs)
    crowned = [version for version in versions if version.champion]
    if crowned:
        tags["champion"] = " ".join(str(champion) for champion in crowned)
    name = f"plot-{what.replace(' ', '-')}"
    with tracked_run(cfg.tracking, name, tags) as report:
        for file_name, figure in figures.items():
            figure.savefig(folder / file_name, dpi=120)
            report.log_figure(figure, f"plot/{file_name}")
        for file_name in tables:
            report.log_artifact(folder / file_name, "plot")
        report.log_metrics(paired_metrics(table))
        log.info("compared %d runs (%s):\n%s%s", len(runs), what, comparison_note(reference, key),
                 markdown(with_intervals(table)))  # fmt: skip
        for champion in crowned:
            log.info("champion: %s", champion)
        if folds is not None:
            if len(folds) == 1:  # one configuration: its cross-validated scores as the report's metrics
                report.log_metrics({f"cv_{key}": value for key, value in folds.iloc[0].items()
                                    if key.startswith(CV_METRICS) and not np.isnan(value)})  # fmt: skip
            log.info("cross-validation, final epoch of each fold:\n%s", markdown(readable(folds)))
        log.info("report in %s and MLflow run %s: %s", folder, report.id, report.link)
    return {}
