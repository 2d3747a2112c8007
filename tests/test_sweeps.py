"""Scaling out, through the real CLI and the real plugins: parallel joblib jobs on one sqlite store, submitit's
local launcher, an Optuna search, and a real `mlflow server` (tracking and proxied artifacts)."""

from __future__ import annotations

import logging
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from leukemia.tracking.runs import tracked_run
from leukemia.tracking.schema import TrackingConfig
from leukemia.tracking.store import LOCK_PAUSES_S

from conftest import FAST, compose_config, free_port, run_cli, run_cli_process, runs_of, signal_after, start


def metric_steps(client: MlflowClient, run, key: str) -> list[int]:
    return sorted(point.step for point in client.get_metric_history(run.info.run_id, key))


def last_line(result: subprocess.CompletedProcess) -> str:
    return result.stderr.strip().splitlines()[-1]


@pytest.mark.slow
def test_three_parallel_joblib_jobs_on_one_sqlite_store_lose_nothing(tiny_lab, tmp_path):
    cache = tmp_path / "cache"
    sweep = ("-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=3", "optim.lr=0.1,0.01,0.001")
    result = run_cli_process(
        *sweep, *FAST, f"data.root={tiny_lab}", "trainer.epochs=2", f"paths.cache_dir={cache}", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Joblib.Parallel(n_jobs=3" in result.stdout + result.stderr
    client, runs = runs_of(tmp_path)
    assert len(runs) == 3
    (sweep,) = runs_of(tmp_path, kind="sweep")[1]  # the jobs' runs nest under the sweep's own run
    assert {run.data.tags["mlflow.parentRunId"] for run in runs} == {sweep.info.run_id}
    assert sweep.info.status == "FINISHED" and sweep.data.tags["sweep_id"] == runs[0].data.tags["sweep_id"]
    assert sorted(run.data.params["optim.lr"] for run in runs) == ["0.001", "0.01", "0.1"]
    assert sorted(run.data.tags["sweep_job"] for run in runs) == ["0", "1", "2"]
    for run in runs:
        assert run.info.status == "FINISHED"
        for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "val_f1_weighted", "lr"):
            assert metric_steps(client, run, key) == [1, 2], (run.info.run_name, key)
        assert "best_val_f1_weighted" in run.data.metrics
        assert "weights/best.pt" in [a.path for a in client.list_artifacts(run.info.run_id, "weights")]
    # The jobs shared one decode cache: each split decoded once, no half-written file left behind.
    decoded = cache / "decoded"
    assert len(list(decoded.glob("*.npy"))) == 3  # train, valid, test
    assert not list(decoded.glob("*.partial*"))


@pytest.mark.slow
def test_a_sweep_stopped_with_ctrl_c_leaves_its_own_run_and_its_job_killed(tiny_lab, tmp_path):
    sweep = start(("-m", *FAST, f"data.root={tiny_lab}", "trainer.epochs=50", "optim.lr=0.05,0.001"), tmp_path)
    output = signal_after(sweep, signal.SIGINT)
    assert sweep.returncode == 130, output[-3000:]
    (job,) = runs_of(tmp_path)[1]
    (own,) = runs_of(tmp_path, kind="sweep")[1]
    assert (job.info.status, own.info.status) == ("KILLED", "KILLED")  # none left RUNNING
    assert job.data.tags["mlflow.parentRunId"] == own.info.run_id


@pytest.mark.slow
def test_a_failing_parallel_job_lets_the_others_finish_and_the_sweep_exits_1(tiny_lab, tmp_path):
    result = run_cli_process("-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", *FAST, f"data.root={tiny_lab}",
                     "trainer.epochs=1", "optim.lr=0.01,-1", cwd=tmp_path)  # fmt: skip
    assert result.returncode == 1
    line = last_line(result)
    assert line.startswith("error: 1 job(s) of the sweep failed") and "optim.lr=-1.0: must be greater than 0" in line
    _, runs = runs_of(tmp_path)
    assert [(run.data.params["optim.lr"], run.info.status) for run in runs] == [("0.01", "FINISHED")]


@pytest.mark.slow
def test_submitit_local_launcher_runs_the_jobs(tiny_lab, tmp_path):
    result = run_cli("-m", "hydra/launcher=submitit_local", *FAST, f"data.root={tiny_lab}", "trainer.epochs=1",
                     "optim.lr=0.01,0.001", cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    _, runs = runs_of(tmp_path)
    assert sorted(run.data.params["optim.lr"] for run in runs) == ["0.001", "0.01"]
    assert {run.info.status for run in runs} == {"FINISHED"}
    (sweep_dir,) = {Path(tmp_path, run.data.tags["sweep_id"]) for run in runs}
    assert list((sweep_dir / ".submitit").rglob("*_result.pkl"))  # the jobs went through submitit


def test_slurm_launcher_config_sets_gpus_time_and_takes_a_partition():
    cfg = compose_config("hydra/launcher=slurm", "hydra.launcher.partition=gpu", return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.partition, launcher.gpus_per_node, launcher.timeout_min) == ("gpu", 1, 240)


@pytest.mark.slow
def test_optuna_search_runs_three_trials_as_tagged_runs_and_names_the_best(tiny_lab, tmp_path):
    result = run_cli("-m", "hparams_search=sgd_optuna", "hydra.sweeper.n_trials=3", *FAST, f"data.root={tiny_lab}",
                     "trainer.epochs=1", cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    client, runs = runs_of(tmp_path)
    assert len(runs) == 3 and {run.info.status for run in runs} == {"FINISHED"}
    assert {run.data.tags["optuna_study"] for run in runs} == {"sgd_optuna"}
    for run in runs:  # each trial drew its own values from the search space
        params = run.data.params
        assert 1e-4 <= float(params["optim.lr"]) <= 0.1
        assert 0.8 <= float(params["optim.momentum"]) <= 0.99
        assert 1e-6 <= float(params["optim.weight_decay"]) <= 1e-3
        assert params["data.batch_size"] in {"16", "32", "64"}
    assert len({run.data.params["optim.lr"] for run in runs}) == 3
    (sweep_dir,) = {Path(tmp_path, run.data.tags["sweep_id"]) for run in runs}
    optuna_result = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    best_value = max(run.data.metrics["best_val_f1_weighted"] for run in runs)
    assert optuna_result["best_value"] == pytest.approx(best_value)
    tagged = [run for run in client.search_runs([runs[0].info.experiment_id], "tags.best_trial = 'true'")]
    assert len(tagged) == 1 and tagged[0].data.metrics["best_val_f1_weighted"] == pytest.approx(best_value)
    assert f"best job of 3: {tagged[0].info.run_name}" in result.stdout + result.stderr


@pytest.mark.slow
def test_a_search_pushing_the_monitor_the_wrong_way_is_refused_before_any_trial(tmp_path):
    result = run_cli("-m", "hparams_search=sgd_optuna", "trainer.monitor=val_loss", cwd=tmp_path)
    assert result.returncode == 1
    assert last_line(result) == (
        "error: hydra.sweeper.direction=maximize with trainer.monitor=val_loss: each trial returns that metric, "
        "which must be minimized; set hydra.sweeper.direction=minimize"
    )
    assert runs_of(tmp_path)[1] == []


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """A real `mlflow server` on 127.0.0.1: sqlite backend, artifacts proxied into its own folder."""
    folder = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    command = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
               "--backend-store-uri", f"sqlite:///{folder / 'server.db'}",
               "--artifacts-destination", str(folder / "artifacts"), "--workers", "1"]  # fmt: skip
    log = (folder / "server.log").open("w")
    server = subprocess.Popen(command, cwd=folder, stdout=log, stderr=subprocess.STDOUT)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as answer:
                if answer.read().strip() == b"OK":
                    break
        except OSError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            pytest.fail(f"mlflow server did not start: {(folder / 'server.log').read_text()[-2000:]}")
        time.sleep(0.5)
    yield uri, folder
    server.terminate()
    server.wait(timeout=30)
    log.close()


@pytest.mark.slow
def test_a_run_against_a_tracking_server_finishes_there_with_proxied_artifacts(mlflow_server, tiny_lab, tmp_path):
    uri, server_folder = mlflow_server
    result = run_cli(*FAST, f"data.root={tiny_lab}", "trainer.epochs=2", f"tracking.uri={uri}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("leukemia").experiment_id])
    assert run.info.status == "FINISHED"
    assert metric_steps(client, run, "val_accuracy") == [1, 2]
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")  # through the server, not a path on this machine
    stored = server_folder / "artifacts" / run.info.experiment_id / run.info.run_id / "artifacts"
    assert (stored / "weights" / "best.pt").is_file() and (stored / "config" / "config.yaml").is_file()
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlruns").exists()
    assert f"{uri}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}" in result.stdout + result.stderr

    # Reading back through the server: evaluation downloads the config and weights from it.
    evaluated = run_cli("task=eval", f"run_id={run.info.run_id}", f"tracking.uri={uri}", cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    children = client.search_runs([run.info.experiment_id], f"tags.`mlflow.parentRunId` = '{run.info.run_id}'")
    assert [child.info.status for child in children] == ["FINISHED"]


@pytest.mark.slow
@pytest.mark.parametrize("sweep", [False, True], ids=["run", "sweep"])
def test_an_unreachable_server_fails_in_one_line_before_data_is_read(tmp_path, sweep):
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    missing = tmp_path / "no-such-data"  # would be the error if data were read first
    args = ["-m", "optim.lr=0.1,0.01"] if sweep else []
    result = run_cli(*args, *FAST, f"data.root={missing}", f"tracking.uri={uri}", cwd=tmp_path)
    assert result.returncode == 1
    assert last_line(result).startswith(f"error: tracking.uri={uri}: no MLflow server answers there")
    assert "Scaling out" in last_line(result)
    assert not (tmp_path / "multirun").exists() or not list((tmp_path / "multirun").rglob(".hydra"))


def test_a_locked_sqlite_store_is_waited_for_not_failed(tmp_path, monkeypatch, caplog):
    """Another process holding the store past sqlite's own 20-second wait: the write is tried again."""
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    hold_s = 20 + LOCK_PAUSES_S[0] + 2  # outlasts the first attempt's wait, not the second's
    with tracked_run(TrackingConfig(uri, "tests", system_metrics_s=None), "locked", {}) as run:
        blocker = sqlite3.connect(tmp_path / "mlflow.db", isolation_level=None, check_same_thread=False)
        blocker.execute("BEGIN EXCLUSIVE")
        release = threading.Timer(hold_s, lambda: blocker.execute("ROLLBACK"))
        release.start()
        with caplog.at_level(logging.WARNING, logger="leukemia.tracking"):
            run.log_metrics({"val_accuracy": 0.5}, step=1)
        release.join()
    client = MlflowClient(tracking_uri=uri)
    assert client.get_run(run.id).data.metrics == {"val_accuracy": 0.5}
    assert client.get_run(run.id).info.status == "FINISHED"
    assert "locked by another job" in caplog.text
