"""Tasks: what ``python run.py task=...`` does, wiring data, model, engine and tracking together.

Everything that can be checked before a task runs (value ranges, data paths, weights file, device) is checked
before an MLflow run is opened, so a typo costs seconds and leaves no run behind; a failure after that marks
the run FAILED.
"""

from __future__ import annotations

import gc
import logging
import signal
import sys
from typing import Any

from omegaconf import DictConfig

from leukemia.config import Task, check_config, check_typed_text
from leukemia.errors import UserError, file_system_error
from leukemia.tasks.context import command_line_overrides, in_sweep, output_dir
from leukemia.tracking.sweep_folder import record_job_failure
from leukemia.training.stopping import Stopped, StopRequest

log = logging.getLogger(__name__)


def dispatch(cfg: DictConfig, stop: StopRequest) -> Any:
    """Open the tracking store and run the task. Training stops at once while it trains or validates, else
    after the epoch's checkpoint and logging; evaluation, predictions and reports hold nothing a stop could
    leave half-written, so they stop at once."""
    # Imported here, once the config has passed its checks: a bad setting is reported before mlflow and the
    # training stack load (seconds on a small machine).
    from leukemia.tasks.evaluate import evaluate
    from leukemia.tasks.plot import plot
    from leukemia.tasks.predict import predict_cells
    from leukemia.tasks.train import train
    from leukemia.tracking.store import prepare_store

    gc.freeze()  # the modules just loaded are never garbage: spare every full collection a walk through them
    with stop.interruptible():  # a tracking server may take seconds to answer
        prepare_store(cfg.tracking.uri, cfg.tracking.experiment)
    if Task(cfg.task) == Task.train:
        return train(cfg, stop)
    with stop.interruptible():
        return {Task.eval: evaluate, Task.plot: plot, Task.predict: predict_cells}[Task(cfg.task)](cfg)


def hand_over(stop: Stopped) -> None:
    """After a SIGUSR2 stop (a SLURM job near its time limit), let the handler the signal had before the task's
    act on it: submitit's requeues the job, which then resumes this run, and exits; or it raises, as the job may
    not be requeued (again)."""
    if stop.signum != signal.SIGUSR2 or not callable(stop.previous):
        return
    try:
        stop.previous(stop.signum, None)
    except Exception as refused:  # submitit's UncompletedJobError
        log.warning("the job is not requeued: %s", refused)


def _fail(message: str) -> None:
    """Exit 1 with ``message``; in a sweep, end the job only: its other jobs go on (parallel ones could not mark
    their runs if this process ended the sweep) and the sweep exits 1 with a summary after them."""
    if not in_sweep():
        sys.exit(message)
    print(message, file=sys.stderr)
    record_job_failure(output_dir(), message)


def run_task(cfg: DictConfig) -> Any:
    """Entry point for run.py: dispatch on ``task``. A UserError ends the process with one line and exit 1; a
    stop signal (SIGINT, SIGTERM, SIGUSR2) with 128 + its number (130, 143, 140), as a shell reports them. In a
    sweep either ends the job (no value: a hyper-parameter search counts the trial failed)."""
    try:
        check_config(cfg)
        check_typed_text(cfg, command_line_overrides())
        with StopRequest() as stop:
            return dispatch(cfg, stop)
    except UserError as error:
        _fail(f"error: {error.one_line()}")
    except OSError as error:
        named = file_system_error(error)
        if named is None:
            raise
        _fail(f"error: {named}")
    except KeyboardInterrupt as stop:
        stop = stop if isinstance(stop, Stopped) else Stopped(signal.SIGINT)
        then = f"; continue with: {stop.continue_with}" if stop.continue_with else ""
        message = f"stopped by {signal.Signals(stop.signum).name} (an open MLflow run is marked KILLED){then}"
        hand_over(stop)
        if in_sweep() and stop.signum == signal.SIGUSR2:  # this job's time is up, not the sweep's
            _fail(f"error: {message}")
            return None
        print(message, file=sys.stderr)
        sys.exit(128 + stop.signum)
    return None
