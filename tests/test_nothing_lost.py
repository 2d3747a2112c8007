"""Nothing lost under concurrency and bad data or storage, through the real CLI and a real sqlite store: runs
started together, a resume of a run still training, a full disk, images that are not what they claim, and
tracking stores that cannot work."""

from __future__ import annotations

import resource
import signal
import struct
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient
from PIL import Image

from leukemia.data.layouts import load_splits
from leukemia.errors import UserError

from conftest import (
    FAST,
    client_for,
    compose_config,
    run_cli,
    run_cli_process,
    run_id_of,
    runs_of,
    start,
    write_lab_layout,
)


def last_line(output: str) -> str:
    return output.strip().splitlines()[-1]


def checkpoint_of(client: MlflowClient, run_id: str) -> Path:
    return Path(client.get_run(run_id).data.tags["checkpoint"])


TOGETHER = {"fresh-folder": (), "one-output-folder": ("hydra.run.dir=outputs/shared",), "two-sweeps": ("-m",)}


@pytest.mark.slow
@pytest.mark.parametrize("mode", TOGETHER)
def test_two_runs_started_together_both_finish_each_with_its_own_checkpoint(tiny_lab, tmp_path, mode):
    """Started at the same moment in a folder with no store yet (both create its tables), made to share one
    output folder (as two runs started in the same second once did), or as two sweeps."""
    same_folder = mode == "one-output-folder"
    args = (*TOGETHER[mode], *FAST, f"data.root={tiny_lab}", "trainer.epochs=1")
    processes = [start((*args, f"seed={seed}"), tmp_path) for seed in (1, 2)]
    outputs = [process.communicate(timeout=600)[0] for process in processes]
    assert [process.returncode for process in processes] == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]
    client, runs = runs_of(tmp_path)
    assert sorted(run.info.status for run in runs) == ["FINISHED", "FINISHED"]
    checkpoints = {run.info.run_id: checkpoint_of(client, run.info.run_id) for run in runs}
    assert len(set(checkpoints.values())) == 2
    for run_id, checkpoint in checkpoints.items():
        assert checkpoint.parent.name == run_id
        assert torch.load(checkpoint, weights_only=True)["run_id"] == run_id
    if same_folder:
        assert {checkpoint.parents[2] for checkpoint in checkpoints.values()} == {tmp_path / "outputs" / "shared"}
    else:
        assert len({checkpoint.parents[2] for checkpoint in checkpoints.values()}) == 2  # Hydra's folders differ
    if mode == "two-sweeps":
        assert len({run.data.tags["sweep_id"] for run in runs}) == 2


@pytest.mark.slow
def test_resuming_a_run_that_is_still_training_is_refused_in_one_line(tiny_lab, tmp_path):
    training = start((*FAST, f"data.root={tiny_lab}", "trainer.epochs=200"), tmp_path)
    seen = []
    for line in training.stdout:
        seen.append(line)
        if " - epoch 1/" in line:
            break
    run_id = run_id_of("".join(seen))
    try:
        second = run_cli_process(f"resume={run_id}", "trainer.progress=false", cwd=tmp_path, timeout=300)
        still_training = training.poll() is None
    finally:
        training.send_signal(signal.SIGTERM)
        training.communicate(timeout=180)
    assert still_training
    assert second.returncode == 1
    line = last_line(second.stderr)
    assert line.startswith(f"error: resume={run_id}: the run is still training (process {training.pid} on ")
    assert "stop that process first" in line
    assert training.returncode == 143 and client_for(tmp_path).get_run(run_id).info.status == "KILLED"


def limit_file_size(limit_bytes: int):
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails instead of killing

    return limit


@pytest.mark.slow
def test_a_checkpoint_that_does_not_fit_names_the_file_and_the_cause_and_leaves_no_partial(tiny_lab, tmp_path):
    """A file-size limit stands in for a full disk: the same write error, the same path through the code."""
    process = start((*FAST, f"data.root={tiny_lab}", "trainer.epochs=2"), tmp_path,
                    preexec_fn=limit_file_size(20_000_000))  # fmt: skip
    output = process.communicate(timeout=600)[0]
    assert process.returncode == 1, output[-3000:]
    line = last_line(output)
    assert line.startswith("error: ") and "last.pt: file too large while writing the checkpoint" in line, line
    assert "Traceback" not in output
    client, (run,) = runs_of(tmp_path)
    assert run.info.status == "FAILED"
    folder = checkpoint_of(client, run.info.run_id).parent
    assert not list(folder.glob("*.partial")) and not (folder / "last.pt").exists()


def bomb(path: Path, side: int = 30_000) -> None:
    """A real BMP whose header claims ``side`` x ``side`` pixels (PIL's bomb check reads only the header)."""
    Image.new("RGB", (4, 4)).save(path)
    data = bytearray(path.read_bytes())
    data[18:26] = struct.pack("<ii", side, side)
    path.write_bytes(bytes(data))


