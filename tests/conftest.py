"""Shared fixtures: tiny real image folders on disk, a Hydra composer, and the real CLI."""

from __future__ import annotations

import contextlib
import gc
import io
import logging
import os
import socket
import subprocess
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir
from mlflow.tracking import MlflowClient
from PIL import Image

from leukemia.__main__ import cli
from leukemia.data.loading import kill_leftover_workers
from leukemia.training.loop import TIMING_METRICS

# Under pytest-xdist every core runs a worker: one thread each (and in the processes they start), so that two
# workers' torch thread pools do not fight over the same cores.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"  # the config groups (in the wheel: leukemia/conf)
SHARED_DATA = REPO.parent / "shared" / "data"


def pytest_collection_modifyitems(items):
    """Tests marked ``gpu`` are skipped, saying why, where CUDA is absent."""
    if torch.cuda.is_available():
        return
    for item in items:
        if item.get_closest_marker("gpu"):
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU (scripts/gpu_check.sh runs these on one)"))


@pytest.fixture(autouse=True, scope="session")
def home_in_a_temporary_folder(tmp_path_factory):
    """What the tests run writes nothing to the real home folder (``paths.cache_dir`` defaults to
    ``~/.cache/leukemia``): the session, and the CLI runs it starts, get a temporary one."""
    home = tmp_path_factory.mktemp("home")
    real = os.environ.get("HOME")
    os.environ["HOME"] = str(home)
    yield home
    if real is None:
        del os.environ["HOME"]
    else:
        os.environ["HOME"] = real


def compose_config(*overrides: str, config_dir: Path = CONF, return_hydra_config: bool = False):
    with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides), return_hydra_config=return_hydra_config)


def separable_cell(rng: np.random.Generator, size: int, label: int) -> np.ndarray:
    """A clearly separable toy cell: ALL = large pale disk, normal = small dark disk, both with noise."""
    yy, xx = np.mgrid[0:size, 0:size]
    radius = size * (0.36 if label else 0.2) + rng.normal(0, 1)
    center = size / 2 + rng.normal(0, 1.5, 2)
    inside = np.hypot(xx - center[0], yy - center[1]) < radius
    color = np.array([150, 80, 170]) if label else np.array([60, 25, 70])
    image = inside[..., None] * (color + rng.normal(0, 12, (size, size, 3)))
    return np.clip(image, 0, 255).astype(np.uint8)


def write_lab_layout(
    root: Path, counts: dict[str, int], size: int = 40, path_style: str = "plain", seed: int = 0
) -> Path:
    """The course layout under ``root``: train.csv/valid.csv (Path,label), resnet_18_test.csv (Path).

    path_style "plain": ``train/0.bmp`` relative to the CSV folder; "new_dataset": CSVs inside
    ``root/new_dataset`` naming ``./new_dataset/train/0.bmp`` (relative to the folder above them).
    Returns the folder holding the CSVs (what data.root points at).
    """
    rng = np.random.default_rng(seed)
    csv_dir = root / "new_dataset" if path_style == "new_dataset" else root
    csv_dir.mkdir(parents=True, exist_ok=True)
    for split, count in counts.items():
        (csv_dir / split).mkdir(exist_ok=True)
        rows = []
        for index in range(count):
            label = index % 2
            Image.fromarray(separable_cell(rng, size, label)).save(csv_dir / split / f"{index}.bmp")
            path = f"./new_dataset/{split}/{index}.bmp" if path_style == "new_dataset" else f"{split}/{index}.bmp"
            rows.append({"Path": path, "label": label})
        table = pd.DataFrame(rows)
        if split == "test":
            table[["Path"]].to_csv(csv_dir / "resnet_18_test.csv", index=False)
        else:
            table.to_csv(csv_dir / f"{split}.csv", index=False)
    return csv_dir


# fold -> subjects, as in C-NMC: ALL subjects are numbers, healthy ones H<n>.
CNMC_FOLDS = {0: ["1", "2", "H1"], 1: ["3", "H2"], 2: ["4", "5", "H3"]}


