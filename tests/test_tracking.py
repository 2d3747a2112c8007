"""Runs always end with a final status in a real sqlite store, whatever stops them."""

import pytest
from mlflow.tracking import MlflowClient

from leukemia.tracking import flatten, tracked_run


def open_run(folder, name):
    return tracked_run(f"sqlite:///{folder / 'mlflow.db'}", "tests", name, {"model": "resnet18"}, "http://ui")


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
