"""Reproducibility and resume, through the real CLI and a real MLflow store: same seed, same numbers; a run
killed with SIGKILL or stopped with SIGTERM continues from its last checkpoint to the uninterrupted numbers."""

import signal
from pathlib import Path

import pytest
import torch

from conftest import FAST, client_for, histories, run_cli, run_id_of, signal_after, start, training_args

pytestmark = pytest.mark.slow  # end-to-end: every test here runs the real CLI

REPO = Path(__file__).resolve().parents[1]
EPOCHS = 4


@pytest.fixture(scope="module")
def reference(tiny_lab, tmp_path_factory):
    """An uninterrupted deterministic run: its folder (with the MLflow store) and its run id."""
    folder = tmp_path_factory.mktemp("reference")
    result = run_cli(*training_args(tiny_lab), f"trainer.epochs={EPOCHS}", cwd=folder)
    assert result.returncode == 0, result.stderr[-3000:]
    return folder, run_id_of(result.stdout)


def test_two_runs_with_the_same_config_and_seed_log_identical_metric_histories(reference, tiny_lab):
    folder, first = reference
    again = run_cli(*training_args(tiny_lab), f"trainer.epochs={EPOCHS}", cwd=folder)
    assert again.returncode == 0, again.stderr[-3000:]
    client = client_for(folder)
    expected, actual = histories(client, first), histories(client, run_id_of(again.stdout))
    assert len(expected["val_loss"]) == EPOCHS and "best_val_accuracy" in expected
    assert actual == expected  # bit for bit, every metric at every epoch
    other_seed = run_cli(*training_args(tiny_lab), "trainer.epochs=1", "seed=7", cwd=folder)
    assert histories(client, run_id_of(other_seed.stdout))["train_loss"][0] != expected["train_loss"][0]


def test_splits_resident_in_memory_give_the_numbers_of_the_cache_read_from_disk(reference, tiny_lab):
    folder, on_disk = reference  # data.cache=auto: on a CPU, read from disk
    resident = run_cli(*training_args(tiny_lab), f"trainer.epochs={EPOCHS}", "data.cache=device", cwd=folder)
    assert resident.returncode == 0, resident.stderr[-3000:]
    assert "the train split (0.0 GB, 64 images) is resident in cpu memory" in resident.stdout + resident.stderr
    client = client_for(folder)
    assert histories(client, run_id_of(resident.stdout)) == histories(client, on_disk)
    assert client.get_run(run_id_of(resident.stdout)).data.tags["data_from"] == "device"
    assert client.get_run(on_disk).data.tags["data_from"] == "disk"


def test_a_run_killed_with_sigkill_resumes_to_the_uninterrupted_numbers(reference, tiny_lab):
    """The killed run keeps its splits in memory; the uninterrupted one read them from disk: the same numbers."""
    folder, uninterrupted = reference
    output = signal_after(start((*training_args(tiny_lab), f"trainer.epochs={EPOCHS}", "data.cache=device"), folder),
                          signal.SIGKILL)  # fmt: skip
    killed = run_id_of(output)
    client = client_for(folder)
    assert client.get_run(killed).info.status == "RUNNING"  # SIGKILL leaves no chance to close it
    checkpoint = Path(client.get_run(killed).data.tags["checkpoint"])
    saved = torch.load(checkpoint, weights_only=True)
    assert 1 <= saved["epoch"] < EPOCHS and saved["run_id"] == killed

    resumed = run_cli(f"resume={killed}", "trainer.progress=false", cwd=folder)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming run {killed}" in resumed.stdout and f"after epoch {saved['epoch']}" in resumed.stdout
    run = client.get_run(killed)
    assert run.info.status == "FINISHED" and run.data.tags["resumed_after_epoch"] == str(saved["epoch"])
    assert histories(client, killed) == histories(client, uninterrupted)  # same run id, same numbers