def write_cnmc_tree(
    root: Path,
    folds: dict[int, list[str]] = CNMC_FOLDS,
    per_subject: int = 4,
    size: int = 40,
    training: str = "training_data",
    prelim: int = 6,
    final: int = 0,
    seed: int = 0,
) -> Path:
    """The published C-NMC tree in small: ``<training>/fold_k/{all,hem}/UID_<subject>_<image>_1_<all|hem>.bmp``,
    a labelled preliminary test set (``prelim`` images of new subjects 90/H90, CSV beside the folder) and an
    unlabelled final test set (``final`` images). Returns ``root``."""
    rng = np.random.default_rng(seed)
    for fold, subjects in folds.items():
        for subject in subjects:
            label = 0 if subject.upper().startswith("H") else 1
            kind = "all" if label else "hem"
            folder = root / training / f"fold_{fold}" / kind
            folder.mkdir(parents=True, exist_ok=True)
            for image in range(per_subject):
                cell = separable_cell(rng, size, label)
                Image.fromarray(cell).save(folder / f"UID_{subject}_{image + 1}_1_{kind}.bmp")
    if prelim:
        folder = root / "validation_data" / "C-NMC_test_prelim_phase_data"
        folder.mkdir(parents=True)
        rows = []
        for index in range(1, prelim + 1):
            label = index % 2
            Image.fromarray(separable_cell(rng, size, label)).save(folder / f"{index}.bmp")
            original = f"UID_90_{index}_1_all.bmp" if label else f"UID_H90_{index}_1_hem.bmp"
            rows.append({"Patient_ID": original, "new_names": f"{index}.bmp", "labels": label})
        pd.DataFrame(rows).to_csv(folder.parent / "C-NMC_test_prelim_phase_data_labels.csv", index=False)
    if final:
        folder = root / "testing_data" / "C-NMC_test_final_phase_data"
        folder.mkdir(parents=True)
        for index in range(1, final + 1):
            Image.fromarray(separable_cell(rng, size, index % 2)).save(folder / f"{index}.bmp")
    return root


@pytest.fixture(scope="session")
def tiny_lab(tmp_path_factory) -> Path:
    """A separable lab-layout set: 64 train, 32 valid, 8 test images of 40x40 px."""
    return write_lab_layout(tmp_path_factory.mktemp("lab"), {"train": 64, "valid": 32, "test": 8})


