"""The open MLflow run: opened with an explicit name (never MLflow's random one, which repeats once the RNG is
seeded) and always closed with a final status: FINISHED, FAILED on an error, KILLED on a stop."""

from __future__ import annotations

import math
import tempfile
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import torch
from matplotlib.figure import Figure
from mlflow.entities import DatasetInput, InputTag, Metric, Param, RunStatus, RunTag
from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
from mlflow.tracking import MlflowClient
from mlflow.tracking.context.registry import resolve_tags
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT
from mlflow.utils.time import get_current_time_millis

from leukemia.evaluation.report import Report
from leukemia.tracking.cell_model import Preprocessing, log_cell_model
from leukemia.tracking.schema import TrackingConfig
from leukemia.tracking.store import (
    PARENT_TAG,
    client_of,
    ensure_experiment,
    is_server,
    located,
    retry_when_locked,
    ui_base,
)

DESCRIPTION_TAG = "mlflow.note.content"  # the run page's Description, in markdown


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"optim": {"lr": 0.1}} -> {"optim.lr": 0.1}, the form MLflow params take."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def run_link(ui_url: str, experiment_id: str, run_id: str) -> str:
    """Deep link into the MLflow UI's runs table (not its default GenAI traces view)."""
    return f"{ui_url.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}?workflowType=machine_learning"


def artifact_link(ui_url: str, experiment_id: str, run_id: str, artifact: str) -> str:
    """Deep link to one of the run's artifacts in the MLflow UI."""
    return f"{ui_url.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}/artifactPath/{artifact}"


UNDEFINED = "absent: undefined on this split (it holds one class, or too few cells)"


class Run:
    """An open MLflow run: what a task logs goes through here, addressed by the run's id (no global active run)."""

    def __init__(self, client: MlflowClient, run: mlflow.entities.Run, ui_url: str):
        self.client = client
        self.id = run.info.run_id
        self.name = run.info.run_name
        self.experiment_id = run.info.experiment_id
        self.ui_url = ui_url

    @property
    def link(self) -> str:
        return run_link(self.ui_url, self.experiment_id, self.id)

    def artifact_link(self, artifact: str) -> str:
        return artifact_link(self.ui_url, self.experiment_id, self.id, artifact)

    @property
    def where_to_look(self) -> str:
        """The link, and for a local store the folder `mlflow ui` must be started in."""
        local = "" if is_server(self.client.tracking_uri) else f" (start `mlflow ui` in {Path.cwd()} first)"
        return f"open {self.link}{local}"

    @retry_when_locked
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """The finite ones: a score a split leaves undefined (NaN) is absent, never logged as a number."""
        now = get_current_time_millis()
        finite = [Metric(key, value, now, step or 0) for key, value in metrics.items() if math.isfinite(value)]
        self.client.log_batch(self.id, metrics=finite)

    @retry_when_locked
    def set_tags(self, tags: Mapping[str, str]) -> None:
        self.client.log_batch(self.id, tags=[RunTag(key, str(value)) for key, value in tags.items()])

    @retry_when_locked
    def log_params(self, params: Mapping[str, Any]) -> None:
        self.client.log_batch(self.id, params=[Param(key, str(value)) for key, value in params.items()])

    @retry_when_locked
    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.id, text, artifact_file)

    @retry_when_locked
    def log_dict(self, data: Mapping[str, Any], artifact_file: str) -> None:
        self.client.log_dict(self.id, dict(data), artifact_file)

    @retry_when_locked
    def log_artifact(self, path: Path, folder: str | None = None) -> None:
        self.client.log_artifact(self.id, str(path), artifact_path=folder)

    @retry_when_locked
    def log_figure(self, figure: Figure, artifact_file: str) -> None:
        self.client.log_figure(self.id, figure, artifact_file)

    def log_report(self, report: Report) -> None:
        """An evaluation's report: its metrics and tags, its tables as CSV, its figures, its records as JSON. A
        metric the split leaves undefined is absent, and a tag of its name says so."""
        self.log_metrics(report.metrics)
        undefined = {key: UNDEFINED for key, value in report.metrics.items() if not math.isfinite(value)}
        if undefined | report.tags:
            self.set_tags(undefined | report.tags)
        for artifact_file, table in report.tables.items():
            self.log_text(table.to_csv(index=False), artifact_file)
        for artifact_file, figure in report.figures.items():
            self.log_figure(figure, artifact_file)
        for artifact_file, record in report.records.items():
            self.log_dict(record, artifact_file)

    @retry_when_locked
    def set_description(self, markdown: str) -> None:
        self.client.set_tag(self.id, DESCRIPTION_TAG, markdown)

    @retry_when_locked
    def log_dataset(self, table: pd.DataFrame, name: str, source: str, tags: Mapping[str, str]) -> None:
        """A split as one of the run's Datasets: its file list (``path``, ``label``, ``subject``; a digest of it
        tells two runs' splits apart), where it was read from, and ``tags`` (counts)."""
        targets = "label" if "label" in table else None
        with warnings.catch_warnings():  # that a local path fits two of MLflow's source types; integer labels
            warnings.simplefilter("ignore", UserWarning)
            dataset = mlflow.data.from_pandas(table, source=source, name=name, targets=targets)
        tags = [InputTag(key, value) for key, value in tags.items()] + [InputTag(MLFLOW_DATASET_CONTEXT, name)]
        self.client.log_inputs(self.id, [DatasetInput(dataset._to_mlflow_entity(), tags)])

    @retry_when_locked
    def log_model(self, state: Mapping[str, torch.Tensor], spec: Preprocessing, example: bytes) -> str:
        """The MLflow Model (``runs:/<id>/model``) for these weights; returns its ``models:/m-…`` URI."""
        return log_cell_model(self.client, self.id, dict(state), spec, example)

    @retry_when_locked
    def log_state_dict(self, state_dict: Mapping[str, torch.Tensor], artifact_file: str) -> None:
        """Save weights as a plain state_dict (loadable with torch.load(..., weights_only=True))."""
        artifact = Path(artifact_file)
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / artifact.name
            torch.save(dict(state_dict), path)
            self.log_artifact(path, str(artifact.parent) if artifact.parent.parts else None)


