"""Runs always end with a final status in a real sqlite store, whatever stops them."""

import errno
import os
import subprocess

import pytest
from mlflow.tracking import MlflowClient

from leukemia.errors import UserError, file_system_error
from leukemia.tracking.runs import flatten, tracked_run
from leukemia.tracking.schema import TrackingConfig


def open_run(folder, name):
    track = TrackingConfig(f"sqlite:///{folder / 'mlflow.db'}", "tests", "http://ui", system_metrics_s=None)
    return tracked_run(track, name, {"model": "resnet18"})


def final_status(folder, name):
    client = MlflowClient(tracking_uri=f"sqlite:///{folder / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tests")
    (run,) = client.search_runs([experiment.experiment_id], f"attributes.run_name = '{name}'")
    return run.info.status


def test_an_error_inside_the_run_marks_it_failed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError), open_run(tmp_path, "broken") as run:
        run.log_metrics({"train_loss": 1.0}, step=1)
        raise ValueError("boom")
    assert final_status(tmp_path, "broken") == "FAILED"


def test_ctrl_c_marks_the_run_killed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(KeyboardInterrupt), open_run(tmp_path, "interrupted"):
        raise KeyboardInterrupt
    assert final_status(tmp_path, "interrupted") == "KILLED"


def test_a_clean_exit_marks_the_run_finished_with_a_runs_table_link(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with open_run(tmp_path, "fine") as run:
        link = run.link
    assert final_status(tmp_path, "fine") == "FINISHED"
    assert link == f"http://ui/#/experiments/{run.experiment_id}/runs/{run.id}?workflowType=machine_learning"


def test_flatten_joins_nested_keys_with_dots():
    assert flatten({"optim": {"lr": 0.1, "betas": {"b1": 0.9}}, "seed": 1}) == {
        "optim.lr": 0.1, "optim.betas.b1": 0.9, "seed": 1,
    }  # fmt: skip


@pytest.fixture
def full_disk(tmp_path):
    """A real, tiny (64 KiB) file system, mounted for the test; skipped where mounting needs rights we lack."""
    folder = tmp_path / "full"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.decode().strip()}")
    yield folder
    subprocess.run(["umount", str(folder)], check=True)


def test_an_artifact_that_does_not_fit_names_the_store_and_the_cause_and_fails_the_run(tmp_path, full_disk):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("full", artifact_location=full_disk.as_uri())
    weights = tmp_path / "weights.bin"
    weights.write_bytes(os.urandom(200_000))
    with (
        pytest.raises(UserError, match=r": no space left on device while logging to MLflow; free space there"),
        tracked_run(TrackingConfig(uri, "full", system_metrics_s=None), "too-big", {}) as run,
    ):
        run.log_artifact(weights)
    (record,) = client.search_runs([experiment])
    assert record.info.status == "FAILED"


def test_file_system_errors_name_the_file_or_at_least_the_cause():
    named = file_system_error(OSError(errno.EACCES, "Permission denied", "/data/out"))
    assert str(named).startswith("/data/out: permission denied; make it reachable and writable")
    assert str(file_system_error(OSError(errno.ENOSPC, "No space left on device"))).startswith(
        "no space left on device; make it reachable and writable"
    )
    assert file_system_error(OSError(errno.EPIPE, "Broken pipe")) is None  # about no file: not the user's to fix