def free_port() -> int:
    """A TCP port on 127.0.0.1 nothing listens on (for a server a test starts)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def client_for(folder: Path) -> MlflowClient:
    """The sqlite store a CLI run launched in ``folder`` writes to."""
    return MlflowClient(tracking_uri=f"sqlite:///{folder / 'mlflow.db'}")


def runs_of(folder: Path, kind: str | None = None) -> tuple[MlflowClient, list]:
    """The client and the runs of the default experiment in ``folder``'s store (none if it does not exist): of
    ``kind``, or all but a sweep's own run."""
    client = client_for(folder)
    experiment = client.get_experiment_by_name("leukemia")
    runs = client.search_runs([experiment.experiment_id]) if experiment else []
    return client, [
        run for run in runs if (run.data.tags.get("kind") == kind if kind else run.data.tags.get("kind") != "sweep")
    ]


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``python run.py ARGS`` in ``cwd`` (where mlflow.db, mlruns/ and outputs/ land), run in this process: the
    command line's entry with its arguments, working folder, output and exit status, without the seconds a new
    interpreter spends importing torch and mlflow. What a process of its own proves (signals, the interpreter's
    exit code, SLURM jobs, joblib's worker processes, which keep the folder they started in) is tested with
    ``run_cli_process``."""
    stdout, stderr, argv, folder = io.StringIO(), io.StringIO(), sys.argv, Path.cwd()
    sys.argv, code = [str(REPO / "run.py"), *args], 0
    root = logging.getLogger()
    logging_before = root.level, list(root.handlers)  # Hydra configures logging for its job
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            try:
                cli()
            except SystemExit as exit:  # as the interpreter reports it: a message goes to stderr, with status 1
                code = exit.code if isinstance(exit.code, int) else 0 if exit.code is None else 1
                if isinstance(exit.code, str):
                    print(exit.code, file=sys.stderr)
            except Exception:  # an uncaught error: its traceback and status 1, as a process would end
                traceback.print_exc()
                code = 1
    finally:
        sys.argv = argv
        os.chdir(folder)
        for handler in set(root.handlers) - set(logging_before[1]):
            handler.close()  # the run's log file
        root.setLevel(logging_before[0])
        root.handlers[:] = logging_before[1]
        kill_leftover_workers()  # as the process's exit would
        gc.unfreeze()  # the entry freezes what it loaded, for a process about to end
        gc.collect()  # its loaders go now
    return subprocess.CompletedProcess([sys.executable, "run.py", *args], code, stdout.getvalue(), stderr.getvalue())


def run_cli_process(*args: str, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    """``python run.py ARGS`` in ``cwd`` as a process of its own."""
    env = os.environ | {"PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, str(REPO / "run.py"), *args],
        cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env,
    )  # fmt: skip


def run_clis(
    commands: list[tuple[str, ...]], cwd: Path | list[Path], timeout: int = 600
) -> list[subprocess.CompletedProcess]:
    """Several independent ``python run.py ARGS`` processes at once in ``cwd`` (one folder, or one per command;
    cases that each fail before a run opens), their results in order."""
    env = os.environ | {"PYTHONUNBUFFERED": "1"}
    folders = cwd if isinstance(cwd, list) else [cwd] * len(commands)
    started = [subprocess.Popen([sys.executable, str(REPO / "run.py"), *args], cwd=folder, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=env)
               for args, folder in zip(commands, folders, strict=True)]  # fmt: skip
    results = []
    for process in started:
        stdout, stderr = process.communicate(timeout=timeout)
        results.append(subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr))
    return results


# Small, fast settings shared by the end-to-end runs (32-px images, no progress bars).
FAST = ("data=lab", "data.crop_size=36", "data.image_size=32", "data.batch_size=16", "trainer.progress=false",
        "eval.bootstrap=200")  # fmt: skip


def histories(client: MlflowClient, run_id: str) -> dict[str, list[tuple[int, float]]]:
    """Every metric the run's training logged as (step, value) pairs in step order (MLflow's ``system/`` samples
    of the machine and the epochs' speed, which no two runs share, left out)."""
    keys = [key for key in client.get_run(run_id).data.metrics
            if not key.startswith("system/") and key not in TIMING_METRICS]  # fmt: skip
    return {key: sorted((m.step, m.value) for m in client.get_metric_history(run_id, key)) for key in keys}


def run_id_of(output: str) -> str:
    return output.split("MLflow run ", 1)[1].split(":", 1)[0]


def training_args(tiny_lab: Path) -> tuple[str, ...]:
    """Deterministic fast runs on the tiny set; data=lab reads it with 2 loader workers."""
    return (*FAST, f"data.root={tiny_lab}", "trainer.deterministic=true")


def start(args: tuple[str, ...], cwd: Path, env: dict[str, str] | None = None, **popen) -> subprocess.Popen:
    """``python run.py ARGS`` in the background, stdout and stderr merged; ``popen`` as subprocess.Popen takes."""
    env = os.environ | {"PYTHONUNBUFFERED": "1"} | (env or {})
    command = [sys.executable, str(REPO / "run.py"), *args]
    return subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            **popen)  # fmt: skip


FIRST_EPOCH = " - epoch 1/"  # the first epoch's line, logged after its checkpoint


def signal_after(
    process: subprocess.Popen, signum: int, times: int = 1, group: bool = False, marker: str = FIRST_EPOCH
) -> str:
    """Send ``signum`` (``times`` times, to the whole process group if ``group``: loader workers included) as
    soon as a line with ``marker`` appears; returns all output."""
    seen = []
    try:
        for line in process.stdout:
            seen.append(line)
            if marker in line:
                for _ in range(times):
                    os.killpg(process.pid, signum) if group else process.send_signal(signum)
                    time.sleep(0.2)
                break
        seen.append(process.communicate(timeout=180)[0])
    finally:
        process.kill()
    return "".join(seen)
