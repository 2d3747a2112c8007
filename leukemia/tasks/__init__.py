"""Tasks: what ``python run.py task=...`` does, wiring data, model, engine and tracking together.

Everything that can be checked before a task runs (value ranges, data paths, weights file, device) is checked
before an MLflow run is opened, so a typo costs seconds and leaves no run behind; a failure after that marks
the run FAILED.
"""

from __future__ import annotations

import signal
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
    SIGINT (Ctrl-C) or SIGTERM with 128 + the signal's number (130, 143), as a shell reports them."""
    try:
        return TASKS[Task(cfg.task)](cfg)
    except UserError as error:
        sys.exit(f"error: {error.one_line()}")
    except KeyboardInterrupt as stop:
        signum = getattr(stop, "signum", signal.SIGINT)
        print(f"stopped by {signal.Signals(signum).name} (an open MLflow run is marked KILLED)", file=sys.stderr)
        sys.exit(128 + signum)
