"""The open MLflow run: opened with an explicit name (never MLflow's random one, which repeats once the RNG is
seeded) and always closed with a final status: FINISHED, FAILED on an error, KILLED on a stop."""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import torch
from matplotlib import pyplot as plt
from mlflow.entities import RunStatus

from leukemia.config import TrackingConfig
from leukemia.tracking.cell_model import Preprocessing, log_cell_model
from leukemia.tracking.store import PARENT_TAG, ensure_experiment, is_server, retry_when_locked, ui_base

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


class Run:
    """The open MLflow run: what a task logs goes through here."""

    def __init__(self, run: mlflow.ActiveRun, ui_url: str):
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
        local = "" if is_server(mlflow.get_tracking_uri()) else f" (start `mlflow ui` in {Path.cwd()} first)"
        return f"open {self.link}{local}"

    @retry_when_locked
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        mlflow.log_metrics(dict(metrics), step=step)

    @retry_when_locked
    def set_tags(self, tags: Mapping[str, str]) -> None:
        mlflow.set_tags(dict(tags))

    @retry_when_locked
    def log_params(self, params: Mapping[str, Any]) -> None:
        mlflow.log_params(dict(params))

    @retry_when_locked
    def log_text(self, text: str, artifact_file: str) -> None:
        mlflow.log_text(text, artifact_file)

    @retry_when_locked
    def log_dict(self, data: Mapping[str, Any], artifact_file: str) -> None:
        mlflow.log_dict(dict(data), artifact_file)

    @retry_when_locked
    def log_artifact(self, path: Path, folder: str | None = None) -> None:
        mlflow.log_artifact(str(path), artifact_path=folder)

    @retry_when_locked
    def log_figure(self, figure: plt.Figure, artifact_file: str) -> None:
        mlflow.log_figure(figure, artifact_file)
        plt.close(figure)

    @retry_when_locked
    def set_description(self, markdown: str) -> None:
        mlflow.set_tag(DESCRIPTION_TAG, markdown)

    @retry_when_locked
    def log_dataset(self, table: pd.DataFrame, name: str, source: str, tags: Mapping[str, str]) -> None:
        """A split as one of the run's Datasets: its file list (``path``, ``label``, ``subject``; a digest of it
        tells two runs' splits apart), where it was read from, and ``tags`` (counts)."""
        targets = "label" if "label" in table else None
        with warnings.catch_warnings():  # that a local path fits two of MLflow's source types; integer labels
            warnings.simplefilter("ignore", UserWarning)
            dataset = mlflow.data.from_pandas(table, source=source, name=name, targets=targets)
            mlflow.log_input(dataset, context=name, tags=dict(tags))

    @retry_when_locked
    def log_model(self, state: Mapping[str, torch.Tensor], spec: Preprocessing, example: bytes) -> str:
        """The MLflow Model (``runs:/<id>/model``) for these weights; returns its ``models:/m-…`` URI."""
        return log_cell_model(dict(state), spec, example)

    @retry_when_locked
    def log_state_dict(self, state_dict: Mapping[str, torch.Tensor], artifact_file: str) -> None:
        """Save weights as a plain state_dict (loadable with torch.load(..., weights_only=True))."""
        artifact = Path(artifact_file)
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / artifact.name
            torch.save(dict(state_dict), path)
            mlflow.log_artifact(str(path), artifact_path=str(artifact.parent) if artifact.parent.parts else None)


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
    mlflow.set_tracking_uri(track.uri)
    system_metrics = track.system_metrics_s is not None
    if system_metrics:
        mlflow.set_system_metrics_sampling_interval(track.system_metrics_s)
    if reopen_run_id:
        active = retry_when_locked(mlflow.start_run)(run_id=reopen_run_id, log_system_metrics=system_metrics)
        retry_when_locked(mlflow.set_tags)(dict(tags))
    else:
        experiment_id = ensure_experiment(track.uri, track.experiment)
        tags = dict(tags) | ({PARENT_TAG: parent_run_id} if parent_run_id else {})
        active = retry_when_locked(mlflow.start_run)(experiment_id=experiment_id, run_name=run_name, tags=tags,
                                                     log_system_metrics=system_metrics)  # fmt: skip
    status = RunStatus.to_string(RunStatus.FAILED)
    try:
        yield Run(active, ui_base(track.uri, track.ui_url))
        status = RunStatus.to_string(RunStatus.FINISHED)
    except KeyboardInterrupt:
        status = RunStatus.to_string(RunStatus.KILLED)
        raise
    finally:
        retry_when_locked(mlflow.end_run)(status=status)
