"""What ``pip install .`` builds: a wheel holding every module and config file of the source tree, which imports
and runs from outside the checkout (``python -m leukemia`` and the ``leukemia`` command)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import CONF, FAST, REPO, runs_of

PACKAGE = REPO / "leukemia"
# What a checkout holds besides the sources; copied sources build a wheel no earlier build/ folder can pad.
NOT_SOURCE = (".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", "mlruns", "outputs", "multirun",
              "mlflow.db*", ".whl", ".pytest_cache", ".ruff_cache")  # fmt: skip


def source_files() -> set[str]:
    """Every module of the package and every YAML of conf/ but the machine-local ones, as wheel paths
    (``leukemia/data/cache.py``, ``leukemia/conf/optim/sgd.yaml``)."""
    modules = {path.relative_to(REPO).as_posix() for path in PACKAGE.rglob("*.py") if "__pycache__" not in path.parts}
    configs = {f"leukemia/conf/{path.relative_to(CONF).as_posix()}" for path in CONF.rglob("*.yaml")
               if path.relative_to(CONF).parts[0] != "local"}  # fmt: skip
    return modules | configs


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel ``pip`` builds from a copy of the checkout's sources."""
    scratch = tmp_path_factory.mktemp("wheel")
    source = shutil.copytree(REPO, scratch / "source", ignore=shutil.ignore_patterns(*NOT_SOURCE))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w",
                    str(scratch / "dist"), str(source)], check=True, capture_output=True, timeout=300)  # fmt: skip
    return next((scratch / "dist").glob("leukemia-*.whl"))


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    """The wheel installed (without its dependencies, which this environment has) into a folder of its own."""
    target = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target),
                    str(wheel)], check=True, capture_output=True, timeout=300)  # fmt: skip
    return target


def from_wheel(target: Path, *command: str, cwd: Path) -> subprocess.CompletedProcess:
    """``command`` run in ``cwd`` (outside the checkout) importing leukemia from ``target`` alone."""
    env = os.environ | {"PYTHONPATH": str(target), "PYTHONUNBUFFERED": "1"}
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_the_wheel_holds_every_module_and_config_file_and_nothing_else(wheel):
    with zipfile.ZipFile(wheel) as archive:
        packed = {name for name in archive.namelist() if name.startswith("leukemia/")}
    assert packed == source_files()
    assert {"leukemia/data/cache.py", "leukemia/training/loop.py", "leukemia/conf/config.yaml"} <= packed
    yamls = sorted(CONF.rglob("*.yaml"))
    assert len(yamls) > 20 and {f"leukemia/conf/{path.relative_to(CONF).as_posix()}" for path in yamls} <= packed


@pytest.mark.slow
def test_the_installed_wheel_imports_every_module_from_outside_the_checkout(installed, tmp_path):
    modules = sorted(name.removesuffix(".py").removesuffix("/__init__").replace("/", ".")
                     for name in source_files() if name.endswith(".py") and "/conf/" not in name
                     and not name.endswith("__main__.py"))  # fmt: skip
    script = f"import importlib, leukemia; print(leukemia.__file__); [importlib.import_module(m) for m in {modules}]"
    result = from_wheel(installed, sys.executable, "-c", script, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(installed / "leukemia" / "__init__.py")


@pytest.mark.slow
def test_the_installed_command_trains_with_the_packaged_configs_and_a_local_one(installed, tiny_lab, tmp_path):
    (tmp_path / "conf" / "local").mkdir(parents=True)
    (tmp_path / "conf" / "local" / "default.yaml").write_text(f"# @package _global_\npaths:\n  lab_root: {tiny_lab}\n")
    args = (*FAST, "trainer.epochs=1", "eval.bootstrap=200")
    trained = from_wheel(installed, sys.executable, "-m", "leukemia", *args, cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr[-2000:]
    _, runs = runs_of(tmp_path)
    assert [run.info.status for run in runs] == ["FINISHED"]
    assert runs[0].data.params["data.root"] == str(tiny_lab)  # from the launch folder's conf/local
    shown = from_wheel(installed, str(installed / "bin" / "leukemia"), "--cfg", "job", "model=resnet50", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert "depth: 50" in shown.stdout
