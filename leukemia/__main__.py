"""The command line: ``python -m leukemia ARGS``, the ``leukemia`` command and ``python run.py ARGS`` are one
entry. Hydra composes the config from ``conf/`` (in the wheel, ``leukemia/conf``) and the task it names runs. A
config that does not compose ends in one line naming the override and the fix, as every other user error does,
instead of Hydra's several lines (whose advice to append a misspelt key with ``+`` would only hide it).

    python -m leukemia model=resnet50 optim.lr=0.01
    python -m leukemia -m model=resnet18,resnet50,resnet152
"""

import gc
import os
import sys
from collections.abc import Callable
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

import hydra
from hydra.errors import HydraException, MissingConfigException
from omegaconf import DictConfig

from leukemia.config import register_configs
from leukemia.errors import file_system_error

MORE = "`python run.py --help` lists the groups and keys"
MERGING = "Error merging override "
# Lines of Hydra's and OmegaConf's reports left out: where the key is typed, and the advice to add it with "+"
IMPLEMENTATION_DETAIL = ("To append", "full_key", "reference_type", "object_type")


def composition_error(error: HydraException) -> str:
    """Hydra's message (and its OmegaConf cause) as one line."""
    cause = error.__cause__
    if isinstance(error, MissingConfigException) and error.options is not None:
        culprit = str(error).splitlines()[0].split("Could not find ", 1)[-1].strip("'")
        group, _, option = culprit.rpartition("/")
        return f"{group}={option}: no such option; choose one of {', '.join(sorted(error.options))}"
    key = getattr(cause, "full_key", None)
    schema = getattr(cause, "object_type", None)
    if key and "not in" in str(cause) and is_dataclass(schema):
        section = key.rpartition(".")[0] or "the config"
        known = ", ".join(f.name for f in fields(schema))
        return f"{key}: no such key in {section} ({schema.__name__}); its keys are {known}"
    lines = [line.strip().rstrip(".") for line in f"{error}\n{cause or ''}".splitlines()]
    kept = [line for line in lines if line and not line.startswith(IMPLEMENTATION_DETAIL)]
    message = "; ".join(kept)
    if message.startswith(MERGING):  # "Error merging override optim.lr=abc; Value 'abc' …"
        message = message.removeprefix(MERGING).replace("; ", ": ", 1)
    return f"{message}; {MORE}"


def run_reporting_one_line(main: Callable[[], Any]) -> None:
    """Run Hydra's ``main``; a config that does not compose, or an output folder that cannot be made, exits 1
    with ``error: <one line>``."""
    asked_for_traces = "HYDRA_FULL_ERROR" in os.environ
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra raises instead of printing its own report
    try:
        main()
    except HydraException as error:
        if asked_for_traces:
            raise
        sys.exit(f"error: {composition_error(error)}")
    except OSError as error:  # Hydra making the output folder
        named = file_system_error(error)
        if named is None or asked_for_traces:
            raise
        sys.exit(f"error: {named}")
    finally:
        if not asked_for_traces:
            del os.environ["HYDRA_FULL_ERROR"]
        # The interpreter's last garbage collection walks every object mlflow, torch and pandas made (2 s on a
        # 2-core machine, after the run has ended); frozen, they are freed with the process instead.
        gc.freeze()


# At import, not in cli(): a sweep's launcher (joblib's worker processes, SLURM jobs) imports this module to find
# the task function and composes the job's config there, which needs the schemas in Hydra's ConfigStore.
register_configs()


def config_dir() -> str:
    """The config groups: the wheel's copy (leukemia/conf, made at build time by setup.py) where the package
    was installed from one, else the checkout's conf/ beside the package (``python run.py``, an editable
    install, the tests)."""
    package = Path(__file__).resolve().parent
    shipped = package / "conf"
    return str(shipped if (shipped / "config.yaml").is_file() else package.parent / "conf")


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="config")
def main(cfg: DictConfig) -> Any:
    # Imported here, after composition, so a config mistake is reported before torch and mlflow load.
    from leukemia.tasks import run_task

    return run_task(cfg)  # task=train: the value a sweeper (hparams_search) optimises


def local_search_path() -> list[str]:
    """The override that puts the launch folder's ``conf/`` (``conf/local/default.yaml``: this machine's
    settings; presets of one's own) after the project's groups, where there is such a folder and it is not the
    groups' own (a checkout's root): Hydra warns of a search path that does not exist."""
    here = Path("conf")
    return ["hydra.searchpath=[file://conf]"] if here.is_dir() and here.resolve() != Path(config_dir()) else []


def cli() -> None:
    if not any(arg.startswith("hydra.searchpath=") for arg in sys.argv):
        sys.argv += local_search_path()
    run_reporting_one_line(main)


if __name__ == "__main__":
    cli()
