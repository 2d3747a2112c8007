"""Sweeps on a real SLURM cluster (one node, set up by scripts/local_slurm.sh) through hydra/launcher=slurm: jobs
that finish, a job stopped at its time limit (KILLED, with the line that continues it), and a requeued job that
continues its own run from its checkpoint."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from conftest import FAST, histories, run_cli, run_cli_process, run_id_of, runs_of, start


def slurm_answers() -> bool:
    try:
        return subprocess.run(["sinfo", "-h"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


pytestmark = [
    pytest.mark.slow,
    pytest.mark.xdist_group("slurm"),  # one test's jobs at a time on the one-node cluster: their time limits hold
    pytest.mark.skipif(not slurm_answers(), reason="no SLURM cluster answers here (start one: scripts/local_slurm.sh)"),
]

# One CPU and no GPU per job, on the local cluster's partition. SLURM sends USR2 signal_delay_s (submitit's
# default: 120) before hydra.launcher.timeout_min, which each test sets.
CLUSTER = ("-m", "hydra/launcher=slurm", "hydra.launcher.partition=debug", "hydra.launcher.gpus_per_node=0",
           "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=4")  # fmt: skip


def job_logs(folder: Path) -> list[Path]:
    return sorted(folder.glob("multirun/*/*/.submitit/*/*_log.out"))


def wait_for_epoch(folder: Path, epoch: int, timeout_s: float = 300) -> str:
    """The SLURM job id of the first job whose log shows ``epoch`` done."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for log in job_logs(folder):
            if f" - epoch {epoch}/" in log.read_text(errors="replace"):
                return log.parent.name
        time.sleep(1)
    pytest.fail(f"no job reached epoch {epoch} in {timeout_s} s")


def time_is_up(job_id: str) -> None:
    """What SLURM sends a job signal_delay_s before its time limit (submitit asks for USR2); submitit counts it
    as that time-out for any job of up to 10 minutes."""
    subprocess.run(["scancel", "--signal=USR2", job_id], check=True, timeout=30)


def test_a_sweep_runs_its_jobs_and_one_at_its_time_limit_ends_killed_with_its_continue_line(tiny_lab, tmp_path):
    """Job 0 (one epoch) finishes; job 1 (too many epochs for two minutes) gets the scheduler's own signal 60 s
    before its limit and is not requeued (max_num_timeout=0): its run ends KILLED, the sweep exits 1 with one
    line, and the run continues from its checkpoint. SLURM checks limits every 30 s or so: the signal came as
    early as 41 s after the jobs started, so job 0 must be done well before that."""
    result = run_cli_process(*CLUSTER, "hydra.launcher.timeout_min=2", "hydra.launcher.signal_delay_s=60",
                     "hydra.launcher.max_num_timeout=0", *FAST,
                     f"data.root={tiny_lab}", "trainer.epochs=1,100000", cwd=tmp_path, timeout=400)  # fmt: skip
    assert result.returncode == 1, result.stderr[-3000:]
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("error: 1 job(s) of the sweep failed, the first (") and "stopped by SIGUSR2" in line
    assert "Traceback" not in result.stderr
    client, runs = runs_of(tmp_path)
    by_epochs = {run.data.params["trainer.epochs"]: run for run in runs}
    assert by_epochs["1"].info.status == "FINISHED"
    stopped = by_epochs["100000"]
    assert stopped.info.status == "KILLED"
    assert line.endswith(f"continue with: python run.py resume={stopped.info.run_id}")
    done = len(histories(client, stopped.info.run_id)["val_loss"])
    resumed = run_cli(f"resume={stopped.info.run_id}", f"trainer.epochs={done + 1}", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert client.get_run(stopped.info.run_id).info.status == "FINISHED"


def test_a_job_requeued_at_its_time_limit_continues_its_own_run_and_logs_each_epoch_once(tiny_lab, tmp_path):
    epochs = 8
    # A 10-minute limit: SLURM's own signal (due 8 minutes in) never comes during the test, only the one it sends.
    sweep = start((*CLUSTER, "hydra.launcher.timeout_min=10", "hydra.launcher.max_num_timeout=1", *FAST,
                   f"data.root={tiny_lab}", f"trainer.epochs={epochs}", "data.num_workers=2"), tmp_path)  # fmt: skip
    try:
        time_is_up(wait_for_epoch(tmp_path, 2))
        output = sweep.communicate(timeout=600)[0]
    finally:
        sweep.kill()
    assert sweep.returncode == 0, output[-3000:]
    client, (run,) = runs_of(tmp_path)  # one run, not one per attempt
    assert run.info.status == "FINISHED"
    assert int(run.data.tags["resumed_after_epoch"]) >= 2
    steps = [step for step, _ in histories(client, run.info.run_id)["val_loss"]]
    assert steps == list(range(1, epochs + 1))
    (log,) = job_logs(tmp_path)
    text = log.read_text()
    assert f"continue with: python run.py resume={run.info.run_id}" in text
    assert f"continuing its run {run.info.run_id}" in text and run_id_of(text) == run.info.run_id
