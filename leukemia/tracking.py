"""Everything MLflow: the one module that imports it.

A run is opened with an explicit name (never MLflow's random one, which repeats once the RNG is seeded) and is
always closed with a final status: FINISHED, FAILED on an error, KILLED on Ctrl-C.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
import torch
from matplotlib import pyplot as plt
from mlflow.entities import RunStatus


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
def tracked_run(uri: str, experiment: str, run_name: str, tags: Mapping[str, str], ui_url: str) -> Iterator[Run]:
    """Open a run in ``experiment`` at ``uri``; close it FINISHED, FAILED or KILLED."""
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(experiment)
    active = mlflow.start_run(run_name=run_name, tags=dict(tags))
    status = RunStatus.to_string(RunStatus.FAILED)
    try:
        yield Run(active, ui_url)
        status = RunStatus.to_string(RunStatus.FINISHED)
    except KeyboardInterrupt:
        status = RunStatus.to_string(RunStatus.KILLED)
        raise
    finally:
        mlflow.end_run(status=status)
