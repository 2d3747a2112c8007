"""Everything MLflow: the one module that imports it.

A run is opened with an explicit name (never MLflow's random one, which repeats once the RNG is seeded) and is
always closed with a final status: FINISHED, FAILED on an error, KILLED on Ctrl-C. ``Store`` reads finished
runs back (config, weights, metric histories) for evaluation and reports.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import torch
from matplotlib import pyplot as plt
from mlflow.entities import RunStatus
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from leukemia.errors import UserError

PARENT_TAG = "mlflow.parentRunId"  # how MLflow nests a run under another in its UI
# Reading a run's config and weights back would otherwise draw a progress bar per file.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


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


class Run:
    """The open MLflow run: what a task logs goes through here."""

    def __init__(self, run: mlflow.ActiveRun, ui_url: str):
        self.id = run.info.run_id
        self.name = run.info.run_name
        self.experiment_id = run.info.experiment_id
        self.ui_url = ui_url

    @property
    def link(self) -> str:
        """Deep link into `mlflow ui`'s runs table (not its default GenAI traces view)."""
        base = self.ui_url.rstrip("/")
        return f"{base}/#/experiments/{self.experiment_id}/runs/{self.id}?workflowType=machine_learning"

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        mlflow.log_metrics(dict(metrics), step=step)

    def log_params(self, params: Mapping[str, Any]) -> None:
        mlflow.log_params(dict(params))

    def log_text(self, text: str, artifact_file: str) -> None:
        mlflow.log_text(text, artifact_file)

    def log_dict(self, data: Mapping[str, Any], artifact_file: str) -> None:
        mlflow.log_dict(dict(data), artifact_file)

    def log_artifact(self, path: Path, folder: str | None = None) -> None:
        mlflow.log_artifact(str(path), artifact_path=folder)

    def log_figure(self, figure: plt.Figure, artifact_file: str) -> None:
        mlflow.log_figure(figure, artifact_file)
        plt.close(figure)

    def log_state_dict(self, state_dict: Mapping[str, torch.Tensor], artifact_file: str) -> None:
        """Save weights as a plain state_dict (loadable with torch.load(..., weights_only=True))."""
        artifact = Path(artifact_file)
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / artifact.name
            torch.save(dict(state_dict), path)
            mlflow.log_artifact(str(path), artifact_path=str(artifact.parent) if artifact.parent.parts else None)


@contextmanager
def tracked_run(
    uri: str,
    experiment: str,
    run_name: str,
    tags: Mapping[str, str],
    ui_url: str,
    parent_run_id: str | None = None,
    reopen_run_id: str | None = None,
) -> Iterator[Run]:
    """Open a run in ``experiment`` at ``uri`` (nested under ``parent_run_id`` if given), or reopen the run
    ``reopen_run_id`` (its tags updated with ``tags``); close it FINISHED, FAILED or KILLED."""
    mlflow.set_tracking_uri(uri)
    if reopen_run_id:
        active = mlflow.start_run(run_id=reopen_run_id)
        mlflow.set_tags(dict(tags))
    else:
        mlflow.set_experiment(experiment)
        tags = dict(tags) | ({PARENT_TAG: parent_run_id} if parent_run_id else {})
        active = mlflow.start_run(run_name=run_name, tags=tags)
    status = RunStatus.to_string(RunStatus.FAILED)
    try:
        yield Run(active, ui_url)
        status = RunStatus.to_string(RunStatus.FINISHED)
    except KeyboardInterrupt:
        status = RunStatus.to_string(RunStatus.KILLED)
        raise
    finally:
        mlflow.end_run(status=status)


@dataclass(frozen=True)
class RunRecord:
    """A logged run as read back: what evaluation and reports need of it."""

    id: str
    name: str
    experiment_id: str
    status: str
    start_time: int
    params: dict[str, str]
    tags: dict[str, str]
    metrics: dict[str, float]


def _record(run: Any) -> RunRecord:
    return RunRecord(
        run.info.run_id,
        run.info.run_name,
        run.info.experiment_id,
        run.info.status,
        run.info.start_time or 0,
        dict(run.data.params),
        dict(run.data.tags),
        dict(run.data.metrics),
    )


class Store:
    """Reads runs back from the tracking store at ``uri``; every miss is a one-line UserError naming it."""

    def __init__(self, uri: str):
        self.uri = uri
        self.client = MlflowClient(tracking_uri=uri)

    def run(self, run_id: str, key: str = "run_id") -> RunRecord:
        """The run ``run_id``, given on the command line as ``key``."""
        try:
            return _record(self.client.get_run(run_id))
        except MlflowException as error:
            raise UserError(
                f"{key}={run_id}: no such run in {self.uri} (tracking.uri); copy the id from the run's link or "
                f"from `mlflow ui`, and launch from the folder that holds mlflow.db"
            ) from error

    def runs(self, experiment: str) -> list[RunRecord]:
        """Every run of ``experiment``, newest first (none if the experiment does not exist)."""
        found = self.client.get_experiment_by_name(experiment)
        if found is None:
            return []
        runs = self.client.search_runs([found.experiment_id], order_by=["attributes.start_time DESC"])
        return [_record(run) for run in runs]

    def history(self, run_id: str, key: str) -> list[float]:
        """A metric's values by step (epoch)."""
        points = sorted(self.client.get_metric_history(run_id, key), key=lambda point: point.step)
        return [point.value for point in points]

    def download(self, run: RunRecord, artifact: str, folder: Path, why: str) -> Path:
        """The artifact as a local file under ``folder``; ``why`` ends the error when the run lacks it."""
        folder.mkdir(parents=True, exist_ok=True)
        try:
            return Path(self.client.download_artifacts(run.id, artifact, str(folder)))
        except (MlflowException, OSError) as error:
            raise UserError(f"run {run.id} ({run.name}, {run.status}) has no {artifact}; {why}") from error
