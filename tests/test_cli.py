"""End to end through the real CLI (subprocess ``python run.py``) and a real sqlite MLflow store."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from leukemia.training.loop import TIMING_METRICS

from conftest import FAST, REPO, SHARED_DATA, run_cli, runs_of, write_lab_layout

pytestmark = pytest.mark.slow  # end-to-end: every test here runs the real CLI

EPOCHS = 4


@pytest.fixture(scope="module")
def trained(tiny_lab, tmp_path_factory):
    """One training run on the separable tiny set; the tests below read what it left."""
    folder = tmp_path_factory.mktemp("train-run")
    result = run_cli(
        *FAST, f"data.root={tiny_lab}", f"trainer.epochs={EPOCHS}", "optim=adam", "optim.lr=0.001", cwd=folder
    )
    assert result.returncode == 0, result.stderr[-3000:]
    client, runs = runs_of(folder)
    assert len(runs) == 1
    return folder, client, runs[0], result


def test_run_finishes_with_the_flattened_config_as_params(trained):
    _, _, run, _ = trained
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "resnet18-adam-lr0.001"
    params = run.data.params
    assert params["model.name"] == "resnet18" and params["optim.lr"] == "0.001"
    assert params["data.image_size"] == "32" and params["trainer.epochs"] == str(EPOCHS)
    assert params["dataset.train.images"] == "64" and params["dataset.valid.normal"] == "16"
    tags = run.data.tags
    assert tags["model"] == "resnet18" and tags["data"] == "lab"
    assert "optim=adam" in tags["overrides"] and "sweep_id" not in tags


def test_every_epoch_is_logged_with_its_step(trained):
    _, client, run, _ = trained
    for metric in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "val_balanced_accuracy",
                   "val_f1_weighted", "val_accuracy_normal", "val_accuracy_all", *TIMING_METRICS):  # fmt: skip
        history = client.get_metric_history(run.info.run_id, metric)
        assert sorted(point.step for point in history) == list(range(1, EPOCHS + 1)), metric


def test_every_epoch_logs_its_pace_and_the_share_spent_waiting_for_data(trained):
    _, client, run, result = trained

    def history(key):
        return sorted(client.get_metric_history(run.info.run_id, key), key=lambda point: point.step)

    waits, rates = history("data_wait_fraction"), history("train_images_per_s")
    assert all(0 < point.value < 1 for point in waits)
    # 64 training images an epoch: their training took 64 / rate seconds, less than passed between two epochs' logs
    for before, rate in zip(rates, rates[1:], strict=False):
        assert 0 < 64 / rate.value < (rate.timestamp - before.timestamp) / 1000
    assert f"{rates[0].value:.0f} img/s, data wait {waits[0].value:.1%}" in result.stdout + result.stderr


def test_training_learns_a_separable_set(trained):
    _, client, run, _ = trained
    assert run.data.metrics["best_val_accuracy"] >= 0.9
    losses = [p.value for p in sorted(client.get_metric_history(run.info.run_id, "train_loss"), key=lambda p: p.step)]
    assert losses[-1] < losses[0]


def test_artifacts_hold_config_figures_and_loadable_weights(trained, tmp_path):
    _, client, run, _ = trained
    run_id = run.info.run_id
    listed = {
        item.path for folder in ("config", "figures", "weights") for item in client.list_artifacts(run_id, folder)
    }
    expected = {"config/config.yaml", "config/overrides.yaml", "figures/confusion_matrix.png",
                "figures/confusion_matrix.json", "figures/learning_curves.png", "weights/best.pt"}  # fmt: skip
    assert expected <= listed
    png = client.download_artifacts(run_id, "figures/confusion_matrix.png", str(tmp_path))
    assert Path(png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    matrix_file = client.download_artifacts(run_id, "figures/confusion_matrix.json", str(tmp_path))
    matrix = json.loads(Path(matrix_file).read_text())
    assert sum(map(sum, matrix["counts"])) == 32 and matrix["epoch"] == int(run.data.metrics["best_epoch"])
    state = torch.load(client.download_artifacts(run_id, "weights/best.pt", str(tmp_path)), weights_only=True)
    assert state["fc.weight"].shape == (2, 512)


def test_artifacts_land_under_mlruns_in_the_launch_folder(trained):
    folder, _, run, _ = trained
    assert (folder / "mlflow.db").is_file()
    assert list((folder / "mlruns").rglob("best.pt"))
    assert (
        run.info.artifact_uri.startswith((folder / "mlruns").as_uri())
        or str(folder / "mlruns") in run.info.artifact_uri
    )


def test_console_shows_epoch_summaries_and_the_runs_table_link(trained):
    _, _, run, result = trained
    output = result.stdout + result.stderr
    assert output.count("train loss") == EPOCHS
    assert f"/runs/{run.info.run_id}?workflowType=machine_learning" in output


def test_sweep_gives_one_finished_run_per_model_with_a_shared_sweep_id(tiny_lab, tmp_path):
    result = run_cli("-m", *FAST, f"data.root={tiny_lab}", "trainer.epochs=1", "model=resnet18,resnet50", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    _, runs = runs_of(tmp_path)
    assert sorted(run.data.tags["model"] for run in runs) == ["resnet18", "resnet50"]
    assert all(run.info.status == "FINISHED" for run in runs)
    assert len({run.data.tags["sweep_id"] for run in runs}) == 1
    assert sorted(run.data.tags["sweep_job"] for run in runs) == ["0", "1"]
    assert (tmp_path / "multirun").is_dir()


def test_missing_root_exits_non_zero_naming_the_path(tmp_path):
    absent = tmp_path / "no-such-data"
    result = run_cli("data=lab", f"data.root={absent}", cwd=tmp_path)
    assert result.returncode == 1
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("error: ") and str(absent) in last_line and "data=demo" in last_line
    _, runs = runs_of(tmp_path)
    assert runs == []  # failed before a run was opened: nothing left RUNNING


def test_wrong_type_on_the_command_line_fails_at_composition(tmp_path):
    result = run_cli("optim.lr=abc", cwd=tmp_path)
    assert result.returncode == 1
    assert "optim.lr" in result.stderr and "abc" in result.stderr
    assert not (tmp_path / "mlflow.db").exists()


@pytest.mark.parametrize(("cache", "statuses"), [("none", ["FAILED"]), ("disk", [])])
def test_an_unreadable_image_fails_naming_the_file(tmp_path, cache, statuses):
    """Decoding per image meets the file mid-run and marks the run FAILED; the decode cache meets it before
    the run opens, so no run is left behind."""
    root = write_lab_layout(tmp_path / "data", {"train": 8, "valid": 4})
    (root / "valid" / "3.bmp").write_bytes(b"BM truncated")
    result = run_cli(*FAST, f"data.root={root}", "trainer.epochs=1", f"data.cache={cache}", cwd=tmp_path)
    assert result.returncode == 1
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("error: ") and "valid/3.bmp: cannot be read as an image" in last_line
    _, runs = runs_of(tmp_path)
    assert [run.info.status for run in runs] == statuses


def test_ctrl_c_ends_the_run_killed_with_exit_130(tiny_lab, tmp_path):
    command = [sys.executable, str(REPO / "run.py"), *FAST, f"data.root={tiny_lab}", "trainer.epochs=200"]
    env = os.environ | {"PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    try:
        for line in process.stdout:  # wait until the run is open and training
            if "epoch 1/200" in line:
                break
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 130, stderr[-2000:]
    assert "stopped by SIGINT" in stderr
    _, runs = runs_of(tmp_path)
    assert [run.info.status for run in runs] == ["KILLED"]


@pytest.mark.skipif(not (SHARED_DATA / "allidb2-sample").is_dir(), reason="real ALL-IDB2 sample not available")
def test_real_allidb2_cells_are_learned_from_scratch(tmp_path):
    """260 real ALL-IDB2 crops (130 ALL / 130 normal), 70/30 split: a loop that learns clears 75%."""
    sample = SHARED_DATA / "allidb2-sample"
    table = pd.read_csv(sample / "labels.csv")
    table["Path"] = [str(sample / path) for path in table.path]
    shuffled = table.sample(frac=1.0, random_state=0)
    cut = int(0.7 * len(shuffled))
    shuffled[:cut][["Path", "label"]].to_csv(tmp_path / "train.csv", index=False)
    shuffled[cut:][["Path", "label"]].to_csv(tmp_path / "valid.csv", index=False)
    result = run_cli(
        "data=lab", f"data.root={tmp_path}", "data.crop_size=100", "data.image_size=64", "data.num_workers=0",
        "trainer.epochs=10", "trainer.progress=false", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    _, (run,) = runs_of(tmp_path)
    assert run.data.params["dataset.valid.images"] == str(len(shuffled) - cut)
    assert run.data.metrics["best_val_accuracy"] >= 0.75
