"""Tasks: what ``python run.py task=...`` does, wiring data, model, engine and tracking together.

Everything that can be checked before a task runs (value ranges, data paths, weights file, device) is checked
before an MLflow run is opened, so a typo costs seconds and leaves no run behind; a failure after that marks
the run FAILED.
"""

from __future__ import annotations

import sys
from typing import Any

from omegaconf import DictConfig

from leukemia.config import Task
from leukemia.errors import UserError
from leukemia.tasks.evaluate import evaluate
from leukemia.tasks.report import plot
from leukemia.tasks.train import train

TASKS: dict[Task, Any] = {Task.train: train, Task.eval: evaluate, Task.plot: plot}


def run_task(cfg: DictConfig) -> Any:
    """Entry point for run.py: dispatch on ``task``; a UserError ends the process with one line and exit 1,
    Ctrl-C with exit 130."""
    try:
        return TASKS[Task(cfg.task)](cfg)
    except UserError as error:
        sys.exit(f"error: {error.one_line()}")
    except KeyboardInterrupt:
        print("interrupted (an open MLflow run is marked KILLED)", file=sys.stderr)
        sys.exit(130)