def _open(client: MlflowClient, track: TrackingConfig, run_name: str, tags: Mapping[str, str],
          parent_run_id: str | None, reopen_run_id: str | None) -> mlflow.entities.Run:  # fmt: skip
    """A new run (MLflow's source, user and git tags added as ``mlflow.start_run`` adds them), or the run
    ``reopen_run_id`` running again with ``tags`` added."""
    if reopen_run_id:
        retry_when_locked(client.update_run)(reopen_run_id, status=RunStatus.to_string(RunStatus.RUNNING))
        retry_when_locked(client.log_batch)(reopen_run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])
        return client.get_run(reopen_run_id)
    experiment_id = ensure_experiment(track.uri, track.experiment)
    tags = resolve_tags(dict(tags) | ({PARENT_TAG: parent_run_id} if parent_run_id else {}))
    return retry_when_locked(client.create_run)(experiment_id, run_name=run_name, tags=tags)


@contextmanager
def tracked_run(
    track: TrackingConfig,
    run_name: str,
    tags: Mapping[str, str],
    parent_run_id: str | None = None,
    reopen_run_id: str | None = None,
) -> Iterator[Run]:
    """Open a run in ``tracking.experiment`` at ``tracking.uri`` (nested under ``parent_run_id`` if given), or
    reopen the run ``reopen_run_id`` (its tags updated with ``tags``), with MLflow's system metrics sampled
    every ``tracking.system_metrics_s``; close it FINISHED, FAILED or KILLED."""
    mlflow.set_tracking_uri(located(track.uri))  # where MLflow's model logging and registering write
    client = client_of(track.uri)
    run = _open(client, track, run_name, tags, parent_run_id, reopen_run_id)
    monitor = None
    if track.system_metrics_s is not None:
        monitor = SystemMetricsMonitor(run.info.run_id, track.system_metrics_s, tracking_uri=located(track.uri),
                                       resume_logging=reopen_run_id is not None)  # fmt: skip
        monitor.start()
    status = RunStatus.FAILED
    try:
        yield Run(client, run, ui_base(track.uri, track.ui_url))
        status = RunStatus.FINISHED
    except KeyboardInterrupt:
        status = RunStatus.KILLED
        raise
    finally:
        if monitor is not None:
            monitor.finish()
        retry_when_locked(client.set_terminated)(run.info.run_id, RunStatus.to_string(status))