def test_sigterm_marks_the_run_killed_and_prints_how_to_resume_it_with_more_epochs(tiny_lab, tmp_path):
    output = signal_after(start((*training_args(tiny_lab), "trainer.epochs=3"), tmp_path),
                                      signal.SIGTERM)  # fmt: skip
    run_id = run_id_of(output)
    client = client_for(tmp_path)
    assert "stopped by SIGTERM" in output and f"continue with: python run.py resume={run_id}" in output
    assert client.get_run(run_id).info.status == "KILLED"

    longer = run_cli(f"resume={run_id}", "trainer.epochs=5", "trainer.progress=false", cwd=tmp_path)
    assert longer.returncode == 0, longer.stderr[-3000:]
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert [step for step, _ in histories(client, run_id)["val_accuracy"]] == [1, 2, 3, 4, 5]
    # Epoch 1 ran on the 3-epoch schedule (a 1-epoch warm-up from lr / 2); from epoch 2 on the run follows the
    # schedule of a fresh 5-epoch run: a 2-epoch warm-up to 0.05 (0.05 / 3, 0.1 / 3), then the cosine decay
    # over 3 epochs, 0.05 * (1 + cos(k * pi / 3)) / 2.
    rates = [value for _, value in histories(client, run_id)["lr"]]
    assert rates == pytest.approx([0.025, 0.1 / 3, 0.05, 0.0375, 0.0125])
    again = run_cli(f"resume={run_id}", cwd=tmp_path)
    assert again.returncode == 1
    assert f"run {run_id} (" in again.stderr and "has trained 5 epochs; give trainer.epochs above 5" in again.stderr


def test_resume_refuses_unknown_runs_and_settings_that_change_the_experiment(reference):
    folder, run_id = reference
    unknown = run_cli("resume=0123456789abcdef", cwd=folder)
    assert unknown.returncode == 1
    assert (
        "error: resume=0123456789abcdef: no such run in sqlite:///mlflow.db" in unknown.stderr.strip().splitlines()[-1]
    )
    changed = run_cli(f"resume={run_id}", f"trainer.epochs={EPOCHS + 1}", "optim.lr=0.5", cwd=folder)
    assert changed.returncode == 1
    assert f"error: optim.lr=0.5: resume continues run {run_id} with its own config" in changed.stderr
    assert client_for(folder).get_run(run_id).info.status == "FINISHED"  # untouched


def test_a_diverging_loss_fails_the_run_naming_epoch_batch_and_lr(tiny_lab, tmp_path):
    result = run_cli(*FAST, f"data.root={tiny_lab}", "trainer.epochs=3", "optim.lr=1e12", cwd=tmp_path)
    assert result.returncode == 1
    last_line = result.stderr.strip().splitlines()[-1]
    assert "error: training loss became" in last_line and "optim.lr=1e+12," in last_line, last_line
    assert "(learning rate 5e+11 that epoch" in last_line  # a 3-epoch run warms up over 1 epoch, from lr / 2
    assert "in epoch 1, batch " in last_line and "lower optim.lr" in last_line
    (run,) = client_for(tmp_path).search_runs([client_for(tmp_path).get_experiment_by_name("leukemia").experiment_id])
    assert run.info.status == "FAILED"


@pytest.mark.parametrize(("signum", "times", "code"), [(signal.SIGTERM, 1, 143), (signal.SIGINT, 2, 130)],
                         ids=["SIGTERM", "SIGINT-twice"])  # fmt: skip
def test_a_signal_to_the_whole_process_group_ends_the_run_killed_and_it_resumes_exactly(
    reference, tiny_lab, signum, times, code
):
    """What `timeout`, SLURM or `kill -- -PGID` do: the loader workers get the signal too, and quietly leave the
    stop to the main process."""
    folder, uninterrupted = reference
    process = start((*training_args(tiny_lab), f"trainer.epochs={EPOCHS}"), folder, start_new_session=True)
    output = signal_after(process, signum, times, group=True)
    run_id = run_id_of(output)
    assert process.returncode == code, output[-3000:]
    assert f"continue with: python run.py resume={run_id}" in output
    assert "Traceback" not in output and "DataLoader worker" not in output
    client = client_for(folder)
    assert client.get_run(run_id).info.status == "KILLED"
    resumed = run_cli(f"resume={run_id}", "trainer.progress=false", cwd=folder)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert histories(client, run_id) == histories(client, uninterrupted)


def test_a_run_stopped_in_its_first_epoch_starts_over_in_the_same_run(tiny_lab, tmp_path):
    process = start((*FAST, f"data.root={tiny_lab}", "data.image_size=96", "trainer.epochs=2"), tmp_path)
    output = signal_after(process, signal.SIGTERM, marker="MLflow run ")  # logged as the first epoch begins
    run_id = run_id_of(output)
    assert process.returncode == 143 and "the checkpoint after epoch 0 is" in output, output[-3000:]
    assert f"continue with: python run.py resume={run_id}" in output
    resumed = run_cli(f"resume={run_id}", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    client = client_for(tmp_path)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["resumed_after_epoch"] == "0"
    assert [step for step, _ in histories(client, run_id)["val_loss"]] == [1, 2]
    assert len(client.search_runs([run.info.experiment_id])) == 1