@pytest.mark.slow
@pytest.mark.parametrize("cache", ["device", "none"])
def test_an_image_claiming_a_huge_size_is_refused_or_skipped_like_any_unreadable_file(tmp_path, cache):
    root = write_lab_layout(tmp_path / "data", {"train": 17, "valid": 8})
    bomb(root / "train" / "5.bmp")
    args = (*FAST, f"data.root={root}", "trainer.epochs=1", f"data.cache={cache}")
    refused = run_cli(*args, cwd=tmp_path)
    assert refused.returncode == 1
    line = last_line(refused.stderr)
    assert "train/5.bmp: cannot be read as an image (Image size" in line and "data.on_bad_image=skip" in line
    assert "Traceback" not in refused.stderr

    skipped = run_cli(*args, "data.on_bad_image=skip", cwd=tmp_path)
    assert skipped.returncode == 0, skipped.stderr[-3000:]
    _, runs = runs_of(tmp_path)
    (run,) = [run for run in runs if run.info.status == "FINISHED"]
    assert run.data.metrics["skipped_images"] == 1


@pytest.mark.slow
@pytest.mark.parametrize("cache", ["disk", "device", "none"])
def test_a_last_training_batch_of_one_image_does_not_fail_the_epoch(tmp_path, cache):
    root = write_lab_layout(tmp_path / "data", {"train": 17, "valid": 8})  # batch 16: a last batch of one
    result = run_cli(*FAST, f"data.root={root}", "trainer.epochs=2", f"data.cache={cache}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert runs_of(tmp_path)[1][0].info.status == "FINISHED"


def lab_with_rows(tmp_path: Path, paths: list[str]) -> Path:
    root = write_lab_layout(tmp_path, {"train": 4, "valid": 4})
    table = pd.read_csv(root / "train.csv")
    table.loc[: len(paths) - 1, "Path"] = paths
    table.to_csv(root / "train.csv", index=False)
    return root


@pytest.mark.parametrize(
    ("paths", "message"),
    [
        (["train"], "train.csv: 1 of 4 paths are folders, not image files (first: "),
        (["", None], "train.csv: 'Path' is empty in 2 of 4 rows (row 2, row 3); give every row an image path"),
    ],
    ids=["folder", "empty-cells"],
)
def test_manifest_rows_that_name_no_image_file_are_named_as_such(tmp_path, paths, message):
    root = lab_with_rows(tmp_path, paths)
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_splits(compose_config("data=lab", f"data.root={root}").data)


def test_an_empty_path_cell_in_a_csv_manifest_is_named(tmp_path):
    write_lab_layout(tmp_path, {"train": 4})
    pd.DataFrame({"path": ["train/0.bmp", None, "train/2.bmp"], "label": [0, 1, 0]}).to_csv(tmp_path / "labels.csv")
    with pytest.raises(UserError, match=r"labels.csv: 'path' is empty in 1 of 3 rows \(row 3\)"):
        load_splits(compose_config("data=csv", f"data.root={tmp_path}").data)


@pytest.mark.slow
def test_an_unwritable_sqlite_location_fails_at_once_in_one_line(tmp_path):
    started = time.monotonic()
    result = run_cli_process("tracking.uri=sqlite:////proc/leukemia/mlflow.db", cwd=tmp_path, timeout=120)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert last_line(result.stderr).startswith(
        "error: tracking.uri=sqlite:////proc/leukemia/mlflow.db: cannot write /proc/leukemia/mlflow.db ("
    )
    assert time.monotonic() - started < 60  # not MLflow's two minutes of retries


@pytest.mark.slow
def test_a_deleted_experiment_is_refused_before_any_run_opens(tmp_path):
    client = client_for(tmp_path)
    client.delete_experiment(client.create_experiment("old"))
    result = run_cli_process("tracking.experiment=old", cwd=tmp_path, timeout=120)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    line = last_line(result.stderr)
    assert line.startswith("error: tracking.experiment=old: deleted in sqlite:///mlflow.db; restore it")
    assert client.search_runs([client.get_experiment_by_name("old").experiment_id], run_view_type=3) == []


@pytest.mark.slow
@pytest.mark.parametrize("setting", ["hydra.run.dir=/proc/leukemia-out", "paths.cache_dir=/proc/leukemia-cache"])
def test_a_folder_that_cannot_be_made_is_named_in_one_line(tmp_path, setting):
    result = run_cli_process(setting, "trainer.epochs=1", cwd=tmp_path, timeout=300)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    folder = setting.split("=", 1)[1]
    assert last_line(result.stderr).startswith(f"error: {folder}: no such file or directory; make it reachable")
    assert all(run.info.status != "RUNNING" for run in runs_of(tmp_path)[1])
