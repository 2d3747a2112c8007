"""What a sweep keeps in its folders, where every job finds it whatever process or machine runs it (joblib,
SLURM): the id of the sweep's own run, and each failed job's one-line error. Light: no MLflow."""

from __future__ import annotations

from pathlib import Path

JOB_FAILURE_FILE = "job_failed.txt"  # in a failed job's output folder: its one-line error
SWEEP_RUN_FILE = "mlflow_sweep_run.txt"  # in the sweep folder: the id of the sweep's own run


def record_job_failure(job_dir: Path, message: str) -> None:
    """Leave a failed sweep job's error where the launching process finds it."""
    job_dir.mkdir(parents=True, exist_ok=True)
    (job_dir / JOB_FAILURE_FILE).write_text(message + "\n")


def job_failures(sweep_dir: Path) -> list[Path]:
    """The sweep's failure files, the earliest first."""
    return sorted(sweep_dir.rglob(JOB_FAILURE_FILE), key=lambda path: path.stat().st_mtime)


def record_sweep_run(sweep_dir: Path, run_id: str) -> None:
    """The sweep's own run, which its jobs' runs nest under."""
    sweep_dir.mkdir(parents=True, exist_ok=True)
    (sweep_dir / SWEEP_RUN_FILE).write_text(run_id + "\n")


def sweep_run_of(sweep_dir: Path) -> str | None:
    """The id of the sweep's own run, for a job of the sweep in ``sweep_dir``."""
    path = sweep_dir / SWEEP_RUN_FILE
    return path.read_text().strip() if path.is_file() else None
