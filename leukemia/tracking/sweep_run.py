"""A sweep's own MLflow run, opened and closed in the launching process: its jobs' runs nest under it (the UI
folds them), and at the end it names the best job, which an Optuna search tags its best trial and, with
``registry.name``, the registry makes its champion."""

from __future__ import annotations

import logging
import math
from pathlib import Path

from mlflow.tracking import MlflowClient
from omegaconf import DictConfig

from leukemia.errors import UserError
from leukemia.names import best
from leukemia.tracking.champion import DECISION_TAG, offer, unfit
from leukemia.tracking.registry import CHAMPION
from leukemia.tracking.runs import run_link
from leukemia.tracking.store import RunRecord, Store, client_of, ensure_experiment, retry_when_locked, ui_base
from leukemia.tracking.sweep_folder import record_sweep_run
from leukemia.training.schema import Monitor

log = logging.getLogger(__name__)


def ranked_jobs(config: DictConfig, sweep_dir: str) -> list[RunRecord]:
    """The sweep's finished jobs with a finite ``trainer.monitor`` value, best first; the best named in the log
    with its link."""
    store = Store(config.tracking.uri)
    monitor = Monitor(config.trainer.monitor)
    key = best(monitor.value)
    jobs = [run for run in store.runs(config.tracking.experiment)
            if run.tags.get("sweep_id") == sweep_dir and math.isfinite(run.metrics.get(key, math.nan))]  # fmt: skip
    if not jobs:
        log.warning("no finished job of this sweep with a finite %s is in %s", key, config.tracking.uri)
        return []
    jobs.sort(key=lambda run: run.metrics[key], reverse=monitor.direction == "maximize")
    chosen = jobs[0]
    link = run_link(ui_base(config.tracking.uri, config.tracking.ui_url), chosen.experiment_id, chosen.id)
    log.info("best job of %d: %s, %s %.4f, overrides: %s; open %s", len(jobs), chosen.name, monitor.value,
             chosen.metrics[key], chosen.tags.get("overrides", ""), link)  # fmt: skip
    return jobs


class SweepRun:
    """The sweep's run; its id is left in the sweep folder, where every job, on any machine, finds it."""

    def __init__(self, client: MlflowClient, run_id: str, sweep_dir: str):
        self.client, self.run_id, self.sweep_dir = client, run_id, sweep_dir
        self.closed = False

    @classmethod
    def open(cls, config: DictConfig, sweep_dir: str) -> SweepRun:
        client = client_of(config.tracking.uri)
        experiment_id = ensure_experiment(config.tracking.uri, config.tracking.experiment)
        tags = {"sweep_id": sweep_dir, "kind": "sweep", "overrides": " ".join(config.hydra.overrides.task)}
        name = "sweep-" + "-".join(Path(sweep_dir).parts[-2:])  # multirun/<date>/<time>-<pid>
        run = retry_when_locked(client.create_run)(experiment_id, run_name=name, tags=tags)
        record_sweep_run(Path(sweep_dir), run.info.run_id)
        return cls(client, run.info.run_id, sweep_dir)

    def honour_best(self, config: DictConfig) -> None:
        """The best job recorded on the sweep's run, tagged the best trial of an Optuna search and, with
        ``registry.name``, its version made the champion."""
        jobs = ranked_jobs(config, self.sweep_dir)
        if not jobs:
            return
        chosen, monitor = jobs[0], Monitor(config.trainer.monitor)
        key = best(monitor.value)
        retry_when_locked(self.client.set_tag)(self.run_id, "best_run", chosen.id)
        retry_when_locked(self.client.log_metric)(self.run_id, key, chosen.metrics[key])
        if "study_name" in config.hydra.sweeper:
            Store(config.tracking.uri).tag(chosen.id, "best_trial", "true")
        if config.registry.name:
            self.offer_champion(config, jobs, monitor)

    def offer_champion(self, config: DictConfig, jobs: list[RunRecord], monitor: Monitor) -> None:
        """The best job's version that may hold ``@champion`` offered it (see ``tracking.champion``); the decision
        logged and tagged on the sweep's run."""
        fit = [job for job in jobs if not unfit(job.metrics, monitor)]
        offered = (fit or jobs)[0]  # with none that may hold it, the best, which the rule then turns down
        for job in jobs[: jobs.index(offered)]:  # better jobs passed over
            log.warning("job %s may not hold @%s: %s", job.name, CHAMPION, unfit(job.metrics, monitor))
        try:
            why = offer(config.tracking.uri, config.registry.name, offered.id, monitor).why
        except UserError as error:
            why = error.one_line()
        log.info("champion: %s", why)
        retry_when_locked(self.client.set_tag)(self.run_id, DECISION_TAG, why)

    def close(self, status: str) -> None:
        """End the run FINISHED, FAILED or KILLED (once: the exit handler then finds it closed)."""
        if not self.closed:
            retry_when_locked(self.client.set_terminated)(self.run_id, status)
            self.closed = True
